"""The one shape every data set is handed to training in.

Each source (``dataset/tabular.py``, ``dataset/celeba.py``, synthetic test data) builds a
:class:`DataBundle`; the trainers, the evaluation and the metrics never look at where it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Applied on the device to every batch: (uint8 or float batch, training?) -> float batch.
# Image data sets keep uint8 pixels in memory and normalize / augment here, per batch, on the GPU.
BatchTransform = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass(frozen=True)
class DataBundle:
    """Training and test arrays of one experiment, already resampled to the configured share.

    Attributes:
        x_train: training inputs, first axis the example (float32 features or uint8 NCHW images).
        y_train: binary targets of the training set (int64, 0/1).
        minority_train: True where the training example belongs to the minority group.
        x_test, y_test, minority_test: the same for the test set, which is never resampled.
        input_shape: shape of one input after ``transform`` (features,) or (C, H, W).
        transform: per-batch transform applied on the device, or None for ready float inputs.
        info: facts about the data worth logging (dropped rows, pool sizes, feature names...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    minority_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    minority_test: np.ndarray
    input_shape: tuple[int, ...]
    transform: BatchTransform | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for split in ("train", "test"):
            n = len(getattr(self, f"x_{split}"))
            for part in ("y", "minority"):
                if len(getattr(self, f"{part}_{split}")) != n:
                    raise ValueError(f"{part}_{split} has {len(getattr(self, f'{part}_{split}'))} rows, x_{split} {n}")

    @property
    def train_count_by_group(self) -> dict[str, int]:
        minority = int(np.count_nonzero(self.minority_train))
        return {"minority": minority, "majority": len(self.minority_train) - minority}
