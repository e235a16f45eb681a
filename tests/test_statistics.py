"""The report's statistics over seeds (issue 18, item 2): textbook t intervals of a mean
and of a paired difference on planted tables, the better/worse verdicts, the "tied with
the best" tiers, the Pareto front, and what the README says with one seed and with three."""
from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from bench.report import (aggregate, controls_section, markdown_table, mean_ci, paired_difference, pareto_front,
                          ranking_lines, tiers, verdict)

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
    assert verdict(paired_difference({0: 0.8}, {0: 0.7})) == "1 seed: cannot tell"
    assert verdict(paired_difference({0: 0.8}, {1: 0.7})) == "no common seed"


def test_a_paired_difference_pairs_by_seed_and_gives_the_textbook_interval():
    a = {0: 0.810, 1: 0.832, 2: 0.788}
    b = {2: 0.780, 0: 0.800, 1: 0.820, 7: 0.5}         # another key order, and a seed a lacks: left out
    d = paired_difference(a, b)
    assert (d.mean, d.lo, d.hi) == pytest.approx(textbook([0.010, 0.012, 0.008]), abs=1e-9)
    assert d.n == 3 and verdict(d) == "better"
    # Unpaired, the seed-to-seed spread (±2 points) hides a 1-point difference that pairing shows.
    assert mean_ci(a.values()).lo < mean_ci([b[s] for s in a]).hi


@pytest.mark.parametrize("diffs,expected", [
    ([-0.010, -0.018, -0.017], "worse"),
    ([-0.001, 0.007, -0.007], "not distinguishable"),
    ([0.020, 0.021, 0.019], "better"),
])
def test_verdict_follows_whether_the_interval_excludes_zero(diffs, expected):
    d = paired_difference({s: 0.5 + x for s, x in enumerate(diffs)}, {s: 0.5 for s in range(len(diffs))})
    assert verdict(d) == expected


def test_tiers_group_rows_not_separable_from_the_best():
    base = {0: 0.80, 1: 0.82, 2: 0.78}
    values = {"best": {s: v + x for (s, v), x in zip(base.items(), [0.020, 0.030, 0.025])},
              "close": {s: v + x for (s, v), x in zip(base.items(), [0.011, 0.005, 0.015])},    # tied with best
              "worse": {s: v + x for (s, v), x in zip(base.items(), [0.010, 0.012, 0.008])},    # 1.5 pts below, tight
              "one_seed": {0: 0.10}}                                                              # cannot be separated
    assert tiers(values) == [["best", "close", "one_seed"], ["worse"]]


def test_pareto_front_keeps_the_points_nothing_beats():
    x = [1.0, 2.0, 2.0, 3.0, 4.0, float("nan")]
    y = [0.70, 0.80, 0.75, 0.78, 0.90, 0.99]
    assert pareto_front(x, y).tolist() == [True, True, False, False, True, False]


# --------------------------------------------------------------------------- a planted suite
BASE = [0.80, 0.82, 0.78]                    # dense per seed: a large seed effect
OFFSETS = {"dense_small": [0.020, 0.030, 0.025], "random_filter": [0.011, 0.005, 0.015],
           "pcn": [0.010, 0.012, 0.008]}


def planted(seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for s in seeds:
        rows.append(run("dense", None, s, BASE[s]))
        for label, off in OFFSETS.items():
            rows.append(run(label, 0.5, s, BASE[s] + off[s]))
    return pd.DataFrame(rows)


def run(label: str, target, seed: int, acc: float) -> dict:
    return {"run_id": f"{label}-{target}-s{seed}", "label": label, "model": "m", "seed": seed, "target": target,
            "test_acc": acc, "control": "dense", "params_total": 1e6, "params_nonzero": 1e6, "macs": 1e8,
            "macs_nonzero": 1e8, "train_wall_s": 100.0 + 10 * seed, "train_macs": 1e12,
            "throughput_train_img_s": 100.0, "throughput_infer_img_s": 400.0, "transform_s": 0.0}


def test_aggregate_gives_each_row_its_interval_and_paired_differences():
    agg = aggregate(planted(), {}).set_index("label")
    pcn = agg.loc["pcn"]
    acc = [b + o for b, o in zip(BASE, OFFSETS["pcn"])]
    assert (pcn["test_acc"], pcn["test_acc_lo"], pcn["test_acc_hi"]) == pytest.approx(textbook(acc))
    assert pcn["seeds"] == 3 and pcn["train_wall_s_ci"] == pytest.approx(T975[2] * 10 / math.sqrt(3))
    # against its control (dense, no target): the planted per-seed offsets
    assert (pcn["test_acc_diff"], pcn["test_acc_diff_lo"], pcn["test_acc_diff_hi"]) == pytest.approx(
        textbook(OFFSETS["pcn"])) and pcn["vs_control"] == "better"
    # against the extra controls, at the same target
    for control, expected in (("dense_small", "worse"), ("random_filter", "not distinguishable")):
        diffs = [p - c for p, c in zip(OFFSETS["pcn"], OFFSETS[control])]
        assert (pcn[f"vs_{control}_diff"], pcn[f"vs_{control}_diff_lo"], pcn[f"vs_{control}_diff_hi"]) == \
            pytest.approx(textbook(diffs))
        assert pcn[f"vs_{control}_verdict"] == expected and pcn[f"vs_{control}_diff_n"] == 3
    assert agg.loc["dense", "vs_control"] == "" and agg.loc["dense_small", "vs_dense_small_verdict"] == ""


def test_the_readme_shows_intervals_rankings_and_the_controls_section():
    runs = planted()
    agg = aggregate(runs, {})
    table = markdown_table(agg, "m")
    half = 100 * T975[2] * statistics.stdev(OFFSETS["pcn"]) / math.sqrt(3)
    assert f"| pcn | 50% | 81.00 ± {100 * (textbook([b + o for b, o in zip(BASE, OFFSETS['pcn'])])[2] - 0.81):.2f} " \
           f"| dense | +1.00 ± {half:.2f} | better | 3 |" in table
    assert ranking_lines(agg, runs, "m") == [
        "- Ranking at 50% of the parameters: tier 1: dense_small 82.50, random_filter 81.03; tier 2: pcn 81.00."]
    section = "\n".join(controls_section(agg, "m"))
    assert "| method | target | n | Δ top-1 vs dense_small | vs dense_small (95%) | Δ top-1 vs random_filter |" in section
    assert "| pcn | 50% | 3 | -1.50 ± " in section and "| worse | " in section and "| not distinguishable |" in section
    assert "| dense_small | 50%" not in section and "| random_filter | 50%" not in section   # controls are not candidates


def test_a_single_seed_suite_says_it_cannot_separate_methods():
    runs = planted(seeds=(0,))
    agg = aggregate(runs, {})
    lines = ranking_lines(agg, runs, "m")
    assert len(lines) == 1 and "cannot separate methods" in lines[0]
    assert "| pcn | 50% | 81.00 | dense | +1.00 | 1 seed: cannot tell | 1 |" in markdown_table(agg, "m")
