"""DSR: dynamic sparse reparameterization (Mostafa & Wang, ICML 2019, arXiv 1902.05967).

Trains a sparse network directly: a fixed budget of non-zero weights is moved within
and across layers during training (docs/methods/dsr.md, the paper's Algorithm 1; the authors' code is
github IntelAI/dynamic-reparameterization). Built on the family's mask engine
(methods/_sparse.py), which holds what every sparse-training method shares: which
layers are sparse, the target and its allocation, masks as buffers, the masking of
weights and optimizer state after every step, DDP and resume. What is DSR's own:

Initial masks: every sparse tensor at the same sparsity (`allocation: uniform`, the
paper's setting) with a uniformly random mask drawn from the method's generator.

Reallocation (Algorithm 1), every P steps until `stop_frac` of the budget:
  1. prune: active weights with |w| < H (one global H) -> masked, w = 0; K = number pruned;
     a layer whose every active weight is below H keeps its largest-magnitude one (the
     authors' `prune_threshold` also keeps one, "removing all. keeping one"): an empty
     layer would have no survivors and so never regrow (its share is R_l = 0);
  2. regrow: layer l gets round(K * R_l / sum R) (R_l: its surviving active count),
     the rounding remainder goes to a random layer, and a layer with fewer free slots
     than its share takes what fits while the rest is shared out again the same way
     among layers that still have room; positions are drawn uniformly at random
     among the layer's zero positions that were not just pruned, start at w = 0 and
     zero optimizer state;
  3. H <- H / 2 if K > (1 + delta) Np;  H <- 2 H if K < (1 - delta) Np.
The number of active weights never changes.

Defaults, scaled from the paper's WRN-28-2 / CIFAR-10 run (200 epochs, batch 100,
500 steps an epoch; Np = 20,000, delta = 0.1, H0 = 1e-3; P = 100, 200, 400, 800
steps from epochs 0, 25, 80, 140; no reallocation from epoch 190):
  - Np is proportional to the size of the sparse tensors: Np = prune_target_frac * S
    with prune_target_frac = 20,000 / 1,451,520 (S of WRN-28-2: its 3x3 convs but
    the first). Np is a fixed count per reallocation, independent of the sparsity, as
    in the paper (same Np at every sparsity).
  - The phase boundaries and the stop are fractions of the epoch budget (0, 25/200,
    80/200, 140/200; stop 190/200), so a 200-epoch run gets the paper's epochs.
  - P keeps the paper's number of reallocations per epoch (5, 2.5, 1.25, 0.625):
    P = round(P_paper * steps_per_epoch / 500), at least 1 (`scale_period`). So every
    reallocation sees the same fraction of the data before the next one as in the
    paper; a short budget makes fewer reallocations in total (8 epochs: about 15
    instead of about 370).
**Choices** where the sources are silent or differ:
  - regrowth excludes the positions just pruned (as the paper says; so does the authors'
    `grow_random`, which draws among the zeros minus `pruned_indices`). Where all other
    zero positions together cannot hold K (only at near-zero sparsity) the authors grow
    fewer and the count drops; we regrow the rest into just-pruned positions (at w = 0),
    keeping the count constant;
  - the weight a layer keeps when H would empty it: its largest |w| (ties: the first
    in flat order); the authors' code keeps the first active one in flat order;
  - the harness's `params_nonzero` counts exact zeros: a regrown weight is 0 until
    its first update, so it can sit slightly below the active count reported here.
`reallocate: false` is the static sparse control (DSR's own ablation, the suites'
`dsr_static`): the same initial masks, never moved (the `static` method computes the
same masks).
Precision: masks, thresholds and magnitudes are computed in `after_step`, outside the
harness's autocast, on the float32 parameters themselves (autocast never changes
their dtype), so bf16 training needs nothing here. A reallocation reads counts on the
host (a device synchronisation); steps without one read nothing.
Reported: per-layer active counts every epoch (`dsr/active/<layer>`), H, K per
reallocation, the time of each reallocation against the mean training-step time.
The masks keep the buffer name `dsr_mask` (the other methods of the family use
`sparse_mask`), so checkpoints and resume states written before the engine still load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from bench.config import ConfigError, opt
from methods import _sparse
from methods._sparse import SparseConfig, SparseTraining, sparse_layer_names, split_exact  # noqa: F401 (re-exported)
from methods.base import register

# The paper's WRN-28-2 / CIFAR-10 setting (Mostafa & Wang 2019, sec. 4 and appendix).
PAPER_NP = 20_000                     # weights pruned (and regrown) per reallocation
WRN28_2_SPARSE_PARAMS = 1_451_520     # 3x3 convs of WRN-28-2 except the first: 69,120 + 276,480 + 1,105,920
PAPER_STEPS_PER_EPOCH = 500           # 50,000 images at batch 100
PAPER_EPOCHS = 200
MASK = "dsr_mask"                     # buffer name on each sparse layer


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer carrying a DSR mask, in module order."""
    return _sparse.masked_layers(model, MASK)


def apply_masks(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """w *= mask, and every optimizer state tensor shaped like w *= mask."""
    _sparse.apply_masks(model, optimizer, MASK)


# --------------------------------------------------------------------------- pure helpers
def adjust_threshold(h: float, pruned: int, np_target: int, tolerance: float) -> float:
    """Algorithm 1: halve H when too many were pruned, double it when too few."""
    if pruned > (1 + tolerance) * np_target:
        return h / 2
    if pruned < (1 - tolerance) * np_target:
        return h * 2
    return h


def allocate_regrowth(k: int, survivors: list[int], capacity: list[int], generator: torch.Generator
                      ) -> tuple[list[int], int]:
    """Share `k` regrown weights out in proportion to `survivors`, capped by `capacity`.

    Each round gives layer l round(k * R_l / sum R) over the layers that still have
    room; the rounding remainder (either sign) goes to a random layer; what a full
    layer cannot take is shared out again. Returns (per-layer counts, count left
    over when every layer is full)."""
    grow = [0] * len(survivors)
    left = k
    while left > 0:
        open_ = [i for i in range(len(grow)) if capacity[i] - grow[i] > 0]
        if not open_:
            break
        w = [survivors[i] for i in open_]
        if sum(w) == 0:          # every open layer lost all its weights: share evenly
            w = [1] * len(open_)
        total = sum(w)
        shares = [round(left * wi / total) for wi in w]
        diff = left - sum(shares)
        while diff != 0:         # rounding remainder to a random layer
            j = int(torch.randint(len(open_), (1,), generator=generator))
            if diff > 0:
                shares[j] += diff
                diff = 0
            else:
                take = min(shares[j], -diff)
                shares[j] -= take
                diff += take
        for j, i in enumerate(open_):
            add = min(shares[j], capacity[i] - grow[i])
            grow[i] += add
            left -= add
    return grow, left


def _choose(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` flat indices drawn uniformly without replacement where `candidates` is True."""
    idx = torch.nonzero(candidates.flatten()).squeeze(1)
    pick = torch.randperm(len(idx), generator=generator)[:n]
    return idx[pick.to(idx.device)]


def prune_mask(w: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Active weights with |w| < threshold, except that a layer is never emptied: if
    all its active weights are below it, the largest-magnitude one stays."""
    # Contiguous, so that flat (logical-order) indices address it whatever the layout of
    # `w` and `mask` (channels_last buffers after a resume).
    pruned = (mask & (w.abs() < threshold)).contiguous()
    if bool(pruned.any()) and torch.equal(pruned, mask):
        keep = torch.where(mask, w.abs(), torch.full_like(w, -1.0)).flatten().argmax()
        pruned.view(-1)[keep] = False
    return pruned


@torch.no_grad()
def reallocate(weights: list[torch.Tensor], masks: list[torch.Tensor], threshold: float,
               generator: torch.Generator) -> dict[str, Any]:
    """One prune-and-regrow step of Algorithm 1, in place on `weights` and `masks`.

    Returns K, the per-layer pruned and grown counts and the boolean masks of the
    pruned and regrown positions (for resetting optimizer state)."""
    pruned = [prune_mask(w, m, threshold) for w, m in zip(weights, masks)]
    for w, m, p in zip(weights, masks, pruned):
        m &= ~p
        w.masked_fill_(p, 0.0)
    pruned_n = [int(p.sum()) for p in pruned]
    k = sum(pruned_n)
    survivors = [int(m.sum()) for m in masks]
    capacity = [m.numel() - s - pn for m, s, pn in zip(masks, survivors, pruned_n)]
    grow, left = allocate_regrowth(k, survivors, capacity, generator)
    grown = [torch.zeros(m.shape, dtype=m.dtype, device=m.device) for m in masks]   # contiguous: see prune_mask
    for g, m, p, n in zip(grown, masks, pruned, grow):
        if n:
            g.view(-1)[_choose(~m & ~p, n, generator)] = True
    if left:  # only when the other zero positions cannot hold K: reuse just-pruned ones
        extra, left = allocate_regrowth(left, survivors, pruned_n, generator)
        for g, p, n in zip(grown, pruned, extra):
            if n:
                g.view(-1)[_choose(p, n, generator)] = True
        grow = [a + b for a, b in zip(grow, extra)]
    for w, m, g in zip(weights, masks, grown):
        m |= g
        w.masked_fill_(g, 0.0)   # regrown weights start at zero
    return {"pruned": k, "pruned_per_layer": pruned_n, "grown_per_layer": grow,
            "pruned_masks": pruned, "grown_masks": grown}


# --------------------------------------------------------------------------- the method
@register("dsr")
class DSR(SparseTraining):
    """Dynamic sparse reparameterization (Mostafa & Wang, ICML 2019): a constant non-zero budget moved across layers."""

    mask_name = MASK

    @dataclass
    class Config(SparseConfig):
        prune_target_frac: float = opt(PAPER_NP / WRN28_2_SPARSE_PARAMS,
                                       "Np, weights to prune per reallocation, as a fraction of the sparse tensors' "
                                       "size (paper: 20,000 of WRN-28-2's 1,451,520)")
        prune_tol_frac: float = opt(0.1, "delta: H is halved above (1+delta) Np pruned, doubled below (1-delta) Np (paper)")
        threshold_init: float = opt(1e-3, "H0, the initial pruning threshold on |w| (paper)")
        period_steps: list[int] = opt([100, 200, 400, 800], "P per phase, in the paper's steps (500 an epoch)")
        period_start_frac: list[float] = opt([0.0, 0.125, 0.4, 0.7],
                                             "start of each P phase as a fraction of the epoch budget "
                                             "(paper: epochs 0, 25, 80, 140 of 200)")
        stop_frac: float = opt(0.95, "no reallocation after this fraction of the epoch budget (paper: 190 of 200)")
        scale_period: bool = opt(True, "scale P by steps_per_epoch / 500 (same reallocations per epoch as the "
                                       "paper); false: period_steps are used as they are")
        reallocate: bool = opt(True, "false: the static sparse control (DSR's own ablation): the same initial "
                                     "random masks, never reallocated")

        def validate(self) -> None:
            super().validate()
            if self.prune_target_frac <= 0 or self.threshold_init <= 0 or not 0 <= self.prune_tol_frac < 1:
                raise ConfigError("method.prune_target_frac and method.threshold_init must be > 0 and "
                                  "method.prune_tol_frac in [0, 1)")
            if (len(self.period_steps) != len(self.period_start_frac) or not self.period_steps
                    or min(self.period_steps) < 1):
                raise ConfigError("method.period_steps and method.period_start_frac need the same non-zero "
                                  "length and periods >= 1 (e.g. [100, 200] and [0.0, 0.5])")
            if self.period_start_frac[0] != 0.0 or sorted(self.period_start_frac) != list(self.period_start_frac):
                raise ConfigError("method.period_start_frac must start at 0.0 and increase, "
                                  "e.g. [0.0, 0.125, 0.4, 0.7]")
            if not 0.0 < self.stop_frac <= 1.0:
                raise ConfigError(f"method.stop_frac={self.stop_frac} must be in (0, 1]")

    def __init__(self, cfg: Config, ctx):
        super().__init__(cfg, ctx)
        self.threshold = cfg.threshold_init
        self.steps_since = 0

    @property
    def reallocs(self) -> list[dict]:
        """The reallocations so far (the engine's update records)."""
        return self.updates

    # ---- schedule ----------------------------------------------------------------------
    def periods(self) -> list[int]:
        scale = self.ctx.steps_per_epoch / PAPER_STEPS_PER_EPOCH if self.cfg.scale_period else 1.0
        return [max(1, round(p * scale)) for p in self.cfg.period_steps]

    def period_at(self, epoch_float: float) -> Optional[int]:
        """P in force at this (fractional) epoch, or None once reallocation has stopped."""
        budget = self.ctx.epochs
        if epoch_float >= self.cfg.stop_frac * budget:
            return None
        phase = max(i for i, f in enumerate(self.cfg.period_start_frac) if f * budget <= epoch_float)
        return self.periods()[phase]

    def schedule_info(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        return {"np": max(1, round(cfg.prune_target_frac * self.info["params_sparse_tensors"])),
                "period_steps_resolved": self.periods(),
                "period_start_epochs": [f * ctx.epochs for f in cfg.period_start_frac],
                "stop_epoch": cfg.stop_frac * ctx.epochs}

    def due(self, step: int) -> bool:
        """Every P steps (P of the phase in force) until `stop_frac` of the budget."""
        self.steps_since += 1
        period = self.period_at(step / self.ctx.steps_per_epoch)
        if self.cfg.reallocate and period is not None and self.steps_since >= period:
            self.steps_since = 0
            return True
        return False

    def update(self, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        h = self.threshold
        out = reallocate([m.weight.data for _, m in layers], [self.mask(m) for _, m in layers], h,
                         self.ctx.generator)
        self.threshold = adjust_threshold(h, out["pruned"], self.info["np"], self.cfg.prune_tol_frac)
        return {"threshold": h, "pruned": out["pruned"], "dropped": out["pruned"],
                "grown": sum(out["grown_per_layer"])}

    def epoch_extra(self) -> dict[str, Any]:
        acc = self._acc
        return {"threshold": self.threshold, "reallocs": acc["updates"], "pruned": acc["dropped"],
                "pruned_per_realloc": acc["dropped"] / max(1, acc["updates"])}

    # ---- reporting and resume ----------------------------------------------------------
    def summary(self, model: nn.Module) -> dict[str, Any]:
        out = super().summary(model)
        out.update({"threshold_final": self.threshold, "reallocations": out["updates"],
                    "realloc_log": self.updates})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "threshold": self.threshold, "steps_since": self.steps_since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "reallocs" in state:      # a run interrupted before the engine: its records had other names
            state = {**state, "updates": state["reallocs"]}
        super().load_state_dict(state)
        self.threshold = state["threshold"]
        self.steps_since = state["steps_since"]
