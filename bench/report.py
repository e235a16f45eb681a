"""The report of a suite: runs.csv, a README with one table per model, PNG plots,
and a W&B summary run in the suite's group.

`python -m bench report RESULTS_DIR` reads every finished run under
`RESULTS_DIR/runs/*/summary.json` (and its history.csv) and writes:

- `runs.csv`: one row per run, every scalar summary field (nested ones flattened);
- `README.md`: per model, one row per (method, target): top-1, parameters, MACs,
  training wall-clock, training MACs and measured throughput, each the mean over n
  seeds with its 95% t interval and relative to the row's control; the paired
  difference in top-1 to the control over seeds with its interval and a verdict
  (better / worse / not distinguishable); time to the control's accuracy (epochs and
  training seconds until the run first reaches its control's mean final accuracy);
  per target, the rows in "tied with the best" tiers (or, with one seed, a sentence
  saying the suite cannot separate methods); whether each method beats the small
  dense model and random pruning at its target (`EXTRA_CONTROLS`); and the published
  figures of configs/published.yaml beside the rows they match;
- `table.csv`: those figures, intervals and comparisons, one row per (model, label, target);
- plots: accuracy vs non-zero parameters, vs MACs, vs training wall-clock (one line
  per method across targets, dense as a reference point; error bars: 95% intervals;
  the Pareto front circled), and accuracy over training time per method.

A row's control is another label of the suite (`control:` in the suite file,
`dense` by default): the run's own record (`control` in its summary or config),
else the suite's plan (`controls` in suite.json), else `dense`. A control that ran
at targets (e.g. snp for snp_nocomp) is compared at the row's own target.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats

from bench.config import flatten, read_yaml
from bench.metrics import FINAL, declared
from bench.metrics.base import fmt_points, fmt_seconds
from bench.runs import write_text

DENSE_LABEL = "dense"
# Controls that run at each target and that every method row at that target is also compared
# with, beside its declared control (issue 18, METHODS.md sec. 7): the small dense model
# trained from scratch (Liu et al., ICLR 2019) and random structured pruning.
EXTRA_CONTROLS = ("dense_small", "random_filter")
CONFIDENCE = 0.95
# Published figures (configs/published.yaml) sit beside a row of the same model and method
# label whose measured kept fraction of what the source counts is within this (relative).
PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "configs" / "published.yaml"
PUBLISHED_MATCH_TOL = 0.10
NAN = float("nan")


# --------------------------------------------------------------------------- statistics over seeds
@dataclass(frozen=True)
class Interval:
    """A mean over n values and its two-sided confidence interval [lo, hi]; the bounds are
    NaN for n < 2 (one value has no spread to estimate)."""
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(values: Iterable[float], level: float = CONFIDENCE) -> Interval:
    """The mean and its `level` interval from Student's t with n - 1 degrees of freedom:
    mean +- t_{(1+level)/2, n-1} s / sqrt(n), s the sample standard deviation (ddof 1).
    NaN values are left out."""
    x = np.array([float(v) for v in values if v == v], dtype=float)
    if len(x) == 0:
        return Interval(NAN, NAN, NAN, 0)
    m = float(x.mean())
    if len(x) < 2:
        return Interval(m, NAN, NAN, 1)
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(m, m - half, m + half, len(x))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = CONFIDENCE) -> Interval:
    """a - b paired by seed (same seed: same initialisation and data order) over the seeds
    both have: the mean of the per-seed differences and its t interval (the paired t-test's)."""
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds], level)


def verdict(d: Interval) -> str:
    """better / worse when the interval of a difference excludes 0, else not distinguishable."""
    if d.n < 2:
        return "1 seed: cannot tell" if d.n == 1 else "no common seed"
    if d.lo > 0:
        return "better"
    if d.hi < 0:
        return "worse"
    return "not distinguishable"


def tiers(values: Mapping[str, Mapping[int, float]], level: float = CONFIDENCE) -> list[list[str]]:
    """Labels in "tied with the best" tiers: tier 1 is the label with the best mean and every
    label whose paired difference to it is not significantly negative at `level` (its
    interval reaches 0, or cannot be computed); tier 2 is the same among the rest, and so
    on. Each tier is in decreasing mean order."""
    means = {lab: float(np.mean(list(v.values()))) for lab, v in values.items()}
    remaining = sorted(values, key=lambda lab: -means[lab])
    out = []
    while remaining:
        best = remaining[0]
        group = [best] + [lab for lab in remaining[1:]
                          if not paired_difference(values[lab], values[best], level).hi < 0]
        out.append(group)
        remaining = [lab for lab in remaining if lab not in group]
    return out


def pareto_front(x: Iterable[float], y: Iterable[float]) -> np.ndarray:
    """Mask of the points on the Pareto front for "less x, more y": no other point has an x
    no larger and a y no smaller, one of them strictly."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


def seed_values(runs: pd.DataFrame, metric: str = "test_acc") -> dict[tuple, dict[int, float]]:
    """(model, label, target_key) -> {seed: value}; target_key -1 for a run without a target."""
    keys = runs["target"].map(lambda t: float(t) if _has_target(t) else -1.0)
    out: dict[tuple, dict[int, float]] = {}
    means = runs.assign(_k=keys).groupby(["model", "label", "_k", "seed"])[metric].mean()
    for (model, label, key, seed), v in means.items():
        if v == v:
            out.setdefault((model, label, float(key)), {})[int(seed)] = float(v)
    return out


def control_seeds(values: dict[tuple, dict[int, float]], model: str, control: str,
                  target_key: float) -> dict[int, float]:
    """A control's per-seed values for a row: at the row's target where the control ran
    there (dense_small, random_filter), else its run without a target (dense)."""
    return values.get((model, control, target_key)) or values.get((model, control, -1.0)) or {}


def reference_labels(agg: pd.DataFrame) -> set[str]:
    """Labels that are references, not candidates: dense*, any row's control, the extra controls."""
    labels = set(agg["label"])
    return ({lab for lab in labels if lab.startswith(DENSE_LABEL)} | set(agg.get("control", pd.Series(dtype=object)))
            | (set(EXTRA_CONTROLS) & labels))


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rows, histories = [], {}
    for path in sorted(Path(results_dir).glob("runs/*/summary.json")):
        s = json.loads(path.read_text())
        histories.setdefault("__wandb__", s.get("config", {}).get("wandb", {}))
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in flatten({k: v for k, v in s.items() if k not in ("env", "config")}).items()}
        row.setdefault("control", s.get("config", {}).get("control") or None)
        row["run_dir"] = str(path.parent)
        env = s.get("env", {})
        row["device"] = env.get("device")
        row["machine"] = f"{env.get('gpu') or env.get('cpu') or 'CPU not recorded'} ({env.get('platform', '?')})"
        rows.append(row)
        hist = path.parent / "history.csv"
        if hist.is_file():
            histories[s["run_id"]] = pd.read_csv(hist)
    return pd.DataFrame(rows), histories


def assign_controls(runs: pd.DataFrame, plan: Optional[dict[str, str]] = None) -> pd.DataFrame:
    """`runs` with a `control` column: each run's recorded control, else the suite plan's
    for its label, else `dense`."""
    plan = plan or {}
    recorded = runs["control"] if "control" in runs else pd.Series(None, index=runs.index, dtype=object)
    fallback = runs["label"].map(lambda lab: plan.get(lab, DENSE_LABEL))
    return runs.assign(control=recorded.where(recorded.notna() & (recorded != ""), fallback))


def time_to_accuracy(hist: pd.DataFrame, target_acc: float) -> tuple[Optional[int], Optional[float]]:
    """First epoch (and cumulative training seconds) at which the run's model reached
    `target_acc` (after a transform, the transformed model's accuracy counts)."""
    acc = hist["test_acc"]
    if "acc_after_transform" in hist:
        acc = hist["acc_after_transform"].fillna(hist["test_acc"])
    hit = hist[acc >= target_acc]
    if hit.empty:
        return None, None
    first = hit.iloc[0]
    return int(first["epoch"]), float(first["train_wall_s_cum"])


def final_metrics(interval: Optional[bool] = None, relative: Optional[bool] = None) -> list[str]:
    """Names of the declared final-model metrics (bench.metrics), optionally only those the
    report gives with an interval / relative to the control."""
    return [m.name for m in declared(FINAL) if (interval is None or m.interval == interval)
            and (relative is None or m.relative == relative)]


def aggregate(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, label, target): means over seeds with their 95% intervals, and
    each row against its control (the mean over the control label's runs of the same model;
    the paired difference over seeds, see add_statistics)."""
    runs = assign_controls(runs)
    runs["target"] = runs["target"].astype(object).where(runs["target"].notna(), None)
    runs["target_key"] = runs["target"].map(lambda t: -1.0 if t is None else float(t))
    runs = prefer_comparable_timings(runs)
    rel_metrics = [m for m in final_metrics(relative=True) if m in runs]
    reference = runs.groupby(["model", "label", "target_key"])[rel_metrics].mean()

    def ref_key(model: str, control: str, target_key: float) -> tuple:
        """The control's row for a row at `target_key`: at the same target where the control
        ran there (a control with targets, e.g. snp for snp_nocomp), else its target-less row."""
        key = (model, control, target_key)
        return key if key in reference.index else (model, control, -1.0)

    control_acc = reference["test_acc"].to_dict()
    tta_epoch, tta_s = [], []
    for _, r in runs.iterrows():
        ref = control_acc.get(ref_key(r["model"], r["control"], r["target_key"]))
        e, s = (None, None) if ref is None or r["run_id"] not in histories else time_to_accuracy(
            histories[r["run_id"]], ref)
        tta_epoch.append(e)
        tta_s.append(s)
    runs["tta_epoch"], runs["tta_s"] = tta_epoch, tta_s
    runs.loc[runs["timings_dropped"] == 1, "tta_s"] = float("nan")     # a wall-clock, see prefer_comparable_timings
    metrics = [m for m in final_metrics() if m in runs] + ["tta_s", "tta_epoch"]
    g = runs.groupby(["model", "label", "target_key"], dropna=False)
    agg = g[metrics].mean()
    agg["control"] = g["control"].first()
    if "dataset" in runs:
        agg["dataset"] = g["dataset"].first()
    agg["test_acc_std"] = g["test_acc"].std(ddof=1).fillna(0.0)
    agg["seeds"] = g["seed"].nunique()
    agg["reached"] = g["tta_epoch"].apply(lambda s: int(s.notna().sum()))
    agg["timings_dropped"] = g["timings_dropped"].sum()
    if "machine" in runs:
        agg["machines"] = g["machine"].nunique()
    if "timing_machine" in runs:
        agg["timing_machine"] = g["timing_machine"].first()
    agg = agg.reset_index()
    keys = [ref_key(*k) for k in zip(agg["model"], agg["control"], agg["target_key"])]
    for m in rel_metrics:
        ref = pd.Series([reference[m].get(k, float("nan")) for k in keys], index=agg.index, dtype=float)
        agg[m + "_rel"] = (agg[m] / ref).where(ref != 0)
    agg["test_acc_delta"] = agg["test_acc"] - pd.Series(
        [reference["test_acc"].get(k, float("nan")) for k in keys], index=agg.index, dtype=float)
    agg["target"] = agg["target_key"].map(lambda t: None if t < 0 else t)
    agg = add_statistics(agg, runs)
    controls = reference_labels(agg)
    agg["_o"] = agg["label"].map(lambda lab: 0 if lab == DENSE_LABEL else 1 if lab in controls else 2)
    return agg.sort_values(["model", "_o", "label", "target_key"], ascending=[True, True, True, False]).drop(columns="_o")


def shared_cpu(runs: pd.DataFrame) -> pd.Series:
    """Runs whose speed was timed on a shared CPU: 1-min load average above the CPU count
    (by more than half a process, the timing process itself)."""
    if "speed_cpu_load" not in runs:
        return pd.Series(False, index=runs.index)
    return (runs["speed_cpu_load"] > runs["speed_cpus"] + 0.5).fillna(False).astype(bool)


def prefer_comparable_timings(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep the timings (the metrics declared `timed`, the training wall-clock among them) that
    compare like with like. Timings compare on one machine only, and other processes skew
    them by far more than the spread over seeds, so each row (model, label, target) keeps
    the timings of its runs timed on the *timing machine* (the one that timed the most of
    the suite's runs on an unshared CPU) without load, where it has any; else its runs
    timed on that machine under load (the report flags a shared CPU); else its own. The
    other runs' timings are left out (`timings_dropped`)."""
    runs = runs.copy()
    runs["timings_dropped"] = 0
    if "speed_cpu_load" not in runs:
        return runs
    machine = runs["machine"] if "machine" in runs else pd.Series("", index=runs.index)
    clean = runs["speed_cpu_load"].notna() & ~shared_cpu(runs)
    if not clean.any():
        return runs
    reference = machine[clean].value_counts().idxmax()
    runs["timing_machine"] = reference
    on_ref = (machine == reference) & runs["speed_cpu_load"].notna()
    good = clean & on_ref
    def in_row(mask: pd.Series) -> pd.Series:
        """Whether the run's row (model, label, target) has any run in `mask`."""
        return mask.groupby([runs["model"], runs["label"], runs["target_key"]]).transform("any").astype(bool)
    # Unloaded runs on the timing machine; else that machine's loaded ones (flagged); else the row's own.
    keep = good.where(in_row(good), on_ref.where(in_row(on_ref), True))
    drop = ~keep
    timed = [m.name for m in declared(FINAL) if m.timed and m.name in runs]
    runs.loc[drop, timed] = float("nan")
    runs["timings_dropped"] = drop.astype(int)
    return runs


def add_statistics(agg: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Columns over seeds for every aggregated row:

    - `<metric>_ci`: half-width of the 95% t interval of the mean (NaN for one seed);
      `test_acc_lo`/`test_acc_hi` its bounds;
    - `test_acc_diff`, `_lo`, `_hi`, `_n`, `vs_control`: the paired difference to the row's
      own control over their common seeds, its interval and the verdict (empty for a row
      that is its own control);
    - `vs_<c>_diff`, `_lo`, `_hi`, `_n`, `_verdict` for c = dense and each extra control
      (dense_small, random_filter): the same against c, at the row's target (rows with a
      target only; c's own row is left empty)."""
    values = seed_values(runs)
    keys = runs["target"].map(lambda t: float(t) if _has_target(t) else -1.0)
    cols: dict[str, list] = {}

    def put(name: str, v: Any) -> None:
        cols.setdefault(name, []).append(v)

    def put_diff(prefix: str, d: Optional[Interval], verdict_col: str) -> None:
        put(prefix, NAN if d is None else d.mean)
        put(prefix + "_lo", NAN if d is None else d.lo)
        put(prefix + "_hi", NAN if d is None else d.hi)
        put(prefix + "_n", 0 if d is None else d.n)
        put(verdict_col, "" if d is None else verdict(d))

    for _, r in agg.iterrows():
        sub = runs[(runs["model"] == r["model"]) & (runs["label"] == r["label"]) & (keys == r["target_key"])]
        for m in final_metrics(interval=True):
            put(m + "_ci", mean_ci(sub[m]).half if m in sub else NAN)
        acc = mean_ci(sub["test_acc"])
        put("test_acc_lo", acc.lo)
        put("test_acc_hi", acc.hi)
        own = values.get((r["model"], r["label"], r["target_key"]), {})
        ref = control_seeds(values, r["model"], r["control"], r["target_key"])
        d = None if r["label"] == r["control"] else paired_difference(own, ref)
        put_diff("test_acc_diff", d, "vs_control")
        if d is not None and not ref:
            cols["vs_control"][-1] = "control not run"
        for c in (DENSE_LABEL, *EXTRA_CONTROLS):
            ref = control_seeds(values, r["model"], c, r["target_key"])
            d = None if (r["label"] == c or r["target_key"] < 0 or not ref) else paired_difference(own, ref)
            put_diff(f"vs_{c}_diff", d, f"vs_{c}_verdict")
    return agg.assign(**cols)


def _rel(v: float) -> str:
    return "" if v != v else f" ({v:.2f}x)"


def _has_target(t: Any) -> bool:
    return t is not None and t == t   # None, or NaN after a CSV round trip, mean "no target"


def _ci(text: str, half: float, fmt, skip_zero: bool = False) -> str:
    """`text ± half` (the 95% half-width), or `text` alone where there is no interval."""
    if half != half or (skip_zero and half == 0):
        return text
    return f"{text} ± {fmt(half)}"


def _diff(d: Interval) -> str:
    """A difference in points: `+1.20 ± 0.40` (paired over n seeds), or the single value."""
    if d.mean != d.mean:
        return ""
    return _ci(f"{100 * d.mean:+.2f}", d.half if d.n > 1 else NAN, fmt_points)


def row_diff(r: pd.Series, prefix: str) -> Interval:
    """The paired difference stored in `r` under `prefix` (see add_statistics)."""
    return Interval(r.get(prefix, NAN), r.get(prefix + "_lo", NAN), r.get(prefix + "_hi", NAN),
                    int(r.get(prefix + "_n", 0) or 0))


def table_metrics() -> list:
    """The declared final metrics that are columns of the report's table, in declaration order."""
    return [m for m in declared(FINAL) if m.title]


def metric_cell(r: pd.Series, m) -> str:
    """`value ± 95% half-width (ratio to the control)` of metric `m` in aggregated row `r`."""
    v = r.get(m.name, NAN)
    if v != v:
        return "-"
    text = _ci(m.fmt(v), r.get(m.name + "_ci", NAN) if m.interval else NAN, m.fmt, skip_zero=True)
    return text + (_rel(r.get(m.name + "_rel", NAN)) if m.relative else "")


def markdown_table(agg: pd.DataFrame, model: str) -> str:
    """One row per (method, target): means ± 95% half-widths over n seeds, the paired
    difference to the row's control with its verdict, and the declared metrics' columns
    (bench.metrics) relative to the control."""
    rows, columns = agg[agg["model"] == model], table_metrics()
    titles = ["method", "target", "top-1 % (mean ± 95% CI)", "control", "Δ top-1 vs control", "vs control (95%)",
              "n", *(m.title for m in columns), "to control acc"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for _, r in rows.iterrows():
        target = f"{r['target']:.0%}" if _has_target(r["target"]) else "-"
        acc = _ci(fmt_points(r["test_acc"]), r.get("test_acc_ci", NAN), fmt_points)
        paired = row_diff(r, "test_acc_diff")
        if paired.n > 1:
            delta = _diff(paired)
        else:
            delta = "" if r["test_acc_delta"] != r["test_acc_delta"] else f"{100 * r['test_acc_delta']:+.2f}"
        tta = "never" if r["reached"] == 0 else f"ep {r['tta_epoch']:.0f}" + (
            f", {fmt_seconds(r['tta_s'])}" if r["tta_s"] == r["tta_s"] else "")    # seconds: none where left out
        cells = [r["label"], target, acc, r["control"], delta, r.get("vs_control", ""), str(int(r["seeds"])),
                 *(metric_cell(r, m) for m in columns), tta]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load_note(rows: pd.DataFrame) -> list[str]:
    """Where the timings come from: a warning when they ran on a shared CPU (1-min load
    average above the CPU count), and how many runs' timings were left out."""
    if "speed_cpu_load" not in rows or rows["speed_cpu_load"].isna().all():
        return []
    load, cpus = rows["speed_cpu_load"].max(), rows["speed_cpus"].max()
    dropped = int(rows["timings_dropped"].sum()) if "timings_dropped" in rows else 0
    several = "machines" in rows and rows["machines"].max() > 1
    if several and dropped:
        left_out = (f" The timings of {dropped} run(s) are left out: each row's timings come from its runs on the "
                    f"timing machine (the one that timed most runs without load: {rows['timing_machine'].iloc[0]}), "
                    f"those without load where it has any.")
    else:
        left_out = (f" The timings of {dropped} run(s) taken on a shared CPU are left out of rows that also have "
                    f"runs timed on an unshared one." if dropped else "")
    if load <= cpus + 0.5:
        return [f"Timed on an unshared CPU: 1-min load average at most {load:.1f} on {cpus:.0f} CPUs.{left_out}", ""]
    shared = int(shared_cpu(rows).sum())
    return [f"**Shared CPU**: {shared} of {len(rows)} rows were timed with a 1-min load average above the "
            f"CPU count (up to {load:.1f} on {cpus:.0f} CPUs); their speed figures are skewed.{left_out}", ""]


def speed_section(agg: pd.DataFrame, model: str) -> list[str]:
    """Measured speed next to what the MAC count promises: for each row, batch-1 latency and
    inference/training step times (median, IQR), and the measured speed-up over its control
    beside the control's MACs / the row's MACs."""
    rows = agg[agg["model"] == model]
    if "latency_b1_ms_median" not in rows or rows["latency_b1_ms_median"].isna().all():
        return []
    by_label = {(r["label"], r["target_key"]): r for _, r in rows.iterrows()}

    def control_row(r: pd.Series) -> Optional[pd.Series]:
        hit = by_label.get((r["control"], r["target_key"]))
        return hit if hit is not None else by_label.get((r["control"], -1.0))

    def ms(r: pd.Series, m: str) -> str:
        return f"{r[m + '_median']:.1f} ({r[m + '_iqr']:.1f})"

    lines = ["### Measured speed of the final models", "",
             "Medians over repeated timings (IQR in parentheses), meaned over seeds; batch-1 latency and "
             "inference at the evaluation batch in eval mode, the training step at the training batch. "
             "Speed-up = the control's time / the row's; *MAC ratio* = the control's MACs / the row's: "
             "what the MAC count promises.", "",
             *_load_note(rows),
             "| method | target | control | batch-1 latency ms | infer batch ms | train step ms | MAC ratio "
             "| speed-up batch 1 | speed-up infer | speed-up train |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        if r["latency_b1_ms_median"] != r["latency_b1_ms_median"]:
            continue
        c = control_row(r)
        ratio = (lambda m: f"{c[m] / r[m]:.2f}x") if c is not None else (lambda m: "")
        target = f"{r['target']:.0%}" if _has_target(r["target"]) else "-"
        lines.append(f"| {r['label']} | {target} | {r['control']} | {ms(r, 'latency_b1_ms')} "
                     f"| {ms(r, 'infer_batch_ms')} | {ms(r, 'train_step_ms')} | {ratio('macs')} "
                     f"| {ratio('latency_b1_ms_median')} | {ratio('infer_batch_ms_median')} "
                     f"| {ratio('train_step_ms_median')} |")
    return lines + [""]


def highlights(agg: pd.DataFrame, model: str) -> list[str]:
    """One line per target (the most accurate method there) and the fastest run to its
    control's accuracy: what a reader should not have to dig out of the table."""
    rows = agg[agg["model"] == model]
    lines = []
    for target in sorted({t for t in rows["target"] if _has_target(t)}, reverse=True):
        at = rows[rows["target"] == target].sort_values("test_acc", ascending=False)
        best = at.iloc[0]
        others = ", ".join(f"{r['label']} {100 * r['test_acc']:.2f}" for _, r in at.iloc[1:].iterrows())
        lines.append(f"- At {target:.0%} of the parameters, " + (
            f"**{best['label']}** keeps the most accuracy: {100 * best['test_acc']:.2f}% ({others})." if others else
            f"only **{best['label']}** was run: {100 * best['test_acc']:.2f}%."))
    # Controls (dense, dense_leaky, any row's control, the extra controls) are references, not candidates.
    controls = rows["control"] if "control" in rows else pd.Series(DENSE_LABEL, index=rows.index)
    references = set(controls) | set(EXTRA_CONTROLS)
    methods = rows[~rows["label"].str.startswith(DENSE_LABEL) & ~rows["label"].isin(references)]
    shared = set(controls[methods.index])
    # One control for every method row: name it once; several: name each winner's own.
    whose, it = (f"the {min(shared)} control's", "it") if len(shared) == 1 else ("its control's", "theirs")
    reached = methods[methods["reached"] > 0].sort_values("tta_s")
    if not len(reached):
        lines.append(f"- No method row reaches {whose} final accuracy within the budget.")
    else:
        r = reached.iloc[0]
        target = f" at {r['target']:.0%}" if _has_target(r["target"]) else ""
        vs = "" if len(shared) == 1 else f" (control: {controls[r.name]})"
        after = f" after {fmt_seconds(r['tta_s'])} of training" if r["tta_s"] == r["tta_s"] else ""
        lines.append(f"- Fastest to {whose} accuracy: **{r['label']}**{target}{vs}, epoch "
                     f"{r['tta_epoch']:.0f}{after}; "
                     f"{len(reached)} of {len(methods)} method rows reach {it} at all.")
    return lines


def ranking_lines(agg: pd.DataFrame, runs: pd.DataFrame, model: str) -> list[str]:
    """Per target, the rows in "tied with the best" tiers (see `tiers`); a single-seed suite
    gets one sentence saying it cannot separate methods instead."""
    rows = agg[agg["model"] == model]
    if rows.empty:
        return []
    if int(rows["seeds"].max()) < 2:
        return ["- **One seed per row: this suite cannot separate methods.** One run gives no confidence "
                "interval, so every difference here is a single measurement that may be run-to-run noise; "
                "no ranking is given (run more seeds: `seeds:` in the suite file)."]
    values = seed_values(runs[runs["model"] == model])
    lines = []
    for target in sorted({t for t in rows["target"] if _has_target(t)}, reverse=True):
        vals = {lab: v for lab in rows[rows["target"] == target]["label"]
                if (v := values.get((model, lab, float(target))))}
        groups = tiers(vals)
        text = "; ".join(f"tier {i}: " + ", ".join(f"{lab} {100 * np.mean(list(vals[lab].values())):.2f}"
                                                    for lab in g) for i, g in enumerate(groups, 1))
        lines.append(f"- Ranking at {target:.0%} of the parameters: {text}.")
    return lines


def controls_section(agg: pd.DataFrame, model: str) -> list[str]:
    """Does each method row beat the small dense model and random pruning at its target?
    The paired differences of add_statistics (`vs_<control>_*`), one column pair per control."""
    rows = agg[agg["model"] == model]
    present = [c for c in EXTRA_CONTROLS if (rows["label"] == c).any()]
    cands = rows[rows["target"].map(_has_target) & ~rows["label"].isin(reference_labels(agg))]
    if not present or cands.empty:
        return []
    lines = ["### Against the small dense model and random pruning", "",
             "Does the method beat " + " and ".join(f"`{c}`" for c in present) + " at the same target? Paired "
             "difference of top-1 over the seeds both ran (points, ± the 95% t half-width), and whether it is "
             "better or worse at 95% or not distinguishable.", "",
             "| method | target | n | " + " | ".join(f"Δ top-1 vs {c} | vs {c} (95%)" for c in present) + " |",
             "|---|---|---|" + "---|---|" * len(present)]
    for _, r in cands.iterrows():
        cells = []
        for c in present:
            d = row_diff(r, f"vs_{c}_diff")
            cells += [_diff(d) or "-", r.get(f"vs_{c}_verdict", "") if d.n else "not run at this target"]
        lines.append(f"| {r['label']} | {r['target']:.0%} | {int(r['seeds'])} | " + " | ".join(cells) + " |")
    return lines + [""]


# --------------------------------------------------------------------------- published figures
# What a published reduction counts -> (our column, the dense figure it is a fraction of).
KEPT_FRACTIONS = {"params": ("params_total", "dense_params"), "params_nonzero": ("params_nonzero", "dense_params"),
                  "macs": ("macs", "dense_macs")}
PUBLISHED_KEYS = ("label", "name", "model", "dataset", "baseline_acc", "acc", "kept", "budget", "source")


def load_published(path: str | Path = PUBLISHED_FILE) -> list[dict]:
    """The entries of configs/published.yaml (none if the file is absent), checked."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = list((read_yaml(str(path)) or {}).get("entries", []))
    for i, e in enumerate(entries):
        missing = [k for k in PUBLISHED_KEYS if k not in e]
        unknown = set(e.get("kept", {})) - set(KEPT_FRACTIONS)
        if missing or unknown or not e.get("kept"):
            raise ValueError(f"{path}: entry {i} ({e.get('name', '?')}): missing {missing}, unknown kept kinds "
                             f"{sorted(unknown)} (kinds: {', '.join(KEPT_FRACTIONS)})")
    return entries


def _frac(r: pd.Series, kind: str) -> float:
    num, den = KEPT_FRACTIONS[kind]
    n, d = r.get(num, NAN), r.get(den, NAN)
    return NAN if n is None or d is None or not d or d != d else float(n) / float(d)


def published_matches(agg: pd.DataFrame, entries: list[dict], tol: float = PUBLISHED_MATCH_TOL
                      ) -> list[tuple[pd.Series, dict, str, float]]:
    """(our row, entry, what it counts, our kept fraction of it) for every row of the entry's
    model, dataset and method label whose measured kept fraction of what the entry counts is
    within `tol` (relative) of the entry's."""
    out = []
    for e in entries:
        rows = agg[(agg["model"] == e["model"]) & (agg["label"] == e["label"]) & agg["target"].map(_has_target)]
        for _, r in rows.iterrows():
            if isinstance(r.get("dataset"), str) and r["dataset"] != e["dataset"]:
                continue
            for kind, kept in e["kept"].items():
                ours = _frac(r, kind)
                if ours == ours and abs(ours / kept - 1) <= tol:
                    out.append((r, e, kind, ours))
                    break
    return out


def published_section(agg: pd.DataFrame, model: str, entries: list[dict]) -> list[str]:
    """Published figures beside our rows where model, method and kept fraction match; each
    source's delta is against its own dense baseline, ours against our dense row."""
    mine = [e for e in entries if e["model"] == model]
    if not mine:
        return []
    matches = published_matches(agg[agg["model"] == model], mine)
    lines = ["### Published figures", "",
             f"Beside a row of the same model and method whose measured kept fraction of what the source counts "
             f"is within {PUBLISHED_MATCH_TOL:.0%} of the source's. Each source's Δ is against its own dense "
             f"baseline (they differ between sources), ours is the paired difference to our `dense` row. Recipes, "
             f"budgets and model details differ: read it as context, not as a test.", ""]
    if matches:
        lines += ["| our row | ours: top-1 % | ours: Δ vs dense | source's model | source: baseline → top-1 % "
                  "| source: Δ | kept (counts): source / ours | source's budget | source |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r, e, kind, ours in matches:
            lines.append(
                f"| {r['label']} {r['target']:.0%} | {_ci(fmt_points(r['test_acc']), r.get('test_acc_ci', NAN), fmt_points)} "
                f"| {_diff(row_diff(r, 'vs_dense_diff'))} | {e['name']} | {e['baseline_acc']:.2f} → {e['acc']:.2f} "
                f"| {e['acc'] - e['baseline_acc']:+.2f} | {e['kept'][kind]:.1%} / {ours:.1%} ({kind}) "
                f"| {e['budget']} | {e['source']} |")
    shown = {id(e) for _, e, _, _ in matches}
    rest = [e for e in mine if id(e) not in shown]
    if rest:
        lines += ["", "No matching row (method or kept fraction differ): " + "; ".join(
            f"{e['name']} ({e['label']}, keeps " + ", ".join(f"{v:.1%} {k}" for k, v in e["kept"].items())
            + f"; {e['source']})" for e in rest) + "."]
    return lines + [""]


def plot(agg: pd.DataFrame, runs: pd.DataFrame, histories: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    models = list(dict.fromkeys(agg["model"]))
    for x, xlabel, fname in (("params_nonzero", "non-zero parameters", "acc_vs_params.png"),
                             ("macs_nonzero", "MACs per image (non-zero weights)", "acc_vs_macs.png"),
                             ("train_wall_s", "training wall-clock (s)", "acc_vs_train_time.png")):
        fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
        for ax, model in zip(axes[0], models):
            sub = agg[agg["model"] == model]
            for label, g in sub.groupby("label", sort=False):
                g = g.sort_values(x)
                style = dict(marker="*", markersize=14, linestyle="none", color="black") if label == DENSE_LABEL \
                    else dict(marker="o")
                # Error bars: the 95% t interval over seeds (none for one seed); x too for wall-clock.
                xerr = g[x + "_ci"].fillna(0.0) if x == "train_wall_s" and x + "_ci" in g else None
                ax.errorbar(g[x], 100 * g["test_acc"], yerr=100 * g["test_acc_ci"].fillna(0.0), xerr=xerr,
                            label=label, capsize=3, **style)
            front = sub[pareto_front(sub[x], sub["test_acc"])].sort_values(x)
            ax.step(front[x], 100 * front["test_acc"], where="post", color="grey", linestyle="--", linewidth=1,
                    zorder=0, label="Pareto front")
            ax.scatter(front[x], 100 * front["test_acc"], s=180, facecolors="none", edgecolors="grey", zorder=0)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 test accuracy (%)")
            ax.set_title(f"{model} (bars: 95% CI over seeds; circled: Pareto front)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for _, r in runs[(runs["model"] == model) & (runs["seed"] == runs["seed"].min())].iterrows():
            h = histories.get(r["run_id"])
            if h is None:
                continue
            target = f" @{float(r['target']):.0%}" if _has_target(r["target"]) else ""
            ax.plot(h["train_wall_s_cum"], 100 * h["test_acc"], marker=".", label=f"{r['label']}{target}",
                    **({"color": "black", "linewidth": 2.5} if r["label"] == DENSE_LABEL else {}))
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_title(f"{model}: accuracy over training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "acc_over_time.png", dpi=110)
    plt.close(fig)
    paths.append(out / "acc_over_time.png")
    return paths


def all_histories(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every run's per-epoch rows in one table, keyed by run, so the curves (and per-method
    series such as DSR's per-layer active counts) survive without the run folders."""
    keys = ["run_id", "label", "model", "target", "seed"]
    frames = [h.assign(**{k: r[k] for k in keys if k in r}) for _, r in runs.iterrows()
              if (h := histories.get(r["run_id"])) is not None]
    if not frames:
        return pd.DataFrame(columns=keys)
    table = pd.concat(frames, ignore_index=True)
    return table[[k for k in keys if k in table] + [c for c in table if c not in keys]]


def split_diverged(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs that finished, and README lines naming the diverged ones: a diverged run
    (summary status `diverged`) has no accuracy, so it stays out of every table and plot."""
    if "status" not in runs or not (bad := runs["status"] == "diverged").any():
        return runs, []
    lines = ["## Diverged runs", "", "Their training loss became non-finite: no result, so no row above.", ""]
    for _, r in runs[bad].iterrows():
        target = f" at {float(r['target']):.0%}" if _has_target(r.get("target")) else ""
        lines.append(f"- {r['label']}{target} on {r['model']}, seed {r['seed']}: diverged at epoch "
                     f"{int(r['diverged_epoch'])}, step {int(r['diverged_step'])} (`{r['run_dir']}`)")
    return runs[~bad], lines + [""]


STATISTICS_NOTE = (
    "Statistics over seeds (n in the table): a figure is the mean ± the half-width of its 95% confidence "
    "interval, Student's t with n - 1 degrees of freedom (no interval for n = 1). Δ top-1 vs control is the "
    "paired difference (same seed: same initialisation and data order) over the seeds both rows ran, ± its 95% "
    "t half-width; *better* / *worse* when that interval excludes 0, else *not distinguishable*. Rankings use "
    "\"tied with the best\" tiers: tier 1 is the row with the best mean at that target and every row whose "
    "paired difference to it is not significantly negative; tier 2 the same among the rest, and so on. Chosen "
    "over a compact letter display because it answers the reader's question (is this as good as the best?) with "
    "one comparison per row against a named row, where letters over all pairs overlap and are hard to read with "
    "few seeds. Each interval is at 95% on its own, not corrected for the number of comparisons.")


def write_report(results_dir: str | Path, suite_name: Optional[str] = None) -> Optional[Path]:
    out = Path(results_dir)
    runs, histories = load_runs(out)
    wandb_cfg = histories.pop("__wandb__", {})
    if runs.empty:
        print(f"report: no finished runs under {out}/runs")
        return None
    meta: dict[str, Any] = {}
    if (out / "suite.json").is_file():
        meta = json.loads((out / "suite.json").read_text())
    runs = assign_controls(runs, meta.get("controls"))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    n_runs = len(runs)                      # finished and diverged
    runs, diverged = split_diverged(runs)
    if runs.empty:
        write_text(out / "README.md", "\n".join([f"# Results: {suite_name or meta.get('suite') or out.name}", "", *diverged]))
        print(f"report: every run under {out}/runs diverged -> {out / 'README.md'}")
        return out / "README.md"
    write_text(out / "histories.csv", all_histories(runs, histories).to_csv(index=False))
    from bench import scratch_curve    # the compute-matched comparison (it imports this module's statistics)
    every_run, runs = runs, scratch_curve.equal_epoch_runs(runs)   # the curve's longer runs: their own section
    agg = aggregate(runs, histories)
    matched = scratch_curve.compute_matched(agg, every_run)
    agg = scratch_curve.add_columns(agg, matched)
    write_text(out / "table.csv", agg.to_csv(index=False))
    plots = plot(agg, runs, histories, out)
    name = suite_name or meta.get("suite") or out.name
    lines = [f"# Results: {name}", ""]
    if meta:
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
    lines += ["Each figure is measured by the harness, the same way for every method. Relative figures "
              "(in parentheses) and Δ are against the row's *control* (another row of the suite, `dense` "
              "unless the suite names one) of the same model. *to control acc*: the first epoch at which a "
              "run reached its control's mean final accuracy, with its training wall-clock until then. MACs "
              "and params of sparse (DSR) models count non-zero weights in the *non-zero* columns only; their MACs are theoretical (dense kernels still run).", "",
              STATISTICS_NOTE, ""]
    published = load_published()
    for model in dict.fromkeys(agg["model"]):
        matched_lines, matched_plot = scratch_curve.section(matched, every_run, agg, model, out, reference_labels(agg))
        plots += [matched_plot] if matched_plot else []
        lines += [f"## {model}", "", *highlights(agg, model), *ranking_lines(agg, runs, model), "",
                  markdown_table(agg, model), *speed_section(agg, model), *controls_section(agg, model),
                  *matched_lines, *published_section(agg, model, published)]
    lines += diverged + ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_text(out / "README.md", "\n".join(lines))
    log_to_wandb(name, every_run, plots, out, wandb_cfg)
    print(f"report: {len(every_run)} runs -> {out / 'README.md'}")
    return out / "README.md"


def log_to_wandb(group: str, runs: pd.DataFrame, plots: list[Path], out: Path, wandb_cfg: dict) -> None:
    """A summary run in the suite's group (same project and mode as its runs): the runs
    table and the plots, so the W&B project shows the comparison next to the runs."""
    import os
    mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode", "offline")
    if mode == "disabled":
        return
    try:
        import wandb
        run = wandb.init(project=wandb_cfg.get("project", "compress-bench"), entity=wandb_cfg.get("entity") or None,
                         group=group, job_type="report", name=f"{group}-report",
                         dir=str(out), mode=mode, reinit="finish_previous",
                         settings=wandb.Settings(console="off", silent=True))
        run.log({"runs": wandb.Table(dataframe=runs), **{p.stem: wandb.Image(str(p)) for p in plots}})
        run.finish()
    except Exception as e:  # noqa: BLE001 - the report files are already written
        print(f"warning: W&B summary run failed ({type(e).__name__}: {e})")
