"""The compute-matched comparison: the scratch curve's interpolation, the gap's interval, the
placement of dense-kernel rows, the suite's scratch_curve expansion and the report's section."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import scratch_curve as sc
from bench.__main__ import main as cli
from bench.config import ConfigError, merge
from bench.configure import build_config
from bench.suite import expand, load_suite, run_identity, run_order
from test_suite import write_suite as suite_file

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- interpolation
MACS, ACC = [1e12, 2e12, 4e12], [0.70, 0.76, 0.79]


def test_interpolation_is_linear_in_log_training_macs_between_the_neighbours():
    assert sc.interpolate(MACS, ACC, math.sqrt(2) * 1e12) == pytest.approx(0.73)       # halfway in log
    # 1.5e12 is 58.5% of the way from 1e12 to 2e12 in log MACs (linear in MACs would say 50%: 0.73).
    assert sc.interpolate(MACS, ACC, 1.5e12) == pytest.approx(0.70 + 0.06 * math.log2(1.5))
    assert sc.interpolate(MACS, ACC, 3e12) == pytest.approx(0.76 + 0.03 * math.log2(1.5))
    assert sc.interpolate(list(reversed(MACS)), list(reversed(ACC)), 3e12) == pytest.approx(0.76 + 0.03 * math.log2(1.5))


def test_at_a_point_the_curve_is_that_point():
    assert sc.interpolate(MACS, ACC, 2e12) == 0.76
    assert sc.interpolate(MACS, ACC, 1e12) == 0.70 and sc.interpolate(MACS, ACC, 4e12) == 0.79
    assert sc.interpolate(MACS, ACC, 4e12 * (1 + 1e-12)) == 0.79            # float round-off of a mean


@pytest.mark.parametrize("x", [0.99e12, 4.01e12, 1e15, 0.0, float("nan")])
def test_outside_the_curve_there_is_no_value_never_an_extrapolation(x):
    assert sc.interpolate(MACS, ACC, x) is None
    curve = sc.Curve(tuple(sc.CurvePoint(e, m, {0: a, 1: a + 0.01}, f"p{e}") for e, m, a in zip((4, 8, 16), MACS, ACC)))
    g = sc.gap({0: 0.9, 1: 0.91}, curve, x)
    where = sc.BEYOND if x > 0 else sc.NO_MACS                     # 0 or NaN: the run recorded no training MACs
    assert g.where == where and g.gap != g.gap
    assert sc.verdict(g.p, g.gap, g.n_row, g.n_curve, g.beyond, where=g.where) == where


# --------------------------------------------------------------------------- the gap and its interval
def test_the_gaps_interval_equals_a_hand_computation():
    a = {0: 0.70, 1: 0.72, 2: 0.71}             # the curve at 1e12 MACs, per seed
    b = {0: 0.76, 1: 0.77, 2: 0.78, 3: 0.90}    # at 2e12; seed 3 has no neighbour below: left out
    curve = sc.Curve((sc.CurvePoint(4, 1e12, a, "dense_small"), sc.CurvePoint(8, 2e12, b, "scratch_2x")))
    row = {0: 0.75, 1: 0.74, 2: 0.77}
    g = sc.gap(row, curve, math.sqrt(2) * 1e12)                             # w = 1/2
    # By hand: c_s = (a_s + b_s) / 2 = 0.73, 0.745, 0.745 (mean 0.74); the row's mean 0.75333.
    # s_r^2 = (0.00333^2 + 0.01333^2 + 0.01667^2) / 2 = 2.3333e-4; s_c^2 = (0.01^2 + 2 x 0.005^2) / 2 = 7.5e-5.
    vr, vc = 2.3333333e-4 / 3, 7.5e-5 / 3
    se = math.sqrt(vr + vc)
    df = (vr + vc) ** 2 / (vr ** 2 / 2 + vc ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    assert (g.n_row, g.n_curve, g.where) == (3, 3, "between dense_small and scratch_2x")
    assert g.gap == pytest.approx(0.0133333, abs=1e-6)
    assert g.df == pytest.approx(df, rel=1e-5) and df == pytest.approx(3.1653, abs=1e-3)
    assert (g.lo, g.hi) == pytest.approx((0.0133333 - half, 0.0133333 + half), abs=1e-6)
    assert g.p == pytest.approx(2 * stats.t.sf(0.0133333 / se, df), rel=1e-4)
    # The same test, independently: Welch's two-sample t-test on the row and the per-seed curve.
    assert g.p == pytest.approx(stats.ttest_ind([0.75, 0.74, 0.77], [0.73, 0.745, 0.745], equal_var=False).pvalue)
    # Interpolating per seed keeps the neighbours' covariance: treating them as independent would
    # give s_c^2/n = (1/4)(s_a^2 + s_b^2)/3 = 5e-5 / 3 (s_a^2 = s_b^2 = 1e-4), a narrower interval.
    vi = 0.25 * (1e-4 + 1e-4) / 3
    independent = stats.t.ppf(0.975, (vr + vi) ** 2 / (vr ** 2 / 2 + vi ** 2 / 2)) * math.sqrt(vr + vi)
    assert g.hi - g.gap == pytest.approx(half, rel=1e-5) and g.hi - g.gap != pytest.approx(independent, rel=1e-2)


def test_one_seed_gives_a_gap_without_interval_or_verdict():
    curve = sc.Curve((sc.CurvePoint(4, 1e12, {0: 0.7}, "dense_small"), sc.CurvePoint(8, 2e12, {0: 0.8}, "s")))
    g = sc.gap({0: 0.9}, curve, 2e12)
    assert g.gap == pytest.approx(0.1) and g.lo != g.lo and g.p != g.p and g.where == "at s"
    assert sc.verdict(g.p, g.gap, g.n_row, g.n_curve, g.beyond) == "1 seed: cannot tell"


def test_neighbours_without_a_common_seed_give_no_gap():
    curve = sc.Curve((sc.CurvePoint(4, 1e12, {0: 0.7, 1: 0.7}, "a"), sc.CurvePoint(8, 2e12, {2: 0.8, 3: 0.8}, "b")))
    g = sc.gap({0: 0.9, 1: 0.8}, curve, 1.5e12)
    assert g.n_curve == 0 and g.gap != g.gap and g.where == "between a and b"
    assert sc.verdict(g.p, g.gap, g.n_row, g.n_curve, g.beyond) == "no seed common to the curve's neighbours"


def test_verdicts_follow_the_p_value_and_its_correction():
    assert sc.verdict(0.01, 0.02, 3, 3, False) == "better" and sc.verdict(0.01, -0.02, 3, 3, False) == "worse"
    assert sc.verdict(0.2, 0.02, 3, 3, False) == "not distinguishable"
    assert sc.adjust([0.01, 0.04, float("nan")], None)[:2] == [0.01, 0.04]
    holm = sc.adjust([0.01, 0.04, float("nan")], "holm")
    assert holm[:2] == pytest.approx([0.02, 0.04]) and holm[2] != holm[2]


# --------------------------------------------------------------------------- rows of a suite
def planted_runs() -> pd.DataFrame:
    """vgg11 at 25%: dense_small at 4, 8, 16 epochs (1, 2, 4 TMAC); dsr at 2.5 TMAC executed
    (dense kernels), 0.6 TMAC in theory; pcn at 1.5 TMAC; dense at 4 TMAC; three seeds."""
    rows = []
    def add(label, method, target, epochs, macs, accs, nonzero=None):
        for seed, acc in enumerate(accs):
            rows.append({"run_id": f"{label}-s{seed}", "label": label, "method": method, "model": "vgg11",
                         "target": target, "epochs": epochs, "seed": seed, "test_acc": acc, "train_macs": macs,
                         "train_macs_nonzero": macs if nonzero is None else nonzero, "status": "finished"})
    add("dense_small", "dense_small", 0.25, 4, 1e12, [0.70, 0.71, 0.72])
    add("scratch_b", "dense_small", 0.25, 8, 2e12, [0.75, 0.76, 0.77])      # Scratch-B's rule gave 2E
    add("scratch_4x", "dense_small", 0.25, 16, 4e12, [0.78, 0.79, 0.80])
    add("dsr", "dsr", 0.25, 4, 2.5e12, [0.74, 0.745, 0.75], nonzero=0.6e12)
    add("pcn", "pcn", 0.25, 4, 1.5e12, [0.80, 0.81, 0.82])
    add("dense", "dense", None, 4, 4e12, [0.79, 0.80, 0.81])
    return pd.DataFrame(rows)


def planted_agg(runs: pd.DataFrame) -> pd.DataFrame:
    keys = runs["target"].map(lambda t: -1.0 if t is None or t != t else float(t))
    agg = runs.assign(target_key=keys).groupby(["model", "label", "target_key"], as_index=False)["test_acc"].mean()
    agg["vs_dense_small_verdict"] = agg["label"].map({"dsr": "better", "pcn": "better"}).fillna("")
    return agg


def test_a_row_with_dense_kernel_training_macs_is_placed_at_its_executed_macs():
    runs = planted_runs()
    cm = sc.compute_matched(planted_agg(runs), runs).set_index("label")
    assert set(cm.index) == {"dsr", "pcn", "dense"}                        # the curve's points are not rows
    dsr = cm.loc["dsr"]
    assert dsr["cm_macs"] == 2.5e12 and dsr["cm_macs_nonzero"] == 0.6e12
    curve_there = np.mean([(1 - w) * a + w * b for a, b, w in
                           zip([0.75, 0.76, 0.77], [0.78, 0.79, 0.80], [math.log2(1.25)] * 3)])
    assert dsr["cm_curve"] == pytest.approx(curve_there)                   # at 2.5e12, not at 0.6e12
    assert dsr["cm_gap"] == pytest.approx(0.745 - curve_there)
    assert dsr["cm_where"] == "between scratch_b and scratch_4x"
    assert dsr["cm_nonzero_where"] == sc.BEYOND                            # 0.6e12 is below the curve's first point
    assert cm.loc["pcn", "cm_nonzero_where"] == "" and cm.loc["pcn", "cm_verdict"] == "better"
    assert cm.loc["dense", "cm_where"] == "at scratch_4x" and cm.loc["dense", "target_key"] == -1.0


def test_the_non_zero_gap_is_given_where_the_theoretical_figure_is_on_the_curve():
    runs = planted_runs()
    runs.loc[runs["label"] == "dsr", "train_macs_nonzero"] = 1e12
    dsr = sc.compute_matched(planted_agg(runs), runs).set_index("label").loc["dsr"]
    assert dsr["cm_nonzero_where"] == "at dense_small"
    assert dsr["cm_nonzero_gap"] == pytest.approx(0.745 - 0.71)


def test_the_headline_names_who_beats_the_curve_and_who_only_beats_dense_small_at_equal_epochs():
    runs = planted_runs()
    cm = sc.compute_matched(planted_agg(runs), runs)
    line = sc.headline(cm, references={"dense"})
    assert line.startswith("beat the scratch curve at their own training compute: pcn (+")
    assert "beat dense_small only at equal epochs: dsr" in line


def test_a_row_beyond_the_curve_is_not_said_to_beat_dense_small_only_at_equal_epochs():
    runs = planted_runs()
    runs.loc[runs["label"] == "dsr", "train_macs"] = 5e12                 # past the curve's last point
    line = sc.headline(sc.compute_matched(planted_agg(runs), runs), references={"dense"})
    assert "only at equal epochs" not in line and line.endswith("beyond the curve (no verdict): dsr.")


def test_a_row_without_training_macs_says_so_not_beyond_the_curve():
    runs = planted_runs()
    runs.loc[runs["label"] == "dsr", "train_macs"] = float("nan")
    dsr = sc.compute_matched(planted_agg(runs), runs).set_index("label").loc["dsr"]
    assert dsr["cm_where"] == sc.NO_MACS and dsr["cm_verdict"] == sc.NO_MACS


def test_rows_and_curves_on_different_data_never_meet():
    one = planted_runs().assign(data="aaaa")
    other = planted_runs().assign(data="bbbb")
    other.loc[other["label"] == "dsr", "test_acc"] -= 0.2                # a much worse dsr on the other data
    other["run_id"] += "-b"
    runs = pd.concat([one, other], ignore_index=True)
    agg = runs.assign(target_key=runs["target"].map(lambda t: -1.0 if t is None or t != t else float(t))).groupby(
        ["model", "label", "target_key", "data"], as_index=False)["test_acc"].mean()
    cm = sc.compute_matched(agg, runs)
    alone = sc.compute_matched(planted_agg(one), one).set_index("label")
    mixed = cm[cm["data"] == "aaaa"].set_index("label")
    assert len(cm) == 2 * len(alone)                                       # each row once per data, no more
    assert mixed.loc["dsr", "cm_gap"] == pytest.approx(alone.loc["dsr", "cm_gap"])
    assert mixed.loc["dsr", "cm_gap_p"] == pytest.approx(alone.loc["dsr", "cm_gap_p"])
    assert len(sc.add_columns(agg, cm)) == len(agg)


def write_runs(runs, folder: Path) -> Path:
    """`runs` (rows as planted_runs gives them) as finished run folders under `folder`/runs."""
    for _, r in runs.iterrows():
        run = folder / "runs" / r["run_id"]
        run.mkdir(parents=True)
        summary = {k: (None if k == "target" and (v is None or v != v) else v) for k, v in r.items()}
        summary.update(params_total=1e6, params_nonzero=1e6, macs=1e8, macs_nonzero=1e8, train_wall_s=1.0,
                       env={"device": "cpu"}, config={"wandb": {"mode": "disabled"}})
        (run / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_report_has_the_compute_matched_section_and_keeps_the_curve_out_of_the_equal_epoch_table(
        tmp_path, monkeypatch):
    from bench.report import write_report
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs = planted_runs()
    runs.loc[runs["label"] == "scratch_b", "label"] = "scratch_2x"
    write_runs(runs, tmp_path)
    write_report(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert (tmp_path / "scratch_curve_vgg11.png").is_file() and "![scratch curve vgg11](scratch_curve_vgg11.png)" in readme
    assert "### Compute-matched: against the scratch curve" in readme
    assert "**At 25%**: beat the scratch curve at their own training compute: pcn (+" in readme
    equal_epochs = readme[:readme.index("### Compute-matched")]
    assert "| scratch_2x |" not in equal_epochs and "| scratch_4x |" not in equal_epochs
    table = pd.read_csv(tmp_path / "table.csv").set_index("label")
    assert table.loc["dsr", "cm_macs"] == 2.5e12 and table.loc["dsr", "cm_verdict"] in (
        "better", "worse", "not distinguishable")


# --------------------------------------------------------------------------- the suite's scratch_curve
def write_suite(tmp_path: Path, **changes) -> Path:
    """test_suite's tiny suite with dense, dense_small, Scratch-B and a 3-point scratch curve."""
    return suite_file(tmp_path, **{
        "methods": {"dense": {}, "dense_small": {},
                    # what Scratch-B resolves to where its rule gives 2E: dense_small at 4 epochs
                    "scratch_b": {"name": "dense_small", "run": {"train": {"epochs": 4}}}},
        "seeds": [0, 1], "scratch_curve": {"epochs": [1, 2, 4]}, **changes})


def test_scratch_curve_expands_to_the_runs_at_multiples_of_the_budget_reusing_those_the_suite_has(tmp_path):
    suite, folder = load_suite(str(write_suite(tmp_path)))
    cells = expand(suite, folder, [])
    seed0 = [(c.label, c.target, c.cfg.train.epochs) for c in cells if c.seed == 0]
    assert seed0 == [("dense", None, 2),
                     ("dense_small", 0.5, 2), ("scratch_4x", 0.5, 8),      # after each dense_small cell
                     ("dense_small", 0.25, 2), ("scratch_4x", 0.25, 8),
                     ("scratch_b", 0.5, 4), ("scratch_b", 0.25, 4)]        # 2E is scratch_b's run: not twice
    assert len(cells) == 2 * len(seed0)
    four = next(c for c in cells if c.label == "scratch_4x")
    assert four.cfg.method.name == "dense_small" and four.cfg.label == "scratch_4x"
    assert four.cfg.control == small_control(cells)                         # dense_small's control, recorded in the run
    # scratch_2x would be the very run scratch_b is (same identity, so the same run folder).
    b = next(c for c in cells if c.label == "scratch_b" and c.target == 0.5 and c.seed == 0)
    small = next(c for c in cells if c.label == "dense_small" and c.target == 0.5 and c.seed == 0)
    two = build_config(merge(small.raw, {"train": {"epochs": 4}, "label": "scratch_2x"}))
    assert run_identity(two) == run_identity(b.cfg) and run_identity(two) != run_identity(small.cfg)

    # They train seed-major, every row at the base budget before the longer cells of its seed.
    assert [(c.seed, c.label, c.target) for c in run_order(cells)][:7] == [
        (0, "dense", None), (0, "dense_small", 0.5), (0, "dense_small", 0.25),
        (0, "scratch_b", 0.5), (0, "scratch_b", 0.25), (0, "scratch_4x", 0.5), (0, "scratch_4x", 0.25)]
    assert [c.seed for c in run_order(cells)] == [0] * 7 + [1] * 7


def small_control(cells) -> str:
    return next(c for c in cells if c.label == "dense_small").cfg.control


def test_without_a_coinciding_row_each_multiple_is_its_own_cell_and_1x_is_dense_small(tmp_path):
    path = write_suite(tmp_path, methods={"dense": {}, "dense_small": {"control": "dense"}}, targets=[0.25], seeds=[0])
    cells = expand(*load_suite(str(path)), [])
    assert [(c.label, c.cfg.train.epochs) for c in cells] == [("dense", 2), ("dense_small", 2), ("scratch_2x", 4),
                                                              ("scratch_4x", 8)]


def test_adding_the_scratch_curve_changes_no_existing_cells_run():
    suite, folder = load_suite(str(REPO / "configs/suites/cifar10-smoke.yaml"))
    assert suite.scratch_curve == {"epochs": [1, 2, 4]}
    with_curve = expand(suite, folder, [])
    suite.scratch_curve = {}
    without = expand(suite, folder, [])
    kept = [c for c in with_curve if not sc.is_added_curve_label(c.label)]
    assert [(c.label, run_identity(c.cfg)) for c in kept] == [(c.label, run_identity(c.cfg)) for c in without]
    added = sorted((c.label, c.target, c.cfg.train.epochs) for c in with_curve if sc.is_added_curve_label(c.label))
    # 2E = 6 epochs is added unless a Scratch-B row of the suite already trains dense_small for 6 there.
    scratch_b = {c.target: c.cfg.train.epochs for c in with_curve if c.label == "scratch_b"}
    assert added == sorted([("scratch_2x", t, 6) for t in (0.25, 0.5) if scratch_b.get(t) != 6]
                           + [("scratch_4x", 0.25, 12), ("scratch_4x", 0.5, 12)])


@pytest.mark.parametrize("entry,message", [
    ({"epochs": [0, 2]}, "whole multiples"), ({"epochs": [1.5]}, "whole multiples"), ({"epochs": []}, "whole multiples"),
    ({"epoch": [2]}, "expected {epochs"), ([1, 2], "scratch_curve: expected a mapping")])
def test_a_malformed_scratch_curve_fails_when_the_suite_is_loaded(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(str(write_suite(tmp_path, scratch_curve=entry)))


def test_a_scratch_curve_needs_the_dense_small_row(tmp_path):
    with pytest.raises(ConfigError, match="does not have"):
        load_suite(str(write_suite(tmp_path, methods={"dense": {}})))


def test_scratch_bs_run_stands_for_the_curve_point_its_rule_gives(tmp_path):
    """Scratch-B (dense_small with match_dense_macs) resolves to dense_small at E_B epochs when
    its config is built; where E_B = 2E, scratch_2x is that run and is not added."""
    path = write_suite(tmp_path, targets=[0.25], seeds=[0], methods={
        "dense": {}, "dense_small": {}, "scratch_b": {"name": "dense_small", "match_dense_macs": True}})
    cells = expand(*load_suite(str(path)), [])
    b = next(c for c in cells if c.label == "scratch_b")
    assert b.cfg.train.epochs == 4                     # a quarter of the parameters: E_B capped at 2E
    assert [(c.label, c.cfg.train.epochs) for c in cells] == [("dense", 2), ("dense_small", 2), ("scratch_4x", 8),
                                                              ("scratch_b", 4)]
    small = next(c for c in cells if c.label == "dense_small")
    two = build_config(merge(small.raw, {"train": {"epochs": 4}, "label": "scratch_2x"}))
    assert run_identity(two) == run_identity(b.cfg)


def write_planted(folder: Path, runs: pd.DataFrame) -> None:
    for _, r in runs.iterrows():
        run_dir = folder / "runs" / r["run_id"]
        run_dir.mkdir(parents=True)
        summary = {k: (None if k == "target" and (v is None or v != v) else v) for k, v in r.items()}
        summary.update(env={"device": "cpu"}, config={"wandb": {"mode": "disabled"}})
        (run_dir / "summary.json").write_text(json.dumps(summary))


def test_two_budgets_of_a_model_share_one_plane(tmp_path):
    short = planted_runs()
    long = planted_runs().assign(epochs=lambda d: d["epochs"] * 4, train_macs=lambda d: d["train_macs"] * 4,
                                 test_acc=lambda d: d["test_acc"] + 0.05)
    write_planted(tmp_path / "e4", short)
    write_planted(tmp_path / "e16", long)
    pts = sc.budget_points([tmp_path / "e4", tmp_path / "e16"])
    assert sorted(set(pts["budget"])) == [4, 16]                           # each suite's dense epochs
    curve16 = pts[pts["curve"] & (pts["budget"] == 16)].sort_values("macs")
    assert list(curve16["epochs"]) == [16, 32, 64] and list(curve16["macs"]) == [4e12, 8e12, 16e12]
    assert list(curve16["acc"]) == pytest.approx([0.76, 0.81, 0.84])
    rows4 = pts[~pts["curve"] & (pts["budget"] == 4)].set_index("label")
    assert sorted(rows4.index) == ["dense", "dsr", "pcn"] and rows4.loc["dsr", "macs"] == 2.5e12   # executed MACs
    (path,) = sc.budgets_plot([tmp_path / "e4", tmp_path / "e16"], tmp_path / "out")
    assert path.name == "scratch_curve_budgets_vgg11.png" and path.is_file()
    assert sc.budgets_plot([tmp_path / "e4"], tmp_path / "one") == []      # one budget: its report's plane
    assert cli(["compare", str(tmp_path / "e4"), str(tmp_path / "e16"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "![scratch_curve_budgets_vgg11](scratch_curve_budgets_vgg11.png)" in md
    assert (tmp_path / "cmp" / "scratch_curve_budgets_vgg11.png").is_file()
