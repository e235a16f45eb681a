"""The report's statistics over seeds: intervals of a mean, one linear model per
comparison family, all pairwise comparisons corrected for multiplicity, compact letters.

A *family* is every row of one model at one target (with the rows they are compared
with: their controls and the suite's comparators). Its accuracies are fitted with one
ordinary least-squares model

    acc_{r,s} = mu + alpha_r + beta_s + e_{r,s},   e ~ N(0, sigma^2)

(`acc ~ C(label) + C(seed)`, statsmodels): the seed is a block (the same seed gives
the same initialisation and data order to every row, so a good or bad seed moves every
row together), and sigma^2 is pooled over every row of the family. Every pair of rows
is compared by the t-test of its contrast alpha_a - alpha_b on the residual degrees of
freedom, and the p-values of all k(k-1)/2 pairs are corrected together with Holm's
step-down procedure (Holm 1979), which keeps the chance of any false "better" or
"worse" in the family below alpha under any dependence between the tests. The same
corrected p-values give the compact letters (Piepho 2004: rows sharing a letter are
not resolved) and the better / worse verdicts against the control and the
comparators, so the letters and the verdicts never disagree. docs/statistics.md
explains the choices.

Why pooled and not paired per pair: with three seeds a per-pair variance has 2 degrees
of freedom and varies by an order of magnitude between pairs (rows that share their
first epochs with their control are nearly identical at a seed, independent rows are
not), so a ranking built on per-pair tests says how noisy a pairing is rather than how
good a row is. The pooled model gives every pair of equally-seeded rows the same
standard error, so with equal seeds the letters follow the means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# The multiplicity correction, by its statsmodels.stats.multitest name, and how the report names it.
CORRECTION = "holm"
CORRECTION_NAMES = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}
NAN = float("nan")


# --------------------------------------------------------------------------- one row over seeds
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


# --------------------------------------------------------------------------- a family of rows
@dataclass(frozen=True)
class Comparison:
    """Row a against row b in one family: the estimated difference a - b (the OLS
    contrast; with the same seeds in both rows, the mean of the per-seed differences),
    its standard error from the pooled variance, and the p-value of the two-sided t-test
    before (`p`) and after (`p_adj`) the family's correction."""
    a: str
    b: str
    diff: float
    se: float
    p: float
    p_adj: float
    alpha: float = ALPHA

    @property
    def resolved(self) -> bool:
        return self.p_adj < self.alpha

    @property
    def verdict(self) -> str:
        """better / worse when the corrected test resolves the pair, else not distinguishable."""
        if self.p_adj != self.p_adj:
            return "cannot tell"
        if not self.resolved:
            return "not distinguishable"
        return "better" if self.diff > 0 else "worse"

    def flipped(self) -> "Comparison":
        return Comparison(self.b, self.a, -self.diff, self.se, self.p, self.p_adj, self.alpha)


@dataclass
class Family:
    """All pairwise comparisons of the rows of one family (see the module docstring).

    `members` are in decreasing mean order; `letters[m]` is m's compact letter string
    (empty where nothing could be tested: fewer than two rows, or no residual degrees
    of freedom); `sigma` and `df` are the pooled residual standard deviation and its
    degrees of freedom (NaN / 0 when the model cannot estimate them)."""
    members: list[str]
    means: dict[str, float]
    seeds: dict[str, int]
    sigma: float = NAN
    df: float = 0.0
    method: str = CORRECTION
    alpha: float = ALPHA
    pairs: dict[tuple[str, str], Comparison] = field(default_factory=dict)
    letters: dict[str, str] = field(default_factory=dict)
    row_sd: dict[str, float] = field(default_factory=dict)

    @property
    def tested(self) -> bool:
        return bool(self.pairs)

    def compare(self, a: str, b: str) -> Optional[Comparison]:
        """a against b (a - b), or None when the pair was not tested."""
        if (a, b) in self.pairs:
            return self.pairs[(a, b)]
        if (b, a) in self.pairs:
            return self.pairs[(b, a)].flipped()
        return None

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def resolvable(self, n: Optional[int] = None) -> tuple[float, float]:
        """(always, never): two rows of n seeds each (default: the most common seed count)
        whose means differ by more than `always` are resolved whatever else the family
        holds (the first, strictest step of Holm's procedure: Bonferroni's bound,
        t_{1 - alpha/(2m), df} sigma sqrt(2/n) over m pairs); by less than `never` they are
        never resolved (its last step: the uncorrected bound t_{1 - alpha/2, df} sigma
        sqrt(2/n)). In between, it depends on how many other pairs are resolved. The same
        two bounds hold for Benjamini-Hochberg."""
        if not self.tested or self.df < 1:
            return NAN, NAN
        n = n or int(pd.Series(list(self.seeds.values())).mode().max())
        se = self.sigma * math.sqrt(2 / n)
        m = max(self.n_pairs, 1)
        return (float(stats.t.ppf(1 - self.alpha / (2 * m), self.df) * se),
                float(stats.t.ppf(1 - self.alpha / 2, self.df) * se))


def fit_family(values: Mapping[str, Mapping[int, float]], method: str = CORRECTION,
               alpha: float = ALPHA) -> Family:
    """One family from {row name: {seed: value}}: the OLS `value ~ C(row) + C(seed)`
    (statsmodels), every pair of rows compared on the pooled residual variance
    (`OLSResults.t_test_pairwise`, corrected with `method`: a
    statsmodels.stats.multitest name, Holm by default) and the compact letter display
    of the corrected p-values (scikit-posthocs; Piepho 2004) with the rows in decreasing
    mean order, so that `a` marks the best row's group."""
    values = {k: {int(s): float(v) for s, v in vals.items() if v == v} for k, vals in values.items()}
    values = {k: v for k, v in values.items() if v}
    means = {k: float(np.mean(list(v.values()))) for k, v in values.items()}
    members = sorted(values, key=lambda k: (-means[k], k))
    fam = Family(members, means, {k: len(values[k]) for k in members}, method=method, alpha=alpha)
    if len(members) < 2:
        return fam
    codes = {k: f"r{i:03d}" for i, k in enumerate(members)}      # formula-safe level names, in mean order
    frame = pd.DataFrame([{"row": codes[k], "seed": s, "y": v} for k, vals in values.items() for s, v in vals.items()])
    seeds = frame["seed"].nunique()
    df_resid = len(frame) - len(members) - (seeds - 1)
    if df_resid < 1:
        return fam
    import statsmodels.formula.api as smf
    terms = "y ~ C(row)" + (" + C(seed)" if seeds > 1 else "")
    fit = smf.ols(terms, frame).fit()
    if not fit.scale > 0:            # a perfect fit (planted, or identical runs): nothing to test on
        return fam
    fam.sigma, fam.df = float(math.sqrt(fit.scale)), float(fit.df_resid)
    fam.row_sd = row_spread(frame.assign(resid=fit.resid), codes, seeds)
    table = fit.t_test_pairwise("C(row)", method=method, alpha=alpha).result_frame
    back = {c: k for k, c in codes.items()}
    for name, r in table.iterrows():
        hi, lo = name.split("-")                        # "r002-r000": level r002 minus the reference r000
        a, b = back[hi], back[lo]
        fam.pairs[(a, b)] = Comparison(a, b, float(r["coef"]), float(r["std err"]), float(r["P>|t|"]),
                                       float(r[f"pvalue-{method}"]), alpha)
    fam.letters = compact_letters(fam)
    return fam


def row_spread(frame: pd.DataFrame, codes: dict[str, str], seeds: int) -> dict[str, float]:
    """Each row's own residual standard deviation, a check of the pooled model's one-sigma
    assumption: sqrt(k / (k - 1) * sum_s e_{r,s}^2 / (n_r - 1)) over the row's n_r seeds (k
    rows; unbiased for sigma^2 in a balanced table, where E sum_s e_{r,s}^2 =
    sigma^2 (n - 1)(k - 1) / k). NaN for a row of one seed."""
    k = len(codes)
    out = {}
    for name, code in codes.items():
        e = frame.loc[frame["row"] == code, "resid"].to_numpy()
        out[name] = float(math.sqrt(k / (k - 1) * (e ** 2).sum() / (len(e) - 1))) if len(e) > 1 and seeds > 1 else NAN
    return out


def compact_letters(fam: Family) -> dict[str, str]:
    """Letters per member (Piepho 2004, as scikit-posthocs computes them): two members share
    a letter unless their corrected comparison resolves them; letters are assigned in the
    members' order (decreasing mean), so `a` is the best row's group."""
    import scikit_posthocs as sp
    k = len(fam.members)
    p = np.ones((k, k))
    for i, a in enumerate(fam.members):
        for j, b in enumerate(fam.members):
            if i != j:
                p[i, j] = fam.compare(a, b).p_adj
    letters = sp.compact_letter_display(pd.DataFrame(p, index=fam.members, columns=fam.members), alpha=fam.alpha)
    return {k: str(v).replace(" ", "") for k, v in letters.items()}
