"""Does the ranking of methods hold from one setting to the next?

`python -m bench compare SUITE_DIR [SUITE_DIR ...]` reads the finished runs of several
suites (one suite folder = one *setting*: a model, a training budget, a recipe) and
writes a markdown section and a critical-difference diagram (`--out`, default
`out/compare/`):

- **Ranks per cell.** A cell is one (setting, model, budget in epochs, target) of
  finished runs; a row is a method label. In each cell the rows are ranked by their mean
  top-1 over seeds (rank 1 = best; equal means share the average rank). Runs without a
  target (dense, dense_leaky, decorrelated_bp: full-size models) form a "full size" cell
  of their own; `references=True` also ranks them inside every target cell of their
  setting, model and budget, as the ceiling the compressed rows are measured against.
- **Kendall's tau** (Kendall 1938) between the rankings of two cells of *different*
  settings at the *same* target, over the rows both cells have (rows in one cell only
  are named and left out). It is tau-b (Kendall 1945), which corrects for tied means;
  with fewer than three shared rows (two give +-1 by construction), or a cell whose
  shared rows all tie, tau is undefined.
- **Verdicts side by side** (bench.verdicts): each row's corrected verdicts against its
  control, the comparators and the scratch curve in every setting, and whether they hold.
- **Average ranks with the Friedman test and the Nemenyi post-hoc test** over the target
  cells (Demsar 2006): blocks = cells, treatments = rows. The Friedman test needs a
  complete table, so rows and cells with missing entries are dropped one at a time (the
  one with the largest share of missing entries first; on a tie, a row before a cell)
  until it is complete; what was dropped is listed. The critical difference
  CD = q_alpha * sqrt(k (k + 1) / (6 N)) (k rows, N cells, q_alpha the studentized
  range's upper alpha quantile for k groups and infinite degrees of freedom over
  sqrt(2)) is the smallest gap in average rank that the Nemenyi test calls significant.

Why Friedman + Nemenyi and not its Bayesian counterpart: the Friedman test uses only the
ranks inside each cell, so cells of very different accuracy (a 4-epoch VGG and an
8-epoch ResNet) are commensurable without choosing a region of practical equivalence in
accuracy points, and its critical-difference diagram is the standard picture of "which
methods are distinguishable over several settings". Its weakness at this size (N of 2 to
5 cells) is power: the CD is wide, and the section says when nothing is separated.

The ranks read the runs straight from `runs/*/summary.json` (and `config.yaml` for runs
that have not finished) by `load_setting`; per-seed duplicates (the same cell, label and
seed twice) are averaged, as the report does. The verdicts are the report's own.

The statistics come from scipy (`kendalltau`, `friedmanchisquare`, `studentized_range`)
and scikit-posthocs (`posthoc_nemenyi_friedman`, `critical_difference_diagram`).

References: J. Demsar, "Statistical comparisons of classifiers over multiple data sets",
JMLR 7:1-30, 2006. M. G. Kendall, "A new measure of rank correlation", Biometrika
30(1/2):81-93, 1938; "The treatment of ties in ranking problems", Biometrika
33(3):239-251, 1945. R. L. Iman and J. M. Davenport, "Approximations of the critical
region of the Friedman statistic", Communications in Statistics A 9(6):571-595, 1980.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from bench.config import ConfigError
from bench.records import read_run_config, read_suite, read_summary, run_folder
from bench.report.rendering import p_text

DEFAULT_OUT = Path("out/compare")
ALPHA = 0.05
FULL_SIZE = None            # the target of a cell of runs without a target
MIN_SHARED = 3              # two rows give tau = +-1 by construction (p = 1): no evidence either way


class CompareError(ValueError):
    """Input that cannot be compared (a folder without finished runs, one setting only);
    the command prints its message as one line and exits non-zero."""


# --------------------------------------------------------------------------- loading
@dataclass
class Setting:
    """One suite folder: its finished runs (one row per run: model, budget, target,
    label, seed, acc) and counts of the runs that did not enter."""
    name: str
    path: Path
    runs: pd.DataFrame
    unfinished: int = 0
    diverged: list[str] = field(default_factory=list)
    curve_points: int = 0           # finished runs of the scratch curve's added points (not ranked)


def _model_name(model: dict) -> str:
    """`vgg11 w0.5`: the model's name, and its width where it is not 1."""
    name = str(model.get("name", "?"))
    width = model.get("width")
    return name if width in (None, 1, 1.0) else f"{name} w{float(width):g}"


def load_setting(path: str | Path) -> Setting:
    """The finished runs under `path/runs/*/` (or `path/*/` when `path` is itself a folder
    of run folders): model (name and width), budget (train.epochs), target (None for a
    full-size run: NaN), label, seed and final top-1 (`test_acc`). A run folder with a
    config.yaml but no summary.json is counted as unfinished; a summary whose status is
    `diverged` is named and left out (it has no accuracy). suite.json and every summary are
    checked as they are read (bench.records): a damaged one, a run that names no model,
    seed, or label or method, and a run folder linked from elsewhere are a one-line error
    naming it."""
    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"{path}: not a folder")
    runs_dir = path / "runs" if (path / "runs").is_dir() else path
    name = path.name
    suite_file = path / "suite.json"
    if os.path.lexists(suite_file):
        name = read_suite(suite_file).get("suite") or name
    rows, unfinished, diverged = [], 0, []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        run_folder(run, path, runs_dir)
        summary_file = run / "summary.json"
        if not os.path.lexists(summary_file):
            unfinished += (run / "config.yaml").is_file()
            continue
        s = read_summary(summary_file, identity=True)
        status = s.get("status", "finished")
        if status == "diverged":
            diverged.append(s.get("run_id", run.name))
            continue
        acc = s.get("test_acc")
        if status != "finished" or acc is None:
            unfinished += 1
            continue
        cfg = s.get("config")
        if not cfg and os.path.lexists(run / "config.yaml"):
            cfg = read_run_config(run / "config.yaml")
        cfg = cfg or {}
        target = s.get("target")
        epochs = s.get("epochs") or cfg.get("train", {}).get("epochs")
        if epochs is None:
            raise CompareError(f"{summary_file}: no epochs in the summary or its config")
        rows.append({"model": _model_name(cfg.get("model") or {"name": s.get("model")}),
                     "budget": int(epochs),
                     "target": math.nan if target is None else float(target),
                     "label": s.get("label") or cfg.get("label") or s.get("method"),
                     "method": s.get("method") or (cfg.get("method") or {}).get("name"),
                     "seed": int(s.get("seed", cfg.get("seed", 0))), "acc": float(acc),
                     "precision": s.get("precision") if isinstance(s.get("precision"), str) else "unrecorded"})
    runs = pd.DataFrame(rows, columns=["model", "budget", "target", "label", "method", "seed", "acc", "precision"])
    if runs.empty:
        raise CompareError(f"{path}: no finished runs (looked for {runs_dir}/*/summary.json with status finished)")
    ranked = _scratch_rows_in_their_budget(runs).drop(columns="method")
    return Setting(name=name, path=path, runs=ranked, unfinished=unfinished, diverged=diverged,
                   curve_points=len(runs) - len(ranked))


def _scratch_rows_in_their_budget(runs: pd.DataFrame) -> pd.DataFrame:
    """Scratch-B (`scratch_b`) trains dense_small longer by design: its run belongs to the cell of
    the budget it is compared at, the largest of its model's dense budgets (epochs of the
    `dense` runs) at or below its own epochs. The scratch curve's added points (scratch_<k>x)
    are curve points of the compute-matched comparison, not rows, and are left out."""
    from bench.scratch_curve import CURVE_METHOD, is_added_curve_label
    runs = runs[~runs["label"].map(lambda lab: is_added_curve_label(str(lab)))].copy()
    for model, g in runs.groupby("model"):
        budgets = sorted(set(g.loc[g["method"] == "dense", "budget"]))
        for i in g.index[(g["method"] == CURVE_METHOD)]:
            below = [b for b in budgets if b <= runs.at[i, "budget"]]
            if below:
                runs.at[i, "budget"] = below[-1]
    return runs


def _unique_names(settings: list[Setting]) -> None:
    """Two folders with the same suite name are told apart by their paths."""
    names = [s.name for s in settings]
    for s in settings:
        if names.count(s.name) > 1:
            s.name = str(s.path)


# --------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    setting: str
    model: str
    budget: int
    target: Optional[float]

    def _key(self) -> tuple:
        return self.setting, self.model, self.budget, 1.0 if self.target is None else -self.target

    def __lt__(self, other: "Cell") -> bool:       # pandas sorts group keys
        return self._key() < other._key()

    @property
    def title(self) -> str:
        target = "full size" if self.target is None else f"target {self.target:g}"
        return f"{self.setting}: {self.model}, {self.budget} ep, {target}"


def cell_means(settings: Sequence[Setting], references: bool = False) -> pd.DataFrame:
    """One row per (cell, label): mean top-1 over seeds (`acc`), the number of seeds
    (`seeds`) and the rank in its cell (`rank`, 1 = best, ties averaged). A seed run twice
    counts once, with the mean of its runs. With `references`, the full-size rows of a
    setting, model and budget are also ranked in each of its target cells."""
    frames = []
    for s in settings:
        r = s.runs.assign(setting=s.name, target_key=s.runs["target"].fillna(-1.0))
        per_seed = r.groupby(["setting", "model", "budget", "target_key", "label", "seed"])["acc"].mean()
        g = per_seed.groupby(level=["setting", "model", "budget", "target_key", "label"])
        frames.append(pd.DataFrame({"acc": g.mean(), "seeds": g.size()}).reset_index())
    means = pd.concat(frames, ignore_index=True)
    if references:
        full = means[means["target_key"] < 0]
        targets = means.loc[means["target_key"] >= 0, ["setting", "model", "budget", "target_key"]].drop_duplicates()
        copies = targets.merge(full.drop(columns="target_key"), on=["setting", "model", "budget"])
        means = pd.concat([means, copies], ignore_index=True)
    means["cell"] = [Cell(s, m, int(b), None if t < 0 else float(t))
                     for s, m, b, t in zip(means["setting"], means["model"], means["budget"], means["target_key"])]
    # Top-1 is a multiple of 1/test-set-size; equal means differ only by float rounding
    # (0.7797 vs 0.7797000000000001), and that must not break their tie.
    means["rank"] = means["acc"].round(9).groupby(means["cell"]).rank(ascending=False, method="average")
    return means[["cell", "label", "acc", "seeds", "rank"]]


def cell_order(means: pd.DataFrame) -> list[Cell]:
    """The cells, settings in the order given, then by model, budget and target (largest
    first; full size last)."""
    settings = list(dict.fromkeys(c.setting for c in means["cell"]))
    return sorted(set(means["cell"]), key=lambda c: (settings.index(c.setting),) + c._key()[1:])


def rank_table(means: pd.DataFrame) -> pd.DataFrame:
    """Rows = labels, columns = cells (`cell_order`): rank in the cell, NaN where the row
    did not run there."""
    cells = cell_order(means)
    return means.pivot(index="label", columns="cell", values="rank").reindex(columns=cells)


# --------------------------------------------------------------------------- Kendall's tau
@dataclass
class TauPair:
    a: Cell
    b: Cell
    tau: float              # tau-b; NaN where undefined
    pvalue: float
    shared: list[str]
    only_a: list[str]
    only_b: list[str]


def kendall(x: pd.Series, y: pd.Series) -> tuple[float, float, list[str]]:
    """Kendall's tau-b between two rankings (label -> rank or score, the same direction in
    both) over their shared labels: (tau, two-sided p, shared labels). Ties count as
    neither concordant nor discordant and tau-b's denominator corrects for them; with
    fewer than MIN_SHARED shared labels, or all shared labels tied in one ranking, tau is NaN."""
    shared = sorted(set(x.dropna().index) & set(y.dropna().index))
    if len(shared) < MIN_SHARED:
        return math.nan, math.nan, shared
    res = stats.kendalltau(x[shared].to_numpy(), y[shared].to_numpy(), variant="b")
    return float(res.statistic), float(res.pvalue), shared


def tau_pairs(means: pd.DataFrame) -> list[TauPair]:
    """Kendall's tau for each pair of cells from different settings at the same target
    (full-size cells with full-size cells)."""
    ranks = rank_table(means)
    out = []
    for a, b in itertools.combinations(ranks.columns, 2):
        if a.setting == b.setting or a.target != b.target:
            continue
        tau, p, shared = kendall(ranks[a], ranks[b])
        in_a, in_b = set(ranks[a].dropna().index), set(ranks[b].dropna().index)
        out.append(TauPair(a, b, tau, p, shared, sorted(in_a - in_b), sorted(in_b - in_a)))
    return out


# --------------------------------------------------------------------------- Friedman + Nemenyi
def complete_block(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list]:
    """`table` (rows = blocks/cells, columns = treatments/labels, NaN = missing) made
    complete by dropping, one at a time, the label or cell with the largest share of
    missing entries (a label before a cell on a tie; among equal labels or cells, the first
    in the table's order): (complete table, dropped labels, dropped cells)."""
    dropped_labels, dropped_cells = [], []
    t = table.copy()
    while t.size and t.isna().to_numpy().any():
        col_miss, row_miss = t.isna().mean(axis=0), t.isna().mean(axis=1)
        if col_miss.max() >= row_miss.max():
            worst = col_miss.idxmax()
            dropped_labels.append(worst)
            t = t.drop(columns=worst)
        else:
            worst = row_miss.idxmax()
            dropped_cells.append(worst)
            t = t.drop(index=worst)
    return t, dropped_labels, dropped_cells


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference in average rank for k treatments over n blocks
    (Demsar 2006, sec. 3.2.2): q_alpha * sqrt(k (k + 1) / (6 n)), where q_alpha is the
    upper-alpha quantile of the studentized range for k groups and infinite degrees of
    freedom, divided by sqrt(2) (Demsar's table: 2.343 for k = 3 at alpha = 0.05)."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


@dataclass
class Friedman:
    """The Friedman test over the complete table and its Nemenyi post-hoc comparisons."""
    table: pd.DataFrame             # cells x labels, mean top-1
    mean_ranks: pd.Series           # label -> average rank (1 = best), best first
    chi2: float                     # Friedman's chi-square statistic (tie-corrected)
    pvalue: float
    iman_davenport: float           # F_F = (N-1) chi2 / (N (k-1) - chi2)
    pvalue_f: float
    cd: float
    nemenyi: pd.DataFrame           # label x label p-values
    alpha: float
    dropped_labels: list = field(default_factory=list)
    dropped_cells: list = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.table.shape[1]

    @property
    def n(self) -> int:
        return self.table.shape[0]


def friedman_nemenyi(table: pd.DataFrame, alpha: float = ALPHA) -> Friedman:
    """Friedman's test (scipy) on a complete table (rows = cells, columns = labels, higher
    = better), Iman and Davenport's F form of it, which Demsar (2006) recommends as less
    conservative, and the Nemenyi p-values (scikit-posthocs). Needs k >= 3 labels and
    N >= 2 cells."""
    import scikit_posthocs as sp
    n, k = table.shape
    if k < 3 or n < 2:
        raise CompareError(f"Friedman needs at least 3 rows and 2 cells, has {k} rows and {n} cells")
    chi2, p = stats.friedmanchisquare(*(table[c].to_numpy() for c in table.columns))
    denom = n * (k - 1) - chi2
    ff = math.inf if denom <= 0 else (n - 1) * chi2 / denom
    p_f = 0.0 if denom <= 0 else float(stats.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    ranks = table.rank(axis=1, ascending=False, method="average").mean(axis=0).sort_values()
    nemenyi = sp.posthoc_nemenyi_friedman(table.to_numpy())
    nemenyi.index = nemenyi.columns = list(table.columns)
    return Friedman(table=table, mean_ranks=ranks, chi2=float(chi2), pvalue=float(p), iman_davenport=float(ff),
                    pvalue_f=p_f, cd=critical_difference(k, n, alpha), nemenyi=nemenyi, alpha=alpha)


def plot_cd(result: Friedman, path: Path) -> Path:
    """The critical-difference diagram (scikit-posthocs): average ranks on the axis, rows
    that the Nemenyi test does not separate joined by a bar, the CD drawn above the axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp
    from bench.report.plots import plain            # labels shown literally: no `$` starts math text
    fig, ax = plt.subplots(figsize=(8, 0.35 * result.k + 1.6))
    ranks, nemenyi = result.mean_ranks.rename(index=plain), result.nemenyi.rename(index=plain, columns=plain)
    sp.critical_difference_diagram(ranks, nemenyi, cd=result.cd, alpha=result.alpha, ax=ax,
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}")
    ax.set_title(f"Average rank over {result.n} cells (1 = best); Nemenyi CD = {result.cd:.2f} at alpha = "
                 f"{result.alpha:g}", fontsize=9, pad=24)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the section
@dataclass
class Comparison:
    settings: list[Setting]
    means: pd.DataFrame
    taus: list[TauPair]
    friedman: Optional[Friedman]
    friedman_note: str              # why there is no Friedman test, or ""
    references: bool
    verdict_lines: list[str] = field(default_factory=list)   # bench.verdicts.section


def compare(suite_dirs: Iterable[str | Path], alpha: float = ALPHA, references: bool = False) -> Comparison:
    """Everything the section shows, from the suite folders (at least two settings)."""
    dirs = {}                       # resolved path -> the path as given, first spelling kept
    given = [Path(d) for d in suite_dirs]
    for d in given:
        dirs.setdefault(d.resolve(), d)
    if len(dirs) < 2:
        got = (f"got {len(given)}, all the same folder ({given[0]})" if len(given) > 1 else
               f"got {len(given)}")
        raise CompareError(f"needs at least two different suite folders (settings) to compare; {got}")
    settings = [load_setting(d) for d in dirs.values()]
    _unique_names(settings)
    means = cell_means(settings, references=references)
    target_means = means[means["cell"].map(lambda c: c.target is not None)]
    table = target_means.pivot(index="cell", columns="label", values="acc")
    table = table.reindex(index=cell_order(target_means))
    full, dropped_labels, dropped_cells = complete_block(table)
    result, note = None, ""
    try:
        result = friedman_nemenyi(full, alpha)
        result.dropped_labels, result.dropped_cells = dropped_labels, dropped_cells
    except CompareError as e:
        note = (f"No Friedman test: {e} after dropping rows {', '.join(dropped_labels) or 'none'} "
                f"and cells {', '.join(c.title for c in dropped_cells) or 'none'}.")
    from bench.verdicts import section as verdict_section
    return Comparison(settings, means, tau_pairs(means), result, note, references,
                      verdict_section([(s.name, s.path) for s in settings]))


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def _pval(v: float) -> str:
    """The report's p-value text (`0.030`, `<0.001`), `n/a` for none."""
    return p_text(v) or "n/a"


def _p(v: float) -> str:
    """`p = 0.030`, `p <0.001`."""
    text = _pval(v)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def section(c: Comparison, figure: Optional[str] = "cd.png") -> list[str]:
    """The markdown lines of the cross-setting section (`figure`: the CD diagram's path
    relative to the markdown file, None for no image)."""
    lines = ["## What moves between settings", ""]
    lines += ["| setting | folder | finished runs | cells (model, budget, target) | seeds | precision | not entered |",
              "|---|---|---|---|---|---|---|"]
    for s in c.settings:
        cells = s.runs[["model", "budget", "target"]].fillna({"target": -1.0}).drop_duplicates()
        cells = sorted(cells.itertuples(index=False), key=lambda x: (x[0], x[1], -x[2]))
        cell_txt = "; ".join(f"{m}, {b} ep, {'full size' if t < 0 else f'target {t:g}'}" for m, b, t in cells)
        seeds = ", ".join(str(x) for x in sorted(s.runs["seed"].unique()))
        skipped = []
        if s.unfinished:
            skipped.append(f"{s.unfinished} unfinished")
        if s.diverged:
            skipped.append(f"{len(s.diverged)} diverged ({', '.join(s.diverged)})")
        if s.curve_points:
            skipped.append(f"{s.curve_points} scratch-curve point(s) (compute-matched comparison only)")
        precisions = s.runs["precision"].value_counts()
        precision = (precisions.index[0] if len(precisions) == 1 else
                     "**mixed**: " + ", ".join(f"{n} {p}" for p, n in precisions.items()))
        lines.append(f"| {s.name} | `{s.path}` | {len(s.runs)} | {cell_txt} | {seeds} | {precision} | "
                     f"{'; '.join(skipped) or 'none'} |")
    lines.append("")

    # ranks per cell
    ranks = rank_table(c.means)
    idx = c.means.set_index(["label", "cell"])
    order = list(c.friedman.mean_ranks.index) if c.friedman else []
    order += sorted(set(ranks.index) - set(order), key=lambda lab: (ranks.loc[lab].mean(), lab))
    lines += ["### Rank in each cell", "",
              "Rank by mean top-1 over seeds (1 = best; equal means share the average rank), then the mean top-1 "
              "in % and the number of seeds. `*`: fewer seeds than the most-seeded row of the cell. "
              "`-`: the row did not run in that cell."
              + (" Full-size rows are also ranked inside each target cell (`--references`)." if c.references else
                 " Full-size rows (no target) are ranked among themselves only."), ""]
    cells = list(ranks.columns)
    lines.append("| row | " + " | ".join(cell.title for cell in cells) + " |")
    lines.append("|---|" + "---|" * len(cells))
    max_seeds = c.means.groupby("cell")["seeds"].max()
    for lab in order:
        out = []
        for cell in cells:
            if (lab, cell) not in idx.index:
                out.append("-")
                continue
            r = idx.loc[(lab, cell)]
            star = "*" if r["seeds"] < max_seeds[cell] else ""
            out.append(f"{r['rank']:g} ({100 * r['acc']:.2f}, {int(r['seeds'])}{star})")
        lines.append(f"| {lab} | " + " | ".join(out) + " |")
    lines.append("")

    # Kendall's tau
    lines += ["### Kendall's tau between settings", ""]
    if not c.taus:
        lines += ["No two settings share a target: no pair of rankings to compare.", ""]
    else:
        lines += ["Tau-b between the rankings of two cells of different settings at the same target, over the rows "
                  "both have (1: same order, -1: reversed, 0: unrelated; ties count as neither concordant nor "
                  "discordant). p: two-sided test of tau = 0. Rows that ran in one cell only are named and left out; "
                  "the ranks of rows marked `*` above rest on fewer seeds than the rest of their cell.",
                  "", "| cell A | cell B | tau | p | shared rows | only in A | only in B |",
                  "|---|---|---|---|---|---|---|"]
        for t in c.taus:
            lines.append(f"| {t.a.title} | {t.b.title} | {_fmt(t.tau)} | {_pval(t.pvalue)} | {len(t.shared)} | "
                         f"{', '.join(t.only_a) or '-'} | {', '.join(t.only_b) or '-'} |")
        lines.append("")
    lines += c.verdict_lines

    # Friedman + Nemenyi
    lines += ["### Average ranks over the target cells (Friedman + Nemenyi)", ""]
    f = c.friedman
    if f is None:
        lines += [c.friedman_note, ""]
        return lines
    entered = "; ".join(cell.title for cell in f.table.index)
    lines += [f"Entered: {f.k} rows over {f.n} cells ({entered})."]
    if f.dropped_labels:
        lines.append(f"Rows left out (missing in some cell): {', '.join(map(str, f.dropped_labels))}.")
    if f.dropped_cells:
        lines.append(f"Cells left out (the largest share of rows missing): "
                     f"{'; '.join(cell.title for cell in f.dropped_cells)}.")
    fewer = _fewer_seeds(c.means, f.table)
    if fewer:
        lines.append(f"Entered on fewer seeds than their cell's most-seeded row (their mean is a noisier "
                     f"estimate; read their ranks as provisional): {fewer}.")
    verdict = "the rows' ranks differ beyond chance" if f.pvalue_f < f.alpha else \
        "no difference between the rows' ranks is detected"
    lines += ["", f"Friedman chi-square = {f.chi2:.2f} ({_p(f.pvalue)}); Iman-Davenport F = "
              f"{_fmt(f.iman_davenport)} with ({f.k - 1}, {(f.k - 1) * (f.n - 1)}) degrees of freedom "
              f"({_p(f.pvalue_f)}): at alpha = {f.alpha:g}, {verdict}. Nemenyi critical difference "
              f"CD = {f.cd:.2f} ranks (k = {f.k}, N = {f.n}).", ""]
    rejected = f.pvalue_f < f.alpha
    lines += ["| row | average rank | significantly worse than (Nemenyi p) |", "|---|---|---|"]
    for lab, rank in f.mean_ranks.items():
        worse_than = [f"{o} (p {_pval(f.nemenyi.loc[lab, o])})" for o, r in f.mean_ranks.items()
                      if r < rank and f.nemenyi.loc[lab, o] < f.alpha]
        lines.append(f"| {lab} | {rank:.2f} | {(', '.join(worse_than) or '-') if rejected else 'not tested'} |")
    lines.append("")
    if not rejected:
        lines += ["The Friedman test does not reject equal ranks, so no pair is tested (the Nemenyi test only "
                  "follows a rejection); the diagram still shows the average ranks and the CD.", ""]
    if f.mean_ranks.iloc[-1] - f.mean_ranks.iloc[0] <= f.cd:
        lines += [f"The whole range of average ranks ({f.mean_ranks.iloc[-1] - f.mean_ranks.iloc[0]:.2f}) is within "
                  f"one CD: over these {f.n} cells the test separates no two rows.", ""]
    if figure:
        lines += [f"![critical-difference diagram]({figure})", ""]
    return lines


def _fewer_seeds(means: pd.DataFrame, table: pd.DataFrame) -> str:
    """The entered rows that have fewer seeds than their cell's most-seeded entered row:
    'set (1 of 3 seeds in 2 cells), ...', or ''."""
    m = means[means["cell"].isin(table.index) & means["label"].isin(table.columns)]
    most = m.groupby("cell")["seeds"].transform("max")
    short = m[m["seeds"] < most].assign(most=most[m["seeds"] < most])
    parts = []
    for lab, g in short.groupby("label", sort=True):
        seeds = "/".join(sorted({f"{int(a)} of {int(b)}" for a, b in zip(g["seeds"], g["most"])}))
        parts.append(f"{lab} ({seeds} seeds in {len(g)} cell{'s' if len(g) > 1 else ''})")
    return ", ".join(parts)


def write(c: Comparison, out: Path) -> Path:
    """compare.md (and cd.png when there is a Friedman test) under `out`, and the
    compute-matched plane of every model that two or more budgets' scratch curves reach
    (bench.scratch_curve.budgets_plot: scratch_curve_budgets_<model>.png)."""
    from bench.scratch_curve import budgets_plot
    out.mkdir(parents=True, exist_ok=True)
    figure = None
    if c.friedman is not None:
        plot_cd(c.friedman, out / "cd.png")
        figure = "cd.png"
    lines = section(c, figure)
    planes = budgets_plot([s.path for s in c.settings], out)
    if planes:
        lines += ["", "## Several budgets on the compute-matched plane", "",
                  "Each budget's scratch curve (dense_small trained E, 2E, ... epochs) as its own line and "
                  "every row at its executed training MACs, marked by budget (docs/compute-matched.md).", ""]
        lines += [f"![{p.stem}]({p.name})" for p in planes]
    md = out / "compare.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(suite_dirs: Sequence[str], out: str | Path = DEFAULT_OUT, alpha: float = ALPHA,
         references: bool = False) -> int:
    """The command: 0 and the written paths, or 1 and one line on bad input (checked before
    any work: 0 < alpha < 1, and `--out` a folder this process may write in or one it can
    create (bench.configure.check_output_dir); then every file read). A failure to write
    is one line too, and removes the `--out` folder where this command created it."""
    import shutil
    import sys
    from bench.configure import check_output_dir
    out = Path(out)
    try:
        if not 0 < alpha < 1:
            raise CompareError(f"--alpha {alpha:g}: a significance level is between 0 and 1 (exclusive), "
                               f"e.g. --alpha 0.05")
        check_output_dir(out, "--out")
        c = compare(suite_dirs, alpha=alpha, references=references)
    except (CompareError, ConfigError) as e:       # ConfigError: a damaged record (bench.records), --out
        print(f"compare: {e}", file=sys.stderr)
        return 1
    made = not os.path.lexists(out)
    try:
        md = write(c, out)
    except BaseException as e:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, ConfigError):             # a record the plots read again (bench.records)
            print(f"compare: {e}", file=sys.stderr)
            return 1
        if not isinstance(e, OSError):
            raise
        why = " ".join(str(e.strerror or e).split())
        where = f" ({e.filename})" if e.filename else ""
        print(f"compare: --out {out}: cannot write there: {why}{where}; give a folder this process may write in",
              file=sys.stderr)
        return 1
    print(f"wrote {md}" + (f" and {md.parent / 'cd.png'}" if c.friedman else f" ({c.friedman_note})"))
    return 0
