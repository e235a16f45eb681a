"""The run configuration resolved against the plugins.

bench/config.py holds the typed sections and the machinery (defaults, YAML,
overrides, coercion) and imports nothing above it; this module sits above it and
above the three registries: it picks the dataset's and the method's option classes
by `data.name` and `method.name`, checks `model.name`, and fills in
`model.num_classes` from the dataset, so that a run's config.yaml states the class
count the model was built with.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from bench.config import ConfigError, DataConfig, RunConfig, build_dataclass, coerce, raw_from_sources
from bench.datasets import get_dataset
from bench.models import check_model_name
from methods import get_method


def build_config(raw: dict) -> RunConfig:
    """Validate a raw nested mapping into a RunConfig (dataset and method options included)."""
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    if not isinstance(method_raw, dict):
        raise ConfigError(f"method: expected a mapping with a 'name', got {method_raw!r}")
    data_raw = raw.pop("data", None) or {}
    cfg = build_dataclass(RunConfig, raw, "")
    cfg.data = build_data_config(data_raw)
    method_cls = get_method(method_raw.get("name", "dense"))
    cfg.method = build_dataclass(method_cls.Config, {**method_raw, "name": method_cls.name}, "method.")
    check_model_name(cfg.model.name)
    dataset = get_dataset(cfg.data.name)(cfg.data)
    cfg.model.num_classes = dataset.classes(cfg.model.num_classes)
    method_cls.resolve_run(cfg, tuple(dataset.image_shape))     # e.g. Scratch-B's epoch count
    return cfg


def build_data_config(data_raw: Any) -> DataConfig:
    """The `data:` section as the `Config` of the dataset it names."""
    if not isinstance(data_raw, dict):
        return build_dataclass(DataConfig, data_raw, "data.")     # raises: not a mapping
    name = coerce(data_raw.get("name", DataConfig().name), str, "data.name")
    dataset_cls = get_dataset(name)
    return build_dataclass(dataset_cls.Config, {**data_raw, "name": name}, "data.")


def load_config(paths: Union[str, list[str], None] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """The run config of one or more YAML files (merged left to right) and dotted overrides."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    return build_config(raw_from_sources(paths, overrides or []))
