"""Metrics: how each figure is measured (`measure.py`), and the declaration of every
figure a run records (`base.py`; the harness's own in `core.py`).

Every module in this package is imported here, so a new metric is one new file with a
`register_metric(Metric(..., compute=...))`: the harness measures it, history.csv,
summary.json and W&B record it and the report aggregates it over seeds.
"""
from bench.registry import import_plugins
from bench.metrics.base import EPOCH, FINAL, METRICS, Metric, MetricInput, compute_all, declared, register_metric
from bench.metrics.measure import (Clock, IntervalTimer, count_macs, evaluate, layer_macs, measure_speed,
                                   param_counts, peak_memory_mb, reset_peak_memory, unshare_modules)

import_plugins(__name__, __path__)

__all__ = ["EPOCH", "FINAL", "METRICS", "Metric", "MetricInput", "compute_all", "declared", "register_metric",
           "Clock", "IntervalTimer", "count_macs", "evaluate", "layer_macs", "measure_speed", "param_counts",
           "peak_memory_mb", "reset_peak_memory", "unshare_modules"]
