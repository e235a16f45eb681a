"""`bench retime`: planted rows rebuilt and timed in one sitting; the speed table's
speed-ups divide two medians of that sitting. Timing values are never asserted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import main
from bench.architecture import record
from bench.config import ModelConfig
from bench.models import build_model
from bench.timing import MEASURES, median_iqr, retime, speed_lines, speedup



def plant(root: Path, run_id: str, label: str, width: float, seed: int = 0, target=None,
          with_record: bool = True, memory_format: str = "contiguous") -> None:
    """A finished run's summary as the harness writes it (the fields retime reads)."""
    run_cfg = ModelConfig(name="vgg11", width=0.25, num_classes=10)
    summary = {"status": "finished", "run_id": run_id, "method": "dense_small" if target else "dense",
               "model": "vgg11", "label": label, "seed": seed, "target": target, "test_acc": 0.5, "precision": "fp32",
               "memory_format": memory_format,
               "method_summary": {"width": width},
               "config": {"control": "dense", "model": {"name": "vgg11", "width": 0.25, "act": "relu",
                                                         "leaky_slope": 0.01, "num_classes": 10},
                          "data": {"image_size": 32},
                          "train": {"batch_size": 8, "eval_batch_size": 16, "optimizer": "sgd", "lr": 0.1,
                                    "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                                    "label_smoothing": 0.1}}}
    if with_record:
        import dataclasses
        summary["architecture"] = record(build_model(dataclasses.replace(run_cfg, width=width)), run_cfg)
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def planted(tmp_path):
    plant(tmp_path, "dense-s0", "dense", 0.25)
    plant(tmp_path, "dense-s1", "dense", 0.25, seed=1)
    plant(tmp_path, "small-s0", "dense_small", 0.0625, target=0.25, with_record=False)   # derived from the summary
    plant(tmp_path, "small-s1", "dense_small", 0.125, seed=1, target=0.25)
    plant(tmp_path, "small-s2", "dense_small", 0.1, seed=2, target=0.25)
    return tmp_path


def test_retime_times_two_planted_architectures_in_one_sitting(planted):
    path = retime(planted, rounds=2, warmup=1, latency_reps=2, device="cpu", log=lambda s: None)
    doc = json.loads(path.read_text())
    assert json.loads(json.dumps(doc)) == doc                               # plain data
    s = doc["sitting"]
    assert s["rounds"] == 2 and s["warmup_rounds"] == 1 and s["cpu"] and s["device"] == "cpu"
    assert "load_before" in s and "load_after" in s and len(s["load_per_round"]) == 3
    # Two distinct architectures: the dense seeds share one; the dense_small row is timed on
    # its median-MACs seed (width 0.1 of 0.0625 / 0.1 / 0.125).
    assert len(doc["architectures"]) == 2
    rows = {r["label"]: r for r in doc["rows"]}
    assert rows["dense_small"]["representative"] == "small-s2" and len(rows["dense_small"]["seeds"]) == 3
    macs = [x["macs"] for x in rows["dense_small"]["seeds"]]
    assert macs == sorted(macs) and rows["dense_small"]["seeds"][1]["run_id"] == "small-s2"
    for a in doc["architectures"]:
        assert all(len(a["samples"][m]) == 2 for m in MEASURES)            # warm-up dropped
    # Every speed-up divides two medians of this file's samples (the same sitting).
    archs = {a["id"]: a for a in doc["architectures"]}
    for m in MEASURES:
        want = (np.median(archs[rows["dense"]["arch"]]["samples"][m])
                / np.median(archs[rows["dense_small"]["arch"]]["samples"][m]))
        assert speedup(doc, rows["dense_small"], m) == pytest.approx(want)
        assert speedup(doc, rows["dense"], m) == pytest.approx(1.0)
    table = "\n".join(speed_lines(doc))
    assert "x faster than the row's control" in table and "| dense_small | 0.25 | dense | 2 |" in table


def test_every_architecture_of_a_model_is_timed_in_the_format_most_of_its_runs_used(tmp_path):
    # A row whose runs trained channels_last (another machine) beside contiguous runs: timed
    # contiguous like the rest, so its speed-up does not divide two memory formats.
    from bench.timing import finished_summaries, plan, timing_settings
    plant(tmp_path, "dense-s0", "dense", 0.25)
    plant(tmp_path, "dense-s1", "dense", 0.25, seed=1)
    plant(tmp_path, "other-s0", "decorrelated_bp", 0.25, memory_format="channels_last")
    plant(tmp_path, "other-s1", "decorrelated_bp", 0.25, seed=1, memory_format="channels_last")
    plant(tmp_path, "small-s0", "dense_small", 0.125, target=0.25)
    summaries = finished_summaries(tmp_path)
    assert timing_settings(summaries) == {"vgg11": {"precision": "fp32", "memory_format": "contiguous"}}
    rows, archs, _ = plan(summaries)
    assert {a["setting"]["memory_format"] for a in archs.values()} == {"contiguous"}
    by = {r["label"]: r for r in rows}
    assert by["decorrelated_bp"]["arch"] == by["dense"]["arch"]            # same computation: one timed model
    # A tie goes to the first pair by name: channels_last before contiguous.
    plant(tmp_path, "small-s1", "dense_small", 0.125, seed=1, target=0.25, memory_format="channels_last")
    assert timing_settings(finished_summaries(tmp_path))["vgg11"]["memory_format"] == "channels_last"


def test_the_table_shows_median_and_iqr_and_the_ratio_of_the_sittings_medians():
    doc = {"sitting": {"cpu": "Test CPU", "device": "cpu", "torch_threads": 1, "torch": "x", "started": "t0",
                       "finished": "t1", "rounds": 3, "warmup_rounds": 1, "load_before": [0.1, 0, 0],
                       "load_after": [0.2, 0, 0], "load_per_round": []},
           "architectures": [
               {"id": "a1", "params": 10, "macs": 100, "setting": {"eval_batch": 4, "train_batch": 2,
                "precision": "fp32", "memory_format": "contiguous"},
                "samples": {m: [4.0, 8.0, 6.0] for m in MEASURES}},
               {"id": "a2", "params": 5, "macs": 50, "setting": {"eval_batch": 4, "train_batch": 2,
                "precision": "fp32", "memory_format": "contiguous"},
                "samples": {m: [2.0, 3.0, 30.0] for m in MEASURES}}],
           "rows": [{"model": "m", "label": "dense", "target": None, "control": "dense", "arch": "a1",
                     "representative_seed": 0},
                    {"model": "m", "label": "small", "target": 0.5, "control": "dense", "arch": "a2",
                     "representative_seed": 1}]}
    assert median_iqr([4.0, 8.0, 6.0]) == (6.0, 5.0, 7.0)
    table = "\n".join(speed_lines(doc))
    assert "| small | 0.5 | dense | 1 | 5 | 50 | 3 (2.5-16.5) | 2.00x |" in table      # 6 / 3, medians (not means)
    assert "busy" not in table
    # A control that ran at the row's target is the one divided by (static DSR for DSR).
    doc["rows"].append({"model": "m", "label": "small_ctl", "target": 0.5, "control": "dense", "arch": "a1",
                        "representative_seed": 0})
    doc["rows"][1]["control"] = "small_ctl"
    assert speedup(doc, doc["rows"][1], MEASURES[0]) == pytest.approx(2.0)
    doc["rows"][2]["target"] = 0.25                                      # no control at 0.5 now
    assert speedup(doc, doc["rows"][1], MEASURES[0]) is None
    doc["rows"][1]["control"], doc["rows"][2]["target"] = "dense", 0.5
    doc["sitting"]["load_after"] = [3.0, 0, 0]
    assert "busy" in "\n".join(speed_lines(doc))


def test_a_sitting_older_than_the_runs_says_which_rows_it_does_not_cover():
    """A row redone since the sitting (its timed run is gone) is marked stale; a row the
    sitting never timed is named; a sitting that covers the runs says neither."""
    arch = {"params": 10, "macs": 100, "samples": {m: [1.0] for m in MEASURES},
            "setting": {"eval_batch": 4, "train_batch": 2, "precision": "fp32", "memory_format": "contiguous"}}
    doc = {"sitting": {"cpu": "c", "device": "cpu", "torch_threads": 1, "torch": "x", "started": "t0",
                       "finished": "t1", "rounds": 1, "warmup_rounds": 0},
           "architectures": [{"id": "a1", **arch}],
           "rows": [{"model": "m", "label": "dense", "target": None, "control": "dense", "arch": "a1",
                     "representative": "dense-s0", "representative_seed": 0},
                    {"model": "m", "label": "pcn", "target": 0.5, "control": "dense", "arch": "a1",
                     "representative": "pcn-s0-old", "representative_seed": 0}]}
    now = {("m", "dense", None), ("m", "pcn", 0.5), ("m", "gmp", 0.1)}
    table = "\n".join(speed_lines(doc, {"dense-s0", "pcn-s0-new", "gmp-s0"}, now))
    assert "1 of its rows time the architecture of a run no longer in runs/" in table
    assert "| pcn (*stale*) | 0.5 |" in table and "| dense | - |" in table
    assert "not timed in it: m gmp 0.1;" in table
    covered = "\n".join(speed_lines(doc, {"dense-s0", "pcn-s0-old"}, now - {("m", "gmp", 0.1)}))
    assert "does not cover" not in covered and "stale" not in covered


def test_retime_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["retime", str(tmp_path / "absent")]) == 2
    assert main(["retime", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]   # torch's import notice
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert not (tmp_path / "retime.json").exists()


def test_a_row_that_cannot_be_rebuilt_is_named_and_the_rest_timed(planted):
    d = planted / "runs" / "odd"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"status": "finished", "run_id": "odd", "method": "mystery",
                                                "model": "vgg11", "label": "mystery", "target": 0.5,
                                                "test_acc": 0.5, "config": {"model": {"name": "vgg11", "width": 0.25}}}))
    doc = json.loads(retime(planted, rounds=1, warmup=0, latency_reps=1, device="cpu", log=lambda s: None).read_text())
    assert [s["label"] for s in doc["not_timed"]] == ["mystery"] and len(doc["rows"]) == 2
    assert "not timed: vgg11 mystery 0.5" in "\n".join(speed_lines(doc))


def test_the_report_renders_the_speed_table_where_retime_json_exists(tiny_overrides, tmp_path):
    from bench.configure import load_config
    from bench.report import write_report
    from bench.train import train
    out = tmp_path / "suite"
    for extra in (["method.name=dense"], ["method.name=dense_small", "method.target_params=0.5"]):
        train(load_config("configs/smoke.yaml", tiny_overrides + extra + ["train.epochs=1", f"output_dir={out}/runs"]),
              log=lambda s: None)
    assert "Speed, timed in one sitting" not in write_report(out).read_text()
    retime(out, rounds=1, warmup=0, latency_reps=1, device="cpu", log=lambda s: None)
    text = write_report(out).read_text()
    assert "## Speed, timed in one sitting" in text and "x faster than the row's control" in text
    assert "| dense_small | 0.5 | dense |" in text
