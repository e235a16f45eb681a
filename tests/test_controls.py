"""The controls: the small dense model (`dense_small`) meets its parameter
target within the pruning methods' 2% on VGG and ResNet, deterministically from the run
seed; random structured pruning (`l1_filter` with `importance: random`) removes as many
channels, layer by layer, as L1 at the same target; and the suites run every control."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_dataclass
from bench.configure import load_config
from bench.metrics import count_macs, param_counts
from bench.models import build_model, count_params
from bench.suite import expand, load_suite
from bench.train import train
from methods import get_method

REPO = Path(__file__).resolve().parents[1]
DS = get_method("dense_small")
L1 = get_method("l1_filter")


def dense_small(model: nn.Module, name: str, seed: int = 0, **options):
    ctx = SimpleNamespace(model_name=name, dense_params=count_params(model), seed=seed)
    return DS(build_dataclass(DS.Config, {"name": "dense_small", **options}, "method."), ctx)


@pytest.mark.parametrize("name,width", [("vgg11", 0.5), ("resnet20", 1.0)])
@pytest.mark.parametrize("target", [0.5, 0.25, 0.1])
def test_dense_small_meets_its_target_within_two_percent(name, width, target):
    model = build_model(ModelConfig(name=name, width=width))
    method = dense_small(model, name, target_params=target)
    small = method.on_train_start(model)
    info = method.summary(small)
    achieved = count_params(small) / count_params(model)
    assert achieved == pytest.approx(target, rel=0.02) and info["within_tol"]
    assert info["params"] == count_params(small) and info["achieved_frac"] == pytest.approx(achieved)
    assert info["dense_width"] == pytest.approx(width, rel=0.01)      # the run's own width, found by the search
    assert type(small) is type(model) and small.get_classifier().out_features == 10


def test_dense_small_takes_the_closest_width_and_says_when_it_misses_the_tolerance():
    model = build_model(ModelConfig(name="resnet20", width=1.0))
    method = dense_small(model, "resnet20", target_params=0.1, target_tol_frac=1e-4)
    small = method.on_train_start(model)                   # no width is that close: trained anyway
    info = method.summary(small)
    assert not info["within_tol"]
    assert abs(info["achieved_frac"] - 0.1) <= abs(info["other_side"]["achieved_frac"] - 0.1)
    assert min(info["achieved_frac"], info["other_side"]["achieved_frac"]) < 0.1 \
        < max(info["achieved_frac"], info["other_side"]["achieved_frac"])   # the two sides of the step


def test_dense_small_is_initialised_from_the_run_seed_and_keeps_the_activation():
    model = build_model(ModelConfig(name="vgg11", width=0.25, act="leaky_relu", leaky_slope=0.2))
    state = torch.get_rng_state()
    a = dense_small(model, "vgg11", seed=3, target_params=0.25).on_train_start(model)
    assert torch.equal(torch.get_rng_state(), state)       # the harness's global stream is untouched
    b = dense_small(model, "vgg11", seed=3, target_params=0.25).on_train_start(model)
    c = dense_small(model, "vgg11", seed=4, target_params=0.25).on_train_start(model)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    slopes = {m.negative_slope for m in a.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2} and not any(isinstance(m, nn.ReLU) for m in a.modules())


def test_dense_small_refuses_a_model_it_cannot_rebuild():
    model = build_model(ModelConfig(name="vgg11", width=0.25))
    model.head.fc = nn.Linear(model.head.fc.in_features, 10, bias=False)     # not what vgg11 builds
    with pytest.raises(ConfigError, match="cannot rebuild vgg11"):
        dense_small(model, "vgg11").on_train_start(model)


def test_dense_small_runs_through_the_harness_and_resumes(tiny_overrides, tmp_path):
    def cfg(folder: str):
        return load_config(str(REPO / "configs/smoke.yaml"), tiny_overrides + [
            "method.name=dense_small", "method.target_params=0.25", "seed=5", f"output_dir={tmp_path / folder}"])
    s = train(cfg("a"), log=lambda *_: None)
    assert s["params_total"] / s["dense_params"] == pytest.approx(0.25, rel=0.02)
    assert s["method_summary"]["within_tol"] and s["target"] == 0.25
    assert s["transforms"][0]["when"] == "train_start"
    assert train(cfg("b"), max_epochs=1, log=lambda *_: None) is None           # interrupted, then resumed
    r = train(cfg("b"), log=lambda *_: None)
    assert r["test_acc"] == s["test_acc"] and r["method_summary"] == s["method_summary"]


# --------------------------------------------------------------------------- random structured pruning
def pruner(model: nn.Module, seed: int = 0, **options):
    ex = torch.randn(1, 3, 32, 32)
    ctx = SimpleNamespace(example_inputs=ex, dense_params=param_counts(model)["params_total"],
                          dense_macs=count_macs(model, ex)[0], epochs=3,
                          generator=torch.Generator().manual_seed(seed))
    return L1(build_dataclass(L1.Config, {"name": "l1_filter", **options}, "method."), ctx)


def tagged(name: str, width: float) -> nn.Module:
    """A model whose every conv bias holds its filter indices, to see which filters were kept."""
    torch.manual_seed(7)
    model = build_model(ModelConfig(name=name, width=width)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias = nn.Parameter(torch.arange(m.out_channels, dtype=torch.float32))
    return model


def kept(model: nn.Module) -> dict[str, list[int]]:
    return {n: m.bias.round().long().tolist() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name,width,options", [
    ("vgg11", 0.125, {"target_params": 0.5}),
    ("vgg11", 0.125, {"target_params": 0.25}),
    ("resnet20", 0.5, {"target_params": 0.5}),
    ("resnet20", 0.5, {"target_params": 0.6, "scope": "all"}),        # the last step replayed group by group
])
def test_random_pruning_removes_as_many_channels_as_l1_at_the_same_target(name, width, options):
    l1_model, info_l1 = pruner(tagged(name, width), **options).prune(tagged(name, width))
    rnd_model, info_rnd = pruner(tagged(name, width), importance="random", **options).prune(tagged(name, width))
    assert info_rnd["channels"] == info_l1["channels"] and info_rnd["channels"]      # same widths, layer by layer
    assert info_rnd["params_after"] == info_l1["params_after"]
    assert kept(rnd_model) != kept(l1_model)                                         # other filters went


def test_random_pruning_draws_from_the_methods_generator():
    def run(seed: int):
        method, model = pruner(tagged("vgg11", 0.125), seed=seed, importance="random", target_params=0.5), \
            tagged("vgg11", 0.125)
        state = torch.get_rng_state()
        pruned, _ = method.prune(model)
        assert torch.equal(torch.get_rng_state(), state)        # the global stream is not drawn from
        return kept(pruned)
    assert run(1) == run(1) and run(1) != run(2)


def test_importance_must_be_a_registered_criterion():
    with pytest.raises(ConfigError, match="importance"):
        build_dataclass(L1.Config, {"name": "l1_filter", "importance": "hrank"}, "method.")


# --------------------------------------------------------------------------- the suites
def cells(suite: str):
    return expand(*load_suite(str(REPO / f"configs/suites/{suite}.yaml")), [])


CONTROLS = {"dense_small", "random_filter", "dsr_static"}
SPARSE = {"dsr", "dsr_static", "set", "rigl", "gmp"}          # the sparse-training family
METHODS = {"dense", "dense_leaky", "pcn", "pcns", "l1_filter", "snp", "decorrelated_bp"} | CONTROLS | SPARSE
# The structured-pruning baselines and the compute-matched small network (a comparator of every row).
BASELINES = {"depgraph", "depgraph_nosl", "slimming", "taylor", "fpgm", "scratch_b"}
# The scratch curve's added point: dense_small at 4x its epochs (its 2x point is scratch_b's run).
CURVE = {"scratch_4x"}


@pytest.mark.parametrize("suite,seeds,targets,sparse_targets,labels", [
    ("cifar10-quick", {0, 1, 2}, {0.5, 0.25}, {0.5, 0.25, 0.1}, METHODS | BASELINES | CURVE),   # sparse also at 90%
    ("cifar10", {0, 1, 2}, {0.5, 0.25, 0.1}, {0.5, 0.25, 0.1}, METHODS | BASELINES),
    ("cifar10-smoke", {0}, {0.5, 0.25}, {0.5, 0.25}, METHODS | BASELINES | CURVE)])
def test_every_profile_runs_every_method_and_control_at_every_target(suite, seeds, targets, sparse_targets, labels):
    grid = cells(suite)
    assert {c.label for c in grid} == labels and {c.seed for c in grid} == seeds
    for label in labels - {"dense", "dense_leaky", "decorrelated_bp"}:
        want = sparse_targets if label in SPARSE else targets
        assert {c.target for c in grid if c.label == label} == want, label
    declared = load_suite(str(REPO / f"configs/suites/{suite}.yaml"))[0]
    assert declared.comparators == ["dense_small", "random_filter", "scratch_b"]
    controls = declared.controls()
    assert {lab: controls[lab] for lab in ("dense_small", "random_filter", "pcns", "dsr", "dsr_static", "set", "rigl",
                                           "gmp")} == {
        "dense_small": "dense", "random_filter": "dense", "pcns": "dense_leaky", "dsr": "dsr_static",
        "dsr_static": "dense", "set": "dsr_static", "rigl": "dsr_static", "gmp": "dsr_static"}
    assert {c.cfg.method.reallocate for c in grid if c.label == "dsr_static"} == {False}
    rnd = [c for c in grid if c.label == "random_filter"]
    l1 = [c for c in grid if c.label == "l1_filter"]
    assert {c.cfg.method.importance for c in rnd} == {"random"} and {c.cfg.method.importance for c in l1} == {"l1"}
    assert {c.cfg.method.transform_epoch for c in rnd} == {c.cfg.method.transform_epoch for c in l1}   # same prune point
    if labels & BASELINES:
        base = [c for c in grid if c.label in BASELINES - {"scratch_b"}]
        assert {c.cfg.method.transform_epoch for c in base} == {c.cfg.method.transform_epoch for c in l1}
        assert {c.cfg.method.reg for c in grid if c.label == "depgraph_nosl"} == {0.0}
        small = {(c.target, c.seed): c.cfg.train.epochs for c in grid if c.label == "dense_small"}
        assert all(small[(c.target, c.seed)] < c.cfg.train.epochs <= 2 * small[(c.target, c.seed)]
                   for c in grid if c.label == "scratch_b")                # more epochs, at most twice


def test_the_ablation_suite_holds_snp_without_compensation():
    grid = cells("cifar10-ablation")
    assert {(c.label, c.target) for c in grid if c.seed == 0} == {
        ("dense", None), ("snp", 0.5), ("snp", 0.25), ("snp_nocomp", 0.5), ("snp_nocomp", 0.25)}
    assert load_suite(str(REPO / "configs/suites/cifar10-ablation.yaml"))[0].controls()["snp_nocomp"] == "snp"
    for suite in ("cifar10-quick", "cifar10", "cifar10-smoke"):
        assert not [c for c in cells(suite) if c.label == "snp_nocomp"], suite
    assert not [c for c in cells("cifar10-smoke") if c.target == 0.1]   # the smoke grid stays at two targets
