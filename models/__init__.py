"""Models, built by name (``model.name``) from one registry.

Every model maps a float batch to one logit per example, shape (batch,), and is DP-compatible as
built: no BatchNorm (it mixes examples, so per-example gradients would not be per-example), no
in-place operations (Opacus' backward hooks need the activations intact).
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.config import ModelConfig
from utils.errors import ConfigError, file_problem
from utils.registry import Registry

MODELS: Registry = Registry("model", "model.name")

# Importing the modules registers their models.
for _module in ("mlp", "cnn", "resnet"):
    importlib.import_module(f"models.{_module}")


# The largest model build_model makes: 2·10^9 parameters are 8 GB of float32 weights, and training
# needs several times that (gradients, Adam's two moments; DP-SGD adds a per-example gradient for
# every example of a batch). Far above the models of this study (ResNet-18 at width 64: 11.2 M), so
# it only refuses sizes that are typos (`hidden: [100000000]`), which would otherwise fail deep in an
# allocation or exhaust the machine's memory.
MAX_MODEL_PARAMETERS = 2_000_000_000
# Message parts the tests import.
MODEL_TOO_LARGE = f"more than the limit of {MAX_MODEL_PARAMETERS:,}"
WEIGHTS_NOT_A_STATE_DICT = "is not a state dict (a mapping of parameter names to tensors)"
WEIGHTS_REFUSED = "torch.load(weights_only=True) refused it"
WEIGHTS_UNREADABLE = "torch.load cannot read it"
WEIGHTS_NOT_FINITE = "holds NaN or infinite values"
_INT64_MAX = 2**63 - 1


def parameter_count(config: ModelConfig, input_shape: tuple[int, ...]) -> int | None:
    """The exact parameter count of ``config``'s model, or None when a tensor would hold more than
    2^63 elements. The model is built on the ``meta`` device, where tensors have shapes and no
    storage, so this allocates nothing and needs no per-model formula."""
    with torch.device("meta"):
        try:
            model = MODELS.get(config.name)(config, input_shape)
        except (RuntimeError, TypeError, OverflowError) as error:
            # torch: "Storage size calculation overflowed", "Overflow when unpacking long long".
            if "overflow" in str(error).lower():
                return None
            raise
    return sum(p.numel() for p in model.parameters())


def build_model(config: ModelConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """Build ``config.name`` for inputs of ``input_shape`` and load ``config.weights`` if given.

    A model of more than :data:`MAX_MODEL_PARAMETERS` parameters is refused before anything is
    allocated (:func:`parameter_count`). A builder may name the config key that sets its size in a
    ``size_key`` attribute, for the message.
    """
    builder = MODELS.get(config.name)
    count = parameter_count(config, input_shape)
    if count is None or count > MAX_MODEL_PARAMETERS:
        size_key = getattr(builder, "size_key", "model.hidden or model.width")
        size = {"model.hidden": config.hidden, "model.width": config.width}.get(size_key)
        spelled = (f"{count:,} parameters ({count * 4 / 1e9:,.1f} GB of float32 weights alone)"
                   if count is not None else f"a layer of more than {_INT64_MAX:,} parameters")
        raise ConfigError(
            f"{size_key}: got {size if size is not None else 'sizes'} for model {config.name!r} on "
            f"inputs of shape {tuple(input_shape)}, which gives {spelled}, {MODEL_TOO_LARGE}. "
            f"Use smaller sizes (the study's models have at most about 11 M parameters)."
        )
    model = builder(config, input_shape)
    if config.weights:
        load_weights(model, config.weights)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict; refuse a file that is not one, or whose layers do not match.

    ``torch.load(weights_only=True)`` unpickles tensors and plain containers only, so a pickle that
    would run code is refused, never executed. Its refusal is reported in one line of our own:
    torch's message advises retrying with ``weights_only=False``, i.e. running the pickle.
    """
    file = Path(path)
    if (problem := file_problem(file)) is not None:
        raise ConfigError(f"model.weights: file {path!r} {problem}. Give a local state-dict "
                          f"file (weights are never downloaded) or null.")
    fix = "Give a file saved with torch.save(model.state_dict(), path) from the same model.name."
    try:
        with warnings.catch_warnings():
            # torch's notice about pickle protocols newer than its own; the load goes on.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"model.weights: {path!r} {WEIGHTS_NOT_A_STATE_DICT}: {WEIGHTS_REFUSED} (the file is not "
            f"a torch.save file, or it holds Python objects besides tensors, which are never "
            f"unpickled here since unpickling them can run code). {fix}") from None
    except Exception as error:  # torch raises several types for a file that is not a state dict
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        if "weights_only" in reason:
            reason = ""  # never relay advice to switch the safe loading off
        reason = f"{type(error).__name__}{': ' + reason if reason else ''}"
        raise ConfigError(f"model.weights: {path!r} {WEIGHTS_NOT_A_STATE_DICT}: "
                          f"{WEIGHTS_UNREADABLE} ({reason}). {fix}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of this project
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        found = (f"an object of type {type(state).__name__}" if not isinstance(state, dict) else
                 "a dict whose keys are not all names or whose values are not all tensors")
        raise ConfigError(f"model.weights: {path!r} {WEIGHTS_NOT_A_STATE_DICT}; it holds {found}. "
                          f"{fix}")
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
    # A model cannot start from NaN or infinity: the first scores would be non-finite, and the run
    # would stop as "diverged" and blame training.lr for what is in the file.
    bad = sorted(key for key, value in state.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all()))
    if bad:
        raise ConfigError(f"model.weights: {path!r} {WEIGHTS_NOT_FINITE} (in {', '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''}); a model cannot start from them. "
                          f"Give weights saved from a model that trained without diverging.")
    model.load_state_dict(state)
