"""What differs between devices, in one place: the device, the precision and memory format
it trains at best, and a clock that waits for it.

`train.precision: auto` picks bf16 autocast where the device runs bf16 natively (CUDA
GPUs with bf16 units; CPUs with AVX512-BF16 or AMX on x86, the BF16 extension on Arm)
and float32 elsewhere, with a one-line notice. `bf16` on a device that would only
emulate it is a configuration error, never a silent fallback. `train.memory_format:
auto` picks channels_last on the same devices (the convolution kernels of cuDNN and
oneDNN are fastest in NHWC there). Only the forward and loss run under autocast;
parameters, gradients and optimizer state stay float32, and methods compute their
statistics outside autocast in float32/float64 (each method's docstring says where).
"""
from __future__ import annotations

import functools
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from bench import dist
from bench.config import ConfigError, TrainConfig
from bench.metrics import Clock

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 (/proc/cpuinfo flags), Arm (Features)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu or device=auto")
    return dev


@functools.lru_cache(maxsize=None)
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU feature flags that mean native bf16 arithmetic (empty where none or unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(f for f in CPU_BF16_FLAGS if f in value.split())
    return ()


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
        cpu = platform.processor() or platform.machine()
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


def resolve_memory_format(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "channels_last" if native_bf16(device)[0] else "contiguous"


class Runtime:
    """Device, precision and memory format of one run; the only place that branches on them."""

    def __init__(self, device: torch.device, cfg: TrainConfig):
        self.device = device
        self.precision = resolve_precision(cfg.precision, device)
        self.memory_format = resolve_memory_format(cfg.memory_format, device)
        self.channels_last = self.memory_format == "channels_last"
        self.compile = cfg.compile
        self.clock = Clock(device)

    def describe(self) -> dict[str, str]:
        """What summary.json and env.json record."""
        return {"precision": self.precision, "memory_format": self.memory_format, "compile": self.compile}

    def place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def runner(self, model: nn.Module, parallel: bool = True) -> nn.Module:
        """The callable that runs forward passes (DDP-wrapped under torchrun, compiled if
        asked); `model` stays the one methods see and checkpoints hold."""
        if parallel and dist.is_distributed():
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(model) if self.compile else model

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        """The context the forward pass and loss run in (training, evaluation, probes)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()
