"""Multi-process helpers: every function is a no-op (or the identity) in one process.

`torchrun --nproc_per_node=N -m bench run CONFIG` sets RANK, WORLD_SIZE and
LOCAL_RANK; `init_from_env` then joins the process group (NCCL on GPUs, gloo on
CPU). Each rank takes its shard of every batch of the device-resident data, DDP
averages gradients, evaluation counts are summed across ranks, calibration
statistics are sums and are all-reduced (so every rank performs the identical
surgery), and only rank 0 writes files and logs to W&B.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_name: str) -> torch.device:
    """Join the process group if launched by torchrun; return this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_name != "cpu" and torch.cuda.is_available()
    if world > 1 and want_cuda:
        torch.cuda.set_device(local)       # NCCL's collectives use the current device
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", timeout=timedelta(minutes=30))
    if world > 1:
        if device_name.startswith("cuda") and not torch.cuda.is_available():
            from bench.config import ConfigError
            raise ConfigError(f"device '{device_name}' requested but CUDA is not available; use device=cpu")
        return torch.device(f"cuda:{local}") if want_cuda else torch.device("cpu")
    return None  # single process: the caller resolves the device as usual


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a batch (the whole batch in one process)."""
    if not is_distributed():
        return x
    return x.tensor_split(world_size())[rank()]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
