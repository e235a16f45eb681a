"""Metric declarations: every figure a run records is declared once, here or in a plugin.

A `Metric` says what a figure is called, when it is measured (after every epoch: a
history.csv column and a W&B series; on the final model: a summary.json field), how it
is aggregated over seeds in the report (mean with its 95% t interval, or the mean alone),
whether the report shows it relative to the row's control, how it is formatted and under
which column title, and how W&B summarises it. The harness, the W&B logger and the report
iterate over the declarations; a metric with a `compute` function is measured by the
harness itself, so a new metric is one new file in this package with one `register_metric`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn


EPOCH, FINAL = "epoch", "final"


@dataclass(frozen=True)
class MetricInput:
    """What a metric's `compute` reads: the model as trained so far (unwrapped, on the
    device, in train mode; do not change it), one normalised example batch [1, C, H, W],
    the completed epochs and the history rows so far."""
    model: nn.Module
    example_inputs: torch.Tensor
    epoch: int
    history: list[dict[str, Any]]


def plain(v: float) -> str:
    return f"{v:.4g}"


def fmt_count(v: float) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def fmt_si(v: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def fmt_seconds(v: float) -> str:
    return f"{v:.0f}s" if v >= 10 else f"{v:.1f}s"


def fmt_points(v: float) -> str:
    return f"{100 * v:.2f}"


def fmt_rate(v: float) -> str:
    return f"{v:.0f}"


@dataclass(frozen=True)
class Metric:
    name: str
    when: tuple[str, ...]                   # EPOCH and/or FINAL
    help: str = ""
    title: str = ""                         # the report table's column ("": not a column)
    fmt: Callable[[float], str] = plain
    interval: bool = False                  # report: mean over seeds with its 95% t interval (else the mean)
    relative: bool = False                  # report: also as a ratio to the row's control
    wandb_summary: Optional[str] = None     # W&B define_metric summary, e.g. "max,last"
    wandb_step: Optional[str] = None        # W&B define_metric x-axis (another epoch metric)
    compute: Optional[Callable[[MetricInput], float]] = None   # None: the harness records it itself
    timed: bool = False                     # report: a timing, which a shared CPU or another machine skews


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Declare a metric (names are unique across the harness and every plugin)."""
    if not set(metric.when) <= {EPOCH, FINAL} or not metric.when:
        raise ValueError(f"metric {metric.name}: when must be a non-empty subset of ({EPOCH!r}, {FINAL!r})")
    if METRICS.get(metric.name, metric) != metric:
        raise ValueError(f"metric '{metric.name}' is declared twice")
    METRICS[metric.name] = metric
    return metric


def declared(when: Optional[str] = None) -> list[Metric]:
    """The declared metrics in declaration order (the harness's first), optionally only
    those measured `when`."""
    return [m for m in METRICS.values() if when is None or when in m.when]


def compute_all(when: str, view: MetricInput) -> dict[str, float]:
    """The values of the metrics that compute themselves, at `when`."""
    with torch.no_grad():
        return {m.name: float(m.compute(view)) for m in declared(when) if m.compute is not None}
