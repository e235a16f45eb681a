"""The MAC counter (torch-pruning's) against PyTorch's own FLOP counter: for convolutions
and linear layers MACs = FLOPs / 2 plus one add per output element of a layer with a bias
(torch-pruning counts the bias, FlopCounterMode does not), on every model family and on
the model every method ends with (`assert_counts_like_torch`, run by the contract test on
the model each method trains there)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.configure import load_config
from bench.metrics import layer_macs
from bench.models import build_model
from methods.decorrelated_bp import DECOR_TYPES


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> float:
    _, per_layer = layer_macs(model, x)
    return sum(v for m, v in per_layer.items() if isinstance(m, (nn.Conv2d, nn.Linear)))


def torch_macs(model: nn.Module, x: torch.Tensor) -> float:
    """FlopCounterMode's FLOPs / 2, plus the bias adds it leaves out."""
    model.eval()
    bias_adds = []
    hooks = [m.register_forward_hook(lambda mod, i, out: bias_adds.append(out.numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return fc.get_total_flops() / 2 + sum(bias_adds)


@pytest.mark.parametrize("name, width", [("vgg11", 0.25), ("vgg16", 0.125), ("resnet20", 0.5), ("resnet18", 0.125),
                                         ("resnet50", 0.125), ("wide_resnet50_2", 0.0625)])
def test_conv_and_linear_macs_match_torch_flop_counter_on_every_family(name, width):
    model = build_model(load_config("configs/smoke.yaml", [f"model.name={name}", f"model.width={width}"]).model)
    x = torch.randn(1, 3, 32, 32)
    assert conv_linear_macs(model, x) == pytest.approx(torch_macs(model, x), rel=1e-9)


def assert_counts_like_torch(model: nn.Module) -> None:
    """The check for a method's final model (called by the contract test, which trains one
    per method): conv/linear MACs = FLOPs / 2 + bias adds."""
    x = torch.randn(1, 3, 32, 32)
    # Decorrelated BP merges W R once per forward call (out x d^2 MACs, independent of the
    # batch: a training-step cost its docstring states); the per-image count leaves it out.
    merges = sum(m.weight.shape[0] * m.decor.shape[0] ** 2 for m in model.modules() if isinstance(m, DECOR_TYPES))
    assert conv_linear_macs(model, x) == pytest.approx(torch_macs(model, x) - merges, rel=1e-9)
