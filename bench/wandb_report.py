"""The W&B dashboard of a suite: `python -m bench wandb-report RESULTS_DIR --entity E [--project P]`.

Builds a saved W&B report (with `wandb-workspaces`) over the suite's runs, which every
run logs with `group` = the suite's name and the top-level config keys `method` (the
row label), `target` and `seed`:
- accuracy against non-zero parameters and against MACs per image, runs grouped by
  method and target (one point per target, seeds averaged);
- test accuracy over the training wall-clock (`train_wall_s_cum`), grouped by method and
  target, mean with its standard error over seeds (time to accuracy);
- top-1 against executed training MACs (log x), the scratch curve (every dense_small
  run: `method_name` in the run's config) as its own runset beside the other rows, each
  point a (label, target) group: the plane of the local report's compute-matched section
  (bench/scratch_curve.py; its interpolated gaps and intervals are in the local report only);
- the runs table, one row per (method, target) group.
Building needs no network (`build_report`, tested offline); only saving does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bench.config import ConfigError
from bench.records import FIX_RUN, Record, read_json_record, read_suite

DEFAULT_PROJECT = "compress-bench"
DEFAULT_BASE_URL = "https://api.wandb.ai"          # W&B's own default for $WANDB_BASE_URL
GROUPING = ["config.method", "config.target"]
CURVE_METHOD = "dense_small"     # the runs of the scratch curve (bench.scratch_curve.CURVE_METHOD)
# What suite_of reads of a summary: its config's W&B project.
PROJECT = Record(optional={"config": Record(optional={"wandb": Record(optional={"project": (str, None)})})})


def suite_of(results_dir: Path) -> tuple[str, str]:
    """(suite name = W&B group, W&B project) from the suite's results folder."""
    meta_path = results_dir / "suite.json"
    if not os.path.lexists(meta_path):
        raise ConfigError(f"no suite.json in '{results_dir}'; give the folder a suite wrote "
                          f"(results/<suite name>), e.g. results/cifar10-quick")
    suite = read_suite(meta_path, required=("suite",))["suite"]
    project = DEFAULT_PROJECT
    for path in sorted(results_dir.glob("runs/*/summary.json"))[:1]:
        # Only the W&B project is read here: checked as far as that goes (bench.records).
        s = read_json_record(path, "summary", FIX_RUN, PROJECT)
        project = s.get("config", {}).get("wandb", {}).get("project") or project
    return suite, project


def build_report(suite: str, entity: str, project: str):
    """The report object (unsaved)."""
    import wandb_workspaces.reports.v2 as wr

    def runset(name: str, where: str = "") -> "wr.Runset":
        return wr.Runset(entity=entity, project=project, name=name, filters=f"Group = '{suite}'" + where,
                         groupby=GROUPING)

    size = wr.PanelGrid(runsets=[runset("methods x targets")], panels=[
        wr.ScatterPlot(title="top-1 accuracy vs non-zero parameters", x="params_nonzero", y="test_acc", log_x=True),
        wr.ScatterPlot(title="top-1 accuracy vs MACs per image", x="macs", y="test_acc", log_x=True),
        wr.ScatterPlot(title="top-1 accuracy vs training wall-clock", x="train_wall_s", y="test_acc"),
    ])
    time = wr.PanelGrid(runsets=[runset("runs over training")], panels=[
        wr.LinePlot(title="test accuracy over training wall-clock", x="train_wall_s_cum", y=["test_acc"],
                    groupby="method", groupby_aggfunc="mean", groupby_rangefunc="stderr"),
        wr.LinePlot(title="test accuracy per epoch", x="Step", y=["test_acc"],
                    groupby="method", groupby_aggfunc="mean", groupby_rangefunc="stderr"),
    ])
    compute = wr.PanelGrid(runsets=[
        runset("scratch curve", f" and Config('method_name') = '{CURVE_METHOD}'"),
        runset("other rows", f" and Config('method_name') != '{CURVE_METHOD}'"),
    ], panels=[
        wr.ScatterPlot(title="top-1 accuracy vs training MACs (executed): rows against the scratch curve",
                       x="train_macs", y="test_acc", log_x=True),
    ])
    table = wr.PanelGrid(runsets=[runset("runs table")], panels=[wr.RunComparer(diff_only="split")])
    return wr.Report(
        entity=entity, project=project, title=f"{suite}: compression methods compared"[:128],
        description=f"Runs of the suite '{suite}' (W&B group), grouped by method and target; seeds averaged.",
        blocks=[
            wr.H1(text="Accuracy against size and cost"), size,
            wr.H1(text="Time to accuracy"), time,
            wr.H1(text="Accuracy against training compute"), compute,
            wr.H1(text="Runs"), table,
            wr.P(text="Built by `python -m bench wandb-report`; the local report (tables with confidence "
                      "intervals) is results/<suite>/README.md."),
        ])


def local_report(results_dir: Path) -> str:
    """Where the suite's local report is, or the command that writes it."""
    readme = results_dir / "README.md"
    return (f"the local report is {readme}" if readme.is_file()
            else f"`python -m bench report {results_dir}` writes the local report")


def save_report(results_dir: str, entity: str, project: Optional[str] = None) -> str:
    """Save the suite's W&B report and return its URL. Without a reachable W&B server, or
    when W&B refuses the save, a ConfigError says so in one line and where the local
    report is (the server is probed first, within the W&B logger's preflight timeout)."""
    from bench.wandb_log import server_unreachable
    folder = Path(results_dir)
    suite, found_project = suite_of(folder)
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    why = server_unreachable(base_url)
    if why is not None:
        raise ConfigError(f"the W&B server cannot be reached ({why}); no W&B report was saved, "
                          f"{local_report(folder)}")
    report = build_report(suite, entity, project or found_project)
    try:
        report.save()
    except Exception as e:  # noqa: BLE001 - W&B's errors (auth, permissions, server) as one line
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"W&B did not save the report ({type(e).__name__}: {detail}); check the W&B key "
                          f"(`wandb login`) and --entity {entity}; {local_report(folder)}") from None
    return report.url
