"""The report's statistics over seeds, checked against hand computations on planted
tables: textbook t intervals of a mean; the linear model `acc ~ row + seed` with its
pooled variance and the Holm-corrected pairwise tests; the compact letters (including
the case whose per-pair paired tests gave non-monotone "tiers"); a verdict that the
correction flips (and Benjamini-Hochberg would not); the resolvable difference; and what
the README says with one seed and with three."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report import (aggregate, comparators_section, fit_family, highlights, markdown_table, mean_ci,
                          pareto_front, ranking_lines)

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, from the printed tables.
T975 = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451}


def textbook(values: list[float]) -> tuple[float, float, float]:
    """mean, lo, hi by hand: mean -+ t_{0.975, n-1} s / sqrt(n)."""
    n, m = len(values), statistics.fmean(values)
    half = T975[n - 1] * statistics.stdev(values) / math.sqrt(n)
    return m, m - half, m + half


@pytest.mark.parametrize("values", [[0.70, 0.72, 0.74], [0.5, 0.9], [0.61, 0.64, 0.60, 0.66, 0.63]])
def test_the_interval_of_a_mean_is_the_textbook_t_interval(values):
    ci = mean_ci(values)
    assert (ci.mean, ci.lo, ci.hi) == pytest.approx(textbook(values), abs=1e-7)
    assert ci.n == len(values)


def test_one_value_has_no_interval_and_nan_is_left_out():
    ci = mean_ci([0.8, float("nan")])
    assert ci.n == 1 and ci.mean == 0.8 and math.isnan(ci.lo) and math.isnan(ci.hi)


def test_pareto_front_keeps_the_points_nothing_beats():
    x = [1.0, 2.0, 2.0, 3.0, 4.0, float("nan")]
    y = [0.70, 0.80, 0.75, 0.78, 0.90, 0.99]
    assert pareto_front(x, y).tolist() == [True, True, False, False, True, False]


# --------------------------------------------------------------------------- the family, by hand
BASE = [0.80, 0.82, 0.78]          # a large seed effect, shared by every row


def rows(offsets: dict[str, list[float]], base=BASE) -> dict[str, dict[int, float]]:
    return {k: {s: b + x for s, (b, x) in enumerate(zip(base, off))} for k, off in offsets.items()}


def by_hand(values: dict[str, dict[int, float]]) -> tuple[float, int, dict[tuple[str, str], tuple[float, float]]]:
    """For a balanced table (every row every seed): the pooled residual variance of the
    additive two-way model (double-centred residuals over (k-1)(n-1) df), and for every
    pair the raw and Holm-adjusted p-values of t = (mean_a - mean_b) / sqrt(2 s^2 / n)."""
    labels = list(values)
    y = np.array([[values[k][s] for s in sorted(values[k])] for k in labels])
    k, n = y.shape
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    df = (k - 1) * (n - 1)
    s2 = float((resid ** 2).sum() / df)
    raw = {}
    for i in range(k):
        for j in range(i + 1, k):
            t = (y[i].mean() - y[j].mean()) / math.sqrt(2 * s2 / n)
            raw[(labels[i], labels[j])] = 2 * stats.t.sf(abs(t), df)
    order = sorted(raw, key=raw.get)                 # Holm: the i-th smallest times (m - i), running max
    m, running, adj = len(order), 0.0, {}
    for i, pair in enumerate(order):
        running = max(running, min(1.0, (m - i) * raw[pair]))
        adj[pair] = running
    return s2, df, {p: (raw[p], adj[p]) for p in raw}


# Per-pair paired tests against the leader put `loose` (lower mean, a noisy pairing) with the
# leader and `tight` (higher mean, a pairing 30x less variable) below it: "tiers" out of mean order.
NON_MONOTONE = rows({"lead": [0.010, 0.010, 0.010],
                     "tight": [0.001, 0.0015, 0.0005],
                     "loose": [0.006, -0.004, -0.005],
                     "low": [-0.010, -0.0095, -0.0105],
                     "lower": [-0.020, -0.0195, -0.0205]})


def test_the_planted_table_gave_non_monotone_tiers_under_per_pair_paired_tests():
    def paired_p(a: str) -> float:
        return stats.ttest_1samp([NON_MONOTONE[a][s] - NON_MONOTONE["lead"][s] for s in range(3)], 0).pvalue
    var = {a: np.var([NON_MONOTONE[a][s] - NON_MONOTONE["lead"][s] for s in range(3)], ddof=1) for a in ("tight", "loose")}
    assert var["loose"] / var["tight"] > 30
    assert np.mean(list(NON_MONOTONE["tight"].values())) > np.mean(list(NON_MONOTONE["loose"].values()))
    assert paired_p("tight") < 0.05 < paired_p("loose")           # the higher row separated, the lower one not


def test_one_pooled_model_gives_the_hand_computed_tests_and_letters_that_follow_the_means():
    fam = fit_family(NON_MONOTONE)
    s2, df, pairs = by_hand(NON_MONOTONE)
    assert fam.df == df == 8 and fam.sigma ** 2 == pytest.approx(s2, rel=1e-9)
    for (a, b), (raw, adj) in pairs.items():
        c = fam.compare(a, b)
        assert (c.p, c.p_adj) == pytest.approx((raw, adj), rel=1e-6)
        assert c.diff == pytest.approx(np.mean(list(NON_MONOTONE[a].values())) - np.mean(list(NON_MONOTONE[b].values())))
    # Only tight-loose is unresolved (p_adj 0.39); every other pair is resolved.
    assert [p for p, (_, adj) in pairs.items() if adj >= 0.05] == [("tight", "loose")]
    assert fam.members == ["lead", "tight", "loose", "low", "lower"]
    assert fam.letters == {"lead": "a", "tight": "b", "loose": "b", "low": "c", "lower": "d"}


def test_a_chain_of_overlaps_gives_shared_letters():
    """a ~ b, b ~ c, a resolved from c, d far below: a / ab / b / c (the textbook display)."""
    base = [0.80, 0.81, 0.79, 0.80]
    noise = [0.004, -0.004, 0.004, -0.004]           # the same residual pattern in every row but d
    values = rows({"a": [0.020 + e for e in noise], "b": [0.012 - e for e in noise],
                   "c": [0.004 + e for e in noise], "d": [-0.050 - e for e in noise]}, base=base)
    fam = fit_family(values)
    _, _, pairs = by_hand(values)
    resolved = {p for p, (_, adj) in pairs.items() if adj < 0.05}
    assert ("a", "b") not in resolved and ("b", "c") not in resolved and ("a", "c") in resolved
    assert fam.letters == {"a": "a", "b": "ab", "c": "b", "d": "c"}


def test_a_one_seed_row_far_below_is_resolved_not_ranked_with_the_best():
    """A row with one run at 10% accuracy is tested on the pooled variance like the others:
    it gets a letter of its own and is worse than every other row."""
    values = dict(NON_MONOTONE, one_seed={0: 0.10})
    fam = fit_family(values)
    assert fam.letters["one_seed"] and not set(fam.letters["one_seed"]) & set("".join(
        v for k, v in fam.letters.items() if k != "one_seed"))
    assert all(fam.compare("one_seed", k).verdict == "worse" for k in NON_MONOTONE)
    assert fam.members[-1] == "one_seed"


def test_the_resolvable_difference_is_holms_first_and_last_step():
    fam = fit_family(NON_MONOTONE)
    s2, df, pairs = by_hand(NON_MONOTONE)
    se = math.sqrt(2 * s2 / 3)
    always, never = fam.resolvable()
    assert always == pytest.approx(stats.t.ppf(1 - 0.05 / (2 * len(pairs)), df) * se)
    assert never == pytest.approx(stats.t.ppf(0.975, df) * se)
    for (a, b), (_, adj) in pairs.items():          # consistent with the tests themselves
        d = abs(fam.means[a] - fam.means[b])
        assert (d > always and adj < 0.05) or (d < never and adj >= 0.05) or never <= d <= always


# --------------------------------------------------------------------------- a verdict the correction flips
FLIP_BASE = [0.80, 0.82, 0.78, 0.81]
NOISE = {"A": [1, -1, 0, 0], "B": [-1, 0, 1, 0], "C": [0, 1, -1, 0]}     # double-centred: rows and seeds sum to 0
SCALE = 0.002


def flip_offsets() -> dict[str, list[float]]:
    """Rows A, B = A + d, C = A + 2d with d chosen so that the two adjacent pairs have a raw
    p-value of exactly 0.0375: below 0.05, but Holm doubles it (0.075) while
    Benjamini-Hochberg keeps it (0.0375)."""
    e = {k: np.array(v) * SCALE for k, v in NOISE.items()}
    s2 = sum(float((v ** 2).sum()) for v in e.values()) / ((3 - 1) * (4 - 1))
    d = stats.t.ppf(1 - 0.0375 / 2, 6) * math.sqrt(2 * s2 / 4)
    return {k: list(e[k] + i * d) for i, k in enumerate("ABC")}


def test_holm_makes_a_nominally_significant_difference_not_distinguishable_and_bh_keeps_it():
    values = rows(flip_offsets(), base=FLIP_BASE)
    holm, bh = fit_family(values), fit_family(values, method="fdr_bh")
    assert holm.compare("B", "A").p == pytest.approx(0.0375)
    assert holm.compare("B", "A").p_adj == pytest.approx(0.075) and holm.compare("B", "A").verdict == "not distinguishable"
    assert bh.compare("B", "A").p_adj == pytest.approx(0.0375) and bh.compare("B", "A").verdict == "better"
    assert holm.compare("C", "A").verdict == "better"              # 2d: resolved either way
    assert holm.letters == {"C": "a", "B": "ab", "A": "b"}
    # Each row's own residuals are its planted noise (two of +-0.002): its own SD is the pooled one.
    assert holm.sigma == pytest.approx(SCALE) and holm.row_sd == pytest.approx({k: SCALE for k in "ABC"})


def test_each_rows_own_residual_spread_shows_where_one_pooled_sigma_fits_poorly():
    fam = fit_family(NON_MONOTONE)
    # by hand: double-centred residuals, k / (k - 1) * sum e^2 / (n - 1) per row
    labels = list(NON_MONOTONE)
    y = np.array([[NON_MONOTONE[k][s] for s in range(3)] for k in labels])
    e = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    expected = {k: math.sqrt(5 / 4 * (e[i] ** 2).sum() / 2) for i, k in enumerate(labels)}
    assert fam.row_sd == pytest.approx(expected)
    assert np.mean([v ** 2 for v in fam.row_sd.values()]) == pytest.approx(fam.sigma ** 2)
    assert max(fam.row_sd, key=fam.row_sd.get) == "loose"


def test_the_report_verdict_against_the_control_is_the_corrected_one():
    offsets = flip_offsets()
    runs = pd.DataFrame([run(lab, None if lab == "dense" else 0.5, s, FLIP_BASE[s] + offsets[k][s])
                         for k, lab in (("A", "dense"), ("B", "m1"), ("C", "m2")) for s in range(4)])
    agg = aggregate(runs, {}).set_index("label")
    assert agg.loc["m1", "test_acc_diff_p"] == pytest.approx(0.0375)            # uncorrected: "better"
    assert agg.loc["m1", "test_acc_diff_padj"] == pytest.approx(0.075)
    assert agg.loc["m1", "vs_control"] == "not distinguishable"
    assert agg.loc["m2", "vs_control"] == "better" and agg.loc["dense", "vs_control"] == ""
    assert agg.loc["m1", "family_pairs"] == 3                                   # m1, m2 and their control


# --------------------------------------------------------------------------- a planted suite
OFFSETS = {"dense_small": [0.020, 0.030, 0.025], "random_filter": [0.011, 0.005, 0.015],
           "pcn": [0.010, 0.012, 0.008]}


def planted(seeds=(0, 1, 2)) -> pd.DataFrame:
    out = []
    for s in seeds:
        out.append(run("dense", None, s, BASE[s]))
        for label, off in OFFSETS.items():
            out.append(run(label, 0.5, s, BASE[s] + off[s]))
    return pd.DataFrame(out)


def run(label: str, target, seed: int, acc: float) -> dict:
    return {"run_id": f"{label}-{target}-s{seed}", "label": label, "model": "m", "seed": seed, "target": target,
            "test_acc": acc, "control": "dense", "comparators": "dense_small,random_filter",
            "params_total": 1e6, "params_nonzero": 1e6, "macs": 1e8,
            "macs_nonzero": 1e8, "train_wall_s": 100.0 + 10 * seed, "train_macs": 1e12,
            "throughput_train_img_s": 100.0, "throughput_infer_img_s": 400.0, "transform_s": 0.0}


def test_aggregate_compares_each_row_with_its_control_and_the_comparators_in_one_family():
    runs = planted()
    agg = aggregate(runs, {}).set_index("label")
    pcn = agg.loc["pcn"]
    acc = [b + o for b, o in zip(BASE, OFFSETS["pcn"])]
    assert (pcn["test_acc"], pcn["test_acc_lo"], pcn["test_acc_hi"]) == pytest.approx(textbook(acc))
    assert pcn["seeds"] == 3 and pcn["timed_n"] == 3
    assert (pcn["train_wall_s_min"], pcn["train_wall_s_max"]) == (100.0, 120.0)     # timings: min-max, no t interval
    values = {lab: {s: BASE[s] + (OFFSETS[lab][s] if lab in OFFSETS else 0.0) for s in range(3)}
              for lab in ("dense", *OFFSETS)}
    _, _, pairs = by_hand(values)
    for other, col in (("dense", "test_acc_diff"), ("dense_small", "vs_dense_small_diff"),
                       ("random_filter", "vs_random_filter_diff")):
        raw, adj = pairs.get(("pcn", other)) or pairs[(other, "pcn")]
        assert pcn[col] == pytest.approx(np.mean(acc) - np.mean(list(values[other].values())))
        assert (pcn[col + "_p"], pcn[col + "_padj"]) == pytest.approx((raw, adj), rel=1e-6)
    # A paired t-test over the three seeds alone calls pcn better than dense (offsets 1.0, 1.2, 0.8 points);
    # on the pooled variance, corrected over the 6 pairs at 50%, it is not resolved (p_adj 0.065).
    assert pcn["vs_control"] == "not distinguishable" and pcn["vs_dense_small_verdict"] == "worse"
    assert pcn["vs_random_filter_verdict"] == "not distinguishable"
    assert agg.loc["dense", "vs_control"] == "" and agg.loc["dense_small", "vs_dense_small_verdict"] == ""


def test_the_readme_shows_letters_the_resolvable_difference_and_the_comparators():
    runs = planted()
    agg = aggregate(runs, {})
    table = markdown_table(agg, "m")
    assert "| letters | control | Δ top-1 vs control | p (Holm) | vs control |" in table
    (pcn,) = [line for line in table.splitlines() if line.startswith("| pcn |")]
    letters = agg.set_index("label").loc["pcn", "letters"]
    assert pcn.startswith("| pcn | 50% | 81.00 ± ") and letters == "b"
    assert "| b | dense | +1.00 | 0.065 | not distinguishable | 3 |" in pcn
    (line,) = ranking_lines(agg, runs, "m")
    assert line.startswith("- Ranking at 50% of the parameters (rows sharing a letter are not resolved): "
                           "dense_small 82.50 a, random_filter 81.03 b, pcn 81.00 b, dense (no target) 80.00 b.")
    assert "Holm over the 6 pairs of this family" in line and "points between rows of 3 seeds (" in line
    mostly_one_seed = runs[(runs["seed"] == 0) | (runs["label"] == "dense_small")
                           | ((runs["label"] == "random_filter") & (runs["seed"] == 1))]   # seeds 1, 1, 2, 3
    (line,) = ranking_lines(aggregate(mostly_one_seed, {}), mostly_one_seed, "m")
    assert "points between rows of 1 seed (" in line
    section = "\n".join(comparators_section(agg, "m"))
    assert "| method | target | n | Δ top-1 vs dense_small | p (Holm) | vs dense_small | Δ top-1 vs random_filter |" in section
    assert "| pcn | 50% | 3 | -1.50 | " in section and "| worse | " in section and "| not distinguishable |" in section
    assert "| dense_small | 50%" not in section and "| random_filter | 50%" not in section   # comparators are not candidates


def test_rows_with_fewer_seeds_than_the_family_are_marked_provisional():
    runs = planted()
    runs = runs[~((runs["label"] == "pcn") & (runs["seed"] > 0))]          # pcn has finished seed 0 only
    (line,) = ranking_lines(aggregate(runs, {}), runs, "m")
    assert "pcn (1 seed) " in line and "dense_small 82.50 a" in line and "dense_small (" not in line
    assert "rows marked with fewer than 3 seeds: their letters rest on the pooled σ alone" in line
    assert "dense_small 82.50" in highlights(aggregate(runs, {}), "m", runs)[0]
    runs = planted()
    runs = runs[~((runs["label"] == "dense_small") & (runs["seed"] > 0))]  # the best row has one seed
    assert "dense_small (1 seed, provisional) " in highlights(aggregate(runs, {}), "m", runs)[0]
    (full,) = ranking_lines(aggregate(planted(), {}), planted(), "m")
    assert "seed)" not in full and "provisional" not in full


def test_a_single_seed_suite_says_it_cannot_separate_methods():
    runs = planted(seeds=(0,))
    agg = aggregate(runs, {})
    lines = ranking_lines(agg, runs, "m")
    assert len(lines) == 1 and "cannot separate methods" in lines[0]
    assert "| pcn | 50% | 81.00 |  | dense | +1.00 |  | 1 seed: cannot tell | 1 |" in markdown_table(agg, "m")
