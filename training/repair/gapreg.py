"""``gapreg`` (gap regularization, as in Chuang & Mroueh, "Fair Mixup", ICLR 2021, and RUNNER's
baseline): loss + λ · the gap of the soft outputs f = sigmoid(logit) within the batch:
dp: |mean f | minority − mean f | majority|; eo: Σ_y |mean f | minority, Y=y − mean f | majority, Y=y|.

Refuses DP: the batch gap couples examples (a group mean over the batch), so no per-example
clipping bounds one example's influence on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.repair import METHODS
from training.repair.base import Batch, LossTerms, RepairMethod, group_gap
from utils.config import _check

COUPLES_EXAMPLES = ("its regularizer is a gap between group means over the batch, which couples "
                    "examples, so per-example clipping does not bound one example's influence.")


@dataclass(frozen=True, kw_only=True)
class GapRegSettings:
    """``fairness.gapreg``.

    Attributes:
        lam: λ, the weight of the gap term (RUNNER's README uses 1.0 for GapReg).
    """

    lam: float = 1.0

    def validate(self) -> None:
        _check(self.lam >= 0, "fairness.gapreg.lam", self.lam, "a number >= 0")


@METHODS.register("gapreg")
class GapReg(RepairMethod):
    """In-processing: the output gap added to the loss."""

    Settings = GapRegSettings
    refuses = {"dpsgd": COUPLES_EXAMPLES, "dpfedavg": COUPLES_EXAMPLES}

    def loss(self, batch: Batch, model) -> LossTerms:
        gap = group_gap(torch.sigmoid(batch.logits), batch.minority, batch.targets, self.target)
        return LossTerms(batch.losses * batch.weights, self.settings.lam * gap)
