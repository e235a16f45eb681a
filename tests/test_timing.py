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
                                                "seed": 0, "test_acc": 0.5, "config": {"model": {"name": "vgg11", "width": 0.25}}}))
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


def _edit(root: Path, run_id: str, path: list, value) -> None:
    """Set one key of a planted summary (a crafted results file)."""
    f = root / "runs" / run_id / "summary.json"
    s = json.loads(f.read_text())
    d = s
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value
    f.write_text(json.dumps(s))


# A setting no run of the harness writes: its row is not timed, in one line naming the key,
# before a tensor is sized by it (a negative or 10**15 batch, a 0-pixel image) or an
# optimizer is built from it (a text lr, an unknown optimizer timed as SGD).
BAD_SETTINGS = {
    "batch text": (["config", "train", "batch_size"], "abc", "config.train.batch_size"),
    "batch negative": (["config", "train", "batch_size"], -5, "config.train.batch_size must be >= 1"),
    "batch huge": (["config", "train", "batch_size"], 10**15, "config.train.batch_size is 1000000000000000"),
    "eval batch 0": (["config", "train", "eval_batch_size"], 0, "config.train.eval_batch_size must be >= 1"),
    "image 0": (["config", "data", "image_size"], 0, "config.data.image_size is 0"),
    "image text": (["config", "data", "image_size"], "big", "config.data.image_size"),
    "lr text": (["config", "train", "lr"], "fast", "config.train.lr"),
    "unknown optimizer": (["config", "train", "optimizer"], "evil", "config.train.optimizer: 'evil'"),
    "unknown precision": (["precision"], "fp8", "precision \"fp8\""),
    "activations over the cap": (None, [(["config", "train", "batch_size"], 4096),
                                        (["config", "data", "image_size"], 512)], "activations"),
    "image too small to run": (["config", "data", "image_size"], 1, "does not run on 1x1 images"),
    "a crafted record": (["architecture", "modules", "features.0", "args", "out_channels"], 10**12, "out_channels"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_a_malformed_setting_or_record_makes_its_row_not_timed_in_one_line(tmp_path, case):
    from bench.timing import finished_summaries, plan
    plant(tmp_path, "dense-s0", "dense", 0.25)
    plant(tmp_path, "odd-s0", "odd", 0.25)
    key, value, words = BAD_SETTINGS[case]
    for k, v in [(key, value)] if key is not None else value:
        _edit(tmp_path, "odd-s0", k, v)
    rows, archs, skipped = plan(finished_summaries(tmp_path))
    assert [r["label"] for r in rows] == ["dense"] and len(archs) == 1
    assert [s["label"] for s in skipped] == ["odd"]
    reason = skipped[0]["reason"]
    assert words in reason and len(reason.splitlines()) == 1, reason


def test_any_other_failure_rebuilding_a_row_is_its_not_timed_reason(planted, monkeypatch):
    import bench.metrics
    from bench.timing import finished_summaries, plan
    real = bench.metrics.count_macs

    def fails_for_narrow_models(model, x):
        if sum(p.numel() for p in model.parameters()) < 10**5:
            raise RuntimeError("something torch says\nover two lines")
        return real(model, x)

    monkeypatch.setattr(bench.metrics, "count_macs", fails_for_narrow_models)
    rows, _, skipped = plan(finished_summaries(planted))
    assert [r["label"] for r in rows] == ["dense"]
    assert skipped[0]["label"] == "dense_small" and skipped[0]["reason"] == "RuntimeError: something torch says"


def test_a_row_that_cannot_be_set_up_for_timing_is_not_timed_and_a_failing_sitting_writes_nothing(
        planted, monkeypatch):
    import bench.timing as timing
    real = timing.Timed.__init__
    monkeypatch.setattr(timing, "time_block", lambda fn, reps, device: 1.0)    # no timing loop

    def refuses_small(self, arch, device, gen):
        if arch["params"] < 10**5:
            raise RuntimeError("cannot set up")
        real(self, arch, device, gen)

    monkeypatch.setattr(timing.Timed, "__init__", refuses_small)
    lines = []
    doc = json.loads(retime(planted, rounds=1, warmup=0, latency_reps=1, device="cpu", log=lines.append).read_text())
    assert [r["label"] for r in doc["rows"]] == ["dense"] and len(doc["architectures"]) == 1
    assert doc["not_timed"][0]["reason"] == "RuntimeError: cannot set up"
    assert any("dense_small None" not in l and "not timed (RuntimeError: cannot set up)" in l for l in lines)
    (planted / "retime.json").unlink()

    def fails(fn, reps, device):
        raise RuntimeError("out of memory\nmore")

    monkeypatch.setattr(timing, "time_block", fails)
    with pytest.raises(timing.ConfigError) as e:
        retime(planted, rounds=1, warmup=0, latency_reps=1, device="cpu", log=lambda s: None)
    assert "RuntimeError: out of memory" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not (planted / "retime.json").exists()


def test_a_summary_that_names_no_row_is_a_one_line_error(planted):
    from bench.records import RecordError
    from bench.timing import finished_summaries
    f = planted / "runs" / "dense-s0" / "summary.json"
    s = json.loads(f.read_text())
    del s["model"]
    f.write_text(json.dumps(s))
    with pytest.raises(RecordError, match="no model") as e:
        finished_summaries(planted)
    assert str(f) in str(e.value) and len(str(e.value).splitlines()) == 1


def _doc_with_samples(mine: list[float], ref: list[float]) -> dict:
    setting = {"eval_batch": 4, "train_batch": 2, "precision": "fp32", "memory_format": "contiguous"}
    return {"format": 1,
            "sitting": {"cpu": "c", "device": "cpu", "torch_threads": 1, "torch": "x", "started": "t0",
                        "finished": "t1", "rounds": 2, "warmup_rounds": 0},
            "architectures": [{"id": "a1", "params": 1, "macs": 1, "setting": setting,
                               "samples": {m: ref for m in MEASURES}},
                              {"id": "a2", "params": 1, "macs": 1, "setting": setting,
                               "samples": {m: mine for m in MEASURES}}],
            "rows": [{"model": "m", "label": "dense", "target": None, "control": "dense", "arch": "a1",
                      "representative_seed": 0},
                     {"model": "m", "label": "small", "target": 0.5, "control": "dense", "arch": "a2",
                      "representative_seed": 0}]}


def test_a_speed_up_over_a_zero_time_is_none_and_retime_json_needs_positive_times(tmp_path):
    from bench.records import RecordError
    from bench.timing import read_retime
    for mine, ref in (([0.0, 0.0], [1.0, 1.0]), ([1.0, 1.0], [0.0, 0.0]), ([-1.0, -1.0], [1.0, 1.0])):
        doc = _doc_with_samples(mine, ref)
        assert speedup(doc, doc["rows"][1], MEASURES[0]) is None
        assert "| small | 0.5 |" in "\n".join(speed_lines(doc))               # drawn, with "-" for the ratio
        (tmp_path / "retime.json").write_text(json.dumps(doc))
        with pytest.raises(RecordError, match="not a time above 0 ms"):
            read_retime(tmp_path / "retime.json")
    doc = _doc_with_samples([1.0, 1.0], [2.0, 2.0])
    assert speedup(doc, doc["rows"][1], MEASURES[0]) == pytest.approx(2.0)
    (tmp_path / "retime.json").write_text(json.dumps(doc))
    assert read_retime(tmp_path / "retime.json")["rows"][1]["label"] == "small"


def test_retime_finds_its_folder_as_report_does_and_its_folder_errors_say_what_to_give(planted, tmp_path, capsys):
    from bench.timing import locate
    assert locate(planted / "runs") == planted                               # the runs/ folder: its suite's
    assert locate(planted) == planted
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    for bad in ("absent", "empty", "afile"):
        assert main(["retime", str(tmp_path / bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]
    assert len(err) == 3, err
    assert all(line.startswith("error: retime: ") and "give a suite's results folder" in line for line in err), err
