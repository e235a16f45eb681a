"""Model factory: timm classes in CIFAR form, with the usual parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from timm.models.resnet import ResNet
from timm.models.vgg import VGG

from bench.config import ConfigError, ModelConfig
from bench.models import MODELS, build_model, count_params


# Reference counts of the usual CIFAR-10 models (10 classes).
@pytest.mark.parametrize("name, expected, tol", [
    ("vgg16", 14.73e6, 0.01),      # "about 15M": 14.7M conv + BN + 5k classifier
    ("resnet18", 11.17e6, 0.01),   # the usual CIFAR ResNet-18 figure
    ("resnet56", 0.86e6, 0.01),    # He et al. 0.85M with option-A shortcuts; timm's projections add 0.01M
    ("resnet20", 0.27e6, 0.02),
])
def test_parameter_counts_match_the_usual_cifar_figures(name, expected, tol):
    assert count_params(build_model(ModelConfig(name=name))) == pytest.approx(expected, rel=tol)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_is_a_timm_class_and_runs_at_32px(name):
    m = build_model(ModelConfig(name=name, width=0.125))
    assert isinstance(m, (VGG, ResNet))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_has_one_linear_classifier_and_no_convmlp_head():
    m = build_model(ModelConfig(name="vgg11"))
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == 8


def test_cifar_stem_keeps_resolution():
    m = build_model(ModelConfig(name="resnet18"))
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_width_and_activation_options(name):
    m = build_model(ModelConfig(name=name, width=0.5, act="leaky_relu", leaky_slope=0.2))
    first = m.conv1 if name == "resnet20" else m.features[0]
    assert first.out_channels == (8 if name == "resnet20" else 32)
    acts = [x for x in m.modules() if isinstance(x, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.2 for a in acts)
    assert not any(isinstance(x, nn.ReLU) for x in m.modules())


def test_unknown_model_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'resnet20'"):
        build_model(ModelConfig(name="resnet21"))


def test_macs_match_the_closed_form_and_a_shared_module_counts_once_per_call():
    from bench.metrics import count_macs
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    dense = nn.Sequential(conv, nn.Flatten(), nn.Linear(6 * 8 * 8, 10, bias=False))
    expected = 8 * 8 * 6 * 4 * 9 + 6 * 8 * 8 * 10
    assert count_macs(dense, torch.randn(2, 4, 8, 8))[0] == expected

    class Shared(nn.Module):              # one module under two parents, called once by each
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Sequential(conv), nn.Sequential(conv)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with torch.no_grad():
        conv.weight[:3] = 0                  # half the filters zero: half the non-zero MACs
    assert count_macs(Shared(), torch.randn(1, 4, 8, 8)) == (2 * 8 * 8 * 6 * 4 * 9, 8 * 8 * 6 * 4 * 9)
