"""The compute-matched comparison: every row against the scratch curve at its own training MACs.

The equal-epoch comparison sets a compressed row beside `dense_small` (the small dense
network at the target's parameter count, trained from scratch) for the same epochs. The
rows do not cost the same to train, though: a method that trains the dense model for a
while before shrinking it spends more compute than the small network does. The question
asked of pruning by Liu et al. (ICLR 2019, "Rethinking the Value of Network Pruning",
Scratch-B) and Blalock et al. (MLSys 2020, "What is the State of Neural Network
Pruning?") is whether the method beats a small network trained from scratch *with the
same training compute*. One matched point answers it for one budget; this module
answers it along a curve (docs/compute-matched.md).

The scratch curve of a model at a target is every `dense_small` run of that model at that
target, one point per epoch count (the suite's `scratch_curve` entry adds 2E, 4E, ...;
E is dense_small's own row, and a Scratch-B row is a point where its epochs fall): x is
the point's executed training MACs (mean over its seeds), y its top-1 per seed.

- **Interpolation**: linear in log training MACs between the two neighbouring points,
  x_i <= x <= x_j, w = (log x - log x_i) / (log x_j - log x_i), curve(x) = (1 - w) y_i +
  w y_j; at a point, that point. Outside [x_min, x_max] the curve says nothing: the row
  is "beyond the curve", never extrapolated.
- **Placement**: a row sits at its *executed* training MACs (`train_macs`: dense kernels
  count as dense, as they run). A sparse row (DSR) also has the theoretical figure of its
  non-zero weights (`train_macs_nonzero`); where that differs, its gap there is given
  beside, never instead.
- **Gap and its interval**: gap = mean of the row's seeds - mean of the curve's seeds at
  x, where the curve's value at seed s is c_s = (1 - w) y_{i,s} + w y_{j,s} over the seeds
  both neighbours ran. Interpolating per seed carries the covariance of the two
  neighbours into the variance of c (they are the same small network at the same seed,
  trained longer, so they are correlated; treating them as independent would misstate
  the curve's spread). The row and the curve are different networks with different
  initialisations, so nothing pairs them by seed: the interval is Welch's,

      se^2 = s_r^2 / n_r + s_c^2 / n_c,
      df   = se^4 / ((s_r^2 / n_r)^2 / (n_r - 1) + (s_c^2 / n_c)^2 / (n_c - 1))   (Welch-Satterthwaite),
      gap +- t_{0.975, df} se,   p = 2 P(T_df > |gap| / se),

  s^2 the sample variances (ddof 1) of the row's seeds and of the c_s. No interval with
  fewer than two seeds on either side.
- **Verdict**: better / worse when p < 0.05, else not distinguishable. `p` is kept per
  row so that the rows of one model and target can be corrected as one family (`adjust`,
  any statsmodels.stats.multitest method; the report uses Holm's): the verdict then reads
  the corrected `p_adj`, while the interval stays the row's own 95% one, uncorrected, so
  an interval that excludes 0 can sit beside "not distinguishable".
- **Data**: rows and curves on different data (the report's data fingerprint) never meet;
  each fingerprint is its own comparison.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats

CURVE_METHOD = "dense_small"          # the method whose runs make the curve
DENSE_LABEL = "dense"                 # the full model's row, marked on the plot (dense at E)
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BEYOND = "beyond the curve"
NO_MACS = "no training MACs recorded"
# Two MAC figures within this relative distance are the same point (float round-off of means).
SAME_MACS_RTOL = 1e-9
NAN = float("nan")


def is_added_curve_label(label: str) -> bool:
    """A label the suite's scratch_curve adds (scratch_<m>x): a curve point at another
    budget, not a row of the equal-epoch comparison."""
    return (isinstance(label, str) and label.startswith("scratch_") and label.endswith("x")
            and label[len("scratch_"):-1].isdigit())


# --------------------------------------------------------------------------- the curve
@dataclass(frozen=True)
class CurvePoint:
    epochs: int
    macs: float                      # executed training MACs, mean over its seeds
    acc: dict[int, float]            # seed -> top-1
    label: str                       # the label its runs carry (dense_small, scratch_2x, scratch_b, ...)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.acc.values())))


@dataclass(frozen=True)
class Curve:
    """Points in increasing training MACs."""
    points: tuple[CurvePoint, ...]

    def locate(self, x: float) -> Optional[tuple[int, int, float]]:
        """(i, j, w): x lies between points i and j at weight w in log MACs (i == j, w = 0 at
        a point); None outside the curve's range or for a non-positive / NaN x."""
        if not (x == x and x > 0) or not self.points:
            return None
        xs = [p.macs for p in self.points]
        for i, xi in enumerate(xs):
            if math.isclose(x, xi, rel_tol=SAME_MACS_RTOL):
                return i, i, 0.0
        if x < xs[0] or x > xs[-1]:
            return None
        j = next(k for k, xk in enumerate(xs) if xk > x)
        i = j - 1
        w = (math.log(x) - math.log(xs[i])) / (math.log(xs[j]) - math.log(xs[i]))
        return i, j, w

    def at(self, x: float) -> Optional[dict[int, float]]:
        """The curve at x per seed, c_s = (1 - w) y_{i,s} + w y_{j,s}, over the seeds both
        neighbours ran; None beyond the curve."""
        where = self.locate(x)
        if where is None:
            return None
        i, j, w = where
        a, b = self.points[i].acc, self.points[j].acc
        return {s: (1 - w) * a[s] + w * b[s] for s in sorted(set(a) & set(b))}


def interpolate(macs: Iterable[float], acc: Iterable[float], x: float) -> Optional[float]:
    """The curve through (macs, acc) at x, linear in log MACs; None beyond its range."""
    pts = sorted(zip(map(float, macs), map(float, acc)))
    curve = Curve(tuple(CurvePoint(k, m, {0: y}, "") for k, (m, y) in enumerate(pts)))
    c = curve.at(x)
    return None if c is None else c[0]


def _target_key(t) -> float:
    return float(t) if t is not None and t == t else -1.0


def curves(runs: pd.DataFrame) -> dict[tuple[str, float], Curve]:
    """(model, target) -> the scratch curve from the finished dense_small runs of `runs`
    (one point per epoch count; see the module docstring)."""
    if runs.empty or not {"method", "epochs", "train_macs", "test_acc"} <= set(runs):
        return {}
    sub = runs[(runs["method"] == CURVE_METHOD) & runs["test_acc"].notna()]
    if "status" in sub:
        sub = sub[sub["status"].fillna("finished") == "finished"]
    out: dict[tuple[str, float], Curve] = {}
    for (model, key), g in sub.assign(_k=sub["target"].map(_target_key)).groupby(["model", "_k"]):
        if key < 0:
            continue
        points = []
        for epochs, e in g.groupby("epochs"):
            acc = e.groupby("seed")["test_acc"].mean()
            points.append(CurvePoint(int(epochs), float(e["train_macs"].mean()),
                                     {int(s): float(v) for s, v in acc.items()},
                                     str(sorted(e["label"], key=lambda lab: (is_added_curve_label(lab), lab))[0])))
        out[(str(model), float(key))] = Curve(tuple(sorted(points, key=lambda p: p.macs)))
    return out


# --------------------------------------------------------------------------- the gap
@dataclass(frozen=True)
class Gap:
    """A row's accuracy minus the curve's at the row's training MACs (fractions, not points),
    its `level` interval and two-sided p-value (Welch; NaN with fewer than two seeds on a
    side), and the seed counts. `where` is "at <label>", "between <a> and <b>" or BEYOND."""
    gap: float
    lo: float
    hi: float
    p: float
    df: float
    n_row: int
    n_curve: int
    where: str

    @property
    def beyond(self) -> bool:
        return self.where == BEYOND


def welch(row: Iterable[float], curve: Iterable[float], level: float = CONFIDENCE) -> tuple[float, float, float, float, float]:
    """(difference of means, lo, hi, p, df) of row - curve by Welch's t (module docstring)."""
    r, c = np.asarray(list(row), dtype=float), np.asarray(list(curve), dtype=float)
    d = float(r.mean() - c.mean())
    if len(r) < 2 or len(c) < 2:
        return d, NAN, NAN, NAN, NAN
    vr, vc = r.var(ddof=1) / len(r), c.var(ddof=1) / len(c)
    se = math.sqrt(vr + vc)
    if se == 0:                      # identical values on both sides: nothing to estimate a spread from
        return d, d, d, (0.0 if d else 1.0), NAN
    df = (vr + vc) ** 2 / (vr ** 2 / (len(r) - 1) + vc ** 2 / (len(c) - 1))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return d, d - half, d + half, float(2 * stats.t.sf(abs(d) / se, df)), float(df)


def gap(row_acc: Mapping[int, float], curve: Curve, macs: float, level: float = CONFIDENCE) -> Gap:
    """The compute-matched gap of a row with per-seed top-1 `row_acc` at `macs` training MACs."""
    vals = [float(v) for v in row_acc.values() if v == v]
    if not (macs == macs and macs > 0):
        return Gap(NAN, NAN, NAN, NAN, NAN, len(vals), 0, NO_MACS)
    where = curve.locate(macs)
    if where is None or not vals:
        return Gap(NAN, NAN, NAN, NAN, NAN, len(vals), 0, BEYOND)
    i, j, _ = where
    pts = curve.points
    text = f"at {pts[i].label}" if i == j else f"between {pts[i].label} and {pts[j].label}"
    c = curve.at(macs)
    if not c:                        # the two neighbours share no seed
        return Gap(NAN, NAN, NAN, NAN, NAN, len(vals), 0, text)
    d, lo, hi, p, df = welch(vals, list(c.values()), level)
    return Gap(d, lo, hi, p, df, len(vals), len(c), text)


def verdict(p: float, d: float, n_row: int, n_curve: int, beyond: bool, alpha: float = ALPHA,
            where: str = "") -> str:
    """better / worse than the curve when p < alpha, else not distinguishable."""
    if beyond:
        return BEYOND
    if where == NO_MACS:
        return NO_MACS
    if n_curve == 0:
        return "no seed common to the curve's neighbours"
    if min(n_row, n_curve) < 2:
        return "1 seed: cannot tell"
    if p != p:
        return "cannot tell"
    if p >= alpha:
        return "not distinguishable"
    return "better" if d > 0 else "worse"


def adjust(p: Iterable[float], method: Optional[str]) -> list[float]:
    """p-values of one family corrected with `method` (a statsmodels.stats.multitest name,
    e.g. holm, fdr_bh); None leaves them as they are. NaN stays NaN, outside the family."""
    p = [float(v) for v in p]
    if not method:
        return p
    from statsmodels.stats.multitest import multipletests
    idx = [k for k, v in enumerate(p) if v == v]
    out = list(p)
    if idx:
        for k, v in zip(idx, multipletests([p[k] for k in idx], alpha=ALPHA, method=method)[1]):
            out[k] = float(v)
    return out


# --------------------------------------------------------------------------- rows of a report
COLUMNS = ("cm_macs", "cm_macs_nonzero", "cm_curve", "cm_where", "cm_gap", "cm_gap_lo", "cm_gap_hi", "cm_gap_p",
           "cm_gap_padj", "cm_verdict", "cm_nonzero_where", "cm_nonzero_gap", "cm_nonzero_gap_lo", "cm_nonzero_gap_hi")


def row_seeds(runs: pd.DataFrame) -> dict[tuple, dict[str, object]]:
    """(model, label, target_key) -> {acc: {seed: top-1}, macs, macs_nonzero} over its runs."""
    out = {}
    keyed = runs.assign(_k=runs["target"].map(_target_key))
    for (model, label, key), g in keyed[keyed["test_acc"].notna()].groupby(["model", "label", "_k"]):
        acc = g.groupby("seed")["test_acc"].mean()
        nonzero = g["train_macs_nonzero"].mean() if "train_macs_nonzero" in g else NAN
        out[(model, label, float(key))] = {"acc": {int(s): float(v) for s, v in acc.items()},
                                           "macs": float(g["train_macs"].mean()), "macs_nonzero": float(nonzero)}
    return out


def by_data(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """`frame` split by the report's data fingerprint (one part, data "", without one): rows
    and curves on different data are never compared."""
    if "data" not in frame:
        return [("", frame)]
    return [(str(d), frame[frame["data"] == d]) for d in dict.fromkeys(frame["data"])]


def compute_matched(agg: pd.DataFrame, runs: pd.DataFrame, correction: Optional[str] = None) -> pd.DataFrame:
    """One row per (model, curve target, data, report row): every row at that target and
    every row without a target (dense, ...), except the curve's own rows, against that
    target's curve on the same data. Columns: model, label, target_key (the row's),
    curve_target, data, the COLUMNS above (gaps as fractions) and `equal_epoch` (the row's
    verdict against dense_small at equal epochs from the report's table, where it has one).
    `correction` corrects the p-values of each (model, curve target, data) family (see adjust)."""
    parts = [_compute_matched(agg[agg["data"] == d] if "data" in agg else agg, r, correction).assign(data=d)
             for d, r in by_data(runs)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _compute_matched(agg: pd.DataFrame, runs: pd.DataFrame, correction: Optional[str]) -> pd.DataFrame:
    """compute_matched on the runs of one data fingerprint."""
    found = curves(runs)
    seeds = row_seeds(runs) if found else {}
    on_curve = set(runs.loc[runs["method"] == CURVE_METHOD, "label"]) if "method" in runs else set()
    records = []
    for (model, t), curve in found.items():
        rows = agg[(agg["model"] == model) & agg["target_key"].isin([t, -1.0])]
        family = []
        for _, r in rows.iterrows():
            if r["label"] in on_curve or is_added_curve_label(r["label"]):
                continue                         # the curve's own points
            info = seeds.get((model, r["label"], float(r["target_key"])))
            if not info:
                continue
            g = gap(info["acc"], curve, info["macs"])
            c = curve.at(info["macs"])
            rec = {"model": model, "label": r["label"], "target_key": float(r["target_key"]), "curve_target": t,
                   "cm_macs": info["macs"], "cm_macs_nonzero": info["macs_nonzero"],
                   "cm_curve": NAN if c is None else float(np.mean(list(c.values()))), "cm_where": g.where,
                   "cm_gap": g.gap, "cm_gap_lo": g.lo, "cm_gap_hi": g.hi, "cm_gap_p": g.p,
                   "cm_n_row": g.n_row, "cm_n_curve": g.n_curve,
                   "equal_epoch": r.get("vs_dense_small_verdict", "") or "",
                   "cm_nonzero_where": "", "cm_nonzero_gap": NAN, "cm_nonzero_gap_lo": NAN, "cm_nonzero_gap_hi": NAN}
            nz = info["macs_nonzero"]
            if nz == nz and not math.isclose(nz, info["macs"], rel_tol=1e-6):
                gz = gap(info["acc"], curve, nz)
                rec.update(cm_nonzero_where=gz.where, cm_nonzero_gap=gz.gap, cm_nonzero_gap_lo=gz.lo,
                           cm_nonzero_gap_hi=gz.hi)
            family.append(rec)
        for rec, padj in zip(family, adjust([rec["cm_gap_p"] for rec in family], correction)):
            rec["cm_gap_padj"] = padj
            rec["cm_verdict"] = verdict(padj, rec["cm_gap"], rec["cm_n_row"], rec["cm_n_curve"],
                                        rec["cm_where"] == BEYOND, where=rec["cm_where"])
        records += family
    frame = pd.DataFrame(records)
    for col in COLUMNS + ("equal_epoch",):
        if col not in frame:
            frame[col] = NAN if col not in ("cm_where", "cm_verdict", "cm_nonzero_where", "equal_epoch") else ""
    return frame


def add_columns(agg: pd.DataFrame, cm: pd.DataFrame) -> pd.DataFrame:
    """`agg` (the report's table) with the compute-matched columns of each row at its own
    target's curve (target-less rows, compared with every target's curve, are left out)."""
    if cm.empty:
        return agg
    keys = ["model", "label", "target_key"] + (["data"] if "data" in agg and "data" in cm else [])
    own = cm[cm["target_key"] == cm["curve_target"]][[*keys, *COLUMNS]]
    return agg.merge(own, on=keys, how="left")


def equal_epoch_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the equal-epoch comparison: `runs` without the curve's added points
    (scratch_<m>x, trained for other budgets), which would otherwise join its tables,
    rankings and comparison families; they are the compute-matched section's."""
    return runs[~runs["label"].map(is_added_curve_label)]


# --------------------------------------------------------------------------- the README section
def _pts(v: float) -> str:
    return f"{100 * v:+.2f}"


def _gap_text(d: float, lo: float, hi: float) -> str:
    if d != d:
        return ""
    return _pts(d) + ("" if lo != lo else f" [{_pts(lo)}, {_pts(hi)}]")


def _macs(v: float) -> str:
    from bench.metrics.base import fmt_si
    return "-" if v != v else f"{fmt_si(v)}MAC"


def headline(cm: pd.DataFrame, references: set[str]) -> str:
    """Which method rows at the target beat the curve at their training compute, which only
    beat dense_small at equal epochs, which are beyond the curve."""
    rows = cm[(cm["target_key"] == cm["curve_target"]) & ~cm["label"].isin(references)]
    beat = [f"{r['label']} ({_pts(r['cm_gap'])})" for _, r in rows.iterrows() if r["cm_verdict"] == "better"]
    only = [r["label"] for _, r in rows.iterrows()
            if r["equal_epoch"] == "better" and r["cm_verdict"] in ("worse", "not distinguishable")]
    beyond = [r["label"] for _, r in rows.iterrows() if r["cm_verdict"] == BEYOND]
    parts = [("beat the scratch curve at their own training compute: " + ", ".join(beat)) if beat
             else "no method row beats the scratch curve at its own training compute"]
    if only:
        parts.append("beat dense_small only at equal epochs: " + ", ".join(only))
    if beyond:
        parts.append("beyond the curve (no verdict): " + ", ".join(beyond))
    return "; ".join(parts) + "."


def _training_macs_axes(ax, ylabel: str, title: str) -> None:
    """Accuracy over log training MACs: the axes of both scratch-curve plots."""
    ax.set_xscale("log")
    ax.set_xlabel("training MACs, executed (log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)


def plot(cm: pd.DataFrame, curves_: dict[tuple[str, float], Curve], agg: pd.DataFrame, model: str,
         out: Path, data: str = "") -> Optional[Path]:
    """scratch_curve_<model>.png (the model's name as a slug, bench.report.plots.slug): one
    panel per target, top-1 (95% intervals) against executed training MACs (log x); the
    curve as a line through its points, dense at E as a star, sparse rows' theoretical
    non-zero MACs as hollow markers joined to their executed point, the Pareto front over
    every point of the panel dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench.report import mean_ci, pareto_front
    from bench.report.plots import plain, row_styles, slug

    targets = sorted((t for (m, t) in curves_ if m == model), reverse=True)
    if not targets:
        return None
    curve_name = f"scratch curve ({CURVE_METHOD})"
    model_rows = cm[cm["model"] == model]
    styles = row_styles([curve_name, *dict.fromkeys(model_rows["label"])])   # one style per label on every panel
    curve_colour = styles[curve_name][0]
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.8), squeeze=False)
    for ax, t in zip(axes[0], targets):
        curve = curves_[(model, t)]
        ys = [mean_ci(p.acc.values()) for p in curve.points]
        xs = [p.macs for p in curve.points]
        ax.errorbar(xs, [100 * y.mean for y in ys], yerr=[100 * (y.half if y.n > 1 else 0) for y in ys],
                    color=curve_colour, marker="s", linewidth=2, capsize=3, label=plain(curve_name))
        for p, y in zip(curve.points, ys):
            ax.annotate(f"{p.epochs} ep", (p.macs, 100 * y.mean), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=curve_colour)
        rows = model_rows[model_rows["curve_target"] == t]
        px, py = list(xs), [y.mean for y in ys]
        for _, r in rows.iterrows():
            a = agg[(agg["model"] == model) & (agg["label"] == r["label"]) & (agg["target_key"] == r["target_key"])]
            if a.empty:
                continue
            a = a.iloc[0]
            half = a.get("test_acc_ci", NAN)
            style = (dict(marker="*", markersize=15, color="black") if r["label"] == DENSE_LABEL
                     else dict(marker=styles[r["label"]][1], color=styles[r["label"]][0]))
            name = r["label"] + (" (dense at E)" if r["label"] == DENSE_LABEL else "")
            line = ax.errorbar([r["cm_macs"]], [100 * a["test_acc"]], yerr=[100 * (half if half == half else 0)],
                               linestyle="none", capsize=3, label=plain(name), **style)
            if r["cm_nonzero_where"]:
                color = line[0].get_color()
                ax.plot([r["cm_macs_nonzero"], r["cm_macs"]], [100 * a["test_acc"]] * 2, linestyle=":",
                        color=color, linewidth=1)
                ax.plot([r["cm_macs_nonzero"]], [100 * a["test_acc"]], marker=styles[r["label"]][1], markerfacecolor="none",
                        color=color, linestyle="none")
            px.append(r["cm_macs"])
            py.append(a["test_acc"])
        front = pareto_front(px, py)
        fx, fy = zip(*sorted((x, y) for x, y, f in zip(px, py, front) if f))
        ax.step(fx, [100 * y for y in fy], where="post", color="grey", linestyle="--", linewidth=1, zorder=0,
                label="Pareto front")
        _training_macs_axes(ax, "top-1 test accuracy (%)",
                            plain(f"{model} at {t:.0%} of the parameters (bars: 95% CI over seeds; hollow: "
                                  f"non-zero MACs)"))
    legend = {}                                       # one legend beside the panels, off the points
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = out / f"scratch_curve_{slug(model)}{f'_{slug(data)}' if data else ''}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def section(cm: pd.DataFrame, runs: pd.DataFrame, agg: pd.DataFrame, model: str, out: Path,
            references: set[str], correction_name: str = "") -> tuple[list[str], list[Path]]:
    """README lines of the compute-matched comparison of `model` and its plots (none when no
    target of the model has a curve of two points or more); one part per data fingerprint."""
    parts = by_data(runs)
    lines, paths = [], []
    for data, r in parts:
        one = len(parts) == 1
        part, path = _section(cm if one else cm[cm["data"] == data], r, agg if one else agg[agg["data"] == data],
                              model, out, references, correction_name, "" if one else data)
        lines += part
        paths += [path] if path else []
    return lines, paths


def _section(cm: pd.DataFrame, runs: pd.DataFrame, agg: pd.DataFrame, model: str, out: Path,
             references: set[str], correction_name: str, data: str) -> tuple[list[str], Optional[Path]]:
    """section() on the runs of one data fingerprint (`data` named in the heading and the
    plot's file name where the folder holds several)."""
    from bench.report.rendering import p_text   # here: bench.report imports this module
    found = {k: c for k, c in curves(runs).items() if k[0] == model and len(c.points) > 1}
    if not found:
        return [], None
    path = plot(cm, found, agg, model, out, data)
    corrected = (f"corrected over the rows of each target ({correction_name})" if correction_name
                 else "each at 95% on its own")
    lines = ["### Compute-matched: against the scratch curve" + (f" (data `{data}`)" if data else ""), "",
             f"Each row against `{CURVE_METHOD}` trained from scratch for longer (the scratch curve: its points "
             "below), at the row's own *executed* training MACs (dense kernels count as they run), interpolated "
             "linearly in log training MACs between the two nearest points; outside the curve's range the row is "
             "*beyond the curve* (no extrapolation). Gap in points with its 95% Welch interval over the seeds of "
             "the row and of the curve (the row's own interval, not corrected); verdict from its p-value, "
             f"{corrected}, so an interval that excludes 0 can sit beside *not distinguishable*. Beside it, the "
             "row's verdict against dense_small at equal epochs (from the pooled model of the table above, a "
             "stronger test than Welch's on a few seeds). docs/compute-matched.md explains the choices.", "",
             f"![scratch curve {model}]({path.name})", ""]
    for t in sorted((k[1] for k in found), reverse=True):
        curve = found[(model, t)]
        rows = cm[(cm["model"] == model) & (cm["curve_target"] == t)]
        lines += [f"**At {t:.0%}**: {headline(rows, references)}", "",
                  "Curve: " + "; ".join(f"{p.label} {p.epochs} ep, {_macs(p.macs)}, {100 * p.mean:.2f}% (n={len(p.acc)})"
                                        for p in curve.points) + ".", "",
                  "| row | target | training MACs (executed) | top-1 % | curve there % | gap, points [95% CI] "
                  f"| p{f' ({correction_name})' if correction_name else ''} | vs curve | vs dense_small, equal epochs | non-zero MACs: gap |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            a = agg[(agg["model"] == model) & (agg["label"] == r["label"]) & (agg["target_key"] == r["target_key"])]
            acc = f"{100 * a.iloc[0]['test_acc']:.2f}" if len(a) else "-"
            target = "-" if r["target_key"] < 0 else f"{r['target_key']:.0%}"
            curve_there = "-" if r["cm_curve"] != r["cm_curve"] else f"{100 * r['cm_curve']:.2f}"
            p = r["cm_gap_padj"] if correction_name else r["cm_gap_p"]
            nonzero = "" if not r["cm_nonzero_where"] else (
                f"{_macs(r['cm_macs_nonzero'])}: " + (BEYOND if r["cm_nonzero_where"] == BEYOND else
                                                      _gap_text(r["cm_nonzero_gap"], r["cm_nonzero_gap_lo"],
                                                                r["cm_nonzero_gap_hi"])))
            lines.append(f"| {r['label']} | {target} | {_macs(r['cm_macs'])} | {acc} | {curve_there} "
                         f"| {_gap_text(r['cm_gap'], r['cm_gap_lo'], r['cm_gap_hi'])} "
                         f"| {p_text(p)} | {r['cm_verdict']} | {r['equal_epoch'] or '-'} "
                         f"| {nonzero} |")
        lines.append("")
    return lines, path


# --------------------------------------------------------------------------- several budgets on one plane
def budget_points(results_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every row and curve point of several suites (e.g. one model at a 4-epoch and a
    16-epoch budget) on one plane: one line per (suite folder, model, target, label) with
    the suite's budget E (its dense rows' epochs), the row's mean executed training MACs
    and mean top-1, and whether it is a point of that suite's scratch curve. Rows without
    a target are repeated at each target of their model."""
    from bench.report import load_runs
    records = []
    for folder in results_dirs:
        runs, _ = load_runs(Path(folder))
        if runs.empty or not {"method", "epochs", "train_macs", "test_acc"} <= set(runs):
            continue
        if "status" in runs:
            runs = runs[runs["status"].fillna("finished") == "finished"]
        dense = runs.loc[runs["label"] == DENSE_LABEL, "epochs"]
        budget = int(dense.mode().iloc[0]) if len(dense) else int(runs["epochs"].mode().iloc[0])
        found = curves(runs)
        for (model, t), curve in found.items():
            for p in curve.points:
                records.append({"suite": str(folder), "budget": budget, "model": model, "target": t, "label": p.label,
                                "epochs": p.epochs, "macs": p.macs, "acc": p.mean, "curve": True})
            on_curve = set(runs.loc[runs["method"] == CURVE_METHOD, "label"])
            keys = runs["target"].map(_target_key)
            rows = runs[(runs["model"] == model) & keys.isin([t, -1.0]) & ~runs["label"].isin(on_curve)
                        & ~runs["label"].map(is_added_curve_label)]
            for label, g in rows.groupby("label"):
                records.append({"suite": str(folder), "budget": budget, "model": model, "target": t, "label": label,
                                "epochs": int(g["epochs"].mode().iloc[0]), "macs": float(g["train_macs"].mean()),
                                "acc": float(g["test_acc"].mean()), "curve": False})
    return pd.DataFrame(records, columns=["suite", "budget", "model", "target", "label", "epochs", "macs", "acc",
                                          "curve"])


def budgets_plot(results_dirs: Iterable[str | Path], out: str | Path) -> list[Path]:
    """scratch_curve_budgets_<model>.png in `out`, one per model whose scratch curves come
    from two or more budgets (one budget's plane is its report's), one panel per target:
    every suite's scratch curve (a line per budget E) and rows (colour: label; marker:
    budget) against executed training MACs (log x), means over seeds; see budget_points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench.report.plots import plain, slug
    pts = budget_points(results_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markers, styles = "os^Dv", ["-", "--", ":", "-."]
    labels = sorted(set(pts.loc[~pts["curve"], "label"]))
    palette = [c for k, c in enumerate(plt.get_cmap("tab20").colors) if k > 1]       # the blues are the curves'
    colour = {lab: ("black" if lab == DENSE_LABEL else palette[k % len(palette)]) for k, lab in enumerate(labels)}
    paths = []
    for model in dict.fromkeys(pts["model"]):
        sub = pts[pts["model"] == model]
        targets = sorted(set(sub["target"]), reverse=True)
        budgets = sorted(set(sub.loc[sub["curve"], "budget"]))
        if len(budgets) < 2:
            continue
        fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.8), squeeze=False)
        for ax, t in zip(axes[0], targets):
            for k, b in enumerate(budgets):
                at = sub[(sub["target"] == t) & (sub["budget"] == b)]
                c = at[at["curve"]].sort_values("macs")
                ax.plot(c["macs"], 100 * c["acc"], color="tab:blue", linestyle=styles[k % len(styles)],
                        marker=markers[k % len(markers)], label=f"scratch curve, budget E = {b} ep")
                for _, r in at[~at["curve"]].iterrows():
                    ax.plot([r["macs"]], [100 * r["acc"]], linestyle="none", marker=markers[k % len(markers)],
                            color=colour[r["label"]], label=plain(f"{r['label']} (E = {b})"))
            _training_macs_axes(ax, "top-1 test accuracy (%), mean over seeds",
                                plain(f"{model} at {t:.0%} of the parameters: budgets {', '.join(map(str, budgets))} "
                                      f"epochs"))
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"scratch_curve_budgets_{slug(model)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
