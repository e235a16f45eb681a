"""L1-norm filter pruning: the smallest-L1 filters go (planted norms, one-shot and
stepped), parameter and MAC targets are met within 2%, VGG-16-pruned-A's layer choice,
Li et al.'s ResNet variant against full dependency groups, and a run through the harness
with two pruning events."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_dataclass, read_yaml
from bench.configure import load_config
from bench.metrics import count_macs, param_counts
from bench.models import build_model
from bench.runs import load_checkpoint, run_name
from bench.train import train
from methods import get_method

L1 = get_method("l1_filter")
REPO = Path(__file__).resolve().parents[1]


def l1(model: nn.Module, epochs: int = 3, **options):
    ex = torch.randn(1, 3, 32, 32)
    ctx = SimpleNamespace(example_inputs=ex, dense_params=param_counts(model)["params_total"],
                          dense_macs=count_macs(model, ex)[0], epochs=epochs)
    return L1(build_dataclass(L1.Config, {"name": "l1_filter", **options}, "method."), ctx)


def planted_vgg() -> tuple[nn.Module, torch.Tensor]:
    """VGG-11/8 whose conv 3 (features.8, 32 filters) has filter j's L1 norm set to a
    known, shuffled value; returns the model and those norms."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(name="vgg11", width=0.125)).eval()
    conv = model.features[8]
    norms = torch.randperm(32, generator=torch.Generator().manual_seed(2)).double() + 1.0
    with torch.no_grad():
        w = conv.weight
        w.mul_((norms / w.abs().sum(dim=(1, 2, 3)).double()).float().view(-1, 1, 1, 1))
        conv.bias.copy_(torch.arange(32, dtype=torch.float32))           # tags to find kept filters
    return model, norms


def kept_filters(pruned: nn.Module) -> list[int]:
    return pruned.features[8].bias.round().long().tolist()


def test_one_shot_removes_the_filters_with_the_smallest_l1_norm():
    model, norms = planted_vgg()
    pruned, info = l1(model, target_params=None, pruning_ratio=0.25, prune_layers=[3]).prune(model)
    assert kept_filters(pruned) == sorted(torch.argsort(norms, descending=True)[:24].tolist())
    assert info["channels"] == {"features.8": [32, 24]}      # no other layer touched
    assert pruned.features[11].in_channels == 24 and pruned.features[9].num_features == 24


def test_stepping_to_a_target_removes_the_smallest_filters_too():
    model, norms = planted_vgg()
    pruned, info = l1(model, target_params=0.97, prune_layers=[3]).prune(model)
    n = pruned.features[8].out_channels
    assert 0 < 32 - n < 32 and info["steps"] > 1
    assert kept_filters(pruned) == sorted(torch.argsort(norms, descending=True)[:n].tolist())
    assert param_counts(pruned)["params_total"] / param_counts(model)["params_total"] == pytest.approx(0.97, rel=0.02)


@pytest.mark.parametrize("name,width,options", [
    ("vgg11", 0.125, {"target_params": 0.5}),
    ("vgg11", 0.125, {"target_params": 0.25, "global_pruning": True}),
    ("resnet20", 0.5, {"target_params": 0.5}),                 # one channel of every block at once: fine steps
    ("vgg11", 0.125, {"target_params": None, "target_macs": 0.5}),
    ("resnet20", 0.5, {"target_params": 0.6, "scope": "all"}),   # one stream channel > 2%: lands just above
])
def test_targets_are_met_within_two_percent(name, width, options):
    torch.manual_seed(3)
    model = build_model(ModelConfig(name=name, width=width))
    method = l1(model, **options)
    kind, target = method.cfg.target().kind, method.cfg.target().frac
    pruned, info = method.prune(model)
    dense = method.ctx.dense_params if kind == "params" else method.ctx.dense_macs
    now = param_counts(pruned)["params_total"] if kind == "params" else count_macs(pruned, method.ctx.example_inputs)[0]
    assert now / dense == pytest.approx(target, rel=0.02)
    assert info["achieved_frac"] == pytest.approx(now / dense)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_block_internal_keeps_the_residual_stream_and_all_prunes_it():
    torch.manual_seed(4)
    model = build_model(ModelConfig(name="resnet20", width=0.5))
    _, li = l1(model, target_params=0.6).prune(model)
    assert li["channels"] and all(n.endswith(".conv1") and n != "conv1" for n in li["channels"])
    _, full = l1(model, target_params=None, pruning_ratio=0.25, scope="all").prune(model)
    assert {"conv1", "layer1.0.conv2", "layer2.0.downsample.0"} <= full["channels"].keys()
    with pytest.raises(ConfigError, match="not block-internal"):
        l1(model, target_params=None, pruning_ratio=0.5, prune_layers=[1]).prune(model)


def test_vgg16_pruned_a_halves_conv_1_and_8_to_13():
    raw = read_yaml(REPO / "configs/methods/l1_filter_vgg16_A.yaml")
    assert raw["model"]["name"] == "vgg16"
    torch.manual_seed(5)
    model = build_model(ModelConfig(name="vgg16", width=0.25))
    pruned, info = l1(model, **raw["method"]).prune(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    after = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert after == [c.out_channels // 2 if i in (1, 8, 9, 10, 11, 12, 13) else c.out_channels
                     for i, c in enumerate(convs, 1)]
    # Li et al. Table 2: 64% fewer parameters, 34% fewer FLOPs (their head differs slightly).
    assert info["params_after"] / info["params_before"] == pytest.approx(0.36, abs=0.01)
    assert info["macs_after"] / info["macs_before"] == pytest.approx(0.66, abs=0.01)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="either pruning_ratio or a target"):
        build_dataclass(L1.Config, {"name": "l1_filter", "pruning_ratio": 0.5}, "method.")
    with pytest.raises(ConfigError, match="do not fit"):
        l1(build_model(ModelConfig(name="vgg11", width=0.125)), epochs=3, transform_epoch=2, iterative_steps=3)
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    with pytest.raises(ConfigError, match="does not exist"):
        l1(model, target_params=None, pruning_ratio=0.5, prune_layers=[9]).prune(model)


def test_two_pruning_events_fine_tune_and_checkpoint_through_the_harness(tiny_overrides):
    # Two epochs (tiny_overrides): prune to 75% after epoch 1, to 50% after epoch 2.
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [
        "method.name=l1_filter", "method.transform_epoch=1", "method.iterative_steps=2",
        "method.target_params=0.5"])
    summary = train(cfg, log=lambda s: None)
    assert summary["params_total"] / summary["dense_params"] == pytest.approx(0.5, rel=0.02)
    first, second = summary["method_summary"]["events"]
    assert (first["epoch"], second["epoch"]) == (1, 2)
    assert first["target_frac"] == pytest.approx(0.75) and second["target_frac"] == pytest.approx(0.5)
    assert first["params_before"] == summary["dense_params"] > first["params_after"] == second["params_before"]
    assert second["params_after"] == summary["params_total"] and second["macs_after"] == summary["macs"]
    assert [t["when"] for t in summary["transforms"]] == ["epoch_end_1", "epoch_end_2"]
    model = load_checkpoint(Path(cfg.output_dir) / run_name(cfg) / "checkpoint.pt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert param_counts(model)["params_total"] == summary["params_total"]


def test_first_layer_importance_equals_torch_prunings_group_reduction_first():
    import torch_pruning as tp
    from methods._pruning import build_graph
    from methods.l1_filter import FirstLayerL1
    torch.manual_seed(6)
    model = build_model(ModelConfig(name="resnet20", width=0.5))
    graph = build_graph(model, torch.randn(1, 3, 32, 32))
    stock = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    groups = list(graph.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d]))
    assert len(groups) == 12
    for group in groups:
        assert torch.equal(FirstLayerL1()(group), stock(group))
        root = group[0].dep.target.module
        assert torch.allclose(stock(group), root.weight.abs().sum(dim=(1, 2, 3)))
