"""The README's "Add a method" example is complete: load it as a file in a package
like methods/, register it, and train with it."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from bench.config import load_config
from bench.train import train
from methods import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Add a method", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's 'Add a method' section has no python block"
    return match.group(1)


def test_readme_method_example_registers_and_trains(tmp_path, tiny_overrides):
    path = tmp_path / "freeze_early.py"
    path.write_text(readme_example())
    if "freeze_early" not in REGISTRY:
        spec = importlib.util.spec_from_file_location("readme_freeze_early", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2", "method.name=freeze_early",
                                                              "method.n_layers=3"])
    summary = train(cfg, log=lambda s: None)
    frozen = summary["method_summary"]["frozen_params"]
    assert frozen > 0
    assert summary["params_trainable"] == summary["params_total"] - frozen
    assert summary["transforms"] and summary["transforms"][0]["epoch"] == 1
