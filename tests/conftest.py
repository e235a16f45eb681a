"""Shared fixtures: tiny configs on synthetic data, W&B off, single-threaded-safe."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# The test-suite is the CPU path's: `device=auto` must mean the CPU here, in this process
# and in the runs it starts, also on a GPU machine (`make check-cuda` is the GPU's check).
# BENCH_TEST_GPU=1 leaves the GPUs visible, for the few tests that need CUDA (NCCL).
if os.environ.get("BENCH_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides that make any run finish in seconds on the CPU."""
    return [f"output_dir={tmp_path / 'runs'}", "data.name=synthetic", "data.synthetic_train_size=512",
            "data.synthetic_test_size=128", "model.name=vgg11", "model.width=0.125", "train.epochs=2",
            "train.batch_size=64", "train.lr=0.05", "train.eval_batch_size=128", "train.log_every_steps=0",
            "train.throughput_steps=0", "wandb.mode=disabled"]


@pytest.fixture
def fake_fetch(tmp_path, monkeypatch):
    """In an empty working folder with no $BENCH_DATA_ROOT, `fake_fetch(writer)` replaces
    torchvision's download by `writer(root)` and returns the list of its calls
    (url, root, filename, md5)."""
    from torchvision.datasets import utils as tv_utils
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)

    def install(writer) -> list[tuple]:
        calls = []

        def fake_download(url, download_root, filename=None, md5=None, **kw):
            calls.append((url, download_root, filename, md5))
            writer(tmp_path / download_root)

        monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
        return calls
    return install


# Tests run tiny tensors: one thread is as fast, and does not collapse when the machine
# is shared (two OpenMP threads per process on a loaded 2-core box are 10-50x slower).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
