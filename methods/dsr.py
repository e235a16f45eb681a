"""DSR: dynamic sparse reparameterization (Mostafa & Wang, ICML 2019, arXiv 1902.05967).

Trains a sparse network directly: a fixed budget of non-zero weights is moved within
and across layers during training (docs/methods/dsr.md, the paper's Algorithm 1; the
authors' code is github IntelAI/dynamic-reparameterization).

What is sparse: every Conv2d except the first one (in execution order) and except
1x1 shortcut convs (the blocks' projection shortcuts); BN parameters and biases stay dense; the
classifier (the last Linear) is sparse only with `sparse_classifier` (the paper's
ResNet-50 setting; its CIFAR WRN-28-2 setting keeps it dense). Every sparse tensor
starts at the same sparsity with a uniformly random mask drawn from the method's
generator.

Target. `target_params` is the fraction of the dense model's parameters that are
non-zero (mask-active). With D the dense part and S the size of the sparse tensors,
the sparse tensors get `round(target * P) - D` active weights (P = D + S), spread
over the tensors at one sparsity `1 - (round(target * P) - D) / S` (the authors'
`target_sparsity * np_total / np_sparse`), rounding by largest remainder so that the
total is exact.

Masks. Each sparse layer keeps its mask as a buffer `dsr_mask` (bool, same shape as
the weight) on the ordinary nn.Conv2d/nn.Linear, so the model pickles as is and the
shared MAC counter sees ordinary layers. `mask * w` in the forward pass is realised
by keeping `w` exactly zero at masked positions at every forward: `after_step`
re-applies `w *= mask` after each optimizer step and multiplies every optimizer
state tensor of that weight (SGD `momentum_buffer`, Adam `exp_avg`/`exp_avg_sq`) by
the mask, so neither the gradient nor momentum nor weight decay revives a masked
weight (its gradient is computed and thrown away).

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
  - the "first conv" is the first Conv2d to run on the example input;
  - "shortcut convs" are the 1x1 convs the model's structure names as a block's shortcut
    (bench.models.structure_of);
  - the harness's `params_nonzero` counts exact zeros: a regrown weight is 0 until
    its first update, so it can sit slightly below the active count reported here.
Precision: masks, thresholds and magnitudes are computed in `after_step`, outside the
harness's autocast, on the float32 parameters themselves (autocast never changes
their dtype), so bf16 training needs nothing here.
Under torchrun the weights are identical on every rank (DDP averages gradients) and
the regrowth draws come from the method's generator, seeded alike on every rank, so
every rank makes the identical reallocation.
Reported: per-layer active counts every epoch (`dsr/active/<layer>`), H, K per
reallocation, the time of each reallocation against the mean training-step time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from bench.config import ConfigError, opt
from bench.metrics import Clock
from bench.models import structure_of
from bench.stats import capture
from bench.targets import check_fraction
from methods.base import Method, MethodConfig, register

# The paper's WRN-28-2 / CIFAR-10 setting (Mostafa & Wang 2019, sec. 4 and appendix).
PAPER_NP = 20_000                     # weights pruned (and regrown) per reallocation
WRN28_2_SPARSE_PARAMS = 1_451_520     # 3x3 convs of WRN-28-2 except the first: 69,120 + 276,480 + 1,105,920
PAPER_STEPS_PER_EPOCH = 500           # 50,000 images at batch 100
PAPER_EPOCHS = 200
MASK = "dsr_mask"                     # buffer name on each sparse layer


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


def split_exact(total: int, sizes: list[int]) -> list[int]:
    """Counts proportional to `sizes` summing to `total` exactly (largest remainder)."""
    s = sum(sizes)
    raw = [total * n / s for n in sizes]
    out = [int(r) for r in raw]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def sparse_layer_names(model: nn.Module, example: torch.Tensor, sparse_classifier: bool) -> list[str]:
    """The layers DSR makes sparse: convs but the first to run and 1x1 shortcuts; the
    classifier (last Linear to run) only if `sparse_classifier`; other Linears."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    order: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(layers, lambda n, t: order.append(n) if n not in order else None,
                                      inputs=True):
            model(example)
    finally:
        model.train(was_training)
    convs = [n for n in order if isinstance(layers[n], nn.Conv2d)]
    linears = [n for n in order if isinstance(layers[n], nn.Linear)]
    shortcuts = {b.shortcut.conv for b in structure_of(model).blocks() if b.shortcut is not None}
    out = []
    for n in convs[1:]:
        m = layers[n]
        if tuple(m.kernel_size) == (1, 1) and n in shortcuts:
            continue
        out.append(n)
    out += linears[:-1] + (linears[-1:] if sparse_classifier else [])
    return out


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer carrying a DSR mask, in module order."""
    return [(n, m) for n, m in model.named_modules() if m._buffers.get(MASK) is not None]


@torch.no_grad()
def apply_masks(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """w *= mask, and every optimizer state tensor shaped like w *= mask."""
    for _, m in masked_layers(model):
        mask = getattr(m, MASK)
        m.weight.mul_(mask)
        if optimizer is not None:
            for v in optimizer.state.get(m.weight, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == mask.shape:
                    v.mul_(mask)


# --------------------------------------------------------------------------- the method
@register("dsr")
class DSR(Method):
    """Dynamic sparse reparameterization (Mostafa & Wang, ICML 2019): a constant non-zero budget moved across layers."""

    in_place_hooks = frozenset({"on_train_start"})   # registers the mask buffers on the sparse layers

    @dataclass
    class Config(MethodConfig):
        target_params: float = opt(0.5, "fraction of the dense model's parameters that are non-zero (mask-active); "
                                        "sets the sparsity of the sparse tensors")
        sparse_classifier: bool = opt(False, "make the classifier sparse too (paper: ResNet-50 yes, WRN-28-2 no)")
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
            check_fraction("target_params", self.target_params)
            if self.target_params == 1.0:
                raise ConfigError("method.target_params=1 leaves no weight masked for DSR to reallocate; "
                                  "use method.name=dense for the dense model")
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
        self.reallocs: list[dict] = []      # one record per reallocation
        self.epochs_log: list[dict] = []    # one record per epoch
        self.info: dict[str, Any] = {}      # resolved sparsity, Np, schedule
        self._epoch_acc = self._fresh_acc()
        self._last_end: Optional[float] = None

    @staticmethod
    def _fresh_acc() -> dict[str, float]:
        return {"reallocs": 0, "pruned": 0, "realloc_s": 0.0, "mask_s": 0.0, "step_s": 0.0, "steps": 0}

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

    # ---- hooks -------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        cfg, ctx = self.cfg, self.ctx
        names = sparse_layer_names(model, ctx.example_inputs, cfg.sparse_classifier)
        if not names:
            raise ConfigError(f"model {ctx.model_name} has no layer DSR can make sparse (it needs convs after "
                              f"the first, or method.sparse_classifier=true)")
        layers = [model.get_submodule(n) for n in names]
        sizes = [m.weight.numel() for m in layers]
        s_total = sum(sizes)
        p_total = ctx.dense_params    # targets are fractions of the model as built
        dense_part = p_total - s_total
        active_target = round(cfg.target_params * p_total)
        nnz_sparse = active_target - dense_part
        if nnz_sparse <= 0:
            raise ConfigError(f"method.target_params={cfg.target_params} is below the dense part of "
                              f"{ctx.model_name} ({dense_part / p_total:.4f} of its parameters: first conv, "
                              f"shortcuts, BN, biases, classifier); raise it or set method.sparse_classifier=true")
        counts = split_exact(nnz_sparse, sizes)
        with torch.no_grad():
            for m, n in zip(layers, counts):
                mask = torch.zeros(m.weight.numel(), dtype=torch.bool, device=m.weight.device)
                mask[torch.randperm(m.weight.numel(), generator=ctx.generator)[:n].to(mask.device)] = True
                m.register_buffer(MASK, mask.view_as(m.weight))
                m.weight.mul_(getattr(m, MASK))
        self.info = {
            "sparse_layers": names, "sparse_sizes": dict(zip(names, sizes)),
            "params_dense_model": p_total, "params_dense_part": dense_part, "params_sparse_tensors": s_total,
            "params_active": active_target, "sparsity_of_sparse_tensors": 1 - nnz_sparse / s_total,
            "np": max(1, round(cfg.prune_target_frac * s_total)),
            "period_steps_resolved": self.periods(),
            "period_start_epochs": [f * ctx.epochs for f in cfg.period_start_frac],
            "stop_epoch": cfg.stop_frac * ctx.epochs,
        }
        self.info["active_init"] = dict(zip(names, counts))
        return None   # changed in place (declared): same parameters, the optimizer has no state yet

    def after_step(self, model: nn.Module) -> None:
        ctx, acc = self.ctx, self._epoch_acc
        t0 = Clock(ctx.device)()
        if self._last_end is not None:
            acc["step_s"] += t0 - self._last_end
            acc["steps"] += 1
        apply_masks(model, ctx.optimizer)
        t1 = Clock(ctx.device)()
        acc["mask_s"] += t1 - t0
        self.steps_since += 1
        period = self.period_at(ctx.step / ctx.steps_per_epoch)
        if self.cfg.reallocate and period is not None and self.steps_since >= period:
            self.steps_since = 0
            self._reallocate(model, t1)
        self._last_end = Clock(ctx.device)()

    def _reallocate(self, model: nn.Module, t_start: float) -> None:
        ctx = self.ctx
        layers = masked_layers(model)
        h = self.threshold
        out = reallocate([m.weight.data for _, m in layers], [getattr(m, MASK) for _, m in layers], h,
                         ctx.generator)
        apply_masks(model, ctx.optimizer)   # zero the pruned weights' optimizer state
        self.threshold = adjust_threshold(h, out["pruned"], self.info["np"], self.cfg.prune_tol_frac)
        seconds = Clock(ctx.device)() - t_start
        self.reallocs.append({"step": ctx.step, "epoch": ctx.epoch, "threshold": h, "pruned": out["pruned"],
                              "grown": sum(out["grown_per_layer"]), "seconds": seconds})
        self._epoch_acc["reallocs"] += 1
        self._epoch_acc["pruned"] += out["pruned"]
        self._epoch_acc["realloc_s"] += seconds

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        acc = self._epoch_acc
        active = {n: int(getattr(m, MASK).sum()) for n, m in masked_layers(model)}
        step_s = acc["step_s"] / max(1, acc["steps"])
        realloc_s = acc["realloc_s"] / max(1, acc["reallocs"])
        self.epochs_log.append({
            "epoch": epoch, "threshold": self.threshold, "reallocs": acc["reallocs"], "pruned": acc["pruned"],
            "pruned_per_realloc": acc["pruned"] / max(1, acc["reallocs"]),
            "realloc_s": acc["realloc_s"], "realloc_s_mean": realloc_s, "mask_s": acc["mask_s"],
            "step_s_mean": step_s, "realloc_over_step": realloc_s / step_s if step_s > 0 else None,
            "active_sparse": sum(active.values()), "active": active,
        })
        self._epoch_acc = self._fresh_acc()
        self._last_end = None   # the next interval would include evaluation
        return None

    # ---- reporting ---------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        if not self.epochs_log:
            return {}
        rec = self.epochs_log[-1]
        out = {f"dsr/{k}": v for k, v in rec.items() if k not in ("active", "epoch") and v is not None}
        out.update({f"dsr/active/{n}": v for n, v in rec["active"].items()})
        return out

    def summary(self, model: nn.Module) -> dict[str, Any]:
        layers = masked_layers(model)
        final = {n: {"size": getattr(m, MASK).numel(), "active": int(getattr(m, MASK).sum()),
                     "density": float(getattr(m, MASK).float().mean())} for n, m in layers}
        n_re = len(self.reallocs)
        step_means = [r["step_s_mean"] for r in self.epochs_log if r["step_s_mean"] > 0]
        realloc_mean = sum(r["seconds"] for r in self.reallocs) / max(1, n_re)
        step_mean = sum(step_means) / max(1, len(step_means))
        return {
            **self.info,
            "active_sparse_final": sum(v["active"] for v in final.values()),
            "layers_final": final,
            "threshold_final": self.threshold,
            "reallocations": n_re,
            "realloc_s_total": sum(r["seconds"] for r in self.reallocs),
            "realloc_s_mean": realloc_mean, "train_step_s_mean": step_mean,
            "realloc_over_step": realloc_mean / step_mean if step_mean > 0 else None,
            "mask_s_total": sum(r["mask_s"] for r in self.epochs_log),
            "realloc_log": self.reallocs,
            "epochs": self.epochs_log,
            "note": "active = mask-active weights (constant); MACs of non-zero weights are theoretical",
        }

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "steps_since": self.steps_since, "reallocs": self.reallocs,
                "epochs_log": self.epochs_log, "info": self.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"]
        self.steps_since = state["steps_since"]
        self.reallocs = state["reallocs"]
        self.epochs_log = state["epochs_log"]
        self.info = state["info"]
