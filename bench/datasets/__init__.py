"""Datasets: the interface and registry (`base.py`) and one module per dataset.

Every module in this package is imported here, so a new dataset is one new file
with an `@register_dataset("name")` class: nothing else to edit.
"""
import importlib
import pkgutil

from bench.datasets.base import REGISTRY, Dataset, data_fingerprint, dataset_for, get_dataset, register_dataset

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "Dataset", "data_fingerprint", "dataset_for", "get_dataset", "register_dataset"]
