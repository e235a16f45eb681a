"""PCNS's surgery: the shrunk layer with its least-squares weights and a fresh BN that is the
identity in eval mode (`new_producer`), P written into the consumer's inputs or into the 1x1
mix kept in front of a max pool (`apply_surgery`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bench.surgery import get_module, set_module, substitute_inputs
from methods.pcns.planning import LayerPlan
from methods.pcns.sites import MixPool


@torch.no_grad()
def identity_conv(n: int, device: torch.device) -> nn.Conv2d:
    """A bias-free 1x1 conv computing the identity on n channels (the mix before P goes in)."""
    conv = nn.Conv2d(n, n, 1, bias=False).to(device)
    conv.weight.copy_(torch.eye(n, device=device)[:, :, None, None])
    return conv


@torch.no_grad()
def new_producer(model: nn.Module, pl: LayerPlan, mean: torch.Tensor, var: torch.Tensor
                 ) -> tuple[nn.Module, Optional[nn.Module]]:
    """The shrunk layer (LS weights, `pl.w`) and its fresh BN (eval-mode identity, see docstring)."""
    old = get_module(model, pl.site.producer)
    bn_old = get_module(model, pl.site.bn) if pl.site.bn else None
    bias = old.bias is not None or bn_old is None
    m = pl.width
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, m, old.kernel_size, old.stride, old.padding, old.dilation, bias=bias)
    else:
        new = nn.Linear(old.in_features, m, bias=bias)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    w = pl.w.T                                                # [m, d + 1]
    new.weight.copy_(w[:, :-1].reshape(new.weight.shape).to(new.weight.dtype))
    if bias:
        new.bias.copy_(w[:, -1].to(new.bias.dtype))
    if bn_old is None:
        return new, None
    bn = type(bn_old)(m, eps=bn_old.eps, momentum=bn_old.momentum).to(device=old.weight.device)
    z_mean = mean if bias else mean - w[:, -1]                # mean of what the new layer outputs
    bn.running_mean.copy_(z_mean.to(bn.running_mean.dtype))
    bn.running_var.copy_(var.to(bn.running_var.dtype))
    bn.weight.copy_(torch.sqrt(var + bn_old.eps).to(bn.weight.dtype))
    bn.bias.copy_(mean.to(bn.bias.dtype))                     # + the LS bias if the layer has none
    return new, bn


def isolated_target(model: nn.Module, pl: LayerPlan) -> nn.Module:
    """`pl.target` reading the new channels, with only this layer changed (for the error table)."""
    target = identity_conv(pl.n, pl.p.device) if pl.new_mix else get_module(model, pl.target)
    return substitute_inputs(target, pl.p)


def apply_surgery(model: nn.Module, pl: LayerPlan) -> None:
    """Put one layer's shrink into `model`: the new producer and its fresh BN, then P into the
    target (the consumer, or the mix in front of a max pool, created on the first shrink)."""
    set_module(model, pl.site.producer, pl.producer_new)
    if pl.site.bn:
        set_module(model, pl.site.bn, pl.bn_new)
    if pl.new_mix:
        set_module(model, pl.site.pool, MixPool(identity_conv(pl.n, pl.p.device), get_module(model, pl.site.pool)))
    set_module(model, pl.target, substitute_inputs(get_module(model, pl.target), pl.p))
    model.eval()                                                    # the fresh BN too
