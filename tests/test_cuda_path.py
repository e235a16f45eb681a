"""The CUDA path, checked on the CPU: what a GPU would show is simulated with stubs.

- Host-device synchronisation is counted by `SyncCounter`: every read of a device value
  by the host (`.item()`, `float()`, `bool()`, `int()`, `torch.equal`, data-dependent
  shapes such as `nonzero`), every blocking copy from the host to another device, every
  synchronising clock read (bench.metrics.Clock) and every wait for a timing event. With
  `fake_gpu` the CPU is treated as a device that runs behind the host (what
  bench.metrics.measure.asynchronous says of CUDA), its events timed on the host.
- Data on the `meta` device stands in for data on a GPU (a copy to it is a real
  cross-device copy; its values cannot be read).
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import bench.check_cuda as check_cuda
import bench.device as device_mod
import bench.train as train_mod
from bench.configure import load_config
from bench.data import CROP_PADDING_PX, DeviceData, random_crop_flip
from bench.device import Runtime, resolve_device
from bench.metrics import measure
from bench.runs import run_name
from bench.train import train

CPU = torch.device("cpu")
aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default, aten.nonzero.default,
         aten.masked_select.default}


class SyncCounter(TorchDispatchMode):
    """Counts the operations that make a host wait for an asynchronous device."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.what: list[str] = []

    def note(self, what: str) -> None:
        self.count += 1
        self.what.append(what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS:
            self.note(str(func))
        elif func is aten._to_copy.default:
            dev = kwargs.get("device")
            if dev is not None and args[0].device.type == "cpu" and torch.device(dev).type != "cpu" \
                    and not kwargs.get("non_blocking", False):
                self.note("blocking host-to-device copy")
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            if src.device.type == "cpu" and dst.device.type != "cpu" and not (args[2:] and args[2]):
                self.note("blocking host-to-device copy")
        return func(*args, **kwargs)


class FakeEvent:
    """A CUDA event on the host clock; waiting for it counts as a synchronisation."""
    waits = 0

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        FakeEvent.waits += 1

    def elapsed_time(self, end: "FakeEvent") -> float:
        return 1e3 * (end.t - self.t)


@pytest.fixture
def fake_gpu(monkeypatch):
    """The CPU treated as an asynchronous device; returns the number of synchronising clock
    reads and event waits so far (a callable)."""
    reads = {"n": 0}
    clock_call = measure.Clock.__call__

    def counted(self):
        reads["n"] += 1
        return clock_call(self)

    monkeypatch.setattr(measure, "asynchronous", lambda device: True)
    monkeypatch.setattr(measure, "synchronize", lambda device: None)
    monkeypatch.setattr(measure, "device_event", FakeEvent)
    monkeypatch.setattr(measure.Clock, "__call__", counted)
    FakeEvent.waits = 0
    return lambda: reads["n"] + FakeEvent.waits


# --------------------------------------------------------------------------- augmentation
# --------------------------------------------------------------------------- per-step syncs through the Trainer
def epoch_syncs(monkeypatch, fake_gpu, overrides: list[str]) -> list[int]:
    """Synchronisations counted in each training epoch of a run with `overrides`."""
    counts = []
    real = train_mod.Trainer.train_epoch

    def counted(self, *args, **kw):
        before = fake_gpu()
        with SyncCounter() as c:
            out = real(self, *args, **kw)
        counts.append(c.count + fake_gpu() - before)
        return out

    monkeypatch.setattr(train_mod.Trainer, "train_epoch", counted)
    cfg = load_config("configs/smoke.yaml", overrides)
    assert train(cfg, log=lambda s: None)["status"] == "finished"
    monkeypatch.setattr(train_mod.Trainer, "train_epoch", real)
    return counts


@pytest.mark.parametrize("method", [["method.name=dense"],
                                    # reallocation waits for the device by design (once per P steps)
                                    ["method.name=dsr", "method.reallocate=false"],
                                    ["method.name=decorrelated_bp"]])
def test_no_method_adds_a_device_sync_per_step(method, tiny_overrides, tmp_path, monkeypatch, fake_gpu):
    """An epoch of 16 steps synchronises as often as one of 4 (the loss check and the
    timings are read once per epoch), for the after_step methods as for dense."""
    base = tiny_overrides + method + ["train.epochs=1", "train.throughput_steps=1"]
    short = epoch_syncs(monkeypatch, fake_gpu, base + ["data.synthetic_train_size=256", "train.batch_size=64",
                                                       f"output_dir={tmp_path}/short"])
    long = epoch_syncs(monkeypatch, fake_gpu, base + ["data.synthetic_train_size=512", "train.batch_size=32",
                                                      f"output_dir={tmp_path}/long"])
    assert short == long, f"{method[0]}: {short} syncs in a 4-step epoch, {long} in a 16-step one"
    assert long[0] <= 10                        # a few reads at the epoch's end


def test_the_loss_check_reads_the_host_once_per_epoch_on_an_asynchronous_device(fake_gpu):
    assert train_mod.nonfinite_check_every(CPU) == train_mod.NONFINITE_CHECK_EVERY


def test_method_timings_still_add_up_with_device_intervals(tiny_overrides, tmp_path, fake_gpu):
    """The step, mask and update times (now device intervals read per epoch) are recorded."""
    for name in ("dsr", "decorrelated_bp"):
        cfg = load_config("configs/smoke.yaml", tiny_overrides + [f"method.name={name}", f"output_dir={tmp_path}/{name}"])
        s = train(cfg, log=lambda s: None)
        rec = s["method_summary"]["epochs"][-1]
        assert rec["step_s_mean"] > 0 and s["after_step_s"] > 0
        assert (rec["mask_s"] if name == "dsr" else rec["update_s"]) > 0
        if name == "decorrelated_bp":
            assert all(isinstance(v, float) for v in s["method_summary"]["loss_first_update"].values())


# --------------------------------------------------------------------------- peak memory, devices, DDP
# --------------------------------------------------------------------------- compile
# --------------------------------------------------------------------------- method stopwatches
# --------------------------------------------------------------------------- check_cuda's reporting
FINISHED = {"status": "finished", "run_id": "r", "precision": "fp32", "memory_format": "contiguous", "compile": False,
            "world_size": 1, "env": {"device": "cuda:0"}, "throughput_train_img_s": 1000.0,
            "config": {"train": {"batch_size": 100}}, "rank_weight_checksums": [1.0],
            "rank_buffer_checksums": ["a"]}
DIVERGED = {"status": "diverged", "run_id": "d", "message": "diverged: non-finite training loss at epoch 1/2, step 3/64",
            "config": {"train": {"batch_size": 100}}}


