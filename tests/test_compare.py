"""The cross-setting comparison (bench.compare) on planted rankings: Kendall's tau, the
Friedman statistic and the Nemenyi critical difference against hand computations, and
partial suites (rows missing in a setting, fewer seeds, unfinished and diverged runs)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import compare as cmp
from bench.__main__ import main as cli


def write_run(suite: Path, label: str, target: float | None, seed: int, acc: float, epochs: int = 4,
              model: str = "vgg11", width: float = 0.5, status: str = "finished", tag: str = "",
              method: str | None = None, config: dict | None = None) -> Path:
    """A run folder as the harness leaves it: config.yaml and, once finished, summary.json."""
    run = suite / "runs" / f"{label}-{model}-{target}-s{seed}{tag}"
    run.mkdir(parents=True)
    cfg = {"seed": seed, "label": label, "model": {"name": model, "width": width}, "train": {"epochs": epochs},
           **(config or {})}
    (run / "config.yaml").write_text(json.dumps(cfg))          # JSON is YAML
    if status != "running":
        summary = {"run_id": run.name, "label": label, "target": target, "seed": seed, "epochs": epochs,
                   "model": model, "status": status, "config": cfg, "method": method,
                   "test_acc": None if status == "diverged" else acc}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def plant(suite: Path, accs: dict[str, float], target: float | None = 0.25, seeds=(0, 1, 2), **kw) -> Path:
    """One cell: each label at `target` with the same accuracy at every seed."""
    for label, acc in accs.items():
        for seed in seeds:
            write_run(suite, label, target, seed, acc, **kw)
    return suite


ORDER = {"a": 0.80, "b": 0.78, "c": 0.76, "d": 0.74, "e": 0.72}


# --------------------------------------------------------------------------- Kendall's tau
def test_tau_is_one_for_identical_rankings_and_minus_one_for_reversed(tmp_path):
    base = plant(tmp_path / "s1", ORDER)
    same = plant(tmp_path / "s2", {lab: acc - 0.05 for lab, acc in ORDER.items()}, epochs=16)   # same order
    rev = plant(tmp_path / "s3", {lab: 1.5 - acc for lab, acc in ORDER.items()}, epochs=16)
    (pair,) = cmp.compare([base, same]).taus
    assert pair.tau == pytest.approx(1.0) and len(pair.shared) == 5
    (pair,) = cmp.compare([base, rev]).taus
    assert pair.tau == pytest.approx(-1.0)


def test_kendall_tau_b_with_a_tie_matches_a_hand_count():
    # pairs: 6; concordant 5, discordant 0; one pair tied in y only:
    # tau_b = (5 - 0) / sqrt((6 - 0) * (6 - 1)) = 5 / sqrt(30)
    x = pd.Series({"a": 1, "b": 2, "c": 3, "d": 4})
    y = pd.Series({"a": 1, "b": 2, "c": 2, "d": 3, "z": 9})     # z is not shared
    tau, p, shared = cmp.kendall(x, y)
    assert shared == ["a", "b", "c", "d"]
    assert tau == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(cmp.kendall(x, pd.Series({"a": 1}))[0])
    assert math.isnan(cmp.kendall(x, pd.Series({"a": 2, "b": 1}))[0])   # two rows: +-1 by construction


def test_tau_pairs_only_across_settings_at_the_same_target(tmp_path):
    s1 = plant(tmp_path / "s1", ORDER, target=0.5)
    plant(s1, ORDER, target=0.25)
    s2 = plant(tmp_path / "s2", ORDER, target=0.25, epochs=16)
    pairs = cmp.compare([s1, s2]).taus
    assert [(p.a.target, p.b.target, p.a.setting != p.b.setting) for p in pairs] == [(0.25, 0.25, True)]


# --------------------------------------------------------------------------- Friedman + Nemenyi
def test_critical_difference_matches_demsars_table():
    # q_0.05 from Demsar (2006), Table 5(a): k=3: 2.343, k=4: 2.569, k=10: 3.164
    for k, n, q in [(3, 10, 2.343), (4, 5, 2.569), (10, 5, 3.164)]:
        assert cmp.critical_difference(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    # alpha = 0.10, k = 4: 2.291 (Table 5(a), second row)
    assert cmp.critical_difference(4, 6, alpha=0.10) == pytest.approx(2.291 * math.sqrt(20 / 36), abs=1e-3)


def test_friedman_statistic_matches_a_hand_computation():
    # Ranks (1 = best) per cell:   A  B  C
    #   c1: A > B > C              1  2  3
    #   c2: A > C > B              1  3  2
    #   c3: B > A > C              2  1  3
    #   c4: A > B > C              1  2  3
    # mean ranks 1.25, 2.00, 2.75; chi2_F = 12N/(k(k+1)) * (sum R^2 - k(k+1)^2/4)
    #   = 12*4/12 * (1.5625 + 4 + 7.5625 - 12) = 4.5;  p = exp(-4.5/2) (chi-square, 2 df)
    # Iman-Davenport F = (N-1) chi2 / (N(k-1) - chi2) = 3 * 4.5 / (8 - 4.5)
    table = pd.DataFrame({"A": [0.9, 0.9, 0.8, 0.9], "B": [0.8, 0.7, 0.9, 0.8], "C": [0.7, 0.8, 0.7, 0.7]},
                         index=["c1", "c2", "c3", "c4"])
    f = cmp.friedman_nemenyi(table)
    assert f.chi2 == pytest.approx(4.5)
    assert f.pvalue == pytest.approx(math.exp(-2.25))
    assert f.iman_davenport == pytest.approx(13.5 / 3.5)
    assert f.mean_ranks.to_dict() == pytest.approx({"A": 1.25, "B": 2.0, "C": 2.75})
    assert list(f.mean_ranks.index) == ["A", "B", "C"]                # best first
    assert f.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=1e-3)


def test_nemenyi_separates_exactly_the_pairs_further_apart_than_the_cd():
    # Ten cells, always A > B > C: mean ranks 1, 2, 3; CD(k=3, N=10) = 2.343 * sqrt(12/60) = 1.048:
    # A-C (2 ranks) is significant, A-B and B-C (1 rank) are not.
    table = pd.DataFrame({"A": [0.9] * 10, "B": [0.8] * 10, "C": [0.7] * 10})
    f = cmp.friedman_nemenyi(table)
    assert f.cd == pytest.approx(1.048, abs=1e-3)
    assert f.nemenyi.loc["A", "C"] < 0.05
    assert f.nemenyi.loc["A", "B"] > 0.05 and f.nemenyi.loc["B", "C"] > 0.05


def test_friedman_over_planted_cells_uses_rank_one_for_the_best(tmp_path):
    s1 = plant(tmp_path / "s1", ORDER, target=0.5)
    plant(s1, ORDER, target=0.25)
    s2 = plant(tmp_path / "s2", ORDER, target=0.25, epochs=16)
    c = cmp.compare([s1, s2])
    assert c.friedman.n == 3 and c.friedman.k == 5
    assert c.friedman.mean_ranks.to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}
    assert c.friedman.cd == pytest.approx(2.728 * math.sqrt(5 * 6 / 18), abs=1e-3)   # Demsar: q(k=5) = 2.728


# --------------------------------------------------------------------------- partial suites
def test_complete_block_drops_the_row_or_cell_with_most_missing():
    nan = float("nan")
    t = pd.DataFrame({"a": [1, 1, 1, 1], "b": [2, 2, 2, nan], "c": [3, 3, 3, nan], "d": [4, 4, nan, nan]},
                     index=["c1", "c2", "c3", "c4"])
    # c4 misses 3 of 4 rows (75%) -> dropped first; then d misses 1 of 3 cells -> dropped.
    full, rows, cells = cmp.complete_block(t)
    assert cells == ["c4"] and rows == ["d"]
    assert list(full.columns) == ["a", "b", "c"] and list(full.index) == ["c1", "c2", "c3"]
    # A tie (row c misses 1 of 3 cells, cell c3 misses 1 of 3 rows): the row goes, the cells stay.
    t = pd.DataFrame({"a": [1, 1, 1], "b": [2, 2, 2], "c": [3, 3, nan]}, index=["c1", "c2", "c3"])
    full, rows, cells = cmp.complete_block(t)
    assert rows == ["c"] and cells == [] and full.shape == (3, 2)


def test_partial_suite_rows_seeds_and_unfinished_runs_are_reported(tmp_path):
    s1 = plant(tmp_path / "s1", ORDER)
    s2 = plant(tmp_path / "s2", {k: v for k, v in ORDER.items() if k != "e"}, seeds=(0,), epochs=16)
    write_run(s2, "a", 0.25, 1, 0.81, epochs=16)                      # a has two seeds here, the rest one
    write_run(s2, "e", 0.25, 0, 0.0, epochs=16, status="running")     # not finished: counted, not ranked
    write_run(s2, "d", 0.25, 1, 0.0, epochs=16, status="diverged")    # named, not ranked
    plant(s2, {"dense": 0.82}, target=None, seeds=(0,), epochs=16)    # full size: its own cell
    c = cmp.compare([s1, s2])
    (pair,) = [p for p in c.taus if p.a.target == 0.25]
    assert pair.only_a == ["e"] and pair.only_b == [] and len(pair.shared) == 4 and pair.tau == pytest.approx(1)
    assert c.settings[1].unfinished == 1 and len(c.settings[1].diverged) == 1
    means = c.means.set_index(["label", c.means["cell"].map(lambda x: x.setting)])
    assert means.loc[("a", "s2"), "seeds"] == 2 and means.loc[("a", "s2"), "acc"] == pytest.approx(0.805)
    assert c.friedman.dropped_labels == ["e"] and c.friedman.k == 4 and c.friedman.n == 2
    text = "\n".join(cmp.section(c))
    assert "1 unfinished" in text and "1 diverged" in text
    assert "Rows left out (missing in some cell): e." in text
    assert "2 (78.00, 1*)" in text                                    # b at s2: one seed, a has two
    assert "s2: vgg11 w0.5, 16 ep, full size" in text                 # dense ranked among full-size rows only
    assert ("Entered on fewer seeds than their cell's most-seeded row (their mean is a noisier estimate; read "
            "their ranks as provisional): b (1 of 2 seeds in 1 cell), c (1 of 2 seeds in 1 cell), "
            "d (1 of 2 seeds in 1 cell).") in text


def test_each_settings_precision_is_stated_and_a_mix_is_marked(tmp_path):
    s1, s2 = plant(tmp_path / "s1", ORDER), plant(tmp_path / "s2", ORDER, epochs=16)
    for suite, bf16 in ((s1, set()), (s2, {"a-vgg11-0.25-s1"})):
        for f in suite.glob("runs/*/summary.json"):
            summary = json.loads(f.read_text())
            f.write_text(json.dumps({**summary, "precision": "bf16" if f.parent.name in bf16 else "fp32"}))
    rows = [line for line in cmp.section(cmp.compare([s1, s2])) if line.startswith(("| s1 |", "| s2 |"))]
    assert "| 0, 1, 2 | fp32 | none |" in rows[0]
    assert "| 0, 1, 2 | **mixed**: 14 fp32, 1 bf16 | none |" in rows[1]


def test_equal_means_tie_whatever_their_float_rounding(tmp_path):
    # mean(0.7581, 0.7592, 0.7603) is 0.7591999999999999 in floats: tied with 0.7592, not below it
    s = tmp_path / "s1"
    for seed, acc in enumerate((0.7581, 0.7592, 0.7603)):
        write_run(s, "x", 0.25, seed, acc)
        write_run(s, "y", 0.25, seed, 0.7592)
    ranks = cmp.cell_means([cmp.load_setting(s)]).set_index("label")["rank"]
    assert ranks.to_dict() == {"x": 1.5, "y": 1.5}


def test_each_significant_pair_shows_its_nemenyi_p(tmp_path):
    s1 = plant(tmp_path / "s1", {"a": 0.9, "b": 0.8, "c": 0.7}, target=0.5)
    for t in (0.25, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01, 0.005):
        plant(s1, {"a": 0.9, "b": 0.8, "c": 0.7}, target=t)
    s2 = plant(tmp_path / "s2", {"a": 0.9, "b": 0.8, "c": 0.7}, target=0.5, epochs=16)
    c = cmp.compare([s1, s2])                     # ten cells, A > B > C: only A-C beyond the CD (see above)
    text = "\n".join(cmp.section(c))
    p = c.friedman.nemenyi.loc["c", "a"]
    assert f"| c | 3.00 | a (p {cmp._pval(p)}) |" in text and "| b | 2.00 | - |" in text


def test_references_rank_full_size_rows_inside_each_target_cell(tmp_path):
    s1 = plant(plant(tmp_path / "s1", ORDER), {"dense": 0.9}, target=None)
    s2 = plant(plant(tmp_path / "s2", ORDER, epochs=16), {"dense": 0.9}, target=None, epochs=16)
    assert "dense" not in cmp.compare([s1, s2]).friedman.mean_ranks
    ranks = cmp.compare([s1, s2], references=True).friedman.mean_ranks
    assert ranks.index[0] == "dense" and ranks["dense"] == 1.0


def test_duplicate_seed_counts_once_with_the_mean(tmp_path):
    s1 = plant(tmp_path / "s1", ORDER, seeds=(0,))
    write_run(s1, "a", 0.25, 0, 0.70, tag="-again")
    s2 = plant(tmp_path / "s2", ORDER, seeds=(0,), epochs=16)
    m = cmp.compare([s1, s2]).means
    row = m[(m["label"] == "a") & (m["cell"].map(lambda x: x.setting) == "s1")].iloc[0]
    assert row["seeds"] == 1 and row["acc"] == pytest.approx(0.75)


def test_a_folder_given_twice_is_one_setting(tmp_path):
    s1 = plant(tmp_path / "s1", ORDER)
    s2 = plant(tmp_path / "s2", ORDER, epochs=16)
    c = cmp.compare([s1, s1, s2])
    assert [(s.name, s.path) for s in c.settings] == [("s1", s1), ("s2", s2)]


def test_scratch_b_is_ranked_at_its_suites_budget_and_curve_points_are_left_out(tmp_path):
    """Scratch-B trains dense_small for 8 of a 4-epoch suite's epochs: it is a row of the 4-epoch
    cells, not a cell of its own; the curve's 16-epoch point is counted, not ranked."""
    s1 = plant(tmp_path / "s1", {"a": 0.80, "b": 0.78})
    for seed in range(3):
        write_run(s1, "dense", None, seed, 0.81, method="dense")
        write_run(s1, "scratch_b", 0.25, seed, 0.79, epochs=8, method="dense_small")
        write_run(s1, "scratch_4x", 0.25, seed, 0.83, epochs=16, method="dense_small")
    s2 = plant(tmp_path / "s2", {"a": 0.70, "b": 0.72, "scratch_b": 0.71}, epochs=16)
    c = cmp.compare([s1, s2])
    assert sorted({(cell.budget, cell.target) for cell in c.means["cell"] if cell.setting == "s1"},
                  key=str) == sorted({(4, None), (4, 0.25)}, key=str)
    cell = c.means[(c.means["label"] == "scratch_b") & c.means["cell"].map(lambda x: x.setting == "s1")]
    assert len(cell) == 1 and cell.iloc[0]["cell"].budget == 4 and cell.iloc[0]["acc"] == pytest.approx(0.79)
    assert "scratch_4x" not in set(c.means["label"]) and c.settings[0].curve_points == 3
    assert "3 scratch-curve point(s)" in "\n".join(cmp.section(c, None))


# --------------------------------------------------------------------------- verdicts side by side
def test_holds_moves_open_and_not_compared_follow_the_symbols():
    from bench.verdicts import holds
    order = ["control", "b"]
    assert holds({"A": {"control": "<", "b": "="}, "B": {"control": "<", "b": "="}}, order) == "holds"
    assert holds({"A": {"control": "<", "b": "<"}, "B": {"control": "<", "b": "="}}, order) == \
        "moves: b < (A) -> = (B)"
    assert holds({"A": {"control": "<", "b": "="}, "B": {"control": "?", "b": "="}}, order) == \
        "open: no verdict yet in some setting for control"
    # not compared in one setting (the comparator did not run there): the other two decide
    assert holds({"A": {"control": "<", "b": "·"}, "B": {"control": "<", "b": ">"},
                  "C": {"control": "<", "b": ">"}}, order) == "holds"
    # opposite resolved verdicts reverse, and the reversal is named before a move
    assert holds({"A": {"control": "<", "b": ">"}, "B": {"control": "=", "b": "<"}}, order) == \
        "reverses: b > (A) -> < (B); control < (A) -> = (B)"
    assert holds({"A": {"control": "<", "b": "<"}}, order) == "one setting"
    assert holds({"A": {"control": "·", "b": "·"}, "B": {"control": "·", "b": "·"}}, order) == \
        "no comparison in two settings"


def test_verdicts_of_planted_settings_are_the_reports_and_a_flip_is_named(tmp_path):
    # Seed-to-seed noise differs between rows so that the pooled residual variance is not zero.
    noise = {"dense": (0.0, 0.004, -0.004), "a": (0.003, -0.002, -0.001), "b": (-0.002, 0.0, 0.002),
             "c": (0.001, 0.002, -0.003)}

    def setting(path, accs, epochs):
        for label, acc in accs.items():
            for seed in range(3):
                write_run(path, label, None if label == "dense" else 0.25, seed, acc + noise[label][seed],
                          epochs=epochs, config={"comparators": ["b"]})
        return path

    # a is 5 points below the comparator b at 4 epochs and level with it at 16; c is below b in both.
    s1 = setting(tmp_path / "s1", {"dense": 0.80, "a": 0.70, "b": 0.75, "c": 0.70}, 4)
    s2 = setting(tmp_path / "s2", {"dense": 0.85, "a": 0.70, "b": 0.70, "c": 0.65}, 16)
    text = "\n".join(cmp.compare([s1, s2]).verdict_lines)
    assert "against control, b," in text
    assert "| a | `< <` (3) | `< =` (3) | moves: b < (s1) -> = (s2) |" in text
    assert "| b | `< ·` (3) | `< ·` (3) | holds |" in text
    assert "| c | `< <` (3) | `< <` (3) | holds |" in text
    assert "At target 0.25: 2 row(s) hold, 0 reverse, 1 move, 0 open" in text


def test_a_one_seed_row_that_its_report_does_not_resolve_has_no_verdict(tmp_path):
    # s2 has two seeds of dense and b (a pooled σ) and one seed of a: the report tests a
    # against that σ. Level with b, a is "not distinguishable" there: shown as `?` (open),
    # while a one-seed row it does resolve (c, 10 points below) keeps its `<`.
    noise = (0.0, 0.004, -0.004)
    for seed in range(3):
        for label, acc in {"dense": 0.80, "a": 0.70, "b": 0.75, "c": 0.70}.items():
            write_run(tmp_path / "s1", label, None if label == "dense" else 0.25, seed, acc + noise[seed] * (label != "a"),
                      epochs=4, config={"comparators": ["b"]})
    for label, acc, seeds in (("dense", 0.85, 2), ("b", 0.70, 2), ("a", 0.70, 1), ("c", 0.60, 1)):
        for seed in range(seeds):
            write_run(tmp_path / "s2", label, None if label == "dense" else 0.25, seed, acc + noise[seed],
                      epochs=16, config={"comparators": ["b"]})
    text = "\n".join(cmp.compare([tmp_path / "s1", tmp_path / "s2"]).verdict_lines)
    assert "| a | `< <` (3) | `< ?` (1) | open: no verdict yet in some setting for b |" in text
    assert "| c | `< <` (3) | `< <` (1) | holds |" in text


# --------------------------------------------------------------------------- the command
def test_command_writes_the_section_and_diagram_under_out(tmp_path, capsys):
    s1 = plant(tmp_path / "s1", ORDER)
    s2 = plant(tmp_path / "s2", ORDER, epochs=16)
    assert cli(["compare", str(s1), str(s2), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## What moves between settings" in md and "![critical-difference diagram](cd.png)" in md
    assert (tmp_path / "cmp" / "cd.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["one setting", "no finished runs", "same folder twice", "not a folder"])
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, capsys, case):
    good = plant(tmp_path / "good", ORDER)
    empty = tmp_path / "empty"
    write_run(empty, "a", 0.25, 0, 0.0, status="running")
    args = {"one setting": [good], "no finished runs": [good, empty], "same folder twice": [good, good],
            "not a folder": [good, tmp_path / "missing"]}[case]
    assert cli(["compare", *map(str, args), "--out", str(tmp_path / "cmp")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("alpha, out, says", [(2.0, None, "--alpha 2"), (0.0, None, "--alpha 0"),
                                              (math.nan, None, "--alpha nan"), (0.05, "FILE", "is a file"),
                                              (0.05, "FILE/sub", "is a file")])
def test_a_bad_alpha_or_an_out_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, alpha,
                                                                           out, says):
    """Checked before the suites are read: no CD of nan, no FileExistsError after the work
    (the command line also refuses such an alpha as it parses it)."""
    good = plant(tmp_path / "good", ORDER)
    (tmp_path / "file").write_text("keep")
    monkeypatch.setattr(cmp, "compare", lambda *a, **k: pytest.fail("the suites were read"))
    out = (out or "cmp").replace("FILE", str(tmp_path / "file"))
    if alpha == 0.05:
        assert cli(["compare", str(good), str(good), "--out", out]) == 1
    else:
        assert cmp.main([str(good), str(good)], out=tmp_path / out, alpha=alpha) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare: ") and len(err.splitlines()) == 1 and says in err, err
    assert (tmp_path / "file").read_text() == "keep" and not (tmp_path / "cmp").exists()


def test_the_same_folder_twice_says_so(tmp_path, capsys):
    good = plant(tmp_path / "good", ORDER)
    assert cli(["compare", str(good), str(good) + "/", "--out", str(tmp_path / "cmp")]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err == (f"compare: needs at least two different suite folders (settings) to compare; got 2, all the "
                   f"same folder ({good})")


def test_an_out_it_cannot_create_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import os
    good, locked = plant(tmp_path / "good", ORDER), tmp_path / "locked"
    locked.mkdir()
    real_access = os.access        # a folder this process may not write in, on any OS and as root too
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    monkeypatch.setattr(cmp, "compare", lambda *a, **k: pytest.fail("the suites were read"))
    assert cli(["compare", str(good), str(tmp_path / "other"), "--out", str(locked / "nope")]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(f"compare: --out '{locked / 'nope'}': this process may not write in '{locked}'")


def test_a_failure_to_write_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    s1, s2 = plant(tmp_path / "s1", ORDER), plant(tmp_path / "s2", ORDER, epochs=16)

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "cmp" / "cd.png"))
    monkeypatch.setattr(cmp, "plot_cd", full)
    assert cli(["compare", str(s1), str(s2), "--out", str(tmp_path / "cmp")]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(f"compare: --out {tmp_path / 'cmp'}: cannot write there: No space left on device")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("epochs, says", [("abc", 'train.epochs is "abc", not an integer'),
                                          (".inf", "train.epochs is inf, not an integer"),
                                          ("0", "train.epochs is 0, not >= 1")])
def test_a_run_configs_epochs_must_be_a_whole_budget(tmp_path, capsys, epochs, says):
    """A summary without `epochs` takes its budget from the run's config.yaml, checked as
    the summary is (bench.records.RUN_CONFIG): one line, no ValueError from int()."""
    bad = plant(tmp_path / "bad", ORDER)
    run = next((bad / "runs").iterdir())
    s = json.loads((run / "summary.json").read_text())
    del s["epochs"], s["config"]
    (run / "summary.json").write_text(json.dumps(s))
    (run / "config.yaml").write_text(f"seed: 0\nlabel: a\ntrain:\n  epochs: {epochs}\n")
    assert cli(["compare", str(bad), str(plant(tmp_path / "good", ORDER)), "--out", str(tmp_path / "cmp")]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(f"compare: {run / 'config.yaml'}: unreadable run config ({says})"), err


def curve_suite(folder: Path, model: str, label: str, scale: int) -> Path:
    """tests/test_scratch_curve.py's planted runs (a scratch curve at 25%) at `scale` times
    their epochs and training MACs, with `model` for vgg11 and `label` for pcn."""
    from tests.test_scratch_curve import planted_runs, write_runs
    runs = planted_runs()
    return write_runs(runs.assign(model=model, label=runs["label"].replace("pcn", label), epochs=runs["epochs"] * scale,
                                  train_macs=runs["train_macs"] * scale,
                                  train_macs_nonzero=runs["train_macs_nonzero"] * scale), folder)


def test_names_from_the_runs_are_drawn_as_text_and_files_take_their_slug(tmp_path, capsys, monkeypatch):
    """A label holding matplotlib math text (`$...$`) is drawn as it is, not parsed (which
    fails), and a model name with a `/` names a file in --out, not a folder."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model, label = "vgg11/x$\\sqrt{$", "l1$\\frac{$"
    s1 = curve_suite(tmp_path / "s1", model, label, 1)
    s2 = curve_suite(tmp_path / "s2", model, label, 4)
    assert cli(["compare", str(s1), str(s2), "--out", str(tmp_path / "cmp")]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        "cd.png", "compare.md", "scratch_curve_budgets_vgg11_x__sqrt__.png"]
    assert f"| {label} |" in (tmp_path / "cmp" / "compare.md").read_text()
