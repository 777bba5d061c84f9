"""Trainers, built by ``privacy.mode`` from one registry.

A builder has the signature ``fn(config: ExperimentConfig, model, data: DataBundle, device, *,
method: RepairMethod | None) -> Trainer`` (see :mod:`training.base`). Everything else (data,
model, evaluation, logging) is the same code in every mode, so a private run and its non-private
twin differ only where privacy demands it.
"""

from __future__ import annotations

import importlib

from utils.registry import Registry

# Its names are the valid values of privacy.mode (the config asks this registry; utils.config).
TRAINERS: Registry = Registry("privacy mode", "privacy.mode")

# Importing the modules registers their trainers.
for _module in ("centralized", "federated"):
    importlib.import_module(f"training.{_module}")


def build_trainer(config, model, data, device, method=None):
    """The trainer of ``config.privacy.mode`` for ``model`` on ``data``, training with the repair
    ``method`` (:mod:`training.repair`; None is Vanilla training)."""
    return TRAINERS.get(config.privacy.mode)(config, model, data, device, method=method)
