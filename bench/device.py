"""What differs between devices, in one place: the device, the precision and memory format
it trains at best, and a clock that waits for it.

`train.precision: auto` picks bf16 autocast where the device runs bf16 natively (CUDA
GPUs with bf16 units; CPUs with AVX512-BF16 or AMX on x86, the BF16 extension on Arm)
and float32 elsewhere, with a one-line notice. `bf16` on a device that would only
emulate it is a configuration error, never a silent fallback. `train.memory_format:
auto` picks channels_last on CPUs and CUDA GPUs at either precision (the convolution
kernels of oneDNN and cuDNN are fastest in NHWC: measured with `make bench-overhead` at fp32
on 2-core EPYC CPUs, docs/timing.md gives the ratios) and contiguous on other devices, where
it is unmeasured. Only the forward and loss run under autocast; parameters, gradients and
optimizer state stay float32, and methods compute their statistics outside autocast in
float32/float64 (each method's docstring says where).
"""
from __future__ import annotations

import functools
import inspect
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from bench import dist
from bench.config import ConfigError, TrainConfig, check_device_name
from bench.metrics import Clock

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 (/proc/cpuinfo flags), Arm (Features)


def resolve_device(name: str) -> torch.device:
    """The device `name` (`auto`: CUDA where available, else the CPU). A numbered CUDA
    device becomes the current one, as torchrun's ranks do (bench.dist): code that works
    on "the current device" (kernels launched without a device, the benchmark timer's
    synchronisation, autocast) then works on the run's device rather than on GPU 0."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)                  # `foo`, `mps`: one line saying what is accepted
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}': use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu or device=auto")
    if dev.type == "cuda" and dev.index is not None:
        try:
            torch.cuda.set_device(dev)
        except RuntimeError:                 # an index past the last GPU: "invalid device ordinal"
            n = torch.cuda.device_count()
            raise ConfigError(f"device '{name}': this machine has {n} CUDA device(s); use cuda:0"
                              f"{f' to cuda:{n - 1}' if n > 1 else ''} or device=auto") from None
    return dev


def ddp_options() -> dict[str, bool]:
    """DistributedDataParallel without re-sending the buffers from rank 0 before every
    forward: they are identical on every rank without it (BN statistics are averaged over
    the ranks at each epoch's end, and a method changes its buffers identically on every
    rank, methods/base.py), while the broadcast would cost a transfer of every buffer per
    step (decorrelated BP's R matrices: hundreds of MB on VGG-16). Where this torch names
    it `forward_sync_buffers`, buffers are still synchronised once when the model is
    wrapped; `broadcast_buffers=False` (older torch) skips that too, harmless because the
    ranks build and change their buffers identically."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` (on the host) on `device` without the host waiting for the device: a copy from
    pageable host memory to a GPU first waits for the work queued before it, so the copy
    goes from pinned memory, asynchronously (the caching host allocator keeps the pinned
    block until the copy has run). Where no accelerator is involved it is `t.to(device)`."""
    if t.device.type != "cpu" or device.type == "cpu":
        return t.to(device)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@functools.lru_cache(maxsize=None)
def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU feature flags that mean native bf16 arithmetic (empty where none or unknown)."""
    fields = _cpuinfo(cpuinfo)
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, for env.json and retime.json: timings from two machines are not
    comparable. "unknown" where /proc/cpuinfo names none (never the architecture or the
    kernel build, which do not tell two machines apart)."""
    fields = _cpuinfo(cpuinfo)
    return fields.get("model name") or fields.get("Model") or "unknown"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to on this machine (`AVX2`,
    `AVX512`, ...; "unknown" where torch does not say), for env.json and retime.json:
    two CPUs of one model name ("AMD EPYC") can differ in it, and then in their kernels
    and timings."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(does `device` run bf16 natively, the reason in words)."""
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:                      # older torch: no emulation argument
            ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'has' if ok else 'has no'} bf16 units"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        cpu = cpu_model()
        return bool(flags), (f"this {cpu} CPU has {', '.join(flags)}" if flags
                             else f"this {cpu} CPU has no native bf16 (no {'/'.join(CPU_BF16_FLAGS[:2])} flag)")
    return False, f"bf16 autocast is not supported by this suite on {device.type}"


def resolve_precision(requested: str, device: torch.device, notice=lambda s: print(s, file=sys.stderr)) -> str:
    """'bf16' or 'fp32' for `train.precision` on `device`; an error where bf16 was asked
    for and the device would only emulate it."""
    if requested == "fp32":
        return "fp32"
    ok, why = native_bf16(device)
    if requested == "bf16" and not ok:
        raise ConfigError(f"train.precision=bf16 but {why}; use train.precision=fp32 or auto")
    if requested == "auto" and not ok:
        if dist.is_main():
            notice(f"note: training in fp32: {why} (train.precision=auto)")
        return "fp32"
    return "bf16"


CHANNELS_LAST_DEVICES = ("cpu", "cuda")   # where `auto` picks channels_last (measured faster)


def resolve_memory_format(requested: str, device: torch.device) -> str:
    """`auto`: channels_last on the devices where it was measured faster (see the module
    docstring), whatever the precision; contiguous elsewhere."""
    if requested != "auto":
        return requested
    return "channels_last" if device.type in CHANNELS_LAST_DEVICES else "contiguous"


def parse_pin(value: str) -> tuple[str, str]:
    """`train.auto_resolves_to` ("fp32/contiguous") as (precision, memory format)."""
    precision, _, memory_format = value.partition("/")
    if precision not in ("bf16", "fp32") or memory_format not in ("channels_last", "contiguous"):
        raise ConfigError(f"train.auto_resolves_to='{value}': expected PRECISION/FORMAT with PRECISION bf16 or fp32 "
                          f"and FORMAT channels_last or contiguous, e.g. fp32/contiguous")
    return precision, memory_format


# oneDNN's CPU kernel for the weight gradient of a strided 1x1 convolution in channels_last
# is wrong when the convolution has fewer than 8 input channels (torch 2.14.1 on AVX2 x86
# CPUs: errors as large as the gradient itself, or heap corruption; forward pass and input
# gradient are right; 3x3 kernels, stride 1 and >= 8 input channels are right; the AVX-512
# kernel is right, but the guard applies on every CPU so that runs do not depend on it). Pruning
# creates such layers: a ResNet's downsample shortcut after the residual stream is cut
# below 8 channels. Those layers alone run in contiguous format on CPUs (input and weight;
# the output goes back to channels_last), which oneDNN computes correctly and which costs
# nothing measurable at that width. Planted case: tests/test_device.py.
ONEDNN_1X1_MIN_CHANNELS = 8


def _onednn_1x1_risk(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)


def _contiguous_input(m: nn.Conv2d, args: tuple) -> Optional[tuple]:
    if m.in_channels < ONEDNN_1X1_MIN_CHANNELS:
        return (args[0].contiguous(),) + tuple(args[1:])
    return None


def _channels_last_output(m: nn.Conv2d, args: tuple, out: torch.Tensor) -> Optional[torch.Tensor]:
    if m.in_channels < ONEDNN_1X1_MIN_CHANNELS:
        return out.contiguous(memory_format=torch.channels_last)
    return None


def guard_onednn_1x1(model: nn.Module) -> None:
    """Keep the strided 1x1 convolutions with < 8 input channels out of oneDNN's wrong
    channels_last kernel (see ONEDNN_1X1_MIN_CHANNELS): hooks on every strided 1x1
    convolution make the input contiguous while the layer is that narrow (pruning may
    narrow it later, in place), and the weights of the layers that are narrow now get
    contiguous strides (a (C_out, C_in, 1, 1) weight is channels_last-strided after
    `.to(memory_format=channels_last)`, and either operand in channels_last selects the
    kernel). Idempotent; call after every placement or in-place change of the model."""
    for m in model.modules():
        if not _onednn_1x1_risk(m):
            continue
        if not getattr(m, "_onednn_1x1_guarded", False):
            m.register_forward_pre_hook(_contiguous_input)
            m.register_forward_hook(_channels_last_output)
            m._onednn_1x1_guarded = True
        if m.in_channels < ONEDNN_1X1_MIN_CHANNELS:
            w = m.weight
            if w.stride() != w.new_empty(w.shape).stride():
                w.data = w.data.clone(memory_format=torch.contiguous_format)


def to_memory_format(model: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    """`model`, on `device`, in channels_last (guarded on CPUs, see guard_onednn_1x1) or as it is."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            guard_onednn_1x1(model)
    return model


class Runtime:
    """Device, precision and memory format of one run; the only place that branches on them."""

    def __init__(self, device: torch.device, cfg: TrainConfig):
        self.device = device
        precision, memory_format = cfg.precision, cfg.memory_format
        if cfg.auto_resolves_to and "auto" in (precision, memory_format):
            pinned = parse_pin(cfg.auto_resolves_to)
            ok, why = native_bf16(device)
            if precision == "auto" and pinned[0] == "bf16" and not ok:
                raise ConfigError(f"train.auto_resolves_to={cfg.auto_resolves_to} (the precision of this suite's "
                                  f"finished runs) but {why}; finish the suite on a machine with native bf16")
            precision = pinned[0] if precision == "auto" else precision
            memory_format = pinned[1] if memory_format == "auto" else memory_format
        self.precision = resolve_precision(precision, device)
        self.memory_format = resolve_memory_format(memory_format, device)
        self.channels_last = self.memory_format == "channels_last"
        self.compile = cfg.compile
        self.clock = Clock(device)
        if device.type == "cuda":
            # fp32 means fp32: PyTorch runs CUDA convolutions in TF32 by default (10-bit
            # mantissa) while matmuls stay fp32, a silent mix that differs by GPU generation.
            # Off for every op left in fp32 (all of them in fp32 runs, the non-autocast ones in bf16).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def describe(self) -> dict[str, str]:
        """What summary.json and env.json record."""
        return {"precision": self.precision, "memory_format": self.memory_format, "compile": self.compile}

    def place(self, model: nn.Module) -> nn.Module:
        return to_memory_format(model, self.channels_last, self.device)

    def runner(self, model: nn.Module, parallel: bool = True) -> nn.Module:
        """The callable that runs forward passes (DDP-wrapped under torchrun, compiled if
        asked); `model` stays the one methods see and checkpoints hold. Called again after
        a method changed the model in place, so the oneDNN guard sees its new widths."""
        if self.channels_last and self.device.type == "cpu":
            guard_onednn_1x1(model)
        if parallel and dist.is_distributed():
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **ddp_options())
        return torch.compile(model) if self.compile else model

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        """The context the forward pass and loss run in (training, evaluation, probes)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()
