"""GMP: gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017).

Trains dense at first (every mask of the engine, methods/_sparse.py, starts all
active) and, every Delta t steps from t0 to t1, masks each sparse layer's active
weights of smallest |w| until its sparsity reaches the cubic schedule (the paper's
eq. 1)
    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3,   t0 <= t <= t1,
with s_i = 0 and s_f the layer's final sparsity (from `target_params` and
`allocation`), so the sparsity rises fast at first and slowly near the end; from t1 on
the model keeps s_f and trains (fine-tunes) with fixed masks. A masked weight stays
masked (its weight and optimizer state are zero).

`allocation: global` ranks the weights of all sparse layers together instead (one
magnitude threshold; the per-layer sparsities follow from the magnitudes), with the
total following the same schedule. With `start_frac` = `end_frac` the whole target is
pruned at once at that point and the rest of the budget fine-tunes: one-shot global
magnitude pruning + fine-tuning is `allocation: global, start_frac: x, end_frac: x`.
Under `global` there is no per-layer target (`active_target` is reported as null); a
pruning step that would leave a sparse layer without a weight stops the run with a
ConfigError naming the layer (raise `target_params`, or use a per-layer allocation),
and a budget of fewer weights than sparse layers is refused at the start.

Defaults: the schedule the RigL authors use for their GMP baseline on CIFAR-10
(google-research/rigl, cifar_resnet: 97,656 steps, pruning from step 20,000 to
75,000 every 1,000 steps), as fractions of the step budget: t0 = 20.5%, t1 = 76.8%,
Delta t = 1.02% of it (Zhu & Gupta use Delta t of 100 to 1,000 steps). Scaled to a
budget the whole schedule shrinks with it, so the paper's number of pruning steps
(about 55) is kept: in the quick suite (4 epochs of 195 steps, 780 steps) t0 = 160,
t1 = 599, Delta t = 8, 56 pruning steps.
(Scaling Delta t by steps per epoch instead, as RigL's Delta T, would leave one or two
pruning events at this budget: one-shot pruning, not the cubic schedule.)

Choices where the sources are silent or differ:
  - allocation: uniform by default (Zhu & Gupta prune every layer to the same
    sparsity); the first conv, 1x1 shortcuts and the classifier stay dense (the
    family's layer rule; the RigL authors' pruning baseline also keeps the first layer
    dense but prunes the classifier and, in their CIFAR ResNet, the 1x1 shortcut convs:
    methods/_sparse.py);
  - a pruning step at t prunes to s_t exactly (per layer: n_l - round(s_t n_l) weights
    kept), and t1 is always a pruning step, so the target is met exactly there even
    when Delta t does not divide t1 - t0; ties in |w| go to the lower flat index;
  - pruning happens after the optimizer step of step t, outside autocast, on the
    float32 weights. A pruning step reads counts on the host (a device
    synchronisation); other steps read nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from bench.config import ConfigError, opt
from methods._sparse import (SparseConfig, SparseTraining, cubic_sparsity, layer_counts, top_positions,
                             write_mask_)
from methods.base import register

PAPER_STEPS = 97_656          # the RigL authors' CIFAR-10 budget: 250 epochs at batch 128
PAPER_BEGIN, PAPER_END, PAPER_FREQUENCY = 20_000, 75_000, 1_000


@register("gmp")
class GMP(SparseTraining):
    """Gradual magnitude pruning (Zhu & Gupta 2017): dense start, cubic sparsity schedule, magnitude masks."""

    dense_start = True

    @dataclass
    class Config(SparseConfig):
        allocation: str = opt("uniform", "final sparsity per layer: uniform (paper: every layer alike), erk, or "
                                         "global (one magnitude ranking over all sparse layers)",
                              choices=("uniform", "erk", "global"))
        start_frac: float = opt(PAPER_BEGIN / PAPER_STEPS, "t0, first pruning step as a fraction of the step "
                                                           "budget (RigL authors' CIFAR-10 GMP: 20,000 of 97,656)")
        end_frac: float = opt(PAPER_END / PAPER_STEPS, "t1, the step the target is reached, as a fraction of the "
                                                       "step budget (RigL authors' CIFAR-10 GMP: 75,000 of 97,656)")
        period_frac: float = opt(PAPER_FREQUENCY / PAPER_STEPS, "Delta t, steps between pruning steps as a fraction "
                                                                "of the step budget (RigL authors': 1,000 of 97,656)")

        def validate(self) -> None:
            super().validate()
            if not 0.0 <= self.start_frac <= self.end_frac <= 1.0:
                raise ConfigError(f"method.start_frac={self.start_frac} and method.end_frac={self.end_frac} need "
                                  f"0 <= start_frac <= end_frac <= 1")
            if self.period_frac <= 0:
                raise ConfigError(f"method.period_frac={self.period_frac} must be > 0")

    # ---- schedule ----------------------------------------------------------------------
    @property
    def start_step(self) -> int:
        return max(1, round(self.cfg.start_frac * self.total_steps))

    @property
    def end_step(self) -> int:
        return max(self.start_step, round(self.cfg.end_frac * self.total_steps))

    @property
    def period(self) -> int:
        return max(1, round(self.cfg.period_frac * self.total_steps))

    def due(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (
            (step - self.start_step) % self.period == 0 or step == self.end_step)

    def sparsity_at(self, step: int, final: float) -> float:
        """s_t of a tensor whose final sparsity is `final` (the paper's eq. 1, s_i = 0)."""
        return cubic_sparsity(final, step, self.start_step, self.end_step)

    def counts(self, shapes: list[tuple[int, ...]], nnz: int) -> Optional[list[int]]:
        if self.cfg.allocation != "global":
            return layer_counts(self.cfg.allocation, shapes, nnz)
        # global: no per-layer targets (the per-layer counts follow from the magnitudes,
        # checked at every pruning step); fewer weights than layers must empty one
        if nnz < len(shapes):
            raise ConfigError(f"method.target_params={self.cfg.target_params} leaves {nnz} weights to the "
                              f"{len(shapes)} sparse layers of {self.ctx.model_name}: global pruning would leave "
                              f"a layer without a weight; raise the target")
        return None

    def schedule_info(self) -> dict[str, Any]:
        steps = [t for t in range(self.start_step, self.end_step + 1) if self.due(t)]
        return {"start_step": self.start_step, "end_step": self.end_step, "period_steps": self.period,
                "pruning_steps": len(steps)}

    # ---- the pruning step --------------------------------------------------------------
    @torch.no_grad()
    def update(self, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        step = self.ctx.step
        s_total = self.info["params_sparse_tensors"]
        final = self.info["sparsity_of_sparse_tensors"]
        dropped = 0
        if self.cfg.allocation == "global":
            keep_n = s_total - round(self.sparsity_at(step, final) * s_total)
            masks = [self.mask(m).flatten().clone() for _, m in layers]   # copies: written below
            active = sum(int(x.sum()) for x in masks)
            if keep_n < active:
                scores = torch.cat([m.weight.detach().abs().flatten().float() for _, m in layers])
                keep = top_positions(scores, torch.cat(masks), keep_n)
                parts = keep.split([x.numel() for x in masks])
                self.check_not_empty(layers, parts, step)
                for (_, m), part, old in zip(layers, parts, masks):
                    write_mask_(self.mask(m), part)
                    dropped += int((old & ~part).sum())
        else:
            for name, m in layers:
                mask = self.mask(m)
                size = mask.numel()
                layer_final = 1.0 - self.info["active_target"][name] / size
                keep_n = size - round(self.sparsity_at(step, layer_final) * size)
                active = int(mask.sum())
                if keep_n < active:
                    write_mask_(mask, top_positions(m.weight.detach().abs(), mask.flatten(), keep_n))
                    dropped += active - keep_n
        return {"sparsity": self.sparsity_at(step, final), "dropped": dropped, "grown": 0}

    def check_not_empty(self, layers: list[tuple[str, nn.Module]], parts: tuple[torch.Tensor, ...], step: int) -> None:
        """A ConfigError if a global prune would leave a sparse layer without a weight (the
        per-layer counts of the new masks, read on the host once; nothing is changed)."""
        left = torch.stack([p.sum() for p in parts]).tolist()
        empty = [name for (name, _), n in zip(layers, left) if n == 0]
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise ConfigError(f"gmp: global magnitude pruning at step {step} leaves layer {empty[0]}{more} of "
                              f"{self.ctx.model_name} without a weight (method.target_params="
                              f"{self.cfg.target_params}); raise the target, or use method.allocation=uniform or "
                              f"erk (per-layer targets keep every layer)")
