"""Gram-Schmidt node pruning: Offergeld, van Gerven, Ahmad, "Subspace Node Pruning",
arXiv 2405.17506 (no public code). Description: docs/methods/snp.md; numbers below are its steps.

For every prunable layer, on a calibration set (one eval-mode pass of the unpruned
network, float64 statistics from bench.activations):
1. `X`: the activations the *consumer* layer reads (after BN, ReLU and any pooling;
   for VGG's last conv, the globally pooled vector the classifier reads): mean `mu`,
   covariance `C` (unbiased).
2. Order the units, most important first ("reorganizing"). Default (**choice**):
   non-redundant variance `1 / (C^-1)_ii`, the variance left after regressing unit i
   on all the others. Options: `zca`, the diagonal of the ZCA whitening matrix,
   `1 / ((C^-1/2)_ii)^2` (**choice** of scale: equal to the unit's variance when it is
   uncorrelated with the rest, like the default); `natural` (no reordering, the
   paper's ablation). Inverses use eigenvalues floored at RANK_RTOL x the largest.
3. `P C P^T = L D L^T` (L unit lower triangular, float64, pivots below RANK_RTOL x the
   largest diagonal count as 0): `L^-1 P X` are the unnormalised Gram-Schmidt
   orthogonalised units, `D_ii` the variance of unit i not explained by those before it.
5. One global `tau`: each layer drops its longest tail of units whose share of the
   layer's `sum D_ii` is at most `1 - tau` (keeping at least `min_channels`). With a
   parameter or MAC target, `tau` is found by bisection over the finite set of values
   at which some layer's count changes (each candidate is measured on a pruned copy
   with the harness's counters), taking the largest `tau` that meets the target (or,
   when one more unit overshoots the tolerance, the next one above it if that is within
   `target_tol_frac` of the target).
4. Remove the tail units with Torch-Pruning's DependencyGraph (it slices the
   producer's filters, its BN and the consumer's input channels) and compensate the
   consumer with the least-squares regression of the removed units on the kept ones:
   `x_2 ~ B x_1 + c`, `B = C_21 C_11^-1`, `c = mu_2 - B mu_1`, so the consumer's kept
   weights become `W_1 + W_2 B` at every kernel position and its bias gains
   `sum_taps W_2 c` (bench.surgery.substitute_inputs, computed on the unpruned consumer
   and copied into the pruned one). A consumer without a bias (ResNet conv2, followed
   by BN) takes the constant into the next BN's running mean instead (exact in eval
   mode; in training mode BN removes any constant itself). `compensate: false` is the
   paper's ablation (prune only).
6. Fine-tune for the rest of the budget (`transform_epoch`, as l1_filter).

Invariant (tested): a unit that is an exact linear combination of kept units is
removed with no change of the network output beyond float error.

Deviations and choices:
- Zero padding: the constant `W_2 c` is added at every kernel tap, also at taps that
  read the zero padding at the image border, where the removed channel is really 0,
  not `c`. So compensation is exact at border pixels only when `c = 0` (e.g. the
  planted-unit case, or a regression without intercept); elsewhere border outputs are
  off by `W_2[:, :, tap] c` at padded taps. PCN pads before projecting to keep borders
  exact; for a pruned layer this would need a per-position bias map, so it is not done.
- All layers are pruned in one shot from statistics of the *unpruned* network; a
  layer's statistics are not re-collected after the layers before it are compensated.
- ResNets: only block-internal channels are pruned (each block's conv1 outputs read by
  conv2; in a Bottleneck also conv2 -> conv3). Residual-stream channels (stem, every
  block's last conv, projection shortcuts) are not pruned: the simplest honest choice,
  since compensating them would mean regressing a channel of the stream for every
  reader at once. The rule is applied by the model's structure, not by name
  (`find_slots`: `chain` and `block_internal` channel sets with one producing conv and
  one reading Conv/Linear), which is exactly Torch-Pruning's grouping of the same
  channels (tests/test_sites.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from bench.config import ConfigError, opt
from bench.activations import collect_covariances
from bench.metrics import Clock
from bench.models import BLOCK_INTERNAL, CHAIN, structure_of
from bench.surgery import get_module, substitute_inputs
from bench.targets import TargetError, first_at_most
from methods._pruning import (PruningConfig, ScheduledPruning, build_graph, channel_table, channels, dense_value,
                              detached_copy, measure,
                              prune_out_channels, prune_schedule, sizes)
from methods.base import register

# Relative threshold below which an eigenvalue or an LDL pivot counts as zero (float64
# statistics; well above its 1e-16 roundoff, well below any real unit's variance share).
RANK_RTOL = 1e-10


# --------------------------------------------------------------------------- the math (pure)
def unit_order(cov: torch.Tensor, ordering: str) -> torch.Tensor:
    """Unit indices, most important first (step 2). Ties keep the natural order."""
    d = cov.shape[0]
    if ordering == "natural":
        return torch.arange(d, device=cov.device)
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(RANK_RTOL * vals.max().clamp_min(torch.finfo(cov.dtype).tiny))
    if ordering == "nonredundant":
        score = 1.0 / (vecs.square() / vals).sum(1)              # 1 / (C^-1)_ii
    elif ordering == "zca":
        score = 1.0 / (vecs.square() / vals.sqrt()).sum(1).square()  # 1 / ((C^-1/2)_ii)^2
    else:
        raise ValueError(f"unknown ordering '{ordering}'")
    return torch.argsort(score.cpu(), descending=True, stable=True)


def ldl(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`c = L diag(D) L^T` for a symmetric PSD `c` (step 3), L unit lower triangular.
    A pivot at most RANK_RTOL x max(diag) is set to 0 (that unit is a combination of the
    ones before it) and its column of L below the diagonal left at 0."""
    a = c.to(torch.float64).clone()
    n = a.shape[0]
    lower = torch.eye(n, dtype=a.dtype, device=a.device)
    d = torch.zeros(n, dtype=a.dtype, device=a.device)
    tol = RANK_RTOL * float(a.diagonal().max().clamp_min(0)) if n else 0.0
    for j in range(n):
        pivot = float(a[j, j])
        if pivot <= tol:
            continue
        d[j] = pivot
        col = a[j + 1:, j] / pivot
        lower[j + 1:, j] = col
        a[j + 1:, j + 1:] -= torch.outer(col, a[j, j + 1:])     # Schur complement
    return lower, d


def tail_shares(d: torch.Tensor) -> torch.Tensor:
    """`t[k]` = share of `sum D` held by the last k units, k = 0..n (nondecreasing)."""
    total = d.sum()
    tails = torch.cat([d.new_zeros(1), torch.cumsum(d.flip(0), 0)])
    return tails / total if total > 0 else torch.zeros_like(tails)


def drops_for(tails: torch.Tensor, share: float, max_drop: int) -> int:
    """Longest tail whose share is at most `share` (= 1 - tau), at most `max_drop` units (step 5)."""
    k = int(torch.searchsorted(tails, tails.new_tensor([share]), right=True)) - 1
    return max(0, min(k, max_drop))


def regression(cov: torch.Tensor, mean: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares `x_pruned ~ B x_kept + c` from centered statistics (step 4):
    `B = C_21 C_11^-1`, `c = mu_2 - B mu_1` (pseudo-inverse if kept units are dependent)."""
    c11 = cov[kept][:, kept]
    c21 = cov[pruned][:, kept]
    b = c21 @ torch.linalg.pinv(c11, hermitian=True, rtol=RANK_RTOL)
    return b, mean[pruned] - b @ mean[kept]


def compensation_map(d: int, kept: torch.Tensor, pruned: torch.Tensor, b: torch.Tensor, c: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`x = M z + s` with `z` the kept units in ascending order: identity rows for kept
    units, `B` rows and `c` for removed ones (the input of substitute_inputs)."""
    m = torch.zeros(d, len(kept), dtype=torch.float64)
    m[kept, torch.arange(len(kept))] = 1.0
    m[pruned] = b.cpu()
    s = torch.zeros(d, dtype=torch.float64)
    s[pruned] = c.cpu()
    return m, s


# --------------------------------------------------------------------------- network structure
@dataclass
class Slot:
    """One prunable set of channels: `producer`'s outputs, read only by `consumer`."""
    name: str                 # producer's module name
    consumer_name: str
    producer: nn.Conv2d
    consumer: nn.Module       # Conv2d or Linear


def find_slots(model: nn.Module) -> tuple[list[Slot], list[list[str]]]:
    """Prunable channel sets from the model's structure (`Structure.channel_sets`): a `chain`
    or `block_internal` set written by one ungrouped conv and read by one ungrouped Conv/Linear
    (VGG's convs, a residual block's inner convs). The others (a residual stream, a Linear
    producer) are returned as skipped, each by the sorted names of its producers."""
    st = structure_of(model)
    weighted = (nn.Conv2d, nn.Linear)
    position = {n: i for i, (n, _) in enumerate(model.named_modules())}
    slots, skipped = [], []
    for cs in st.channel_sets():
        producers = [get_module(model, p.conv) for p in cs.producers]
        readers = [name for r in cs.reads for name in r.layers]
        ins = [get_module(model, n) for n in readers]
        simple = (cs.role in (CHAIN, BLOCK_INTERNAL) and len(readers) == 1 and isinstance(producers[0], nn.Conv2d)
                  and isinstance(ins[0], weighted) and all(getattr(m, "groups", 1) == 1 for m in producers + ins))
        if simple:
            slots.append(Slot(cs.producer.conv, readers[0], producers[0], ins[0]))
        else:
            skipped.append(sorted(p.conv for p in cs.producers))
    slots.sort(key=lambda s: position[s.name])
    return slots, sorted(skipped)


def next_batchnorm(graph, layer: nn.Module) -> Optional[nn.Module]:
    """The BatchNorm reading `layer`'s output directly, if any."""
    for node in graph.module2node[layer].outputs:
        if isinstance(node.module, nn.modules.batchnorm._BatchNorm):
            return node.module
    return None


@dataclass
class Spectrum:
    """A slot's statistics in importance order."""
    mean: torch.Tensor        # [d] float64
    cov: torch.Tensor         # [d, d] float64
    order: torch.Tensor       # [d] unit indices, most important first
    d_ii: torch.Tensor        # [d] LDL diagonal in that order
    tails: torch.Tensor       # [d + 1] tail shares of sum D
    max_drop: int

    def split(self, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept, removed) unit indices, each ascending."""
        n = len(self.order)
        return self.order[:n - drop].sort().values, self.order[n - drop:].sort().values


def spectrum(mean: torch.Tensor, cov: torch.Tensor, ordering: str, min_channels: int) -> Spectrum:
    order = unit_order(cov, ordering)
    oc = order.to(cov.device)
    _, d = ldl(cov[oc][:, oc])
    return Spectrum(mean.cpu(), cov.cpu(), order, d.cpu(), tail_shares(d.cpu()), max(0, len(order) - min_channels))


# --------------------------------------------------------------------------- the method
@register("snp")
class SNP(ScheduledPruning):
    """Subspace Node Pruning (Offergeld et al. 2024): Gram-Schmidt (LDL) unit pruning with least-squares compensation."""

    @dataclass
    class Config(PruningConfig):
        tau: Optional[float] = opt(None, "instead of a target: the global threshold (each layer keeps units "
                                         "until the dropped tail's share of sum D_ii would exceed 1 - tau); "
                                         "set target_params: null")
        ordering: str = opt("nonredundant", "unit order before the LDL: nonredundant = 1/(C^-1)_ii "
                                            "(the variance no other unit explains), zca = 1/((C^-1/2)_ii)^2, natural = none (ablation)",
                            choices=("nonredundant", "zca", "natural"))
        compensate: bool = opt(True, "fold the least-squares reconstruction of removed units into the consumer "
                                     "(false: the paper's prune-only ablation)")
        calibration_images: int = opt(5000, "calibration images (one eval-mode pass), as PCN")
        calibration_batch_size: int = opt(500, "calibration batch size (memory only; the statistics are exact sums)")
        min_channels: int = opt(1, "every pruned layer keeps at least this many channels")

        def validate(self) -> None:
            super().validate()
            if self.tau is not None:
                if self.targets_set():
                    raise ConfigError("method: set either tau or a target, not both (e.g. method.target_params=null)")
                if not 0.0 <= self.tau <= 1.0:
                    raise ConfigError(f"method.tau must be in [0, 1], got {self.tau}")
            elif not self.targets_set():
                raise ConfigError("method: snp needs target_params, target_macs or tau")
            if self.calibration_images < 2 or self.calibration_batch_size < 1 or self.min_channels < 1:
                raise ConfigError("method.calibration_images must be >= 2, calibration_batch_size and min_channels >= 1")

    def __init__(self, cfg: "SNP.Config", ctx):
        super().__init__(cfg, ctx)
        self.events = prune_schedule(cfg.transform_epoch, ctx.epochs)
        # More calibration images than the training set holds: ctx.calibration takes the whole set.

    # ---- the pruning -----------------------------------------------------------------
    def prune(self, model: nn.Module, k: int = 1, n: int = 1) -> tuple[nn.Module, dict[str, Any]]:
        """A pruned (and compensated) copy of `model`, and what happened."""
        cfg, ctx = self.cfg, self.ctx
        example = ctx.example_inputs
        model = detached_copy(model)
        before, ch_before = sizes(model, example), channels(model)
        # Each lap waits for the device first: a GPU runs behind the host, so without it one
        # phase's device work (e.g. calibration's forwards) would be timed as the next one's.
        clock = Clock(example.device)
        last = {"t": clock()}
        seconds: dict[str, float] = {}

        def lap(key: str) -> None:
            now = clock()
            seconds[key] = now - last["t"]
            last["t"] = now

        graph = build_graph(model, example)
        slots, skipped = find_slots(model)
        if not slots:
            raise ConfigError(f"snp: {type(model).__name__} has no prunable channels (a conv read by one layer)")
        accs = collect_covariances(model, {s.name: s.consumer for s in slots},
                                   ctx.calibration(cfg.calibration_images, cfg.calibration_batch_size), inputs=True)
        lap("calibration_s")
        spectra = {}
        for s in slots:
            acc = accs[s.name]
            if acc.dim != s.producer.out_channels:
                raise ConfigError(f"snp: {s.consumer_name} reads {acc.dim} features, not the {s.producer.out_channels} "
                                  f"channels of {s.name} (flatten before the classifier is not supported)")
            spectra[s.name] = spectrum(acc.mean.cpu(), acc.cov.cpu(), cfg.ordering, cfg.min_channels)
        lap("decomposition_s")

        share, info = self.choose_share(model, slots, spectra)
        drops = {s.name: drops_for(spectra[s.name].tails, share, spectra[s.name].max_drop) for s in slots}
        lap("search_s")

        with torch.no_grad():
            updates = self.compensations(slots, spectra, drops) if cfg.compensate else {}
        for s in slots:
            prune_out_channels(graph, s.producer, spectra[s.name].split(drops[s.name])[1].tolist())
        with torch.no_grad():
            for s in slots:
                if s.name in updates:
                    self.write_compensation(graph, s, updates[s.name], spectra, drops)
        lap("surgery_s")

        after = sizes(model, example)
        info.update({
            "tau": 1.0 - share, "ordering": cfg.ordering, "compensate": cfg.compensate,
            "params_before": before["params"], "params_after": after["params"],
            "macs_before": before["macs"], "macs_after": after["macs"],
            "channels": channel_table(ch_before, channels(model)),
            "layers": {s.name: {"units": len(spectra[s.name].order), "removed": drops[s.name],
                                "removed_share_of_sum_d": float(spectra[s.name].tails[drops[s.name]]),
                                "zero_d_units": int((spectra[s.name].d_ii == 0).sum())} for s in slots},
            "not_pruned_groups": skipped, **seconds})
        return model, info

    def choose_share(self, model: nn.Module, slots: list[Slot], spectra: dict[str, Spectrum]
                     ) -> tuple[float, dict[str, Any]]:
        """`1 - tau`: given, or the smallest one whose pruned model meets the target."""
        cfg, ctx = self.cfg, self.ctx
        target = cfg.target()
        if target is None:
            return 1.0 - cfg.tau, {}
        kind, frac = target.kind, target.frac
        limit = frac * dense_value(ctx, kind)
        candidates = sorted({0.0} | {float(v) for sp in spectra.values() for v in sp.tails[1:sp.max_drop + 1]})
        cache: dict[int, int] = {}

        def cost(i: int) -> int:
            if i not in cache:
                cache[i] = self.trial(model, slots, spectra, candidates[i], kind)
            return cache[i]

        hi = len(candidates) - 1                 # cost is nonincreasing in the share
        if cost(hi) > limit:
            raise TargetError(f"method.target_{kind}={frac:g} is out of reach: removing all but "
                              f"{cfg.min_channels} channel(s) of every prunable layer leaves "
                              f"{cost(hi) / dense_value(ctx, kind):.4f} of dense; raise the target")
        lo = first_at_most(len(candidates), cost, limit)
        dense = dense_value(ctx, kind)
        goal = cfg.target()
        if lo > 0 and not goal.within(cost(lo) / dense) and goal.within(cost(lo - 1) / dense):
            lo -= 1                           # one unit fewer lands within the tolerance, just above
        achieved = cost(lo) / dense
        goal.check(achieved, "one unit of the next tau removes too much; use a larger model or a looser "
                             "target_tol_frac")
        return candidates[lo], {"target": kind, "target_frac": frac, "achieved_frac": achieved,
                                "search_evaluations": len(cache)}

    def trial(self, model: nn.Module, slots: list[Slot], spectra: dict[str, Spectrum], share: float,
              kind: str) -> int:
        """Parameters or MACs of `model` with each slot pruned at this share (on a copy)."""
        m = detached_copy(model)
        graph = build_graph(m, self.ctx.example_inputs)
        for s in slots:
            sp = spectra[s.name]
            removed = sp.split(drops_for(sp.tails, share, sp.max_drop))[1]
            prune_out_channels(graph, get_module(m, s.name), removed.tolist())
        return measure(m, self.ctx.example_inputs, kind)

    @staticmethod
    def compensations(slots: list[Slot], spectra: dict[str, Spectrum], drops: dict[str, int]
                      ) -> dict[str, nn.Module]:
        """For each slot losing units: the consumer re-expressed on the kept units (all of
        its output channels), computed on the unpruned consumer."""
        out = {}
        for s in slots:
            if drops[s.name] == 0:
                continue
            sp = spectra[s.name]
            kept, removed = sp.split(drops[s.name])
            b, c = regression(sp.cov, sp.mean, kept, removed)
            m, shift = compensation_map(len(sp.order), kept, removed, b, c)
            out[s.name] = substitute_inputs(s.consumer, m, shift)
        return out

    @staticmethod
    def write_compensation(graph, s: Slot, new: nn.Module, spectra: dict[str, Spectrum],
                           drops: dict[str, int]) -> None:
        """Copy the compensated weights into the pruned consumer (whose own outputs may have
        been pruned as the producer of another slot)."""
        consumer = s.consumer
        own = spectra.get(s.consumer_name)
        keep_out = (own.split(drops[s.consumer_name])[0] if own is not None
                    else torch.arange(new.weight.shape[0])).to(new.weight.device)
        consumer.weight.copy_(new.weight[keep_out])
        if consumer.bias is not None:
            consumer.bias.copy_(new.bias[keep_out])
            return
        bn = next_batchnorm(graph, consumer)
        if bn is None or bn.running_mean is None:
            raise ConfigError(f"snp: {s.consumer_name} has no bias and no BatchNorm after it to take the "
                              f"compensation constant; run with method.compensate=false")
        shift = new.bias[keep_out]      # substitute_inputs gave a bias-free layer the bias W s
        bn.running_mean.sub_(shift)     # bn(y + shift) with running mean m == bn(y) with mean m - shift

