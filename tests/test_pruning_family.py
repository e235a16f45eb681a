"""The structured-pruning family (methods/l1_filter.py, methods/pruning_baselines.py) and
the interface it needs: every importance equals a hand computation on a small network,
Taylor's calibration runs in eval mode whatever mode the model arrives in, the slimming
penalty changes only the BN-scale gradients (by reg * sign(gamma)) and only in its epochs,
DepGraph's penalty adds exactly reg * 2^(alpha (I_max - I_k) / (I_max - I_min)) * w, the
global rows allocate channels across layers while fpgm keeps every layer's share equal,
the new rows meet their targets with the planned size equal to the built one,
the sparse-learning phase resumes exactly, Scratch-B's epoch count follows its rule, and
the harness calls before_step between backward and the step and checks the optimizer."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch_pruning as tp
from torch import nn

import bench.train as train_mod
from bench.config import ConfigError, ModelConfig, build_dataclass
from bench.configure import load_config
from bench.data import load_data
from bench.metrics import count_macs, param_counts
from bench.models import build_model
from bench.train import train
from methods import get_method
from methods._pruning import channels
from methods.base import Dense
from methods.dense_small import scratch_b_epochs

ROWS = ("depgraph", "slimming", "taylor", "fpgm")


def Small() -> nn.Sequential:
    """conv1 -> BN1 -> ReLU -> conv2 -> BN2 -> ReLU -> pool -> fc: conv1's group is
    {conv1 out, BN1, conv2 in}, small enough to score by hand."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(6)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 5, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(5)), ("act2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(5, 4))]))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    m = Small()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.weight.copy_(torch.randn(bn.num_features))          # signed scales, distinct |gamma|
    return m.eval()


def images(n: int = 24, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def ctx_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, model_name: str = "vgg11", epochs: int = 3):
    """The parts of the harness Context the family reads; calibration yields (x, y) batches."""
    ex = x[:1]

    def calibration(n, batch_size=500, heldout=False, labels=False):
        for i in range(0, n, batch_size):
            yield (x[i:i + batch_size], y[i:i + batch_size]) if labels else x[i:i + batch_size]
    return SimpleNamespace(example_inputs=ex, dense_params=param_counts(model)["params_total"],
                           dense_macs=count_macs(model, ex)[0], epochs=epochs, model_name=model_name, epoch=0,
                           generator=torch.Generator().manual_seed(0), calibration=calibration,
                           criterion=nn.CrossEntropyLoss(label_smoothing=0.1))


def method(name: str, model: nn.Module, x=None, y=None, model_name="vgg11", **options):
    if x is None:
        x, y = images()
    cls = get_method(name)
    cfg = build_dataclass(cls.Config, {"name": name, **options}, "method.")
    cfg.validate()
    return cls(cfg, ctx_for(model, x, y, model_name))


def conv1_scores(m, model: nn.Module) -> torch.Tensor:
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=m.ctx.example_inputs)
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(6)))
    return m.scorer()(group)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- importances by hand
def test_group_norm_is_the_squared_l2_norm_of_the_channel_over_the_whole_group():
    model = small_net()
    s = conv1_scores(method("depgraph", model, reg=0), model)
    w1, g1, w2 = model.conv1.weight, model.bn1.weight, model.conv2.weight
    # Torch-Pruning: per member sum of squares, mean over the 3 members, divided by the mean over channels.
    sq = ((w1 ** 2).sum((1, 2, 3)) + g1 ** 2 + (w2 ** 2).sum((0, 2, 3))) / 3
    assert_same(s, sq / sq.mean())
    assert torch.equal(s.argsort(), (sq.sqrt()).argsort())          # the same order as the group's L2 norm


def test_bn_scale_is_the_absolute_bn_scale():
    model = small_net()
    assert_same(conv1_scores(method("slimming", model), model), model.bn1.weight.abs())


def test_fpgm_is_the_summed_distance_to_the_layers_other_filters():
    model = small_net()
    w = model.conv1.weight.detach().flatten(1)
    hand = torch.stack([sum(torch.linalg.vector_norm(w[i] - w[j]) for j in range(6)) for i in range(6)])
    assert_same(conv1_scores(method("fpgm", model), model), hand)


def test_lamp_divides_each_squared_group_norm_by_the_sum_of_those_not_smaller():
    model = small_net()
    s = conv1_scores(method("l1_filter", model, importance="lamp"), model)
    w1, g1, w2 = model.conv1.weight, model.bn1.weight, model.conv2.weight
    sq = ((w1 ** 2).sum((1, 2, 3)) + g1 ** 2 + (w2 ** 2).sum((0, 2, 3))) / 3
    hand = torch.stack([sq[i] / sq[sq >= sq[i]].sum() for i in range(6)])
    assert_same(s, hand)


def test_taylor_sums_abs_weight_times_gradient_of_the_summed_calibration_loss_over_the_group():
    """Molchanov et al. 2019's weight-sum variant ("Taylor FO on weights", their eq. 3 term
    summed over the structure) with |g w| in place of (g w)^2, as Torch-Pruning computes it:
    gradients of the loss summed over all calibration images (batches of 10, 10, 4), eval
    mode; the score is sum |w * dL/dw| over conv1's filter and conv2's input slice (its
    Taylor score skips BatchNorm), averaged over the 2 members, divided by its mean."""
    model = small_net()
    x, y = images(24)
    m = method("taylor", model, x, y, calibration_images=24, calibration_batch_size=10)
    m.calibrate_gradients(model)
    ref = small_net()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")(ref(x), y)
    g1, g2 = torch.autograd.grad(loss, [ref.conv1.weight, ref.conv2.weight])
    assert_same(model.conv1.weight.grad, g1)
    w1, w2 = ref.conv1.weight.detach(), ref.conv2.weight.detach()
    t = ((w1 * g1).abs().sum((1, 2, 3)) + (w2 * g2).abs().sum((0, 2, 3))) / 2
    assert_same(conv1_scores(m, model), t / t.mean())


def test_taylor_calibration_runs_in_eval_mode_when_the_model_arrives_training():
    """The harness hands the model over in train mode: the calibration pass must still use
    BN's running statistics (the gradients and scores equal an eval-mode hand computation),
    move none of them, and give the model back in train mode."""
    model = small_net()
    with torch.no_grad():                 # running statistics unlike the batch's, so the modes differ
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    x, y = images(24)
    m = method("taylor", model, x, y, calibration_images=24, calibration_batch_size=10)
    m.calibrate_gradients(model)
    assert model.training and model.bn1.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    ref = copy.deepcopy(model).eval()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")(ref(x), y)
    g1, g2 = torch.autograd.grad(loss, [ref.conv1.weight, ref.conv2.weight])
    assert_same(model.conv1.weight.grad, g1)
    assert_same(model.conv2.weight.grad, g2)
    w1, w2 = ref.conv1.weight.detach(), ref.conv2.weight.detach()
    t = ((w1 * g1).abs().sum((1, 2, 3)) + (w2 * g2).abs().sum((0, 2, 3))) / 2
    assert_same(conv1_scores(m, model), t / t.mean())
    # The batch-statistics gradient really is different, so the test can tell the modes apart.
    train_ref = copy.deepcopy(model).train()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")(train_ref(x), y)
    assert not torch.allclose(torch.autograd.grad(loss, train_ref.conv1.weight)[0], g1, rtol=1e-3, atol=1e-5)


def test_taylor_scores_change_with_the_labels_so_they_come_from_the_loss():
    model = small_net()
    x, y = images(24)
    a = method("taylor", model, x, y, calibration_images=24)
    a.calibrate_gradients(model)
    sa = conv1_scores(a, model)
    b = method("taylor", model, x, (y + 1) % 4, calibration_images=24)
    b.calibrate_gradients(model)
    assert not torch.allclose(sa, conv1_scores(b, model))


# --------------------------------------------------------------------------- sparse learning
def with_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_slimming_penalty_changes_only_bn_scale_gradients_by_reg_sign_gamma():
    model = small_net()
    m = method("slimming", model, transform_epoch=2)
    assert m.reg == 1e-4 and m.sl_epochs == (0, 2)                  # VGG default, from the start of training
    m.on_train_start(model)
    before = with_grads(model)
    m.before_step(model)
    for name, p in model.named_parameters():
        if name in ("bn1.weight", "bn2.weight"):
            bn = model.get_submodule(name.split(".")[0])
            assert torch.equal(p.grad, before[name] + 1e-4 * torch.sign(bn.weight)), name
        else:
            assert torch.equal(p.grad, before[name]), name


def test_penalties_act_only_in_their_epochs_and_resnets_get_slimmings_smaller_reg():
    model = small_net()
    m = method("depgraph", model, transform_epoch=3)
    assert m.reg == 5e-4 and m.sl_epochs == (2, 3)                  # round(2/3 x 3) = 2
    m.ctx.epoch = 1
    before = with_grads(model)
    m.before_step(model)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    m.ctx.epoch = 2
    m.before_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])}
    # Every weight slice of both groups (conv2's includes the classifier's input columns), no bias.
    assert changed == {"conv1.weight", "bn1.weight", "conv2.weight", "bn2.weight", "fc.weight"}
    assert method("slimming", small_net(), model_name="resnet20").reg == 1e-5
    assert method("depgraph", small_net(), transform_epoch=1).sl_epochs == (0, 1)   # at least one epoch


@pytest.mark.parametrize("options,reg,alpha", [({}, 5e-4, 2.0 ** 4),                       # the defaults
                                               ({"reg": 2e-3, "sl_alpha": 2.5}, 2e-3, 2.0 ** 2.5)])
def test_the_depgraph_penalty_is_reg_times_gamma_times_the_weight(options, reg, alpha):
    """GroupNormPruner.regularize by hand, for both groups of the small net: with the group's
    importance I_k = sqrt(s_k) (s_k the group norm score, mean-normalised), channel k's scale
    is gamma_k = alpha^((I_max - I_k) / (I_max - I_min)), alpha = 2^sl_alpha, and reg *
    gamma_k * w is added to the gradient of every weight slice of channel k: its filter
    (rows), its BN scale and its consumers' input slices (columns). No bias moves."""
    model = small_net()
    m = method("depgraph", model, transform_epoch=3, **options)
    m.ctx.epoch = 2                                                   # inside the phase (2, 3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    m.before_step(model)

    def gamma(sq: torch.Tensor) -> torch.Tensor:
        imp = (sq / sq.mean()).sqrt()
        return alpha ** ((imp.max() - imp) / (imp.max() - imp.min()))
    w1, b1, w2, b2, wf = (t.detach() for t in (model.conv1.weight, model.bn1.weight, model.conv2.weight,
                                               model.bn2.weight, model.fc.weight))
    c1 = gamma(((w1 ** 2).sum((1, 2, 3)) + b1 ** 2 + (w2 ** 2).sum((0, 2, 3))) / 3)   # {conv1 out, bn1, conv2 in}
    c2 = gamma(((w2 ** 2).sum((1, 2, 3)) + b2 ** 2 + (wf ** 2).sum(0)) / 3)           # {conv2 out, bn2, fc in}
    assert_same(torch.stack([c1.min(), c1.max()]), torch.tensor([1.0, alpha]))
    expected = {"conv1.weight": reg * c1.view(-1, 1, 1, 1) * w1,
                "bn1.weight": reg * c1 * b1,
                "conv2.weight": reg * (c2.view(-1, 1, 1, 1) + c1.view(1, -1, 1, 1)) * w2,
                "bn2.weight": reg * c2 * b2,
                "fc.weight": reg * c2.view(1, -1) * wf}
    for name, p in model.named_parameters():
        if name in expected:
            assert_same(p.grad, expected[name])
        else:
            assert torch.equal(p.grad, torch.zeros_like(p)), name


def test_family_options_are_checked():
    with pytest.raises(ConfigError, match="no sparse-learning penalty"):
        method("l1_filter", small_net(), importance="taylor", reg=1e-4)
    with pytest.raises(ConfigError, match="reg must be >= 0"):
        method("depgraph", small_net(), reg=-1.0)
    with pytest.raises(ConfigError, match="needs epochs before"):
        method("depgraph", small_net(), transform_epoch=0)
    with pytest.raises(ConfigError, match="importance"):
        method("depgraph", small_net(), importance="hrank")
    assert method("depgraph", small_net(), reg=0).sl_epochs == (2, 2)      # depgraph_nosl: no phase


# --------------------------------------------------------------------------- allocation
def planted_net() -> nn.Module:
    """conv1 (8) -> BN -> ReLU -> conv2 (8) -> BN -> ReLU -> pool -> fc. conv1's group has one
    strong channel and seven weak ones (filter, BN scale and conv2's input slice scaled by
    2, 0.01, ..., 0.07); conv2's group has eight near-equal channels (rows of conv2, BN
    scales and fc columns all one pattern times 1.00, ..., 1.07). Every criterion of the
    family then ranks conv1's seven weak channels below all of conv2's, normalised or not."""
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(8)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 8, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(8)), ("act2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 4))]))
    a = torch.tensor([2.0] + [0.01 * j for j in range(1, 8)])
    b = 1 + 0.01 * torch.arange(8.0)
    with torch.no_grad():
        m.conv1.weight.mul_(a.view(-1, 1, 1, 1))
        m.bn1.weight.copy_(a)
        m.conv2.weight.copy_(b.view(-1, 1, 1, 1) * m.conv2.weight[0] * a.view(1, -1, 1, 1))
        m.bn2.weight.copy_(b)
        m.fc.weight.copy_(m.fc.weight[:, :1] * b.view(1, -1))
    return m.eval()


GLOBAL_ROWS = {"depgraph": True, "slimming": True, "taylor": True, "fpgm": False}


@pytest.mark.parametrize("name", ROWS)
def test_global_rows_allocate_channels_across_layers_and_fpgm_keeps_every_layers_share(name):
    """pruning_ratio 0.5 of conv1 and conv2 (16 channels) with each row's own allocation:
    the global rows remove the 8 lowest-ranked channels of the pair, i.e. conv1's 7 weak ones
    and one of conv2's (widths 1 and 7); fpgm (uniform) removes half of each layer (4 and 4).
    The same row with global_pruning flipped gives the other pattern (FPGM's unnormalised
    distances, ranked globally, would pick conv2's near-identical filters), so the planted
    net tells the two allocations apart and a flipped default fails here."""
    x, y = images(24)
    opts = dict(target_params=None, pruning_ratio=0.5, calibration_images=24)
    model = planted_net()
    m = method(name, model, x, y, **opts)
    assert m.cfg.global_pruning is GLOBAL_ROWS[name]
    pruned, _ = m.prune(model)
    widths = channels(pruned)
    assert widths == ({"conv1": 1, "conv2": 7} if GLOBAL_ROWS[name] else {"conv1": 4, "conv2": 4})
    model = planted_net()
    flipped, _ = method(name, model, x, y, global_pruning=not GLOBAL_ROWS[name], **opts).prune(model)
    assert channels(flipped) != widths


# --------------------------------------------------------------------------- targets
@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("model_name,width", [("vgg11", 0.25), ("resnet20", 0.5)])
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_rows_meet_their_targets_and_the_planned_size_is_the_built_one(name, model_name, width, target):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=model_name, width=width)).eval()
    with torch.no_grad():                  # BN scales as after training (at init they all tie at 1)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.2, 1.5)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    m = method(name, model, x, y, model_name=model_name, target_params=target, calibration_images=16)
    pruned, info = m.prune(model)
    built = param_counts(pruned)["params_total"]
    assert info["params_after"] == built and info["macs_after"] == count_macs(pruned, x[:1])[0]
    assert abs(built / m.ctx.dense_params - target) <= 0.02 * target
    assert all(p.grad is None for p in pruned.parameters())
    pruned(x[:2])                                                    # the built model runs


# --------------------------------------------------------------------------- through the harness
def test_sparse_learning_resumes_exactly_from_inside_its_phase(tiny_overrides, tmp_path):
    """Interrupted after epoch 1 of a phase spanning epochs 0-1: the regulariser is rebuilt
    lazily on the resumed model and the run ends bit-identical to an uninterrupted one."""
    def cfg(out):
        return load_config("configs/smoke.yaml", tiny_overrides + [
            "train.epochs=3", "method.name=depgraph", "method.transform_epoch=2", "method.sl_start_epoch=0",
            f"output_dir={tmp_path / out}"])
    a = train(cfg("a"), log=lambda *_: None)
    assert train(cfg("b"), max_epochs=1, log=lambda *_: None) is None
    b = train(cfg("b"), log=lambda *_: None)
    assert a["test_acc"] == b["test_acc"] and a["rank_weight_checksums"] == b["rank_weight_checksums"]
    plain = train(load_config("configs/smoke.yaml", tiny_overrides + [
        "train.epochs=3", "method.name=depgraph", "method.transform_epoch=2", "method.reg=0",
        f"output_dir={tmp_path / 'c'}"]), log=lambda *_: None)
    assert plain["rank_weight_checksums"] != a["rank_weight_checksums"]     # the penalty did something


def test_before_step_runs_after_backward_and_before_the_step_only_when_overridden(tiny_overrides, monkeypatch):
    seen = []

    def before_step(self, model):
        p = next(model.parameters())
        seen.append((p.grad is not None, p.detach().clone(), self.ctx.step))
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    monkeypatch.setattr(Dense, "before_step", before_step)
    steps = []
    monkeypatch.setattr(Dense, "after_step", lambda self, model: steps.append(next(model.parameters()).detach().clone()))
    train(cfg, log=lambda *_: None)
    assert len(seen) == len(steps) == 8 and all(g for g, _, _ in seen)
    assert [s for _, _, s in seen] == list(range(8))
    assert all(not torch.equal(w, after) for (_, w, _), after in zip(seen, steps))    # the step came after
    monkeypatch.undo()
    trainer = SimpleNamespace(method=Dense(None, None))
    assert train_mod.Trainer.before_step_hook(trainer) is None        # not overridden: no call in the step


def test_a_hook_that_adds_a_parameter_in_place_fails_the_optimizer_check(tiny_overrides, monkeypatch):
    def grow(self, model, epoch):
        model.extra = nn.Parameter(torch.zeros(1))
    monkeypatch.setattr(Dense, "on_epoch_end", grow)
    monkeypatch.setattr(Dense, "in_place_hooks", frozenset({"on_epoch_end"}))
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    with pytest.raises(RuntimeError, match="after on_epoch_end the optimizer holds 0 .* misses 1 trainable"):
        train(cfg, log=lambda *_: None)


def test_labelled_calibration_batches_pair_each_image_with_its_label(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides)
    data = load_data(cfg.data, torch.device("cpu"))
    plain = list(data.calibration_batches(100, 32, seed=4))
    pairs = list(data.calibration_batches(100, 32, seed=4, labels=True))
    idx = data.calibration_indices(100, 4)
    assert len(plain) == len(pairs) == 4
    assert torch.equal(torch.cat([x for x, _ in pairs]), torch.cat(plain))
    assert torch.equal(torch.cat([y for _, y in pairs]), data.train_y[idx])


# --------------------------------------------------------------------------- Scratch-B
def test_scratch_b_rule_rounds_half_up_and_caps_at_twice_the_epochs():
    assert scratch_b_epochs(4, 100, 80) == 5                         # 5.0
    assert scratch_b_epochs(4, 1000, 889) == 4                       # 4.4994 -> 4
    assert scratch_b_epochs(4, 9, 8) == 5                            # 4.5 -> 5 (half up, not to even)
    assert scratch_b_epochs(10, 100, 30) == 20                       # 33.3 capped at 2 x 10
    assert scratch_b_epochs(3, 100, 100) == 3


@pytest.mark.parametrize("model_name,width", [("vgg11", 0.5), ("resnet20", 1.0)])
@pytest.mark.parametrize("target,epochs", [(0.5, 4), (0.25, 4), (0.8, 10), (0.9, 4)])
def test_scratch_b_trains_the_epochs_that_match_the_dense_models_training_macs(model_name, width, target, epochs):
    over = [f"model.name={model_name}", f"model.width={width}", "method.name=dense_small",
            f"method.target_params={target}", f"train.epochs={epochs}"]
    cfg = load_config("configs/quick-vgg.yaml", over + ["method.match_dense_macs=true"])
    # The small model dense_small actually trains, and its MACs, computed here independently.
    dense = build_model(ModelConfig(name=model_name, width=width, num_classes=10))
    ds = get_method("dense_small")
    ctx = SimpleNamespace(model_name=model_name, dense_params=param_counts(dense)["params_total"], seed=0)
    small = ds(build_dataclass(ds.Config, {"name": "dense_small", "target_params": target}, "method."),
               ctx).on_train_start(dense)
    ex = torch.zeros(1, 3, 32, 32)
    ratio = count_macs(dense.eval(), ex)[0] / count_macs(small.eval(), ex)[0]
    assert cfg.train.epochs == min(2 * epochs, math.floor(epochs * ratio + 0.5))
    assert cfg.train.epochs >= epochs and cfg.method.match_dense_macs is False
    # A fixed point: the stored config builds to itself, and it is dense_small at those epochs.
    same = load_config("configs/quick-vgg.yaml", over[:-1] + [f"train.epochs={cfg.train.epochs}"])
    assert same == cfg


def test_scratch_b_builds_each_architecture_once_per_process(monkeypatch):
    """A suite resolves scratch_b for every seed and target: the width search's counts are
    cached by model config, so a second seed builds no model and gets the same epochs."""
    import methods.dense_small as ds_mod
    built = []
    real = ds_mod.build_model
    monkeypatch.setattr(ds_mod, "build_model", lambda m: built.append(m.width) or real(m))
    over = ["model.name=resnet20", "model.width=0.75", "method.name=dense_small", "method.target_params=0.3",
            "train.epochs=4", "method.match_dense_macs=true"]
    first = load_config("configs/quick-vgg.yaml", over + ["seed=0"])
    assert built                                                    # the first resolution searched
    built.clear()
    second = load_config("configs/quick-vgg.yaml", over + ["seed=1"])
    assert built == [] and second.train.epochs == first.train.epochs


# --------------------------------------------------------------------------- per-layer cap
@pytest.mark.parametrize("name,model_name,cap", [
    ("depgraph", "vgg11", 0.7), ("slimming", "vgg11", 0.7), ("taylor", "vgg11", 0.7),
    ("depgraph", "resnet20", 1.0), ("slimming", "resnet20", 1.0), ("taylor", "resnet20", 1.0),
    ("l1_filter", "vgg11", 1.0), ("fpgm", "vgg11", 1.0)])
def test_global_rows_cap_each_layers_share_on_vgg_only(name, model_name, cap):
    """max_layer_ratio null resolves to 0.7 on VGG (Torch-Pruning's VGG-19 DepGraph script)
    and 1.0 elsewhere; rows that declare a number keep it, and a given value wins."""
    assert method(name, small_net(), model_name=model_name).max_ratio == cap
    assert method(name, small_net(), model_name=model_name, max_layer_ratio=0.5).max_ratio == 0.5


def test_the_vgg_cap_keeps_a_planted_weak_first_layer_that_a_global_ranking_would_strip():
    """VGG-11 (width 0.25, 16 channels in its first layer) whose first conv and BN scales are
    100x smaller than the rest: slimming's global |gamma| ranking strips that layer to one or
    two channels without the cap, and keeps 30% of it (4.8 channels) with the default cap, to
    within one step of the target search (0.1% of all channels here: under one channel)."""
    def first_width(**options) -> int:
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="vgg11", width=0.25)).eval()
        with torch.no_grad():
            for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.weight.uniform_(0.2, 1.5)
            model.features[0].weight.mul_(0.01)
            model.features[1].weight.mul_(0.01)
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        m = method("slimming", model, x, y, model_name="vgg11", target_params=0.25, search_step_frac=0.001,
                   **options)
        return channels(m.prune(model)[0])["features.0"]
    assert first_width() >= 4
    assert first_width(max_layer_ratio=1.0) <= 2


def test_the_global_rows_cap_and_slimming_penalty_come_from_the_model_family(monkeypatch):
    """The per-layer cap of globally ranked pruning and slimming's penalty are the family's
    defaults (register_model(..., defaults)), not guessed from the model's name: VGG 0.7 and
    1e-4, ResNets no cap and 1e-5, a new family whatever it declares, else 1.0 and 1e-4."""
    from bench.models import base
    from methods.l1_filter import _slimming_reg, default_max_layer_ratio
    assert (default_max_layer_ratio("vgg11"), _slimming_reg("vgg11")) == (0.7, 1e-4)
    assert (default_max_layer_ratio("resnet20"), _slimming_reg("resnet20")) == (1.0, 1e-5)
    monkeypatch.setitem(base.MODEL_DEFAULTS, "vgg_like_resnet", {"pruning.max_layer_ratio": 0.5, "slimming.reg": 3e-4})
    monkeypatch.setitem(base.MODEL_DEFAULTS, "plain", {})
    assert (default_max_layer_ratio("vgg_like_resnet"), _slimming_reg("vgg_like_resnet")) == (0.5, 3e-4)
    assert (default_max_layer_ratio("plain"), _slimming_reg("plain")) == (1.0, 1e-4)
