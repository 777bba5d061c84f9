"""The one shape every data set is handed to training in.

Each source (``dataset/tabular.py``, ``dataset/celeba.py``, synthetic test data) builds a
:class:`DataBundle`; the trainers, the evaluation and the metrics never look at where it came from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Applied on the device to every batch: (uint8 or float batch, training?) -> float batch.
# Image data sets keep uint8 pixels in memory and normalize / augment here, per batch, on the GPU.
BatchTransform = Callable[[torch.Tensor, bool], torch.Tensor]

# Share of a GPU's free memory the training or test inputs may take there. The rest is for the
# model, its optimizer state and activations and, under DP-SGD, the per-example gradients (a batch's
# worth of copies of the parameters). The paper's CelebA set at 128 px (1.5 GB) takes a few percent
# of a data-centre GPU; CelebA's whole official training split at 128 px (8 GB) may not fit a small one.
DEVICE_DATA_SHARE = 0.5


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
        weights_train: per-example loss weights of the training set (a repair method's
            pre-processing sets them, e.g. reweighing), or None for weight 1 everywhere.
        x_val, y_val, minority_val: the validation set (``data.val_fraction``), held out of the
            training pool before resampling and never resampled; like the test set it is treated
            as public (model selection, repair methods). Empty arrays (0 rows, shaped and typed
            like the training arrays) when there is none; None is read as empty.
        preprocessing: what was applied to the features and where its parameters come from,
            the content of the run's preprocessing.json (:func:`dataset.preprocessing.document`).
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
    weights_train: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    minority_val: np.ndarray | None = None
    preprocessing: dict[str, Any] | None = None

    def __post_init__(self):
        # No validation split: empty arrays with the training arrays' trailing shape and dtypes,
        # so code that reads them needs no special case (frozen, hence object.__setattr__).
        empty = {"x": np.zeros((0, *np.shape(self.x_train)[1:]), dtype=np.asarray(self.x_train[:0]).dtype),
                 "y": np.zeros(0, dtype=np.int64), "minority": np.zeros(0, dtype=bool)}
        for part, value in empty.items():
            if getattr(self, f"{part}_val") is None:
                object.__setattr__(self, f"{part}_val", value)
        for split in ("train", "val", "test"):
            n = len(getattr(self, f"x_{split}"))
            for part in ("y", "minority"):
                if len(getattr(self, f"{part}_{split}")) != n:
                    raise ValueError(f"{part}_{split} has {len(getattr(self, f'{part}_{split}'))} rows, x_{split} {n}")

    @property
    def train_count_by_group(self) -> dict[str, int]:
        minority = int(np.count_nonzero(self.minority_train))
        return {"minority": minority, "majority": len(self.minority_train) - minority}

    @property
    def has_validation(self) -> bool:
        """Whether the bundle holds a validation set (at least one example)."""
        return len(self.y_val) > 0


def place_inputs(array: np.ndarray, device: torch.device | str, *, what: str,
                 share: float | None = None) -> torch.Tensor:
    """``array`` as a tensor on ``device`` when it fits there, else left in host memory.

    On a GPU the inputs move there once when they take at most ``share`` (default
    :data:`DEVICE_DATA_SHARE`) of its free memory, and every batch is then a gather on the GPU. A
    larger array stays where it is (a memory-mapped image cache stays mapped, costing no copy) and
    each batch is gathered on the host and copied over by :func:`gather_rows`: slower, but a run
    that would otherwise stop with "CUDA out of memory" trains, and a warning says why it is slower.
    On the CPU nothing moves.
    """
    tensor = torch.as_tensor(np.asarray(array))
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    share = DEVICE_DATA_SHARE if share is None else share
    if tensor.nbytes <= share * free:
        return tensor.to(device)
    warnings.warn(f"the {what} ({tensor.nbytes / 2**30:.2f} GiB) would take more than {share:.0%} "
                  f"of the {free / 2**30:.2f} GiB free on {device}; they stay in host "
                  f"memory and each batch is copied over, which is slower. Lower data.celeba.image_size or "
                  f"data.train_size to keep them on the GPU.", stacklevel=2)
    return tensor


def gather_rows(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of ``x``, on the device of ``indices`` (see :func:`place_inputs`)."""
    if x.device == indices.device:
        return x[indices]
    return x[indices.to(x.device)].to(indices.device, non_blocking=True)
