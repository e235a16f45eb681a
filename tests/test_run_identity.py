"""A run is found by what it computed: its data's content (not the data's path) and its
config under today's defaults; a run folder is locked while one process trains it."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.configure import load_config
from bench.datasets import data_fingerprint, dataset_for
from bench.datasets.base import array_fingerprint
from bench.runs import RunningElsewhere, run_lock, run_name, run_path, write_json

REPO = Path(__file__).resolve().parents[1]


def fake_cifar(root: Path, seed: int = 0) -> Path:
    """A CIFAR-10 folder in torchvision's layout with 20 random training images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 20).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    return root


def cifar_cfg(root: Path, out: Path, extra=()):
    return load_config("configs/smoke.yaml", ["data.name=cifar10", f"data.root={root}", f"output_dir={out}", *extra])


def test_the_fingerprint_follows_the_content_not_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = fake_cifar(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    b.parent.mkdir()
    os.rename(fake_cifar(tmp_path / "tmp"), b)            # the same bytes (same seed) at another path
    c = fake_cifar(tmp_path / "c", seed=1)                  # other data
    fp = lambda root: dataset_for(cifar_cfg(root, tmp_path).data).fingerprint()
    assert fp(a) == fp(b) != fp(c)
    # The arrays' hash itself: any changed pixel changes it.
    x = np.zeros((2, 3, 4, 4), np.uint8)
    y = x.copy()
    y[1, 2, 3, 3] = 1
    assert array_fingerprint((x,)) != array_fingerprint((y,))
    assert array_fingerprint((x,)) != array_fingerprint((x.reshape(1, 6, 4, 4),))   # shape counts


def test_the_fingerprint_cache_notices_a_changed_file_and_never_writes_into_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = fake_cifar(tmp_path / "d")
    ds = dataset_for(cifar_cfg(root, tmp_path).data)
    first = ds.fingerprint()
    assert list((tmp_path / "cache" / "compress-bench").iterdir())      # cached
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])      # nothing written beside the data
    assert ds.fingerprint() == first
    path = root / "cifar-10-batches-py" / "test_batch"
    d = pickle.loads(path.read_bytes())
    d["labels"][0] = (d["labels"][0] + 1) % 10
    path.write_bytes(pickle.dumps(d))
    assert ds.fingerprint() != first


def test_a_finished_run_is_found_at_another_data_path_and_after_an_option_is_added(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    cfg = cifar_cfg(fake_cifar(tmp_path / "a"), out)
    folder = out / "an-old-name"          # as if written by an older version under another hash
    folder.mkdir(parents=True)
    raw = yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(cfg)))
    del raw["train"]["label_smoothing"]   # an option today's code added later, at its default
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    write_json(folder / "env.json", {"data_fingerprint": data_fingerprint(cfg.data)})
    write_json(folder / "summary.json", {"status": "finished"})
    moved = tmp_path / "moved"
    os.rename(tmp_path / "a", moved)
    same = cifar_cfg(moved, out)
    assert run_path(same) == folder
    assert run_path(cifar_cfg(moved, out, ["seed=3"])) == out / run_name(cifar_cfg(moved, out, ["seed=3"]))
    other = cifar_cfg(fake_cifar(tmp_path / "other", seed=5), out)
    assert run_path(other) != folder


def test_a_locked_run_is_running_elsewhere_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "runs" / "some-run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from bench.runs import run_lock\n"
        f"with run_lock(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunningElsewhere, match="another process"):
            with run_lock(run):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").exists()                                  # the file stays ...
    with run_lock(run):                                              # ... and blocks nothing
        pass


def test_two_suite_processes_on_one_folder_train_each_cell_once(tmp_path):
    suite = tmp_path / "two.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "two", "base": str(REPO / "configs" / "smoke.yaml"), "results_dir": str(tmp_path / "out"),
        "overrides": {"train": {"epochs": 1}, "data": {"synthetic_train_size": 256, "synthetic_test_size": 64},
                      "model": {"width": 0.125}},
        "models": {"vgg11": {}}, "methods": {"dense": {}}, "seeds": [0, 1, 2, 3]}))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "suite", str(suite)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = sum(o.count("resuming") + o.count(" epochs x ") for o in outs)
    assert trained == 4, outs              # each of the 4 cells trained by exactly one process
    assert len(list((tmp_path / "out" / "runs").glob("*/summary.json"))) == 4
