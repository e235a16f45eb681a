"""Model factory: timm classes in CIFAR form, with the usual parameter counts, each
publishing a structure consistent with its modules; a new family is one file."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig
from bench.models import (MODEL_DEFAULTS, MODEL_NOTES, MODELS, Block, ConvBN, Stage, Structure, act_layer,
                          build_model, count_params, model_defaults, register_model, scaled, structure_of)
from bench.models.structure import ACTIVATIONS, NORMS


# Reference counts of the usual CIFAR-10 models (10 classes).
@pytest.mark.parametrize("name, expected, tol", [
    ("vgg16", 14.73e6, 0.01),      # "about 15M": 14.7M conv + BN + 5k classifier
    ("resnet18", 11.17e6, 0.01),   # the usual CIFAR ResNet-18 figure
    ("resnet56", 0.86e6, 0.01),    # He et al. 0.85M with option-A shortcuts; timm's projections add 0.01M
    ("resnet20", 0.27e6, 0.02),
])
def test_parameter_counts_match_the_usual_cifar_figures(name, expected, tol):
    assert count_params(build_model(ModelConfig(name=name))) == pytest.approx(expected, rel=tol)


def width(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if side == "in" else layer.out_channels
    return layer.in_features if side == "in" else layer.out_features


def check_unit(m: nn.Module, u: ConvBN) -> None:
    """The named conv, norm and activation exist, with their types and the conv's width."""
    conv = m.get_submodule(u.conv)
    assert isinstance(conv, (nn.Conv2d, nn.Linear)), u.conv
    if u.bn is not None:
        bn = m.get_submodule(u.bn)
        assert isinstance(bn, NORMS) and bn.num_features == width(conv, "out"), u.bn
    if u.act is not None:
        assert isinstance(m.get_submodule(u.act), ACTIVATIONS), u.act


def check_structure(m: nn.Module, st: Structure, x: torch.Tensor) -> None:
    """Every named module exists with the right type; channel counts chain from the stem
    through every block body to the classifier; a residual block has a shortcut exactly where
    its shape changes; the classifier is the final Linear (its output is the model's); no conv
    is left out."""
    assert st.stages and all(stage.blocks for stage in st.stages)
    named = {u.conv for u in st.units()} | {b.shortcut.conv for b in st.blocks() if b.shortcut is not None}
    assert named == {n for n, x_ in m.named_modules() if isinstance(x_, nn.Conv2d)} - {st.classifier}
    for stage in st.stages:
        assert stage.name is None or isinstance(m.get_submodule(stage.name), nn.Module)
    for name in st.chain:
        m.get_submodule(name)
    flow = None if st.stem is None else width(m.get_submodule(st.stem.conv), "out")
    if st.stem is not None:
        check_unit(m, st.stem)
    for block in st.blocks():
        assert block.body and (block.name is None or isinstance(m.get_submodule(block.name), nn.Module))
        convs = [m.get_submodule(u.conv) for u in block.body]
        for u in block.body:
            check_unit(m, u)
        for a, b in zip(convs, convs[1:]):
            assert width(a, "out") == width(b, "in"), block
        if flow is not None:
            assert width(convs[0], "in") == flow, block
        c_in, c_out = width(convs[0], "in"), width(convs[-1], "out")
        strided = any(isinstance(c, nn.Conv2d) and c.stride != (1, 1) for c in convs)
        if block.residual:
            assert (block.shortcut is not None) == (c_in != c_out or strided), block
        else:
            assert block.shortcut is None
        if block.shortcut is not None:
            check_unit(m, block.shortcut)
            sc = m.get_submodule(block.shortcut.conv)
            assert (width(sc, "in"), width(sc, "out")) == (c_in, c_out), block
        flow = c_out
    fc = m.get_submodule(st.classifier)
    assert isinstance(fc, nn.Linear) and fc.in_features == flow
    assert [n for n, x_ in m.named_modules() if isinstance(x_, nn.Linear)][-1] == st.classifier
    seen = []
    handle = fc.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        out = m.eval()(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_publishes_a_structure_consistent_with_its_modules_and_runs_at_32px(name):
    m = build_model(ModelConfig(name=name, width=0.125))
    st = structure_of(m)
    x = torch.randn(2, 3, 32, 32)
    check_structure(m, st, x)
    assert m(x).shape == (2, 10)
    assert st.defaults == model_defaults(name) and st.defaults["pcn.transform_epoch"] in (1, 5)
    assert structure_of(copy.deepcopy(m)) == st and structure_of(pickle.loads(pickle.dumps(m))) == st


def test_a_bare_sequential_is_a_chain_and_other_models_publish_nothing():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                        nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    st = structure_of(seq)
    assert st.chain == tuple(str(i) for i in range(9)) and st.classifier == "8" and st.stem is None
    assert [[u for b in s.blocks for u in b.body] for s in st.stages] == [[ConvBN("0", "1", "2")],
                                                                          [ConvBN("4", None, "5")]]
    check_structure(seq, st, torch.randn(2, 3, 16, 16))
    with pytest.raises(ConfigError, match="publishes no structure"):
        structure_of(nn.Linear(2, 2))


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


# --------------------------------------------------------------------------- a family in one file
class TinyNet(nn.Module):
    """A 2-conv plain net that is neither a timm class nor an nn.Sequential."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, act = scaled(16, cfg.width), act_layer(cfg)
        self.conv_a, self.norm_a, self.act_a = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), act()
        self.conv_b, self.norm_b, self.act_b = nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), act()
        self.out = nn.Linear(2 * c, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.out(x.mean((2, 3)))


def tiny_net(cfg: ModelConfig) -> tuple[nn.Module, Structure]:
    body = (ConvBN("conv_a", "norm_a", "act_a"), ConvBN("conv_b", "norm_b", "act_b"))
    return TinyNet(cfg), Structure(family="tiny", stem=None, stages=(Stage(None, (Block(None, body),)),),
                                   classifier="out")


@pytest.fixture
def tiny_family():
    register_model("tiny_test_net", "2-conv plain net (test)", {"pcn.transform_epoch": 3})(tiny_net)
    try:
        yield "tiny_test_net"
    finally:
        for table in (MODELS, MODEL_NOTES, MODEL_DEFAULTS):
            table.pop("tiny_test_net")


def test_a_new_family_is_one_registration_and_the_methods_read_its_structure(tiny_family):
    from methods._pruning import block_internal_convs, classifier_of
    from methods.dsr import sparse_layer_names
    from methods.pcn import analyse, default_transform_epoch, select_sites
    from methods.pcns import find_sites

    m = build_model(ModelConfig(name=tiny_family, width=0.5))
    check_structure(m, structure_of(m), torch.randn(2, 3, 8, 8))
    g = analyse(m)
    assert list(g.sites) == ["conv_b", "out"] and g.sites["out"].classifier
    assert [s.producers for s in g.streams.values()] == [[("conv_a", "norm_a")], [("conv_b", "norm_b")]]
    assert select_sites(g, "all") == ["conv_b"] and select_sites(g, "late") == ["conv_b"]
    assert default_transform_epoch(tiny_family) == 3
    assert classifier_of(m) is m.out and block_internal_convs(m) == [m.conv_a, m.conv_b]
    assert sparse_layer_names(m, torch.randn(1, 3, 8, 8), False) == ["conv_b"]
    assert [(s.producer, s.act, s.consumer) for s in find_sites(m)[0]] == [("conv_a", "act_a", "conv_b")]
