"""Where PCNS applies: a site is a hidden layer whose outputs go, through its BN and
activation and possibly a pool, to exactly one next weighted layer (the consumer). Sites come
from the model's published structure (`Structure.channel_sets`): every `chain` channel set of
a chain network (VGG) and every `block_internal` one of a residual network; the residual
stream is never shrunk (PCNS replaces a layer's neurons by new ones, and the skip would add
the old ones). What lies between the activation and the consumer (`Structure.between`)
decides whether P can go into the consumer: linear pools and reshapes commute with P, a max
pool does not (`MixPool`, the `maxpool` option).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from bench.config import ConfigError
from bench.models import BLOCK_INTERNAL, CHAIN, structure_of
from bench.surgery import get_module

POOLS_LINEAR = (nn.Identity, nn.Dropout, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
POOLS_MAX = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def act_slope(module: nn.Module, relu_split: bool, name: str) -> float:
    if isinstance(module, nn.LeakyReLU):
        if relu_split:
            raise ConfigError(f"method.relu_split=true but '{name}' is LeakyReLU; set method.relu_split=false")
        if module.negative_slope <= 0:
            raise ConfigError(f"'{name}' has LeakyReLU slope {module.negative_slope}: PCNS needs slope > 0; "
                              f"set model.leaky_slope > 0")
        return float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        if not relu_split:
            raise ConfigError(f"'{name}' is ReLU, which PCNS cannot invert; set model.act=leaky_relu "
                              f"(or method.relu_split=true for the draft's ReLU variant)")
        return 0.0
    raise ConfigError(f"'{name}' is {type(module).__name__}; PCNS supports LeakyReLU (and ReLU with relu_split)")


class MixPool(nn.Module):
    """`pool(mix(x))`: PCNS's P kept as a bias-free 1x1 conv in front of a max pool (maxpool: explicit),
    because maxpool(P e) != P maxpool(e). Trainable like any layer; a later shrink multiplies it by
    the new P."""

    def __init__(self, mix: nn.Conv2d, pool: nn.Module):
        super().__init__()
        self.mix, self.pool = mix, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.mix(x))


@dataclass
class Site:
    """One shrinkable hidden layer: producer -> [bn] -> act -> between... -> consumer -> [consumer_bn]."""
    producer: str
    bn: Optional[str]
    act: str
    between: list[str]
    consumer: str
    consumer_bn: Optional[str]
    pool: Optional[str]              # the max pool (or MixPool) between act and consumer, if any


def _is_linear_between(m: nn.Module) -> bool:
    if isinstance(m, SelectAdaptivePool2d):
        return isinstance(m.pool, (nn.AdaptiveAvgPool2d, nn.Identity)) or m.pool_type == "avg"
    return isinstance(m, POOLS_LINEAR)


def find_sites(model: nn.Module) -> tuple[list[Site], list[str]]:
    """Shrinkable layers in forward order, and why others are left alone, from the model's
    published structure (bench.models.structure_of; a bare nn.Sequential is a chain of its
    children): every `chain` and `block_internal` channel set whose producer has a ReLU or
    LeakyReLU of its own and whose consumer is reached through linear pools, reshapes and at
    most one max pool. The residual stream (stem, block outputs, shortcuts) is not shrunk."""
    st = structure_of(model)
    sites, skipped = [], []
    for cs in st.channel_sets((CHAIN, BLOCK_INTERNAL)):
        unit, (read,) = cs.producer, cs.reads
        (consumer,) = read.layers
        if unit.act is None:
            skipped.append(f"{unit.conv}: no ReLU/LeakyReLU right after it")
            continue
        between = st.between(unit, consumer)
        if between is None:
            skipped.append(f"{unit.conv}: the model does not publish what lies between it and {consumer}")
            continue
        rest = [(n, get_module(model, n)) for n in between]
        pools = [n for n, m in rest if isinstance(m, POOLS_MAX + (MixPool,))]
        if len(pools) > 1 or not all(_is_linear_between(m) or n in pools for n, m in rest):
            skipped.append(f"{unit.conv}: unsupported modules between it and {consumer}")
            continue
        cbn = None if read.classifier else consumer_bn(st, consumer)
        sites.append(Site(unit.conv, unit.bn, unit.act, [n for n, m in rest if not isinstance(m, nn.Identity)],
                          consumer, cbn, pools[0] if pools else None))
    if not st.chain:
        skipped.append("residual stream (stem, block outputs, shortcuts): not shrunk by design")
    return sites, skipped


def consumer_bn(st, consumer: str) -> Optional[str]:
    """The norm right after weighted layer `consumer` (its unit's), if any."""
    return next((u.bn for u in st.units() if u.conv == consumer), None)


def check_site(model: nn.Module, s: Site) -> Optional[str]:
    """Why a site cannot be shrunk, or None."""
    prod, cons = get_module(model, s.producer), get_module(model, s.consumer)
    for name, m in ((s.producer, prod), (s.consumer, cons)):
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return f"{name}: grouped or non-zero-padded conv"
    out = prod.out_channels if isinstance(prod, nn.Conv2d) else prod.out_features
    inn = cons.in_channels if isinstance(cons, nn.Conv2d) else cons.in_features
    if out != inn:
        return f"{s.producer}: {out} outputs but {s.consumer} reads {inn} (flatten over space)"
    return None
