"""``roc`` (reject option classification; Kamiran, Karim & Zhang, "Decision Theory for
Discrimination-Aware Classification", ICDM 2012): in the critical region max(p, 1 − p) ≤ θ, the
unprivileged group gets the favourable label and the privileged group the unfavourable one;
elsewhere the plain decision stands.

Sound under DP-SGD and DP-FedAvg: it post-processes the private model's scores with the group
flags of the (public, held-out) evaluation sets and a fixed θ, and reads no training data, so it
costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.repair import METHODS
from training.repair.base import RepairMethod
from utils.config import check, one_of


@dataclass(frozen=True, kw_only=True)
class RocSettings:
    """``fairness.roc``.

    Attributes:
        theta: θ in [0.5, 1): the critical region is max(p, 1 − p) ≤ θ (RUNNER's README: 0.6).
        favourable_label: the label that benefits the person (1 for Adult's income > 50K; 0 for
            COMPAS' recidivism or German credit's bad risk).
        unprivileged: which group ROC favours, "minority" or "majority".
    """

    theta: float = 0.6
    favourable_label: int = 1
    unprivileged: str = "minority"

    def validate(self) -> None:
        check(0.5 <= self.theta < 1, "fairness.roc.theta", self.theta, "a number in [0.5, 1)")
        check(self.favourable_label in (0, 1), "fairness.roc.favourable_label",
               self.favourable_label, "0 or 1")
        one_of("fairness.roc.unprivileged", self.unprivileged, ("minority", "majority"))


def reject_option(scores: np.ndarray, unprivileged: np.ndarray, decisions: np.ndarray, *,
                  theta: float, favourable: int) -> np.ndarray:
    """``decisions`` with the critical region max(p, 1 − p) ≤ θ relabelled: favourable for the
    unprivileged, unfavourable for the privileged."""
    scores = np.asarray(scores, dtype=np.float64)
    critical = np.maximum(scores, 1 - scores) <= theta
    out = np.asarray(decisions).astype(np.int64).copy()
    out[critical & unprivileged] = favourable
    out[critical & ~unprivileged] = 1 - favourable
    return out


@METHODS.register("roc")
class RejectOptionClassification(RepairMethod):
    """Post-processing: decisions near the boundary given to the unprivileged group."""

    Settings = RocSettings

    def postprocess(self, scores, minority, threshold):
        unprivileged = np.asarray(minority, dtype=bool)
        if self.settings.unprivileged == "majority":
            unprivileged = ~unprivileged
        return reject_option(scores, unprivileged, super().postprocess(scores, minority, threshold),
                             theta=self.settings.theta, favourable=self.settings.favourable_label)
