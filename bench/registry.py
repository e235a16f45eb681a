"""The registries' operations, shared by methods, models, datasets and metrics: import a
plugin package's modules, add a plugin under a name, and look a name up with an error that
lists the registered ones."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable

from bench.config import ConfigError, _suggest


def import_plugins(package: str, path: Iterable[str]) -> None:
    """Import every module of plugin package `package` (its `__path__`), so that a plugin is
    one new file that registers itself; modules named `_*` are helpers, not imported here."""
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def add(registry: dict[str, Any], name: str, cls: type, config_base: type, kind: str) -> type:
    """Register plugin class `cls` under `name` (it becomes `cls.name`): a name is taken
    once, and the class's `Config` must subclass `config_base`."""
    if name in registry and registry[name] is not cls:
        raise ValueError(f"{kind} '{name}' is registered twice ({registry[name].__module__} and {cls.__module__})")
    if not issubclass(cls.Config, config_base):
        raise TypeError(f"{cls.__name__}.Config must subclass {config_base.__module__}.{config_base.__qualname__}")
    cls.name = name
    registry[name] = cls
    return cls


def lookup(registry: dict[str, Any], name: str, kind: str) -> Any:
    """`registry[name]`, or a ConfigError naming the registered names and the command
    that lists them (`python -m bench {kind}s`)."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} '{name}'{_suggest(str(name), registry)}; registered: "
                          f"{', '.join(sorted(registry))} (see `python -m bench {kind}s`)")
    return registry[name]
