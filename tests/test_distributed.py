"""Scale-out on the CPU: 2-process gloo DDP runs (every registered method ends with identical
parameters and buffers on both ranks), all-reduced statistics, the in-place-change contract
that keeps the DDP wrapper current, and suites through submitit's debug executor and local
worker processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bench.train as train_mod
from bench.configure import load_config
from bench.activations import CovarianceAccumulator
from bench.suite import run_suite
from methods.decorrelated_bp import decor_step
from methods.dsr import DSR
from test_contract import CASES, method_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=synthetic", "data.synthetic_train_size=512", "data.synthetic_test_size=128",
        "model.name=vgg11", "model.width=0.125", "train.epochs=2", "train.batch_size=64", "train.lr=0.05",
        "train.eval_batch_size=128", "train.log_every_steps=0", "train.throughput_steps=0", "wandb.mode=disabled"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A gloo rank that aborts while the process group starts (C++ std::terminate, SIGABRT,
# seen once in a fresh-clone CI run on 2 cores, not reproduced in three reruns) is a
# launcher failure, not a method's: such a launch is retried once on a fresh port.
GLOO_STARTUP_ABORT = "terminate called without an active exception"


def run_cli(args: list[str], nproc: int = 1, program: tuple[str, ...] = ("-m", "bench"),
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`python PROGRAM ARGS` in nproc ranks (torchrun) or one process, W&B off, 1 thread each."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for attempt in range(2 if nproc > 1 else 1):
        launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                     "--master_addr=127.0.0.1", f"--master_port={free_port()}"] if nproc > 1 else [sys.executable])
        r = subprocess.run(launcher + [*program, *args], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
        started = "epoch 1/" in r.stdout or "run 1/" in r.stdout
        if r.returncode == 0 or GLOO_STARTUP_ABORT not in r.stderr or started:
            return r
    return r


def summary_in(folder: Path) -> dict:
    (path,) = folder.glob("*/summary.json")
    return json.loads(path.read_text())


LONGER = ["train.epochs=4", "data.synthetic_train_size=1024"]


@pytest.mark.parametrize("method", [["method.name=dense"], ["method.name=pcn", "method.calibration_images=256",
                                                                 "method.target_params=0.5"]])
def test_two_process_ddp_run_matches_on_both_ranks_and_the_single_process_run(tmp_path, method):
    r = run_cli(["run", "configs/smoke.yaml", *TINY, *LONGER, *method, f"output_dir={tmp_path}/ddp"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = summary_in(tmp_path / "ddp")
    assert ddp["world_size"] == 2
    a, b = ddp["rank_weight_checksums"]
    assert a == b                                    # identical weights on both ranks
    a, b = ddp["rank_buffer_checksums"]
    assert a == b                                    # ... and buffers (BN statistics averaged over ranks)
    single = run_cli(["run", "configs/smoke.yaml", *TINY, *LONGER, *method, f"output_dir={tmp_path}/one"])
    assert single.returncode == 0, single.stderr[-3000:]
    one = summary_in(tmp_path / "one")
    # Same global batch, averaged gradients; BN statistics are per shard, so not bit-equal.
    assert one["test_acc"] > 0.8 and abs(ddp["test_acc"] - one["test_acc"]) < 0.1
    # Weights differ from the single-process run's (per-shard BN), so the PCA and the
    # chosen dims may too; what must hold is the target, met on every rank alike.
    if ddp["target"] is not None:
        assert abs(ddp["params_total"] / ddp["dense_params"] - ddp["target"]) <= 0.02 * ddp["target"]
    assert len(list((tmp_path / "ddp").glob("*/summary.json"))) == 1   # rank 0 alone wrote


@pytest.fixture(scope="module")
def every_method_under_ddp(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Every case of the contract, trained for 2 epochs in one 2-rank launch (tests/ddp_runs.py)."""
    root = tmp_path_factory.mktemp("ddp_every_method")
    specs = [[*TINY, "train.epochs=2", *method_overrides(case)[1], f"output_dir={root / case}"] for case in CASES]
    (root / "specs.json").write_text(json.dumps(specs))
    return root, run_cli([str(root / "specs.json")], nproc=2, program=("tests/ddp_runs.py",), timeout=1800)


@pytest.mark.parametrize("case", CASES)
def test_every_method_under_ddp_ends_with_identical_parameters_and_buffers_on_both_ranks(every_method_under_ddp, case):
    """Methods that change the model in place (DSR's masks, decorrelated BP's layers and R)
    do so after the harness wrapped it for DDP; the ranks must still end bit-identical."""
    root, r = every_method_under_ddp
    name, _ = method_overrides(case)
    errors = "".join(p.read_text() for p in sorted((root / case).glob("error.*.txt")))
    assert not errors, errors[-3000:]
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary_in(root / case)
    assert s["world_size"] == 2 and s["method"] == name
    assert len(set(s["rank_weight_checksums"])) == 1, s["rank_weight_checksums"]
    assert len(set(s["rank_buffer_checksums"])) == 1, s["rank_buffer_checksums"]


def _decor_worker(rank: int, world: int, port: int, rows: list[torch.Tensor], r0: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        r = r0.clone()
        loss = decor_step(r, rows[rank], lr=0.05, kappa=0.3)
        torch.save({"r": r, "loss": loss}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_decor_update_under_ddp_is_the_update_from_every_ranks_rows(tmp_path):
    g = torch.Generator().manual_seed(0)
    d = 16
    x = torch.randn(25, d, generator=g, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64)
                                                                + 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64))
    r0 = torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64)
    rows = [x[:5], x[5:]]        # unequal shards; 5 rows form Z^T (Z R), 20 rows (Z^T Z) R
    out = str(tmp_path / "r")
    mp.spawn(_decor_worker, args=(2, free_port(), rows, r0, out), nprocs=2, join=True)
    got = [torch.load(f"{out}.{k}") for k in range(2)]
    ref = r0.clone()
    ref_loss = decor_step(ref, x, lr=0.05, kappa=0.3)                          # one process, all 25 rows
    assert torch.equal(got[0]["r"], got[1]["r"]) and got[0]["loss"] == got[1]["loss"]
    torch.testing.assert_close(got[0]["r"], ref, rtol=1e-12, atol=1e-12)
    assert abs(got[0]["loss"] - ref_loss) < 1e-12
    own = r0.clone()
    decor_step(own, rows[0], lr=0.05, kappa=0.3)                               # not rank 0's rows alone
    assert not torch.allclose(own, ref, atol=1e-6)


def test_an_in_place_change_rewraps_the_model_and_an_undeclared_one_is_an_error(tiny_overrides, monkeypatch):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=dsr", "train.epochs=1"])
    rewraps = []
    real = train_mod.Trainer.rewrap
    monkeypatch.setattr(train_mod.Trainer, "rewrap", lambda self: (rewraps.append(1), real(self)))
    train_mod.train(cfg, log=lambda s: None)
    assert rewraps == [1]                            # after on_train_start registered the masks, only then
    monkeypatch.setattr(DSR, "in_place_hooks", frozenset())
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=dsr", "train.epochs=1", "seed=1"])
    with pytest.raises(RuntimeError, match="on_train_start changed the model"):
        train_mod.train(cfg, log=lambda s: None)


def _covariance_worker(rank: int, world: int, port: int, data: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = CovarianceAccumulator(data.shape[1])
        for chunk in data.tensor_split(world)[rank].split(7):
            acc.update(chunk)
        acc.all_reduce_()
        if rank == 0:
            torch.save({"mean": acc.mean, "cov": acc.cov, "count": acc.count}, out)
    finally:
        dist.destroy_process_group()


def test_all_reduced_covariance_equals_the_single_process_covariance(tmp_path):
    data = torch.randn(60, 5, 3, 3) * torch.arange(1, 6).view(1, 5, 1, 1) + 2.0
    out = str(tmp_path / "cov.pt")
    mp.spawn(_covariance_worker, args=(2, free_port(), data, out), nprocs=2, join=True)
    got = torch.load(out)
    ref = CovarianceAccumulator(5)
    ref.update(data)
    assert got["count"] == ref.count == 60 * 9
    torch.testing.assert_close(got["mean"], ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["cov"], ref.cov, rtol=1e-12, atol=1e-12)


def two_cell_suite(tmp_path: Path) -> Path:
    import yaml
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "two", "base": str(REPO / "configs/smoke.yaml"),
        "overrides": {"data": {"synthetic_train_size": 256, "synthetic_test_size": 64},
                      "train": {"epochs": 1, "batch_size": 64, "throughput_steps": 0}},
        "models": {"vgg11": {"model": {"name": "vgg11", "width": 0.125}}},
        "methods": {"dense": {}, "dense_leaky": {"name": "dense", "run": {"model": {"act": "leaky_relu"}}}},
        "seeds": [0]}))
    return path


@pytest.mark.parametrize("executor, jobs", [("debug", 1), ("local", 2)])
def test_suite_through_an_executor_reports_and_then_skips(tmp_path, capsys, executor, jobs):
    path, out = two_cell_suite(tmp_path), tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)           # as on a 2-core machine: local workers split the threads
    try:
        assert run_suite(str(path), [], results_dir=str(out), executor=executor, jobs=jobs) == 0
    finally:
        torch.set_num_threads(threads)
    assert (out / "README.md").is_file() and (out / "runs.csv").is_file()
    assert len(list(out.glob("runs/*/summary.json"))) == 2
    if executor == "local":            # 2 workers x 1 thread, not 2 x every core
        assert {json.loads(p.read_text())["torch_threads"] for p in out.glob("runs/*/env.json")} == {1}
    capsys.readouterr()
    assert run_suite(str(path), [], results_dir=str(out), executor=executor, jobs=jobs) == 0
    assert "2 runs (2 finished)" in capsys.readouterr().out
