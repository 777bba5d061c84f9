"""``adversarial`` (Zhang, Lemoine & Mitchell, "Mitigating Unwanted Biases with Adversarial
Learning", AIES 2018): an adversary learns to predict the group from the model's output (dp) or
from the output and the label (eo), and the model is trained to predict the label while making
the adversary fail: L = L_cls − λ · L_adv, with the two updated in alternation at every step
(first the adversary on the detached outputs, then the model against the adversary as it now is).

Under DP-SGD (sound, the public-adversary form): the adversary's updates read no private data:
at every step it takes its step on the current model's outputs for the public validation split
(``fairness.public_examples`` of it, with their labels and groups; DP-SGD's per-example hooks
off). The model's adversarial term is then each example's own adversary loss, a function of that
example and of the adversary's parameters, which are fixed during the model's step; it is added
to the example's loss before DP-SGD clips its gradient, so the clipping bounds the example's whole
contribution. Refuses DP-FedAvg: an adversary trained inside a client would carry that client's
data into the next clients' updates (one adversary for all), and one reset per client learns
nothing in a few local steps; a sound variant is not built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.repair import METHODS
from training.repair.base import Batch, LossTerms, PublicForm, RepairMethod
from utils.config import check

ADVERSARY_ACROSS_CLIENTS = ("one adversary trained inside the clients would carry each client's data "
                            "into the next clients' updates, outside their clipping.")


@dataclass(frozen=True, kw_only=True)
class AdversarialSettings:
    """``fairness.adversarial``.

    Attributes:
        lam: λ, the weight of the adversary's loss in the model's loss (RUNNER's README: 0.5).
        adversary_lr: the adversary's Adam learning rate (RUNNER's README: 1e-4).
        adversary_hidden: hidden layer sizes of the adversary ([] is a logistic regression).
    """

    lam: float = 0.5
    adversary_lr: float = 1e-4
    adversary_hidden: list[int] = field(default_factory=list)

    def validate(self) -> None:
        check(self.lam >= 0, "fairness.adversarial.lam", self.lam, "a number >= 0")
        check(self.adversary_lr > 0, "fairness.adversarial.adversary_lr", self.adversary_lr,
               "a positive number")
        check(all(h > 0 for h in self.adversary_hidden), "fairness.adversarial.adversary_hidden",
               self.adversary_hidden, "a list of positive layer sizes, e.g. [] or [16]")


def adversary_network(inputs: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(inputs, size), nn.ReLU()]
        inputs = size
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


@METHODS.register("adversarial")
class Adversarial(PublicForm, RepairMethod):
    """In-processing: the model trained against an adversary that predicts the group."""

    Settings = AdversarialSettings
    refuses = {"dpfedavg": ADVERSARY_ACROSS_CLIENTS}
    public_reads = "the adversary's updates"

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.adversary: nn.Module | None = None
        self._restored: dict | None = None  # a checkpoint's adversary, loaded when it is built

    def prepare(self, data):
        if self.uses_public_form:
            self._keep_public(data)
        return data

    def before_step(self, model: nn.Module) -> None:
        """The adversary's step on the model's outputs for the public examples (DP-SGD form)."""
        public = self.public_split(next(model.parameters()).device)
        with torch.no_grad():
            logits = model(public.inputs()).reshape(-1)
        self.adversary_step(Batch(logits=logits, targets=public.y, minority=public.minority,
                                  weights=torch.ones_like(public.y),
                                  losses=torch.zeros_like(public.y)))

    def _adversary_input(self, batch: Batch, probability: torch.Tensor) -> torch.Tensor:
        columns = [probability] if self.target == "dp" else [probability, batch.targets]
        return torch.stack(columns, dim=1)

    def _build(self, device: torch.device) -> None:
        # Its initialization draws from the method's own stream, not torch's global generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(2**62)))
            inputs = 1 if self.target == "dp" else 2
            self.adversary = adversary_network(inputs, self.settings.adversary_hidden).to(device)
        self.optimizer = torch.optim.Adam(self.adversary.parameters(),
                                          lr=self.settings.adversary_lr)
        if self._restored is not None:  # a resumed run continues the adversary it had trained
            self.adversary.load_state_dict(self._restored["adversary"])
            self.optimizer.load_state_dict(self._restored["optimizer"])
            self._restored = None

    def state_dict(self) -> dict:
        """The adversary and its Adam state: a resumed run goes on training the same adversary
        (its fresh initialization would undo what it had learned against the model)."""
        if self.adversary is None:
            return {}
        return {"adversary": self.adversary.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # Built at the first step, on the model's device, as in the uninterrupted run.
        self._restored = state or None

    def adversary_step(self, batch: Batch) -> float:
        """One update of the adversary on the batch's detached outputs; returns its loss."""
        if self.adversary is None:
            self._build(batch.logits.device)
        probability = torch.sigmoid(batch.logits.detach())
        group = batch.minority.float()
        loss = F.binary_cross_entropy_with_logits(
            self.adversary(self._adversary_input(batch, probability)).reshape(-1), group)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def loss(self, batch: Batch, model: nn.Module) -> LossTerms:
        if len(batch.logits) == 0:
            return super().loss(batch, model)
        if not self.uses_public_form:  # under DP-SGD it stepped on the public split instead
            self.adversary_step(batch)
        for p in self.adversary.parameters():  # fixed during the model's step
            p.requires_grad_(False)
        adversary_losses = F.binary_cross_entropy_with_logits(
            self.adversary(self._adversary_input(batch, torch.sigmoid(batch.logits))).reshape(-1),
            batch.minority.float(), reduction="none")
        for p in self.adversary.parameters():
            p.requires_grad_(True)
        return LossTerms(batch.losses * batch.weights - self.settings.lam * adversary_losses)
