"""Subspace Node Pruning: the LDL / ordering / tail / regression math on tiny tensors, the
invariant (an exactly redundant unit is removed with no change of the output), the
BN-shift path and its documented border caveat on a ResNet, a parameter target, and a
run through the harness."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_dataclass
from bench.configure import load_config
from bench.metrics import count_macs, param_counts
from bench.models import build_model
from bench.runs import load_checkpoint, run_name
from bench.train import train
from methods import get_method
from methods.snp import drops_for, find_slots, ldl, regression, tail_shares, unit_order

SNP = get_method("snp")


def randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN running statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


def fake_ctx(model: nn.Module, x: torch.Tensor, epochs: int = 3) -> SimpleNamespace:
    """The parts of the harness Context that SNP reads; calibration yields `x` itself."""
    ex = x[:1]
    return SimpleNamespace(
        example_inputs=ex, dense_params=param_counts(model)["params_total"], dense_macs=count_macs(model, ex)[0],
        epochs=epochs, num_train_images=len(x),
        calibration=lambda n, batch_size=500, heldout=False: (x[i:i + batch_size] for i in range(0, n, batch_size)))


def snp(model: nn.Module, x: torch.Tensor, **options) -> object:
    cfg = build_dataclass(SNP.Config, {"name": "snp", "calibration_images": len(x), **options}, "method.")
    return SNP(cfg, fake_ctx(model, x))


def plant_sum(conv: nn.Conv2d, bn: nn.BatchNorm2d, i: int, j: int, p: int, beta: float, intercept: float = 0.0):
    """Make unit p = unit i + unit j + intercept after conv -> BN -> ReLU: pre-activations
    are pushed positive by `beta`, so the ReLU is the identity on these three units."""
    with torch.no_grad():
        conv.weight[p] = conv.weight[i] + conv.weight[j]
        if conv.bias is not None:
            conv.bias[p] = conv.bias[i] + conv.bias[j]
        for u in (i, j, p):
            bn.running_mean[u], bn.running_var[u], bn.weight[u] = 0.0, 1.0 - bn.eps, 1.0
        bn.bias[i], bn.bias[j] = beta, beta + 10.0          # distinct, so units can be told apart
        bn.bias[p] = 2 * beta + 10.0 + intercept


# --------------------------------------------------------------------------- the math
def test_ldl_reconstructs_the_covariance_and_d_is_the_unexplained_variance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 400, generator=g, dtype=torch.float64)
    x = torch.cat([x, (x[0] - 2 * x[3])[None]])               # unit 5 = x0 - 2 x3
    c = torch.cov(x)
    lower, d = ldl(c)
    assert torch.allclose(lower @ torch.diag(d) @ lower.T, c, atol=1e-10)
    assert torch.equal(lower.diagonal(), torch.ones(6, dtype=torch.float64))
    assert torch.equal(lower.triu(1), torch.zeros(6, 6, dtype=torch.float64))
    # D_1: variance of unit 1 left after regressing it on unit 0 (the first Schur complement).
    assert d[0] == pytest.approx(float(c[0, 0]))
    assert d[1] == pytest.approx(float(c[1, 1] - c[0, 1] ** 2 / c[0, 0]))
    assert d[5] == 0.0 and (d[:5] > 0).all()                  # explained exactly by the units before it


def test_ordering_puts_the_redundant_units_last():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 500, generator=g, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[:, None]
    x[4] = 0.5 * x[1] + x[2]                                   # {1, 2, 4} span only 2 dimensions
    c = torch.cov(x)
    for ordering in ("nonredundant", "zca"):
        order = unit_order(c, ordering)
        assert set(order[-3:].tolist()) == {1, 2, 4}, ordering
        _, d = ldl(c[order][:, order])
        assert d[-1] == 0.0 and (d[:-1] > 0).all()           # exactly one of them is redundant
    # Non-redundant variance of independent units is their variance: the largest comes first.
    assert unit_order(c, "nonredundant")[0] == 5
    assert torch.equal(unit_order(c, "natural"), torch.arange(6))


def test_tail_rule_drops_the_longest_tail_within_the_share():
    tails = tail_shares(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(tails, torch.tensor([0, 0, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64))
    assert [drops_for(tails, s, 4) for s in (0.0, 0.05, 0.1, 0.29, 0.3, 0.99, 1.0)] == [1, 1, 2, 2, 3, 4, 4]
    assert drops_for(tails, 1.0, 2) == 2                       # min_channels cap


def test_regression_recovers_a_planted_affine_combination():
    g = torch.Generator().manual_seed(3)
    kept_x = torch.randn(3, 300, generator=g, dtype=torch.float64) + 2.0
    a, c0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0.7
    x = torch.cat([kept_x[:2], (a @ kept_x + c0)[None], kept_x[2:]])   # unit 2 is the planted one
    b, c = regression(torch.cov(x), x.mean(1), torch.tensor([0, 1, 3]), torch.tensor([2]))
    assert torch.allclose(b, a[None], atol=1e-10) and torch.allclose(c, torch.tensor([c0], dtype=torch.float64))


# --------------------------------------------------------------------------- on networks
def planted_vgg() -> tuple[nn.Module, torch.Tensor]:
    """VGG-11/8 in float64 with unit 2 of conv 3 = unit 0 + unit 1 (exactly)."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = build_model(ModelConfig(name="vgg11", width=0.125)).double().eval()
    randomise_bn(model, g)
    plant_sum(model.features[8], model.features[9], 0, 1, 2, beta=50.0)
    x = torch.randn(48, 3, 32, 32, generator=g, dtype=torch.float64)
    return model, x


def test_an_exactly_redundant_unit_is_removed_without_changing_the_output():
    model, x = planted_vgg()
    seen = {}
    h = model.features[11].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    with torch.no_grad():
        ref = model(x)
    h.remove()
    assert torch.allclose(seen["x"][:, 2], seen["x"][:, 0] + seen["x"][:, 1], rtol=1e-13, atol=0)  # plant holds
    pruned, info = snp(model, x, target_params=None, tau=1.0).prune(model)
    # tau = 1 removes the units with D_ii = 0 only: the planted one (one of {0, 1, 2}: each is
    # the combination of the other two), plus any unit dead on these inputs, or, before the
    # classifier, beyond the rank of 48 pooled samples; removing those is exact as well.
    layer = info["layers"]["features.8"]
    assert layer["removed"] == layer["zero_d_units"] >= 1 and layer["removed_share_of_sum_d"] == 0.0
    kept = [int((model.features[9].bias == b).nonzero()) for b in pruned.features[9].bias]
    assert len({0, 1, 2} & set(kept)) == 2
    assert info["params_after"] < info["params_before"]
    with torch.no_grad():
        out = pruned.eval()(x)
    assert (out - ref).abs().max() <= 1e-9 * ref.abs().max()

    nocomp, _ = snp(model, x, target_params=None, tau=1.0, compensate=False).prune(model)
    with torch.no_grad():
        out = nocomp.eval()(x)
    assert (out - ref).abs().max() > 1e-3 * ref.abs().max()


def test_resnet_prunes_block_internal_channels_only_and_shifts_bn_when_the_consumer_has_no_bias():
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = build_model(ModelConfig(name="resnet20", width=0.5)).double().eval()
    randomise_bn(model, g)
    block = model.layer1[0]
    # Unit 2 = unit 0 + unit 1 + 3: compensation needs the constant c = 3, which conv2
    # (no bias) hands to bn2's running mean.
    plant_sum(block.conv1, block.bn1, 0, 1, 2, beta=50.0, intercept=3.0)
    x = torch.randn(32, 3, 32, 32, generator=g, dtype=torch.float64)

    slots, skipped = find_slots(model)
    assert [(s.name, s.consumer_name) for s in slots] == [
        (f"layer{i}.{j}.conv1", f"layer{i}.{j}.conv2") for i in (1, 2, 3) for j in range(3)]
    assert len(skipped) == 3 and ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"] in skipped

    def bn2_out(m):
        out = {}
        h = m.layer1[0].bn2.register_forward_hook(lambda mod, a, o: out.setdefault("y", o.clone()))
        with torch.no_grad():
            m(x)
        h.remove()
        return out["y"]

    pruned, info = snp(model, x, target_params=None, tau=1.0).prune(model)
    assert info["channels"]["layer1.0.conv1"] == [8, 7]
    assert all(not n.endswith("conv2") and "downsample" not in n and n != "conv1" for n in info["channels"])
    ref, out = bn2_out(model), bn2_out(pruned.eval())
    inner = (..., slice(1, -1), slice(1, -1))
    assert (out[inner] - ref[inner]).abs().max() <= 1e-9 * ref.abs().max()
    # The documented caveat: at border pixels the constant also lands on padded taps.
    assert (out - ref).abs().max() > 1e-3 * ref.abs().max()


def test_a_parameter_target_is_met_and_compensation_beats_plain_pruning():
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = build_model(ModelConfig(name="vgg11", width=0.125)).eval()
    randomise_bn(model, g)
    x = torch.randn(256, 3, 32, 32, generator=g)
    method = snp(model, x, target_params=0.5)
    pruned, info = method.prune(model)
    kept = param_counts(pruned)["params_total"] / method.ctx.dense_params
    assert kept == pytest.approx(0.5, rel=0.02) and info["achieved_frac"] == pytest.approx(kept)
    assert 0.0 < info["tau"] < 1.0
    plain, _ = snp(model, x, target_params=0.5, compensate=False).prune(model)
    with torch.no_grad():
        ref = model(x)
        err = (pruned.eval()(x) - ref).norm()
        err_plain = (plain.eval()(x) - ref).norm()
    assert err < err_plain
    with pytest.raises(ConfigError, match="out of reach"):
        snp(model, x, target_params=0.01, min_channels=8).prune(model)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="tau or a target"):
        build_dataclass(SNP.Config, {"name": "snp", "tau": 0.9}, "method.")
    with pytest.raises(ConfigError, match="only one"):
        build_dataclass(SNP.Config, {"name": "snp", "target_macs": 0.5}, "method.")
    with pytest.raises(ConfigError, match="needs"):
        build_dataclass(SNP.Config, {"name": "snp", "target_params": None}, "method.")


def test_prunes_compensates_fine_tunes_and_checkpoints_through_the_harness(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [
        "method.name=snp", "method.transform_epoch=1", "method.calibration_images=256", "method.target_params=0.5"])
    summary = train(cfg, log=lambda s: None)
    assert summary["params_total"] / summary["dense_params"] == pytest.approx(0.5, rel=0.02)
    (event,) = summary["method_summary"]["events"]
    assert event["epoch"] == 1 and event["params_after"] == summary["params_total"]
    assert event["macs_after"] == summary["macs"] < event["macs_before"]
    assert {"calibration_s", "decomposition_s", "search_s", "surgery_s", "seconds", "tau"} <= event.keys()
    (transform,) = summary["transforms"]
    assert transform["when"] == "epoch_end_1" and 0.0 <= transform["acc_after"] <= 1.0
    model = load_checkpoint(Path(cfg.output_dir) / run_name(cfg) / "checkpoint.pt")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert param_counts(model)["params_total"] == summary["params_total"]
