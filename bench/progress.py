"""Progress a person can read: a tqdm bar per epoch on a terminal, plain lines elsewhere.

`$BENCH_PROGRESS` picks: `auto` (the default: bars when stdout is a terminal, so
SLURM logs, CI and tests get the plain per-epoch lines only), `bars` or `plain`.
A suite's cells report through `SuiteProgress`: one line per finished cell with
the elapsed time and an ETA scaled from the suite's own estimate.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

import torch

BAR_REFRESH_S = 0.5   # the bar's loss and accuracy read device values: at most this often


def bars_enabled() -> bool:
    mode = os.environ.get("BENCH_PROGRESS", "auto")
    if mode in ("bars", "plain"):
        return mode == "bars"
    return sys.stdout.isatty()


class EpochBar:
    """One epoch's bar: steps done, running train loss and accuracy, images per second.

    A no-op when disabled. Reading the running sums waits for the device, so the
    postfix is refreshed every BAR_REFRESH_S seconds, never every step."""

    def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                            file=sys.stdout, dynamic_ncols=True)
        self.t0 = self.last = time.monotonic()
        self.images = 0

    def update(self, images: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        if self.bar is None:
            return
        self.images += images
        now = time.monotonic()
        if now - self.last >= BAR_REFRESH_S:
            self.bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}",
                                 acc=f"{float(correct) / max(seen, 1):.3f}",
                                 img_s=f"{self.images / max(now - self.t0, 1e-9):.0f}", refresh=False)
            self.last = now
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def hms(seconds: float) -> str:
    """12s, 4m05s, 2h03m: short enough for a progress line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class SuiteProgress:
    """Elapsed time and ETA over a suite's cells, from per-cell estimates (seconds).

    The ETA is the estimate of the cells still to run, scaled by how the finished
    ones compared with their estimates (estimates are dense-equivalent bounds; the
    ratio corrects them for this machine and these methods)."""

    def __init__(self, estimates: list[float]):
        self.estimates = list(estimates)
        self.done_est = 0.0
        self.done = 0
        self.t0 = time.monotonic()

    def finish(self, index: int) -> str:
        """Mark cell `index` finished; return 'elapsed E, ETA T'."""
        self.done += 1
        self.done_est += self.estimates[index]
        elapsed = time.monotonic() - self.t0
        left = sum(self.estimates) - self.done_est
        if self.done == len(self.estimates):
            return f"elapsed {hms(elapsed)}, suite done"
        scale = elapsed / self.done_est if self.done_est > 0 else None
        eta: Optional[float] = left * scale if scale else elapsed / self.done * (len(self.estimates) - self.done)
        return f"elapsed {hms(elapsed)}, ETA ~{hms(eta)}"
