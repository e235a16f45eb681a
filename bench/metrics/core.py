"""The harness's own metrics (bench.train records them; see bench.metrics.measure for how
each is measured). Declaration order is the report's column order."""
from __future__ import annotations

from bench.metrics.base import (EPOCH, FINAL, Metric, fmt_count, fmt_points, fmt_rate, fmt_seconds, fmt_si,
                                register_metric)

BOTH = (EPOCH, FINAL)

for _m in (
    # Per epoch (history.csv, W&B series). The wall-clock is the x-axis of time to accuracy.
    Metric("train_wall_s_cum", (EPOCH,), "training seconds so far (steps + transforms)", wandb_summary="max"),
    Metric("acc_after_transform", (EPOCH,), "test accuracy right after a method changed the model",
           wandb_summary="max,last", wandb_step="train_wall_s_cum"),
    Metric("train_loss", (EPOCH,), "mean training loss of the epoch", wandb_summary="min,last"),
    Metric("train_acc", (EPOCH,), "training accuracy of the epoch", wandb_summary="max,last"),
    # Both: the comparison's figures (final: of the final model).
    Metric("test_acc", BOTH, "top-1 test accuracy", fmt=fmt_points, interval=True, relative=True,
           wandb_summary="max,last", wandb_step="train_wall_s_cum"),
    Metric("params_total", BOTH, "parameters", "params", fmt_count, interval=True, relative=True),
    Metric("params_nonzero", BOTH, "non-zero parameters", "non-zero params", fmt_count, interval=True,
           relative=True),
    Metric("macs", BOTH, "MACs per image", "MACs/img", fmt_count, interval=True, relative=True),
    Metric("macs_nonzero", BOTH, "MACs of the non-zero weights per image (theoretical)", fmt=fmt_si,
           interval=True, relative=True),
    Metric("train_wall_s", (FINAL,), "training wall-clock: steps + transforms, evaluation excluded",
           "train wall-clock", fmt_seconds, interval=True, relative=True, timed=True),
    Metric("train_macs", (FINAL,), "training MACs (3x forward MACs per image seen)", "train MACs", fmt_si,
           interval=True, relative=True),
    Metric("throughput_train_img_s", (FINAL,), "measured training images/s of the final model", "train img/s",
           fmt_rate, interval=True, relative=True, timed=True),
    Metric("throughput_infer_img_s", (FINAL,), "measured inference images/s at the evaluation batch",
           "infer img/s", fmt_rate, interval=True, relative=True, timed=True),
    # Final, reported as means over seeds.
    Metric("transform_s", (FINAL,), "seconds in the method's transforms", fmt=fmt_seconds),
    Metric("dense_params", (FINAL,), "parameters of the model as built", fmt=fmt_count),
    Metric("dense_macs", (FINAL,), "MACs per image of the model as built", fmt=fmt_si),
    *(Metric(f"{k}_{s}", (FINAL,), f"{what} ({s}) over repeated timings, ms", fmt=lambda v: f"{v:.1f}",
             timed=True)
      for k, what in (("latency_b1_ms", "inference latency at batch 1"),
                      ("infer_batch_ms", "inference time at the evaluation batch"),
                      ("train_step_ms", "training step time")) for s in ("median", "iqr")),
    Metric("speed_cpu_load", (FINAL,), "1-min load average while the speed was timed", timed=True),
    Metric("speed_cpus", (FINAL,), "CPU count of the machine that timed the speed"),
):
    register_metric(_m)
