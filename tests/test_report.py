"""The report: each row against its own control and the suite's comparators, claims only
where the corrected comparisons support them, time to the control's accuracy with a
tolerance, timings with their run counts, rows split by the data they ran on, and the
`report` command's handling of folders."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.report import aggregate, highlights, markdown_table, time_to_accuracy, write_report
from bench.report.aggregation import machine_name
from bench.report.rendering import compute_line

# dense and dense_leaky differ by 10 points, so a row measured against the wrong one shows it.
FINAL = {"dense": 0.80, "dense_leaky": 0.70, "pcns": 0.72, "pcn": 0.81}
CONTROLS = {"dense": "dense", "dense_leaky": "dense", "pcns": "dense_leaky", "pcn": "dense"}
TARGETS = {"pcns": 0.5, "pcn": 0.5}
# (test_acc, cumulative training seconds) per epoch: pcns passes 0.70 at epoch 2 but never 0.80.
HISTORY = {"dense": [(0.75, 10.0), (0.80, 20.0)], "dense_leaky": [(0.65, 10.0), (0.70, 20.0)],
           "pcns": [(0.60, 5.0), (0.72, 11.0)], "pcn": [(0.78, 30.0), (0.81, 60.0)]}


def run_row(label: str, control: str | None) -> dict:
    return {"run_id": f"{label}-vgg11-s0", "label": label, "model": "vgg11", "seed": 0,
            "target": TARGETS.get(label), "test_acc": FINAL[label], "control": control,
            "params_total": 1e6, "params_nonzero": 1e6, "macs": 1e8, "macs_nonzero": 1e8,
            "train_wall_s": HISTORY[label][-1][1], "train_macs": 1e12, "throughput_train_img_s": 100.0,
            "throughput_infer_img_s": 400.0, "transform_s": 0.0}


def history(label: str) -> pd.DataFrame:
    return pd.DataFrame([{"epoch": e, "test_acc": a, "train_wall_s_cum": t}
                         for e, (a, t) in enumerate(HISTORY[label], 1)])


def planted() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    runs = pd.DataFrame([run_row(lab, CONTROLS[lab]) for lab in FINAL])
    return runs, {f"{lab}-vgg11-s0": history(lab) for lab in FINAL}


def test_delta_and_time_to_accuracy_use_each_rows_declared_control():
    agg = aggregate(*planted()).set_index("label")
    assert (agg.loc["pcns", "tta_epoch"], agg.loc["pcns", "tta_s"]) == (2, 11.0)   # dense's 0.80: never
    assert agg.loc["pcns", "control"] == "dense_leaky"
    assert agg.loc["pcns", "test_acc_delta"] == pytest.approx(0.02)          # not -0.08 (vs dense)
    assert agg.loc["pcn", "test_acc_delta"] == pytest.approx(0.01) and agg.loc["pcn", "tta_epoch"] == 2
    assert agg.loc["dense_leaky", "test_acc_delta"] == pytest.approx(-0.10)  # the control against its own
    assert agg.loc["pcns", "train_wall_s_rel"] == pytest.approx(11.0 / 20.0)


def test_table_names_the_control_and_highlights_skip_the_controls():
    agg = aggregate(*planted())
    table = markdown_table(agg, "vgg11")
    assert "| control | Δ top-1 vs control |" in table and "to control acc |" in table
    assert "| pcns | 50% | 72.00 |  | dense_leaky | +2.00 |  | 1 seed: cannot tell |" in table
    assert table.index("| dense |") < table.index("| dense_leaky |") < table.index("| pcn |")  # controls first
    # One seed: nothing is tested, so neither "most accuracy" nor "fastest" is claimed.
    assert highlights(agg, "vgg11") == [
        "- At 50% of the parameters, no row is resolved from the others (not tested: too few seeds): "
        "pcn 81.00, pcns 72.00.",
        "- Fastest to its control's final accuracy: tied between **pcns** at 50% (control: dense_leaky), epoch 2 "
        "after 11s of training; **pcn** at 50% (control: dense), epoch 2 after 60s of training (the 2 method rows "
        "that reach it in every seed; their training seconds to get there are not resolved)."]


def write_runs(out: Path, runs: pd.DataFrame, histories: dict[str, pd.DataFrame], recorded: dict) -> None:
    for _, r in runs.iterrows():
        folder = out / "runs" / r["run_id"]
        folder.mkdir(parents=True)
        summary = {k: v for k, v in r.items() if k != "control" and v == v}
        summary["target"] = r["target"] if r["target"] == r["target"] else None
        config = {"wandb": {"mode": "disabled"}}
        if r["label"] in recorded:
            config["control"] = recorded[r["label"]]
        summary.update(env={"device": "cpu"}, config=config)
        (folder / "summary.json").write_text(json.dumps(summary))
        histories[r["run_id"]].to_csv(folder / "history.csv", index=False)


def test_report_rebuilt_from_the_results_folder_keeps_the_controls(tmp_path, monkeypatch):
    """The control comes from the run's own config where it is recorded, else from suite.json."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, histories = planted()
    write_runs(tmp_path, runs, histories, recorded={"pcns": "dense_leaky"})
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "t", "controls": {"pcns": "dense", "pcn": "dense"}}))
    write_report(tmp_path)
    saved = pd.read_csv(tmp_path / "runs.csv").set_index("label")["control"].to_dict()
    assert saved == CONTROLS                          # the run's record wins over the plan; dense by default
    assert "| pcns | 50% | 72.00 |  | dense_leaky | +2.00 |" in (tmp_path / "README.md").read_text()


def test_speed_section_shows_latency_and_measured_speed_up_beside_the_mac_ratio():
    from bench.report import speed_section
    runs, hists = planted()
    # pcn: half the MACs, but only 1.25x faster at batch 1 and 1.6x at the eval batch.
    speed = {"dense": (10.0, 100.0, 200.0, 1e8), "dense_leaky": (10.0, 100.0, 200.0, 1e8),
             "pcns": (10.0, 100.0, 200.0, 1e8), "pcn": (8.0, 62.5, 100.0, 5e7)}
    for m, i in (("latency_b1_ms", 0), ("infer_batch_ms", 1), ("train_step_ms", 2)):
        runs[m + "_median"] = runs["label"].map(lambda lab: speed[lab][i])
        runs[m + "_iqr"] = 0.5
    runs["macs"] = runs["label"].map(lambda lab: speed[lab][3])
    text = "\n".join(speed_section(aggregate(runs, hists), "vgg11"))
    (pcn,) = [line for line in text.splitlines() if line.startswith("| pcn |")]
    # One direction everywhere: the row's ÷ the control's (half the MACs: 0.50x; 1.25x faster: 0.80x).
    assert pcn == "| pcn | 50% | dense | 1 | 8.0 (0.5) | 62.5 (0.5) | 100.0 (0.5) | 0.50x | 0.80x | 0.62x | 0.50x |"
    assert "Ratios: the row's ÷ its control's" in text


def test_timings_come_from_the_machine_that_timed_most_runs():
    """A suite finished on a second machine: each row keeps the timings (speed and training
    wall-clock) of its runs on the machine that timed most runs; accuracy keeps every seed."""
    from bench.report import speed_section
    runs, hists = three_seeds()
    runs["machine"] = "A"
    second = (runs["seed"] == 2) | ((runs["seed"] == 1) & (runs["label"] == "pcn"))   # 5 of 12 runs on B
    runs.loc[second, "machine"] = "B"
    runs.loc[second, ["latency_b1_ms_median", "train_wall_s"]] = [5.0, 1.0]
    runs.loc[second & (runs["label"] == "pcn"), "test_acc"] = 0.83
    agg = aggregate(runs, hists).set_index("label")
    assert agg.loc["pcn", "latency_b1_ms_median"] == 10.0 and agg.loc["pcn", "train_wall_s"] == 60.0
    assert agg.loc["pcn", "timings_dropped"] == 2 and agg.loc["dense", "timings_dropped"] == 1
    assert agg.loc["pcn", "test_acc"] == pytest.approx((0.81 + 2 * 0.83) / 3)
    assert agg.loc["pcn", "tta_s"] == 60.0                               # machine A's wall-clock only
    text = "\n".join(speed_section(agg.reset_index(), "vgg11"))
    assert "The timings of 5 run(s) are left out" in text and "timed most runs without load: A)" in text


def test_no_speed_section_for_runs_without_speed_figures():
    from bench.report import speed_section
    assert speed_section(aggregate(*planted()), "vgg11") == []


def test_speed_section_flags_timings_taken_on_a_shared_cpu():
    from bench.report import speed_section
    runs, hists = planted()
    for m in ("latency_b1_ms", "infer_batch_ms", "train_step_ms"):
        runs[m + "_median"], runs[m + "_iqr"] = 10.0, 0.5
    runs["speed_cpus"] = 2
    runs["speed_cpu_load"] = 1.9
    assert "unshared CPU: 1-min load average at most 1.9 on 2 CPUs (shared: above the CPU count + 0.5)" in "\n".join(
        speed_section(aggregate(runs, hists), "vgg11"))
    runs.loc[runs["label"] == "pcn", "speed_cpu_load"] = 4.0
    assert "**Shared CPU**: 1 of 4 rows were timed with a 1-min load average above the CPU count + 0.5" in "\n".join(
        speed_section(aggregate(runs, hists), "vgg11"))


def three_seeds() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    runs, hists = planted()
    seeds = []
    for seed in (0, 1, 2):
        r = runs.copy()
        r["seed"], r["run_id"] = seed, r["run_id"].str.replace("-s0", f"-s{seed}")
        seeds.append(r)
        hists.update({k.replace("-s0", f"-s{seed}"): v for k, v in list(hists.items()) if "-s0" in k})
    runs = pd.concat(seeds, ignore_index=True)
    for m in ("latency_b1_ms", "infer_batch_ms", "train_step_ms"):
        runs[m + "_median"], runs[m + "_iqr"] = 10.0, 0.5
    runs["speed_cpus"], runs["speed_cpu_load"] = 2, 1.0
    return runs, hists


def test_timings_from_a_shared_cpu_are_left_out_where_a_row_has_unshared_ones():
    from bench.report import speed_section
    runs, hists = three_seeds()
    # pcn seed 0 was timed under load (100x slower); dense_leaky was timed under load on every seed.
    loaded = (runs["label"] == "pcn") & (runs["seed"] == 0)
    runs.loc[loaded, ["latency_b1_ms_median", "speed_cpu_load"]] = [1000.0, 4.0]
    runs.loc[loaded, "throughput_infer_img_s"] = 4.0
    runs.loc[runs["label"] == "dense_leaky", ["latency_b1_ms_median", "speed_cpu_load"]] = [20.0, 4.0]
    agg = aggregate(runs, hists).set_index("label")
    assert agg.loc["pcn", "latency_b1_ms_median"] == 10.0            # the two unshared seeds only
    assert agg.loc["pcn", "throughput_infer_img_s"] == 400.0
    assert agg.loc["pcn", "timings_dropped"] == 1
    assert agg.loc["dense_leaky", "latency_b1_ms_median"] == 20.0    # nothing unshared: kept, flagged
    assert agg.loc["pcn", "test_acc"] == FINAL["pcn"]                # accuracy is never dropped
    text = "\n".join(speed_section(agg.reset_index(), "vgg11"))
    assert "**Shared CPU**: 1 of 4 rows" in text
    assert "The timings of 1 run(s) taken on a shared CPU are left out" in text


def test_a_partial_suite_says_how_many_of_its_runs_have_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, histories = planted()
    write_runs(tmp_path, runs, histories, recorded={})
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "t", "cells": len(runs) + 3}))
    write_report(tmp_path)
    assert f"**Partial: {len(runs)} of the suite's {len(runs) + 3} runs have finished.**" in (
        tmp_path / "README.md").read_text()
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "t", "cells": len(runs)}))
    write_report(tmp_path)
    assert "Partial" not in (tmp_path / "README.md").read_text()


def test_the_report_sums_what_the_runs_cost_and_counts_those_without_timings():
    runs = pd.DataFrame({"train_wall_s": [3600.0, 1800.0, None], "eval_s": [360.0, None, 0.0]})
    assert compute_line(runs)[0] == ("Compute spent: the 2 timed runs trained for 1.5 h of wall-clock and evaluated "
                                     "for 0.1 h more (1.6 h in all; 1 run(s) recorded no timing).")
    assert compute_line(runs.drop(columns="train_wall_s")) == []


def test_two_cpus_of_one_name_but_another_instruction_set_are_two_machines():
    """The timing machine is told apart by the CPU's dispatch level where runs recorded it;
    older runs keep the key they had (name and platform), so their reports do not change."""
    base = {"cpu": "AMD EPYC", "platform": "Linux-x86_64"}
    avx2, avx512 = machine_name({**base, "cpu_capability": "AVX2"}), machine_name({**base, "cpu_capability": "AVX512"})
    assert avx2 != avx512 and "AVX512" in avx512
    assert machine_name(base) == "AMD EPYC (Linux-x86_64)"
    assert machine_name({**base, "gpu": "NVIDIA H100", "cpu_capability": "AVX512"}) == "NVIDIA H100 (Linux-x86_64)"


def test_a_row_timed_on_the_timing_machine_only_under_load_keeps_those_timings():
    """Loaded timings on the timing machine (flagged) beat unloaded ones on another machine:
    a speed-up is a ratio to the control's timings, which come from the timing machine."""
    from bench.report import speed_section
    runs, hists = three_seeds()
    runs["machine"] = "A"
    on_b = (runs["label"] == "pcn") & (runs["seed"] > 0)
    runs.loc[on_b, ["machine", "latency_b1_ms_median"]] = ["B", 5.0]
    runs.loc[(runs["label"] == "pcn") & (runs["seed"] == 0), ["latency_b1_ms_median", "speed_cpu_load"]] = [30.0, 4.0]
    agg = aggregate(runs, hists).set_index("label")
    assert agg.loc["pcn", "latency_b1_ms_median"] == 30.0 and agg.loc["pcn", "timings_dropped"] == 2
    assert "**Shared CPU**: 1 of 4 rows" in "\n".join(speed_section(agg.reset_index(), "vgg11"))


# --------------------------------------------------------------------------- time to the control's accuracy
def test_reaching_the_control_mean_within_float_rounding_counts():
    """The control's mean of three accuracies is 0.7802000000000001 in floating point; a run
    at 0.7802 has reached it (tolerance 1e-9 on accuracy as a fraction), one image below has not."""
    control = float(pd.Series([0.7801, 0.7802, 0.7803]).mean())
    assert control == 0.7802000000000001
    hist = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.70, 0.7802], "train_wall_s_cum": [5.0, 10.0]})
    assert time_to_accuracy(hist, control) == (2, 10.0)
    assert time_to_accuracy(hist.assign(test_acc=[0.70, 0.7801]), control) == (None, None)


def suite_runs(acc: dict[str, list[float]], tta: dict[str, list], targets: dict[str, float] | None = None,
               control: str = "dense") -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Runs over len(acc[...]) seeds; history: epoch 1 at 50% accuracy, epoch 2 at the final
    accuracy, reached at `tta[label][seed]` seconds (None: the run ends below the control's mean)."""
    rows, hists = [], {}
    targets = targets or {}
    for label, values in acc.items():
        for seed, a in enumerate(values):
            rid = f"{label}-s{seed}"
            t = (tta.get(label) or [None] * len(values))[seed]
            rows.append({"run_id": rid, "label": label, "model": "vgg11", "seed": seed, "target": targets.get(label),
                         "test_acc": a, "control": control, "params_total": 1e6, "params_nonzero": 1e6,
                         "macs": 1e8, "macs_nonzero": 1e8, "train_wall_s": 100.0, "train_macs": 1e12,
                         "throughput_train_img_s": 100.0, "throughput_infer_img_s": 400.0, "transform_s": 0.0})
            final = 0.99 if t is not None else 0.01      # above or below any control mean
            hists[rid] = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.005, final],
                                       "train_wall_s_cum": [1.0, float(t) if t is not None else 200.0]})
    runs = pd.DataFrame(rows)
    return runs, hists


DENSE3 = [0.800, 0.820, 0.780]


def test_a_row_that_never_reaches_the_control_is_never_fastest():
    runs, hists = suite_runs({"dense": DENSE3, "slow": [0.80, 0.82, 0.78], "never": [0.80, 0.82, 0.78],
                              "partly": [0.80, 0.82, 0.78]},
                             {"dense": [50, 50, 50], "slow": [90, 95, 85], "partly": [10, None, 12]})
    agg = aggregate(runs, hists)
    line = highlights(agg, "vgg11", runs)[-1]
    assert line == ("- Only **slow** reaches the dense control's final accuracy in every seed (epoch 2 after 90s of "
                    "training), of 3 method rows; in some seeds only: partly (2 of 3).")
    assert "**never**" not in line


def test_fastest_is_named_only_when_resolved_else_tied():
    acc = {"dense": DENSE3, "a": DENSE3, "b": DENSE3, "c": DENSE3}
    resolved = highlights(*(lambda r, h: (aggregate(r, h), "vgg11", r))(*suite_runs(
        acc, {"dense": [50] * 3, "a": [10.0, 11.0, 10.5], "b": [60.0, 61.0, 60.4], "c": [90.0, 90.5, 91.0]})))[-1]
    assert resolved.startswith("- Fastest to the dense control's final accuracy: **a**, epoch 2 after 10s of "
                               "training, resolved from the 2 other row(s)")
    tied = highlights(*(lambda r, h: (aggregate(r, h), "vgg11", r))(*suite_runs(
        acc, {"dense": [50] * 3, "a": [10.0, 30.0, 20.0], "b": [25.0, 12.0, 20.0], "c": [90.0, 90.5, 91.0]})))[-1]
    assert tied.startswith("- Fastest to the dense control's final accuracy: tied between **b**")   # mean 19s
    assert "**a**" in tied and "**c**" in tied and "not resolved" in tied


def test_most_accuracy_is_claimed_only_where_the_corrected_comparison_resolves_it():
    targets = {"a": 0.5, "b": 0.5, "c": 0.5}
    noise = [0.001, -0.001, 0.0]
    clear = {"dense": DENSE3, **{k: [d + off + e for d, e in zip(DENSE3, noise)]
                                 for k, off in (("a", 0.03), ("b", 0.0), ("c", -0.01))}}
    runs, hists = suite_runs(clear, {}, targets)
    first = highlights(aggregate(runs, hists), "vgg11", runs)[0]
    assert first.startswith("- At 50% of the parameters, **a** keeps the most accuracy: ") and "resolved from every" in first
    close = dict(clear, b=[d + 0.0295 - e for d, e in zip(DENSE3, noise)])   # 0.05 points below a: not resolved
    runs, hists = suite_runs(close, {}, targets)
    first = highlights(aggregate(runs, hists), "vgg11", runs)[0]
    assert first.startswith("- At 50% of the parameters, tied for the most accuracy: a ") and ", b " in first
    assert "**" not in first and "1 other row(s) are below" in first


# --------------------------------------------------------------------------- timings
def test_metric_cells_drop_a_zero_half_width_and_show_timings_as_min_max():
    from bench.metrics import METRICS
    from bench.report.rendering import metric_cell
    r = pd.Series({"params_nonzero": 580e3, "params_nonzero_ci": 20.0, "params_nonzero_rel": 0.25})
    assert metric_cell(r, METRICS["params_nonzero"]) == "0.58M (0.25x)"                 # not "0.58M ± 0.0k"
    r = pd.Series({"train_wall_s": 476.0, "train_wall_s_min": 319.0, "train_wall_s_max": 632.0,
                   "train_wall_s_ci": 1986.0, "train_wall_s_rel": 0.73})
    assert metric_cell(r, METRICS["train_wall_s"]) == "476s [319s-632s] (0.73x)"       # no t interval from n = 2


def test_a_timing_ratio_divides_means_over_the_seeds_both_rows_timed():
    runs, hists = three_seeds()
    runs["machine"] = "A"
    wall = {("dense", 0): 100.0, ("dense", 1): 200.0, ("dense", 2): 300.0,
            ("pcn", 0): 50.0, ("pcn", 1): 100.0, ("pcn", 2): 150.0}
    runs["train_wall_s"] = [wall.get((lab, s), 100.0) for lab, s in zip(runs["label"], runs["seed"])]
    # dense's seed 2 and pcn's seed 0 were timed under load: left out, so only seed 1 is common.
    runs.loc[((runs["label"] == "dense") & (runs["seed"] == 2)) | ((runs["label"] == "pcn") & (runs["seed"] == 0)),
             "speed_cpu_load"] = 4.0
    agg = aggregate(runs, hists).set_index("label")
    assert agg.loc["pcn", "train_wall_s"] == 125.0 and agg.loc["dense", "train_wall_s"] == 150.0
    assert agg.loc["pcn", "timed_n"] == 2 and agg.loc["pcn", "train_wall_s_rel"] == pytest.approx(100 / 200)
    assert "| n timed | train wall-clock |" in markdown_table(agg.reset_index(), "vgg11")


# --------------------------------------------------------------------------- comparators and controls
def write_suite_folder(out: Path, runs: pd.DataFrame, histories: dict, env: dict | None = None,
                       config: dict | None = None) -> None:
    """Run folders for `runs`; `config` adds to a run's recorded config, keyed by label or run id."""
    for _, r in runs.iterrows():
        folder = out / "runs" / r["run_id"]
        folder.mkdir(parents=True)
        summary = {k: v for k, v in r.items() if k not in ("control", "comparators") and v == v}
        summary["target"] = r["target"] if r["target"] == r["target"] else None
        summary.update(env={"device": "cpu"}, config={"wandb": {"mode": "disabled"}, "control": r["control"],
                                                      **((config or {}).get(r["label"], {})),
                                                      **((config or {}).get(r["run_id"], {}))})
        (folder / "summary.json").write_text(json.dumps(summary))
        if env and r["run_id"] in env:
            (folder / "env.json").write_text(json.dumps({"data_fingerprint": env[r["run_id"]]}))
        histories[r["run_id"]].to_csv(folder / "history.csv", index=False)


def comparator_suite() -> tuple[pd.DataFrame, dict]:
    """`baseline` (the comparator) and `dense_plus` (a method whose name starts like the
    control's) at 50%."""
    targets = {"baseline": 0.5, "dense_plus": 0.5, "m": 0.5}
    return suite_runs({"dense": DENSE3, "baseline": [0.79, 0.81, 0.77], "dense_plus": [0.795, 0.815, 0.775],
                       "m": [0.80, 0.82, 0.78]}, {}, targets)


def test_comparators_come_from_the_suite_file_for_runs_that_did_not_record_them(tmp_path, monkeypatch):
    """Runs made before suites recorded comparators get them from the suite file suite.json
    names; what decides is the declaration, not how a label is spelled."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr("bench.report.aggregation.REPO", tmp_path / "repo")
    runs, hists = comparator_suite()
    write_suite_folder(tmp_path, runs, hists)
    suite_file = tmp_path / "repo" / "configs" / "suites" / "s-v1.yaml"
    suite_file.parent.mkdir(parents=True)
    suite_file.write_text("name: s\ncomparators: [baseline]\n")
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "file": "configs/suites/s-v1.yaml"}))
    readme = write_report(tmp_path).read_text()
    section = readme.split("### Against the comparators")[1]
    assert "| Δ top-1 vs baseline | p (Holm) | vs baseline |" in section
    assert "| dense_plus | 50% | 3 | +0.50 |" in section and "| m | 50% | 3 | +1.00 |" in section
    assert "| baseline | 50%" not in section
    assert "Against the comparators" not in write_report_without(tmp_path, "file")


def test_a_row_whose_activation_differs_from_a_comparators_is_named(tmp_path, monkeypatch):
    """PCNS-like: a LeakyReLU row against ReLU comparators; the rows that share the
    comparator's activation are not named."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, hists = comparator_suite()
    relu, leaky = {"model": {"act": "relu", "leaky_slope": 0.01}}, {"model": {"act": "leaky_relu", "leaky_slope": 0.2}}
    write_suite_folder(tmp_path, runs, hists, config={"dense": relu, "baseline": relu, "dense_plus": relu, "m": leaky})
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "comparators": ["baseline"]}))
    section = write_report(tmp_path).read_text().split("### Against the comparators")[1]
    assert "Activations differ: m at 50% (leaky_relu 0.2) against `baseline` (relu)." in section
    assert "dense_plus at" not in section


def write_report_without(folder: Path, key: str) -> str:
    """The README after removing `key` from suite.json (and naming no suite file by folder)."""
    meta = json.loads((folder / "suite.json").read_text())
    meta.pop(key)
    meta["suite"] = "no-such-suite"
    (folder / "suite.json").write_text(json.dumps(meta))
    return write_report(folder).read_text()


def test_a_comparator_the_suite_added_after_some_seeds_ran_compares_every_seed(tmp_path, monkeypatch):
    """Seed 0 ran when the suite compared with `dense_plus` only; the suite then added
    `baseline` (seeds 1-2 recorded both). Every row is compared with both, on all 3 seeds,
    whichever run comes first; a comparator only the runs recorded is kept too."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, hists = comparator_suite()
    record = {rid: {"comparators": ["dense_plus"] if rid.endswith("-s0") else ["dense_plus", "baseline"]}
              for rid in runs["run_id"]}
    write_suite_folder(tmp_path, runs, hists, config=record)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s", "comparators": ["baseline"]}))
    section = write_report(tmp_path).read_text().split("### Against the comparators")[1]
    assert "| Δ top-1 vs dense_plus | p (Holm) | vs dense_plus | Δ top-1 vs baseline |" in section
    assert "| m | 50% | 3 | +0.50 |" in section       # vs dense_plus, then +1.00 vs baseline
    assert "+1.00" in section.split("| m | 50% |")[1].split("\n")[0]


# --------------------------------------------------------------------------- data
def test_runs_on_different_data_are_never_pooled_and_each_row_says_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, hists = suite_runs({"dense": DENSE3, "m": [0.80, 0.82, 0.10]}, {}, {"m": 0.5})
    prints = {"dense-s0": "aaaaaaaa11", "dense-s1": "aaaaaaaa11", "dense-s2": "aaaaaaaa11",
              "m-s0": "aaaaaaaa11", "m-s1": "aaaaaaaa11", "m-s2": "bbbbbbbb22"}
    write_suite_folder(tmp_path, runs, hists, env=prints)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s"}))
    write_report(tmp_path)
    table = pd.read_csv(tmp_path / "table.csv")
    m = table[table["label"] == "m"].set_index("data")
    assert m.loc["aaaaaaaa", "seeds"] == 2 and m.loc["aaaaaaaa", "test_acc"] == pytest.approx(0.81)
    assert m.loc["bbbbbbbb", "seeds"] == 1 and m.loc["bbbbbbbb", "test_acc"] == pytest.approx(0.10)
    assert m.loc["bbbbbbbb", "vs_control"] == "control not run"          # dense never ran on that data
    readme = (tmp_path / "README.md").read_text()
    assert "**Runs on different data**" in readme and "| method | target | data |" in readme
    assert "| m | 50% | bbbbbbbb | 10.00 |" in readme


def test_runs_without_a_fingerprint_are_one_unknown_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, hists = planted()
    write_suite_folder(tmp_path, runs, hists)
    write_report(tmp_path)
    assert "Data: every run recorded no data fingerprint" in (tmp_path / "README.md").read_text()
    assert set(pd.read_csv(tmp_path / "table.csv")["data"]) == {"unknown"}


# --------------------------------------------------------------------------- the command
def test_report_on_a_missing_or_empty_folder_fails_with_one_line(tmp_path):
    import subprocess
    import sys
    for folder in (tmp_path / "nope", tmp_path):
        p = subprocess.run([sys.executable, "-m", "bench", "report", str(folder)], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1])
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: report: ")


def test_report_takes_the_runs_folder_and_writes_ad_hoc_reports_out_of_results(tmp_path, monkeypatch, capsys):
    """Runs outside a suite (here: one pcn run, no control) report under out/, not beside the
    runs; the runs/ folder itself is accepted; no sentence about a control that never ran."""
    from bench.__main__ import main
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr("bench.report.REPO", tmp_path / "repo")
    runs, hists = planted()
    runs, hists = runs[runs["label"] == "pcn"], {k: v for k, v in hists.items() if k.startswith("pcn")}
    write_suite_folder(tmp_path / "results", runs, hists)
    assert main(["report", str(tmp_path / "results" / "runs")]) == 0
    readme = tmp_path / "repo" / "out" / "report-results" / "README.md"
    assert readme.is_file() and not (tmp_path / "results" / "README.md").exists()
    assert "reach" not in readme.read_text().split("## vgg11")[1].split("|")[0]
    (row,) = [line for line in readme.read_text().splitlines() if line.startswith("| pcn |")]
    assert "| control not run |" in row and row.endswith("| - |")          # no control: no time to reach it
    assert "is not a suite's folder (no suite.json): the report goes to" in capsys.readouterr().out


def test_report_writes_where_out_says_and_refuses_a_file_there(tmp_path, monkeypatch, capsys):
    from bench.__main__ import main
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runs, hists = planted()
    write_suite_folder(tmp_path / "results", runs, hists)
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "README.md").is_file() and not (tmp_path / "results" / "README.md").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --out ")
    assert (tmp_path / "afile").read_text() == "x"


def test_accuracy_over_time_has_one_style_per_row_and_the_mean_over_seeds():
    from bench.report.plots import mean_curve, row_styles
    styles = row_styles(list(range(19)))
    assert len(set(styles.values())) == 19 and len({c for c, _ in styles.values()}) == 19
    curves = [pd.DataFrame({"epoch": [1, 2], "train_wall_s_cum": [10.0, 20.0], "test_acc": [0.5, 0.7]}),
              pd.DataFrame({"epoch": [1, 2], "train_wall_s_cum": [14.0, 30.0], "test_acc": [0.6, 0.8]})]
    mean = mean_curve(curves)
    assert mean["train_wall_s_cum"].tolist() == [12.0, 25.0] and mean["test_acc"].tolist() == pytest.approx([0.55, 0.75])
    mean = mean_curve(curves, timed=curves[:1])          # wall-clock from the runs whose timings are kept
    assert mean["train_wall_s_cum"].tolist() == [10.0, 20.0] and mean["test_acc"].tolist() == pytest.approx([0.55, 0.75])


def test_a_suite_declares_its_comparators_beside_control_without_changing_run_hashes(tmp_path):
    import yaml

    from bench.config import ConfigError, config_hash
    from bench.suite import expand, load_suite
    repo = Path(__file__).resolve().parents[1]
    suite = {"name": "t", "base": str(repo / "configs/smoke.yaml"),
             "models": {"vgg11": {"model": {"name": "vgg11", "width": 0.125}}},
             "methods": {"dense": {}, "baseline": {"name": "dense", "run": {"model": {"width": 0.0625}}}},
             "comparators": ["baseline"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    cells = expand(*load_suite(str(path)), [])
    assert [c.cfg.comparators for c in cells] == [["baseline"], ["baseline"]]
    path.write_text(yaml.safe_dump({k: v for k, v in suite.items() if k != "comparators"}))
    assert [config_hash(c.cfg, "fp") for c in expand(*load_suite(str(path)), [])] == [
        config_hash(c.cfg, "fp") for c in cells]
    path.write_text(yaml.safe_dump(dict(suite, comparators=["basline"])))
    with pytest.raises(ConfigError, match=r"suite.comparators\[0\]: 'basline' is not a method label.*'baseline'"):
        load_suite(str(path))


def test_the_report_says_which_rows_mix_precisions():
    """One precision: one plain sentence. Several: bold, with the rows whose seeds trained
    in different precisions (a row's seeds then differ by more than the seed)."""
    from bench.report.rendering import precision_line
    runs = pd.DataFrame({"label": ["a", "a", "b", "b"], "target": [0.5, 0.5, None, None],
                         "precision": ["fp32", "bf16", "fp32", "fp32"],
                         "memory_format": ["contiguous", "channels_last", "contiguous", None]})
    line = precision_line(runs)[0]
    assert line.startswith("**Runs in different precisions** (3 fp32, 1 bf16; memory format: 3 contiguous, 1 channels_last)")
    assert "rows mixing them over their seeds: a at 50%." in line
    assert precision_line(runs[runs["precision"] == "fp32"]) == [
        "Precision: every run trained in fp32 (memory format: 3 contiguous).", ""]
    assert precision_line(runs.drop(columns=["precision"])) == []


def test_the_report_shows_a_data_folder_of_another_machine_as_a_placeholder():
    from bench.report.build import shown_command
    assert (shown_command("python -m bench suite s.yaml data.root=/work/shared/data/cifar10 --seeds 1 my.data.root=x")
            == "python -m bench suite s.yaml data.root=DATA_ROOT --seeds 1 my.data.root=x")


def test_names_from_the_runs_are_drawn_as_text_and_plot_files_take_their_slug(tmp_path, monkeypatch):
    """A label or model holding matplotlib math text (`$...$`) is drawn as it is, not
    parsed (which fails as the figure is saved), and a model name with a `/` names a plot
    file in the report's folder (its slug), not a path below it."""
    from bench.report.plots import plain, slug
    from tests.test_compare import curve_suite
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert plain("l1$\\frac{$") == "l1\\$\\frac{\\$" and slug("vgg11/x$\\sqrt{$") == "vgg11_x__sqrt__"
    assert slug("resnet20") == "resnet20" and slug("../x") == ".._x"
    model, label = "vgg11/x$\\sqrt{$", "l1$\\frac{$"
    folder = curve_suite(tmp_path / "s", model, label, 1)
    readme = write_report(folder, out_dir=tmp_path / "rep").read_text()
    assert "![scratch curve vgg11/x$\\sqrt{$](scratch_curve_vgg11_x__sqrt__.png)" in readme
    assert (tmp_path / "rep" / "scratch_curve_vgg11_x__sqrt__.png").is_file()
    assert [p.name for p in (tmp_path / "rep").iterdir() if p.is_dir()] == []
    assert f"| {label} |" in readme
