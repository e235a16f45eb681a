"""Datasets are plugins: the registry, the class count taken from the dataset, the suite's
estimate from its shape and size, and CIFAR-100 (torchvision's layout, read as is,
fetched with its md5 on first use) as the proof."""
from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR100

from bench.config import ConfigError, DataConfig
from bench.configure import load_config
from bench.data import load_data
from bench.datasets import REGISTRY, dataset_for
from bench.metrics import count_macs, param_counts
from bench.models import build_model
from bench.train import train

N_TRAIN, N_TEST = 40, 12


def write_fake_cifar100(root, n_train=N_TRAIN, n_test=N_TEST):
    """`root/cifar-100-python/{train,test,meta}` in the original pickle format, random images."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             "fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
             "coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
             "filenames": [f"{name}_{j}.png" for j in range(n)], "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    return folder


def test_cifar100_is_read_as_it_is_with_its_fine_labels_and_normalisation(tmp_path):
    folder = write_fake_cifar100(tmp_path)
    data = load_data(DataConfig(name="cifar100", root=str(tmp_path)), torch.device("cpu"))
    assert data.train_x.shape == (N_TRAIN, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (N_TEST, 3, 32, 32) and data.num_classes == 100
    with open(folder / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(data.train_x[5], torch.from_numpy(raw["data"][5].reshape(3, 32, 32)))   # R, G, B planes
    assert data.train_y.tolist() == raw["fine_labels"]
    assert torch.allclose(data.mean.flatten(), torch.tensor([0.5071, 0.4865, 0.4409]))
    assert torch.allclose(data.std.flatten(), torch.tensor([0.2673, 0.2564, 0.2762]))


def test_cifar100_is_fetched_with_its_md5_on_first_use_and_a_given_root_is_not(tmp_path, fake_fetch):
    calls = fake_fetch(write_fake_cifar100)
    assert len(load_data(DataConfig(name="cifar100"), torch.device("cpu")).train_x) == N_TRAIN
    load_data(DataConfig(name="cifar100"), torch.device("cpu"))            # second use: read, not fetched
    assert calls == [(CIFAR100.url, "data", CIFAR100.filename, CIFAR100.tgz_md5)]
    with pytest.raises(ConfigError, match=r"^no CIFAR-100 at .*mine/cifar-100-python': set data.root="):
        load_data(DataConfig(name="cifar100", root=str(tmp_path / "mine")), torch.device("cpu"))
    assert len(calls) == 1


def test_a_tiny_cifar100_run_trains_a_100_class_model(tmp_path, tiny_overrides):
    write_fake_cifar100(tmp_path / "data-root")
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [
        "data.name=cifar100", f"data.root={tmp_path / 'data-root'}", "train.epochs=1", "train.batch_size=16",
        "train.eval_batch_size=16", "save_checkpoint=false"])
    assert cfg.model.num_classes == 100
    summary = train(cfg, log=lambda s: None)
    assert summary["status"] == "finished"
    assert summary["params_total"] == param_counts(build_model(cfg.model))["params_total"]
    assert summary["params_total"] != param_counts(build_model(replace(cfg.model, num_classes=10)))["params_total"]


@pytest.mark.parametrize("name, classes", [("cifar10", 100), ("cifar100", 10)])
def test_a_class_count_that_disagrees_with_the_dataset_is_a_one_line_error(name, classes):
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", [f"data.name={name}", f"model.num_classes={classes}"])
    msg = str(e.value)
    assert msg.startswith(f"model.num_classes={classes} but CIFAR-") and "\n" not in msg
    assert load_config("configs/smoke.yaml", [f"data.name={name}"]).model.num_classes == 110 - classes


def test_synthetic_data_draws_the_class_count_it_is_asked_for():
    assert load_config("configs/smoke.yaml").model.num_classes == 10
    cfg = load_config("configs/smoke.yaml", ["model.num_classes=4"])
    assert cfg.model.num_classes == 4
    assert set(load_data(cfg.data, torch.device("cpu"), 4).train_y.tolist()) == {0, 1, 2, 3}


def test_every_dataset_states_its_shape_size_classes_and_normalisation():
    assert {"cifar10", "cifar100", "synthetic"} <= set(REGISTRY)
    for name in ("cifar10", "cifar100", "synthetic"):
        ds = dataset_for(DataConfig(name=name))
        c = ds.image_shape[0]
        assert ds.num_classes >= 2 and ds.train_size > 0 and ds.test_size > 0
        assert len(ds.mean) == len(ds.std) == c
    assert dataset_for(DataConfig(name="cifar100")).train_size == 50_000


def test_the_cli_lists_the_datasets(capsys):
    from bench.__main__ import main
    assert main(["datasets", "-v"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if not line.startswith(" ")}
    assert "100 classes" in rows["cifar100"] and "3x32x32" in rows["cifar100"] and "50000 train" in rows["cifar100"]
    assert "10 classes" in rows["cifar10"] and "data.synthetic_train_size" in out


def test_an_unknown_dataset_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar1000' \(did you mean 'cifar100'\?\); "
                                          r"registered: .*cifar10, cifar100.*python -m bench datasets"):
        load_config("configs/smoke.yaml", ["data.name=cifar1000"])


def test_the_suite_estimate_takes_the_image_shape_and_size_from_the_dataset(tmp_path):
    from bench.suite import Cell, estimate
    cfg = load_config("configs/smoke.yaml", ["data.image_size=16", "data.synthetic_train_size=300", "train.epochs=2",
                                             "train.batch_size=8", "model.name=resnet20", "model.width=0.5"])
    macs16, _ = count_macs(build_model(cfg.model), torch.zeros(1, 3, 16, 16))
    train_macs, seconds = estimate(Cell("dense", "vgg11", None, 0, cfg, {}))
    assert train_macs == 3.0 * macs16 * 300 * 2 and seconds > 0
    c100 = load_config("configs/smoke.yaml", ["data.name=cifar100", "data.train_subset=1000", "train.batch_size=8"])
    macs32, _ = count_macs(build_model(c100.model), torch.zeros(1, 3, 32, 32))
    assert estimate(Cell("dense", "vgg11", None, 0, c100, {}))[0] == 3.0 * macs32 * 1000 * c100.train.epochs
