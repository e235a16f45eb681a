"""Decorrelated BP: exactness of the merged-weight layers, the R rule on correlated
inputs, no autograd parameter touched, and a run through the harness."""
from __future__ import annotations

import pickle


import torch
import torch.nn.functional as F
from torch import nn

from bench.runs import load_checkpoint
from bench.config import ModelConfig
from bench.configure import load_config
from bench.models import build_model
from bench.train import train
from methods.base import Context
from methods.decorrelated_bp import (DECOR_TYPES, INPUT_ATTR, DecorrelatedBP, decor_step, decor_update_macs,
                                     decorrelate_layer)




def make_method(model: nn.Module, **opts) -> DecorrelatedBP:
    ctx = Context(device=torch.device("cpu"), seed=0, model_name="test", num_train_images=64, epochs=2,
                  steps_per_epoch=4, example_inputs=torch.randn(1, 3, 32, 32),
                  dense_params=sum(p.numel() for p in model.parameters()), dense_macs=0,
                  generator=torch.Generator().manual_seed(1), calibration=None, evaluate=None)
    method = DecorrelatedBP(DecorrelatedBP.Config(name="decorrelated_bp", **opts), ctx)
    method.on_train_start(model)
    return method


def test_identity_r_gives_exactly_the_plain_layer():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    lin = nn.Linear(12, 5)
    x, v = torch.randn(3, 4, 9, 9), torch.randn(7, 12)
    y_conv, y_lin = conv(x), lin(v)
    dconv, dlin = decorrelate_layer(conv), decorrelate_layer(lin)
    assert dconv.weight is conv.weight and dlin.bias is lin.bias
    assert torch.equal(dconv(x), y_conv) and torch.equal(dlin(v), y_lin)
    assert [n for n, _ in dconv.named_parameters()] == ["weight", "bias"]    # R is no parameter


def test_merged_forward_equals_r_on_patches_then_w():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=1, padding=1, bias=True).double()
    layer = decorrelate_layer(conv)
    d = 3 * 9
    layer.decor.copy_(torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, dtype=torch.float64))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    cols = F.unfold(x, 3, padding=1)                                            # [N, d, L], zero-padded
    z = layer.decor @ cols                                                      # R on every patch
    ref = (conv.weight.flatten(1) @ z + conv.bias[:, None]).view(2, 5, 6, 6)    # then W
    assert torch.allclose(layer(x), ref, atol=1e-12)
    assert torch.allclose(layer.patches(x) @ layer.decor.T, z.transpose(1, 2).reshape(-1, d), atol=1e-12)
    lin = decorrelate_layer(nn.Linear(4, 3).double())
    lin.decor.copy_(torch.randn(4, 4, dtype=torch.float64))
    v = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(lin(v), (lin.decor @ v.T).T @ lin.weight.T + lin.bias, atol=1e-12)


def off_diagonal_energy(r: torch.Tensor, x: torch.Tensor) -> float:
    z = x @ r.T
    c = z.T @ z / len(z)
    return float((c - torch.diag(torch.diag(c))).pow(2).sum() / c.diagonal().pow(2).sum())


def test_updates_decorrelate_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    d = 8
    mix = torch.eye(d) + 0.6 * torch.randn(d, d, generator=g)                   # correlated inputs x = A s
    r = torch.eye(d)
    data = torch.randn(4000, d, generator=g) @ mix.T
    start = off_diagonal_energy(r, data)
    losses = []
    for i in range(400):
        batch = data[(i * 100) % 4000:(i * 100) % 4000 + 100]
        losses.append(decor_step(r, batch, lr=0.02, kappa=0.01))
    assert start > 0.3
    assert off_diagonal_energy(r, data) < 0.02 * start
    assert sum(losses[-20:]) < 0.1 * sum(losses[:20])           # floor: sampling noise of 100-row batches


def test_gram_and_direct_arithmetic_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 40, generator=g, dtype=torch.float64) + 0.5
    r0 = torch.eye(40, dtype=torch.float64) + 0.1 * torch.randn(40, 40, generator=g, dtype=torch.float64)
    r1, r2 = r0.clone(), r0.clone()
    l1 = decor_step(r1, x, 0.01, 0.3, gram=True)
    l2 = decor_step(r2, x, 0.01, 0.3, gram=False)
    assert abs(l1 - l2) < 1e-10 and torch.allclose(r1, r2, atol=1e-12)
    # the rule itself, written out: R - eta [(1-k) C R + k v * R]
    z = x @ r0.T
    sig = z.T @ z / len(z)
    c = sig - torch.diag(torch.diag(sig))
    v = (z ** 2 - 1).mean(0)
    assert torch.allclose(r1, r0 - 0.01 * (0.7 * c @ r0 + 0.3 * v[None, :] * r0), atol=1e-12)
    assert abs(l1 - (0.7 * c.pow(2).sum() + 0.3 * v.pow(2).sum()).item() / 40 ** 2) < 1e-10


def test_update_touches_no_autograd_parameter():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet20", width=0.25))
    for m in model.modules():                                                   # non-trivial BN
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
    method = make_method(model, decor_lr=0.01, downsample_frac=0.5)
    decor = [m for m in model.modules() if isinstance(m, DECOR_TYPES)]
    assert len(decor) == sum(1 for m in build_model(ModelConfig(name="resnet20", width=0.25)).modules()
                             if isinstance(m, (nn.Conv2d, nn.Linear)))          # first conv, shortcuts, fc too
    assert all(not m.decor.requires_grad for m in decor)
    assert not any(p is m.decor for m in decor for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.ctx.optimizer = opt
    loss = F.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.ctx.step += 1
    assert all(INPUT_ATTR in m.__dict__ for m in decor)                        # inputs kept by reference ...
    clone = pickle.loads(pickle.dumps(model))                                   # ... but never pickled
    assert not any(INPUT_ATTR in m.__dict__ for m in clone.modules())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    r_before = [m.decor.clone() for m in decor]
    method.after_step(model)
    assert all(torch.equal(p, params[n]) and torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(not torch.equal(m.decor, r) for m, r in zip(decor, r_before))   # every R moved
    assert len(method._acc["loss"]) == len(decor)
    assert not any(INPUT_ATTR in m.__dict__ for m in decor)                    # references dropped
    model.eval()                                                                # no capture outside training
    model(torch.randn(2, 3, 16, 16))
    assert not any(INPUT_ATTR in m.__dict__ for m in decor)


def test_update_every_steps_updates_only_on_those_steps():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    method = make_method(model, update_every_steps=2)
    decor = [m for m in model.modules() if isinstance(m, DECOR_TYPES)]
    moved = []
    for step in (1, 2):
        model(torch.randn(4, 3, 32, 32))
        before = [m.decor.clone() for m in decor]
        method.ctx.step = step
        method.after_step(model)
        moved.append(any(not torch.equal(m.decor, b) for m, b in zip(decor, before)))
        assert not any(INPUT_ATTR in m.__dict__ for m in decor)                # dropped either way
    assert moved == [False, True]


def test_the_training_macs_count_rs_merges_and_updates_by_hand():
    """Linear(4 -> 3) and Linear(3 -> 2), batch 10, every row kept: the step merges W R in
    the forward and the backward (2 out d^2: 2*3*16 + 2*2*9 = 132) and updates both R on 10
    rows: d = 4 in d x d arithmetic (10 (10 + 4) >= 16), 2*10*16 + 4^3 = 384; d = 3 likewise,
    2*10*9 + 27 = 207. A step without an update pays the merges only."""
    assert decor_update_macs(10, 4) == 384 and decor_update_macs(10, 3) == 207
    assert decor_update_macs(2, 8) == 3 * 2 * 64 + 4 * 8     # n (n + d) < d^2: the 2 x 2 Gram matrix
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    method = make_method(model, downsample_frac=1.0, update_every_steps=2)
    assert method.take_extra_train_macs() == 0
    for step in (1, 2):
        model(torch.randn(10, 4))
        method.ctx.step = step
        method.after_step(model)
    assert method.take_extra_train_macs() == 2 * 132 + 384 + 207
    assert method.take_extra_train_macs() == 0                             # taken once


def test_end_to_end_loss_falls_and_checkpoint_loads(tiny_overrides, tmp_path):
    over = tiny_overrides + ["method.name=decorrelated_bp", "method.decor_lr=0.001", "method.downsample_frac=0.25"]
    cfg = load_config("configs/smoke.yaml", over)
    summary = train(cfg, log=lambda s: None)      # exact resume: tests/test_contract.py
    ms = summary["method_summary"]
    ep = ms["epochs"]
    assert len(ep) == 2 and ep[1]["loss_mean"] < ep[0]["loss_mean"] < ms["loss_mean_first_update"]
    assert summary["params_total"] == summary["dense_params"]
    assert summary["macs"] == summary["dense_macs"]                            # one ordinary conv per layer
    import pandas as pd
    images = pd.read_csv(next((tmp_path / "runs").iterdir()) / "history.csv")["images"].sum()
    extra = summary["train_macs"] - 3 * summary["macs"] * images              # R's merges and updates count
    assert extra > ms["merge_macs_per_step"] * images / cfg.train.batch_size
    run_dir = next((tmp_path / "runs").iterdir())
    import pandas as pd
    hist = pd.read_csv(run_dir / "history.csv")
    assert hist["train_loss"].iloc[1] < hist["train_loss"].iloc[0]
    assert "decorrelated_bp/loss/features.0" in hist.columns
    model = load_checkpoint(run_dir / "checkpoint.pt")
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert sum(isinstance(m, DECOR_TYPES) for m in model.modules()) == len(ms["layers"])
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_update_from_bf16_autocast_inputs_is_float32_and_ignores_an_enclosing_autocast():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.125)).to(memory_format=torch.channels_last)
    method = make_method(model, decor_lr=0.01, downsample_frac=0.5)
    decor = [m for m in model.modules() if isinstance(m, DECOR_TYPES)]
    with torch.autocast("cpu", dtype=torch.bfloat16):                          # as the harness's bf16 forward
        model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert any(m.__dict__[INPUT_ATTR].dtype == torch.bfloat16 for m in decor)
    inputs = [m.__dict__[INPUT_ATTR] for m in decor]
    r0 = [m.decor.clone() for m in decor]
    gen0 = method.ctx.generator.get_state()
    method.ctx.step = 1
    method.after_step(model)                                                   # failed: bf16 @ float32
    r_plain = [m.decor.clone() for m in decor]
    assert all(r.dtype == torch.float32 and torch.isfinite(r).all() for r in r_plain)
    assert all(not torch.equal(a, b) for a, b in zip(r_plain, r0))
    for m, x, r in zip(decor, inputs, r0):                                     # again, inside an autocast region:
        m.__dict__[INPUT_ATTR] = x                                             # the update must not run in bf16
        m.decor.copy_(r)
    method.ctx.generator.set_state(gen0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.after_step(model)
    assert all(torch.equal(m.decor, r) for m, r in zip(decor, r_plain))


def test_deployed_model_folds_r_into_plain_layers_and_computes_the_same_function():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg11", width=0.25, num_classes=10))
    method = make_method(model)
    for layer in model.modules():                      # a non-trivial R in every layer
        if isinstance(layer, DECOR_TYPES):
            layer.decor.add_(0.05 * torch.randn_like(layer.decor))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = method.deploy(model).eval()
    assert not any(isinstance(m, DECOR_TYPES) for m in deployed.modules())
    assert all(not hasattr(m, "decor") for m in deployed.modules())
    torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in deployed.parameters()) == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())    # the trained model untouched
    assert any(isinstance(m, DECOR_TYPES) for m in model.modules())
