"""Layer surgery shared by the methods: module lookup/replacement, BN folding and
affine re-parametrisation of a layer's inputs.

`substitute_inputs` is the one operation behind PCN's rotation (x = V z + mu,
docs/methods/pcn.md) and node pruning's compensation (x_pruned = B x_kept + c,
sec. 4): if the layer's input is replaced by an affine function `x = M z + s`
of a new input `z`, the layer reading `z` has weights `W M` at every kernel
position and bias `b + sum_ij W[:, :, i, j] s`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(model, parent_name), child, new)


@torch.no_grad()
def substitute_inputs(layer: nn.Conv2d | nn.Linear, m: torch.Tensor, shift: Optional[torch.Tensor] = None
                      ) -> nn.Conv2d | nn.Linear:
    """A new layer reading `z` that computes what `layer` computed on `x = m z + shift`.

    `m` is `[in_old, in_new]`, `shift` is `[in_old]`. For a conv the identity holds
    exactly only where the input is not padding (padding zeros of `z` map to `shift`,
    not to zeros of `x`); callers that need exact borders pad first (see PCN)."""
    w = layer.weight.detach().to(torch.float64)
    m = m.to(device=w.device, dtype=torch.float64)
    if w.shape[1] != m.shape[0]:
        raise ValueError(f"layer has {w.shape[1]} inputs but the map has {m.shape[0]} rows")
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("substitute_inputs supports ungrouped convolutions only")
        new_w = torch.einsum("oikl,ij->ojkl", w, m)
        new = nn.Conv2d(m.shape[1], layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, bias=layer.bias is not None or shift is not None,
                        padding_mode=layer.padding_mode)
    elif isinstance(layer, nn.Linear):
        new_w = w @ m
        new = nn.Linear(m.shape[1], layer.out_features, bias=layer.bias is not None or shift is not None)
    else:
        raise TypeError(f"substitute_inputs takes Conv2d or Linear, got {type(layer).__name__}")
    bias = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros(
        w.shape[0], dtype=torch.float64, device=w.device)
    if shift is not None:
        shift = shift.to(device=w.device, dtype=torch.float64)
        bias = bias + (w.sum(dim=(2, 3)) if w.dim() == 4 else w) @ shift
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    new.weight.copy_(new_w.to(layer.weight.dtype))
    if new.bias is not None:
        new.bias.copy_(bias.to(layer.weight.dtype))
    return new


@torch.no_grad()
def fold_bn(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Conv2d | nn.Linear:
    """A layer with bias computing `bn(layer(x))` in eval mode (running statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                        layer.padding, layer.dilation, layer.groups, bias=True, padding_mode=layer.padding_mode)
        shape = (-1, 1, 1, 1)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True)
        shape = (-1, 1)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    new.weight.copy_(layer.weight * scale.view(shape))
    b = layer.bias.detach() if layer.bias is not None else torch.zeros_like(shift)
    new.bias.copy_(b * scale + shift)
    return new
