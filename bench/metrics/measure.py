"""Measurements made the same way for every method.

Parameters (total, trainable, non-zero), MACs per image (torch-pruning's counter;
for masked-sparse models also the MACs of the non-zero weights, a theoretical
figure since dense kernels still run them), test accuracy weighted by example
count, measured speed (batch-1 latency, inference and training throughput, as
median and interquartile range) and peak memory.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import resource
import time
from typing import Any, Callable, Optional

import torch
import torch_pruning as tp
from torch import nn

from bench import dist
from bench.surgery import set_module


def param_counts(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "params_nonzero": sum(int(torch.count_nonzero(p.detach())) for p in params),
    }


def unshare_modules(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every module reachable under several names is replaced,
    at all but its first name, by its own copy: same computation, one parent per module."""
    model = copy.deepcopy(model)
    seen = set()
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if id(m) in seen:
            set_module(model, name, copy.deepcopy(m))
        seen.add(id(m))
    return model


@torch.no_grad()
def layer_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, dict[nn.Module, float]]:
    """(total MACs, MACs of each module) per image for one forward pass, by torch-pruning's
    counter; the modules are those of an unshared copy of `model`."""
    was_training = model.training
    # torch-pruning's counter dispatches on the exact module type: count subclasses
    # (e.g. a Conv2d with a merged weight) as the layer they derive from.
    from torch_pruning.utils import op_counter
    for m in model.modules():
        t = type(m)
        if t not in op_counter.MODULES_MAPPING:
            base = next((b for b in t.__mro__[1:] if b in op_counter.MODULES_MAPPING), None)
            if base is not None:
                op_counter.CUSTOM_MODULES_MAPPING[t] = op_counter.MODULES_MAPPING[base]
    # Its ptflops-derived walk visits a module once per parent: one reachable from two
    # parents (e.g. a projection shared by a block's conv and its shortcut) gets two hooks,
    # so every call would count twice, plus a warning on stdout. Count an unshared copy.
    counted = unshare_modules(model)
    with contextlib.redirect_stdout(io.StringIO()):
        weight = next(counted.parameters(), None)       # the input goes where the model is
        x = example_inputs[:1] if weight is None else example_inputs[:1].to(weight.device)
        macs, _, per_layer, _ = tp.utils.count_ops_and_params(counted, x, layer_wise=True)
    model.train(was_training)
    return int(macs), per_layer


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(dense MACs, non-zero-weight MACs) per image, for one forward pass.

    The non-zero figure scales each weighted layer's MACs by its weight density:
    what a sparse kernel would do, not what the dense kernels here do."""
    macs, per_layer = layer_macs(model, example_inputs)
    removed = 0.0
    for m, lm in per_layer.items():
        w = getattr(m, "weight", None)
        if lm and isinstance(w, torch.Tensor) and isinstance(m, (nn.Conv2d, nn.Linear)):
            density = float(torch.count_nonzero(w)) / w.numel()
            removed += lm * (1.0 - density)
    return macs, int(round(macs - removed))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Callable, prepare: Callable = lambda x: x,
             autocast: Callable = contextlib.nullcontext) -> float:
    """Top-1 accuracy over all examples (not a mean of per-batch accuracies); under
    torchrun each rank evaluates its shard of every batch and the counts are summed."""
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for x, y in batches():
        x, y = prepare(dist.shard(x)), dist.shard(y)
        with autocast():
            out = model(x)
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    counts = dist.all_reduce_sum_(torch.tensor([correct, total], dtype=torch.float64, device=y.device))
    return float(counts[0]) / max(float(counts[1]), 1.0)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory count on a CUDA `device` (at the start of every run), so
    that a run in a process that trained others before it (a suite) reports its own
    peak, not the highest of them all. On the CPU the peak RSS is the process's and
    cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """The run's peak memory: CUDA memory allocated since `reset_peak_memory`, or the
    process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {"peak_cuda_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    # ru_maxrss is in KiB on Linux: the whole process, dataset included.
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def asynchronous(device: torch.device) -> bool:
    """Whether `device` runs the work the host queues later (CUDA): there a clock read
    must wait for the device, and a host read of a device value waits for it too."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished the work queued so far (that device, not merely
    the current CUDA device)."""
    torch.cuda.synchronize(device)


def device_event():
    """A timing event for the current CUDA stream (its own function so tests can stub it)."""
    return torch.cuda.Event(enable_timing=True)


class Clock:
    """Wall-clock that waits for the device first, so GPU time is not under-counted."""

    def __init__(self, device: torch.device):
        self.cuda = asynchronous(device)
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            synchronize(self.device)
        return time.perf_counter()


class IntervalTimer:
    """Sums of named intervals, measured without waiting for the device while they run:
    for timings on the training step's path, read once per epoch.

    `mark()` notes a point in time (an event recorded on the current CUDA stream on a
    GPU, the wall-clock on the CPU), `add(key, start, end)` files an interval, and
    `totals()` returns the seconds per key since the last call, waiting for the device
    once (for the last event). On a GPU an interval is the device time between its two
    points of the stream: the work queued in between, plus any time the device sat idle
    waiting for the host to queue it, i.e. what the interval adds to the wall-clock."""

    def __init__(self, device: torch.device):
        self.events = asynchronous(device)
        self.pending: list[tuple[str, Any, Any]] = []
        self.sums: dict[str, float] = {}

    def mark(self) -> Any:
        if self.events:
            e = device_event()
            e.record()
            return e
        return time.perf_counter()

    def add(self, key: str, start: Any, end: Any) -> None:
        if self.events:
            self.pending.append((key, start, end))
        else:
            self.sums[key] = self.sums.get(key, 0.0) + (end - start)

    def totals(self) -> dict[str, float]:
        if self.pending:
            self.pending[-1][2].synchronize()       # events complete in stream order: all earlier ones too
            for key, start, end in self.pending:
                self.sums[key] = self.sums.get(key, 0.0) + start.elapsed_time(end) / 1e3
        out, self.pending, self.sums = self.sums, [], {}
        return out


def _timings(fn: Callable, repeats: int, number: int = 1, device: torch.device = torch.device("cpu")
             ) -> list[float]:
    """Seconds per call of `fn`, `repeats` times (each the mean of `number` calls), through
    `torch.utils.benchmark` at the process's thread count, its clock waiting for `device`
    (the one `fn` runs on: the benchmark's own waits for the current CUDA device only)."""
    # Imported here: it costs 0.2 s. It imports torch's C++-extension builder, which warns
    # "No CUDA runtime is found, using CUDA_HOME=..." on a CPU machine with a CUDA toolkit
    # installed; nothing here builds an extension, so that warning is silenced.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torch.utils.benchmark as benchmark
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(),
                            timer=Clock(device))
    return [timer.timeit(number).mean for _ in range(repeats)]


def _median_iqr(values: list[float]) -> tuple[float, float]:
    q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return float(q[1]), float(q[2] - q[0])


def measure_speed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_eval: torch.Tensor, make_step: Callable,
                  repeats: int, autocast: Callable = contextlib.nullcontext,
                  deployed: Optional[nn.Module] = None,
                  wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> dict[str, float]:
    """Measured speed of the final model, each as median and interquartile range over
    `repeats` timings after one untimed warm-up: inference latency at batch 1, inference
    throughput at the evaluation batch (`x_eval`), both in eval mode under the training
    precision's `autocast` and of `deployed` where given (the method's deployed form of
    `model`), and the training step of `model` at the training batch (`x`, `y`); all on
    copies, so the measured model is not changed. Inference runs through `wrap` (what
    training ran through, e.g. torch.compile; its compilation falls in the warm-up);
    `make_step` wraps the training step's copy itself."""
    repeats = max(2, repeats)
    device = x.device
    m = wrap(copy.deepcopy(model if deployed is None else deployed).eval())
    out: dict[str, float] = {}

    def infer(batch: torch.Tensor) -> Callable:
        def run():
            with torch.no_grad(), autocast():
                m(batch)
        return run

    for key, batch, number in (("latency_b1_ms", x_eval[:1], 10), ("infer_batch_ms", x_eval, 1)):
        fn = infer(batch)
        fn()
        out[f"{key}_median"], out[f"{key}_iqr"] = (1e3 * v for v in _median_iqr(_timings(fn, repeats, number, device)))
    step = make_step(copy.deepcopy(model).train())
    step(x, y)
    out["train_step_ms_median"], out["train_step_ms_iqr"] = (
        1e3 * v for v in _median_iqr(_timings(lambda: step(x, y), repeats, device=device)))
    out["throughput_infer_img_s"] = len(x_eval) / out["infer_batch_ms_median"] * 1e3
    out["throughput_train_img_s"] = len(x) / out["train_step_ms_median"] * 1e3
    out["speed_batch_sizes"] = {"latency": 1, "infer": len(x_eval), "train": len(x)}
    # The 1-min load average over the timings, beside the threads they used: a load above the
    # CPU count says another process shared the CPU and the times are skewed.
    out["speed_cpu_load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out["speed_cpus"] = os.cpu_count() or 1
    return out
