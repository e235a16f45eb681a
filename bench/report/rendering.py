"""The README's text: the table per model, the highlights and ranking lines, the
comparators section and (in its own function, `speed_section`) the per-run speed table.

Ratios go one way everywhere: the row's figure divided by its control's, `(0.50x)`
meaning half the control's; every table header says so.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from bench.metrics import FINAL, declared
from bench.metrics.base import fmt_points, fmt_seconds
from bench.report.aggregation import (SHARED_MARGIN, UNKNOWN_DATA, _has_target, families, reference_labels,
                                      shared_cpu)
from bench.report.statistics import ALPHA, CORRECTION, CORRECTION_NAMES, Family, fit_family

NAN = float("nan")
RATIO = "ratios in parentheses: the row's ÷ its control's"


def correction_name(method: str = CORRECTION) -> str:
    return CORRECTION_NAMES.get(method, method)


# --------------------------------------------------------------------------- formatting
def _rel(v: float) -> str:
    return "" if v != v else f" ({v:.2f}x)"


def _is_zero(text: str) -> bool:
    """Whether a formatted number shows zero (`0.0k`, `0.00`): no non-zero digit."""
    return not re.search(r"[1-9]", text)


def _ci(text: str, half: float, fmt) -> str:
    """`text ± half` (the 95% half-width), or `text` alone where there is no interval or
    the half-width shows as zero at the figure's precision."""
    if half != half or _is_zero(fmt(half)):
        return text
    return f"{text} ± {fmt(half)}"


def _target(r: pd.Series) -> str:
    return f"{r['target']:.0%}" if _has_target(r["target"]) else "-"


def _and(items: Iterable[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    items = list(items)
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def p_text(p: float) -> str:
    """A p-value as the tables print it: 3 decimals, "<0.001" below that, empty for none."""
    if p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _delta(diff: float) -> str:
    return "" if diff != diff else f"{100 * diff:+.2f}"


def table_metrics() -> list:
    """The declared final metrics that are columns of the report's table, in declaration order."""
    return [m for m in declared(FINAL) if m.title]


def metric_cell(r: pd.Series, m) -> str:
    """A metric of aggregated row `r`: `mean ± 95% half-width`, or for a timing `mean
    [min-max]` over the row's timed runs (a t interval from two or three timings on a
    machine others share says little), then the ratio to the control."""
    v = r.get(m.name, NAN)
    if v != v:
        return "-"
    if m.timed:
        lo, hi = r.get(m.name + "_min", NAN), r.get(m.name + "_max", NAN)
        text = m.fmt(v) + (f" [{m.fmt(lo)}-{m.fmt(hi)}]" if lo == lo and m.fmt(lo) != m.fmt(hi) else "")
    else:
        text = _ci(m.fmt(v), r.get(m.name + "_ci", NAN) if m.interval else NAN, m.fmt)
    return text + (_rel(r.get(m.name + "_rel", NAN)) if m.relative else "")


def several_data(rows: pd.DataFrame) -> bool:
    return "data" in rows and rows["data"].nunique() > 1


def data_line(agg: pd.DataFrame) -> list[str]:
    """Which data the rows used: one sentence when every run recorded the same fingerprint,
    else a pointer to the table's data column."""
    if "data" not in agg:
        return []
    groups = list(dict.fromkeys(agg["data"]))
    if len(groups) == 1:
        fp = groups[0]
        return ["Data: every run recorded " + ("no data fingerprint (runs made before runs recorded one)" if
                fp == UNKNOWN_DATA else f"the same data fingerprint, `{fp}`") + ".", ""]
    return [f"**Runs on different data** (fingerprints {', '.join(f'`{g}`' for g in groups)}; `{UNKNOWN_DATA}`: "
            f"not recorded): runs are pooled into a row, and rows compared, only on the same data; the table's "
            f"*data* column says which each row used.", ""]


def precision_line(runs: pd.DataFrame) -> list[str]:
    """What precision the runs trained in (docs/protocol.md): one sentence when every run
    used one; in bold, with the rows that mix them, when they differ, since accuracy and
    wall-clock can depend on it. A memory format changes only the layout of the same
    arithmetic, so formats are listed, not flagged."""
    if "precision" not in runs or runs["precision"].isna().all():
        return []
    prec = runs["precision"].fillna("unrecorded")
    fmt = runs["memory_format"].fillna("contiguous") if "memory_format" in runs else pd.Series("contiguous", runs.index)
    formats = ", ".join(f"{n} {f}" for f, n in fmt.value_counts().items())
    if prec.nunique() == 1:
        return [f"Precision: every run trained in {prec.iloc[0]} (memory format: {formats}).", ""]
    by_row = prec.groupby([runs["label"], runs["target"].fillna(0)]).nunique()
    mixed = [f"{label}" + (f" at {target:.0%}" if target else "") for (label, target), n in by_row.items() if n > 1]
    return [f"**Runs in different precisions** ({', '.join(f'{n} {p}' for p, n in prec.value_counts().items())}; "
            f"memory format: {formats}): accuracy and wall-clock can depend on precision, so rows are compared "
            f"across precisions here" + (f"; rows mixing them over their seeds: {', '.join(mixed)}" if mixed else "")
            + ". Pin a suite's runs to one with train.auto_resolves_to=PRECISION/FORMAT.", ""]


def compute_line(runs: pd.DataFrame) -> list[str]:
    """What the finished runs cost: their measured training and evaluation wall-clock,
    summed over every run of the folder (the scratch curve's longer runs included), in
    hours. Runs that recorded no timing (older records) are counted and named as such."""
    if "train_wall_s" not in runs:
        return []
    timed = runs["train_wall_s"].notna()
    if not timed.any():
        return []
    train_h = runs.loc[timed, "train_wall_s"].sum() / 3600
    eval_h = runs.loc[timed, "eval_s"].fillna(0).sum() / 3600 if "eval_s" in runs else 0.0
    untimed = f"; {int((~timed).sum())} run(s) recorded no timing" if not timed.all() else ""
    return [f"Compute spent: the {int(timed.sum())} timed runs trained for {train_h:.1f} h of wall-clock "
            f"and evaluated for {eval_h:.1f} h more ({train_h + eval_h:.1f} h in all{untimed}).", ""]


# --------------------------------------------------------------------------- the table
def markdown_table(agg: pd.DataFrame, model: str) -> str:
    """One row per (method, target[, data]): top-1 (mean ± 95% t half-width over n seeds)
    with the row's compact letters at its target, the difference to the row's control
    with its corrected p-value and verdict, and the declared metrics' columns (bench.metrics)
    as ratios to the control; the timings with the number of runs they come from."""
    rows, columns = agg[agg["model"] == model], table_metrics()
    method = correction_name()
    data = several_data(agg)
    first_timed = next((i for i, m in enumerate(columns) if m.timed), None)
    metric_titles = [m.title for m in columns]
    if first_timed is not None and "timed_n" in rows:
        metric_titles.insert(first_timed, "n timed")
    titles = ["method", "target", *(["data"] if data else []), "top-1 % (mean ± 95% CI)", "letters", "control",
              "Δ top-1 vs control", f"p ({method})", "vs control", "n", *metric_titles, "to control acc"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for _, r in rows.iterrows():
        acc = _ci(fmt_points(r["test_acc"]), r.get("test_acc_ci", NAN), fmt_points)
        own = r["label"] == r["control"]
        delta = "" if own else _delta(r.get("test_acc_diff", NAN)) or _delta(r.get("test_acc_delta", NAN))
        if not r.get("control_ran", True):
            tta = "-"                                      # no control to reach
        elif r["seeds"] == 0 or r["reached"] == 0:
            tta = "never"
        else:
            tta = f"ep {r['tta_epoch']:.0f}" + (f", {fmt_seconds(r['tta_s'])}" if r["tta_s"] == r["tta_s"] else "")
            if r["reached"] < r["seeds"]:
                tta += f" ({int(r['reached'])} of {int(r['seeds'])} seeds)"
        cells = [*(metric_cell(r, m) for m in columns)]
        if first_timed is not None and "timed_n" in rows:
            cells.insert(first_timed, str(int(r["timed_n"])))
        cells = [r["label"], _target(r), *([r["data"]] if data else []), acc, r.get("letters", ""), r["control"],
                 delta, "" if own else p_text(r.get("test_acc_diff_padj", NAN)), r.get("vs_control", ""),
                 str(int(r["seeds"])), *cells, tta]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def statistics_note(method: str = CORRECTION) -> str:
    """The README's paragraph on how rows are compared (docs/statistics.md has the detail)."""
    name = correction_name(method)
    return (
        "Statistics over seeds (n in the table): top-1 is the mean ± the half-width of its 95% t interval "
        "(no interval for n = 1); other figures the mean ± that half-width, timings the mean [min-max] over the "
        "runs timed (*n timed*), and a timing's ratio divides means over the seeds both the row and its control "
        "have timings for (no ratio where there is none). Letters and verdicts are within the row's target "
        "(rows without a target form their own group). Rows are compared per model and target (with the controls and comparators "
        f"they are compared with) in one linear model `acc ~ row + seed` with one pooled residual variance; "
        f"every pair of rows is tested on it and the p-values of all pairs at that target are corrected together "
        f"with {name}'s procedure (the family: one model x target; α = {ALPHA:.2f}). *Letters*: rows that share a "
        f"letter are not resolved from each other; `a` marks the group of the best row. *vs control* and the "
        f"comparators' verdicts read the same corrected p-values: *better* / *worse* where the pair is resolved, "
        f"else *not distinguishable*. Δ is the estimated difference (with the same seeds, the mean of the per-seed "
        f"differences). Each ranking line states the smallest difference the suite's seeds resolve at that target. "
        f"See docs/statistics.md.")


# --------------------------------------------------------------------------- the speed table (per run)
def _load_note(rows: pd.DataFrame) -> list[str]:
    """Where the timings come from: a warning when they ran on a shared CPU (1-min load
    average above the CPU count + SHARED_MARGIN), and how many runs' timings were left out."""
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
    if load <= cpus + SHARED_MARGIN:
        return [f"Timed on an unshared CPU: 1-min load average at most {load:.1f} on {cpus:.0f} CPUs "
                f"(shared: above the CPU count + {SHARED_MARGIN:g}).{left_out}", ""]
    shared = int(shared_cpu(rows).sum())
    return [f"**Shared CPU**: {shared} of {len(rows)} rows were timed with a 1-min load average above the "
            f"CPU count + {SHARED_MARGIN:g} (up to {load:.1f} on {cpus:.0f} CPUs); their speed figures are "
            f"skewed.{left_out}", ""]


def speed_section(agg: pd.DataFrame, model: str) -> list[str]:
    """The speed table from each run's own timings: batch-1 latency and inference/training
    step times (median, IQR, meaned over a row's timed runs) and each as a ratio to the
    control's, beside the ratio of MACs. Self-contained so that a speed table from one
    timing sitting can replace it."""
    rows = agg[agg["model"] == model]
    if "latency_b1_ms_median" not in rows or rows["latency_b1_ms_median"].isna().all():
        return []
    by_label = {(r["label"], r["target_key"], r.get("data")): r for _, r in rows.iterrows()}

    def control_row(r: pd.Series) -> Optional[pd.Series]:
        hit = by_label.get((r["control"], r["target_key"], r.get("data")))
        return hit if hit is not None else by_label.get((r["control"], -1.0, r.get("data")))

    def ms(r: pd.Series, m: str) -> str:
        return f"{r[m + '_median']:.1f} ({r[m + '_iqr']:.1f})"

    lines = ["### Measured speed of the final models", "",
             "Medians over repeated timings (IQR in parentheses), meaned over the row's timed runs (*n timed*); "
             "batch-1 latency and inference at the evaluation batch in eval mode, the training step at the "
             "training batch. Ratios: the row's ÷ its control's, for times and MACs alike (0.50x: half the "
             "control's time); the MAC ratio is what the MAC count promises.", "",
             *_load_note(rows),
             "| method | target | control | n timed | batch-1 latency ms | infer batch ms | train step ms "
             "| MACs ÷ control | batch-1 ÷ control | infer ÷ control | train step ÷ control |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        if r["latency_b1_ms_median"] != r["latency_b1_ms_median"]:
            continue
        c = control_row(r)
        ratio = (lambda m: f"{r[m] / c[m]:.2f}x") if c is not None else (lambda m: "")
        n = str(int(r["timed_n"])) if "timed_n" in r and r["timed_n"] == r["timed_n"] else ""
        lines.append(f"| {r['label']} | {_target(r)} | {r['control']} | {n} | {ms(r, 'latency_b1_ms')} "
                     f"| {ms(r, 'infer_batch_ms')} | {ms(r, 'train_step_ms')} | {ratio('macs')} "
                     f"| {ratio('latency_b1_ms_median')} | {ratio('infer_batch_ms_median')} "
                     f"| {ratio('train_step_ms_median')} |")
    return lines + [""]


# --------------------------------------------------------------------------- highlights and rankings
def _family_of(agg: pd.DataFrame, runs: Optional[pd.DataFrame], model: str) -> dict[tuple, Family]:
    return families(agg[agg["model"] == model], runs) if runs is not None else {}


def accuracy_highlight(at: pd.DataFrame, fam: Optional[Family]) -> str:
    """The most accurate row at one target, claimed only where the corrected comparison
    resolves it from every other row there; else the rows tied with it."""
    at = at.sort_values("test_acc", ascending=False)
    best = at.iloc[0]
    where = f"At {best['target']:.0%} of the parameters"
    if len(at) == 1:
        return f"- {where}, only **{best['label']}** was run: {100 * best['test_acc']:.2f}%."
    others = at.iloc[1:]
    if fam is None or not fam.tested:
        listing = ", ".join(f"{r['label']} {100 * r['test_acc']:.2f}" for _, r in at.iterrows())
        return f"- {where}, no row is resolved from the others (not tested: too few seeds): {listing}."
    tied = [r for _, r in others.iterrows()
            if (c := fam.compare(best["label"], r["label"])) is None or not c.resolved]
    most = int(at["seeds"].max())

    def name(r) -> str:
        return r["label"] + (f" ({n_seeds(r['seeds'])}, provisional)" if r["seeds"] < most else "")

    if not tied:
        return (f"- {where}, **{name(best)}** keeps the most accuracy: {100 * best['test_acc']:.2f}%, "
                f"resolved from every other row at this target ({correction_name(fam.method)}).")
    names = ", ".join(f"{name(r)} {100 * r['test_acc']:.2f}" for r in tied)
    return (f"- {where}, tied for the most accuracy: {name(best)} {100 * best['test_acc']:.2f}, {names} "
            f"(not resolved from the best, {correction_name(fam.method)}; {len(others) - len(tied)} other row(s) "
            f"are below).")


def n_seeds(n: float) -> str:
    """'1 seed', '2 seeds': how many seeds a row rests on, in the report's wording."""
    return f"{int(n)} seed{'s' if n != 1 else ''}"


def fastest_highlight(rows: pd.DataFrame) -> list[str]:
    """The method row that reaches its control's final accuracy first, where that is
    supported: only rows that reach it in every seed are candidates (a row that never
    reaches it is never fastest), and between several candidates the fastest is named
    only when its training seconds to get there are resolved from every other's (same
    model and correction as accuracy); else they are tied. Rows whose control did not
    run get no line."""
    refs = reference_labels(rows)
    methods = rows[~rows["label"].isin(refs) & rows["control"].isin(set(rows["label"]))]
    if methods.empty:
        return []
    shared = set(methods["control"])
    whose = f"the {min(shared)} control's" if len(shared) == 1 else "its control's"
    full = methods[(methods["reached"] >= methods["seeds"]) & (methods["seeds"] > 0)]
    some = methods[(methods["reached"] > 0) & (methods["reached"] < methods["seeds"])]
    partial = [f"{r['label']}{' ' + _target(r) if _has_target(r['target']) else ''} ({int(r['reached'])} of "
               f"{int(r['seeds'])})" for _, r in some.iterrows()]
    partly = f"; in some seeds only: {', '.join(partial)}" if partial else ""
    if full.empty:
        return [f"- No method row reaches {whose} final accuracy in every seed within the budget{partly}."]

    def who(r: pd.Series) -> str:
        target = f" at {r['target']:.0%}" if _has_target(r["target"]) else ""
        vs = "" if len(shared) == 1 else f" (control: {r['control']})"
        return f"**{r['label']}**{target}{vs}"

    def when(r: pd.Series) -> str:
        after = f" after {fmt_seconds(r['tta_s'])} of training" if r["tta_s"] == r["tta_s"] else ""
        return f"epoch {r['tta_epoch']:.0f}{after}"

    def name(r: pd.Series) -> str:
        return f"{who(r)}, {when(r)}"
    if len(full) == 1:
        r = full.iloc[0]
        return [f"- Only {who(r)} reaches {whose} final accuracy in every seed ({when(r)}), "
                f"of {len(methods)} method rows{partly}."]
    keyed = {f"{r['label']}@{r['target_key']}@{r['data']}": r for _, r in full.iterrows()}
    fam = fit_family({k: r["tta_s_seeds"] if isinstance(r.get("tta_s_seeds"), dict) else {}
                      for k, r in keyed.items()})
    order = sorted(keyed, key=lambda k: (keyed[k]["tta_s"] if keyed[k]["tta_s"] == keyed[k]["tta_s"] else np.inf))
    best = order[0]
    resolved = fam.tested and all((c := fam.compare(k, best)) is not None and c.resolved and c.diff > 0
                                  for k in order[1:])
    if resolved:
        return [f"- Fastest to {whose} final accuracy: {name(keyed[best])}, resolved from the "
                f"{len(order) - 1} other row(s) that reach it in every seed ({correction_name(fam.method)}){partly}."]
    return [f"- Fastest to {whose} final accuracy: tied between " + "; ".join(name(keyed[k]) for k in order)
            + f" (the {len(order)} method rows that reach it in every seed; their training seconds to get there "
              f"are not resolved){partly}."]


def highlights(agg: pd.DataFrame, model: str, runs: Optional[pd.DataFrame] = None) -> list[str]:
    """What a reader should not have to dig out of the table: per target the most accurate
    row (or the rows tied for it), and the fastest method row to its control's accuracy
    (or the rows tied for it); claims only where the corrected comparisons support them."""
    rows = agg[agg["model"] == model]
    fams = _family_of(agg, runs, model)
    lines = []
    groups = rows[rows["target"].map(_has_target)].groupby(["target_key", "data"], sort=False)
    for (key, data), at in sorted(groups, key=lambda kv: (-kv[0][0], kv[0][1])):
        line = accuracy_highlight(at, fams.get((model, key, data)))
        lines.append(line if not several_data(rows) else line.replace(" of the parameters,", f" of the parameters "
                                                                      f"(data {data}),", 1))
    return lines + fastest_highlight(rows)


def ranking_lines(agg: pd.DataFrame, runs: pd.DataFrame, model: str) -> list[str]:
    """Per target (and data), every row with its mean and compact letters, the family's
    size and correction, and the smallest difference it resolves; a single-seed suite gets
    one sentence saying it cannot separate methods instead."""
    rows = agg[agg["model"] == model]
    if rows.empty:
        return []
    if int(rows["seeds"].max()) < 2:
        return ["- **One seed per row: this suite cannot separate methods.** One run gives no confidence "
                "interval, so every difference here is a single measurement that may be run-to-run noise; "
                "no ranking is given (run more seeds: `seeds:` in the suite file)."]
    fams = _family_of(agg, runs, model)
    lines = []
    for (model_, key, data), fam in sorted(fams.items(), key=lambda kv: (-kv[0][1], kv[0][2])):
        if len(fam.members) < 2:
            continue
        own = set(rows[(rows["target_key"] == key) & (rows["data"] == data)]["label"])
        where = f"at {key:.0%} of the parameters" if key >= 0 else "without a target"
        if several_data(rows):
            where += f" (data {data})"
        if not fam.tested:
            lines.append(f"- Ranking {where}: not tested (too few runs for a residual variance): "
                         + ", ".join(f"{m} {100 * fam.means[m]:.2f}" for m in fam.members) + ".")
            continue
        n = int(pd.Series(list(fam.seeds.values())).mode().max())
        listed = ", ".join(f"{m}{'' if m in own else ' (no target)'}"
                           f"{f' ({n_seeds(fam.seeds[m])})' if fam.seeds[m] < n else ''} {100 * fam.means[m]:.2f} "
                           f"{fam.letters[m]}" for m in fam.members)
        also = ""
        if any(fam.seeds[m] < n for m in fam.members):
            also = (f" (rows marked with fewer than {n} seeds: their letters rest on the pooled σ alone, since "
                    f"their own spread is not measured; read them as provisional until their seeds finish)")
        always, never = fam.resolvable()
        lines.append(f"- Ranking {where} (rows sharing a letter are not resolved): {listed}{also}. "
                     f"Resolvable difference: {100 * always:.2f} points between rows of {n_seeds(n)} "
                     f"({correction_name(fam.method)} over the {fam.n_pairs} pairs of this family; pooled σ = "
                     f"{100 * fam.sigma:.2f} points on {fam.df:.0f} df); below {100 * never:.2f} points never."
                     + _spread(fam))
    return lines


def _spread(fam: Family) -> str:
    """The range of the rows' own residual spreads, so a reader sees how far the one pooled
    sigma is from each row's (docs/statistics.md: what pooling assumes)."""
    sd = {k: v for k, v in fam.row_sd.items() if v == v}
    if len(sd) < 2:
        return ""
    lo, hi = min(sd, key=sd.get), max(sd, key=sd.get)
    return (f" Rows' own residual SD: {100 * sd[lo]:.2f} ({lo}) to {100 * sd[hi]:.2f} ({hi}) points"
            + (": one pooled σ fits some rows poorly, so read verdicts near the resolvable difference with care."
               if sd[hi] > 3 * sd[lo] else "."))


def comparators_section(agg: pd.DataFrame, model: str) -> list[str]:
    """Does each method row beat each of the suite's comparators at its target? The
    corrected comparisons of add_statistics (`vs_<comparator>_*`)."""
    rows = agg[agg["model"] == model]
    comps = list(dict.fromkeys(c for cs in rows["comparators"].dropna() for c in str(cs).split(",") if c)) \
        if "comparators" in rows else []
    present = [c for c in comps if (rows["label"] == c).any() and f"vs_{c}_verdict" in rows]
    cands = rows[rows["target"].map(_has_target) & ~rows["label"].isin(reference_labels(agg))]
    if not present or cands.empty:
        return []
    method = correction_name()
    data = several_data(agg)
    lines = ["### Against the comparators", "",
             "Does the method beat " + _and(f"`{c}`" for c in present) + " (the suite's `comparators`) at "
             f"the same target? Estimated difference of top-1 (points), its p-value corrected with {method} over "
             f"every pair at that target (the same family as the letters), and the verdict at α = {ALPHA:.2f}.", "",
             "| method | target | " + ("data | " if data else "") + "n | "
             + " | ".join(f"Δ top-1 vs {c} | p ({method}) | vs {c}" for c in present) + " |",
             "|---|---|" + ("---|" if data else "") + "---|" + "---|---|---|" * len(present)]
    for _, r in cands.iterrows():
        cells = []
        for c in present:
            cells += [_delta(r.get(f"vs_{c}_diff", NAN)) or "-", p_text(r.get(f"vs_{c}_diff_padj", NAN)),
                      r.get(f"vs_{c}_verdict", "")]
        lines.append(f"| {r['label']} | {_target(r)} | " + (f"{r['data']} | " if data else "")
                     + f"{int(r['seeds'])} | " + " | ".join(cells) + " |")
    return lines + [""] + _activation_note(rows, cands, present)


def _activation_note(rows: pd.DataFrame, cands: pd.DataFrame, present: list[str]) -> list[str]:
    """A row whose activation differs from a comparator's (PCNS's LeakyReLU against the
    ReLU comparators) is named: its verdict against that comparator mixes the activation
    with the method, where its verdict against its own control does not."""
    if "act" not in rows:
        return []
    acts = {(r["label"], r["target_key"]): r["act"] for _, r in rows.iterrows() if isinstance(r["act"], str) and r["act"]}
    notes = []
    for _, r in cands.iterrows():
        own = acts.get((r["label"], r["target_key"]))
        other = sorted({f"`{c}` ({acts[c, r['target_key']]})" for c in present
                        if own and acts.get((c, r["target_key"]), own) != own})
        if other:
            notes.append(f"{r['label']} at {_target(r)} ({own}) against {_and(other)}")
    return ["Activations differ: " + "; ".join(notes) + ". These verdicts mix the activation with the method; "
            "a verdict against a control with the row's own activation does not.", ""] if notes else []


controls_section = comparators_section
