"""From run folders to the report's rows: reading the runs, their controls and
comparators, the data each ran on, which timings compare, time to the control's
accuracy, and one row per (model, label, target, data) with its statistics.

A row's control is another label of the suite (`control:` in the suite file, `dense`
by default): the run's own record (`control` in its config), else the suite's plan
(`controls` in suite.json), else `dense`. Its comparators (the labels every row is
also compared with at its target, `comparators:` in the suite file) are those the row's
runs recorded together with suite.json's (else the suite file's): runs made before a
suite recorded or added a comparator are still compared as the suite says now. A control or comparator that ran at
targets is compared at the row's own target, else its run without a target is.

Runs are pooled into a row only when they ran on the same data: the data fingerprint
each run recorded (env.json `data_fingerprint`; runs without one form one "unknown"
group) is part of a row's identity, so runs on different data are separate rows and
are never compared with each other.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench.config import DEFAULT_CONTROL, flatten
from bench.metrics import FINAL, declared
from bench.records import (FIX_SUITE, SUITE_NAME_PATTERN, read_env, read_history, read_suite, read_suite_file,
                           read_summary, refuse, run_folder, show)
from bench.report.statistics import Family, fit_family, mean_ci

REPO = Path(__file__).resolve().parents[2]
NAN = float("nan")
# The keys of one row of the report: runs with the same keys are seeds of one row.
ROW = ["model", "label", "target_key", "data"]
UNKNOWN_DATA = "unknown"
FINGERPRINT_PREFIX = 8
# A run reaches its control's accuracy when within this (absolute, on accuracy as a fraction) of
# the control's mean: the mean of three accuracies is not exact in floating point (0.7802 against
# 0.7802000000000001), and this absorbs that rounding only, far below one test image (1e-4 on 10k).
REACH_TOL = 1e-9
# A CPU is shared when its 1-min load average exceeds the CPU count by more than this (the timing
# process itself counts as one).
SHARED_MARGIN = 0.5


# --------------------------------------------------------------------------- reading
def _has_target(t: Any) -> bool:
    return t is not None and t == t   # None, or NaN after a CSV round trip, mean "no target"


def _fingerprint(run_dir: Path, env: dict) -> str:
    """The data fingerprint the run recorded (env.json, else the summary's env), as its
    first characters; `unknown` for runs made before runs recorded one. A damaged env.json
    is an error (bench.records), not `unknown`: that would pool the run with other data."""
    path = run_dir / "env.json"
    fp = read_env(path).get("data_fingerprint") if os.path.lexists(path) else None
    fp = fp or env.get("data_fingerprint")
    return str(fp)[:FINGERPRINT_PREFIX] if fp else UNKNOWN_DATA


def machine_name(env: dict) -> str:
    """The machine a run was timed on, from its recorded environment: the GPU, else the CPU
    with the instruction set torch dispatched to (runs before it was recorded: the CPU's
    name only), and the platform string."""
    cpu = env.get("cpu") or "CPU not recorded"
    if env.get("cpu_capability"):
        cpu += f", {env['cpu_capability']}"
    return f"{env.get('gpu') or cpu} ({env.get('platform', '?')})"


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per finished run under results_dir/runs (or under results_dir itself when it
    is a folder of run folders with no runs/ inside: every scalar summary field, nested
    ones flattened; its control, comparators, machine and data fingerprint), and the runs'
    histories by run id (key `__wandb__`: the W&B settings of the first run). Each
    summary.json and history.csv is checked as it is read (bench.records): a damaged or
    crafted one is a one-line RecordError naming it, and so is a run that names no model,
    seed, or label or method (it belongs to no row). A run without a target is a row
    without one (a control such as dense); one without a label is labelled by its method."""
    rows, histories = [], {}
    for path in summary_paths(results_dir):
        s = read_summary(path, identity=True)
        cfg = s.get("config", {})
        histories.setdefault("__wandb__", cfg.get("wandb", {}))
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in flatten({k: v for k, v in s.items() if k not in ("env", "config")}).items()}
        row.setdefault("target", None)
        if not row.get("label"):
            row["label"] = cfg.get("label") or s.get("method")
        row.setdefault("control", cfg.get("control") or None)
        row["comparators"] = ",".join(cfg.get("comparators") or []) or None
        row["act"] = activation_name(cfg.get("model"))
        row["run_dir"] = str(path.parent)
        env = s.get("env", {})
        row["device"] = env.get("device")
        row["machine"] = machine_name(env)
        row["data"] = _fingerprint(path.parent, env)
        rows.append(row)
        hist = path.parent / "history.csv"
        if os.path.lexists(hist):
            histories[s["run_id"]] = read_history(hist)
    return pd.DataFrame(rows), histories


def summary_paths(results_dir: str | Path) -> list[Path]:
    """The summary.json of every run folder: under results_dir/runs/, or in results_dir's
    own subfolders where it has no runs/ folder (a folder of runs, see bench.report.locate).
    A run folder that is a link to a folder elsewhere is a RecordError (bench.records.run_folder)."""
    folder = Path(results_dir)
    runs = folder / "runs" if (folder / "runs").is_dir() else folder
    paths = sorted(runs.glob("*/summary.json"))
    for path in paths:
        run_folder(path.parent, folder, runs)
    return paths


def suite_plan(results_dir: Path) -> dict[str, Any]:
    """What the suite behind a results folder planned: suite.json (when a suite wrote one)
    with `comparators` filled in from the suite file where suite.json predates them. The
    suite file is the one suite.json names, else configs/suites/<suite name>.yaml."""
    results_dir = Path(results_dir)
    meta: dict[str, Any] = {}
    if os.path.lexists(results_dir / "suite.json"):
        meta = read_suite(results_dir / "suite.json")
    if "comparators" not in meta:
        for path in suite_files(results_dir, meta):
            if path.is_file():
                meta["comparators"] = list(read_suite_file(path).get("comparators") or [])
                meta["comparators_from"] = str(path)
                break
    return meta


def suite_files(results_dir: Path, meta: dict[str, Any]) -> list[Path]:
    """Where the suite file of a results folder may be, in order: the file suite.json names
    (relative to the repository), then configs/suites/<suite name>.yaml. Only the
    repository's configs/suites/ is looked in: suite.json may come from anyone, and a file
    it names elsewhere is a RecordError, never read (so is a suite name with a separator,
    bench.records.read_suite). A folder without suite.json whose name is not a suite name
    has no suite file."""
    suites = (REPO / "configs" / "suites").resolve()
    record = results_dir / "suite.json"
    out = []
    if meta.get("file"):
        path = REPO / meta["file"]                       # an absolute `file` stays itself
        try:
            inside = suites in path.resolve().parents
        except (OSError, RuntimeError):                  # RuntimeError: a loop of links (Python < 3.13)
            inside = False
        if not inside:
            raise refuse(record, "suite record", f"file {show(meta['file'])} is not a suite file under {suites}",
                         FIX_SUITE)
        out.append(path)
    name = meta.get("suite") or results_dir.name        # suite.json's is a suite name (bench.records.read_suite)
    if re.fullmatch(SUITE_NAME_PATTERN, name):
        out.append(suites / f"{name}.yaml")
    return out


def assign_controls(runs: pd.DataFrame, plan: Optional[dict[str, str]] = None,
                    comparators: Optional[list[str]] = None) -> pd.DataFrame:
    """`runs` with a `control` column (each run's recorded control, else the suite plan's
    for its label, else the default) and a `comparators` column (the recorded ones, then
    the suite's that the run did not record; comma-separated labels, empty for none)."""
    plan = plan or {}
    recorded = runs["control"] if "control" in runs else pd.Series(None, index=runs.index, dtype=object)
    fallback = runs["label"].map(lambda lab: plan.get(lab, DEFAULT_CONTROL))
    out = runs.assign(control=recorded.where(recorded.notna() & (recorded != ""), fallback))
    rec = out["comparators"] if "comparators" in out else pd.Series(None, index=out.index, dtype=object)
    return out.assign(comparators=rec.map(lambda r: _join_labels(r, *(comparators or []))))


def _join_labels(*labels) -> str:
    """Comma-separated labels (and lists of them) joined in order, each once."""
    parts = (p for lab in labels if isinstance(lab, str) for p in lab.split(","))
    return ",".join(dict.fromkeys(p for p in parts if p))


def _target_keys(runs: pd.DataFrame) -> pd.Series:
    return runs["target"].map(lambda t: float(t) if _has_target(t) else -1.0)


def _with_keys(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["target"] = runs["target"].astype(object).where(runs["target"].notna(), None)
    runs["target_key"] = _target_keys(runs)
    if "data" not in runs:
        runs["data"] = UNKNOWN_DATA
    runs["data"] = runs["data"].fillna(UNKNOWN_DATA)
    return runs


# --------------------------------------------------------------------------- per-seed values and families
def seed_values(runs: pd.DataFrame, metric: str = "test_acc") -> dict[tuple, dict[int, float]]:
    """(model, label, target_key, data) -> {seed: value}; target_key -1 for a run without a target."""
    runs = _with_keys(runs)
    out: dict[tuple, dict[int, float]] = {}
    if metric not in runs:
        return out
    means = runs.groupby([*ROW, "seed"])[metric].mean()
    for (model, label, key, data, seed), v in means.items():
        if v == v:
            out.setdefault((model, label, float(key), data), {})[int(seed)] = float(v)
    return out


def reference_key(keys: set[tuple] | dict, model: str, label: str, target_key: float, data: str) -> Optional[tuple]:
    """The row another row at `target_key` is compared with for `label`: at the same target
    where `label` ran there (a comparator, or a control with targets such as dsr_static
    for dsr), else its run without a target (dense); None where it did not run on this data."""
    for key in ((model, label, target_key, data), (model, label, -1.0, data)):
        if key in keys:
            return key
    return None


def references(row: pd.Series | dict) -> list[str]:
    """The labels a row is compared with: its control, then its comparators (not itself)."""
    comps = [c for c in str(row.get("comparators") or "").split(",") if c]
    return [c for c in dict.fromkeys([row["control"], *comps]) if c != row["label"]]


def reference_labels(agg: pd.DataFrame) -> set[str]:
    """Labels that are references, not candidates: any row's control and any row's
    comparators, as the suite declared them."""
    out = set(agg["control"]) if "control" in agg else set()
    if "comparators" in agg:
        out |= {c for cs in agg["comparators"].dropna() for c in str(cs).split(",") if c}
    return out


def families(agg: pd.DataFrame, runs: pd.DataFrame, metric: str = "test_acc") -> dict[tuple, Family]:
    """(model, target_key, data) -> the Family of `metric` over the rows at that target and
    data, with the rows they are compared with (controls and comparators, at the target or
    without one): all pairs compared on one pooled variance, corrected together."""
    values = seed_values(runs, metric)
    out = {}
    for (model, key, data), rows in agg.groupby(["model", "target_key", "data"], sort=False):
        members: dict[str, dict[int, float]] = {}
        for _, r in rows.iterrows():
            for lab in [r["label"], *references(r)]:
                ref = reference_key(values, model, lab, key, data)
                if ref is not None and lab not in members:
                    members[lab] = values[ref]
        out[(model, key, data)] = fit_family(members)
    return out


# --------------------------------------------------------------------------- timings
def shared_cpu(runs: pd.DataFrame) -> pd.Series:
    """Runs whose speed was timed on a shared CPU: 1-min load average above the CPU count
    plus half a process (the timing process itself)."""
    if "speed_cpu_load" not in runs:
        return pd.Series(False, index=runs.index)
    return (runs["speed_cpu_load"] > runs["speed_cpus"] + SHARED_MARGIN).fillna(False).astype(bool)


def prefer_comparable_timings(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep the timings (the metrics declared `timed`, the training wall-clock among them) that
    compare like with like. Timings compare on one machine only, and other processes skew
    them by far more than the spread over seeds, so each row keeps the timings of its runs
    timed on the *timing machine* (the one that timed the most of the suite's runs on an
    unshared CPU) without load, where it has any; else its runs timed on that machine under
    load (the report flags a shared CPU); else its own. The other runs' timings are left
    out (`timings_dropped`)."""
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
        """Whether the run's row has any run in `mask`."""
        return mask.groupby([runs[k] for k in ROW]).transform("any").astype(bool)
    # Unloaded runs on the timing machine; else that machine's loaded ones (flagged); else the row's own.
    keep = good.where(in_row(good), on_ref.where(in_row(on_ref), True))
    drop = ~keep
    timed = [m.name for m in declared(FINAL) if m.timed and m.name in runs]
    runs.loc[drop, timed] = NAN
    runs["timings_dropped"] = drop.astype(int)
    return runs


def time_to_accuracy(hist: pd.DataFrame, target_acc: float, tol: float = REACH_TOL
                     ) -> tuple[Optional[int], Optional[float]]:
    """First epoch (and cumulative training seconds) at which the run's model reached
    `target_acc` within `tol` (after a transform, the transformed model's accuracy counts)."""
    acc = hist["test_acc"]
    if "acc_after_transform" in hist:
        acc = hist["acc_after_transform"].fillna(hist["test_acc"])
    hit = hist[acc >= target_acc - tol]
    if hit.empty:
        return None, None
    first = hit.iloc[0]
    return int(first["epoch"]), float(first["train_wall_s_cum"])


def final_metrics(interval: Optional[bool] = None, relative: Optional[bool] = None) -> list[str]:
    """Names of the declared final-model metrics (bench.metrics), optionally only those the
    report gives with an interval / relative to the control."""
    return [m.name for m in declared(FINAL) if (interval is None or m.interval == interval)
            and (relative is None or m.relative == relative)]


def timed_metrics() -> list[str]:
    """The timed final metrics, in declaration order (so table.csv's columns do not move between builds)."""
    return [m.name for m in declared(FINAL) if m.timed]


# --------------------------------------------------------------------------- rows
def activation_name(model_cfg: Any) -> Optional[str]:
    """A run's activation from its config's model section, as the report names it: relu, or
    leaky_relu with its slope (None where the config does not say)."""
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("act"), str):
        return None
    act, slope = model_cfg["act"], model_cfg.get("leaky_slope")
    return f"{act} {slope:g}" if act == "leaky_relu" and isinstance(slope, (int, float)) else act


def aggregate(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, label, target, data): means over seeds with their intervals
    (timings: min and max, and how many runs were timed), ratios to the row's control
    (timings: over the seeds both timed), time to the control's accuracy, and the
    statistics of add_statistics."""
    runs = _with_keys(assign_controls(runs))
    runs = prefer_comparable_timings(runs)
    rel_metrics = [m for m in final_metrics(relative=True) if m in runs]
    reference = runs.groupby(ROW)[rel_metrics].mean()
    ref_keys = set(reference.index)
    control_acc = reference["test_acc"].to_dict()
    tta_epoch, tta_s = [], []
    for _, r in runs.iterrows():
        key = reference_key(ref_keys, r["model"], r["control"], r["target_key"], r["data"])
        ref = control_acc.get(key) if key is not None else None
        e, s = (None, None) if ref is None or r["run_id"] not in histories else time_to_accuracy(
            histories[r["run_id"]], ref)
        tta_epoch.append(e)
        tta_s.append(s)
    runs["tta_epoch"] = pd.Series(tta_epoch, index=runs.index, dtype=float)
    runs["tta_s"] = pd.Series(tta_s, index=runs.index, dtype=float)
    runs.loc[runs["timings_dropped"] == 1, "tta_s"] = NAN     # a wall-clock, see prefer_comparable_timings
    metrics = [m for m in final_metrics() if m in runs] + ["tta_s", "tta_epoch"]
    g = runs.groupby(ROW, dropna=False)
    agg = g[metrics].mean()
    agg["control"] = g["control"].first()
    agg["comparators"] = g["comparators"].agg(lambda cs: _join_labels(*cs))
    if "dataset" in runs:
        agg["dataset"] = g["dataset"].first()
    agg["test_acc_std"] = g["test_acc"].std(ddof=1).fillna(0.0)
    agg["seeds"] = g["seed"].nunique()
    agg["reached"] = g["tta_epoch"].apply(lambda s: int(s.notna().sum()))
    agg["tta_s_seeds"] = g[["seed", "tta_s"]].apply(
        lambda d: {int(s): float(v) for s, v in zip(d["seed"], d["tta_s"]) if v == v})
    agg["timings_dropped"] = g["timings_dropped"].sum()
    timed = [m for m in timed_metrics() if m in runs]
    if "train_wall_s" in runs:
        agg["timed_n"] = g["train_wall_s"].count()
    for m in timed:
        agg[m + "_min"], agg[m + "_max"] = g[m].min(), g[m].max()
    if "machine" in runs:
        agg["machines"] = g["machine"].nunique()
    if "timing_machine" in runs:
        agg["timing_machine"] = g["timing_machine"].first()
    if "act" in runs:                        # what the comparators section checks rows against
        agg["act"] = g["act"].agg(lambda acts: ", ".join(sorted({a for a in acts if isinstance(a, str)})))
    agg = agg.reset_index()
    keys = [reference_key(ref_keys, *k) for k in zip(agg["model"], agg["control"], agg["target_key"], agg["data"])]
    agg["control_ran"] = [k is not None for k in keys]
    per_seed = {m: seed_values(runs, m) for m in rel_metrics if m in timed}
    for m in rel_metrics:
        if m in timed:       # a ratio of two timings over the same seeds: both timed, on the timing machine
            ratios = []
            for (_, r), k in zip(agg.iterrows(), keys):
                own, ref = per_seed[m].get(tuple(r[c] for c in ROW), {}), per_seed[m].get(k, {}) if k else {}
                common = sorted(set(own) & set(ref))
                ratios.append(np.mean([own[s] for s in common]) / np.mean([ref[s] for s in common])
                              if common else NAN)
            agg[m + "_rel"] = ratios
        else:
            ref = pd.Series([reference[m].get(k, NAN) if k else NAN for k in keys], index=agg.index, dtype=float)
            agg[m + "_rel"] = (agg[m] / ref).where(ref != 0)
    agg["test_acc_delta"] = agg["test_acc"] - pd.Series(
        [reference["test_acc"].get(k, NAN) if k else NAN for k in keys], index=agg.index, dtype=float)
    agg["target"] = agg["target_key"].map(lambda t: None if t < 0 else t)
    agg = add_statistics(agg, runs)
    refs = reference_labels(agg)
    agg["_o"] = [0 if lab == c else 1 if lab in refs else 2 for lab, c in zip(agg["label"], agg["control"])]
    agg = agg.sort_values(["model", "_o", "label", "target_key", "data"], ascending=[True, True, True, False, True])
    return agg.drop(columns="_o").reset_index(drop=True)


def add_statistics(agg: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Columns over seeds for every aggregated row:

    - `<metric>_ci`: half-width of the 95% t interval of the mean (NaN for one seed);
      `test_acc_lo`/`test_acc_hi` its bounds;
    - `letters`: the row's compact letters in its family (model x target x data; see
      bench.report.statistics), `family_pairs` the number of pairs corrected together;
    - `test_acc_diff`, `_se`, `_p`, `_padj`, `_n`, `vs_control`: the row against its own
      control in that family (the estimated difference, its standard error, the raw and
      corrected p-values, the control's seed count) and the verdict (empty for a row
      that is its own control; "control not run" where it did not run on this data);
    - `vs_<c>_diff`, `_p`, `_padj`, `_n`, `_verdict` for each comparator c of the suite:
      the same against c (rows with a target only; c's own row is left empty)."""
    fams = families(agg, runs)
    keys = _target_keys(runs)
    data = runs["data"] if "data" in runs else pd.Series(UNKNOWN_DATA, index=runs.index)
    comparators = list(dict.fromkeys(c for cs in agg["comparators"].dropna() for c in str(cs).split(",") if c))
    cols: dict[str, list] = {}

    def put(name: str, v: Any) -> None:
        cols.setdefault(name, []).append(v)

    def put_cmp(prefix: str, verdict_col: str, fam: Family, label: str, other: Optional[str],
                missing: str = "") -> None:
        c = fam.compare(label, other) if other is not None else None
        put(prefix, NAN if c is None else c.diff)
        put(prefix + "_se", NAN if c is None else c.se)
        put(prefix + "_p", NAN if c is None else c.p)
        put(prefix + "_padj", NAN if c is None else c.p_adj)
        put(prefix + "_n", 0 if other is None or other not in fam.seeds else fam.seeds[other])
        if other is None:
            put(verdict_col, "")
        elif other not in fam.seeds:
            put(verdict_col, missing)
        elif c is None:
            put(verdict_col, "cannot tell" if fam.seeds[label] + fam.seeds[other] > 2 else "1 seed: cannot tell")
        else:
            put(verdict_col, c.verdict)

    for _, r in agg.iterrows():
        fam = fams[(r["model"], r["target_key"], r["data"])]
        sub = runs[(runs["model"] == r["model"]) & (runs["label"] == r["label"]) & (keys == r["target_key"])
                   & (data == r["data"])]
        for m in final_metrics(interval=True):
            put(m + "_ci", mean_ci(sub[m]).half if m in sub else NAN)
        acc = mean_ci(sub["test_acc"])
        put("test_acc_lo", acc.lo)
        put("test_acc_hi", acc.hi)
        put("letters", fam.letters.get(r["label"], ""))
        put("family_pairs", fam.n_pairs)
        own = r["label"] == r["control"]
        put_cmp("test_acc_diff", "vs_control", fam, r["label"], None if own else r["control"], "control not run")
        for c in comparators:
            other = None if (r["label"] == c or r["target_key"] < 0) else c
            put_cmp(f"vs_{c}_diff", f"vs_{c}_verdict", fam, r["label"], other, "not run at this target")
    return agg.assign(**cols)


def all_histories(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every run's per-epoch rows in one table, keyed by run, so the curves (and per-method
    series such as DSR's per-layer active counts) survive without the run folders."""
    keys = ["run_id", "label", "model", "target", "seed", "data"]
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
        where = ", step ".join(str(int(v)) if v == v else "?" for v in
                               (r.get("diverged_epoch", NAN), r.get("diverged_step", NAN)))
        lines.append(f"- {r['label']}{target} on {r['model']}, seed {r['seed']}: diverged at epoch {where} "
                     f"(`{r['run_dir']}`)")
    return runs[~bad], lines + [""]
