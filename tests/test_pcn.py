"""PCN (methods/pcn.py): exactness of the full-rank transform (borders included, VGG and a ResNet
with projection shortcuts), the k-component error formula, exact channel removal, parameter
targets, training, and the harness end to end (checkpoint, resume)."""
from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_config, load_config, raw_from_sources
from bench.metrics import param_counts
from bench.models import build_model
from bench.optim import make_optimizer
from bench.runs import run_name
from bench.stats import PCA, CovarianceAccumulator, collect_covariances
from bench.surgery import get_module, substitute_inputs
from bench.train import train
from methods.pcn import (PCN, PCNConv, analyse, channel_scores, make_projection, pcn_layer, pcn_transform,
                         select_sites)

REPO = Path(__file__).resolve().parents[1]
quiet = dict(log=lambda s: None)


def cfg(**kw) -> PCN.Config:
    c = PCN.Config(name="pcn", **kw)
    c.validate()
    return c


def randomised(name: str, width: float) -> nn.Module:
    """A model in eval mode whose BN statistics and affine parameters are not the trivial ones."""
    model = build_model(ModelConfig(name=name, width=width))
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- statistics
def test_covariance_over_batches_equals_all_data_at_once():
    x = torch.randn(23, 5, 4, 3, dtype=torch.float64) * torch.tensor([1.0, 3, 0.1, 2, 1])[None, :, None, None] + 7
    acc = CovarianceAccumulator(5)
    for part in torch.split(x, [1, 10, 5, 7]):
        acc.update(part)
    samples = x.permute(0, 2, 3, 1).reshape(-1, 5)
    assert acc.count == 23 * 12
    torch.testing.assert_close(acc.mean, samples.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.cov, torch.cov(samples.T), rtol=1e-10, atol=1e-12)


def test_pre_hook_statistics_are_of_the_tensor_the_consumer_reads():
    """After BN, ReLU and max-pool: features.8 of VGG-11 reads maxpool(relu(bn(conv)))."""
    model = randomised("vgg11", 0.125)
    x = images(6)
    accs = collect_covariances(model, {"c": model.features[8]}, [x[:2], x[2:]], inputs=True)
    with torch.no_grad():
        ref = model.features[:8](x).permute(0, 2, 3, 1).reshape(-1, 16).to(torch.float64)
    torch.testing.assert_close(accs["c"].cov, torch.cov(ref.T), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- exactness
def test_full_rank_vgg_reproduces_the_output_border_pixels_included():
    model = randomised("vgg11", 0.125)
    x = images(40)
    new, report = pcn_transform(model, cfg(energy=1.0), [x[:20], x[20:]], x[:1], param_counts(model)["params_total"])
    new.eval()
    assert all(l["in_dims_after"] == l["in_dims_before"] for l in report["layers"])
    assert sum(isinstance(m, PCNConv) for m in new.modules()) == 7
    with torch.no_grad():
        assert rel_err(model.features[:4](x), new.features[:4](x)) < 1e-4       # every pixel of a feature map
        assert rel_err(model.features[:20](x), new.features[:20](x)) < 1e-4
        assert rel_err(model(x), new(x)) < 1e-4
        # The same rotation WITHOUT padding first is wrong at the borders: the test can see it.
        site = model.features[4]
        pca = PCA.from_accumulator(collect_covariances(model, {"s": site}, [x], inputs=True)["s"])
        naive = nn.Sequential(make_projection(pca.eigenvectors, pca.mean, True, site.weight),
                              substitute_inputs(site, pca.eigenvectors, pca.mean))
        inp = model.features[:4](x)
        out, out_naive = site(inp), naive(inp)
        assert rel_err(out[..., 1:-1, 1:-1], out_naive[..., 1:-1, 1:-1]) < 1e-4
        assert rel_err(out, out_naive) > 1e-2


@pytest.mark.parametrize("name,width", [("resnet20", 0.5), ("resnet50", 0.125)])
def test_full_rank_resnet_with_projection_shortcuts_reproduces_the_output(name, width):
    model = randomised(name, width)
    assert model.layer2[0].downsample is not None and model.layer3[0].downsample is not None
    x = images(40)
    new, _ = pcn_transform(model, cfg(energy=1.0), [x[:20], x[20:]], x[:1], param_counts(model)["params_total"])
    new.eval()
    # The block's first conv and its projection shortcut share one frozen projection module.
    assert new.layer3[0].conv1.proj is new.layer3[0].downsample[0].proj
    with torch.no_grad():
        assert rel_err(model.forward_features(x), new.forward_features(x)) < 1e-4
        assert rel_err(model(x), new(x)) < 1e-4


def test_k_components_error_equals_what_the_discarded_eigenvalues_predict():
    """One Linear y = W x + b: sum_s ||y - y_k||^2 / (s - 1) = sum_{j >= k} lambda_j ||W v_j||^2."""
    g = torch.Generator().manual_seed(3)
    d, s, k = 12, 400, 5
    x = (torch.randn(s, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
         + torch.randn(d, generator=g, dtype=torch.float64))
    layer = nn.Linear(d, 7).double()
    acc = CovarianceAccumulator(d)
    for part in torch.split(x, 64):
        acc.update(part)
    pca = PCA.from_accumulator(acc)
    pcn = pcn_layer(layer, pca.eigenvectors[:, :k], pca.mean)
    with torch.no_grad():
        err = ((layer(x) - pcn(x)) ** 2).sum() / (s - 1)
        wv = layer.weight @ pca.eigenvectors[:, k:]
        predicted = (pca.eigenvalues[k:] * (wv ** 2).sum(0)).sum()
    torch.testing.assert_close(err, predicted, rtol=1e-8, atol=0)
    assert not any(p.requires_grad for p in pcn.proj.parameters())


# --------------------------------------------------------------------------- channel selection
def test_channel_scores_are_loadings_on_the_kept_components():
    v = torch.tensor([[0.6, 0.8, 0.0], [0.8, -0.6, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pca = PCA(torch.zeros(3, dtype=torch.float64), torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), v)
    torch.testing.assert_close(channel_scores(pca, 2, weighted=False), torch.tensor([1.4, 1.4, 0.0], dtype=torch.float64))
    torch.testing.assert_close(channel_scores(pca, 2, weighted=True), torch.tensor([3.4, 3.6, 0.0], dtype=torch.float64))


def test_a_dead_channel_is_the_one_removed_and_the_function_is_unchanged_vgg():
    """A channel constant at its mean has zero loadings; dropping it with k = d - 1 is exact."""
    model = randomised("vgg11", 0.125)
    bn = model.features[9]                        # after conv features.8 (32 channels), read by features.11
    # Keep every other channel alive: a second dead channel would make the null eigenspace
    # two-dimensional, and which of its vectors LAPACK returns varies between CPUs.
    bn.bias.data += 5.0
    bn.weight.data[5], bn.bias.data[5] = 0.0, -1.0   # ReLU output is 0 everywhere
    x = images(40)
    c = cfg(layers=["features.11"], dims=[31], out_channels_ratio=1.0)
    new, report = pcn_transform(model, c, [x], x[:1], param_counts(model)["params_total"])
    new.eval()
    assert report["streams"] == [{"stream": "features.8", "residual": False, "producers": ["features.8"],
                                  "channels_before": 32, "channels_after": 31}]
    assert new.features[8].out_channels == 31 and new.features[9].num_features == 31
    kept = torch.tensor([i for i in range(32) if i != 5])
    torch.testing.assert_close(new.features[8].weight, model.features[8].weight[kept])
    with torch.no_grad():
        assert rel_err(model(x), new(x)) < 1e-4


def test_residual_channels_are_removed_jointly_per_stage_resnet():
    model = randomised("resnet20", 0.5)
    for bn in [model.layer3[0].downsample[1]] + [b.bn2 for b in model.layer3]:
        bn.weight.data[3], bn.bias.data[3] = 0.0, -1.0   # stream channel 3 of stage 3 is dead after each add
    x = images(40)
    readers = ["layer3.1.conv1", "layer3.2.conv1", "fc"]
    c = cfg(layers=readers, dims=[31, 31, 31], out_channels_ratio=1.0, residual_channels="joint")
    new, report = pcn_transform(model, c, [x], x[:1], param_counts(model)["params_total"])
    new.eval()
    [stream] = report["streams"]
    assert stream["residual"] and stream["channels_after"] == 31
    assert stream["producers"] == ["layer3.0.downsample.0", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2"]
    for name in stream["producers"]:
        assert get_module(new, name).out_channels == 31
    assert new.layer3[0].conv1.out_channels == 32           # block-internal width untouched
    with torch.no_grad():
        assert rel_err(model(x), new(x)) < 1e-4
    keep, _ = pcn_transform(model, cfg(layers=readers, dims=[31, 31, 31], residual_channels="keep"),
                            [x], x[:1], 1)
    assert keep.layer3[0].conv2.out_channels == 32


# --------------------------------------------------------------------------- layers, targets, configs
def test_late_layers_are_the_authors_choice_and_their_vgg16_dims_apply():
    g = analyse(build_model(ModelConfig(name="vgg16", width=0.25)))
    late = select_sites(g, "late")
    feats = build_model(ModelConfig(name="vgg16", width=0.25)).features
    conv_idx = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    assert late == [f"features.{i}" for i in conv_idx[7:13]]           # conv 8-13
    assert select_sites(analyse(build_model(ModelConfig(name="resnet20", width=0.5))), "late") == [
        "layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2", "layer3.2.conv1", "layer3.2.conv2", "fc"]
    raw = raw_from_sources([str(REPO / "configs/smoke.yaml"), str(REPO / "configs/methods/pcn-vgg16-authors.yaml")],
                           ["model.width=0.25"])
    run = build_config(raw)
    model = randomised("vgg16", 0.25)
    x = images(8)
    new, report = pcn_transform(model, run.method, [x], x[:1], param_counts(model)["params_total"])
    assert [l["in_dims_after"] for l in report["layers"]] == [64, 64, 64, 32, 32, 32]
    assert report["streams"] == []                                     # their VGG-16 setting selects no channels
    assert param_counts(new)["params_total"] == report["planned_params"]


@pytest.mark.parametrize("name,width", [("vgg11", 0.125), ("resnet20", 0.5)])
def test_target_params_is_met_within_two_percent_and_the_plan_counts_exactly(name, width):
    model = randomised(name, width)
    x = images(24)
    dense = param_counts(model)["params_total"]
    for target in (0.5, 0.25):
        new, report = pcn_transform(model, cfg(target_params=target), [x], x[:1], dense)
        total = param_counts(new)["params_total"]
        assert total == report["planned_params"]
        assert abs(total - target * dense) <= 0.02 * target * dense
    with pytest.raises(ConfigError, match="target_params"):
        pcn_transform(model, cfg(target_params=0.001), [x], x[:1], dense)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="dims and method.target_params"):
        cfg(dims=[4], target_params=0.5)
    with pytest.raises(ConfigError, match="method.layers"):
        cfg(layers="early")
    model = randomised("vgg11", 0.125)
    x = images(4)
    with pytest.raises(ConfigError, match="method.dims has 1 entries"):
        pcn_transform(model, cfg(layers="late", dims=[4]), [x], x[:1], 1)
    with pytest.raises(ConfigError, match="unknown layer"):
        pcn_transform(model, cfg(layers=["features.0"]), [x], x[:1], 1)     # the image input is never rotated


# --------------------------------------------------------------------------- training and the harness
def test_the_pcn_trains_and_its_projections_stay_frozen():
    """On a model whose BN running statistics match its training-mode statistics (as after real
    training: calibration runs in eval mode, training in train mode)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    x, y = images(64), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None                     # cumulative average: one pass sets the statistics of x
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(x)
    new, _ = pcn_transform(model.eval(), cfg(target_params=0.5), [x], x[:1], param_counts(model)["params_total"])
    proj = new.features[18].proj.weight.clone()
    opt = make_optimizer(new, build_config({}).train)
    for g in opt.param_groups:
        g["lr"] = 0.05
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    new.train()
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(new(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.equal(new.features[18].proj.weight, proj)


@pytest.mark.parametrize("model_name,width,ratio", [("vgg11", 0.125, "null"), ("resnet20", 0.25, "1.0")])
def test_end_to_end_through_the_harness_with_resume_and_checkpoint(tiny_overrides, model_name, width, ratio):
    cfg_run = load_config("configs/smoke.yaml", tiny_overrides + [
        f"model.name={model_name}", f"model.width={width}", "method.name=pcn", "method.transform_epoch=1",
        "method.target_params=0.5", "method.calibration_images=256", "method.calibration_batch_size=128",
        f"method.out_channels_ratio={ratio}"])
    assert train(cfg_run, max_epochs=1, **quiet) is None          # interrupted right after the transform
    summary = train(cfg_run, **quiet)                              # resumes: the method's report is restored
    ms = summary["method_summary"]
    assert ms["transformed"] and ms["transform_epoch"] == 1 and ms["selection"] == "target_params"
    assert summary["params_total"] == ms["planned_params"] == ms["params"]["total"]
    assert ms["params"]["frozen"] == sum(l["in_channels_kept"] * l["in_dims_after"] + l["in_dims_after"]
                                         for l in ms["layers"])
    assert summary["params_trainable"] == ms["params"]["trainable"]
    assert abs(summary["params_total"] - 0.5 * summary["dense_params"]) <= 0.02 * 0.5 * summary["dense_params"]
    assert [t["when"] for t in summary["transforms"]] == ["epoch_end_1"]
    assert bool(ms["streams"]) == (ratio != "null")          # channels removed only with a ratio
    run_dir = Path(cfg_run.output_dir) / run_name(cfg_run)
    hist = pd.read_csv(run_dir / "history.csv")
    assert list(hist["pcn/transformed"]) == [1, 1] and "acc_after_transform" in hist
    model = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert any(isinstance(m, PCNConv) for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_transform_epoch_past_the_budget_is_a_config_error(tiny_overrides):
    cfg_run = load_config("configs/smoke.yaml", tiny_overrides + ["method.name=pcn", "model.name=resnet20",
                                                                 "model.width=0.25"])
    with pytest.raises(ConfigError, match="transform_epoch=5"):          # ResNet default: 5, budget 2
        train(cfg_run, **quiet)


def test_every_pcn_config_file_loads():
    files = sorted(glob.glob(str(REPO / "configs/methods/pcn-*.yaml")))
    assert len(files) >= 5
    targets = set()
    for f in files:
        run = build_config(raw_from_sources([str(REPO / "configs/smoke.yaml"), f], []))
        assert run.method.name == "pcn"
        targets.add(run.method.target_params)
    assert {0.5, 0.25, 0.1} <= targets
