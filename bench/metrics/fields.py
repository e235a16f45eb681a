"""What every key of a run's history.csv and summary.json means.

The measured figures are declared as `Metric`s (core.py and plugins); the keys the harness
writes beside them (identity, bookkeeping, timings that are not compared, the run's
environment) are declared here as `Field`s. `python -m bench fields` prints both, so a key
that is neither is a key nobody explains (tests/test_first_hour.py checks a run's keys).

A history row describes the model trained in that epoch, as it was at the epoch's end
before the method changed it; the `*_after_transform` keys describe the model the method
returned at the epoch's end (they are empty in rows without a change).
"""
from __future__ import annotations

from dataclasses import dataclass

HISTORY, SUMMARY = "history", "summary"


@dataclass(frozen=True)
class Field:
    name: str
    where: tuple[str, ...]      # HISTORY and/or SUMMARY
    help: str


FIELDS: dict[str, Field] = {}


def declare_field(name: str, where: tuple[str, ...], help: str) -> Field:
    """Declare a key the harness writes that is not a Metric (names unique)."""
    if name in FIELDS:
        raise ValueError(f"field '{name}' is declared twice")
    FIELDS[name] = Field(name, where, help)
    return FIELDS[name]


H, S, HS = (HISTORY,), (SUMMARY,), (HISTORY, SUMMARY)
for _name, _where, _help in (
    # history.csv: one row per completed epoch
    ("epoch", H, "completed epochs (1-based)"),
    ("epoch_s", H, "seconds of this epoch's optimizer steps (after_step hooks included, evaluation excluded)"),
    ("images", H, "training images seen in this epoch (all ranks)"),
    ("lr", H, "learning rate of the epoch's last step"),
    ("train_macs_cum", H, "training MACs so far (3x the forward MACs per image seen)"),
    ("params_after_transform", H, "parameters of the model the method returned at the epoch's end "
                                  "(the model acc_after_transform was measured on)"),
    ("params_nonzero_after_transform", H, "non-zero parameters of that model"),
    ("macs_after_transform", H, "MACs per image of that model"),
    ("transform_s", H, "seconds of the method's change at this epoch's end (empty: none); the summary's "
                       "transform_s is the run's total"),
    ("after_step_s", HS, "seconds in the method's after_step hook (history: this epoch; summary: the run)"),
    # summary.json: the run's identity
    ("status", S, "finished, or diverged (non-finite training loss; then no accuracy is recorded)"),
    ("run_id", S, "the run folder's name: METHOD-MODEL-sSEED-HASH, the hash covering what the run computes"),
    ("method", S, "method.name"),
    ("model", S, "model.name"),
    ("dataset", S, "data.name"),
    ("label", S, "the row label in reports and W&B (a suite's method label, else the method name)"),
    ("seed", S, "seed"),
    ("target", S, "the parameter target asked for, as a fraction of dense_params (null: none)"),
    ("group", S, "W&B group (a suite's name)"),
    ("epochs", S, "train.epochs, the epoch budget"),
    # summary.json: results beyond the declared metrics
    ("best_test_acc", S, "highest test accuracy of any epoch, before or right after a transform (not a "
                         "result to compare: test_acc is)"),
    ("params_trainable", S, "parameters of the final model that training updates (frozen ones, such as "
                            "PCN's projections, excluded)"),
    ("macs_nonzero_note", S, "how macs_nonzero is meant: theoretical, dense kernels still run the zeros"),
    ("compression", S, "dense_params / params_nonzero: how many times fewer non-zero parameters the final "
                       "model has than the model as built (1.0: none removed)"),
    ("sparsity", S, "share of the final model's parameters that are zero: 1 - params_nonzero / params_total"),
    ("eval_s", S, "seconds spent evaluating (not part of train_wall_s)"),
    ("method_s", S, "seconds in the method's code: transform_s + after_step_s"),
    ("epoch_s_mean", S, "mean of the epochs' epoch_s"),
    ("train_macs_nonzero", S, "training MACs counting the non-zero weights only (theoretical)"),
    ("transforms", S, "one record per model change: when, epoch, seconds, accuracy and parameters after it"),
    ("speed_batch_sizes", S, "batch sizes of the speed timings (latency, infer, train)"),
    ("peak_rss_mb", S, "CPU runs: peak resident memory of the process, MiB (dataset included)"),
    ("peak_cuda_mem_mb", S, "CUDA runs: peak memory allocated on the device, MiB"),
    ("method_summary", S, "the method's own statistics (kept dimensions, schedules, ...; see the method's "
                          "`summary`, `python -m bench methods NAME`)"),
    ("precision", S, "what train.precision resolved to (fp32 or bf16)"),
    ("memory_format", S, "what train.memory_format resolved to (contiguous or channels_last)"),
    ("compile", S, "whether the model ran under torch.compile"),
    ("compile_s", S, "compiled runs: seconds spent compiling (untimed warm-up steps), not part of train_wall_s"),
    ("architecture", S, "the deployed network as a record of layer shapes (bench.architecture): rebuilt, "
                        "without the method's code, by `bench retime` and load_checkpoint"),
    ("world_size", S, "processes that trained the run (1; more under torchrun)"),
    ("rank_weight_checksums", S, "one sum of the final weights per rank: equal values mean the ranks agree"),
    ("rank_buffer_checksums", S, "one digest of the final buffers per rank: equal values mean the ranks agree"),
    ("env", S, "the machine and code: git_commit ('-dirty': uncommitted changes), versions, CPU, device"),
    ("config", S, "the run's whole config as validated (defaults filled in)"),
    # summary.json of a diverged run
    ("diverged_epoch", S, "diverged runs: the epoch whose loss became non-finite"),
    ("diverged_step", S, "diverged runs: the first step with a non-finite loss"),
    ("steps_total", S, "diverged runs: the run's step budget"),
    ("epochs_completed", S, "diverged runs: epochs completed before it"),
    ("message", S, "diverged runs: what happened and what to change"),
):
    declare_field(_name, _where, _help)

# Keys a method adds to history rows: '<method>/<figure>' (its `epoch_metrics`).
METHOD_PREFIX_HELP = "the method's own per-epoch figure (its `epoch_metrics`; see the method's module docstring)"
