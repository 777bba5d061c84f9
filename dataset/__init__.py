"""Data sets, built by name (``data.name``) from one registry.

Each source registers a builder ``fn(config: ExperimentConfig) -> DataBundle`` that reads its files,
resamples the training set to ``data.minority_share`` with :mod:`dataset.imbalance`, and returns the
arrays in the one shape training uses (:class:`dataset.base.DataBundle`).
"""

from __future__ import annotations

import importlib

from dataset.base import DataBundle
from utils.errors import ConfigError
from utils.registry import Registry

DATASETS: Registry = Registry("dataset", "data.name")

# Importing the modules registers their data sets.
for _module in ("adult", "compas", "german", "lsac", "celeba", "synthetic"):
    importlib.import_module(f"dataset.{_module}")


# A builder may declare the keys of DataConfig that only some data sets read, as ``builder.data_keys``
# (the tabular sources: preprocessing). Such a key set away from its default for a data set that
# does not read it is an error: a silently ignored key would run another experiment than the one
# written down. A data set's own settings live in its sub-section instead (``data.celeba``: the
# builder's ``Settings`` class, typed by training.validation, which refuses another data set's
# sub-section set away from its defaults with the same message).
UNUSED_KEY = ("data.{key}: got {value!r}, but data.name {name!r} does not use it (only {users} "
              "do). Remove the key, or set it back to {default!r}.")


def check_data_keys(config) -> None:
    """Refuse a data-set-specific key that ``config.data.name``'s builder does not read."""
    from utils.config import DataConfig

    builder = DATASETS.get(config.data.name)
    defaults = DataConfig()
    users: dict[str, list[str]] = {}
    for name in DATASETS:
        for key in getattr(DATASETS.get(name), "data_keys", ()):
            users.setdefault(key, []).append(name)
    for key, names in users.items():
        value = getattr(config.data, key)
        if key not in getattr(builder, "data_keys", ()) and value != getattr(defaults, key):
            raise ConfigError(UNUSED_KEY.format(key=key, value=value, name=config.data.name,
                                                users=", ".join(names),
                                                default=getattr(defaults, key)))


def build_dataset(config) -> DataBundle:
    """The :class:`DataBundle` of ``config.data.name`` (after :func:`check_data_keys`)."""
    check_data_keys(config)
    return DATASETS.get(config.data.name)(config)


__all__ = ["DATASETS", "DataBundle", "build_dataset"]
