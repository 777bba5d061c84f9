"""Data sets, built by name (``data.name``) from one registry.

Each source registers a builder ``fn(config: ExperimentConfig) -> DataBundle`` that reads its files,
resamples the training set to ``data.minority_share`` with :mod:`dataset.imbalance`, and returns the
arrays in the one shape training uses (:class:`dataset.base.DataBundle`).
"""

from __future__ import annotations

import importlib

from dataset.base import DataBundle
from utils.registry import Registry

DATASETS: Registry = Registry("dataset", "data.name")

# Importing the modules registers their data sets.
for _module in ("tabular", "tabular_sources", "celeba", "synthetic"):
    importlib.import_module(f"dataset.{_module}")


def build_dataset(config) -> DataBundle:
    """The :class:`DataBundle` of ``config.data.name``."""
    return DATASETS.get(config.data.name)(config)


__all__ = ["DATASETS", "DataBundle", "build_dataset"]
