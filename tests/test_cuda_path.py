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
from bench.runs import load_checkpoint, run_name
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
def reference_train_batches(data: DeviceData, batch_size: int, generator: torch.Generator, augment: bool):
    """The batches as they were drawn before the draws moved to the start of the epoch: each
    step drew its crop offsets and flips when it came (committed results used these)."""
    n = len(data.train_x)
    perm = torch.randperm(n, generator=generator, device="cpu").to(data.device)
    bs = min(batch_size, n)
    for i in range(data.steps_per_epoch(batch_size)):
        idx = perm[i * bs:(i + 1) * bs]
        x = data.train_x[idx]
        if augment:
            x = random_crop_flip(x, generator)
        yield data.normalize(x), data.train_y[idx]


def synthetic_data(n: int, device: torch.device = CPU) -> DeviceData:
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    stat = torch.full((1, 3, 1, 1), 0.5)
    return DeviceData(x.to(device), y.to(device), x[:8].to(device), y[:8].to(device), stat.to(device),
                      stat.to(device), 10, "synthetic")


@pytest.mark.parametrize("n, batch_size", [(200, 64), (64, 64), (50, 128)])
@pytest.mark.parametrize("augment", [True, False])
def test_augmented_batches_are_bit_identical_to_drawing_them_step_by_step(n, batch_size, augment):
    data = synthetic_data(n)
    for seed in (0, 1, 100_003 * 3 + 2):
        got = list(data.train_batches(batch_size, torch.Generator().manual_seed(seed), augment))
        ref = list(reference_train_batches(data, batch_size, torch.Generator().manual_seed(seed), augment))
        assert len(got) == len(ref) == data.steps_per_epoch(batch_size)
        for (x, y), (rx, ry) in zip(got, ref):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_an_epoch_of_augmented_batches_waits_for_the_device_once_not_per_step():
    """On a device (meta standing in for a GPU), the epoch's draws reach it in one copy when
    the epoch starts; the steps themselves copy nothing from the host and read nothing."""
    data = synthetic_data(256, torch.device("meta"))
    per_batch = []
    with SyncCounter() as counter:
        batches = data.train_batches(32, torch.Generator().manual_seed(0), True)
        for x, y in batches:
            assert x.device.type == "meta" and x.shape == (32, 3, 32, 32)
            per_batch.append(counter.count)
    assert len(per_batch) == 8
    assert per_batch[0] <= 1                                # the epoch's one copy
    assert per_batch[-1] == per_batch[0], counter.what      # nothing more, step after step
    assert CROP_PADDING_PX == 4


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
    """The step and update times (device intervals, or clocks read only on update steps) are recorded."""
    for name in ("dsr", "decorrelated_bp"):
        cfg = load_config("configs/smoke.yaml", tiny_overrides + [f"method.name={name}", f"output_dir={tmp_path}/{name}"])
        s = train(cfg, log=lambda s: None)
        rec = s["method_summary"]["epochs"][-1]
        assert rec["step_s_mean"] > 0 and s["after_step_s"] > 0
        assert rec["update_s"] > 0 if name == "decorrelated_bp" else rec["update_s"] >= 0   # DSR: maybe no update yet
        if name == "decorrelated_bp":
            assert all(isinstance(v, float) for v in s["method_summary"]["loss_first_update"].values())


# --------------------------------------------------------------------------- peak memory, devices, DDP
def test_peak_memory_is_reset_at_the_start_of_every_run(tiny_overrides, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "reset_peak_memory", lambda device: calls.append(device))
    for i in range(2):
        train(load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1", f"output_dir={tmp_path}/{i}"]),
              log=lambda s: None)
    assert calls == [resolve_device("auto")] * 2
    seen = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: seen.append(device))
    measure.reset_peak_memory(torch.device("cuda", 1))
    measure.reset_peak_memory(CPU)
    assert seen == [torch.device("cuda", 1)]


def test_a_numbered_cuda_device_becomes_the_current_one(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
    resolve_device("cuda")                        # no index: the current device already
    assert chosen == [torch.device("cuda", 1)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_fp32_means_fp32_not_tf32(precision, monkeypatch, tiny_overrides):
    monkeypatch.setattr("bench.device.native_bf16", lambda device: (True, ""))
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [f"train.precision={precision}",
                                                              "train.memory_format=contiguous"]).train
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True   # TF32 on, as on a fresh GPU
        Runtime(CPU, cfg)                                                  # the CPU leaves the CUDA flags alone
        assert torch.backends.cudnn.allow_tf32 is True
        Runtime(torch.device("cuda", 0), cfg)
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_benchmark_timer_waits_for_the_models_device(monkeypatch):
    waited = []
    monkeypatch.setattr(measure, "asynchronous", lambda device: device.type == "cuda")
    monkeypatch.setattr(measure, "synchronize", lambda device: waited.append(device))
    measure._timings(lambda: None, 2, 1, torch.device("cuda", 1))
    assert waited and set(waited) == {torch.device("cuda", 1)}


def test_ddp_does_not_broadcast_buffers_every_forward(monkeypatch, tiny_overrides):
    got = {}

    class SpyDDP(nn.Module):
        def __init__(self, module, device_ids=None, **kw):
            super().__init__()
            got.update(kw)
            self.module = module

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", SpyDDP)
    monkeypatch.setattr(train_mod.dist, "is_distributed", lambda: True)
    # fp32 pinned: `auto` on a CPU without bf16 prints a notice on rank 0, and there is no
    # process group here to ask for the rank.
    rt = Runtime(CPU, load_config("configs/smoke.yaml", tiny_overrides + ["train.precision=fp32"]).train)
    rt.runner(nn.Linear(2, 2))
    assert got in ({"forward_sync_buffers": False}, {"broadcast_buffers": False})
    monkeypatch.undo()
    import inspect
    assert set(device_mod.ddp_options()) <= set(inspect.signature(nn.parallel.DistributedDataParallel).parameters)


# --------------------------------------------------------------------------- compile
class FakeCompiled(nn.Module):
    """torch.compile stand-in: the module itself, whose first call per instance 'compiles'
    by moving the host clock on by COMPILE_S seconds."""
    COMPILE_S = 1000.0
    offset = 0.0
    calls: list[tuple[bool, bool]] = []

    def __init__(self, module):
        super().__init__()
        self.module, self.first = module, True

    def forward(self, x):
        if self.first:
            FakeCompiled.offset += self.COMPILE_S
            self.first = False
        FakeCompiled.calls.append((self.module.training, torch.is_grad_enabled()))
        return self.module(x)


def test_compile_time_is_not_training_time_and_the_warm_up_changes_nothing(tiny_overrides, tmp_path, monkeypatch):
    perf = time.perf_counter
    monkeypatch.setattr(measure.time, "perf_counter", lambda: perf() + FakeCompiled.offset)
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    extra = ["method.name=pcn", "method.calibration_images=256", "train.epochs=3",   # replaces the model after epoch 1
             "train.throughput_steps=1"]                                                # the final timings run too
    plain_cfg = load_config("configs/smoke.yaml", tiny_overrides + extra + [f"output_dir={tmp_path}/plain"])
    plain = train(plain_cfg, log=lambda s: None)
    assert "compile_s" not in plain and resets == []
    monkeypatch.setattr(torch, "compile", FakeCompiled)
    FakeCompiled.calls.clear()
    cfg = load_config("configs/smoke.yaml", tiny_overrides + extra + ["train.compile=true",
                                                                      f"output_dir={tmp_path}/compiled"])
    compiled = train(cfg, log=lambda s: None)
    assert resets == [1]                                            # a fresh dynamo cache for the run
    assert compiled["train_wall_s"] < FakeCompiled.COMPILE_S       # compiling is not training
    assert compiled["compile_s"] >= 2 * FakeCompiled.COMPILE_S     # built, then rebuilt after the transform
    # The warm-up left no trace: the same weights and accuracy as without compile.
    a = load_checkpoint(Path(plain_cfg.output_dir) / run_name(plain_cfg) / "checkpoint.pt").state_dict()
    b = load_checkpoint(Path(cfg.output_dir) / run_name(cfg) / "checkpoint.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert compiled["test_acc"] == plain["test_acc"]
    # Inference throughput was timed on the compiled model (eval mode, no autograd).
    assert (False, False) in FakeCompiled.calls


def test_decorrelation_still_updates_r_under_torch_compile():
    """The Decor layers hand their input to after_step through the module's __dict__, a side
    effect inside the forward that dynamo must replay: R after compiled training steps equals
    R after eager ones (dynamo with the aot_eager backend; the side effect is dynamo's, not
    the backend's)."""
    from methods.decorrelated_bp import DECOR_TYPES, DecorrelatedBP, decorrelate_layer

    def build():
        torch.manual_seed(0)
        return nn.Sequential(decorrelate_layer(nn.Conv2d(3, 4, 3, padding=1)), nn.ReLU(), nn.Flatten(),
                             decorrelate_layer(nn.Linear(4 * 8 * 8, 5)))

    cfg = DecorrelatedBP.Config(name="decorrelated_bp", decor_lr=0.1, downsample_frac=0.5)
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = build()
        ctx = SimpleNamespace(device=CPU, step=0, generator=torch.Generator().manual_seed(1))
        method = DecorrelatedBP(cfg, ctx)
        runner = torch.compile(model, backend="aot_eager") if compiled else model
        for step in range(3):
            x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
            runner(x).sum().backward()
            ctx.step += 1
            method.after_step(model)
        results.append([m.decor.clone() for m in model.modules() if isinstance(m, DECOR_TYPES)])
    torch._dynamo.reset()
    eager, comp = results
    assert not torch.equal(eager[0], torch.eye(eager[0].shape[0]))          # R moved
    assert all(torch.equal(a, b) for a, b in zip(eager, comp))


# --------------------------------------------------------------------------- method stopwatches
def test_pcn_and_snp_sub_step_timings_wait_for_the_device(monkeypatch):
    from bench.config import ModelConfig, build_dataclass
    from bench.metrics import param_counts
    from bench.models import build_model
    from methods import get_method
    from methods.pcn import PCN, pcn_transform
    waits = []
    monkeypatch.setattr(measure, "asynchronous", lambda device: True)
    monkeypatch.setattr(measure, "synchronize", lambda device: waits.append(device))
    model = build_model(ModelConfig(name="vgg11", width=0.125)).eval()
    x = torch.randn(32, 3, 32, 32)
    cfg = PCN.Config(name="pcn", target_params=0.5)
    cfg.validate()
    _, report = pcn_transform(model, cfg, [x], x[:1], param_counts(model)["params_total"])
    assert len(waits) >= len(report["timing_s"]) + 1                 # one wait per clock read
    waits.clear()
    SNP = get_method("snp")
    ex = x[:1]
    ctx = SimpleNamespace(example_inputs=ex, dense_params=param_counts(model)["params_total"],
                          dense_macs=measure.count_macs(model, ex)[0], epochs=3, num_train_images=len(x),
                          calibration=lambda n, batch_size=500, heldout=False: iter([x]))
    snp = SNP(build_dataclass(SNP.Config, {"name": "snp", "calibration_images": len(x), "target_params": 0.5},
                              "method."), ctx)
    _, info = snp.prune(model)
    assert len(waits) >= 4


# --------------------------------------------------------------------------- check_cuda's reporting
FINISHED = {"status": "finished", "run_id": "r", "precision": "fp32", "memory_format": "contiguous", "compile": False,
            "world_size": 1, "env": {"device": "cuda:0"}, "throughput_train_img_s": 1000.0,
            "config": {"train": {"batch_size": 100}}, "rank_weight_checksums": [1.0],
            "rank_buffer_checksums": ["a"]}
DIVERGED = {"status": "diverged", "run_id": "d", "message": "diverged: non-finite training loss at epoch 1/2, step 3/64",
            "config": {"train": {"batch_size": 100}}}


def planting(root: Path, summaries_by_check: dict[str, list[dict]], ran: list):
    """A stand-in for subprocess.run that writes, under `root`, the summaries planted for the
    check whose output folder the command names, and succeeds."""
    def run(cmd, **kw):
        ran.append(cmd)
        text = " ".join(cmd)
        for folder, summaries in summaries_by_check.items():
            if f"{root / folder}" in text:
                for i, s in enumerate(summaries):
                    (root / folder / f"run{i}").mkdir(parents=True, exist_ok=True)
                    (root / folder / f"run{i}" / "summary.json").write_text(json.dumps(s))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


@pytest.fixture
def one_gpu(monkeypatch, tmp_path):
    """One stub GPU without bf16; check_cuda's outputs under tmp_path/check (returned)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stub GPU")
    monkeypatch.setattr(check_cuda, "best_precision", lambda: ("fp32", "contiguous"))
    monkeypatch.setattr(check_cuda.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "check"))
    monkeypatch.setattr(check_cuda, "same_weights", lambda a, b: None)
    return tmp_path / "check"


def test_check_cuda_fails_a_diverged_run_and_goes_on_skipping_ddp_on_one_gpu(one_gpu, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(check_cuda.subprocess, "run", planting(one_gpu, {
        "suite": [FINISHED, DIVERGED], "compile": [{**FINISHED, "compile": True, "compile_s": 3.0}],
        "resume": [FINISHED], "resnet": [FINISHED]}, ran))
    assert check_cuda.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.split()[:1] in (["PASS"], ["FAIL"], ["SKIP"])]
    assert [line.split()[0] for line in lines] == ["FAIL", "PASS", "SKIP", "PASS", "PASS"], out
    assert "fp32 + contiguous" in lines[0] and "needs 2 GPUs, this machine has 1" in "\n".join(out)
    assert "run d: diverged: non-finite training loss" in "\n".join(out)
    assert not any("torch.distributed.run" in " ".join(c) for c in ran)          # NCCL never started
    assert all("train.precision=bf16" not in c for cmd in ran for c in cmd)       # no forced bf16
    assert any("train.precision=auto" in cmd for cmd in ran)
    assert "3/4 checks passed, 1 skipped" in "\n".join(out)


def test_check_cuda_fails_a_summary_missing_what_it_reads(one_gpu, monkeypatch, capsys):
    broken = {k: v for k, v in FINISHED.items() if k not in ("throughput_train_img_s", "precision")}
    monkeypatch.setattr(check_cuda.subprocess, "run", planting(one_gpu, {"suite": [broken], "compile": [broken],
                                                                         "resume": [FINISHED], "resnet": []}, []))
    assert check_cuda.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL  smoke suite" in out and "KeyError" in out and "Traceback" not in out
    assert "FAIL  torch.compile" in out and "did not record a compiled warm-up" in out
    assert "FAIL  ResNet-18" in out and "no run wrote a summary.json" in out
    assert "PASS  resume" in out


def test_ddp_check_on_two_gpus_needs_two_ranks_on_cuda(one_gpu, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ran = []
    monkeypatch.setattr(check_cuda.subprocess, "run", planting(one_gpu, {
        "suite": [FINISHED], "compile": [{**FINISHED, "compile": True, "compile_s": 3.0}], "ddp": [FINISHED],
        "resume": [FINISHED], "resnet": [FINISHED]}, ran))
    assert check_cuda.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL  DDP over 2 GPUs" in out and "world size 1" in out
    assert any("--nproc_per_node=2" in cmd for cmd in ran)


def test_check_cuda_refuses_in_one_line_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_cuda.main([]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs a CUDA GPU" in err


def test_a_hung_check_fails_on_its_timeout_and_the_next_checks_still_run(one_gpu, monkeypatch, capsys):
    plant = planting(one_gpu, {"compile": [{**FINISHED, "compile": True, "compile_s": 3.0}], "resume": [FINISHED],
                               "resnet": [FINISHED]}, [])

    def run(cmd, **kw):
        if "suite" in cmd:
            assert kw["timeout"] == 5.0
            raise subprocess.TimeoutExpired(cmd, kw["timeout"], output=b"epoch 1/3", stderr=None)
        return plant(cmd, **kw)
    monkeypatch.setattr(check_cuda.subprocess, "run", run)
    assert check_cuda.main(["--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  smoke suite" in out and "timed out after 5 s" in out
    assert "PASS  torch.compile" in out and "PASS  ResNet-18" in out
    assert "epoch 1/3" in (one_gpu / "suite" / "log.txt").read_text()
