"""The report of a suite: runs.csv, a README with one table per model, PNG plots,
and a W&B summary run in the suite's group.

`python -m bench report RESULTS_DIR` (a suite's results folder, or its runs/ folder)
reads every finished run under `RESULTS_DIR/runs/*/summary.json` (and its history.csv)
and writes:

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

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.config import ConfigError
from bench.report.aggregation import (REACH_TOL, add_statistics, aggregate, all_histories, assign_controls,
                                      families, load_runs, seed_values, split_diverged, suite_plan,
                                      time_to_accuracy)
from bench.report.plots import plot
from bench.report.published import (PUBLISHED_FILE, load_published, published_matches, published_section)
from bench.report.rendering import (comparators_section, controls_section, correction_name, data_line,
                                    highlights, markdown_table, ranking_lines, speed_section, statistics_note)
from bench.report.statistics import Comparison, Family, Interval, fit_family, mean_ci, pareto_front
from bench.report.wandb_summary import log_to_wandb
from bench.runs import write_text

REPO = Path(__file__).resolve().parents[2]

__all__ = ["write_report", "locate", "destination", "aggregate", "add_statistics", "markdown_table", "highlights",
           "ranking_lines", "comparators_section", "controls_section", "speed_section", "published_section",
           "published_matches", "load_published", "PUBLISHED_FILE", "mean_ci", "pareto_front", "fit_family",
           "Family", "Comparison", "Interval", "families", "seed_values", "time_to_accuracy", "assign_controls",
           "suite_plan", "REACH_TOL"]


def _finished(folder: Path) -> bool:
    return any(folder.glob("runs/*/summary.json"))


def locate(path: str | Path) -> Path:
    """The results folder to report on: `path` itself, or its parent when `path` is the
    runs/ folder. A folder that does not exist or holds no finished run is a ConfigError
    (one line), not an empty report."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"report: '{path}' is not a folder; give a suite's results folder (e.g. "
                          f"results/cifar10-quick) or the runs/ folder inside it")
    if not _finished(p) and any(p.glob("*/summary.json")):
        p = p.parent                                      # the runs/ folder itself
    if not _finished(p):
        raise ConfigError(f"report: no finished runs under '{p / 'runs'}' (a finished run's folder holds "
                          f"summary.json)")
    return p


def destination(results_dir: Path) -> Path:
    """Where the report of `results_dir` goes: in place for a suite's folder (it has a
    suite.json), else out/report-<folder name> in the repository, which git ignores, so
    that reports on ad-hoc runs do not land in the tracked results/ folder."""
    if (Path(results_dir) / "suite.json").is_file():
        return Path(results_dir)
    return REPO / "out" / f"report-{Path(results_dir).resolve().name}"


def write_report(results_dir: str | Path, suite_name: Optional[str] = None,
                 out_dir: Optional[str | Path] = None) -> Optional[Path]:
    """Read the runs under `results_dir` and write the report files into `out_dir`
    (default: `results_dir`); returns the README's path (None without finished runs)."""
    src = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else src
    runs, histories = load_runs(src)
    wandb_cfg = histories.pop("__wandb__", {})
    if runs.empty:
        print(f"report: no finished runs under {src}/runs")
        return None
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = suite_plan(src)
    runs = assign_controls(runs, meta.get("controls"), meta.get("comparators"))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    n_runs = len(runs)                      # finished and diverged
    name = suite_name or meta.get("suite") or src.name
    runs, diverged = split_diverged(runs)
    if runs.empty:
        write_text(out / "README.md", "\n".join([f"# Results: {name}", "", *diverged]))
        print(f"report: every run under {src}/runs diverged -> {out / 'README.md'}")
        return out / "README.md"
    write_text(out / "histories.csv", all_histories(runs, histories).to_csv(index=False))
    agg = aggregate(runs, histories)
    write_text(out / "table.csv", agg.drop(columns=["tta_s_seeds"], errors="ignore").to_csv(index=False))
    plots = plot(agg, runs, histories, out)
    lines = [f"# Results: {name}", ""]
    if "command" in meta:
        machines = runs["machine"].value_counts() if "machine" in runs else pd.Series(dtype=int)
        several = (f" Its runs ran on {len(machines)} machines: " + "; ".join(f"{n} on {m}" for m, n in machines.items())
                   + ". Accuracy, parameters and MACs do not depend on the machine; timings are taken from one "
                     "(see the speed section)." if len(machines) > 1 else "")
        lines += [f"Produced by `{meta.get('command', '')}` on {meta.get('machine', '')} "
                  f"(devices: {', '.join(sorted(set(map(str, runs['device']))))}), last invoked {meta.get('started', '')} "
                  f"(finished runs are reused, not re-run).{several}", ""]
        planned = meta.get("cells")
        if planned and n_runs < planned:
            lines += [f"**Partial: {n_runs} of the suite's {planned} runs have finished.** Rows, intervals and "
                      f"rankings below cover only those; running the same suite command again resumes it.", ""]
    comps = list(dict.fromkeys(c for cs in agg["comparators"].dropna() for c in str(cs).split(",") if c))
    lines += ["Each figure is measured by the harness, the same way for every method. Ratios in parentheses are "
              "the row's figure ÷ its *control's* (another row of the suite, `dense` unless the suite names one) "
              "of the same model, in every table. "
              + (f"Every row is also compared with the suite's comparators ({', '.join(f'`{c}`' for c in comps)}) "
                 f"at its target. " if comps else "")
              + f"*to control acc*: the first epoch at which a run reached its control's mean final accuracy "
              f"(within {REACH_TOL:.0e}, a floating-point tolerance on accuracy as a fraction), with its training "
              f"wall-clock until then. MACs and params of sparse (DSR) models count non-zero weights in the "
              f"*non-zero* columns only; their MACs are theoretical (dense kernels still run).", "",
              statistics_note(), "", *data_line(agg)]
    published = load_published()
    for model in dict.fromkeys(agg["model"]):
        lines += [f"## {model}", "", *highlights(agg, model, runs), *ranking_lines(agg, runs, model), "",
                  markdown_table(agg, model), *speed_section(agg, model), *comparators_section(agg, model),
                  *published_section(agg, model, published)]
    lines += diverged + ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_text(out / "README.md", "\n".join(lines))
    log_to_wandb(name, runs, plots, out, wandb_cfg)
    print(f"report: {len(runs)} runs -> {out / 'README.md'}")
    return out / "README.md"
