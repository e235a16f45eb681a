"""Damaged and crafted result files (bench.records): every reader of summary.json,
history.csv, env.json, suite.json and retime.json refuses a file that is not what the
harness writes with one error line naming the file, before it has replaced anything; a
file that is not a regular one is refused without being read; the report of a folder of
runs is the report of those runs. The committed results all pass the same checks."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.config import ConfigError
from bench.records import (JSON_CAP, RecordError, read_env, read_history, read_json_record, read_run_config,
                           read_suite, read_summary)
from bench.report import load_runs, locate, suite_plan, write_report
from bench.runs import RunDir
from tests.test_report import planted, write_suite_folder

REPO = Path(__file__).resolve().parents[1]
GOOD = {"run_id": "r", "status": "finished", "model": "vgg11", "method": "dense", "label": "dense", "seed": 0,
        "target": None, "test_acc": 0.8}

# summary.json contents that no run writes, each with what the error must say.
BAD_SUMMARIES = {
    "truncated": ('{"run_id": "r", "test_a', "not JSON"),
    "empty": ("", "empty"),
    "a list": ("[1, 2, 3]", "not a JSON object"),
    "a number": ("7", "not a JSON object"),
    "accuracy as text": (json.dumps({**GOOD, "test_acc": "high"}), "test_acc"),
    "NaN accuracy": (json.dumps({**GOOD, "test_acc": math.nan}), "test_acc"),
    "infinite accuracy": (json.dumps({**GOOD, "test_acc": math.inf}), "test_acc"),
    "no accuracy": (json.dumps({k: v for k, v in GOOD.items() if k != "test_acc"}), "no test_acc"),
    "no run id": (json.dumps({k: v for k, v in GOOD.items() if k != "run_id"}), "no run_id"),
    "unknown status": (json.dumps({**GOOD, "status": "weird"}), "status"),
    "seed as text": (json.dumps({**GOOD, "seed": "0"}), "seed"),
    "macs as text": (json.dumps({**GOOD, "macs": "lots"}), "macs"),
    "config as a list": (json.dumps({**GOOD, "config": [1]}), "config"),
    "comparators as text": (json.dumps({**GOOD, "config": {"comparators": "dense_small"}}), "config.comparators"),
    "cpu as a number": (json.dumps({**GOOD, "env": {"cpu": 3}}), "env.cpu"),
    "not UTF-8": (b"\xff\xfe\x00garbage", "not UTF-8"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "unreadable summary"),
}


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def one_line_naming(err: BaseException, *names: str) -> str:
    """The error's text, after checking it is one line naming each of `names`."""
    text = str(err)
    assert "\n" not in text and all(n in text for n in names), text
    return text


def suite_folder(root: Path) -> Path:
    """A small finished suite (tests/test_report.py's planted runs) with its suite.json."""
    runs, hists = planted()
    write_suite_folder(root, runs, hists)
    (root / "suite.json").write_text(json.dumps({"suite": "t"}))
    return root


# --------------------------------------------------------------------------- summary.json
@pytest.mark.parametrize("case", sorted(BAD_SUMMARIES))
def test_a_damaged_summary_is_one_line_naming_it_in_every_reader(tmp_path, case):
    from bench.compare import load_setting
    from bench.timing import finished_summaries
    content, says = BAD_SUMMARIES[case]
    run = tmp_path / "runs" / "dense-vgg11-s0-abc"
    write(run / "summary.json", content)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "t"}))
    readers = {"report": lambda: load_runs(tmp_path), "retime": lambda: finished_summaries(tmp_path),
               "compare": lambda: load_setting(tmp_path), "run/suite": lambda: RunDir(run).read_summary()}
    for reader, read in readers.items():
        with pytest.raises(RecordError) as e:
            read()
        text = one_line_naming(e.value, "dense-vgg11-s0-abc/summary.json", says)
        assert "unreadable summary" in text and "--rerun" in text, (reader, text)


def test_the_commands_print_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "runs" / "dense-vgg11-s0-abc"
    write(run / "summary.json", "[1, 2, 3]")
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "t"}))
    for argv in (["report", str(tmp_path)], ["retime", str(tmp_path), "--device", "cpu"],
                 ["wandb-report", str(tmp_path), "--entity", "e"]):
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]
        assert len(err) == 1 and err[0].startswith("error: ") and "summary.json" in err[0], (argv, err)
    assert main(["compare", str(tmp_path), str(suite_folder(tmp_path / "other")), "--out",
                 str(tmp_path / "cmp")]) == 1
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith("compare: ") and "summary.json" in err and not (tmp_path / "cmp").exists()


def test_run_on_a_finished_run_with_a_damaged_summary_is_one_line(tiny_overrides, capsys):
    from bench.configure import load_config
    from bench.runs import run_path
    cfg = load_config("configs/smoke.yaml", tiny_overrides)
    write(run_path(cfg) / "summary.json", '{"run_id": ')
    assert main(["run", "configs/smoke.yaml", *tiny_overrides]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]
    assert err.startswith("error: ") and "summary.json" in err and "--rerun" in err


def test_a_suite_dry_run_over_a_damaged_summary_is_one_line(tmp_path, capsys):
    from bench.suite import expand, load_suite
    from tests.test_suite import write_suite
    path = write_suite(tmp_path)
    suite, folder = load_suite(str(path))
    suite.results_dir = str(tmp_path / "o")
    cell = expand(suite, folder, [])[0]
    write(cell.run_dir / "summary.json", json.dumps({**GOOD, "test_acc": "high"}))
    assert main(["suite", str(path), "--dry-run", "--results-dir", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]
    assert len(err) == 1 and err[0].startswith("error: ") and "summary.json" in err[0] and "test_acc" in err[0]


def test_a_nan_accuracy_names_its_run_and_a_diverged_run_stays_a_diverged_run(tmp_path, monkeypatch):
    """A finished run without a finite accuracy is a damaged record, not a run to drop from
    the mean while the row's n still counts it; a diverged run records no accuracy and is
    listed as diverged, as before."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    suite_folder(tmp_path)
    diverged = {**GOOD, "run_id": "pcn-vgg11-s1", "label": "pcn", "target": 0.5, "seed": 1, "status": "diverged",
                "diverged_epoch": 1, "diverged_step": 3, "config": {"control": "dense"}}
    del diverged["test_acc"]
    write(tmp_path / "runs" / "pcn-vgg11-s1" / "summary.json", json.dumps(diverged))
    assert "## Diverged runs" in write_report(tmp_path).read_text()
    nan = json.loads((tmp_path / "runs" / "pcn-vgg11-s0" / "summary.json").read_text())
    write(tmp_path / "runs" / "pcn-vgg11-s0" / "summary.json", json.dumps({**nan, "test_acc": math.nan}))
    with pytest.raises(RecordError) as e:
        write_report(tmp_path)
    one_line_naming(e.value, "pcn-vgg11-s0/summary.json", "test_acc is nan")


# --------------------------------------------------------------------------- files that are not files
def test_a_link_to_a_device_a_fifo_or_outside_its_folder_is_refused_without_being_read(tmp_path, monkeypatch):
    outside = write(tmp_path / "elsewhere" / "secret.json", json.dumps(GOOD))
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    with pytest.raises(RecordError) as e:
        read_summary("/dev/zero")
    one_line_naming(e.value, "/dev/zero", "a device, not a regular file")
    cases = {"a link to /dev/zero, outside its folder": lambda p: p.symlink_to("/dev/zero"),
             "a fifo, not a regular file": os.mkfifo, "a folder, not a regular file": lambda p: p.mkdir(),
             f"a link to {outside}, outside its folder": lambda p: p.symlink_to(outside),
             "a link to a missing file": lambda p: p.symlink_to(run / "nowhere.json")}
    for says, make in cases.items():
        path = run / "summary.json"
        make(path)
        with pytest.raises(RecordError) as e:
            read_summary(path)
        one_line_naming(e.value, str(path), says)
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    assert not {"/dev/zero", str(run / "summary.json"), str(outside)} & set(opened)
    # A link inside its own folder is read as the file it names.
    write(run / "summary.real.json", json.dumps(GOOD))
    (run / "summary.json").symlink_to("summary.real.json")
    assert read_summary(run / "summary.json") == GOOD


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path / "summary.json", json.dumps(GOOD))
    monkeypatch.setattr(os, "open", lambda *a, **k: pytest.fail("opened"))
    with pytest.raises(RecordError) as e:
        read_json_record(path, "summary", "fix", cap=10)
    one_line_naming(e.value, str(path), "cap")
    assert JSON_CAP >= 2**20


def test_a_damaged_run_config_is_one_line_where_compare_needs_it(tmp_path):
    """compare reads config.yaml where a summary has no config: checked like the summary."""
    from bench.compare import load_setting
    run = tmp_path / "runs" / "r"
    write(run / "summary.json", json.dumps({**GOOD, "epochs": 4}))
    for content, says in (("model: [", "not YAML"), ("- 1\n", "not a mapping"), ("train: 5\n", "train is 5"),
                          ("model: {width: wide}\n", "model.width")):
        write(run / "config.yaml", content)
        with pytest.raises(RecordError) as e:
            load_setting(tmp_path)
        one_line_naming(e.value, "r/config.yaml", says)


# --------------------------------------------------------------------------- history.csv, env.json, suite.json
@pytest.mark.parametrize("content, says", [("abc,def\n", "no epoch column"), (b"\x89PNG\r\n\x1a\n\xff\x00", "UTF-8"),
                                           ("", "not CSV"), ("epoch,test_acc,train_wall_s_cum\n1,high,2\n", "high"),
                                           ("epoch,test_acc,train_wall_s_cum\n,0.5,2\n", "epoch"),
                                           ("epoch,test_acc\n1,0.5\n", "no train_wall_s_cum column")])
def test_a_damaged_history_is_one_line_naming_it(tmp_path, content, says):
    suite_folder(tmp_path)
    path = tmp_path / "runs" / "pcn-vgg11-s0" / "history.csv"
    write(path, content)
    with pytest.raises(RecordError) as e:
        load_runs(tmp_path)
    one_line_naming(e.value, "pcn-vgg11-s0/history.csv", says)


def test_a_history_reads_as_pandas_reads_it(tmp_path):
    import pandas as pd
    path = write(tmp_path / "history.csv", "epoch,test_acc,train_wall_s_cum,acc_after_transform,note\n"
                                           "1,0.1234567890123,10.5,,x\n2,0.3,21,0.25,y\n")
    pd.testing.assert_frame_equal(read_history(path), pd.read_csv(path))


def test_a_damaged_env_is_one_line_not_an_unknown_data_group(tmp_path):
    suite_folder(tmp_path)
    write(tmp_path / "runs" / "pcn-vgg11-s0" / "env.json", '{"data_fingerprint": ["x"]}')
    with pytest.raises(RecordError) as e:
        load_runs(tmp_path)
    one_line_naming(e.value, "pcn-vgg11-s0/env.json", "data_fingerprint")
    with pytest.raises(RecordError):
        read_env(write(tmp_path / "env.json", "{"))


@pytest.mark.parametrize("content, says", [('{"suite": "t", "con', "not JSON"), ("[]", "not a JSON object"),
                                           ('{"controls": "dense"}', "controls"),
                                           ('{"controls": {"pcn": 1}}', "controls.pcn"),
                                           ('{"comparators": "dense_small"}', "comparators"),
                                           ('{"cells": "132"}', "cells")])
def test_a_damaged_suite_record_is_one_line_naming_it(tmp_path, content, says):
    from bench.compare import load_setting
    from bench.wandb_report import suite_of
    suite_folder(tmp_path)
    write(tmp_path / "suite.json", content)
    for read in (lambda: suite_plan(tmp_path), lambda: load_setting(tmp_path), lambda: suite_of(tmp_path)):
        with pytest.raises(RecordError) as e:
            read()
        text = one_line_naming(e.value, "suite.json", "running the suite again")
        assert says in text or "no suite" in text            # wandb-report needs the suite's name first


def test_a_name_or_key_with_a_line_break_still_gives_one_line(tmp_path):
    folder = tmp_path / "odd\nname\u2028x"
    write(folder / "suite.json", json.dumps({"controls": {"a\nb\x85": 1}}))
    with pytest.raises(RecordError) as e:
        suite_plan(folder)
    assert len(str(e.value).splitlines()) == 1 and "controls.a\\nb\\x85 is 1, not text" in str(e.value)


def test_wandb_report_needs_the_suites_name(tmp_path):
    from bench.wandb_report import suite_of
    write(tmp_path / "suite.json", "{}")
    with pytest.raises(ConfigError, match="no suite"):
        suite_of(tmp_path)


# --------------------------------------------------------------------------- the report: nothing half-written
def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def good_retime() -> dict:
    from bench.timing import FORMAT, MEASURES
    setting = {"eval_batch": 4, "train_batch": 2, "precision": "fp32", "memory_format": "contiguous"}
    return {"format": FORMAT,
            "sitting": {"cpu": "Test CPU", "device": "cpu", "torch_threads": 1, "torch": "x", "started": "t0",
                        "finished": "t1", "rounds": 3, "warmup_rounds": 1, "load_before": [0.1, 0, 0],
                        "load_after": [0.2, 0, 0], "load_per_round": [[0.1, 0, 0], None]},
            "architectures": [{"id": "a1", "params": 10, "macs": 100, "setting": setting,
                               "samples": {m: [4.0, 8.0, 6.0] for m in MEASURES}},
                              {"id": "a2", "params": 5, "macs": 50, "setting": setting,
                               "samples": {m: [2.0, 3.0, 30.0] for m in MEASURES}}],
            "rows": [{"model": "vgg11", "label": "dense", "target": None, "control": "dense", "arch": "a1",
                      "representative_seed": 0},
                     {"model": "vgg11", "label": "pcn", "target": 0.5, "control": "dense", "arch": "a2",
                      "representative_seed": None}],
            "not_timed": [{"model": "vgg11", "label": "odd", "target": 0.5, "reason": "no record"}]}


BAD_RETIMES = {"another format": {"format": 999}, "no format": {"rows": []},
               "no sitting": {"format": 1, "architectures": [], "rows": []},
               "rows as text": lambda d: {**d, "rows": "all"},
               "an unknown architecture": lambda d: {**d, "rows": [{**d["rows"][0], "arch": "a9"}]},
               "samples as text": lambda d: {**d, "architectures": [{**d["architectures"][0], "samples": "x"}]},
               "a target as text": lambda d: {**d, "rows": [{**d["rows"][1], "target": "half"}]}}


@pytest.mark.parametrize("case", ["truncated", *BAD_RETIMES])
def test_a_damaged_retime_record_leaves_the_previous_report_as_it_was(tmp_path, monkeypatch, case):
    from bench.timing import report_lines
    monkeypatch.setenv("WANDB_MODE", "disabled")
    suite_folder(tmp_path)
    write(tmp_path / "retime.json", json.dumps(good_retime()))
    readme = write_report(tmp_path).read_text()
    assert "## Speed, timed in one sitting" in readme and "| pcn | 0.5 | dense | None |" in readme
    bad = BAD_RETIMES.get(case)
    write(tmp_path / "retime.json", '{"format": 1, "sitt' if case == "truncated" else
          json.dumps(bad(good_retime()) if callable(bad) else bad))
    before = snapshot(tmp_path)
    with pytest.raises(RecordError) as e:
        write_report(tmp_path)
    one_line_naming(e.value, "retime.json", "python -m bench retime")
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".report-*"))
    with pytest.raises(RecordError):
        report_lines(tmp_path)


def test_a_damaged_run_leaves_the_previous_report_and_a_new_report_folder_is_not_made(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    suite_folder(tmp_path)
    write_report(tmp_path)
    write(tmp_path / "runs" / "pcn-vgg11-s0" / "history.csv", "abc,def\n")
    before = snapshot(tmp_path)
    with pytest.raises(RecordError):
        write_report(tmp_path)
    with pytest.raises(RecordError):
        write_report(tmp_path, out_dir=tmp_path / "new")
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_a_failure_while_drawing_leaves_the_previous_report_and_no_new_folder(tmp_path, monkeypatch):
    """Whatever stops the report after its plots are drawn (here: a failing section), the
    old files stay, the drawings are removed, and a report folder it made is removed."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    suite_folder(tmp_path)
    write_report(tmp_path)
    before = snapshot(tmp_path)

    def fail(*a, **k):
        raise RuntimeError("late failure")
    monkeypatch.setattr("bench.report.build.published_section", fail)
    for out in (None, tmp_path / "new" / "report"):
        with pytest.raises(RuntimeError, match="late failure"):
            write_report(tmp_path, out_dir=out)
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".report-*"))
    assert not (tmp_path / "new" / "report").exists()


def test_every_part_of_a_retime_record_is_checked_or_harmless(tmp_path):
    """Each key of a good retime.json removed, or its value replaced by another kind: the
    speed table is drawn or the file refused in one line, never a traceback."""
    from bench.timing import report_lines

    def paths(obj, at=()):
        yield at
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            yield from paths(v, at + (k,))

    good = good_retime()
    for at in list(paths(good))[1:]:
        for change in ("drop", "x", None, [], {}, -1, math.nan, True):
            doc = json.loads(json.dumps(good))
            parent = doc
            for k in at[:-1]:
                parent = parent[k]
            if change == "drop":
                parent.pop(at[-1]) if isinstance(parent, dict) else parent.pop(at[-1])
            else:
                parent[at[-1]] = change
            write(tmp_path / "retime.json", json.dumps(doc))
            try:
                assert all(isinstance(line, str) for line in report_lines(tmp_path))
            except RecordError as e:
                one_line_naming(e, "retime.json")


# --------------------------------------------------------------------------- report on a folder of runs
def test_a_folder_of_runs_by_another_name_is_reported_on_itself(tmp_path, monkeypatch):
    """`report results/mine` where `mine` holds run folders: its own runs, not those of a
    runs/ folder beside it, and the report goes out of results/ (no suite.json)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr("bench.report.REPO", tmp_path / "repo")
    runs, hists = planted()
    mine = runs[runs["label"] == "pcn"]
    write_suite_folder(tmp_path / "results", runs[runs["label"] != "pcn"], hists)      # results/runs/: the others
    write_suite_folder(tmp_path / "staging", mine, hists)
    (tmp_path / "staging" / "runs").rename(tmp_path / "results" / "mine")
    assert locate(tmp_path / "results" / "mine") == tmp_path / "results" / "mine"
    assert locate(tmp_path / "results" / "runs") == tmp_path / "results"                 # a runs/ folder: its suite
    assert locate(tmp_path / "results") == tmp_path / "results"
    assert main(["report", str(tmp_path / "results" / "mine")]) == 0
    out = tmp_path / "repo" / "out" / "report-mine"
    import pandas as pd
    assert list(pd.read_csv(out / "runs.csv")["run_id"]) == list(mine["run_id"])
    assert not (tmp_path / "results" / "mine" / "README.md").exists()


# --------------------------------------------------------------------------- what the harness wrote passes
def test_every_committed_result_file_passes_the_checks():
    from bench.timing import read_retime
    results = REPO / "results"
    summaries = sorted(results.glob("*/runs/*/summary.json"))
    assert summaries
    for path in summaries:
        read_summary(path)
        read_run_config(path.parent / "config.yaml")
        if (path.parent / "env.json").exists():
            read_env(path.parent / "env.json")
        if (path.parent / "history.csv").exists():
            read_history(path.parent / "history.csv")
    for path in results.glob("*/suite.json"):
        read_suite(path)
    for path in results.glob("*/retime.json"):
        read_retime(path)
