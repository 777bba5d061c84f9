"""Models, built by name (``model.name``) from one registry.

Every model maps a float batch to one logit per example, shape (batch,), and is DP-compatible as
built: no BatchNorm (it mixes examples, so per-example gradients would not be per-example), no
in-place operations (Opacus' backward hooks need the activations intact).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from utils.config import ModelConfig
from utils.errors import ConfigError
from utils.registry import Registry

MODELS: Registry = Registry("model", "model.name")

# Importing the modules registers their models.
for _module in ("mlp", "cnn", "resnet"):
    importlib.import_module(f"models.{_module}")


def build_model(config: ModelConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """Build ``config.name`` for inputs of ``input_shape`` and load ``config.weights`` if given."""
    model = MODELS.get(config.name)(config, input_shape)
    if config.weights:
        load_weights(model, config.weights)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict; refuse a file whose layers do not match the model."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.weights: file {path!r} does not exist. Give a local state-dict "
                          f"file (weights are never downloaded) or null.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a state dict
        raise ConfigError(f"model.weights: {path!r} is not a loadable state dict ({error}).") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of this project
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        raise ConfigError(
            f"model.weights: {path!r} does not match model {type(model).__name__}: "
            f"missing [{few(missing)}], unexpected [{few(unexpected)}], "
            f"wrong shape [{few(mismatched)}]. Use weights saved from the same model.name and width."
        )
    model.load_state_dict(state)
