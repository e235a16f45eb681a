"""Benchmark: the harness's training step against a bare hand-written PyTorch loop.

Same model (two copies of one initialisation), same device-resident data and
augmentation, same optimizer, in one process. Rounds alternate harness / bare so
that drift in machine load hits both; the ratio of median seconds per step is
printed. Usage: `python -m bench.overhead [CONFIG] [key=value ...]` (default:
the quick VGG recipe on synthetic data of the same shape).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
from torch import nn

from bench.config import ConfigError, load_config
from bench.data import load_data
from bench.models import build_model
from bench.optim import make_optimizer
from bench.train import Runtime, Trainer, build_context, resolve_device, seed_all
from methods import get_method

DEFAULT_OVERRIDES = ["data.name=synthetic", "data.synthetic_train_size=2560", "train.log_every_steps=0"]


def bare_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, batches) -> int:
    """What a person writes by hand: forward, loss, backward, step."""
    model.train()
    n = 0
    for x, y in batches:
        out = model(x)
        loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += 1
    return n


def measure(config: str, overrides: list[str], rounds: int) -> dict[str, float]:
    cfg = load_config(config, DEFAULT_OVERRIDES + overrides)
    device = resolve_device(cfg.device)
    rt = Runtime(device, cfg.train)
    seed_all(cfg.seed)
    data = load_data(cfg.data, device, cfg.model.num_classes)
    model = rt.place(build_model(cfg.model))
    bare_model = copy.deepcopy(model)
    example = rt.prepare(data.normalize(data.train_x[:1]))
    ctx = build_context(cfg, data, model, rt, example, lambda m: 0.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    trainer = Trainer(cfg, data, rt, get_method("dense")(cfg.method, ctx), ctx, model, criterion)
    bare_opt = make_optimizer(bare_model, cfg.train)
    steps = ctx.steps_per_epoch
    total = steps * (rounds + 1)
    harness_s, bare_s = [], []
    for r in range(rounds + 1):                       # round 0 is an untimed warm-up
        gen = torch.Generator().manual_seed(r)
        t0 = rt.clock()
        trainer.train_epoch(r, total, log=lambda s: None)
        t1 = rt.clock()
        bare_epoch(bare_model, bare_opt, criterion,
                   ((rt.prepare(x), y) for x, y in data.train_batches(cfg.train.batch_size, gen, cfg.data.augment)))
        t2 = rt.clock()
        if r:
            harness_s.append((t1 - t0) / steps)
            bare_s.append((t2 - t1) / steps)
    h, b = statistics.median(harness_s), statistics.median(bare_s)
    return {"harness_s_per_step": h, "bare_s_per_step": b, "ratio": h / b, "steps_per_round": steps,
            "rounds": rounds, "device": str(device), "model": cfg.model.name, "batch_size": cfg.train.batch_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("config", nargs="?", default="configs/quick-vgg.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = "configs/quick-vgg.yaml"
    try:
        res = measure(args.config, args.overrides, args.rounds)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{res['model']} batch {res['batch_size']} on {res['device']}, {res['rounds']} rounds x "
          f"{res['steps_per_round']} steps, alternating:")
    print(f"  harness {res['harness_s_per_step'] * 1e3:.1f} ms/step   bare loop "
          f"{res['bare_s_per_step'] * 1e3:.1f} ms/step   ratio {res['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
