"""DSR: exact properties of the masks, the reallocation and the threshold, and a run
through the harness."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.runs import load_checkpoint
from bench.config import ConfigError, ModelConfig
from bench.configure import load_config
from bench.models import build_model
from bench.train import train
from methods.base import Context
from methods.dsr import (DSR, MASK, adjust_threshold, allocate_regrowth, apply_masks, masked_layers, prune_mask,
                         reallocate, split_exact)




def make_ctx(model: nn.Module, steps_per_epoch: int = 10, epochs: int = 4) -> Context:
    return Context(device=torch.device("cpu"), seed=0, model_name="test", num_train_images=64, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, example_inputs=torch.randn(1, 3, 32, 32),
                   dense_params=sum(p.numel() for p in model.parameters()), dense_macs=0,
                   generator=torch.Generator().manual_seed(1), calibration=None, evaluate=None)


def make_dsr(model: nn.Module, ctx: Context = None, **opts) -> DSR:
    if "period_steps" in opts:
        opts.setdefault("period_start_frac", [0.0] * len(opts["period_steps"]))
    cfg = DSR.Config(name="dsr", **opts)
    cfg.validate()
    method = DSR(cfg, ctx or make_ctx(model))
    method.on_train_start(model)
    return method


def active_total(model: nn.Module) -> int:
    return sum(int(getattr(m, MASK).sum()) for _, m in masked_layers(model))


def test_target_sets_one_sparsity_and_exact_active_count():
    model = build_model(ModelConfig(name="resnet20", width=0.5))
    method = make_dsr(model, target_params=0.3)
    info = method.info
    names = info["sparse_layers"]
    # first conv, 1x1 shortcuts, classifier dense; every other conv sparse
    assert "conv1" not in names and "fc" not in names
    assert not any("downsample" in n for n in names)
    assert len(names) == 18                       # 9 blocks x 2 convs
    assert info["params_dense_part"] + active_total(model) == round(0.3 * info["params_dense_model"])
    dens = [getattr(m, MASK).float().mean().item() for _, m in masked_layers(model)]
    s = info["sparsity_of_sparse_tensors"]
    for (_, m), dn in zip(masked_layers(model), dens):
        assert abs((1 - dn) - s) <= 1.0 / m.weight.numel()   # same sparsity up to one weight
        assert torch.equal(m.weight != 0, getattr(m, MASK))    # weights zero exactly where masked
    # classifier by option
    model2 = build_model(ModelConfig(name="vgg11", width=0.125))
    assert "head.fc" in make_dsr(model2, sparse_classifier=True).info["sparse_layers"]
    assert "features.0" not in make_dsr(build_model(ModelConfig(name="vgg11", width=0.125))).info["sparse_layers"]


def test_unreachable_target_is_a_config_error():
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    with pytest.raises(ConfigError, match="target_params"):
        make_dsr(model, target_params=0.001)
    with pytest.raises(ConfigError, match="target_params"):
        DSR.Config(name="dsr", target_params=1.0).validate()


def test_schedule_scales_with_steps_per_epoch_and_budget():
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    method = make_dsr(model, make_ctx(model, steps_per_epoch=196, epochs=8))   # quick recipe: batch 256, 8 epochs
    assert method.periods() == [39, 78, 157, 314]                              # 100..800 x 196/500
    assert [method.period_at(e) for e in (0.0, 0.99, 1.0, 3.2, 5.59, 5.6, 7.59)] == [39, 39, 78, 157, 157, 314, 314]
    assert method.period_at(7.6) is None                                       # stop at 190/200 of the budget
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    paper = make_dsr(model, make_ctx(model, steps_per_epoch=500, epochs=200))
    assert paper.periods() == [100, 200, 400, 800]
    assert [paper.period_at(e) for e in (24.9, 25, 80, 140, 189.9)] == [100, 200, 400, 800, 800]
    assert paper.period_at(190) is None
    assert abs(paper.info["np"] - 20_000 * paper.info["params_sparse_tensors"] / 1_451_520) <= 0.5


def test_masked_weights_stay_exactly_zero_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    method = make_dsr(model, target_params=0.4, period_steps=[2], scale_period=False, threshold_init=0.05)
    total = active_total(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    method.ctx.optimizer = opt
    before = {n: m.weight.detach().clone() for n, m in masked_layers(model)}
    for step in range(4):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.ctx.step += 1
        method.after_step(model)
        for n, m in masked_layers(model):
            off = ~getattr(m, MASK)
            assert torch.count_nonzero(m.weight[off]) == 0
            assert torch.count_nonzero(opt.state[m.weight]["momentum_buffer"][off]) == 0
    assert len(method.reallocs) == 2 and all(r["pruned"] > 0 for r in method.reallocs)
    assert active_total(model) == total
    for n, m in masked_layers(model):   # the active weights did train
        on = getattr(m, MASK)
        assert not torch.equal(m.weight[on], before[n][on])


def test_reallocation_keeps_count_and_regrows_at_zero():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 4, 3, 3), torch.randn(16, 8), torch.randn(5, 5, 3, 3)]
    masks = [torch.rand(w.shape, generator=g) < 0.4 for w in weights]
    for w, m in zip(weights, masks):
        w.mul_(m)
    total = sum(int(m.sum()) for m in masks)
    for _ in range(5):
        old = [m.clone() for m in masks]
        out = reallocate(weights, masks, 0.5, g)
        assert out["pruned"] > 0
        assert sum(int(m.sum()) for m in masks) == total                       # constant count
        assert sum(out["grown_per_layer"]) == out["pruned"]
        for w, m, o, p, gr in zip(weights, masks, old, out["pruned_masks"], out["grown_masks"]):
            assert torch.equal(gr, m & ~o)                                     # new positions ...
            assert not (gr & p).any()                                          # ... never the just-pruned
            assert torch.count_nonzero(w[gr]) == 0                             # ... start at zero
            assert torch.count_nonzero(w[~m]) == 0
            w.add_(torch.randn(w.shape, generator=g) * m)                      # "train" the active ones


def test_reallocation_in_channels_last_equals_contiguous():
    """After a resume the masks are channels_last buffers (the model is placed in that
    format): reallocation must work on them and choose the same (logical) positions."""
    def state(channels_last: bool):
        g = torch.Generator().manual_seed(3)
        weights = [torch.randn(6, 4, 3, 3, generator=g), torch.randn(5, 6, 3, 3, generator=g)]
        masks = [torch.rand(w.shape, generator=g) < 0.4 for w in weights]
        weights = [w * m for w, m in zip(weights, masks)]
        weights[1][masks[1]] = 1e-3          # a whole layer under the threshold: the keep-the-largest path
        if channels_last:
            weights = [w.contiguous(memory_format=torch.channels_last) for w in weights]
            masks = [m.contiguous(memory_format=torch.channels_last) for m in masks]
        out = reallocate(weights, masks, 0.5, g)
        return weights, masks, out
    w_c, m_c, out_c = state(False)
    w_l, m_l, out_l = state(True)
    assert all(torch.equal(a, b) for a, b in zip(m_c, m_l))
    assert all(torch.equal(a, b) for a, b in zip(w_c, w_l))
    assert out_c["grown_per_layer"] == out_l["grown_per_layer"]


def test_allocation_is_proportional_and_respects_capacity():
    g = torch.Generator().manual_seed(0)
    grow, left = allocate_regrowth(100, [300, 100, 0], [1000, 1000, 1000], g)
    assert grow == [75, 25, 0] and left == 0
    grow, left = allocate_regrowth(100, [300, 100, 100], [10, 1000, 1000], g)   # first layer full: rest shared
    assert grow[0] == 10 and sum(grow) == 100 and left == 0 and grow[1] == grow[2] == 45
    grow, left = allocate_regrowth(50, [1, 1], [10, 20], g)
    assert grow == [10, 20] and left == 20
    assert split_exact(10, [3, 3, 3]) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])


def test_threshold_moves_the_right_way():
    assert adjust_threshold(1e-3, 1200, 1000, 0.1) == 5e-4     # too many pruned: halve
    assert adjust_threshold(1e-3, 800, 1000, 0.1) == 2e-3      # too few: double
    assert adjust_threshold(1e-3, 1050, 1000, 0.1) == 1e-3     # within tolerance: keep
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    method = make_dsr(model, target_params=0.5, period_steps=[1], threshold_init=10.0, scale_period=False)
    method.ctx.step = 1
    method.after_step(model)                                     # H = 10 prunes everything: halves
    assert method.reallocs[0]["pruned"] > method.info["np"] and method.threshold == 5.0
    m2 = build_model(ModelConfig(name="vgg11", width=0.125))
    method2 = make_dsr(m2, period_steps=[1], threshold_init=1e-12, scale_period=False)
    method2.ctx.step = 1
    method2.after_step(m2)                                       # H tiny prunes nothing: doubles
    assert method2.reallocs[0]["pruned"] == 0 and method2.threshold == 2e-12


def test_reallocation_moves_weights_away_from_a_layer_of_small_weights():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    method = make_dsr(model, target_params=0.5, period_steps=[1], scale_period=False, threshold_init=1e-3)
    layers = masked_layers(model)
    planted = layers[2][1]
    with torch.no_grad():
        for _, m in layers:
            m.weight.copy_((m.weight.abs() + 0.1) * getattr(m, MASK))          # all well above H ...
        planted.weight.mul_(1e-6)                                              # ... but this layer
    before = {n: int(getattr(m, MASK).sum()) for n, m in layers}
    largest = torch.where(getattr(planted, MASK), planted.weight.abs(), -1.0).flatten().argmax()
    total = active_total(model)
    method.ctx.step = 1
    method.after_step(model)
    after = {n: int(getattr(m, MASK).sum()) for n, m in layers}
    assert active_total(model) == total
    # the planted layer kept its largest weight and little else: its share is that of one
    # survivor among thousands (plus at most the rounding remainder, given to a random layer)
    assert getattr(planted, MASK).flatten()[largest]
    assert 1 <= after[layers[2][0]] <= len(layers)
    assert all(after[n] > before[n] for n, _ in layers if n != layers[2][0])


def test_a_threshold_above_a_whole_layer_leaves_it_its_largest_weight():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 4, 3, 3, generator=g), torch.randn(16, 8, generator=g) * 1e-4,
               torch.randn(5, 5, 3, 3, generator=g)]
    masks = [torch.rand(w.shape, generator=g) < 0.4 for w in weights]
    for w, m in zip(weights, masks):
        w.mul_(m)
    weights[2].mul_(1e-4)
    weights[2].view(-1)[torch.nonzero(masks[2].flatten())[:2, 0]] = 0.0     # ties at zero do not matter
    largest = [torch.where(m, w.abs(), -1.0).flatten().argmax() for w, m in zip(weights, masks)]
    active = [int(m.sum()) for m in masks]
    total = sum(active)
    out = reallocate(weights, masks, 0.01, g)                                  # H above all of layers 1 and 2
    assert out["pruned_per_layer"][1:] == [active[1] - 1, active[2] - 1]
    for i in (1, 2):
        p = out["pruned_masks"][i]
        assert not p.flatten()[largest[i]] and int(p.sum()) == active[i] - 1   # all but the largest pruned
        assert masks[i].flatten()[largest[i]]                                  # which is still active
    assert all(int(m.sum()) > 0 for m in masks) and sum(int(m.sum()) for m in masks) == total
    for _ in range(3):                                                         # ... and stays so, however often
        reallocate(weights, masks, 10.0, g)                                    # H above every weight
        assert all(int(m.sum()) >= 1 for m in masks) and sum(int(m.sum()) for m in masks) == total
    empty = torch.zeros(3, 3, dtype=torch.bool)                                # nothing to keep in an empty layer
    assert not prune_mask(torch.zeros(3, 3), empty, 1.0).any()


def test_end_to_end_constant_count_and_checkpoint(tiny_overrides, tmp_path):
    over = tiny_overrides + ["method.name=dsr", "method.target_params=0.4"]
    cfg = load_config("configs/smoke.yaml", over)
    summary = train(cfg, log=lambda s: None)      # exact resume: tests/test_contract.py
    ms = summary["method_summary"]
    assert ms["reallocations"] > 0
    counts = [e["active_sparse"] for e in ms["epochs"]]
    assert len(counts) == 2 and len(set(counts)) == 1
    assert ms["active_sparse_final"] + ms["params_dense_part"] == ms["params_active"] == round(
        0.4 * summary["dense_params"])
    assert summary["params_nonzero"] <= ms["params_active"]
    assert summary["params_total"] == summary["dense_params"]
    run_dir = next((tmp_path / "runs").iterdir())
    model = load_checkpoint(run_dir / "checkpoint.pt")
    assert active_total(model) == ms["active_sparse_final"]
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    apply_masks(model, None)



@pytest.mark.parametrize("reallocate", [True, False])
def test_the_static_sparse_control_keeps_its_initial_masks(reallocate):
    """`reallocate: false` (DSR's static-sparse ablation): the initial random masks are never
    moved; with reallocation on, the same steps do reallocate."""
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    ctx = make_ctx(model, steps_per_epoch=4, epochs=4)
    method = make_dsr(model, ctx, target_params=0.4, period_steps=[1], scale_period=False, reallocate=reallocate)
    before = [getattr(m, MASK).clone() for _, m in masked_layers(model)]
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)      # a training step moves the weights
        ctx.step += 1
        method.after_step(model)
    moved = any(not torch.equal(b, getattr(m, MASK)) for b, (_, m) in zip(before, masked_layers(model)))
    assert (len(method.reallocs) > 0) == reallocate
    assert moved == reallocate
