"""The saved W&B report of a suite, built offline: its panels, groupings and filters."""
from __future__ import annotations

import json

import pytest
import wandb_workspaces.reports.v2 as wr

from bench.config import ConfigError
from bench.wandb_report import build_report, suite_of


def grids(report) -> list:
    return [b for b in report.blocks if isinstance(b, wr.PanelGrid)]


def test_the_report_compares_the_suites_runs_grouped_by_method_and_target():
    report = build_report("cifar10-quick", "lab", "compress-bench")
    assert (report.entity, report.project) == ("lab", "compress-bench")
    panels = [p for g in grids(report) for p in g.panels]
    for g in grids(report):
        for rs in g.runsets:
            assert rs.filters.startswith("Group = 'cifar10-quick'")          # only this suite's runs
            assert rs.groupby == ["config.method", "config.target"]         # seeds aggregated
    scatter = {(p.x, p.y) for p in panels if isinstance(p, wr.ScatterPlot)}
    assert {("params_nonzero", "test_acc"), ("macs", "test_acc")} <= scatter
    lines = [p for p in panels if isinstance(p, wr.LinePlot)]
    assert any(p.x == "train_wall_s_cum" and p.y == ["test_acc"] and p.groupby == "method" for p in lines)
    assert any(isinstance(p, wr.RunComparer) for p in panels)              # the runs table


def test_suite_and_project_come_from_the_results_folder(tmp_path):
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "s1"}))
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "summary.json").write_text(json.dumps({"config": {"wandb": {"project": "p2"}}}))
    assert suite_of(tmp_path) == ("s1", "p2")


def test_a_folder_without_a_suite_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no suite.json"):
        suite_of(tmp_path)


def test_the_scratch_curve_is_its_own_runset_on_the_training_compute_plane():
    from wandb_workspaces.expr import expr_to_filters
    report = build_report("cifar10-quick", "lab", "compress-bench")
    (grid,) = [g for g in grids(report) if any(isinstance(p, wr.ScatterPlot) and p.x == "train_macs" for p in g.panels)]
    (panel,) = grid.panels
    assert (panel.y, panel.log_x) == ("test_acc", True)
    curve, rest = grid.runsets
    assert curve.name == "scratch curve" and rest.name == "other rows"
    # Both filters parse offline into (group) AND (method_name = / != dense_small).
    for rs, op in ((curve, "="), (rest, "!=")):
        leaves = expr_to_filters(rs.filters).filters
        assert [(f.key.name, f.op, f.value) for f in leaves[1:]] == [("method_name", op, "dense_small")]
