"""PCNS's error table (draft sec. 4.2) and parameter accounting. Diagnostics only: nothing
here changes the shrunk model.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from bench.activations import capture
from bench.surgery import get_module
from methods.pcns.algebra import apply_layer, sigma
from methods.pcns.planning import LayerPlan
from methods.pcns.sites import MixPool, find_sites


def error_table(model: nn.Module, active: list[LayerPlan], batches: Callable[..., Iterable[torch.Tensor]],
                n_err: int) -> dict[bool, list[torch.Tensor]]:
    """Draft sec. 4.2: each layer's change on its own, on calibration and held-out images (adds
    `out_err_*`, `next_err_*` to the rows); returns the unshrunk model's logits per image set."""
    logits_old: dict[bool, list[torch.Tensor]] = {}
    for heldout in ((False, True) if n_err > 0 else ()):
        errs, logits_old[heldout] = layer_errors(model, active, batches(heldout, n_err))
        tag = "heldout" if heldout else "cal"
        for pl in active:
            e = errs[pl.site.producer]
            pl.row[f"out_err_{tag}"] = math.sqrt(e[0] / max(e[1], 1e-300))
            pl.row[f"next_err_{tag}"] = math.sqrt(e[2] / max(e[3], 1e-300))
    return logits_old


@torch.no_grad()
def layer_errors(model: nn.Module, plans: list[LayerPlan], batches) -> tuple[dict, list[torch.Tensor]]:
    """For every plan, on its own: sums ||P e - x||^2, ||x||^2 (layer output) and ||s~ - s||^2, ||s||^2
    (the next weighted layer's pre-activation, its BN included) over `batches`, plus the logits."""
    sums = {pl.site.producer: [0.0, 0.0, 0.0, 0.0] for pl in plans}
    by_name = {pl.site.producer: pl for pl in plans}

    def next_pre(pl: LayerPlan, t: torch.Tensor, new: bool) -> torch.Tensor:
        for name in pl.site.between:
            m = get_module(model, name)
            if new and name == pl.site.pool and pl.target.startswith(name + "."):    # through the (new) mix
                t = (m.pool if isinstance(m, MixPool) else m)(apply_layer(pl.target_new, t))
            else:
                t = m(t)
        cons = pl.target_new if new and pl.target == pl.site.consumer else get_module(model, pl.site.consumer)
        t = apply_layer(cons, t)
        return get_module(model, pl.site.consumer_bn)(t) if pl.site.consumer_bn else t

    def hook(name: str, x: torch.Tensor) -> None:
        pl, s = by_name[name], sums[name]
        s_old = apply_layer(get_module(model, pl.site.producer), x)
        if pl.site.bn:
            s_old = get_module(model, pl.site.bn)(s_old)
        x_old = sigma(s_old, pl.slope)
        e = pl.producer_new(x)
        if pl.bn_new is not None:
            e = pl.bn_new.eval()(e)
        e = sigma(e, pl.slope)
        x_rec = torch.einsum("jm,nm...->nj...", pl.p.to(e.dtype), e)
        s[0] += float(((x_rec - x_old) ** 2).sum())
        s[1] += float((x_old ** 2).sum())
        nxt_old, nxt_new = next_pre(pl, x_old, False), next_pre(pl, e, True)
        s[2] += float(((nxt_new - nxt_old) ** 2).sum())
        s[3] += float((nxt_old ** 2).sum())
    outs = []
    with capture({k: get_module(model, k) for k in sums}, hook, inputs=True):
        for x in batches:
            outs.append(model(x))
    return sums, outs


def logit_errors(model: nn.Module, logits_old: dict[bool, list[torch.Tensor]],
                 batches: Callable[..., Iterable[torch.Tensor]], n_err: int, suffix: str = "") -> dict[str, float]:
    """`logit_err_*` (relative L2) and `top1_agreement_*` of `model` against the unshrunk logits."""
    out = {}
    model.eval()
    for heldout, old in logits_old.items():
        num = den = agree = total = 0.0
        for x, y_old in zip(batches(heldout, n_err), old):
            y_new = model(x)
            num += float(((y_new - y_old) ** 2).sum())
            den += float((y_old ** 2).sum())
            agree += float((y_new.argmax(1) == y_old.argmax(1)).sum())
            total += len(x)
        tag = "heldout" if heldout else "cal"
        out[f"logit_err_{tag}{suffix}"] = math.sqrt(num / max(den, 1e-300))
        out[f"top1_agreement_{tag}{suffix}"] = agree / max(total, 1)
    return out


def param_split(model: nn.Module, resized: Iterable[str]) -> dict[str, int]:
    """The model's parameters by role: `shrunk` (modules whose width PCNS changed: shrunk layers,
    their fresh BNs, consumers reading the new neurons directly), `mix` (the 1x1 mixes kept in
    front of max pools) and `untouched` (the rest, e.g. consumers behind a mix); they sum to the total."""
    total = sum(p.numel() for p in model.parameters())
    mix = sum(p.numel() for m in model.modules() if isinstance(m, MixPool) for p in m.mix.parameters())
    names = dict(model.named_modules())
    shrunk = sum(p.numel() for n in set(resized) if n in names for p in names[n].parameters())
    return {"shrunk": shrunk, "mix": mix, "untouched": total - shrunk - mix}


def mix_consumer_excess(model: nn.Module) -> int:
    """Parameters the consumers behind the mixes spend on reading a mix's n channels instead of
    the M + 1 it mixes (with `maxpool: commute` they would read M + 1; counted in `param_split`'s
    shrunk or untouched)."""
    excess = 0
    for s in find_sites(model)[0]:
        pool = get_module(model, s.pool) if s.pool else None
        if isinstance(pool, MixPool):
            excess += get_module(model, s.consumer).weight[:, 0].numel() * (pool.mix.out_channels -
                                                                           pool.mix.in_channels)
    return excess
