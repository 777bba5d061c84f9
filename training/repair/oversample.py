"""``oversample``: duplicate randomly chosen examples of every (group, label) cell until each cell
is as large as the largest one.

Refuses DP: duplication multiplies a person's records, so one person's contribution to a step is
no longer bounded by one clipped gradient; the sound form (non-uniform Poisson sampling with
per-cell rates from noisy counts, accounted at the largest rate) is the repair-under-privacy
issue's to build.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.repair import METHODS
from training.repair.base import RepairMethod

DUPLICATES_RECORDS = ("duplicating examples multiplies a person's records, so one person's "
                      "contribution is no longer one clipped gradient (or one client's update).")


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
