"""Data: CIFAR-10 fetched on first use (no root given) or read as it is (a root given),
device-side augmentation, clear errors."""
from __future__ import annotations

import pickle
import socket
import time
import urllib.request

import numpy as np
import pytest
import torch

from bench.config import ConfigError, DataConfig
from bench.data import load_data, random_crop_flip
from bench.datasets.cifar10 import Cifar10
from torchvision.datasets import CIFAR10
from torchvision.datasets import utils as tv_utils


def write_fake_cifar(root, n_per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(Cifar10.train_files + [Cifar10.test_file]):
        d = {"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
             "labels": [int(v) for v in rng.integers(0, 10, size=n_per_batch)],
             "batch_label": name, "filenames": [f"{name}_{j}.png" for j in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    return folder


def test_a_root_holding_the_batches_is_read_as_it_is_without_checksums(tmp_path):
    folder = write_fake_cifar(tmp_path)  # random bytes: any md5 check would reject these
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    assert data.train_x.shape == (30, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (6, 3, 32, 32)
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    # R, G, B planes of 1024 pixels each, in file order.
    assert torch.equal(data.train_x[6], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert data.train_y[6].item() == raw["labels"][0]


def test_train_subset_takes_the_first_images(tmp_path):
    write_fake_cifar(tmp_path)
    full = load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    sub = load_data(DataConfig(name="cifar10", root=str(tmp_path), train_subset=8), torch.device("cpu"))
    assert torch.equal(sub.train_x, full.train_x[:8])


def test_missing_root_names_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")), torch.device("cpu"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "data.root=" in msg and "data.download=true" in msg


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    assert len(load_data(DataConfig(name="cifar10"), torch.device("cpu")).train_x) == 30


def test_crop_and_flip_match_a_per_image_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, g)
    g = torch.Generator().manual_seed(3)  # replay the same draws
    dy = torch.randint(0, 9, (16,), generator=g)
    dx = torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_synthetic_data_is_seeded_and_calibration_splits_are_disjoint():
    cfg = DataConfig(name="synthetic", synthetic_train_size=200, synthetic_test_size=50)
    a, b = load_data(cfg, torch.device("cpu")), load_data(cfg, torch.device("cpu"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    calib = set(a.calibration_indices(80, seed=0).tolist())
    held = set(a.calibration_indices(80, seed=0, heldout=True).tolist())
    assert len(calib) == 80 and not calib & held
    with pytest.raises(ConfigError, match="calibration"):
        a.calibration_indices(500, seed=0)


def test_without_a_root_cifar10_is_fetched_into_data_with_its_md5(fake_fetch):
    calls = fake_fetch(write_fake_cifar)
    data = load_data(DataConfig(name="cifar10"), torch.device("cpu"))
    assert calls == [(CIFAR10.url, "data", CIFAR10.filename, CIFAR10.tgz_md5)]
    assert len(data.train_x) == 30
    load_data(DataConfig(name="cifar10"), torch.device("cpu"))     # second use: read, not fetched
    assert len(calls) == 1


def test_a_given_root_is_read_as_it_is_and_never_downloaded_into(tmp_path, monkeypatch):
    def no_download(*args, **kw):
        raise AssertionError("downloaded into a root the user gave")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_download)
    monkeypatch.chdir(tmp_path)
    for given in ({"root": str(tmp_path / "mine")}, {}):
        if not given:
            monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "mine"))
        with pytest.raises(ConfigError, match=r"^no CIFAR-10 at .*mine/cifar-10-batches-py"):
            load_data(DataConfig(name="cifar10", **given), torch.device("cpu"))
    assert not (tmp_path / "data").exists() and not (tmp_path / "mine").exists()


def test_without_network_the_fetch_fails_within_seconds_in_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:                  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("NO_PROXY", "no_proxy", "BENCH_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")     # all traffic to a closed local port
    monkeypatch.setattr(urllib.request, "_opener", None)         # urlopen re-reads the proxies
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar10"), torch.device("cpu"))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"could not download CIFAR-10 from {CIFAR10.url} into 'data' (URLError: ")
    assert "set data.root=" in msg and "$BENCH_DATA_ROOT" in msg and f"put {CIFAR10.filename}" in msg
    assert not (tmp_path / "data").exists()        # nothing fetched, no empty data folder left
