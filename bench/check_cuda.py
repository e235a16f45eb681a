"""First-run check for a GPU machine: `make check-cuda` before a paper-scale suite.

Four short checks on synthetic data, each printed as PASS/FAIL with its step time:
1. the smoke suite (every method, then the report) on CUDA in bf16 and channels_last;
2. one dense run with `torch.compile`;
3. one DDP run over all visible GPUs (torchrun, NCCL), whose ranks must end with equal weights.
Exit 0 when all pass. On a machine without CUDA it refuses in one line (exit 2).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CUDA = ["device=cuda", "train.precision=bf16", "train.memory_format=channels_last", "wandb.mode=disabled"]
SMALL = ["data.name=synthetic", "data.synthetic_train_size=4096", "data.synthetic_test_size=512", "train.epochs=2",
         "train.log_every_steps=0"]


def bench_cmd(args: list[str], nproc: int = 1) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "bench", *args]
    return [sys.executable, "-m", "bench", *args]


def step_ms(summaries: list[dict]) -> str:
    """Median training step time of the runs (from their measured training throughput)."""
    ms = sorted(1e3 * s["config"]["train"]["batch_size"] / s["throughput_train_img_s"] for s in summaries)
    return f"{ms[len(ms) // 2]:.1f} ms/step" if ms else "no runs"


def check(name: str, cmd: list[str], out: Path, verify=lambda summaries: None) -> bool:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    summaries = [json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))]
    problem = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1] if proc.returncode else None
    if problem is None:
        problem = verify(summaries)
    status = "PASS" if problem is None else "FAIL"
    print(f"{status}  {name:44s} {step_ms(summaries):>16s}  {time.time() - t0:6.0f}s wall"
          + (f"\n      {problem}\n      log: {out}/log.txt" if problem else ""), flush=True)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    return problem is None


def main() -> int:
    if not torch.cuda.is_available():
        print("error: check-cuda needs a CUDA GPU and torch.cuda.is_available() is False here; "
              "on a CPU-only machine run `make test` instead", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    tmp = Path(tempfile.mkdtemp(prefix="check-cuda-"))
    checks = []
    for name, folder, cmd, verify in [
        ("smoke suite, bf16 + channels_last", "suite",
         bench_cmd(["suite", "configs/suites/cifar10-smoke.yaml", "--results-dir", str(tmp / "suite"), *CUDA]),
         lambda s: None if s and all(x["precision"] == "bf16" and x["memory_format"] == "channels_last" for x in s)
         else "runs did not record bf16 + channels_last"),
        ("torch.compile, dense VGG-11", "compile",
         bench_cmd(["run", "configs/smoke.yaml", *SMALL, *CUDA, "train.compile=true", f"output_dir={tmp / 'compile'}"]),
         lambda s: None if s else "no summary written"),
        (f"DDP over {gpus} GPU(s), NCCL", "ddp",
         bench_cmd(["run", "configs/smoke.yaml", *SMALL, *CUDA, f"output_dir={tmp / 'ddp'}"], nproc=gpus),
         lambda s: None if s and len(set(s[0]["rank_weight_checksums"])) == len(set(s[0]["rank_buffer_checksums"])) == 1
         else "ranks ended with different weights or buffers"),
    ]:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        checks.append(check(name, cmd, tmp / folder, verify))
    print(f"{sum(checks)}/{len(checks)} checks passed; outputs in {tmp}")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
