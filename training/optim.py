"""Optimizers by name (``training.optimizer``).

A builder is ``fn(params, config: TrainingConfig) -> torch.optim.Optimizer``; the registered names
are the valid values of ``training.optimizer`` (the config asks :data:`OPTIMIZERS`; utils.config).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from utils.config import TrainingConfig
from utils.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "training.optimizer")


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def build_optimizer(config: TrainingConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(config.optimizer)(params, config)
