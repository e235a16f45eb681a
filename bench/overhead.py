"""Benchmark: the harness's training step against a bare hand-written PyTorch loop.

Same model (copies of one initialisation), same device-resident data and
augmentation, same optimizer, in one process. Each round runs the harness, the bare
loop at the harness's precision and memory format, the bare loop at the same precision
in the other memory format (contiguous vs channels_last: what decides the `auto`
format rule), and the bare loop in plain fp32 (contiguous), so that drift in machine
load hits all of them; the ratios of median seconds per step are printed: harness/bare
(the harness's overhead), other format/bare, and bare fp32/bare at the run's precision
(what bf16 autocast and channels_last buy together).
Usage: `python -m bench.overhead [CONFIG] [key=value ...]` (default: the quick VGG
recipe on synthetic data of the same shape).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys

import torch
from torch import nn

from bench.config import ConfigError, whole_number
from bench.configure import load_config
from bench.data import load_data
from bench.models import build_model
from bench.optim import make_optimizer
from bench.device import Runtime, native_bf16, resolve_device
from bench.train import Trainer, build_context, seed_all
from methods import get_method

DEFAULT_OVERRIDES = ["data.name=synthetic", "data.synthetic_train_size=2560", "train.log_every_steps=0"]


def bare_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, batches,
               autocast=contextlib.nullcontext) -> int:
    """What a person writes by hand: forward, loss, backward, step."""
    model.train()
    n = 0
    for x, y in batches:
        with autocast():
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
    fp32_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    other_format = "contiguous" if rt.channels_last else "channels_last"
    other_mf = torch.contiguous_format if rt.channels_last else torch.channels_last
    other_model = copy.deepcopy(model).to(memory_format=other_mf)
    example = rt.prepare(data.normalize(data.train_x[:1]))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    ctx = build_context(cfg, data, model, rt, example, lambda m: 0.0, criterion)
    trainer = Trainer(cfg, data, rt, get_method("dense")(cfg.method, ctx), ctx, model, criterion)
    bare_opt, fp32_opt = make_optimizer(bare_model, cfg.train), make_optimizer(fp32_model, cfg.train)
    other_opt = make_optimizer(other_model, cfg.train)
    steps = ctx.steps_per_epoch
    total = steps * (rounds + 1)
    times: dict[str, list[float]] = {"harness": [], "bare": [], "bare_other_format": [], "bare_fp32": []}
    # Only where the run trains in bf16 is there an fp32 loop to compare with; where bf16 is
    # not native the run is fp32 already (and an emulated bf16 loop would take hours).
    compare_fp32 = rt.precision != "fp32" or rt.memory_format != "contiguous"

    def batches(r: int, prepare=rt.prepare):
        gen = torch.Generator().manual_seed(r)
        return ((prepare(x), y) for x, y in data.train_batches(cfg.train.batch_size, gen, cfg.data.augment))

    for r in range(rounds + 1):                       # round 0 is an untimed warm-up
        t0 = rt.clock()
        trainer.train_epoch(r, total, log=lambda s: None)
        t1 = rt.clock()
        bare_epoch(bare_model, bare_opt, criterion, batches(r), rt.autocast)
        t2 = rt.clock()
        bare_epoch(other_model, other_opt, criterion, batches(r, prepare=lambda x: x.contiguous(memory_format=other_mf)),
                   rt.autocast)
        t2b = rt.clock()
        if compare_fp32:
            bare_epoch(fp32_model, fp32_opt, criterion, batches(r, prepare=lambda x: x))
        t3 = rt.clock()
        if r:
            for key, s in (("harness", t1 - t0), ("bare", t2 - t1), ("bare_other_format", t2b - t2),
                           ("bare_fp32", t3 - t2b)):
                times[key].append(s / steps)
    h, b, o, f = (statistics.median(times[k]) for k in ("harness", "bare", "bare_other_format", "bare_fp32"))
    return {"harness_s_per_step": h, "bare_s_per_step": b, "ratio": h / b,
            "other_format": other_format, "bare_other_format_s_per_step": o, "other_format_ratio": o / b,
            **({"bare_fp32_s_per_step": f, "fp32_ratio": f / b} if compare_fp32 else {}),
            "precision_note": native_bf16(device)[1], **rt.describe(), "steps_per_round": steps, "rounds": rounds,
            "device": str(device), "model": cfg.model.name, "batch_size": cfg.train.batch_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("config", nargs="?", default="configs/quick-vgg.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--rounds", type=whole_number(1), default=5, help="timed rounds after one warm-up round (5)")
    args = p.parse_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = "configs/quick-vgg.yaml"
    try:
        res = measure(args.config, args.overrides, args.rounds)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{res['model']} batch {res['batch_size']} on {res['device']} ({res['precision']}, {res['memory_format']}), "
          f"{res['rounds']} rounds x {res['steps_per_round']} steps, alternating:")
    print(f"  harness {res['harness_s_per_step'] * 1e3:.1f} ms/step   bare loop "
          f"{res['bare_s_per_step'] * 1e3:.1f} ms/step   harness/bare {res['ratio']:.3f}")
    print(f"  bare loop at {res['precision']}, {res['other_format']}: {res['bare_other_format_s_per_step'] * 1e3:.1f} "
          f"ms/step   {res['other_format']}/{res['memory_format']} {res['other_format_ratio']:.2f}x")
    if "fp32_ratio" in res:
        print(f"  bare loop in fp32, contiguous: {res['bare_fp32_s_per_step'] * 1e3:.1f} ms/step   "
              f"fp32/{res['precision']}+{res['memory_format']} {res['fp32_ratio']:.2f}x")
    else:
        print(f"  fp32/bf16 not measured: the run trains in fp32 ({res['precision_note']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
