"""Methods: the interface (`base.py`), the registry, and one module per method.

Every module in this package is imported here, so a new method is one new file
with an `@register("name")` class: nothing else to edit.
"""
from bench.registry import import_plugins
from methods.base import REGISTRY, Context, Method, MethodConfig, get_method, register

import_plugins(__name__, __path__)

__all__ = ["REGISTRY", "Context", "Method", "MethodConfig", "get_method", "register"]
