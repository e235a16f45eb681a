"""The training loop end to end: it learns, resumes exactly, skips finished runs,
writes its files atomically, and rebuilds the optimizer when a method swaps the model."""
from __future__ import annotations

import json
import os
from importlib import metadata
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.configure import load_config
from bench.models import build_model
from bench.optim import lr_at
from bench.runs import load_checkpoint, run_name
from bench.train import train

REPO = Path(__file__).resolve().parents[1]
quiet = dict(log=lambda s: None)


def run_dir(cfg) -> Path:
    return Path(cfg.output_dir) / run_name(cfg)


def test_a_short_run_on_synthetic_data_learns_and_writes_its_files(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=3", "train.throughput_steps=1"])
    summary = train(cfg, **quiet)
    assert summary["test_acc"] > 0.6          # 10 classes: chance is 0.1
    d = run_dir(cfg)
    for name in ("summary.json", "history.csv", "checkpoint.pt", "config.yaml", "env.json"):
        assert (d / name).is_file(), name
    assert not (d / "state.pt").exists()     # resume state is removed once finished
    hist = pd.read_csv(d / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3]
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    for key in ("params_total", "params_trainable", "params_nonzero", "macs", "macs_nonzero", "train_wall_s",
                "train_macs", "throughput_infer_img_s", "throughput_train_img_s", "peak_rss_mb", "env", "config",
                "latency_b1_ms_median", "latency_b1_ms_iqr", "infer_batch_ms_median", "train_step_ms_median",
                "train_step_ms_iqr"):
        assert key in summary, key
    assert 0 < summary["latency_b1_ms_median"] < summary["infer_batch_ms_median"]   # 1 image vs a batch
    assert summary["speed_batch_sizes"] == {"latency": 1, "infer": 128, "train": 64}
    assert summary["method"] == "dense" and summary["model"] == "vgg11" and summary["seed"] == 0
    assert summary["env"]["versions"]["torch"] == metadata.version("torch")            # the installed torch
    assert summary["env"]["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # Training MACs: 3 x forward MACs x images seen, summed over epochs.
    assert summary["train_macs"] == pytest.approx(3 * summary["macs"] * hist["images"].sum())
    # An epoch's row describes the model as trained in it, at the epoch's end: every weight of a
    # dense net is non-zero by then (timm initialises biases at zero, so a count taken before
    # the first epoch would be lower).
    assert (hist["params_nonzero"] == summary["params_nonzero"]).all()
    model = load_checkpoint(d / "checkpoint.pt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_throughput_steps_zero_records_no_timings(tiny_overrides):
    """train.throughput_steps=0 skips the final model's timings (the tests' setting; a suite's
    speed table comes from `bench retime`): no speed key, and the report still builds."""
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    summary = train(cfg, **quiet)
    assert not any(k.startswith(("latency_", "infer_batch_", "train_step_ms", "throughput_", "speed_"))
                   for k in summary), sorted(summary)
    assert json.loads((run_dir(cfg) / "summary.json").read_text())["test_acc"] == summary["test_acc"]


def test_same_seed_same_weights_and_resume_equals_an_uninterrupted_run(tiny_overrides, tmp_path):
    a = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=3", f"output_dir={tmp_path}/a"])
    b = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=3", f"output_dir={tmp_path}/b"])
    train(a, **quiet)
    assert train(b, max_epochs=1, **quiet) is None          # "interrupted" after one epoch
    assert (run_dir(b) / "state.pt").is_file() and not (run_dir(b) / "summary.json").exists()
    train(b, **quiet)                                        # picks up at epoch 2
    wa = load_checkpoint(run_dir(a) / "checkpoint.pt").state_dict()
    wb = load_checkpoint(run_dir(b) / "checkpoint.pt").state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ha, hb = pd.read_csv(run_dir(a) / "history.csv"), pd.read_csv(run_dir(b) / "history.csv")
    assert list(ha["test_acc"]) == list(hb["test_acc"]) and list(ha["train_loss"]) == list(hb["train_loss"])


def test_an_old_format_resume_state_is_refused_in_one_line_and_the_run_starts_again(tiny_overrides):
    # Before resume states held plain data, state.pt pickled the model whole: such a file is
    # never unpickled (weights_only=True refuses it); the run starts from epoch 0 instead.
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2"])
    assert train(cfg, max_epochs=1, **quiet) is None
    state = torch.load(run_dir(cfg) / "state.pt", weights_only=True)
    state["model"] = build_model(cfg.model)                    # as the old format saved it
    torch.save(state, run_dir(cfg) / "state.pt")
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    refused = [line for line in lines if "refused" in line]
    assert len(refused) == 1 and "\n" not in refused[0] and "starting again from epoch 0" in refused[0]
    assert not any("resuming" in line for line in lines)
    assert summary["status"] == "finished" and len(pd.read_csv(run_dir(cfg) / "history.csv")) == 2


def test_a_finished_run_is_skipped(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    first = train(cfg, **quiet)
    files = {p.name: p.read_bytes() for p in run_dir(cfg).iterdir() if p.is_file()}
    lines = []
    second = train(cfg, log=lines.append)
    # The stored summary, as written (JSON turns tuples into lists), and nothing trained or rewritten.
    assert second == json.loads(json.dumps(first, default=str))
    assert second == json.loads((run_dir(cfg) / "summary.json").read_text())
    assert {p.name: p.read_bytes() for p in run_dir(cfg).iterdir() if p.is_file()} == files
    assert len(lines) == 1 and "already finished" in lines[0]


def test_lr_schedules_are_pure_functions_of_the_step():
    cfg = load_config("configs/smoke.yaml").train
    lrs = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert max(lrs) == pytest.approx(cfg.lr) and lrs.index(max(lrs)) == 24   # peak after 25% of steps
    assert lrs[-1] < 0.02 * cfg.lr and lrs[0] > 0
    step_cfg = load_config("configs/smoke.yaml", ["train.schedule=step", "train.milestones=[2, 5]",
                                                  "train.gamma=0.1"]).train
    assert [lr_at(e * 10, 100, 10, step_cfg) for e in (0, 1, 2, 5)] == pytest.approx(
        [step_cfg.lr, step_cfg.lr, step_cfg.lr * 0.1, step_cfg.lr * 0.01])


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_output_dir_and_bad_input(tmp_path):
    out = tmp_path / "smoke"
    r = cli("run", "configs/smoke.yaml", f"output_dir={out}", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*/summary.json"))) == 1
    bad = cli("run", "configs/smoke.yaml", f"output_dir={tmp_path}/bad", "train.epoch=1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'train.epoch'")
    assert not (tmp_path / "bad").exists()                 # nothing half-written
    missing = cli("run", "configs/smoke.yaml", f"output_dir={tmp_path}/m", "data.name=cifar10",
                  f"data.root={tmp_path}/none")
    assert missing.returncode == 2 and "no CIFAR-10 at" in missing.stderr


def test_cli_lists_methods_and_models(capsys):
    from bench.__main__ import main                         # in-process: no interpreter start-up to pay
    assert main(["methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"dense", "dense_small", "pcn", "pcns", "l1_filter", "snp", "dsr", "decorrelated_bp"} <= listed
    assert main(["models"]) == 0 and "resnet56" in capsys.readouterr().out


def test_offline_wandb_run_is_written_under_the_run_directory(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1", "wandb.mode=offline"])
    env_mode = os.environ.pop("WANDB_MODE", None)
    try:
        train(cfg, **quiet)
    finally:
        if env_mode is not None:
            os.environ["WANDB_MODE"] = env_mode
    offline = list((run_dir(cfg) / "wandb").glob("offline-run-*"))
    assert offline, "no offline W&B run written"
