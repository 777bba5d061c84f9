"""Multi-layer perceptron for tabular data."""

from __future__ import annotations

import math

from torch import nn

from models import MODELS
from utils.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Fully connected network (ReLU, or tanh with ``model.activation``) with one output logit.

    RUNNER's released model has two hidden layers of 200 units (``configs/runner_*.yaml``); the
    other Adult configs use one; ``model.hidden`` sets any depth; fair-dp trains 256-256 with tanh.
    ReLU is not in place, so Opacus' hooks see intact activations.
    """

    def __init__(self, in_features: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1)).squeeze(-1)


@MODELS.register("mlp")
def build_mlp(config: ModelConfig, input_shape: tuple[int, ...]) -> MLP:
    return MLP(math.prod(input_shape), config.hidden, config.activation)


build_mlp.size_key = "model.hidden"  # named by build_model's size check
