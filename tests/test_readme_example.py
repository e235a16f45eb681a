"""The README's "Add a method" example and docs/extending.md's model, dataset and metric
examples are complete: load each as a file in a package like methods/ or bench/datasets/, register
it, and train with it."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from bench.config import ConfigError, DataConfig
from bench.configure import load_config
from bench.data import load_data
from bench.datasets import REGISTRY as DATASETS, dataset_for
from bench.train import train
from methods import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"
EXTENDING = README.parent / "docs" / "extending.md"


def readme_example(heading: str = "## Add a method") -> str:
    """The python block of the section `heading` of README.md or, for the other plugins,
    docs/extending.md."""
    text = next(t for t in (README.read_text(), EXTENDING.read_text()) if heading in t)
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"the '{heading[3:]}' section has no python block"
    return match.group(1)


def load_example(heading: str, path: Path, registry: dict, name: str) -> None:
    """Write the README's example to `path` and import it (once per process), which registers `name`."""
    path.write_text(readme_example(heading))
    if name not in registry:
        spec = importlib.util.spec_from_file_location(f"readme_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    assert name in registry


def test_readme_method_example_registers_and_trains(tmp_path, tiny_overrides, monkeypatch):
    from methods import base
    monkeypatch.setattr(base, "REGISTRY", dict(REGISTRY))              # the registration ends with the test
    load_example("## Add a method", tmp_path / "freeze_early.py", base.REGISTRY, "freeze_early")
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2", "method.name=freeze_early",
                                                              "method.n_layers=3"])
    summary = train(cfg, log=lambda s: None)
    frozen = summary["method_summary"]["frozen_params"]
    assert frozen > 0
    assert summary["params_trainable"] == summary["params_total"] - frozen
    assert summary["transforms"] and summary["transforms"][0]["epoch"] == 1


def test_readme_model_example_registers_trains_and_prunes(tmp_path, tiny_overrides, monkeypatch):
    from bench.models import base
    monkeypatch.setattr(base, "MODELS", dict(base.MODELS))               # the registration ends with the test
    load_example("## Add a model\n", tmp_path / "plain_cnn.py", base.MODELS, "plain_cnn")
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [
        "model.name=plain_cnn", "model.width=0.5", "method.name=l1_filter", "method.target_params=0.5"])
    summary = train(cfg, log=lambda s: None)
    assert summary["status"] == "finished" and summary["transforms"]
    dense = base.count_params(base.build_model(cfg.model))
    assert abs(summary["params_total"] / dense - 0.5) <= 0.02 * 0.5 + 1e-9


def test_readme_dataset_example_registers_loads_and_trains(tmp_path, tiny_overrides):
    load_example("## Add a dataset", tmp_path / "stripes.py", DATASETS, "stripes")
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["data.name=stripes", "data.stripes_noise=0.3",
                                                              "data.train_subset=256", "train.epochs=1"])
    assert cfg.model.num_classes == 8 and cfg.data.stripes_noise == 0.3     # the class count from the dataset
    assert dataset_for(DataConfig(name="stripes")).cfg.stripes_noise == 0.5  # a bare DataConfig: own options' defaults
    data = load_data(cfg.data, torch.device("cpu"), cfg.model.num_classes)
    assert data.train_x.shape == (256, 3, 32, 32) and data.test_x.shape == (512, 3, 32, 32)
    assert data.num_classes == 8 and set(data.train_y.tolist()) == set(range(8))
    summary = train(cfg, log=lambda s: None)
    assert summary["status"] == "finished"
    with pytest.raises(ConfigError, match="unknown config key 'data.stripes_noise'"):
        load_config("configs/smoke.yaml", tiny_overrides + ["data.stripes_noise=0.3"])    # synthetic's options


def test_readme_metric_example_is_measured_recorded_and_reported(tmp_path, tiny_overrides, monkeypatch):
    import json

    import pandas as pd

    from bench.metrics import METRICS
    from bench.report import write_report
    monkeypatch.setattr("bench.metrics.base.METRICS", dict(METRICS))      # the registration ends with the test
    from bench.metrics import base
    load_example("## Add a metric", tmp_path / "weight_norm.py", base.METRICS, "weight_norm")
    results = tmp_path / "suite"
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2", f"output_dir={results / 'runs'}"])
    summary = train(cfg, log=lambda s: None)
    assert summary["weight_norm"] > 0                                                # summary.json
    run = next((results / "runs").iterdir())
    history = pd.read_csv(run / "history.csv")
    assert history["weight_norm"].notna().all() and len(history) == 2              # one value per epoch
    assert json.loads((run / "summary.json").read_text())["weight_norm"] == summary["weight_norm"]
    write_report(results)
    assert "weight_norm" in pd.read_csv(results / "runs.csv").columns
    table = (results / "README.md").read_text()
    assert "| weight norm |" in table and f"{summary['weight_norm']:.1f} (1.00x)" in table   # dense is its own control
