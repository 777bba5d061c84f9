"""``reweighing`` (Kamiran & Calders, "Data preprocessing techniques for classification without
discrimination", KAIS 2012): each example's loss weighted by w(a, y) = P(A=a)·P(Y=y) / P(A=a, Y=y),
so that group and label are independent in the weighted training set.

Under DP it refuses for now: the weight multiplies the example's loss before its gradient is
clipped, so the per-example sensitivity is unchanged, but the four cell counts behind the weights
are statistics of the private training data and are not yet released through an accounted
mechanism (the repair-under-privacy issue adds that: noisy counts composed into ε).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.repair import METHODS
from training.repair.base import RepairMethod

UNACCOUNTED_COUNTS = ("its weights come from the training set's (group, label) counts, a statistic "
                      "of the private data that no accounted mechanism releases yet.")


def reweighing_weights(y: np.ndarray, minority: np.ndarray) -> np.ndarray:
    """w(a, y) = P(A=a)·P(Y=y) / P(A=a, Y=y) for every example (an empty cell gets no example)."""
    y, minority = np.asarray(y).astype(int), np.asarray(minority).astype(bool)
    n = len(y)
    weights = np.ones(n, dtype=np.float32)
    for group in (True, False):
        for label in (0, 1):
            cell = (minority == group) & (y == label)
            if cell.any():
                expected = (minority == group).mean() * (y == label).mean()
                weights[cell] = expected / (cell.sum() / n)
    return weights


@METHODS.register("reweighing")
class Reweighing(RepairMethod):
    """Pre-processing: the Kamiran-Calders weights on every training example."""

    refuses = {"dpsgd": UNACCOUNTED_COUNTS, "dpfedavg": UNACCOUNTED_COUNTS}

    def prepare(self, data):
        weights = reweighing_weights(data.y_train, data.minority_train)
        if data.weights_train is not None:
            weights = weights * data.weights_train
        return dataclasses.replace(data, weights_train=weights)
