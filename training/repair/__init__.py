"""Fairness repair methods, built by ``fairness.method`` from one registry.

Each method is a :class:`training.repair.base.RepairMethod` subclass registered here by its
module, with its own settings dataclass (the config section ``fairness.<name>``). Adding a method
is one registered class and its test; the registry-parametrized tests pick it up.
"""

from __future__ import annotations

import importlib

from utils.registry import Registry

METHODS: Registry = Registry("fairness method", "fairness.method")

# Importing the modules registers their methods.
for _module in ("vanilla", "reweighing", "oversample", "gapreg", "roc", "runner", "adversarial", "fairsmote",
                "fairneuron"):
    importlib.import_module(f"training.repair.{_module}")


def build_method(config):
    """The :class:`RepairMethod` of ``config.fairness``, with its own random stream."""
    from utils.seeding import numpy_generator

    fairness = config.fairness
    return fairness.method_class()(fairness.resolved_settings(), target=fairness.mode,
                                   rng=numpy_generator(config.seed, "repair"))
