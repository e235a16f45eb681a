"""PCNS's statistics passes and solves over the calibration images: the Gram pass (steps 1-2:
the PCA of the transposed outputs), the least-squares pass in the draft's order (step 3's
normal equations for every layer at once, on the unshrunk network), the solve of one layer
(step 3's weights, step 4's P) and the optional bottom-up refit. Every sum is float64 in a
`bench.activations.SumAccumulator` (all-reduced under torchrun).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from bench.activations import SumAccumulator, as_samples, capture
from bench.surgery import fold_bn, get_module
from methods.pcns.algebra import (full_weight, gram_pca, im2col_chunks, residuals, sigma, sigma_inv,
                                  solve_normal)
from methods.pcns.planning import LayerPlan
from methods.pcns.surgery import apply_surgery, new_producer


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the module of interest has run."""


def run_until(model: nn.Module, name: str, x: torch.Tensor, inputs: bool) -> torch.Tensor:
    """Forward `x` through `model` only as far as module `name`; its input (or output)."""
    seen: list[torch.Tensor] = []

    def stop(_: str, t: torch.Tensor) -> None:
        seen.append(t)
        raise _Reached
    try:
        with capture({name: get_module(model, name)}, stop, inputs=inputs):
            model(x)
    except _Reached:
        pass
    return seen[0]


def weight_device(model: nn.Module, name: str) -> torch.device:
    """Where module `name` computes, so where the data its statistics come from lives."""
    return get_module(model, name).weight.device


def gram_pass(model: nn.Module, plans: list[LayerPlan], batches: Iterable[torch.Tensor]) -> None:
    """Steps 1-2: the n x n Gram X_l X_l^T of each layer's outputs (after the activation) summed
    over all samples, then its PCA (sets `lam`, `u`, `samples`, `total_sq`)."""
    sums = {pl.site.act: SumAccumulator({"gram": (pl.n, pl.n)}, weight_device(model, pl.site.producer))
            for pl in plans}

    def hook(act: str, out: torch.Tensor) -> None:
        xs = as_samples(out).to(torch.float64)
        sums[act].add("gram", xs.T @ xs)
        sums[act].count += len(xs)
    with capture({a: get_module(model, a) for a in sums}, hook):
        for x in batches:
            model(x)
    for pl in plans:
        acc = sums[pl.site.act].all_reduce_()      # under torchrun: every rank's shard of the images
        pl.samples, pl.total_sq = acc.count, float(acc["gram"].trace())
        if pl.n >= 2:
            pl.lam, pl.u = gram_pca(acc["gram"])


def ev_map(pl: LayerPlan) -> torch.Tensor:
    """[n, M]: x_s -> c EV_i(s) = c u_i^T x_s / sqrt(Lambda_i) (u_i is orthogonal to 1: H drops out)."""
    return pl.u[:, :pl.m_comp] * (pl.c / pl.lam[:pl.m_comp].sqrt())


def ls_targets(xs: torch.Tensor, z_map: torch.Tensor, slope: float, relu_split: bool) -> torch.Tensor:
    """Step 3's targets [rows, 2M + 1] from the layer outputs `xs` [rows, n] (eq. 4): sigma^{-1} of
    +c EV_i, of -c EV_i (both signs, see `solve_layer`) and of TO_hat; with `relu_split`
    relu(+c EV_i), relu(-c EV_i) and TO_hat."""
    z = xs @ z_map
    mean_to = xs.mean(1, keepdim=True)
    if relu_split:
        return torch.cat([F.relu(z), F.relu(-z), mean_to], 1)
    return torch.cat([sigma_inv(z, slope), sigma_inv(-z, slope), sigma_inv(mean_to, slope)], 1)


def normal_sums(model: nn.Module, pl: LayerPlan) -> SumAccumulator:
    """Empty normal-equation sums for layer `pl` as `model` has it now: A^T A, A^T T, ||T||^2."""
    prod = get_module(model, pl.site.producer)
    d1, k = prod.weight[0].numel() + 1, 2 * pl.m_comp + 1
    return SumAccumulator({"ata": (d1, d1), "att": (d1, k), "ttt": (k,)}, prod.weight.device)


def add_rows(acc: SumAccumulator, a: torch.Tensor, t: torch.Tensor) -> None:
    acc.add("ata", a.T @ a)
    acc.add("att", a.T @ t)
    acc.add("ttt", (t * t).sum(0))
    acc.count += len(a)


def draft_ls_pass(model: nn.Module, active: list[LayerPlan], relu_split: bool,
                  batches: Iterable[torch.Tensor]) -> dict[str, SumAccumulator]:
    """Step 3's sums for every layer in one pass over the unshrunk network (the draft's order):
    A = the layer's inputs, targets from its own outputs recomputed in float64 from them."""
    sums = {pl.site.producer: normal_sums(model, pl) for pl in active}
    fits = {}
    for pl in active:
        prod = get_module(model, pl.site.producer)
        folded = fold_bn(prod, get_module(model, pl.site.bn)) if pl.site.bn else prod
        fits[pl.site.producer] = (pl, folded, full_weight(folded).T, ev_map(pl))

    def hook(name: str, x: torch.Tensor) -> None:
        pl, folded, wt, z_map = fits[name]
        for _, a in im2col_chunks(folded, x):
            add_rows(sums[name], a, ls_targets(sigma(a @ wt, pl.slope), z_map, pl.slope, relu_split))
    with capture({name: get_module(model, name) for name in sums}, hook, inputs=True):
        for x in batches:
            model(x)
    return {name: acc.all_reduce_() for name, acc in sums.items()}


def solve_layer(model: nn.Module, pl: LayerPlan, acc: SumAccumulator, cfg: "PCNS.Config") -> dict[str, float]:
    """Steps 3-4 from the summed normal equations: picks each EV's sign, sets the LS weights `w`,
    P, the new producer and its fresh BN; returns the least-squares residuals."""
    ata, att, ttt = acc["ata"], acc["att"], acc["ttt"]
    w_all = solve_normal(ata, att, cfg.ls_ridge)
    res = residuals(ata, att, ttt, w_all)
    m = pl.m_comp
    coef = pl.u[:, :m] * (pl.lam[:m].sqrt() / pl.c)                 # lambda_ji / c
    if cfg.relu_split:
        cols = [c for i in range(m) for c in (i, m + i)] + [2 * m]
        pcols = [v for i in range(m) for v in (coef[:, i], -coef[:, i])]
    else:
        neg = res[m:2 * m] < res[:m]                                # sign of EV_i with the smaller residual
        cols = [m + i if bool(neg[i]) else i for i in range(m)] + [2 * m]
        pcols = [-coef[:, i] if bool(neg[i]) else coef[:, i] for i in range(m)]
    pl.p = torch.stack(pcols + [torch.ones(pl.n, dtype=torch.float64, device=coef.device)], 1)
    pl.w = w_all[:, cols]
    mean = (ata[-1] @ pl.w) / acc.count                             # of the new pre-activations
    var = ((pl.w * (ata @ pl.w)).sum(0) / acc.count - mean ** 2).clamp_min(0)
    pl.producer_new, pl.bn_new = new_producer(model, pl, mean, var)
    ls_res, t_sq = float(res[cols[:-1]].sum()), float(ttt[cols[:-1]].sum())   # EV columns (c-free)
    return {"ls_residual": ls_res / max(t_sq, 1e-300),
            "ls_residual_mean_to": float(res[cols[-1]]) / max(float(ttt[cols[-1]]), 1e-300),
            "ls_residual_abs": float(res[cols].sum()), "ls_unknowns": int(ata.shape[0])}


def layer_row(pl: LayerPlan, fit: dict[str, float]) -> dict[str, Any]:
    """The report's row for one layer (before the error table adds its columns)."""
    m = pl.m_comp
    kept = float(pl.lam[:m].sum() / pl.lam.sum()) if float(pl.lam.sum()) > 0 else 1.0
    return {"layer": pl.site.producer, "consumer": pl.site.consumer, "kind": pl.kind,
            "n_before": pl.n, "n_after": pl.width, "components": m, "variance_kept": kept,
            "pca_err": float(pl.lam[m:].sum()) / max(pl.total_sq, 1e-300), **fit,
            "samples": pl.samples, "c": pl.c, "p_into": pl.target + (" (new)" if pl.new_mix else "")}


def refit_pass(model: nn.Module, teacher: nn.Module, active: list[LayerPlan], cfg: "PCNS.Config",
               batches: Callable[[], Iterable[torch.Tensor]]) -> None:
    """`refit: true`: shrink `model` bottom-up, fitting each layer on the inputs the already-shrunk
    layers below it produce (the draft's order fits all on the unshrunk network, sec. 9.1). The
    targets, P and M stay those of the unshrunk network (`teacher`, same images): the least squares
    maps what the shrunk network sees onto what the original computed. One pass per layer, each
    forward stopped at that layer; adds `*_refit` residuals to the rows."""
    for pl in active:                                               # forward order
        acc, student = normal_sums(model, pl), get_module(model, pl.site.producer)
        z_map = ev_map(pl)
        for x in batches():
            x_old = run_until(teacher, pl.site.act, x, inputs=False)   # X_l of the unshrunk network
            x_in = run_until(model, pl.site.producer, x, inputs=True)  # layer l's input, shrunk below
            for images, a in im2col_chunks(student, x_in):
                xs = as_samples(x_old[images]).to(torch.float64)
                add_rows(acc, a, ls_targets(xs, z_map, pl.slope, cfg.relu_split))
        fit = solve_layer(model, pl, acc.all_reduce_(), cfg)
        pl.row.update({f"{k}_refit": v for k, v in fit.items()})
        apply_surgery(model, pl)
