"""A user's first hour: the profile follows the device, suites announce their size and
progress, runs never lie about divergence, W&B never blocks and never loses; a mistake
costs a fraction of a second and one line that names the fix, every method runs on the
smoke config as it is, a run that stops before training leaves nothing behind, and the
CLI explains methods, suite labels and every recorded key.

Nothing here sends traffic off the machine: "no network" is proxies and W&B URLs
pointing at a closed local port (or a local server that answers 503)."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.configure import load_config
from bench.progress import SuiteProgress
from bench.report import write_report
from bench.suite import run_suite
from bench.train import LossWatch, nonfinite_check_every, train
from bench.wandb_log import define_metrics

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(tmp_path: Path, port: int, **extra: str) -> dict:
    """The environment of a machine without network: every proxy at a closed local port,
    W&B's error reporting and cloud-metadata probe kept local, its config in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "bench_data_root")}
    proxy = f"http://127.0.0.1:{port}"
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
               WANDB_ERROR_REPORTING="false", WANDB__STATS_COREWEAVE_METADATA_BASE_URL=proxy,
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"), BENCH_PROGRESS="plain", **extra)
    return env


# --------------------------------------------------------------------------- 4. runs never lie
def test_a_diverging_run_ends_diverged_with_a_non_zero_exit(tmp_path):
    out = tmp_path / "runs"
    cmd = [PYTHON, "-m", "bench", "run", str(REPO / "configs/smoke.yaml"), "train.lr=1e8", f"output_dir={out}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run dense-vgg11-") and "diverged: non-finite training loss at epoch 1/3, step" in last
    assert "lower train.lr" in last
    (run_dir,) = out.iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "diverged" and s["diverged_epoch"] == 1 and 1 <= s["diverged_step"] <= s["steps_total"]
    assert "test_acc" not in s and "best_test_acc" not in s          # no accuracy for a model that diverged
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "state.pt").exists()


def test_divergence_is_recorded_at_its_exact_step_even_when_checked_late(tiny_overrides, monkeypatch):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.lr=1e8"])
    first = train(cfg, log=lambda _: None)
    # A GPU run reads the flag every NONFINITE_CHECK_EVERY steps: the step is still exact.
    import bench.train
    monkeypatch.setattr(bench.train, "nonfinite_check_every", lambda device, synced: 10_000)
    late = train(load_config("configs/smoke.yaml", tiny_overrides + ["train.lr=1e8", "seed=0",
                                                                      f"output_dir={cfg.output_dir}-late"]),
                 log=lambda _: None)
    assert first["status"] == late["status"] == "diverged"
    assert late["diverged_step"] == first["diverged_step"] and late["diverged_epoch"] == 1
    again = train(cfg, log=lambda _: None)             # a plain re-run keeps the record
    assert again["status"] == "diverged" and again["diverged_step"] == first["diverged_step"]


def test_a_finished_run_says_so(tiny_overrides):
    summary = train(load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"]), log=lambda _: None)
    assert summary["status"] == "finished"


def test_the_loss_watch_finds_the_exact_step_and_syncs_only_when_read():
    watch = LossWatch(torch.device("cpu"), every=4)
    full = [watch.add(torch.tensor(v), step) for step, v in enumerate([1.0, 2.0, float("nan"), float("inf")], 11)]
    assert full == [False, False, False, True]
    assert watch.first_nonfinite() == 13
    assert not watch.add(torch.tensor(1.0), 15) and watch.first_nonfinite() is None   # the buffer was emptied
    assert nonfinite_check_every(torch.device("cpu"), False) == 1
    assert nonfinite_check_every(torch.device("cuda"), False) > 1      # no host sync per GPU step
    assert nonfinite_check_every(torch.device("cuda"), True) == 1      # a timed hook syncs anyway


def write_suite(tmp_path: Path, methods: dict) -> Path:
    suite = {"name": "t", "base": str(REPO / "configs/smoke.yaml"),
             "overrides": {"data": {"synthetic_train_size": 256, "synthetic_test_size": 64},
                           "train": {"epochs": 2, "batch_size": 64, "throughput_steps": 0}},
             "models": {"vgg11": {"model": {"name": "vgg11", "width": 0.125}}},
             "methods": methods, "seeds": [0]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_suite_records_a_diverged_cell_goes_on_and_keeps_it_until_asked(tmp_path, capsys):
    path = write_suite(tmp_path, {"dense": {}, "hot": {"name": "dense", "run": {"train": {"lr": 1e8}}}})
    out = tmp_path / "out"
    assert run_suite(str(path), [], results_dir=str(out)) == 1
    text = capsys.readouterr()
    lines = text.out.splitlines()
    assert lines[0].startswith("suite t: 2 runs (0 finished)")
    assert any(line.startswith("2 run(s) to do, estimated ~") for line in lines[:3])    # before the first run
    done = [line for line in lines if line.startswith("[done ")]
    assert len(done) == 2 and "DIVERGED at epoch 1, step" in done[1] and "ETA ~" in done[0]
    assert "finished, test acc" in done[0] and "suite done" in done[1]
    assert "1 run(s) diverged" in text.err and "hot vgg11" in text.err
    readme = (out / "README.md").read_text()
    assert "## Diverged runs" in readme and "- hot on vgg11, seed 0: diverged at epoch 1, step" in readme
    assert "| hot |" not in readme and "| dense |" in readme                     # never as an accuracy
    table = (out / "table.csv").read_text()
    assert "hot" not in table

    # A plain re-invocation keeps the diverged cell as it is; --retry-failed runs it again.
    hot_summary = next(out.glob("runs/*/summary.json"), None)
    assert hot_summary is not None
    assert run_suite(str(path), [], results_dir=str(out)) == 1
    text = capsys.readouterr().out
    assert "2 runs (1 finished, 1 diverged: --retry-failed re-runs them)" in text and "[1/" not in text
    assert run_suite(str(path), [], results_dir=str(out), retry_failed=True) == 1
    text = capsys.readouterr().out
    assert "[1/1] hot vgg11" in text
    assert len(list(out.glob("runs/*/summary.diverged.json"))) == 1


def test_a_report_of_only_diverged_runs_names_them(tmp_path, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")]
    train(load_config("configs/smoke.yaml", overrides + [f"output_dir={tmp_path / 'runs'}", "train.lr=1e8"]),
          log=lambda _: None)
    readme = write_report(tmp_path)
    assert "## Diverged runs" in readme.read_text()


def test_suite_eta_scales_the_remaining_estimate_by_the_measured_pace(monkeypatch):
    clock = iter([0.0, 100.0, 150.0])
    monkeypatch.setattr("bench.progress.time.monotonic", lambda: next(clock))
    p = SuiteProgress([10.0, 10.0, 30.0])
    assert p.finish(0) == "elapsed 1m40s, ETA ~6m40s"          # 10x slower than estimated: 40 s -> 400 s
    assert p.finish(1) == "elapsed 2m30s, ETA ~3m45s"
    monkeypatch.setattr("bench.progress.time.monotonic", lambda: 200.0)
    assert p.finish(2) == "elapsed 3m20s, suite done"


# --------------------------------------------------------------------------- 3. progress
def test_epoch_bars_show_loss_accuracy_and_speed_on_a_terminal_only(tiny_overrides, monkeypatch, capsys):
    monkeypatch.setattr("bench.progress.BAR_REFRESH_S", 0.0)
    monkeypatch.setenv("BENCH_PROGRESS", "auto")
    train(load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"]))
    plain = capsys.readouterr().out
    assert "epoch 1/1  loss" in plain and "img_s=" not in plain        # pytest's stdout is not a TTY
    monkeypatch.setenv("BENCH_PROGRESS", "bars")
    train(load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1", "seed=1"]))
    bars = capsys.readouterr().out
    assert "epoch 1/1:" in bars and all(k in bars for k in ("loss=", "acc=", "img_s="))
    assert "epoch 1/1  loss" in bars                                     # the epoch's line stays


# --------------------------------------------------------------------------- 2. profile by device
def test_make_bench_cifar_picks_the_profile_by_device_and_says_why(tmp_path):
    suite = write_suite(tmp_path, {"dense": {}})
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("MAKEFLAGS", None)
    p = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "bench-cifar",
                        f"SUITE_quick={suite}", f"SUITE_full={suite}", "ARGS=--dry-run"],
                       cwd=REPO, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    if torch.cuda.is_available():
        assert first.startswith("PROFILE=full (CUDA is available)")
    else:
        assert first.startswith("PROFILE=quick (no CUDA device here)") and "PROFILE=full forces" in first
    assert "suite t: 1 runs (0 finished)" in p.stdout and "estimated cost" in p.stdout
    bad = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "bench-cifar",
                          "PROFILE=huge"], cwd=REPO, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "unknown PROFILE 'huge'" in bad.stderr


# --------------------------------------------------------------------------- 1. data, no network
def test_without_network_the_suite_fails_at_once_in_one_line(tmp_path):
    env = offline_env(tmp_path, closed_port(), WANDB_MODE="disabled")
    t0 = time.monotonic()
    p = subprocess.run([PYTHON, "-m", "bench", "suite", str(REPO / "configs/suites/cifar10-quick.yaml"),
                        "--results-dir", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert p.returncode == 2
    error = p.stderr.strip().splitlines()[-1]
    assert error.startswith("error: could not download CIFAR-10 from https://www.cs.toronto.edu/")
    assert "into 'data'" in error and "data.root=" in error and "$BENCH_DATA_ROOT" in error
    assert "cifar-10-python.tar.gz" in error
    assert not (tmp_path / "out").exists()                  # nothing started
    assert elapsed < 60, elapsed    # imports included, on a loaded 2-core box; the download itself fails at once


# --------------------------------------------------------------------------- 5. W&B
TIMED_RUN = """
import json, sys, time
import bench.wandb_log as wl
from bench.configure import load_config
from bench.train import train
spent = [0.0]
def timed(f):
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
    return g
for name in ("__init__", "log", "finish"):
    setattr(wl.WandbLogger, name, timed(getattr(wl.WandbLogger, name)))
summary = train(load_config("configs/smoke.yaml", sys.argv[1:]))
print(json.dumps({"wandb_s": spent[0], "status": summary["status"], "run_dir": str(summary["run_id"])}))
"""


def run_with_unreachable_wandb(tmp_path: Path, base_url: str, **extra: str) -> tuple[dict, str, Path]:
    """A 1-epoch smoke run with W&B online at `base_url`, a fake key and no network;
    returns (its result line, stderr, the run directory)."""
    env = offline_env(tmp_path, closed_port(), WANDB_MODE="online", WANDB_BASE_URL=base_url,
                      WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567", **extra)
    out = tmp_path / "runs"
    p = subprocess.run([PYTHON, "-c", TIMED_RUN, "train.epochs=1", f"output_dir={out}"], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return result, p.stderr, out / result["run_dir"]


def assert_kept_offline(result: dict, stderr: str, run_dir: Path) -> None:
    assert result["status"] == "finished" and result["wandb_s"] <= 20, result
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "no offline W&B run to sync"
    assert f"wandb sync {offline[0]}" in stderr


def test_unreachable_wandb_costs_seconds_and_the_run_is_kept_offline(tmp_path):
    result, stderr, run_dir = run_with_unreachable_wandb(tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert "W&B server unreachable" in stderr
    assert_kept_offline(result, stderr, run_dir)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A W&B server that answers every request with 503: reachable, never usable."""

    def _answer(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_wandb_server_that_never_answers_times_out_into_offline(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result, stderr, run_dir = run_with_unreachable_wandb(
            tmp_path, f"http://127.0.0.1:{server.server_address[1]}", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    finally:
        server.shutdown()
    assert "W&B online init failed" in stderr
    assert_kept_offline(result, stderr, run_dir)


def test_wandb_metrics_have_best_and_last_accuracy_over_wall_clock():
    calls = {}

    class Run:
        def define_metric(self, name, **kw):
            calls[name] = kw

    define_metrics(Run())
    assert calls["test_acc"]["step_metric"] == "train_wall_s_cum"
    assert set(calls["test_acc"]["summary"].split(",")) == {"max", "last"}
    assert "train_wall_s_cum" in calls


# --------------------------------------------------------------------------- mistakes cost one line
def bench_cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` from an empty folder (the repository on the path), W&B off."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "BENCH_PROGRESS": "plain"}
    return subprocess.run([PYTHON, "-m", "bench", *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed command (stderr may hold a library's import warning)."""
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "usage:" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and p.stderr.strip().splitlines()[-1] == errors[0], p.stderr
    return errors[0]


SMOKE = str(REPO / "configs/smoke.yaml")


@pytest.mark.parametrize("words, message", [
    (["train.epoch=2"], "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    (["train.epochs=0"], "train.epochs must be >= 1, got 0"),
    (["train.epochs=-1"], "train.epochs must be >= 1, got -1"),
    (["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    (["train.lr=0"], "train.lr must be > 0, got 0"),
    (["train.warmup_frac=1.5"], "train.warmup_frac must be in [0, 1], got 1.5"),
    (["train.label_smoothing=1"], "train.label_smoothing must be in [0, 1), got 1"),
    (["data.train_subset=-5"], "data.train_subset must be >= 0, got -5"),
    (["model.width=0"], "model.width must be > 0, got 0"),
    (["train.epochs=three"], "train.epochs: expected an integer, got 'three'"),
    (["train.epochs", "2"], "'train.epochs' is neither a config file nor a key=value override; "
                            "did you mean train.epochs=2?"),
    (["--train.epochs=2"], "'--train.epochs=2': overrides take no leading '-'; did you mean train.epochs=2?"),
    (["--train.epochs", "2"], "'--train.epochs': overrides take no leading '-'; did you mean train.epochs=2?"),
    (["method.name=random_filter"], "run it with method.name=l1_filter method.importance=random"),
    (["method.name=dsr_static"], "run it with method.name=dsr method.reallocate=false"),
    (["method.name=pcnn"], "unknown method 'pcnn' (did you mean 'pcn'?)"),
])
def test_a_config_mistake_is_one_line_before_any_heavy_import(tmp_path, words, message):
    """The CLI answers in one line with exit 2 and writes nothing; in-process, the same
    mistakes are found before torch, timm or the methods are imported (the seconds a
    mistake costs are the interpreter's start, not the imports)."""
    out = tmp_path / "runs"
    p = bench_cli(tmp_path, "run", SMOKE, *words, f"output_dir={out}")
    assert message in one_line_error(p)
    assert not out.exists() and not any(tmp_path.iterdir())
    probe = ("import sys; from bench.__main__ import main; rc = main(sys.argv[1:]); "
             "heavy = [m for m in ('torch', 'timm', 'torch_pruning', 'methods') if m in sys.modules]; "
             "print(rc, heavy)")
    q = subprocess.run([PYTHON, "-c", probe, "run", SMOKE, *words, f"output_dir={out}"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert q.stdout.strip().splitlines()[-1] == "2 []", (q.stdout, q.stderr)


@pytest.mark.parametrize("words, message", [
    (["method.name=pcn", "method.target_params=50%"], "method.target_params: expected a fraction such as 0.5, got '50%'"),
    (["method.name=pcn", "method.calibration_images=1"], "method.calibration_images must be >= 2"),
    (["model.name=vgg17"], "unknown model 'vgg17'"),
])
def test_a_method_or_model_mistake_is_one_line(tmp_path, words, message):
    out = tmp_path / "runs"
    assert message in one_line_error(bench_cli(tmp_path, "run", SMOKE, *words, f"output_dir={out}"))
    assert not out.exists()


def test_a_suite_override_without_its_equals_sign_shows_how_to_write_it(tmp_path):
    p = bench_cli(tmp_path, "suite", str(REPO / "configs/suites/cifar10-smoke.yaml"), "train.epochs", "2",
                  "--results-dir", str(tmp_path / "out"))
    assert "did you mean train.epochs=2?" in one_line_error(p)
    assert not (tmp_path / "out").exists()


def test_a_run_that_stops_before_training_leaves_no_folder(tmp_path):
    out = tmp_path / "runs"
    p = bench_cli(tmp_path, "run", SMOKE, "method.name=pcn", "method.transform_epoch=5", "train.epochs=2",
                  "data.synthetic_train_size=256", f"output_dir={out}")
    assert "method.transform_epoch=5 is past the budget" in one_line_error(p)
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- every method on the smoke config
def test_methods_parse_their_registered_names_without_importing():
    from bench.configure import declared_method_names
    from methods import REGISTRY
    assert declared_method_names() == tuple(sorted(REGISTRY))


def test_a_calibration_request_larger_than_the_training_set_takes_it_all_with_a_note():
    from bench.data import DeviceData
    from bench.train import calibration_source
    n = 40
    data = DeviceData(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                      torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                      torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), 10, "synthetic")

    class Rt:
        prepare = staticmethod(lambda x: x)

    cfg = load_config("configs/smoke.yaml", ["method.name=pcn"])
    notes: list[str] = []
    calibration = calibration_source(cfg, data, Rt(), notes.append)
    assert sum(len(x) for x in calibration(30, 16)) == 30 and notes == []        # a request that fits: as asked
    assert sum(len(x) for x in calibration(5000, 16)) == n
    assert sum(len(x) for x in calibration(5000, 16)) == n
    assert notes == [f"note: 5000 calibration images asked for (method.calibration_images=5000) but the training "
                     f"set has {n}: using all {n}"]                                # once
    assert sum(len(x) for x in calibration(8, 16, heldout=True)) == 8
    assert "held-out images overlap the calibration images" in notes[-1]


def test_snp_runs_on_small_data_with_its_defaults_and_every_recorded_key_is_explained(tiny_overrides):
    """snp's default 5,000 calibration images on 512 training images: the run finishes (the
    whole set calibrates), and `python -m bench fields` explains every key it wrote."""
    from bench.__main__ import field_rows
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=snp", "method.transform_epoch=1"])
    assert cfg.method.calibration_images > 512
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["status"] == "finished"
    assert any(line.startswith("note: 5000 calibration images asked for (method.calibration_images=5000)")
               for line in lines)
    run_dir = Path(cfg.output_dir) / summary["run_id"]
    rows = field_rows()
    explained = {where: {k for k, _ in rows[where]} for where in rows}
    import pandas as pd
    history = pd.read_csv(run_dir / "history.csv")
    missing = [c for c in history.columns if c not in explained["history"] and not c.startswith("snp/")]
    assert missing == []
    written = json.loads((run_dir / "summary.json").read_text())
    assert [k for k in written if k not in explained["summary"]] == []
    # The transform row: the accuracy after the change sits beside the size of that same model.
    row = history[history.acc_after_transform.notna()].iloc[0]
    (change,) = written["transforms"]
    assert row.params_after_transform == change["params_after"] < row.params_total


def test_pcns_runs_on_small_data_with_its_default_calibration_and_records_what_it_used(tiny_overrides):
    """pcns's default 2,048 calibration + 512 error images on 512 training images."""
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns", "method.transform_epochs=[1]",
                                                              "model.act=leaky_relu", "model.leaky_slope=0.2"])
    assert cfg.method.calibration_images + cfg.method.error_images > 512
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["status"] == "finished"
    assert any("calibration images asked for (method.calibration_images=2048)" in line for line in lines)
    assert any("held-out images overlap the calibration images" in line for line in lines)
    (shrink,) = summary["method_summary"]["shrinks"]
    assert shrink["calib_images"] == 512 and shrink["error_images"] == 512


def test_fields_lists_history_and_summary_keys(tmp_path):
    p = bench_cli(tmp_path, "fields")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    for key in ("compression", "speed_cpu_load", "params_after_transform", "sparsity"):
        assert f"    {key} " in text
    assert text.startswith("history.csv: one row per completed epoch")


# --------------------------------------------------------------------------- methods and suite labels
def test_methods_name_shows_one_method_with_its_own_defaults(tmp_path):
    p = bench_cli(tmp_path, "methods", "pcn")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("pcn: Principal Component Networks")
    assert any(line.split()[:2] == ["method.name", "'pcn'"] for line in lines)
    assert "run it: python -m bench run configs/smoke.yaml method.name=pcn" in p.stdout
    assert "dsr:" not in p.stdout
    needs = bench_cli(tmp_path, "methods", "pcns")   # a method that refuses the smoke config's ReLU model
    assert ("run it: python -m bench run configs/smoke.yaml method.name=pcns model.act=leaky_relu "
            "model.leaky_slope=0.2\n") in needs.stdout


def test_methods_lists_suite_labels_as_a_method_with_options(tmp_path):
    p = bench_cli(tmp_path, "methods")
    assert p.returncode == 0, p.stderr
    assert "the control any compression method at the same parameter target has to beat." in p.stdout
    assert "random_filter        = method.name=l1_filter method.importance=random" in p.stdout
    assert "dense_leaky          = method.name=dense model.act=leaky_relu model.leaky_slope=0.2" in p.stdout
    one = bench_cli(tmp_path, "methods", "dsr_static")
    assert one.returncode == 0, one.stderr
    assert "run it: python -m bench run configs/smoke.yaml method.name=dsr method.reallocate=false" in one.stdout
    assert "unknown method 'pcnn'" in one_line_error(bench_cli(tmp_path, "methods", "pcnn"))


# --------------------------------------------------------------------------- re-running a finished run
def test_a_finished_run_names_itself_the_rerun_flag_and_a_code_change(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["train.epochs=1", "save_checkpoint=false"]
    cfg = load_config("configs/smoke.yaml", overrides)
    first = train(cfg, log=lambda _: None)
    run_dir = Path(cfg.output_dir) / first["run_id"]
    env = json.loads((run_dir / "env.json").read_text())
    env["git_commit"] = "0123abc"                                    # as if run on other code
    (run_dir / "env.json").write_text(json.dumps(env))
    p = bench_cli(tmp_path, "run", SMOKE, *overrides)
    assert p.returncode == 0, p.stderr
    (line,) = [line for line in p.stdout.splitlines() if "skipping" in line]
    assert f"already finished in {run_dir}, skipping (--rerun trains it again)" in line
    assert "it ran on code 0123abc, this checkout is" in line
    from bench.__main__ import main
    assert main(["run", SMOKE, *overrides, "--rerun"]) == 0
    assert (run_dir / "summary.before-rerun.json").is_file() and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "env.json").read_text())["git_commit"] != "0123abc"


def test_the_recorded_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    """A suite rewrites its report under results/ while its runs go on: the runs after that
    still ran on the committed code."""
    from bench.runs import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "bench" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "README.md").write_text("report\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    here = tmp_path / "bench"
    clean = git_commit(here)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "results" / "README.md").write_text("report, rebuilt\n")
    assert git_commit(here) == clean
    (tmp_path / "bench" / "code.py").write_text("x = 2\n")
    assert git_commit(here) == clean + "-dirty"


# --------------------------------------------------------------------------- W&B report without network
def test_wandb_report_without_network_is_one_line_naming_the_local_report(tmp_path):
    suite = tmp_path / "results" / "s1"
    suite.mkdir(parents=True)
    (suite / "suite.json").write_text(json.dumps({"suite": "s1"}))
    (suite / "README.md").write_text("# s1\n")
    env = offline_env(tmp_path, closed_port(), WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",
                      PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    p = subprocess.run([PYTHON, "-m", "bench", "wandb-report", str(suite), "--entity", "E"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - t0
    error = one_line_error(p)
    assert "the W&B server cannot be reached" in error and f"the local report is {suite / 'README.md'}" in error
    assert elapsed < 60, elapsed       # the probe's own limit is seconds; the rest is the interpreter on a loaded box
