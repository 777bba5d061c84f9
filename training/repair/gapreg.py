"""``gapreg`` (gap regularization, as in Chuang & Mroueh, "Fair Mixup", ICLR 2021, and RUNNER's
baseline): loss + λ · the gap of the soft outputs f = sigmoid(logit) within the batch:
dp: |mean f | minority − mean f | majority|; eo: Σ_y |mean f | minority, Y=y − mean f | majority, Y=y|.

Under DP-SGD (sound, the per-example form): the batch gap couples examples (a group mean over the
batch), so it is replaced by a sum of per-example terms (:func:`training.repair.base.per_example_gap`)
whose expectation under Poisson sampling is the training set's gap: |m⁻ − m⁺| = s·(m⁻ − m⁺) with
s the gap's sign, taken at every step from the current model on the public validation split
(``fairness.public_examples`` of it), and each group mean written as Σ_i f_i [i in the group] /
(p · qN) with p the group's share of the training set, from the four noisy counts
(:mod:`privacy.releases`, accounted in ε). Example i's term then reads only example i and these
public or released quantities; it is added to example i's loss before DP-SGD clips that example's
gradient, so the clipping bounds the example's whole contribution, regularizer included.
Under DP-FedAvg (sound, in the clients): each client adds the gap of its own local batch to its
own loss; everything it computes reads only its own data, and its whole update is clipped to S and
noised at the server, so the user-level guarantee holds as for Vanilla.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.repair import METHODS
from training.repair.base import (
    Batch,
    LossTerms,
    PublicGapForm,
    RepairMethod,
    group_gap,
    pair_signs,
    per_example_gap,
)
from utils.config import check


@dataclass(frozen=True, kw_only=True)
class GapRegSettings:
    """``fairness.gapreg``.

    Attributes:
        lam: λ, the weight of the gap term (RUNNER's README uses 1.0 for GapReg).
    """

    lam: float = 1.0

    def validate(self) -> None:
        check(self.lam >= 0, "fairness.gapreg.lam", self.lam, "a number >= 0")


@METHODS.register("gapreg")
class GapReg(PublicGapForm, RepairMethod):
    """In-processing: the output gap added to the loss."""

    Settings = GapRegSettings
    trains_in_clients = True

    def prepare(self, data):
        if self.uses_public_form:
            self._prepare_public_form(data)
        return data

    def before_step(self, model) -> None:
        """The sign of the output gap in each pair, from the model on the public examples."""
        public = self.public_split(next(model.parameters()).device)
        with torch.no_grad():
            scores = torch.sigmoid(model(public.inputs()).reshape(-1))
        self._signs = pair_signs(scores, public.minority, public.y, self.target)

    def loss(self, batch: Batch, model) -> LossTerms:
        scores = torch.sigmoid(batch.logits)
        if self.uses_public_form:
            repair = per_example_gap(scores, batch.minority, batch.targets, self.target,
                                     self._signs, self._inverse_shares)
            return LossTerms(batch.losses * batch.weights + self.settings.lam * repair)
        gap = group_gap(scores, batch.minority, batch.targets, self.target)
        return LossTerms(batch.losses * batch.weights, self.settings.lam * gap)
