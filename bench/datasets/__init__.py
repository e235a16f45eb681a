"""Datasets: the interface and registry (`base.py`) and one module per dataset.

Every module in this package is imported here, so a new dataset is one new file
with an `@register_dataset("name")` class: nothing else to edit.
"""
from bench.registry import import_plugins
from bench.datasets.base import REGISTRY, Dataset, data_fingerprint, dataset_for, get_dataset, register_dataset

import_plugins(__name__, __path__)

__all__ = ["REGISTRY", "Dataset", "data_fingerprint", "dataset_for", "get_dataset", "register_dataset"]
