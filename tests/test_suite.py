"""Suites: grid expansion, validation before running, skip-finished, report files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.config import ConfigError
from bench.suite import expand, load_suite, run_suite, select_rows

REPO = Path(__file__).resolve().parents[1]


def write_suite(tmp_path: Path, **changes) -> Path:
    suite = {
        "name": "t", "base": str(REPO / "configs/smoke.yaml"),
        "overrides": {"data": {"synthetic_train_size": 256, "synthetic_test_size": 64},
                      "train": {"epochs": 2, "batch_size": 64, "throughput_steps": 0}},
        "models": {"vgg11": {"model": {"name": "vgg11", "width": 0.125}}},
        "methods": {"dense": {}, "dense_leaky": {"name": "dense", "run": {"model": {"act": "leaky_relu"}}}},
        "targets": [0.5, 0.25], "seeds": [0],
    }
    suite.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_grid_expands_targets_only_for_methods_that_take_them(tmp_path):
    suite, folder = load_suite(str(write_suite(tmp_path, seeds=[0, 1])))
    cells = expand(suite, folder, [])
    assert [(c.label, c.target, c.seed) for c in cells] == [
        ("dense", None, 0), ("dense_leaky", None, 0), ("dense", None, 1), ("dense_leaky", None, 1)]
    assert cells[1].cfg.model.act == "leaky_relu" and cells[0].cfg.model.act == "relu"
    assert all(c.cfg.wandb.group == "t" and c.cfg.label == c.label for c in cells)


def test_a_bad_cell_fails_before_anything_runs(tmp_path):
    path = write_suite(tmp_path, methods={"dense": {}, "typo": {"name": "dnese"}})
    with pytest.raises(ConfigError, match="unknown method 'dnese'"):
        run_suite(str(path), [], results_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_suite_runs_reports_and_skips_finished_cells(tmp_path, capsys):
    path = write_suite(tmp_path)
    out = tmp_path / "out"
    assert run_suite(str(path), [], results_dir=str(out)) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["label"]) == ["dense", "dense_leaky"]
    hist = pd.read_csv(out / "histories.csv")         # every run's epochs, kept outside runs/
    assert sorted(hist.groupby("label")["epoch"].max().items()) == [("dense", 2), ("dense_leaky", 2)]
    for name in ("README.md", "acc_vs_params.png", "acc_vs_macs.png", "acc_vs_train_time.png", "acc_over_time.png"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "| dense | - |" in readme and "dense_leaky" in readme
    assert json.loads((out / "suite.json").read_text())["controls"] == {"dense": "dense", "dense_leaky": "dense"}
    assert sorted(runs["control"]) == ["dense", "dense"]
    capsys.readouterr()
    assert run_suite(str(path), [], results_dir=str(out)) == 0
    assert "2 runs (2 finished)" in capsys.readouterr().out          # nothing re-run


def test_a_part_of_the_suite_reports_against_the_whole_suite(tmp_path):
    """--seeds and --rows run a part; the report's partial line counts every cell of the file."""
    out = tmp_path / "out"
    assert run_suite(str(write_suite(tmp_path, seeds=[0, 1])), [], results_dir=str(out), seeds=[0], rows=["dense"]) == 0
    assert json.loads((out / "suite.json").read_text())["cells"] == 4
    assert "**Partial: 1 of the suite's 4 runs have finished.**" in (out / "README.md").read_text()


def test_a_method_declares_its_control(tmp_path):
    methods = {"dense": {}, "dense_leaky": {"name": "dense", "run": {"model": {"act": "leaky_relu"}}},
               "leaky": {"name": "dense", "control": "dense_leaky", "run": {"model": {"act": "leaky_relu"}}}}
    suite, folder = load_suite(str(write_suite(tmp_path, methods=methods)))
    assert suite.controls() == {"dense": "dense", "dense_leaky": "dense", "leaky": "dense_leaky"}
    assert [c.label for c in expand(suite, folder, [])] == ["dense", "dense_leaky", "leaky"]  # not a method option
    suite, _ = load_suite(str(write_suite(tmp_path, methods=methods, control="dense_leaky")))
    assert suite.controls() == {"dense": "dense_leaky", "dense_leaky": "dense_leaky", "leaky": "dense_leaky"}


def test_an_unknown_control_fails_when_the_suite_is_loaded(tmp_path):
    methods = {"dense": {}, "dense_leaky": {"name": "dense"}, "pcns": {"control": "dense_leakey"}}
    with pytest.raises(ConfigError, match=r"^suite.methods.pcns.control: 'dense_leakey' is not a method label of "
                                          r"this suite \(did you mean 'dense_leaky'\?\); labels: dense, dense_leaky, "
                                          r"pcns$"):
        load_suite(str(write_suite(tmp_path, methods=methods)))
    with pytest.raises(ConfigError, match=r"^suite.control: 'relu' is not a method label"):
        load_suite(str(write_suite(tmp_path, control="relu")))
    with pytest.raises(ConfigError, match="suite.methods.pcns.control"):
        run_suite(str(write_suite(tmp_path, methods=methods)), [], results_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_grid_and_cost(tmp_path, capsys):
    assert run_suite(str(write_suite(tmp_path)), [], dry_run=True, results_dir=str(tmp_path / "o")) == 0
    text = capsys.readouterr().out
    assert "2 runs (0 finished)" in text and "estimated cost" in text
    assert not (tmp_path / "o").exists()


def test_a_method_can_carry_its_own_targets(tmp_path):
    path = write_suite(tmp_path, methods={"dense": {}, "snp": {"transform_epoch": 1, "targets": [0.1]}, "l1_filter": {}})
    cells = expand(*load_suite(str(path)), [])
    assert sorted((c.label, c.target or 0) for c in cells) == [
        ("dense", 0), ("l1_filter", 0.25), ("l1_filter", 0.5), ("snp", 0.1)]
    assert [c.cfg.method.target_params for c in cells if c.label == "snp"] == [0.1]
    with pytest.raises(ConfigError, match=r"suite.methods.dense.targets: .*dense has none"):
        expand(*load_suite(str(write_suite(tmp_path, methods={"dense": {"targets": [0.5]}}))), [])


def test_a_suite_keeps_the_precision_of_its_finished_runs(tmp_path, capsys):
    """Finished on a machine whose `auto` would pick another precision, a suite's remaining
    runs are pinned to what its finished runs used; the pin leaves the run hash alone."""
    from bench.device import Runtime
    from bench.runs import RunDir, run_name, write_json
    from bench.suite import pin_auto_precision
    cells = expand(*load_suite(str(write_suite(tmp_path, seeds=[0, 1], results_dir=str(tmp_path / "out")))), [])
    names = [run_name(c.cfg) for c in cells]
    done = cells[0].run_dir
    done.mkdir(parents=True)
    write_json(RunDir(done).summary_path, {"status": "finished", "run_id": done.name, "test_acc": 0.5,
                                           "precision": "bf16", "memory_format": "channels_last"})
    status = [c.status() for c in cells]
    assert status == ["finished", "todo", "todo", "todo"]
    pin_auto_precision([c for c, st in zip(cells, status) if st == "todo"], cells[:1])
    assert "precision bf16/channels_last for the 3 run(s) to do" in capsys.readouterr().out
    assert [c.cfg.train.auto_resolves_to for c in cells] == ["", *["bf16/channels_last"] * 3]
    assert [run_name(c.cfg) for c in cells] == names
    assert cells[1].raw["train"]["auto_resolves_to"] == "bf16/channels_last"    # what a worker rebuilds
    cells[1].cfg.train.auto_resolves_to = "fp32/contiguous"
    rt = Runtime(torch.device("cpu"), cells[1].cfg.train)
    assert (rt.precision, rt.memory_format) == ("fp32", "contiguous")


def test_a_part_of_a_suite_keeps_the_precision_of_the_runs_outside_it(tmp_path, capsys):
    """--seeds 1 (or --rows) on a machine whose `auto` differs: the selection has no finished
    run of its own, and still trains at the precision of the suite's finished seed-0 runs."""
    from bench.runs import RunDir, write_json
    out = tmp_path / "out"
    path = write_suite(tmp_path, seeds=[0, 1], results_dir=str(out))
    for c in expand(*load_suite(str(path)), [])[:2]:         # both rows at seed 0
        c.run_dir.mkdir(parents=True)
        write_json(RunDir(c.run_dir).summary_path, {"status": "finished", "run_id": c.run_dir.name, "test_acc": 0.5,
                                                    "precision": "fp32", "memory_format": "contiguous"})
    assert run_suite(str(path), [], results_dir=str(out), seeds=[1], dry_run=True) == 0
    assert "precision fp32/contiguous for the 2 run(s) to do, as in this suite's 2 finished run(s)" in capsys.readouterr().out


def test_rows_selects_the_same_runs_as_the_whole_grid(tmp_path):
    suite, folder = load_suite(str(write_suite(tmp_path, seeds=[0, 1])))
    grid = expand(suite, folder, [])
    picked = select_rows(grid, ["dense_leaky"])
    assert [(c.label, c.seed) for c in picked] == [("dense_leaky", 0), ("dense_leaky", 1)]
    assert [c.run_dir for c in picked] == [c.run_dir for c in grid if c.label == "dense_leaky"]
    assert select_rows(grid, None) == grid
    with pytest.raises(ConfigError, match=r"--rows dnese: not a row label of this suite; labels: dense, dense_leaky"):
        run_suite(str(write_suite(tmp_path)), [], results_dir=str(tmp_path / "out"), rows=["dnese"])
    assert not (tmp_path / "out").exists()
