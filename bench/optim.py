"""Optimizer factory and learning-rate schedules as pure functions of the step.

The schedule is a function `lr(step)`, set on the optimizer before every step, so
a method that replaces the model (and with it the optimizer) continues the
schedule exactly where it was.
"""
from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from bench.config import TrainConfig

ONECYCLE_START_FRAC = 0.0  # onecycle starts from lr * this and ends at 0 (linear ramps)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters (frozen ones are skipped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    total = max(1, total_steps)
    frac = step / total
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
    warm = cfg.warmup_frac
    if warm > 0 and frac < warm:
        ramp = min(1.0, (step + 1) / (warm * total))  # +1: the first step is not wasted at lr 0
        start = ONECYCLE_START_FRAC if cfg.schedule == "onecycle" else 0.0
        return cfg.lr * (start + (1 - start) * ramp)
    rest = (frac - warm) / max(1e-12, 1 - warm)
    if cfg.schedule == "onecycle":
        return cfg.lr * max(0.0, 1.0 - rest)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, rest)))  # cosine
