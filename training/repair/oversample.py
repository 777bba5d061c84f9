"""``oversample``: duplicate randomly chosen examples of every (group, label) cell until each cell
is as large as the largest one.

Refuses DP-SGD: duplication multiplies a person's records, so one person's contribution to a step
is no longer bounded by one clipped gradient, and the accountant's sampling rate is no longer each
record's. A sound form exists and is not built: no copies, but non-uniform Poisson sampling with a
rate per cell (from the noisy counts), accounted at the largest rate, which for a small cell is
close to 1 and so spends ε fast. Refuses DP-FedAvg: the copies are made before the partition and
land on other clients, so one person's records leave through several clipped updates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.repair import METHODS
from training.repair.base import RepairMethod

DUPLICATES_RECORDS = ("duplicating examples multiplies a person's records, so one person's "
                      "contribution is no longer one clipped gradient (or one client's update); "
                      "the sound form, per-cell Poisson rates accounted at the largest, is not "
                      "built.")


def oversample_indices(y: np.ndarray, minority: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every index once, plus random duplicates (with replacement) in each smaller cell, so that
    every non-empty (group, label) cell holds as many examples as the largest."""
    y, minority = np.asarray(y).astype(int), np.asarray(minority).astype(bool)
    cells = [np.flatnonzero((minority == group) & (y == label))
             for group in (True, False) for label in (0, 1)]
    largest = max(len(cell) for cell in cells)
    extra = [rng.choice(cell, size=largest - len(cell), replace=True)
             for cell in cells if 0 < len(cell) < largest]
    return np.sort(np.concatenate([np.arange(len(y)), *extra])).astype(np.int64)


@METHODS.register("oversample")
class Oversample(RepairMethod):
    """Pre-processing: a training set with equal (group, label) cells, by duplication."""

    refuses = {"dpsgd": DUPLICATES_RECORDS, "dpfedavg": DUPLICATES_RECORDS}

    def prepare(self, data):
        index = oversample_indices(data.y_train, data.minority_train, self.rng)
        weights = None if data.weights_train is None else data.weights_train[index]
        return dataclasses.replace(data, x_train=data.x_train[index], y_train=data.y_train[index],
                                   minority_train=data.minority_train[index],
                                   weights_train=weights)
