"""PCNS's per-layer plan and widths: which layers a shrink considers (`plan_layers`), how many
calibration images it needs (`calibration_size`), how many components each layer keeps
(`choose_widths`: a variance threshold per layer, or one threshold bisected to a parameter
target) and the parameter count that choice projects (`projected_params`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from bench.config import ConfigError
from bench.activations import capture
from bench.surgery import get_module
from bench.targets import TargetError, bisect_fraction
from methods.pcns.algebra import components_for
from methods.pcns.sites import MixPool, Site, act_slope, check_site, find_sites

SAMPLES_PER_UNIT = 10        # calibration samples per neuron at least (draft sec. 4.3: "a few times the layer")
MIN_CONV_IMAGES = 2048       # calibration images at least for a model with conv layers
ERROR_IMAGES = 512           # images per error table (calibration subset and held-out): ~4 forwards each
CALIB_BATCH = 256            # images per calibration forward (memory only)


@dataclass
class LayerPlan:
    """One layer's shrink, filled by the passes of `shrink` in order (comments say which)."""
    site: Site                   # plan_layers
    slope: float
    n: int
    kind: str
    target: str = ""             # the module whose inputs get P: the consumer, or a mix in front of a max pool
    new_mix: bool = False        # the mix does not exist yet (first shrink across a max pool)
    positions: int = 1           # calibration_size: spatial positions per image of the output
    lam: Optional[torch.Tensor] = None        # gram_pass: PCA of the TOs (eigenvalues, vectors)
    u: Optional[torch.Tensor] = None
    total_sq: float = 0.0
    samples: int = 0
    shrink: bool = False         # set_widths
    m_comp: int = 0              # M
    width: int = 0               # neurons after: M + 1 (2M + 1 with relu_split)
    c: float = 0.0
    p: Optional[torch.Tensor] = None          # solve_layer: [n, width]
    w: Optional[torch.Tensor] = None          # [d + 1, width] float64 LS solution
    producer_new: Optional[nn.Module] = None
    bn_new: Optional[nn.Module] = None
    target_new: Optional[nn.Module] = None    # `target` reading the new channels (this layer alone)
    row: Optional[dict] = None                # the report's table row

    def resized(self) -> list[str]:
        """Modules whose width this shrink changes (a mix is not one of them: see `param_split`)."""
        return [self.site.producer] + ([self.site.bn] if self.site.bn else []) + \
            ([self.target] if self.target == self.site.consumer else [])


def projected_params(model: nn.Module, plans: list[LayerPlan], widths: dict[int, int]) -> int:
    """Parameter count of `model` after giving site i `widths[i]` neurons (no other change)."""
    total = sum(p.numel() for p in model.parameters())
    prod = {pl.site.producer: i for i, pl in enumerate(plans)}
    cons = {pl.target: i for i, pl in enumerate(plans) if not pl.new_mix}
    total += sum(plans[i].n * w for i, w in widths.items() if plans[i].new_mix)   # new 1x1 mixes
    for name in set(prod) | set(cons):
        m = get_module(model, name)
        out, inn = m.weight.shape[0], m.weight.shape[1]
        k = m.weight[0, 0].numel()
        bias = m.bias is not None
        if name in prod and prod[name] in widths:
            out = widths[prod[name]]
            bias = bias or plans[prod[name]].site.bn is None
        if name in cons and cons[name] in widths:
            inn = widths[cons[name]]
        total += out * inn * k + (out if bias else 0) - sum(p.numel() for p in m.parameters())
    for i, w in widths.items():
        if plans[i].site.bn is not None:
            bn = get_module(model, plans[i].site.bn)
            total += 2 * w - sum(p.numel() for p in bn.parameters())
    return total


def width_of(m_comp: int, relu_split: bool) -> int:
    return 2 * m_comp + 1 if relu_split else m_comp + 1


def choose(plans: list[LayerPlan], threshold: float, relu_split: bool, full_rank: bool) -> dict[int, int]:
    """Site index -> new width for one variance threshold (sites that do not shrink are left out)."""
    widths = {}
    for i, pl in enumerate(plans):
        if pl.lam is None:
            continue
        m, _ = components_for(pl.lam, threshold)
        w = width_of(m, relu_split)
        if w < pl.n or (full_rank and w <= pl.n):
            widths[i] = w
    return widths


def plan_layers(model: nn.Module, cfg: "PCNS.Config") -> tuple[list[LayerPlan], list[str]]:
    """The layers this shrink considers (forward order), each with where its P will go; the
    reasons others are left alone."""
    sites, skipped = find_sites(model)
    if cfg.layers:
        unknown = set(cfg.layers) - {s.producer for s in sites}
        if unknown:
            raise ConfigError(f"method.layers: {sorted(unknown)} are not shrinkable layers; "
                              f"choose from {[s.producer for s in sites]}")
        sites = [s for s in sites if s.producer in cfg.layers]
    plans: list[LayerPlan] = []
    for s in sites:
        mixed = s.pool is not None and isinstance(get_module(model, s.pool), MixPool)
        why = check_site(model, s) or (f"{s.producer}: max pool before its consumer (maxpool=skip)"
                                       if s.pool and not mixed and cfg.maxpool == "skip" else None)
        if why:
            skipped.append(why)
            continue
        prod = get_module(model, s.producer)
        pl = LayerPlan(s, act_slope(get_module(model, s.act), cfg.relu_split, s.act), n=prod.weight.shape[0],
                       kind="conv" if isinstance(prod, nn.Conv2d) else "linear")
        if mixed:                                   # P goes into the existing mix: exact
            pl.target = s.pool + ".mix"
        elif s.pool and cfg.maxpool == "explicit":  # a new mix in front of the pool: exact
            pl.target, pl.new_mix = s.pool + ".mix", True
        else:                                       # the consumer (maxpool=commute: P moved past the pool)
            pl.target = s.consumer
        plans.append(pl)
    if not plans:
        raise ConfigError("PCNS found no layer to shrink in this model (see method.layers / maxpool)")
    return plans, skipped


def calibration_size(model: nn.Module, plans: list[LayerPlan], cfg: "PCNS.Config",
                     example_inputs: torch.Tensor) -> int:
    """Calibration images: `calibration_images` for conv models, more where a layer needs
    `samples_per_unit` samples per neuron (sets each plan's spatial `positions`)."""
    pos: dict[str, int] = {}

    def probe(name: str, t: torch.Tensor) -> None:
        pos[name] = t[0, 0].numel() if t.dim() == 4 else 1
    with capture({pl.site.producer: get_module(model, pl.site.producer) for pl in plans}, probe):
        model(example_inputs[:1])
    for pl in plans:
        pl.positions = pos[pl.site.producer]
    need = [math.ceil(cfg.samples_per_unit * pl.n / pl.positions) for pl in plans]
    return max(need + [cfg.calibration_images if any(pl.kind == "conv" for pl in plans) else 0])


def choose_widths(model: nn.Module, plans: list[LayerPlan], cfg: "PCNS.Config",
                  target_params: Optional[int]) -> tuple[float, dict[int, int]]:
    """(variance threshold, plan index -> new width): `cfg.energy` per layer, or one threshold
    bisected so the shrunk model has at most `target_params` parameters."""
    def widths_at(threshold: float) -> dict[int, int]:
        return choose(plans, threshold, cfg.relu_split, cfg.transform_full_rank)
    if target_params is None:
        return cfg.energy, widths_at(cfg.energy)
    at_0 = widths_at(0.0)
    floor = projected_params(model, plans, at_0)
    if floor > target_params:
        raise TargetError(f"method.target_params: {target_params:,} parameters are below what PCNS reaches with "
                          f"one component per layer ({floor:,}); raise method.target_params")
    (lo, widths), _ = bisect_fraction(widths_at, lambda w: projected_params(model, plans, w) <= target_params,
                                      at_0, None)
    return lo, widths


def set_widths(plans: list[LayerPlan], widths: dict[int, int], cfg: "PCNS.Config") -> list[LayerPlan]:
    """Mark the layers that shrink, with their M and scale c; returns them (forward order)."""
    for i, pl in enumerate(plans):
        if i in widths:
            pl.shrink, pl.width = True, widths[i]
            pl.m_comp = (widths[i] - 1) // 2 if cfg.relu_split else widths[i] - 1
            rms = math.sqrt(pl.total_sq / max(pl.n * pl.samples, 1))
            pl.c = cfg.ev_scale * math.sqrt(pl.samples) * max(rms, 1e-30)
    return [pl for pl in plans if pl.shrink]
