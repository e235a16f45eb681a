"""The mask engine of the sparse-training family (DSR, SET, RigL, GMP, static masks).

A member of the family is a drop/grow rule and a schedule on top of what this module
does once for all of them:

Which layers are sparse (`sparse_layer_names`): every Conv2d except the first one to
run on the example input and except the 1x1 convs the model's structure names as a
block's shortcut; Linears except the classifier (the last Linear to run), which is
sparse only with `sparse_classifier`. BN parameters and biases stay dense. The same
rule for every method, so that their rows differ in the drop/grow rule only. It is not
the RigL authors' layer set: their CIFAR ResNet (google-research/rigl,
cifar_resnet/resnet_model.py) keeps only the first layer dense and makes the classifier
and the 1x1 shortcut convs sparse. `sparse_classifier` covers the classifier, but no
option makes a shortcut sparse, so on a model with shortcuts no option reproduces their
layer set (on one without, such as VGG, `sparse_classifier: true` does).

How many weights each layer keeps (`layer_counts`). `target_params` is the fraction of
the dense model's P parameters that are non-zero (mask-active). With D the dense part
and S the size of the sparse tensors, the sparse tensors keep N = round(target * P) - D
weights, shared out by `allocation`:
  - uniform: one sparsity 1 - N / S for every sparse tensor (DSR's and GMP's setting).
    RigL's "uniform" (Evci et al. 2020 sec. 3) keeps the first layer dense too; it
    differs in the layer set: the RigL authors make the classifier sparse (here
    only with `sparse_classifier`) and, in their CIFAR ResNet, the 1x1 shortcut convs
    (here always dense);
  - erk (Erdos-Renyi-Kernel, Evci et al. 2020 sec. 3, extending SET's Erdos-Renyi
    rule to kernels): density d_l = eps * (sum of the weight's dimensions) /
    (product of them), e.g. (c_out + c_in + k_h + k_w) / (c_out c_in k_h k_w) for a
    conv, with one eps chosen so that sum_l d_l n_l = N; a layer whose d_l would exceed
    1 is made dense and eps is solved again over the others (the layer with the largest
    ratio first, as the authors' code does, until none exceeds 1).
Counts are rounded by largest remainder so that the total is exactly N.

Masks (`masked_layers`, `apply_masks`). Each sparse layer keeps its mask as a bool
buffer (same shape as the weight) on the ordinary nn.Conv2d/nn.Linear, so the model
pickles as it is and the shared MAC counter sees ordinary layers. `mask * w` in the
forward pass is realised by keeping `w` exactly zero at masked positions: after every
optimizer step `w *= mask` and every optimizer state tensor shaped like `w` (SGD
momentum, Adam moments) `*= mask`, so neither gradient, momentum nor weight decay
revives a masked weight. A weight that becomes active starts at 0 with zero optimizer
state (it was masked, so both are 0). Because masked weights are zero rather than
absent, `w.grad` after the backward pass is the dense gradient (what RigL grows by);
under DDP it is the all-reduced one.

Layout. Every mask change is computed on flat tensors in logical (row-major) order
(`reshape(-1)`, `flatten()`, which copy a non-contiguous tensor) and written back with
`copy_`, so nothing depends on the memory format of weights or masks (channels_last
moves 4-D buffers too, and resumed models keep it).

Updates (`SparseTraining.after_step`): every step re-applies the masks (no host read:
no device synchronisation on a step without an update); on the steps a method's
schedule names (`due`, from Python step counts only) the method's `update` changes
masks (and weights) in place. Updates read counts and indices on the host, so an
update step synchronises the device once or more; so does the clock that times it.
Under torchrun the weights and gradients are identical on every rank (DDP averages
gradients) and random draws come from the method's generator, seeded alike on every
rank, so every rank makes the identical update (rank-identical masks).

Reported: per-layer active counts every epoch (`<method>/active/<layer>`), per update
its step, the dropped/grown counts and its seconds, and the update time against the
mean training step (taken from the epoch's wall-clock, not from per-step clocks).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from bench.config import ConfigError, opt
from bench.metrics import Clock
from bench.models import structure_of
from bench.activations import capture
from bench.targets import check_fraction
from methods.base import Method, MethodConfig, last_epoch_metrics

MASK = "sparse_mask"                  # buffer name on each sparse layer (DSR keeps its own, methods/dsr.py)
ALLOCATIONS = ("uniform", "erk")


# --------------------------------------------------------------------------- which layers, how many weights
def sparse_layer_names(model: nn.Module, example: torch.Tensor, sparse_classifier: bool) -> list[str]:
    """The layers the family makes sparse: convs but the first to run and 1x1 shortcuts;
    the classifier (last Linear to run) only if `sparse_classifier`; other Linears."""
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


def split_exact(total: int, sizes: list[float]) -> list[int]:
    """Counts proportional to `sizes` summing to `total` exactly (largest remainder)."""
    s = sum(sizes)
    raw = [total * n / s for n in sizes]
    out = [int(r) for r in raw]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def erk_ratio(shape: tuple[int, ...]) -> float:
    """The ERK raw density of a weight of this shape: (sum of its dimensions) / (product)."""
    return sum(shape) / math.prod(shape)


def erk_densities(shapes: list[tuple[int, ...]], nnz: int) -> list[float]:
    """Per-layer densities d_l = eps * erk_ratio(shape_l), capped at 1, with
    sum_l d_l n_l = nnz: layers whose density would exceed 1 are dense and eps is solved
    again over the rest, the largest ratio first (Evci et al. 2020, sec. 3)."""
    sizes = [math.prod(s) for s in shapes]
    if not 0 < nnz <= sum(sizes):
        raise ValueError(f"nnz={nnz} must be in (0, {sum(sizes)}]")
    ratios = [erk_ratio(s) for s in shapes]
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        eps = (nnz - sum(sizes[i] for i in dense)) / sum(ratios[i] * sizes[i] for i in free)
        top = max(ratios[i] for i in free)
        if eps * top <= 1.0 or len(free) == 1:
            break
        dense |= {i for i in free if ratios[i] == top}
    return [1.0 if i in dense else min(1.0, eps * ratios[i]) for i in range(len(shapes))]


def layer_counts(allocation: str, shapes: list[tuple[int, ...]], nnz: int) -> list[int]:
    """Active weights per sparse layer, summing to `nnz` exactly."""
    sizes = [math.prod(s) for s in shapes]
    if allocation == "uniform":
        return split_exact(nnz, sizes)
    if allocation == "erk":
        dens = erk_densities(shapes, nnz)
        full = [i for i, d in enumerate(dens) if d >= 1.0]
        free = [i for i in range(len(shapes)) if i not in full]
        rest = split_exact(nnz - sum(sizes[i] for i in full), [dens[i] * sizes[i] for i in free])
        counts = [0] * len(shapes)
        for i in full:
            counts[i] = sizes[i]
        for i, n in zip(free, rest):
            counts[i] = min(n, sizes[i])
        return counts
    raise ValueError(f"unknown allocation {allocation!r}; use one of {ALLOCATIONS}")


# --------------------------------------------------------------------------- masks on the model
def masked_layers(model: nn.Module, name: str = MASK) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer carrying a mask buffer `name`, in module order."""
    return [(n, m) for n, m in model.named_modules() if m._buffers.get(name) is not None]


@torch.no_grad()
def apply_masks(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], name: str = MASK) -> None:
    """w *= mask, and every optimizer state tensor shaped like w *= mask (no host read)."""
    for _, m in masked_layers(model, name):
        mask = m._buffers[name]
        m.weight.mul_(mask)
        if optimizer is not None:
            for v in optimizer.state.get(m.weight, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == mask.shape:
                    v.mul_(mask)


@torch.no_grad()
def write_mask_(mask: torch.Tensor, flat: torch.Tensor) -> None:
    """Set `mask` (any memory format) from a flat bool tensor in logical order, in place."""
    mask.copy_(flat.reshape(mask.shape))


def flat_positions(n: int, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A flat bool tensor of length `n`, True at the flat indices `idx`."""
    out = torch.zeros(n, dtype=torch.bool, device=device)
    out[idx.to(device)] = True
    return out


# --------------------------------------------------------------------------- drop and grow rules (one layer)
def top_positions(score: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Flat bool mask of the `n` candidates with the largest `score`; ties go to the
    lower flat index (a stable sort), so the choice is the same on every device and rank.
    `score` must be >= 0 (magnitudes)."""
    s = torch.where(candidates.flatten(), score.flatten().float(), torch.full_like(score.flatten().float(), -1.0))
    order = torch.sort(s, descending=True, stable=True).indices[:n]
    return flat_positions(s.numel(), order, s.device)


def random_positions(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Flat bool mask of `n` candidates drawn uniformly without replacement from `generator`."""
    idx = torch.nonzero(candidates.flatten()).squeeze(1)
    pick = torch.randperm(len(idx), generator=generator)[:n]
    return flat_positions(candidates.numel(), idx[pick.to(idx.device)], candidates.device)


def drop_smallest(w: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Flat bool mask of the `n` active weights of smallest |w| (ties: lower flat index
    first): what SET, RigL and GMP drop."""
    score = torch.where(mask.flatten(), w.detach().flatten().abs().float(),
                        torch.full((w.numel(),), math.inf, device=w.device))
    order = torch.sort(score, stable=True).indices[:n]
    return flat_positions(w.numel(), order, w.device)


def cosine_fraction(alpha: float, step: int, end: int) -> float:
    """RigL's drop fraction, Evci et al. 2020 eq. (1): alpha/2 (1 + cos(pi t / T_end))
    for t <= T_end, 0 after."""
    if end <= 0 or step >= end:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end))


def cubic_sparsity(final: float, step: int, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta 2017 eq. (1): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3
    for t0 <= t <= t1; s_i before t0, s_f from t1 on."""
    if step < start:
        return initial
    if step >= end:
        return final
    tau = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - tau) ** 3


# --------------------------------------------------------------------------- the engine
@dataclass
class SparseConfig(MethodConfig):
    """Options every member of the family has."""
    target_params: float = opt(0.5, "fraction of the dense model's parameters that are non-zero (mask-active); "
                                    "sets the sparsity of the sparse tensors")
    sparse_classifier: bool = opt(False, "make the classifier sparse too (DSR paper: ResNet-50 yes, WRN-28-2 no)")
    allocation: str = opt("uniform", "how the sparse tensors share the non-zero budget: uniform (one sparsity) or "
                                     "erk (Erdos-Renyi-Kernel, Evci et al. 2020)", choices=ALLOCATIONS)

    def validate(self) -> None:
        check_fraction("target_params", self.target_params)
        if self.target_params == 1.0:
            raise ConfigError(f"method.target_params=1 leaves no weight masked for {self.name} to make sparse; "
                              f"use method.name=dense for the dense model")


class SparseTraining(Method):
    """Base class of the family: masks, allocation, the per-step masking, reporting and
    resume. A subclass names its schedule in `due(step)` and its rule in
    `update(layers)`; `dense_start` methods (GMP) start with every mask active."""

    in_place_hooks = frozenset({"on_train_start"})   # registers the mask buffers on the sparse layers
    mask_name: ClassVar[str] = MASK
    dense_start: ClassVar[bool] = False

    def __init__(self, cfg: SparseConfig, ctx):
        super().__init__(cfg, ctx)
        self.updates: list[dict] = []        # one record per mask update
        self.epochs_log: list[dict] = []     # one record per epoch
        self.info: dict[str, Any] = {}       # resolved allocation and schedule
        self._acc = self._fresh_acc()

    @staticmethod
    def _fresh_acc() -> dict[str, float]:
        return {"updates": 0, "dropped": 0, "grown": 0, "update_s": 0.0, "steps": 0}

    # ---- what a member defines -----------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether the mask is updated after optimizer step `step` (1-based); Python only,
        no device read. Called once per step."""
        return False

    def update(self, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        """Change masks (and weights) in place; return a record with at least `dropped`
        and `grown`. The masks are re-applied to weights and optimizer state afterwards.
        Called only on the steps `due` names: a member whose masks never move (static, the
        default `due`) keeps this no-op."""
        return {"dropped": 0, "grown": 0}

    def schedule_info(self) -> dict[str, Any]:
        """The resolved schedule, for the summary."""
        return {}

    def counts(self, shapes: list[tuple[int, ...]], nnz: int) -> Optional[list[int]]:
        """Active weights per sparse layer (at the end of training, for GMP), or None for
        no per-layer target (a dense-start method only: GMP's `allocation: global`, whose
        per-layer counts follow from the magnitudes)."""
        return layer_counts(self.cfg.allocation, shapes, nnz)

    # ---- shared helpers ----------------------------------------------------------------
    def mask(self, layer: nn.Module) -> torch.Tensor:
        return layer._buffers[self.mask_name]

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return masked_layers(model, self.mask_name)

    @property
    def total_steps(self) -> int:
        return self.ctx.epochs * self.ctx.steps_per_epoch

    # ---- hooks -------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        cfg, ctx = self.cfg, self.ctx
        names = sparse_layer_names(model, ctx.example_inputs, cfg.sparse_classifier)
        if not names:
            raise ConfigError(f"model {ctx.model_name} has no layer {self.name} can make sparse (it needs convs "
                              f"after the first, or method.sparse_classifier=true)")
        layers = [model.get_submodule(n) for n in names]
        shapes = [tuple(m.weight.shape) for m in layers]
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
        counts = self.counts(shapes, nnz_sparse)     # None: no per-layer targets (GMP's global ranking)
        if counts is None and not self.dense_start:
            raise TypeError(f"{self.name}: counts() may return None only for a dense-start method")
        if counts is not None and min(counts) == 0:
            empty = names[counts.index(0)]
            raise ConfigError(f"method.target_params={cfg.target_params} leaves layer {empty} of {ctx.model_name} "
                              f"without a weight (allocation {cfg.allocation}); raise the target")
        with torch.no_grad():
            for m, n in zip(layers, sizes if counts is None else counts):
                mask = torch.zeros(m.weight.numel(), dtype=torch.bool, device=m.weight.device)
                if self.dense_start:
                    mask.fill_(True)
                else:
                    mask[torch.randperm(m.weight.numel(), generator=ctx.generator)[:n].to(mask.device)] = True
                m.register_buffer(self.mask_name, mask.view(m.weight.shape))
                m.weight.mul_(self.mask(m))
        self.info = {
            "sparse_layers": names, "sparse_sizes": dict(zip(names, sizes)), "allocation": cfg.allocation,
            "params_dense_model": p_total, "params_dense_part": dense_part, "params_sparse_tensors": s_total,
            "params_active": active_target, "sparsity_of_sparse_tensors": 1 - nnz_sparse / s_total,
            "active_target": None if counts is None else dict(zip(names, counts)),
        }
        self.info.update(self.schedule_info())
        self.info["active_init"] = dict(zip(names, sizes if self.dense_start else counts))
        return None   # changed in place (declared): same parameters, the optimizer has no state yet

    def after_step(self, model: nn.Module) -> None:
        ctx = self.ctx
        apply_masks(model, ctx.optimizer, self.mask_name)
        self._acc["steps"] += 1
        if self.due(ctx.step):
            clock = Clock(ctx.device)
            t0 = clock()
            rec = self.update(self.layers(model))
            apply_masks(model, ctx.optimizer, self.mask_name)   # drop the dropped weights and their state
            seconds = clock() - t0
            self.updates.append({"step": ctx.step, "epoch": ctx.epoch, **rec, "seconds": seconds})
            self._acc["updates"] += 1
            self._acc["dropped"] += rec["dropped"]
            self._acc["grown"] += rec["grown"]
            self._acc["update_s"] += seconds

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        acc = self._acc
        active = {n: int(self.mask(m).sum()) for n, m in self.layers(model)}
        steps = max(1, acc["steps"])
        step_s = max(0.0, self.ctx.last_epoch_s - acc["update_s"]) / steps
        update_s = acc["update_s"] / max(1, acc["updates"])
        self.epochs_log.append({
            "epoch": epoch, "updates": acc["updates"], "dropped": acc["dropped"], "grown": acc["grown"],
            "update_s": acc["update_s"], "update_s_mean": update_s, "step_s_mean": step_s,
            "update_over_step": update_s / step_s if step_s > 0 and acc["updates"] else None,
            "active_sparse": sum(active.values()), "active": active, **self.epoch_extra(),
        })
        self._acc = self._fresh_acc()
        return None

    def epoch_extra(self) -> dict[str, Any]:
        """Method-specific scalars for this epoch's record (e.g. DSR's threshold)."""
        return {}

    # ---- reporting ---------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return last_epoch_metrics(self.name, self.epochs_log, "active")

    def summary(self, model: nn.Module) -> dict[str, Any]:
        layers = self.layers(model)
        final = {n: {"size": self.mask(m).numel(), "active": int(self.mask(m).sum()),
                     "density": float(self.mask(m).float().mean())} for n, m in layers}
        n_up = len(self.updates)
        step_means = [r["step_s_mean"] for r in self.epochs_log if r["step_s_mean"] > 0]
        update_mean = sum(r["seconds"] for r in self.updates) / max(1, n_up)
        step_mean = sum(step_means) / max(1, len(step_means))
        return {
            **self.info,
            "active_sparse_final": sum(v["active"] for v in final.values()),
            "layers_final": final,
            "updates": n_up,
            "update_s_total": sum(r["seconds"] for r in self.updates),
            "update_s_mean": update_mean, "train_step_s_mean": step_mean,
            "update_over_step": update_mean / step_mean if step_mean > 0 and n_up else None,
            "update_log": self.updates,
            "epochs": self.epochs_log,
            "note": "active = mask-active weights; MACs of non-zero weights are theoretical (dense kernels run)",
        }

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "epochs_log": self.epochs_log, "info": self.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        self.epochs_log = state["epochs_log"]
        self.info = state["info"]


# --------------------------------------------------------------------------- drop and grow (SET, RigL)
@dataclass
class DropGrowConfig(SparseConfig):
    """Options of a method that drops a fraction of each layer's active weights by
    magnitude and grows as many elsewhere in the same layer (SET, RigL). Each method
    redeclares them with its paper's defaults."""
    drop_fraction: float = opt(0.3, "fraction of each layer's active weights dropped (and regrown) per update")
    drop_schedule: str = opt("constant", "constant: the same fraction at every update; cosine: alpha/2 (1 + "
                                         "cos(pi t / T_end))", choices=("constant", "cosine"))
    update_every_epochs: float = opt(1.0, "steps between mask updates as a fraction of an epoch (at least 1 step)")
    stop_frac: float = opt(1.0, "no update from this fraction of the step budget on (T_end)")

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.drop_fraction < 1.0:
            raise ConfigError(f"method.drop_fraction={self.drop_fraction} must be in (0, 1)")
        if self.update_every_epochs <= 0:
            raise ConfigError(f"method.update_every_epochs={self.update_every_epochs} must be > 0")
        if not 0.0 < self.stop_frac <= 1.0:
            raise ConfigError(f"method.stop_frac={self.stop_frac} must be in (0, 1]")


class DropGrow(SparseTraining, abc.ABC):
    """Per layer, at update step t (Evci et al. 2020 sec. 3, Algorithm 1; Mocanu et al. 2018):
    n = floor(f_t * active_l) active weights of smallest |w| are dropped and n positions
    among the layer's inactive ones (those just dropped included) are grown by `grow`;
    a just-dropped position that is grown again keeps its weight and optimizer state (it
    was never dropped, as in the RigL authors' code), every other grown weight starts at 0
    with zero optimizer state. Each layer's active count never changes.

    Schedule: updates after steps P, 2P, ... while t < T_end, with P =
    max(1, round(update_every_epochs * steps_per_epoch)) and T_end = round(stop_frac *
    total steps); f_t = drop_fraction (constant) or drop_fraction/2 (1 + cos(pi t / T_end))
    (cosine, RigL eq. (1)). Each update reads counts on the host (a device
    synchronisation); steps without an update read nothing."""

    @property
    def period(self) -> int:
        return max(1, round(self.cfg.update_every_epochs * self.ctx.steps_per_epoch))

    @property
    def stop_step(self) -> int:
        return round(self.cfg.stop_frac * self.total_steps)

    def schedule_info(self) -> dict[str, Any]:
        steps = list(range(self.period, self.stop_step, self.period))
        return {"update_period_steps": self.period, "stop_step": self.stop_step, "updates_planned": len(steps),
                "drop_fractions_planned": [self.drop_fraction_at(t) for t in steps]}

    def drop_fraction_at(self, step: int) -> float:
        if self.cfg.drop_schedule == "cosine":
            return cosine_fraction(self.cfg.drop_fraction, step, self.stop_step)
        return self.cfg.drop_fraction

    def due(self, step: int) -> bool:
        return 0 < step < self.stop_step and step % self.period == 0

    @abc.abstractmethod
    def grow(self, layer: nn.Module, candidates: torch.Tensor, n: int) -> torch.Tensor:
        """Flat bool mask of the `n` positions to grow among `candidates` (flat bool): the
        member's criterion (SET: at random; RigL: largest dense gradient)."""

    @torch.no_grad()
    def update(self, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        f = self.drop_fraction_at(self.ctx.step)
        dropped = grown = 0
        for _, m in layers:
            mask = self.mask(m)
            old = mask.flatten().clone()     # flatten() is a view of a contiguous mask
            n = int(f * int(old.sum()))
            if n == 0:
                continue
            kept = old & ~drop_smallest(m.weight, mask, n)
            new = kept | self.grow(m, ~kept, n)
            write_mask_(mask, new)
            dropped += int((old & ~new).sum())
            grown += int((new & ~old).sum())
        return {"drop_fraction": f, "dropped": dropped, "grown": grown}
