"""Writing the report files of a results folder (see bench.report)."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench import scratch_curve, timing
from bench.config import DEFAULT_CONTROL
from bench.report.aggregation import (REACH_TOL, aggregate, all_histories, assign_controls, load_runs,
                                      reference_labels, split_diverged, suite_plan)
from bench.report.plots import plot
from bench.report.statistics import CORRECTION
from bench.report.published import load_published, published_section
from bench.report.rendering import (comparators_section, compute_line, correction_name, data_line, highlights,
                                    markdown_table, precision_line, ranking_lines, speed_section, statistics_note)
from bench.report.wandb_summary import log_to_wandb
from bench.runs import write_text


@dataclass
class Analysis:
    """What the report of a results folder rests on: the suite's plan (suite.json), every
    run (`all_runs`, diverged ones included, with controls and comparators), the lines
    naming diverged runs, the finished runs with the scratch curve's longer ones
    (`every_run`) and without them (`runs`: the equal-epoch rows), the histories, the
    rows' table (`agg`: statistics, verdicts against control, comparators and, with the
    compute-matched columns, the scratch curve) and the compute-matched comparison."""
    meta: dict[str, Any]
    all_runs: pd.DataFrame
    diverged: list[str]
    every_run: pd.DataFrame
    runs: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    wandb_cfg: dict
    agg: Optional[pd.DataFrame] = None
    matched: Optional[pd.DataFrame] = None


def analyse(results_dir: str | Path) -> Optional[Analysis]:
    """The runs under `results_dir` and their statistics (None without finished runs;
    `agg` is None when every run diverged)."""
    src = Path(results_dir)
    runs, histories = load_runs(src)
    wandb_cfg = histories.pop("__wandb__", {})
    if runs.empty:
        return None
    meta: dict[str, Any] = suite_plan(src)
    all_runs = assign_controls(runs, meta.get("controls"), meta.get("comparators"))
    runs, diverged = split_diverged(all_runs)
    a = Analysis(meta, all_runs, diverged, runs, runs, histories, wandb_cfg)
    if runs.empty:
        return a
    # The scratch curve's longer runs get their own section (the compute-matched comparison).
    a.runs = scratch_curve.equal_epoch_runs(runs)
    agg = aggregate(a.runs, histories)
    a.matched = scratch_curve.compute_matched(agg, a.every_run, CORRECTION)
    a.agg = scratch_curve.add_columns(agg, a.matched)
    return a


def write_report(results_dir: str | Path, suite_name: Optional[str] = None,
                 out_dir: Optional[str | Path] = None) -> Optional[Path]:
    """Read the runs under `results_dir` and write the report files into `out_dir`
    (default: `results_dir`); returns the README's path (None without finished runs).

    Everything is read, checked and drawn before any report file is replaced: the texts
    are built in memory and the plots drawn into a temporary folder inside `out_dir`; then
    each file is moved into place, the README last. A damaged input (a summary, a history,
    suite.json, retime.json: bench.records) stops it with its one-line error and leaves
    the previous report as it was."""
    src = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else src
    a = analyse(src)
    if a is None:
        print(f"report: no finished runs under {src}/runs")
        return None
    # The speed table of `bench retime`, where retime.json exists, set against the runs now here.
    speed = [] if a.agg is None else timing.report_lines(src, set(a.every_run["run_id"]), {
        (m, l, None if pd.isna(t) else float(t)) for m, l, t in a.runs[["model", "label", "target"]].itertuples(index=False)})
    name = suite_name or a.meta.get("suite") or src.name
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    drawing = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        texts, plots = report_files(a, name, drawing, speed)
        for p in plots:                     # every file is ready: only now are the old ones replaced
            os.replace(p, out / p.name)
        for fname, text in texts.items():   # README.md last
            write_text(out / fname, text)
    except BaseException:
        shutil.rmtree(drawing, ignore_errors=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(drawing, ignore_errors=True)
    readme = out / "README.md"
    if a.agg is None:
        print(f"report: every run under {src}/runs diverged -> {readme}")
        return readme
    log_to_wandb(name, a.every_run, [out / p.name for p in plots], out, a.wandb_cfg)
    print(f"report: {len(a.every_run)} runs -> {readme}")
    return readme


def shown_command(command: str) -> str:
    """The suite command as the report shows it: a data.root override names a folder of
    the machine that ran it, so it is shown as DATA_ROOT (give yours, or BENCH_DATA_ROOT)."""
    return re.sub(r"(?<!\S)data\.root=\S+", "data.root=DATA_ROOT", command)


def report_files(a: Analysis, name: str, drawing: Path, speed: list[str]) -> tuple[dict[str, str], list[Path]]:
    """The report of `a`: its text files by name (README.md last) and its plots, drawn into
    the folder `drawing`; `speed` is the speed section of retime.json (timing.report_lines)."""
    meta, histories, diverged = a.meta, a.histories, a.diverged
    texts = {"runs.csv": a.all_runs.to_csv(index=False)}
    n_runs = len(a.all_runs)                # finished and diverged
    if a.agg is None:
        texts["README.md"] = "\n".join([f"# Results: {name}", "", *diverged])
        return texts, []
    every_run, runs, agg, matched = a.every_run, a.runs, a.agg, a.matched
    texts["histories.csv"] = all_histories(every_run, histories).to_csv(index=False)
    texts["table.csv"] = agg.drop(columns=["tta_s_seeds"], errors="ignore").to_csv(index=False)
    plots = plot(agg, runs, histories, drawing)
    lines = [f"# Results: {name}", ""]
    if "command" in meta:
        machines = runs["machine"].value_counts() if "machine" in runs else pd.Series(dtype=int)
        several = (f" Its runs ran on {len(machines)} machines: " + "; ".join(f"{n} on {m}" for m, n in machines.items())
                   + ". Parameters and MACs do not depend on the machine, nor does accuracy at one precision "
                     "(see the precision line); timings are taken from one (see the speed section)." if len(machines) > 1 else "")
        lines += [f"Produced by `{shown_command(meta.get('command', ''))}` on {meta.get('machine', '')} "
                  f"(devices: {', '.join(sorted(set(map(str, runs['device']))))}), last invoked {meta.get('started', '')} "
                  f"(finished runs are reused, not re-run).{several}", ""]
    planned = meta.get("cells")
    if planned and n_runs < planned:
        resume = (f"`python -m bench suite {meta['file']}` (with the same overrides) resumes it, reusing the "
                  f"finished runs" if meta.get("file") else "running the same suite command again resumes it")
        lines += [f"**Partial: {n_runs} of the suite's {planned} runs have finished.** Rows, intervals and "
                  f"rankings below cover only those; {resume}.", ""]
    tol = f"{REACH_TOL:.0e}".replace("e-0", "e-")           # 1e-9
    comps = list(dict.fromkeys(c for cs in agg["comparators"].dropna() for c in str(cs).split(",") if c))
    lines += ["Each figure is measured by the harness, the same way for every method. Ratios in parentheses are "
              f"the row's figure ÷ its *control's* (another row of the suite, `{DEFAULT_CONTROL}` unless the suite names one) "
              "of the same model, in every table. "
              + (f"Every row is also compared with the suite's comparators ({', '.join(f'`{c}`' for c in comps)}) "
                 f"at its target. " if comps else "")
              + f"*to control acc*: the first epoch at which a run reached its control's mean final accuracy "
              f"(within {tol}, a floating-point tolerance on accuracy as a fraction), with its training "
              f"wall-clock until then. MACs and params of sparse-training rows (weights held at zero by masks) "
              f"count non-zero weights in the *non-zero* columns only; their MACs are theoretical (dense kernels still run).", "",
              statistics_note(), "", *data_line(agg), *precision_line(every_run), *compute_line(every_run)]
    published = load_published()
    for model in dict.fromkeys(agg["model"]):
        matched_lines, matched_plots = scratch_curve.section(matched, every_run, agg, model, drawing,
                                                             reference_labels(agg), correction_name())
        plots += matched_plots
        lines += [f"## {model}", "", *highlights(agg, model, runs), *ranking_lines(agg, runs, model), "",
                  markdown_table(agg, model), *speed_section(agg, model), *comparators_section(agg, model),
                  *matched_lines, *published_section(agg, model, published)]
    lines += speed
    lines += diverged + ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    texts["README.md"] = "\n".join(lines)
    return texts, plots
