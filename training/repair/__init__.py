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
    """The :class:`RepairMethod` of ``config.fairness``, with its own random stream and, under
    DP-SGD, the run's accounted releases (:class:`privacy.releases.PrivateStatistics`)."""
    from privacy.releases import PrivateStatistics
    from utils.seeding import RunStreams

    fairness, privacy, streams = config.fairness, config.privacy, RunStreams(config)
    statistics = (PrivateStatistics(counts_noise_multiplier=privacy.counts_noise_multiplier,
                                    seed=streams.root("dp_counts"), secure=privacy.secure_rng)
                  if privacy.mode == "dpsgd" else None)
    return fairness.method_class()(fairness.resolved_settings(), target=fairness.mode,
                                   rng=streams.numpy("repair"),
                                   name=fairness.method, privacy_mode=privacy.mode,
                                   statistics=statistics, public_examples=fairness.public_examples)
