"""The run configuration resolved against the plugins.

bench/config.py holds the typed sections and the machinery (defaults, YAML,
overrides, coercion) and imports nothing above it; this module sits above it and
above the three registries: it picks the dataset's and the method's option classes
by `data.name` and `method.name`, checks `model.name`, and fills in
`model.num_classes` from the dataset, so that a run's config.yaml states the class
count the model was built with.

Validation runs cheapest first, so that a mistake costs a fraction of a second: the
harness's own sections and the dataset's options (no torch needed), and the method's
name (read from the `@register("...")` lines of methods/, and from the suites' labels,
which are not method names), before the method and model registries are imported,
which pulls in torch, timm and torch-pruning for the method's own options and the
model's name.
"""
from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

from bench.config import (ConfigError, DataConfig, RunConfig, build_dataclass, coerce, raw_from_sources, read_yaml)
from bench.datasets import get_dataset
from bench.registry import lookup

REPO = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO / "methods"
SUITES_DIR = REPO / "configs" / "suites"
# Keys of a suite's method entry that are not method options (bench/suite.py).
SUITE_ENTRY_KEYS = ("name", "run", "control", "targets")


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
    method_name = coerce(method_raw.get("name", "dense"), str, "method.name")
    check_method_name(method_name)
    from bench.models import check_model_name      # heavy (torch, timm): after the cheap checks
    from methods import get_method
    method_cls = get_method(method_name)
    cfg.method = build_dataclass(method_cls.Config, {**method_raw, "name": method_cls.name}, "method.")
    check_model_name(cfg.model.name)
    dataset = get_dataset(cfg.data.name)(cfg.data)
    cfg.model.num_classes = dataset.classes(cfg.model.num_classes)
    method_cls.resolve_run(cfg, tuple(dataset.image_shape))     # e.g. Scratch-B's epoch count
    return cfg


def check_output_dir(path: Union[str, Path], what: str, writable: bool = True) -> None:
    """ConfigError, before any work, where `path` cannot be the folder outputs go to: it,
    or the nearest part of it that exists, is a file (or, when `writable`, a folder this
    process may not write in). A folder that does not exist yet is fine: it is created."""
    p = Path(path)
    for part in (p, *p.parents):
        if not part.exists():
            continue
        if not part.is_dir():
            where = f"'{path}' is a file" if part == p else f"'{path}': '{part}' is a file"
            raise ConfigError(f"{what} {where}, not a folder; give a folder (it is created if missing)")
        if writable and not os.access(part, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} '{path}': this process may not write in '{part}'; give a folder it may write in")
        return


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


# --------------------------------------------------------------------------- names without imports
@lru_cache(maxsize=1)
def declared_method_names() -> tuple[str, ...]:
    """The method names registered by methods/*.py and methods/<package>/*.py, read from
    their `@register("name")` lines without importing them (tests/test_first_hour.py checks
    this equals the registry)."""
    names = []
    for path in sorted([*METHODS_DIR.glob("*.py"), *METHODS_DIR.glob("[!_]*/*.py")]):
        names += re.findall(r'^@register\(\s*["\'](\w+)["\']\s*\)', path.read_text(), re.MULTILINE)
    return tuple(sorted(names))


def check_method_name(name: str) -> None:
    """ConfigError for a name that no method registers, cheaply: a suite label (such as
    random_filter) gets the method and options that run it, another name the usual
    "did you mean" and the list of methods."""
    names = declared_method_names()
    if not names or name in names:
        return
    imported = sys.modules.get("methods.base")      # a method registered by code already imported
    if imported is not None and name in imported.REGISTRY:
        return
    label = suite_labels().get(name)
    if label is not None:
        raise ConfigError(f"'{name}' is a suite label, not a method: run it with {label.overrides()} "
                          f"(see `python -m bench methods {name}`)")
    lookup(dict.fromkeys(names), name, "method")


class SuiteLabel:
    """A method row of the suites that is not a method of its own: a registered method
    with options (and perhaps other run settings), e.g. random_filter = l1_filter with
    importance=random. Its definition is what most suites defining the label agree on."""

    def __init__(self, label: str, method: str, options: dict[str, Any], suites: list[str]):
        self.label, self.method, self.options, self.suites = label, method, options, suites

    def overrides(self) -> str:
        """The command-line overrides that run it, e.g. `method.name=l1_filter method.importance=random`."""
        words = [f"method.name={self.method}"] + [f"{k}={_yaml_word(v)}" for k, v in self.options.items()]
        return " ".join(w if re.fullmatch(r"[\w.=:/,+-]+", w) else f"'{w}'" for w in words)

    def command(self, base: str = "configs/smoke.yaml") -> str:
        return f"python -m bench run {base} {self.overrides()}"


def _yaml_word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_yaml_word(v) for v in value) + "]"
    return str(value)


def _flat(d: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@lru_cache(maxsize=1)
def suite_labels() -> dict[str, SuiteLabel]:
    """Suite method labels under configs/suites/ that are not method names, each with the
    options that most suites defining it give it (targets, controls and per-suite sizing
    such as transform_epoch, where the suites differ, are left out)."""
    methods = set(declared_method_names())
    found: dict[str, list[tuple[str, dict[str, Any], str]]] = {}
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        try:
            entries = read_yaml(path).get("methods") or {}
        except ConfigError:
            continue
        for label, entry in entries.items():
            entry = entry or {}
            if label in methods or not isinstance(entry, dict) or "name" not in entry:
                continue
            options = {f"method.{k}": v for k, v in entry.items() if k not in SUITE_ENTRY_KEYS}
            options.update(_flat(entry.get("run") or {}, ""))
            found.setdefault(label, []).append((str(entry["name"]), options, path.stem))
    labels = {}
    for label, defs in found.items():
        method = defs[0][0]
        if any(d[0] != method for d in defs):
            continue
        common = {}
        for d in defs:
            for k, v in d[1].items():
                if k not in common and 2 * sum(k in e[1] and e[1][k] == v for e in defs) > len(defs):
                    common[k] = v
        labels[label] = SuiteLabel(label, method, common, [d[2] for d in defs])
    return labels
