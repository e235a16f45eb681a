"""Methods: the interface (`base.py`), the registry, and one module per method.

Every module in this package is imported here, so a new method is one new file
with an `@register("name")` class: nothing else to edit.
"""
import importlib
import pkgutil

from methods.base import REGISTRY, Context, Method, MethodConfig, get_method, register

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Context", "Method", "MethodConfig", "get_method", "register"]
