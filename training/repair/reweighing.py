"""``reweighing`` (Kamiran & Calders, "Data preprocessing techniques for classification without
discrimination", KAIS 2012): each example's loss weighted by w(a, y) = P(A=a)·P(Y=y) / P(A=a, Y=y),
so that group and label are independent in the weighted training set.

Under DP-SGD (sound): the weight multiplies the example's loss before its gradient is clipped, so
DP-SGD's per-example clipping still bounds each example's whole contribution by C (a weight scales
the gradient, and the clipped gradient's norm is at most C whatever the weight). The weights are
computed from the four (group, label) counts released once through the Gaussian mechanism
(:mod:`privacy.releases`, sensitivity 1, σ = ``privacy.counts_noise_multiplier``), whose cost is
composed into the run's ε and logged as ``privacy/epsilon_parts/counts``; from the noisy counts on
it is post-processing. Under DP-FedAvg (sound, local reweighing): global counts would need a
user-level release (one user changes them by as many records as it holds), so each client weights
its examples by its own counts instead (:meth:`Reweighing.client_weights`); that reads only the
client's own data, and its whole update is clipped and noised at the server.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from privacy.releases import CELLS, cell_counts
from training.repair import METHODS
from training.repair.base import RepairMethod


def weights_from_counts(counts: np.ndarray, y: np.ndarray, minority: np.ndarray) -> np.ndarray:
    """w(a, y) = P(A=a)·P(Y=y) / P(A=a, Y=y) for every example, the probabilities from the
    :data:`privacy.releases.CELLS` counts (positive where a cell holds examples)."""
    counts = np.asarray(counts, dtype=np.float64)
    share = dict(zip(CELLS, counts / counts.sum()))
    group_share = {group: share[(group, 0)] + share[(group, 1)] for group in (True, False)}
    label_share = {label: share[(True, label)] + share[(False, label)] for label in (0, 1)}
    y, minority = np.asarray(y).astype(int), np.asarray(minority).astype(bool)
    weights = np.ones(len(y), dtype=np.float32)
    for group, label in CELLS:
        cell = (minority == group) & (y == label)
        if cell.any():
            weights[cell] = group_share[group] * label_share[label] / share[(group, label)]
    return weights


def reweighing_weights(y: np.ndarray, minority: np.ndarray) -> np.ndarray:
    """The Kamiran-Calders weights of the training set's exact counts."""
    return weights_from_counts(cell_counts(y, minority), y, minority)


@METHODS.register("reweighing")
class Reweighing(RepairMethod):
    """Pre-processing: the Kamiran-Calders weights on every training example."""

    def prepare(self, data):
        if self.privacy_mode == "dpfedavg":  # weighted per client, by the trainer
            return data
        if self.statistics is not None:  # DP-SGD: the counts through the accounted release
            # (a noisy count below 1 is taken as 1: every weight stays positive and finite)
            counts = np.maximum(self.statistics.noisy_cell_counts(data.y_train,
                                                                  data.minority_train), 1.0)
        else:
            counts = cell_counts(data.y_train, data.minority_train)
        weights = weights_from_counts(counts, data.y_train, data.minority_train)
        if data.weights_train is not None:
            weights = weights * data.weights_train
        return dataclasses.replace(data, weights_train=weights)

    def client_weights(self, y, minority):
        """DP-FedAvg: the Kamiran-Calders weights of the client's own counts."""
        return reweighing_weights(y, minority)
