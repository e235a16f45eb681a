"""Files a run or a data folder holds are read without running code: a resume state or
checkpoint that names anything but tensors and plain data, and a CIFAR pickle that names
anything but numpy arrays and plain data, are refused in one line and create nothing.
RNG states load on the CPU whatever device the rest of the state goes to."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import ConfigError, DataConfig
from bench.configure import load_config
from bench.data import load_data
from bench.runs import RunDir, load_checkpoint, run_name
from bench.train import cpu_bytes, train

quiet = dict(log=lambda s: None)


class Planted:
    """A pickle payload that creates `path` when unpickled by a plain unpickler."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_planted_payload_would_create_its_file_under_a_plain_unpickler(tmp_path):
    # The control: without the restrictions the payload does what the tests below forbid.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker))).close()
    assert marker.exists()


def write_cifar10(root: Path, protocol: int, planted: Path | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3],
             "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"], "batch_label": "batch", "count": np.int64(4)}
        if planted is not None and name == "data_batch_3":
            d["payload"] = Planted(planted)
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_are_read(tmp_path, protocol):
    write_cifar10(tmp_path, protocol)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    assert len(data.train_x) == 20 and len(data.test_x) == 4


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_planted_cifar10_pickle_is_refused_in_one_line_and_creates_nothing(tmp_path, protocol):
    marker = tmp_path / "ran"
    write_cifar10(tmp_path, protocol, planted=marker)
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_3" in msg and "names" in msg and "refusing" in msg
    assert not marker.exists()


def test_a_planted_cifar100_pickle_is_refused_in_one_line_and_creates_nothing(tmp_path):
    from tests.test_datasets import write_fake_cifar100
    folder = write_fake_cifar100(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "train", "rb") as f:
        d = pickle.load(f)
    d["payload"] = Planted(marker)
    with open(folder / "train", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar100", root=str(tmp_path)), torch.device("cpu"))
    assert "\n" not in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()


@pytest.fixture
def interrupted(tiny_overrides):
    """A dsr run (masks as buffers, the method's generator in use) stopped after one epoch."""
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2", "method.name=dsr",
                                                              "method.target_params=0.5"])
    assert train(cfg, max_epochs=1, **quiet) is None
    return cfg, RunDir(Path(cfg.output_dir) / run_name(cfg))


def test_a_resume_state_is_plain_data_and_loads_with_weights_only(interrupted):
    cfg, rd = interrupted
    state = torch.load(rd.state_path, weights_only=True)
    assert state["format"] == 2 and "model" not in state
    assert any(k.endswith("dsr_mask") or "mask" in k for k in state["model_state"])
    assert isinstance(state["architecture"], dict) and isinstance(state["method"], dict)


def test_a_planted_resume_state_is_refused_in_one_line_and_the_run_starts_again(interrupted, tmp_path):
    cfg, rd = interrupted
    marker = tmp_path / "ran"
    state = torch.load(rd.state_path, weights_only=True)
    state["payload"] = Planted(marker)
    torch.save(state, rd.state_path)
    lines: list[str] = []
    assert rd.load_state("cpu", lines.append) is None
    assert len(lines) == 1 and "\n" not in lines[0] and "refused" in lines[0] and not marker.exists()
    summary = train(cfg, log=lines.append)                  # starts again from epoch 0 and finishes
    assert summary["status"] == "finished" and not marker.exists()
    assert not any("resuming" in line for line in lines)


def test_a_planted_or_old_checkpoint_is_refused_in_one_line_and_creates_nothing(tiny_overrides, tmp_path):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    train(cfg, **quiet)
    path = Path(cfg.output_dir) / run_name(cfg) / "checkpoint.pt"
    model = load_checkpoint(path)                             # the real one loads
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save({**torch.load(path, weights_only=True), "payload": Planted(marker)}, planted)
    old = tmp_path / "old.pt"
    torch.save(model, old)                                   # the old format: the model pickled whole
    for bad in (planted, old):
        with pytest.raises(ConfigError) as e:
            load_checkpoint(bad)
        assert "\n" not in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_rng_states_load_on_the_cpu_whatever_the_device_of_the_rest(interrupted):
    # A CUDA run loads its state with the model's tensors on the GPU; `meta` stands in for it
    # here. Generator.set_state needs a CPU ByteTensor: the RNG states must not follow.
    cfg, rd = interrupted
    state = rd.load_state(torch.device("meta"), **quiet)
    assert state is not None
    assert all(t.device.type == "meta" for t in state["model_state"].values())
    for key in ("torch_rng", "method_generator"):
        assert state[key].device.type == "cpu" and state[key].dtype == torch.uint8
    torch.Generator().set_state(state["method_generator"])
    before = torch.get_rng_state()
    torch.set_rng_state(state["torch_rng"])
    torch.set_rng_state(before)


def test_cpu_bytes_brings_an_rng_state_back_from_another_device():
    state = torch.get_rng_state()
    moved = state.to(torch.int64)                     # as if mapped and cast elsewhere
    torch.Generator().set_state(cpu_bytes(moved))
    assert torch.equal(cpu_bytes(moved), state)


def test_no_loader_in_the_harness_unpickles_code():
    # Every torch.load of a run's files reads with weights_only=True.
    root = Path(__file__).resolve().parents[1] / "bench"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load(" not in text, path


def test_numpy_values_in_a_resume_state_become_plain_numbers_that_load(tmp_path):
    from bench.runs import plain_data
    state = {"history": [{"acc": np.float64(0.5), "n": np.int64(3)}], "spread": (np.float32(1.5), np.zeros(2)),
             "t": torch.ones(2)}
    torch.save(plain_data(state), tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert back["history"] == [{"acc": 0.5, "n": 3}] and back["spread"] == (1.5, [0.0, 0.0])
    assert type(back["history"][0]["acc"]) is float and torch.equal(back["t"], torch.ones(2))
