"""PCNS (methods/pcns/): the draft's algebra on tiny tensors and models, and one run through the harness."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.runs import load_checkpoint
from bench import dist
from bench.config import ConfigError, ModelConfig
from bench.configure import load_config
from bench.models import build_model
from bench.surgery import substitute_inputs
from bench.train import train
from methods.pcns import PCNS, MixPool, Stopwatch, param_split, shrink, sigma, sigma_inv


# --------------------------------------------------------------------------- helpers
def calibration_from(pool: torch.Tensor):
    """ctx.calibration over a fixed pool: the first n samples, or the last n if held out."""
    def calibration(n: int, batch_size: int = 500, heldout: bool = False):
        assert n <= len(pool), f"asked for {n} calibration samples, the pool has {len(pool)}"
        src = pool[len(pool) - n:] if heldout else pool[:n]
        for i in range(0, n, batch_size):
            yield src[i:i + batch_size]
    return calibration


def config(**kw) -> PCNS.Config:
    # The property tests were written for the exact max-pool handling (explicit mixes); the
    # method's default is `skip` since the real-data measurement (results/pcns-notes.md).
    base = dict(name="pcns", calibration_images=32, error_images=16, calibration_batch_size=16, maxpool="explicit")
    return PCNS.Config(**{**base, **kw})


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def leaky_vgg(slope: float) -> nn.Module:
    return randomize_bn(build_model(ModelConfig(name="vgg11", width=0.125, act="leaky_relu", leaky_slope=slope))).eval()


def small_convnet(act: nn.Module) -> nn.Module:
    """conv-BN-act-conv-BN-act-avgpool-fc: sites '0' (consumer '3') and '3' (consumer '8')."""
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), copy.deepcopy(act),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), copy.deepcopy(act),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------- algebra
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_inverse_composed_with_leaky_is_identity(slope):
    x = torch.randn(10_000, dtype=torch.float64) * 10
    torch.testing.assert_close(sigma_inv(sigma(x, slope), slope), x, rtol=1e-15, atol=0)
    torch.testing.assert_close(sigma(sigma_inv(x, slope), slope), x, rtol=1e-15, atol=0)


def test_conv_consumer_reads_p_at_every_position_borders_included():
    """No border approximation: P has no shift, so padding zeros of e are padding zeros of P e."""
    consumer = nn.Conv2d(6, 5, 3, padding=1).double()
    p = torch.randn(6, 3, dtype=torch.float64)
    e = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    direct = consumer(torch.einsum("jm,nmhw->njhw", p, e))
    torch.testing.assert_close(substitute_inputs(consumer, p)(e), direct, rtol=1e-12, atol=1e-12)


def test_planted_low_rank_layer_shrinks_to_its_rank_and_generalises():
    """Inputs t * v_k (t > 0, one of r directions) through a positive layer: its outputs are an exact
    rank-r linear function of the input and every sigma^{-1}(c EV_i) is linear in it, so the least
    squares is exact, M = r, and the next layer's pre-activations are reproduced on NEW inputs."""
    torch.manual_seed(3)
    d_in, r, n = 12, 3, 16
    v = torch.rand(r, d_in) + 0.1
    model = nn.Sequential(nn.Linear(d_in, n), nn.LeakyReLU(0.05), nn.Linear(n, 5)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(n, d_in))
        model[0].bias.zero_()

    def inputs(count: int) -> torch.Tensor:
        return (torch.rand(count, 1) * 1.5 + 0.5) * v[torch.randint(r, (count,))]
    pool, fresh = inputs(600), inputs(300)
    old = copy.deepcopy(model)
    new, report, plans = shrink(model, config(energy=1 - 1e-9, calibration_batch_size=64), calibration_from(pool), pool[:1])
    (row,) = report["layers"]
    assert plans[0].m_comp == r and row["n_after"] == r + 1 and new[0].out_features == r + 1
    assert row["ls_residual"] < 1e-10 and row["variance_kept"] > 1 - 1e-9
    with torch.no_grad():
        assert rel(new(fresh), old(fresh)) < 1e-5
    assert row["next_err_heldout"] < 1e-5


def test_all_components_reproduce_the_output_up_to_the_reported_ls_residual():
    """LeakyReLU, M = n - 1: P sigma(T) = X exactly (PCA step), so the only error is the least squares
    residual R; it is recomputed here independently (SVD over B samples, F.unfold, float64) and the
    network output moves by at most ||W_fc P||_2 ||R||_F / sqrt(HW) (sigma is 1-Lipschitz)."""
    torch.manual_seed(4)
    slope = 0.1
    model = small_convnet(nn.LeakyReLU(slope))
    pool = torch.randn(64, 3, 8, 8)
    old = copy.deepcopy(model)
    new, report, plans = shrink(model, config(energy=1.0, transform_full_rank=True, layers=["3"]),
                                calibration_from(pool), pool[:1])
    (row,) = report["layers"]
    (plan,) = [p for p in plans if p.shrink]
    assert row["layer"] == "3" and row["components"] == 5 and row["n_after"] == 6

    cal = pool[:32]                                            # calibration_images = 32
    with torch.no_grad():
        x_in = old[:3](cal).double()
        x = old[:6](cal).double().permute(1, 0, 2, 3).reshape(6, -1)   # X_l: n x B
        y_old, y_new = old(cal).double(), new(cal).double()
    c = row["c"]
    u, s, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    u, s, vt = u[:, :5], s[:5], vt[:5]
    sign = torch.sign(((plan.p[:, :5] * c) * (u * s)).sum(0))  # the sign the method chose for each EV
    targets = torch.cat([sigma_inv(c * sign[:, None] * vt, slope), sigma_inv(x.mean(0, keepdim=True), slope)])
    a = F.unfold(x_in, 3, padding=1).permute(0, 2, 1).reshape(-1, 72)
    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    resid = a @ plan.w - targets.T
    assert float((resid ** 2).sum()) == pytest.approx(row["ls_residual_abs"], rel=1e-4)
    assert float((resid[:, :5] ** 2).sum() / (targets[:5] ** 2).sum()) == pytest.approx(row["ls_residual"], rel=1e-4)
    assert float((resid[:, 5] ** 2).sum() / (targets[5] ** 2).sum()) == pytest.approx(row["ls_residual_mean_to"],
                                                                                       rel=1e-4)
    # PCA with all components is exact: P sigma(targets) = X.
    torch.testing.assert_close(plan.p @ sigma(targets, slope), x, rtol=1e-9, atol=1e-9)
    # The shrunk layer (conv + fresh BN, eval) computes A W.
    with torch.no_grad():
        pre = new[4](new[3](old[:3](cal))).double().permute(1, 0, 2, 3).reshape(6, -1)
    assert rel(pre, (a @ plan.w).T) < 1e-5
    bound = torch.linalg.matrix_norm(new[8].weight.double(), 2) * resid.norm() / 8.0   # sqrt(HW) = 8
    assert float((y_new - y_old).norm()) <= float(bound.detach()) * (1 + 1e-4)
    assert 0 < row["ls_residual"] < 1


def test_scale_c_does_not_change_the_result():
    torch.manual_seed(5)
    model = small_convnet(nn.LeakyReLU(0.1))
    pool, fresh = torch.randn(64, 3, 8, 8), torch.randn(16, 3, 8, 8)
    a, rep_a, _ = shrink(copy.deepcopy(model), config(energy=0.9, ev_scale=1.0), calibration_from(pool), pool[:1])
    b, rep_b, _ = shrink(copy.deepcopy(model), config(energy=0.9, ev_scale=37.0), calibration_from(pool), pool[:1])
    assert [r["n_after"] for r in rep_a["layers"]] == [r["n_after"] for r in rep_b["layers"]]
    for ra, rb in zip(rep_a["layers"], rep_b["layers"]):
        assert ra["ls_residual"] == pytest.approx(rb["ls_residual"], rel=1e-8)
        assert ra["next_err_heldout"] == pytest.approx(rb["next_err_heldout"], rel=1e-4)
    with torch.no_grad():
        assert rel(b(fresh), a(fresh)) < 1e-4


# --------------------------------------------------------------------------- whole models
def test_vgg_order_second_to_last_first_and_linear_case_is_exact():
    """VGG-11: the last hidden conv (consumer: the classifier) is shrunk first, then down to the first.
    With slope 1 (sigma linear) and all components every step is exact, so the whole shrunk VGG,
    the 1x1 mixes kept in front of its max pools and the fresh BNs, computes the same function on
    the calibration images (the last layers have fewer samples than unknowns: not on new ones)."""
    torch.manual_seed(6)
    model = leaky_vgg(slope=1.0)
    convs = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    pool = torch.randn(48, 3, 32, 32)
    old = copy.deepcopy(model)
    new, report, _ = shrink(model, config(energy=1.0, transform_full_rank=True, samples_per_unit=1),
                            calibration_from(pool), pool[:1])
    assert report["order"] == convs[::-1]
    assert [r["layer"] for r in report["layers"]] == convs[::-1]
    assert report["layers"][0]["consumer"] == "head.fc"
    assert sum(isinstance(m, MixPool) for m in new.features) == 5     # one per max pool
    with torch.no_grad():
        assert rel(new(pool[:32]), old(pool[:32])) < 1e-5
    assert report["logit_err_cal"] < 1e-5 and report["top1_agreement_cal"] == 1.0


def test_relu_needs_the_split_option():
    model = small_convnet(nn.ReLU())
    pool = torch.randn(64, 3, 8, 8)
    with pytest.raises(ConfigError, match="model.act=leaky_relu"):
        shrink(copy.deepcopy(model), config(), calibration_from(pool), pool[:1])
    new, report, plans = shrink(model, config(energy=0.9, relu_split=True), calibration_from(pool), pool[:1])
    for row, plan in zip(report["layers"], [p for p in reversed(plans) if p.shrink]):
        m = row["components"]
        assert row["n_after"] == 2 * m + 1
        torch.testing.assert_close(plan.p[:, 1:2 * m:2], -plan.p[:, 0:2 * m:2])   # columns (lambda/c, -lambda/c)
        assert 0 <= row["next_err_cal"] < float("inf")
    with torch.no_grad():
        assert torch.isfinite(new(pool[:4])).all()


def test_repeated_shrinking_keeps_resnet_trainable_and_counts_exact():
    torch.manual_seed(7)
    model = randomize_bn(build_model(ModelConfig(name="resnet20", width=0.5, act="leaky_relu"))).eval()
    pool = torch.randn(64, 3, 8, 8)
    widths = {}
    for k in range(2):
        before = sum(p.numel() for p in model.parameters())
        model, report, _ = shrink(model, config(energy=0.8, samples_per_unit=2), calibration_from(pool), pool[:1])
        assert sum(p.numel() for p in model.parameters()) == report["projected_params"] < before
        assert all(r["layer"].endswith(".conv1") for r in report["layers"])    # block-internal only
        for r in report["layers"]:
            if k == 1 and r["layer"] in widths:
                assert r["n_before"] == widths[r["layer"]]
            widths[r["layer"]] = r["n_after"]
    assert model.layer1[0].conv2.out_channels == 8 and model.layer3[2].conv2.out_channels == 32   # stream kept
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(pool[:8]), torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    opt.step()


# --------------------------------------------------------------------------- max pools
def pooled_and_plain(model: nn.Module) -> tuple[list[str], list[str]]:
    """VGG convs with a max pool before their consumer, and those without."""
    feats = list(model.features)
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    nxt = dict(zip(convs, convs[1:] + [len(feats)]))
    pooled = [f"features.{i}" for i in convs if any(isinstance(m, nn.MaxPool2d) for m in feats[i:nxt[i]])]
    return pooled, [f"features.{i}" for i in convs if f"features.{i}" not in pooled]


def method_with_one_shrink(model: nn.Module, pool: torch.Tensor, **kw) -> tuple[PCNS, nn.Module]:
    """A PCNS method object after its shrink at epoch 1, on a stub context."""
    dense = sum(p.numel() for p in model.parameters())
    ctx = SimpleNamespace(epochs=2, num_train_images=len(pool), dense_params=dense, example_inputs=pool[:1],
                          calibration=calibration_from(pool), last_epoch_s=1.0, epoch=1)
    method = PCNS(config(transform_epochs=[1], samples_per_unit=1, **kw), ctx)
    return method, method.on_epoch_end(model, 1)


def test_maxpool_modes_selectable_from_the_config(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns", "method.maxpool=commute",
                                                              "method.refit=true"])
    assert cfg.method.maxpool == "commute" and cfg.method.refit is True
    assert load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns", "method.maxpool=skip"]
                       ).method.maxpool == "skip"
    assert load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns"]).method.maxpool == "skip"
    with pytest.raises(ConfigError, match="maxpool"):
        load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns", "method.maxpool=mix"])


@pytest.mark.parametrize("mode", ["explicit", "commute", "skip"])
def test_maxpool_modes_and_the_param_split_of_the_summary(mode):
    """explicit: a mix per max pool (n x (M+1) each), consumers behind it keep their width; commute: no
    mix, P in the consumer; skip: layers before a max pool stay as they are. In every mode the summary's
    param_split (shrunk layers, mixes, untouched) sums to the model's parameters."""
    torch.manual_seed(8)
    model = leaky_vgg(slope=0.2)
    pool = torch.randn(48, 3, 32, 32)
    pooled, plain = pooled_and_plain(model)
    assert len(pooled) == 5 and len(plain) == 3                    # VGG-11: 5 of 8 convs before a max pool
    method, new = method_with_one_shrink(model, pool, energy=0.9, maxpool=mode)
    (report,) = method.shrinks
    total = sum(p.numel() for p in new.parameters())
    split = method.summary(new)["param_split"]
    assert split == report["param_split"] and sum(split.values()) == total == report["projected_params"]
    mixes = [m for m in new.features if isinstance(m, MixPool)]
    shrunk = {r["layer"]: r for r in report["layers"]}
    with torch.no_grad():
        assert torch.isfinite(new(pool[:2])).all()
    if mode == "explicit":
        assert set(shrunk) == set(pooled + plain) and len(mixes) == 5
        assert split["mix"] == sum(shrunk[name]["n_before"] * shrunk[name]["n_after"] for name in pooled) > 0
        assert new.head.fc.in_features == 64                        # behind a mix: full width, untouched
        assert split["untouched"] >= new.head.fc.weight.numel()
        consumers = {r["layer"]: new.get_submodule(r["consumer"]) for r in report["layers"]}
        assert method.summary(new)["mix_consumer_excess"] == report["mix_consumer_excess"] == sum(
            consumers[name].weight[:, 0].numel() * (shrunk[name]["n_before"] - shrunk[name]["n_after"])
            for name in pooled) > 0
    else:
        assert not mixes and split["mix"] == 0 == method.summary(new)["mix_consumer_excess"]
        assert set(shrunk) == set(pooled + plain if mode == "commute" else plain)
        assert sum("maxpool=skip" in s for s in report["skipped"]) == (5 if mode == "skip" else 0)
    if mode == "commute":
        assert new.head.fc.in_features == shrunk["features.25"]["n_after"]   # P moved past the pool
        assert split["untouched"] == 0                              # every conv, BN and the classifier resized
    assert split["shrunk"] == sum(p.numel() for name in report["resized"] for p in new.get_submodule(name).parameters())


def test_stopwatch_synchronises_cuda_before_every_clock_reading(monkeypatch):
    """Kernels are queued asynchronously on CUDA: a phase's time is only its own if the device is
    synchronised before the clock is read, at its start and at its end."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr("methods.pcns.shrinking.time.perf_counter", lambda: events.append("clock") or float(len(events)))
    clock = Stopwatch(torch.device("cuda", 0))
    with clock("gram_s"):
        events.append("work")
    clock.total()
    assert events == ["sync", "clock", "sync", "clock", "work", "sync", "clock", "sync", "clock"]
    events.clear()
    Stopwatch(torch.device("cpu")).total()
    assert events == ["clock", "clock"]                              # no synchronisation off CUDA


@pytest.mark.parametrize("refit", [False, True])
def test_diagnostics_run_after_the_timed_hook_and_equal_the_inline_ones(refit):
    """on_epoch_end (timed) leaves the error table out; epoch_metrics (untimed) adds it, with the
    same values as a shrink that computes it at once, and changes nothing in the model."""
    torch.manual_seed(8)
    model, pool = leaky_vgg(slope=0.2), torch.randn(48, 3, 32, 32)
    inline_model, inline, _ = shrink(copy.deepcopy(model), config(energy=0.9, refit=refit, samples_per_unit=1),
                                     calibration_from(pool), pool[:1])
    method, new = method_with_one_shrink(model, pool, energy=0.9, refit=refit)
    (report,) = method.shrinks
    keys = {"logit_err_cal", "logit_err_heldout", "top1_agreement_cal", "diagnostics_s"} | (
        {"logit_err_cal_norefit"} if refit else set())
    assert not keys & set(report) and "out_err_cal" not in report["layers"][0] and method.pending is not None
    before = {k: v.clone() for k, v in new.state_dict().items()}
    metrics = method.epoch_metrics(new)
    assert keys <= set(report) and method.pending is None and metrics["pcns/logit_err_cal"] == report["logit_err_cal"]
    assert all(torch.equal(before[k], v) for k, v in new.state_dict().items())
    for k in keys - {"diagnostics_s"}:
        assert report[k] == inline[k], k
    for row, row_inline in zip(report["layers"], inline["layers"]):
        assert row["out_err_heldout"] == row_inline["out_err_heldout"] and row["next_err_cal"] == row_inline["next_err_cal"]


def test_param_split_counts_each_module_once():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          MixPool(nn.Conv2d(4, 4, 1, bias=False), nn.MaxPool2d(2)), nn.Conv2d(4, 2, 1))
    split = param_split(model, ["0", "1", "1", "nonexistent"])
    assert split == {"shrunk": 16 + 8, "mix": 16, "untouched": 10}


# --------------------------------------------------------------------------- refit
def planted_two_layer_mlp(seed: int = 0) -> nn.Module:
    """Layer '0' cannot be fitted exactly (slope 0.1, 4 inputs for 12 neurons), layer '2' is linear
    (slope 1) and reads its errors; the classifier follows it directly."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 12), nn.LeakyReLU(0.1), nn.Linear(12, 10), nn.LeakyReLU(1.0),
                         nn.Linear(10, 6)).eval()


def test_refit_fits_on_the_shrunk_inputs_and_never_raises_the_planted_logit_error():
    """With all components at layer '2' and nothing nonlinear after it, the logit change is a fixed
    linear map of layer 2's least-squares residual R (one row per sample). The refit's R is
    orthogonal to every linear function of the shrunk network's inputs of layer 2, and the draft's
    layer 2 (W~ P_1 on those same inputs) is one such function, so on the fitting images
    ||R_draft M^T||^2 = ||R_refit M^T||^2 + ||(R_draft - R_refit) M^T||^2 >= ||R_refit M^T||^2."""
    model = planted_two_layer_mlp()
    pool = torch.randn(400, 4)
    kw = dict(energy=1.0, transform_full_rank=True, error_images=120)    # 10 x 12 = 120 fitting images
    old = copy.deepcopy(model)
    draft, rep_d, _ = shrink(copy.deepcopy(model), config(**kw), calibration_from(pool), pool[:1])
    new, rep, plans = shrink(model, config(refit=True, **kw), calibration_from(pool), pool[:1])
    assert rep["calib_images"] == rep["error_images"] == 120 and rep["refit"] and not rep_d["refit"]
    assert rep["order"] == ["0", "2"] and [r["layer"] for r in rep["layers"]] == ["0", "2"]
    assert rep["logit_err_cal"] <= rep["logit_err_cal_norefit"] * (1 + 1e-6)
    assert rep["logit_err_cal"] < 0.5 * rep["logit_err_cal_norefit"]          # the option changes the result
    for key in ("logit_err_cal", "logit_err_heldout", "top1_agreement_cal", "top1_agreement_heldout"):
        assert rep[f"{key}_norefit"] == pytest.approx(rep_d[key], rel=1e-9)   # "without" = the draft order
    cal = pool[:120]
    with torch.no_grad():
        assert rel(new(cal), old(cal)) == pytest.approx(rep["logit_err_cal"], rel=1e-5)
        assert rel(draft(cal), old(cal)) == pytest.approx(rep["logit_err_cal_norefit"], rel=1e-5)
        assert rel(new(cal), draft(cal)) > 0.1
    first, second = rep["layers"]
    assert first["ls_residual_refit"] == pytest.approx(first["ls_residual"], rel=1e-6)  # same inputs below it
    assert second["ls_residual"] < 1e-9 < second["ls_residual_refit"]     # exact on the unshrunk inputs only
    assert new[2].in_features == plans[0].width == 12


def test_refit_on_a_linear_vgg_is_exact_and_keeps_the_structure():
    """slope 1, all components: every refit step is exact, so the conv rows (student im2col) and the
    unshrunk network's outputs (the targets) are paired position by position."""
    torch.manual_seed(6)
    model = leaky_vgg(slope=1.0)
    pool = torch.randn(48, 3, 32, 32)
    old = copy.deepcopy(model)
    kw = dict(energy=1.0, transform_full_rank=True, samples_per_unit=1)
    new, report, _ = shrink(model, config(refit=True, **kw), calibration_from(pool), pool[:1])
    assert report["order"] == [r["layer"] for r in report["layers"]] == \
        [f"features.{i}" for i, m in enumerate(old.features) if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        assert rel(new(pool[:32]), old(pool[:32])) < 1e-5
    assert report["logit_err_cal"] < 1e-5 and report["logit_err_cal_norefit"] < 1e-5
    assert sum(p.numel() for p in new.parameters()) == report["projected_params"]
    assert sum(isinstance(m, MixPool) for m in new.features) == 5


def test_refit_on_resnet_counts_exact_and_trainable():
    torch.manual_seed(7)
    model = randomize_bn(build_model(ModelConfig(name="resnet20", width=0.5, act="leaky_relu", leaky_slope=0.2)))
    pool = torch.randn(64, 3, 8, 8)
    new, report, _ = shrink(model.eval(), config(energy=0.8, samples_per_unit=2, refit=True),
                            calibration_from(pool), pool[:1])
    assert sum(p.numel() for p in new.parameters()) == report["projected_params"]
    assert all("ls_residual_refit" in r for r in report["layers"]) and report["logit_err_cal"] >= 0
    new.train()
    loss = F.cross_entropy(new(pool[:8]), torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------- statistics: dtype, layout, ranks
@pytest.mark.parametrize("refit", [False, True])
def test_statistics_ignore_autocast_and_channels_last(refit):
    """The harness may call the shrink inside bf16 autocast with a channels_last model and batches:
    the shrink runs its forwards outside autocast and its sums in float64, so nothing changes."""
    torch.manual_seed(9)
    model = small_convnet(nn.LeakyReLU(0.1))
    pool, fresh = torch.randn(64, 3, 8, 8), torch.randn(16, 3, 8, 8)
    cfg = config(energy=0.9, refit=refit)
    ref, rep_ref, _ = shrink(copy.deepcopy(model), cfg, calibration_from(pool), pool[:1])
    nhwc = pool.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, rep, _ = shrink(copy.deepcopy(model).to(memory_format=torch.channels_last), cfg,
                             calibration_from(nhwc), nhwc[:1])
    for a, b in zip(rep_ref["layers"], rep["layers"]):
        assert a["n_after"] == b["n_after"]
        for key in ("ls_residual", "variance_kept", "next_err_cal", "next_err_heldout"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9)
    with torch.no_grad():
        assert rel(got(fresh), ref(fresh)) < 1e-5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (BENCH_TEST_GPU=1 on a GPU machine): NCCL's all-reduce takes device tensors only"))])
@pytest.mark.parametrize("refit", [False, True])
def test_sums_are_all_reduced_by_the_shared_accumulator_on_the_data_device(monkeypatch, device, refit):
    """Under torchrun every Gram and normal-equation sum, counts included, is all-reduced by
    bench.activations.SumAccumulator on the device of the data (NCCL rejects CPU tensors). Simulated with
    one rank: the all-reduce is the identity, so the result is the single-process one."""
    torch.manual_seed(10)
    model = small_convnet(nn.LeakyReLU(0.1)).to(device)
    pool = torch.randn(64, 3, 8, 8, device=device)
    ref, rep_ref, _ = shrink(copy.deepcopy(model), config(energy=0.9, refit=refit), calibration_from(pool), pool[:1])
    reduced = []

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        reduced.append((t.device, t.dtype, sys._getframe(1).f_code.co_qualname))
        return t
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "all_reduce_sum_", all_reduce)
    got, rep, _ = shrink(copy.deepcopy(model), config(energy=0.9, refit=refit), calibration_from(pool), pool[:1])
    n_layers, n_shrunk = 2, len(rep["layers"])
    # per layer: the Gram and its count; per shrunk layer and fit: A^T A, A^T T, ||T||^2 and their count
    assert len(reduced) == 2 * n_layers + 4 * n_shrunk * (2 if refit else 1)
    assert set(reduced) == {(next(model.parameters()).device, torch.float64, "SumAccumulator.all_reduce_")}
    assert [r["n_after"] for r in rep["layers"]] == [r["n_after"] for r in rep_ref["layers"]]
    with torch.no_grad():
        assert rel(got(pool[:8]), ref(pool[:8])) < 1e-6


# --------------------------------------------------------------------------- harness
def test_relu_model_is_refused_before_training(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcns", "method.calibration_images=64",
                                                              "method.error_images=32"])
    with pytest.raises(ConfigError, match="model.act=leaky_relu"):
        train(cfg, log=lambda s: None)


def test_end_to_end_target_params_two_shrinks(tiny_overrides):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [
        "model.name=resnet20", "model.width=0.5", "model.act=leaky_relu", "data.synthetic_train_size=256",
        "data.synthetic_test_size=64", "method.name=pcns",
        "method.transform_epochs=[1, 2]", "method.target_params=0.7", "method.calibration_images=64",
        "method.error_images=32"])
    summary = train(cfg, log=lambda s: None)
    ms = summary["method_summary"]
    assert [s["epoch"] for s in ms["shrinks"]] == [1, 2]
    assert summary["params_total"] == ms["params"] == ms["shrinks"][-1]["params_after"] \
        == ms["shrinks"][-1]["projected_params"]
    assert 0.68 <= summary["params_total"] / summary["dense_params"] <= 0.70
    assert ms["shrinks"][-1]["target_met"] and ms["shrinks"][-1]["shrink_to_epoch_ratio"] > 0
    for s in ms["shrinks"]:
        assert {"n_before", "n_after", "variance_kept", "ls_residual", "next_err_cal", "next_err_heldout"} \
            <= set(s["layers"][0]) and s["timing_s"]["total_s"] > 0
    model = load_checkpoint(Path(cfg.output_dir) / summary["run_id"] / "checkpoint.pt")
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
