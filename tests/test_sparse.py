"""The sparse-training family on its mask engine: ERK allocation, RigL's and SET's drop and
grow, the constant active count, the schedules (RigL's cosine drop fraction and stop, GMP's
cubic sparsity), layout independence and the static control. Exact resume and DDP ranks:
tests/test_contract.py and tests/test_distributed.py run every registered method."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_dataclass
from bench.models import build_model
from methods import get_method
from methods._sparse import MASK, erk_densities, erk_ratio, layer_counts, masked_layers
from methods.base import Context


def make_ctx(model: nn.Module, steps_per_epoch: int = 10, epochs: int = 4, seed: int = 1) -> Context:
    return Context(device=torch.device("cpu"), seed=0, model_name="test", num_train_images=64, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, example_inputs=torch.randn(1, 3, 32, 32),
                   dense_params=sum(p.numel() for p in model.parameters()), dense_macs=0,
                   generator=torch.Generator().manual_seed(seed), calibration=None, evaluate=None)


def make(name: str, model: nn.Module, ctx: Context = None, **opts):
    cls = get_method(name)
    cfg = cls.Config(name=name, **opts)
    cfg.validate()
    method = cls(cfg, ctx or make_ctx(model))
    method.on_train_start(model)
    return method


def tiny() -> nn.Module:
    return build_model(ModelConfig(name="vgg11", width=0.125))


def masks_of(method, model) -> list[torch.Tensor]:
    return [method.mask(m).clone() for _, m in method.layers(model)]


def fake_step(model: nn.Module, g: torch.Generator) -> None:
    """What a training step leaves behind: moved weights and a dense gradient on every weight."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
            p.grad = torch.randn(p.shape, generator=g)


# --------------------------------------------------------------------------- ERK
def test_erk_densities_follow_the_formula_and_redistribute_capped_layers():
    shapes = [(8, 3, 3, 3), (16, 8, 3, 3), (64, 64, 3, 3), (10, 64)]
    sizes = [math.prod(s) for s in shapes]
    ratios = [sum(s) / math.prod(s) for s in shapes]
    assert ratios == [erk_ratio(s) for s in shapes]
    # a small budget: nothing capped, one eps for all: d_l = eps (sum dims) / (prod dims)
    nnz = 2000
    d = erk_densities(shapes, nnz)
    eps = nnz / sum(r * n for r, n in zip(ratios, sizes))
    assert all(0 < x < 1 for x in d)
    for x, r in zip(d, ratios):
        assert x == pytest.approx(eps * r, rel=1e-12)
    # a large budget: the small layers would exceed density 1, are made dense, and eps is
    # solved again over the rest, which take the remaining budget
    nnz = 20_000
    d = erk_densities(shapes, nnz)
    assert nnz / sum(r * n for r, n in zip(ratios, sizes)) * ratios[0] > 1      # would exceed without the cap
    capped = [i for i, x in enumerate(d) if x == 1.0]
    assert 0 in capped and 2 not in capped
    free = [i for i in range(len(shapes)) if i not in capped]
    eps = (nnz - sum(sizes[i] for i in capped)) / sum(ratios[i] * sizes[i] for i in free)
    for i in free:
        assert d[i] == pytest.approx(eps * ratios[i], rel=1e-12) and d[i] <= 1.0
    assert sum(x * n for x, n in zip(d, sizes)) == pytest.approx(nnz)
    counts = layer_counts("erk", shapes, nnz)
    assert sum(counts) == nnz and all(counts[i] == sizes[i] for i in capped)
    assert all(abs(c - x * n) < 1 for c, x, n in zip(counts, d, sizes))
    uniform = layer_counts("uniform", shapes, nnz)
    assert sum(uniform) == nnz and all(abs(c - nnz * n / sum(sizes)) < 1 for c, n in zip(uniform, sizes))


def test_erk_allocation_on_a_network_meets_the_target_exactly():
    model = tiny()
    method = make("static", model, allocation="erk", target_params=0.2)
    info = method.info
    layers = method.layers(model)
    active = [int(method.mask(m).sum()) for _, m in layers]
    sizes = [method.mask(m).numel() for _, m in layers]
    nnz = round(0.2 * info["params_dense_model"]) - info["params_dense_part"]
    assert sum(active) == nnz                                                   # the target, exactly
    ratios = [erk_ratio(tuple(m.weight.shape)) for _, m in layers]
    capped = [i for i, (a, n) in enumerate(zip(active, sizes)) if a == n]
    free = [i for i in range(len(layers)) if i not in capped]
    eps = (nnz - sum(sizes[i] for i in capped)) / sum(ratios[i] * sizes[i] for i in free)
    assert all(eps * ratios[i] >= 1 for i in capped) and all(eps * ratios[i] < 1 for i in free)
    assert all(abs(active[i] - eps * ratios[i] * sizes[i]) < 1 for i in free)   # d_l = eps * ratio_l
    assert len({round(d, 2) for d in (active[i] / sizes[i] for i in free)}) > 1  # not uniform
    uniform = make("static", (u := tiny()), target_params=0.2)
    dens = [int(uniform.mask(m).sum()) / uniform.mask(m).numel() for _, m in uniform.layers(u)]
    assert max(dens) - min(dens) < 1e-3


# --------------------------------------------------------------------------- RigL and SET
def expected_drop_grow(w: torch.Tensor, mask: torch.Tensor, score: torch.Tensor, f: float):
    """Independent reference: the n smallest |w| among the active are dropped, the n
    largest `score` among the positions not kept are grown (no ties with random data)."""
    w, mask, score = w.flatten(), mask.flatten(), score.flatten()
    n = int(f * int(mask.sum()))
    act = torch.nonzero(mask).squeeze(1)
    drop = act[torch.topk(w[act].abs(), n, largest=False).indices]
    kept = mask.clone()
    kept[drop] = False
    cand = torch.nonzero(~kept).squeeze(1)
    grow = cand[torch.topk(score[cand], n).indices]
    new = kept.clone()
    new[grow] = True
    return n, kept, new


def rigl_at_its_first_update():
    """A tiny model under RigL after one SGD step (momentum everywhere, masked positions
    included), at the step of its first mask update: (model, method, optimizer, layers, masks)."""
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=195, epochs=4)
    method = make("rigl", model, ctx, target_params=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.optimizer = opt
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    opt.step()
    ctx.step = method.period
    return model, method, opt, method.layers(model), masks_of(method, model)


def test_rigl_regrows_exactly_the_top_gradient_inactive_positions_starting_at_zero():
    model, method, opt, layers, old = rigl_at_its_first_update()
    f = method.drop_fraction_at(method.period)
    with torch.no_grad():
        for (_, m), mk in zip(layers, old):
            m.weight.mul_(mk)                         # what the masking before the update does
    expected = [expected_drop_grow(m.weight.detach(), mk, m.weight.grad.abs(), f) for (_, m), mk in zip(layers, old)]
    method.after_step(model)
    assert len(method.updates) == 1 and method.updates[0]["drop_fraction"] == f
    for (_, m), mk, (n, kept, new) in zip(layers, old, expected):
        now = method.mask(m).flatten()
        assert n > 0 and torch.equal(now, new)                                  # exactly the reference
        assert int(now.sum()) == int(mk.sum())                                  # count unchanged
        born = now & ~mk.flatten()
        assert born.sum() > 0
        assert torch.count_nonzero(m.weight.flatten()[born]) == 0               # grown weights start at 0
        assert torch.count_nonzero(opt.state[m.weight]["momentum_buffer"].flatten()[born]) == 0
        assert torch.count_nonzero(m.weight.flatten()[~now]) == 0               # dropped ones are zero
        g = m.weight.grad.abs().flatten()
        assert g[born].min() >= g[~now & ~mk.flatten()].max()                   # no inactive one had more


def test_rigl_a_position_dropped_and_regrown_keeps_its_weight_and_momentum_new_ones_start_at_zero():
    """The authors' reinit_when_same=False (google-research/rigl, sparse_optimizers.py): only
    positions that were inactive before the update are new connections (weight 0, momentum 0);
    one dropped and grown again in the same update keeps its weight and momentum."""
    model, method, opt, layers, old = rigl_at_its_first_update()
    g = torch.Generator().manual_seed(3)
    planted = []
    with torch.no_grad():
        for (_, m), mk in zip(layers, old):
            m.weight.mul_(mk)                            # what the masking before the update does
            active = torch.nonzero(mk.flatten()).squeeze(1)
            p = int(active[torch.randint(len(active), (1,), generator=g)])    # not the lowest index
            w, mom = m.weight.view(-1), opt.state[m.weight]["momentum_buffer"].view(-1)
            w[p], mom[p] = 1e-8, 0.125                   # the smallest |w| of the layer: dropped ...
            m.weight.grad.view(-1)[p] = 1e3              # ... and the largest gradient: grown again
            planted.append(p)
    f = method.drop_fraction_at(method.period)
    refs = [expected_drop_grow(m.weight.detach(), mk, m.weight.grad.abs(), f) for (_, m), mk in zip(layers, old)]
    method.after_step(model)
    for (_, m), mk, p, (n, kept, new) in zip(layers, old, planted, refs):
        was, now = mk.flatten(), method.mask(m).flatten()
        w, mom = m.weight.detach().flatten(), opt.state[m.weight]["momentum_buffer"].flatten()
        assert torch.equal(now, new) and n > 0
        assert was[p] and not kept[p] and now[p]                        # dropped and grown in this update
        assert w[p] == 1e-8 and mom[p] == 0.125                           # kept its weight and momentum
        born = now & ~was
        assert born.sum() > 0
        assert torch.count_nonzero(w[born]) == 0 and torch.count_nonzero(mom[born]) == 0   # new: 0 and 0
        gone = was & ~now
        assert torch.count_nonzero(w[gone]) == 0 and torch.count_nonzero(mom[gone]) == 0


def test_rigl_without_the_step_gradient_is_an_error():
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=195, epochs=4)
    method = make("rigl", model, ctx)
    ctx.step = method.period
    with pytest.raises(RuntimeError, match="gradient"):
        method.after_step(model)


def set_update(grow_seed: int):
    """One SET update from the same model, initial masks and weights every time (mask seed 1);
    only the method generator's state at the update is `grow_seed`. Returns, per layer,
    (mask before, mask after, weights after, the reference's n and kept set)."""
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=4, seed=1)
    method = make("set", model, ctx, target_params=0.3)
    ctx.generator = torch.Generator().manual_seed(grow_seed)     # what the update draws from
    fake_step(model, torch.Generator().manual_seed(0))
    layers = [m for _, m in method.layers(model)]
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(method.mask(m))
    old = masks_of(method, model)
    refs = [expected_drop_grow(m.weight.detach(), mk, torch.zeros_like(m.weight), 0.3) for m, mk in zip(layers, old)]
    ctx.step = 10                                                  # after the first epoch
    method.after_step(model)
    assert len(method.updates) == 1
    return [(mk.flatten(), method.mask(m).flatten().clone(), m.weight.detach().flatten().clone(), n, kept)
            for m, mk, (n, kept, _) in zip(layers, old, refs)]


def test_set_drops_the_smallest_and_regrows_only_inactive_positions_at_random():
    a, a_again, b = set_update(1), set_update(1), set_update(2)
    for (was, now, w, n, kept), (was_b, now_b, _, _, kept_b), (_, now_again, _, _, _) in zip(a, b, a_again):
        assert torch.equal(was, was_b) and torch.equal(kept, kept_b)      # the same masks and weights before
        for mask in (now, now_b):
            assert int(mask.sum()) == int(was.sum())
            assert torch.equal(mask & kept, kept)                        # the n smallest |w| dropped, the rest kept
            grown = mask & ~kept
            assert int(grown.sum()) == n > 0                              # n grown, all among the inactive positions
        assert torch.count_nonzero(w[now & ~was]) == 0                    # born weights start at 0
        assert torch.equal(now, now_again)                                # the draws are the generator's only
        assert not torch.equal(now, now_b)                                # another generator state: other positions
        # not a deterministic choice among the candidates (the positions not kept): neither the
        # lowest nor the highest flat indices, and spread over them (mean rank near the middle)
        cand = torch.nonzero(~kept).squeeze(1)
        rank = torch.nonzero((now & ~kept)[cand]).squeeze(1).float()
        assert not torch.equal(now & ~kept, flat_first(cand[:n], was.numel()))
        assert not torch.equal(now & ~kept, flat_first(cand[-n:], was.numel()))
        assert 0.3 < float(rank.mean()) / len(cand) < 0.7, (float(rank.mean()), len(cand))


def flat_first(idx: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, dtype=torch.bool)
    out[idx] = True
    return out


@pytest.mark.parametrize("name,opts", [
    ("dsr", {"period_steps": [1], "period_start_frac": [0.0], "scale_period": False, "threshold_init": 0.02}),
    ("set", {"update_every_epochs": 0.1}),
    ("rigl", {"update_every_epochs": 0.1}),
    ("static", {}),
])
def test_the_active_count_never_changes(name, opts):
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=2)
    method = make(name, model, ctx, target_params=0.25, **opts)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ctx.optimizer = opt
    per_layer = [int(method.mask(m).sum()) for _, m in method.layers(model)]
    total = sum(per_layer)
    before = masks_of(method, model)
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step += 1
        method.after_step(model)
        now = [int(method.mask(m).sum()) for _, m in method.layers(model)]
        assert sum(now) == total
        if name in ("set", "rigl"):
            assert now == per_layer                    # per layer too: they move weights within a layer
        for _, m in method.layers(model):
            assert torch.count_nonzero(m.weight[~method.mask(m)]) == 0
    moved = any(not torch.equal(b, a) for b, a in zip(before, masks_of(method, model)))
    assert moved == (name != "static") and (len(method.updates) > 0) == (name != "static")


# --------------------------------------------------------------------------- schedules
def test_rigl_drop_fraction_is_cosine_and_updates_stop_at_t_end():
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=195, epochs=4)          # the quick suite's budget (50,000 // 256)
    method = make("rigl", model, ctx, target_params=0.5)
    assert method.period == 50 and method.stop_step == 585         # 100 steps at 390.6/epoch; 75% of 780
    g = torch.Generator().manual_seed(0)
    for step in range(1, 781):
        ctx.step = step
        if method.due(step):
            fake_step(model, g)
        method.after_step(model)
    steps = [u["step"] for u in method.updates]
    assert steps == list(range(50, 585, 50)) and len(steps) == method.info["updates_planned"] == 11
    for u in method.updates:
        assert u["drop_fraction"] == pytest.approx(0.3 / 2 * (1 + math.cos(math.pi * u["step"] / 585)), abs=1e-15)
    fr = [u["drop_fraction"] for u in method.updates]
    assert fr == sorted(fr, reverse=True) and fr[0] < 0.3 and fr[-1] < 0.01
    assert method.drop_fraction_at(585) == 0.0 and not method.due(585) and not method.due(600)
    n_active = [int(method.mask(m).sum()) for _, m in method.layers(model)]
    dropped_first = sum(int(method.updates[0]["drop_fraction"] * a) for a in n_active)
    assert method.updates[0]["dropped"] <= dropped_first          # f * active per layer (some regrown in place)
    set_method = make("set", tiny(), make_ctx(model, steps_per_epoch=195, epochs=4))
    assert [t for t in range(1, 781) if set_method.due(t)] == [195, 390, 585]   # after every epoch but the last
    assert set_method.drop_fraction_at(390) == 0.3


def test_gmp_follows_the_cubic_schedule_and_reaches_the_target_at_its_end_step():
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=195, epochs=4)
    method = make("gmp", model, ctx, target_params=0.1)
    t0, t1, dt = method.start_step, method.end_step, method.period
    assert (t0, t1, dt) == (round(20_000 / 97_656 * 780), round(75_000 / 97_656 * 780), 8) == (160, 599, 8)
    layers = method.layers(model)
    sizes = [method.mask(m).numel() for _, m in layers]
    final = [method.info["active_target"][n] for n, _ in layers]
    assert all(int(method.mask(m).sum()) == s for (_, m), s in zip(layers, sizes))    # dense start
    g = torch.Generator().manual_seed(0)
    history = []
    for step in range(1, 781):
        ctx.step = step
        fake_step(model, g)
        method.after_step(model)
        history.append([int(method.mask(m).sum()) for _, m in layers])
    due = [t for t in range(1, 781) if method.due(t)]
    assert due == sorted(set(range(t0, t1 + 1, dt)) | {t1}) and len(due) == method.info["pruning_steps"] == 56
    for t in range(1, 781):
        counts = history[t - 1]
        last = max([d for d in due if d <= t], default=None)
        for c, n, k in zip(counts, sizes, final):
            if last is None:
                assert c == n                                                           # dense before t0
            else:
                s_f = 1 - k / n
                s_t = s_f + (0.0 - s_f) * (1 - (min(last, t1) - t0) / (t1 - t0)) ** 3       # Zhu & Gupta eq. (1)
                assert c == n - round(s_t * n), (t, c, n, s_t)
    assert history[t1 - 1] == final and history[-1] == final                          # the target at t1, then fixed
    assert history[t0 - 2] == sizes and history[(t0 + t1) // 2] != final
    active = sum(final) + method.info["params_dense_part"]
    assert active == round(0.1 * method.info["params_dense_model"])


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_gmp_per_layer_pruning_keeps_exactly_the_largest_weights_of_each_layer(allocation):
    """Planted weights: distinct magnitudes in a random order within each layer (so the largest
    are not the lowest or highest indices, and no criterion but magnitude keeps them) while
    an optimizer with momentum moves every weight, masked ones included. At every pruning step
    each layer keeps exactly its n_l - round(s_t n_l) active weights of largest |w|, which are the
    largest planted ones; masked weights and their momentum stay zero and no mask regrows."""
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=4)
    method = make("gmp", model, ctx, target_params=0.2, allocation=allocation,
                  start_frac=0.25, end_frac=0.75, period_frac=0.1)
    t0, t1 = method.start_step, method.end_step
    layers = method.layers(model)
    g = torch.Generator().manual_seed(0)
    ranks = []
    with torch.no_grad():
        for _, m in layers:
            rank = torch.randperm(m.weight.numel(), generator=g)
            sign = torch.randint(0, 2, (m.weight.numel(),), generator=g) * 2 - 1
            m.weight.copy_((10.0 * (rank + 1) * sign).float().view(m.weight.shape))   # |w| spaced 10 apart
            ranks.append(rank)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.optimizer = opt
    sizes = [m.weight.numel() for _, m in layers]
    final = [method.info["active_target"][n] for n, _ in layers]
    prev = masks_of(method, model)
    pruned_at = []
    for step in range(1, 41):
        ctx.step = step
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()                                       # moves masked weights and momentum too
        due = method.due(step)
        if due:
            scores = [m.weight.detach().abs().flatten() for _, m in layers]
        method.after_step(model)
        for i, ((_, m), before) in enumerate(zip(layers, prev)):
            now = method.mask(m).flatten()
            assert not (now & ~before.flatten()).any()                            # never revived
            assert torch.count_nonzero(m.weight.flatten()[~now]) == 0
            assert torch.count_nonzero(opt.state[m.weight]["momentum_buffer"].flatten()[~now]) == 0
            if not due:
                assert torch.equal(now, before.flatten())
                continue
            s_f = 1 - final[i] / sizes[i]
            s_t = s_f * (1 - (1 - (step - t0) / (t1 - t0)) ** 3)
            keep = sizes[i] - round(s_t * sizes[i])
            active = torch.nonzero(before.flatten()).squeeze(1)
            top = active[torch.topk(scores[i][active], keep).indices]             # largest |w| among the active
            assert torch.equal(now, flat_first(top, sizes[i])), (step, i)
            assert torch.equal(now, ranks[i] >= sizes[i] - keep)                 # = the largest planted ones
        if due:
            pruned_at.append(step)
        prev = masks_of(method, model)
    assert pruned_at[0] == t0 and pruned_at[-1] == t1 and len(pruned_at) > 2
    assert [int(method.mask(m).sum()) for _, m in layers] == final


def test_one_shot_global_magnitude_pruning_keeps_the_largest_weights_of_all_layers():
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=4)
    method = make("gmp", model, ctx, target_params=0.2, allocation="global", start_frac=0.5, end_frac=0.5)
    layers = method.layers(model)
    with torch.no_grad():
        for i, (_, m) in enumerate(layers):
            m.weight.mul_(1 + 0.5 * i)                      # layers of different scales: uneven sparsities
    mags = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
    assert method.info["active_target"] is None                  # no per-layer target under global ranking
    n_keep = method.info["params_active"] - method.info["params_dense_part"]
    threshold = torch.sort(mags, descending=True).values[n_keep - 1]
    for step in range(1, 41):
        ctx.step = step
        method.after_step(model)
    assert [u["step"] for u in method.updates] == [20]
    kept = torch.cat([method.mask(m).flatten() for _, m in layers])
    assert int(kept.sum()) == n_keep
    assert mags[kept].min() >= threshold and (mags[~kept].max() <= threshold)
    dens = [float(method.mask(m).float().mean()) for _, m in layers]
    assert dens[-1] > dens[0]                               # the magnitudes, not a uniform split, decided
    assert min(dens) > 0                                    # (scales 1 + i would prune features.4 away)


def test_global_pruning_that_would_empty_a_layer_is_an_error_naming_it():
    """Planted: one sparse layer's weights far below all others, so that global ranking at a
    low target would prune it away; the pruning step stops with a one-line ConfigError naming
    the layer and the fix, before any mask is changed."""
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=4)
    method = make("gmp", model, ctx, target_params=0.1, allocation="global", start_frac=0.5, end_frac=0.5)
    layers = method.layers(model)
    name, victim = layers[2]
    with torch.no_grad():
        victim.weight.mul_(1e-6)
    for step in range(1, 20):
        ctx.step = step
        method.after_step(model)
    ctx.step = 20
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")) as e:
        method.after_step(model)
    assert "\n" not in str(e.value) and "target_params" in str(e.value) and "allocation" in str(e.value)
    assert all(bool(method.mask(m).all()) for _, m in layers)    # nothing pruned by the failing step
    # the same target with a per-layer allocation keeps every layer
    torch.manual_seed(0)
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=10, epochs=4)
    method = make("gmp", model, ctx, target_params=0.1, start_frac=0.5, end_frac=0.5)
    with torch.no_grad():
        method.layers(model)[2][1].weight.mul_(1e-6)
    for step in range(1, 41):
        ctx.step = step
        method.after_step(model)
    assert all(int(method.mask(m).sum()) > 0 for _, m in method.layers(model))
    # fewer weights than sparse layers: refused at the start
    info = method.info
    target = (info["params_dense_part"] + len(info["sparse_layers"]) - 1) / info["params_dense_model"]
    with pytest.raises(ConfigError, match="global pruning would leave"):
        make("gmp", tiny(), target_params=target, allocation="global")


# --------------------------------------------------------------------------- layout, control, options
@pytest.mark.parametrize("name,opts", [
    ("dsr", {"period_steps": [2], "period_start_frac": [0.0], "scale_period": False, "threshold_init": 0.02}),
    ("set", {"update_every_epochs": 0.2}),
    ("rigl", {"update_every_epochs": 0.2}),
    ("gmp", {"start_frac": 0.1, "end_frac": 0.5, "period_frac": 0.05}),
])
def test_updates_do_not_depend_on_the_memory_format(name, opts):
    """channels_last moves 4-D weights and mask buffers (and a resumed model keeps them so):
    the same updates must come out, and nothing may rely on contiguity."""
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = tiny()
        ctx = make_ctx(model, steps_per_epoch=10, epochs=2)
        method = make(name, model, ctx, target_params=0.3, **opts)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            assert any(not method.mask(m).is_contiguous() for _, m in method.layers(model))
        g = torch.Generator().manual_seed(0)
        for step in range(1, 13):
            ctx.step = step
            fake_step(model, g)
            method.after_step(model)
        runs.append([method.mask(m).contiguous() for _, m in method.layers(model)])
        assert len(method.updates) > 0
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_static_draws_the_masks_of_dsr_without_reallocation():
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    static = make("static", a, target_params=0.25)
    dsr = make("dsr", b, target_params=0.25, reallocate=False)
    ma = [m._buffers[MASK] for _, m in masked_layers(a)]
    mb = [m._buffers["dsr_mask"] for _, m in masked_layers(b, "dsr_mask")]
    assert len(ma) == len(mb) > 0 and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert static.info["active_target"] == dsr.info["active_target"]


@pytest.mark.parametrize("name,opts,match", [
    ("rigl", {"drop_fraction": 1.0}, "drop_fraction"),
    ("set", {"update_every_epochs": 0.0}, "update_every_epochs"),
    ("rigl", {"stop_frac": 0.0}, "stop_frac"),
    ("gmp", {"start_frac": 0.8, "end_frac": 0.5}, "start_frac"),
    ("gmp", {"period_frac": 0.0}, "period_frac"),
    ("static", {"target_params": 1.0}, "target_params"),
    ("set", {"target_params": 0.0}, "target_params"),
])
def test_bad_options_are_one_line_config_errors(name, opts, match):
    with pytest.raises(ConfigError, match=match) as e:
        get_method(name).Config(name=name, **opts).validate()
    assert "\n" not in str(e.value)


def test_allocation_choices_are_checked_and_global_is_gmp_only():
    with pytest.raises(ConfigError, match="allocation"):
        build_dataclass(get_method("rigl").Config, {"name": "rigl", "allocation": "global"}, "method.")
    build_dataclass(get_method("gmp").Config, {"name": "gmp", "allocation": "global"}, "method.")
    with pytest.raises(ConfigError, match="target_params"):
        make("set", tiny(), target_params=0.001)                     # below the dense part


@pytest.mark.parametrize("name", ["dsr", "set", "rigl", "gmp", "static"])
def test_a_step_without_an_update_reads_nothing_back_from_the_device(name, monkeypatch):
    """Masking every step must not synchronise a GPU: no tensor is turned into a Python
    number on a step whose schedule names no update (on CUDA each would wait for the device)."""
    model = tiny()
    ctx = make_ctx(model, steps_per_epoch=195, epochs=4)
    method = make(name, model, ctx)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fake_step(model, torch.Generator().manual_seed(0))
    ctx.step = 1                                          # no method updates after step 1 at this budget

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")
    for attr in ("item", "tolist", "__int__", "__float__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, host_read)
    method.after_step(model)
    monkeypatch.undo()
    assert method.updates == []
