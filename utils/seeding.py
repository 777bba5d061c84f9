"""One seed for everything a run draws: resampling, initialization, batch sampling and DP noise."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    Opacus draws its noise from torch's global generator (``secure_mode`` off) and its Poisson
    batches from the index loader's generator, which the trainer seeds from the same seed; so the
    DP randomness is fixed too: a run is reproducible for its seed on the CPU.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str) -> torch.device:
    """``device`` from the config: auto picks CUDA when present; asking for absent CUDA is an error."""
    from utils.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: got {name!r} but no CUDA device is available here. "
                              f"Use device: auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: got {name!r} but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist (cuda:0 ...).")
    return device
