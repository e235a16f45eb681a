"""The report of a suite: runs.csv, a README with one table per model, PNG plots,
and a W&B summary run in the suite's group.

`python -m bench report RESULTS_DIR` (a suite's results folder, or its runs/ folder, or
any folder of run folders) reads every finished run under `RESULTS_DIR/runs/*/summary.json`
(a folder of runs: `RESULTS_DIR/*/summary.json`) and its history.csv, each checked
(bench.records), and writes:

- `runs.csv`: one row per run, every scalar summary field (nested ones flattened);
- `README.md`: per model, one row per (method, target): top-1 with its 95% interval and
  compact letters, parameters, MACs, training wall-clock (min-max over the timed runs),
  training MACs and measured throughput as ratios to the row's control; the row against
  its control (estimated difference, corrected p-value, verdict); time to the control's
  accuracy; per target, the ranking by letters with the smallest difference the suite
  resolves there; the rows against the suite's comparators; the per-run speed table;
  the published figures of configs/published.yaml beside the rows they match;
- `table.csv`: those figures and comparisons, one row per (model, label, target, data);
- plots: accuracy vs non-zero parameters, vs MACs, vs training wall-clock, and accuracy
  over training time (mean over seeds per row, each seed faint).

The jobs live in submodules: `aggregation` (runs to rows), `statistics` (intervals,
the linear model per family, corrected comparisons, letters), `rendering` (the README's
text), `plots`, `published` (the published column) and `wandb_summary`. A suite's
folder gets its report in place; runs without a suite (no suite.json, e.g. what
`python -m bench run` writes to results/runs) get theirs under out/ (see destination).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bench.config import ConfigError

REPO = Path(__file__).resolve().parents[2]

# Public names -> the submodule that defines them, imported on first use: `python -m bench
# report` checks its folder (locate) before pandas, statsmodels and torch are loaded.
_EXPORTS = {
    "aggregation": ("REACH_TOL", "add_statistics", "aggregate", "all_histories", "assign_controls", "families",
                    "load_runs", "seed_values", "split_diverged", "suite_plan", "time_to_accuracy"),
    "plots": ("plot",),
    "published": ("PUBLISHED_FILE", "load_published", "published_matches", "published_section"),
    "rendering": ("comparators_section", "controls_section", "correction_name", "data_line", "highlights",
                  "markdown_table", "ranking_lines", "speed_section", "statistics_note"),
    "statistics": ("Comparison", "Family", "Interval", "fit_family", "mean_ci", "pareto_front"),
    "wandb_summary": ("log_to_wandb",),
    "build": ("write_report",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["locate", "destination", *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"bench.report.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bench.report' has no attribute '{name}'")


def _finished(folder: Path) -> bool:
    return any(folder.glob("runs/*/summary.json"))


def locate(path: str | Path) -> Path:
    """The folder to report on: `path` itself when it holds a runs/ folder of finished runs;
    its parent when `path` is that runs/ folder (the suite's folder, with its suite.json);
    `path` itself when it is a folder of run folders by another name (its runs are read
    from it, never from a runs/ folder beside it). A folder that does not exist or holds no
    finished run is a ConfigError (one line), not an empty report."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"report: '{path}' is not a folder; give a suite's results folder (e.g. "
                          f"results/cifar10-quick) or the runs/ folder inside it")
    if _finished(p):
        return p
    if any(p.glob("*/summary.json")):
        # A runs/ folder: its suite's folder, which holds it. Any other folder of runs is
        # reported on as it is (its parent may hold other runs, or none).
        if p.name == "runs" or p.resolve().name == "runs":     # `results/x/runs`, or `.` inside it
            return p.parent if p.name == "runs" else p.resolve().parent
        return p
    raise ConfigError(f"report: no finished runs under '{p / 'runs'}' or in '{p}' itself (a finished run's "
                      f"folder holds summary.json)")


def destination(results_dir: Path) -> Path:
    """Where the report of `results_dir` goes: in place for a suite's folder (it has a
    suite.json), else out/report-<folder name> in the repository, which git ignores, so
    that reports on ad-hoc runs do not land in the tracked results/ folder."""
    if (Path(results_dir) / "suite.json").is_file():
        return Path(results_dir)
    return REPO / "out" / f"report-{Path(results_dir).resolve().name}"
