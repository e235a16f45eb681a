"""First-run check for a GPU machine: `make check-cuda` before a paper-scale suite.

Short checks on synthetic data, each printed as PASS, FAIL or SKIP with its step time:
1. the smoke suite (every method, then the report) on CUDA in the device's best precision
   and memory format (`auto`: bf16 + channels_last where the GPU has bf16 units, else
   fp32), which every run must have recorded;
2. one dense run with `torch.compile`;
3. one DDP run over all visible GPUs (torchrun, NCCL), whose ranks must end with equal
   weights and buffers; SKIP on a machine with fewer than 2 GPUs (one process would not
   start NCCL, so it could not show anything about it);
4. resume: a method that changes the model (pcn) is interrupted after the epoch of its
   transform and resumed, and must end with the weights of an uninterrupted run (both in
   deterministic mode, see `deterministic`);
5. a ResNet-18 run (residual blocks, projection shortcuts, adaptive pooling).
A check FAILs, with one line saying why, when a command fails, a run diverged or wrote
no summary, or what it recorded is wrong; the later checks run regardless. Exit 0 when
none failed. On a machine without CUDA it refuses in one line (exit 2).

`python -m bench.check_cuda [--timeout S]`: each command of a check is stopped after S
seconds (default 900) and the check FAILs, so that one hung check cannot take the time
of the ones after it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
CUDA = ["device=cuda", "train.precision=auto", "train.memory_format=auto", "wandb.mode=disabled"]
SMALL = ["data.name=synthetic", "data.synthetic_train_size=4096", "data.synthetic_test_size=512", "train.epochs=2",
         "train.log_every_steps=0"]
RESUME = ["method.name=pcn", "method.calibration_images=1024", "train.epochs=3"]   # pcn transforms after epoch 1
RESNET = ["model.name=resnet18", "model.width=0.5"]

Verify = Callable[[list[dict]], Optional[str]]


def bench_cmd(args: list[str], nproc: int = 1) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "bench", *args]
    return [sys.executable, "-m", "bench", *args]


def train_cmd(overrides: list[str], max_epochs: Optional[int] = None) -> list[str]:
    """One run of configs/smoke.yaml with `overrides`, in deterministic mode, stopped after
    `max_epochs` epochs (resumable) when given: this module's own `train` entry point."""
    return [sys.executable, "-m", "bench.check_cuda", "train", *(["--max-epochs", str(max_epochs)] if max_epochs else []),
            "configs/smoke.yaml", *overrides]


def deterministic() -> None:
    """Deterministic CUDA kernels for this process: cuDNN's deterministic algorithms, no
    autotuning (it may pick different kernels in two processes), cuBLAS with a fixed
    workspace, and PyTorch's deterministic implementations (a warning, not an error,
    where an op has none). Two runs from the same state are then bit-identical."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def step_ms(summaries: list[dict]) -> str:
    """Median training step time of the finished runs (from their measured training throughput)."""
    ms = sorted(1e3 * s["config"]["train"]["batch_size"] / s["throughput_train_img_s"] for s in summaries
                if s.get("throughput_train_img_s") and "config" in s)
    return f"{ms[len(ms) // 2]:.1f} ms/step" if ms else "no timed runs"


def not_finished(summaries: list[dict]) -> Optional[str]:
    """Why the runs are not a result: none written, or one that did not finish (diverged)."""
    if not summaries:
        return "no run wrote a summary.json"
    for s in summaries:
        if s.get("status", "finished") != "finished":
            return f"run {s.get('run_id', '?')}: {s.get('message') or s.get('status')}"
    return None


def check(name: str, cmds: list[list[str]], out: Path, verify: Verify = lambda summaries: None,
          timeout_s: float = 900.0) -> str:
    """Run `cmds` in turn (stopping at the first that fails or outlasts `timeout_s`), then
    judge the summaries they wrote under `out`; print one PASS/FAIL line (and why) and
    return the status."""
    t0 = time.time()
    log, problem = [], None
    for cmd in cmds:
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "WANDB_MODE": "disabled"})
        except subprocess.TimeoutExpired as e:
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            log.append(f"$ {' '.join(cmd)}\n{text(e.stdout)}{text(e.stderr)}")
            problem = f"timed out after {timeout_s:.0f} s (--timeout)"
            break
        log.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode:
            problem = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            break
    summaries: list[dict] = []
    if problem is None:
        try:
            summaries = [json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))]
            problem = not_finished(summaries) or verify(summaries)
        except Exception as e:        # a summary without a key the check reads is a failure, not a crash
            problem = f"unreadable result: {type(e).__name__}: {e}"
    status = "PASS" if problem is None else "FAIL"
    report(status, name, step_ms(summaries), time.time() - t0, problem and f"{problem}\n      log: {out}/log.txt")
    (out / "log.txt").write_text("\n".join(log))
    return status


def report(status: str, name: str, timing: str, wall_s: float, why: Optional[str] = None) -> None:
    print(f"{status}  {name:44s} {timing:>16s}  {wall_s:6.0f}s wall" + (f"\n      {why}" if why else ""), flush=True)


def best_precision() -> tuple[str, str]:
    """(precision, memory format) that `auto` resolves to on this machine's first GPU."""
    from bench.device import native_bf16
    return ("bf16" if native_bf16(torch.device("cuda", 0))[0] else "fp32"), "channels_last"


def same_weights(a: Path, b: Path) -> Optional[str]:
    """None if the checkpoints under `a` and `b` hold bit-identical tensors, else where they differ."""
    from bench.runs import load_checkpoint
    (ca,), (cb,) = list(a.rglob("checkpoint.pt")), list(b.rglob("checkpoint.pt"))
    wa = load_checkpoint(ca).state_dict()
    wb = load_checkpoint(cb).state_dict()
    if wa.keys() != wb.keys():
        return "the resumed model has other parameters or buffers than the uninterrupted one"
    for k in wa:
        if not torch.equal(wa[k], wb[k]):
            diff = (wa[k].double() - wb[k].double()).abs().max() if wa[k].is_floating_point() else "-"
            return f"{k} differs after resume (max |difference| {diff})"
    return None


def checks(tmp: Path, gpus: int) -> list[tuple[str, str, list[list[str]], Verify, Optional[str]]]:
    """(name, folder, commands, verify, reason to skip) of every check."""
    precision, memory_format = best_precision()
    out = lambda folder: f"output_dir={tmp / folder}"
    return [
        (f"smoke suite, {precision} + {memory_format}", "suite",
         [bench_cmd(["suite", "configs/suites/cifar10-smoke.yaml", "--results-dir", str(tmp / "suite"), *CUDA])],
         lambda s: None if all((x["precision"], x["memory_format"]) == (precision, memory_format) for x in s)
         else f"runs did not record {precision} + {memory_format}", None),
        ("torch.compile, dense VGG-11", "compile",
         [bench_cmd(["run", "configs/smoke.yaml", *SMALL, *CUDA, "train.compile=true", out("compile")])],
         lambda s: None if s[0]["compile"] and "compile_s" in s[0] else "the run did not record a compiled warm-up",
         None),
        (f"DDP over {gpus} GPUs, NCCL", "ddp",
         [bench_cmd(["run", "configs/smoke.yaml", *SMALL, *CUDA, out("ddp")], nproc=gpus)],
         lambda s: (f"the run had world size {s[0]['world_size']} on {s[0]['env']['device']}, not {gpus} GPUs"
                    if s[0]["world_size"] != gpus or not s[0]["env"]["device"].startswith("cuda") else
                    None if len(set(s[0]["rank_weight_checksums"])) == len(set(s[0]["rank_buffer_checksums"])) == 1
                    else "ranks ended with different weights or buffers"),
         None if gpus >= 2 else f"needs 2 GPUs, this machine has {gpus}"),
        ("resume pcn after its transform, exact", "resume",
         [train_cmd([*SMALL, *CUDA, *RESUME, out("resume/whole")]),
          train_cmd([*SMALL, *CUDA, *RESUME, out("resume/parts")], max_epochs=1),
          train_cmd([*SMALL, *CUDA, *RESUME, out("resume/parts")])],
         lambda s: same_weights(tmp / "resume" / "whole", tmp / "resume" / "parts"), None),
        ("ResNet-18, dense", "resnet",
         [bench_cmd(["run", "configs/smoke.yaml", *SMALL, *CUDA, *RESNET, out("resnet")])],
         lambda s: None, None),
    ]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.check_cuda", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="stop a check whose commands outlast this many seconds (default: 900)")
    timeout_s = parser.parse_args(argv).timeout
    if not torch.cuda.is_available():
        print("error: check-cuda needs a CUDA GPU and torch.cuda.is_available() is False here; "
              "on a CPU-only machine run `make test` instead", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    tmp = Path(tempfile.mkdtemp(prefix="check-cuda-"))
    statuses = []
    for name, folder, cmds, verify, skip in checks(tmp, gpus):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        if skip:
            report("SKIP", name, "", 0.0, skip)
            statuses.append("SKIP")
        else:
            statuses.append(check(name, cmds, tmp / folder, verify, timeout_s))
    passed, skipped = statuses.count("PASS"), statuses.count("SKIP")
    print(f"{passed}/{len(statuses) - skipped} checks passed" + (f", {skipped} skipped" if skipped else "")
          + f"; outputs in {tmp}")
    return 1 if "FAIL" in statuses else 0


def train_main(argv: list[str]) -> int:
    """`python -m bench.check_cuda train [--max-epochs N] CONFIG.yaml key=value ...`: one run
    in deterministic mode (the resume check's runs)."""
    max_epochs = None
    if argv[:1] == ["--max-epochs"]:
        max_epochs, argv = int(argv[1]), argv[2:]
    deterministic()
    from bench.configure import load_config
    from bench.train import train
    train(load_config(argv[0], argv[1:]), max_epochs=max_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
