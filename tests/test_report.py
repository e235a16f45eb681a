"""The report: each row is compared with its own control (issue 15, item 10)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.report import aggregate, highlights, markdown_table, write_report

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
    assert "| pcns | 50% | 72.00 | dense_leaky | +2.00 |" in table
    assert table.index("| dense |") < table.index("| dense_leaky |") < table.index("| pcn |")  # controls first
    assert highlights(agg, "vgg11")[-1] == (
        "- Fastest to its control's accuracy: **pcns** at 50% (control: dense_leaky), epoch 2 after 11s of "
        "training; 2 of 2 method rows reach theirs at all.")


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
    assert "| pcns | 50% | 72.00 | dense_leaky | +2.00 |" in (tmp_path / "README.md").read_text()


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
    assert pcn == "| pcn | 50% | dense | 8.0 (0.5) | 62.5 (0.5) | 100.0 (0.5) | 2.00x | 1.25x | 1.60x | 2.00x |"


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
    assert "unshared CPU: 1-min load average at most 1.9 on 2 CPUs" in "\n".join(
        speed_section(aggregate(runs, hists), "vgg11"))
    runs.loc[runs["label"] == "pcn", "speed_cpu_load"] = 4.0
    assert "**Shared CPU**: 1 of 4 rows" in "\n".join(speed_section(aggregate(runs, hists), "vgg11"))


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
