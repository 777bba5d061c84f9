"""The one plug-in point of fairness repair methods: a class, its settings, four optional hooks.

A method is a :class:`RepairMethod` subclass registered in ``training.repair.METHODS`` under its
``fairness.method`` name, with a frozen settings dataclass of its own (``Settings``) that the
config section ``fairness.<name>`` builds and checks strictly, like every other section. The
trainers call the hooks; none of them branches on a method's name.

The hooks, each optional (the base class is Vanilla training, ``fairness.method: none``):

- :meth:`RepairMethod.prepare` (pre-processing): the training set before training starts, e.g.
  resampled (oversample), synthesized, or given per-example weights (reweighing).
- :meth:`RepairMethod.loss` (the training loss): given a :class:`Batch` (per-example logits,
  labels, group flags, weights, per-example losses and, when the method asked for them with
  :attr:`RepairMethod.wants_activations`, the hidden activations), the batch's loss as
  :class:`LossTerms`: a per-example part and an optional term that couples examples. The split
  matters under DP-SGD: only the per-example part can be clipped per example (issue of repair
  under privacy), so a coupling term is what makes a method refuse DP until it is decomposed.
- :meth:`RepairMethod.phases` and :meth:`RepairMethod.start_phase` (training schedule): the
  training as a sequence of :class:`Phase` s, e.g. FairNeuron's path analysis and selective
  retraining after a first training; the default is one phase of ``training.epochs``. A method
  that changes how a batch is forwarded registers its own forward hooks in
  :meth:`RepairMethod.attach` and learns the batch's examples from
  :meth:`RepairMethod.before_forward`; whatever a phase computed is in
  :meth:`RepairMethod.state_dict`, so a resumed run continues the phase exactly.
- :meth:`RepairMethod.postprocess` (post-processing): test (and validation) scores and group flags
  to 0/1 decisions, e.g. reject option classification; the default thresholds the scores with
  :func:`utils.fairness.predictions`, the rule every metric uses.

Each method declares in :attr:`RepairMethod.refuses` the privacy modes under which it refuses to
run, with the reason (a sentence a privacy reviewer can check). A mode absent from it is sound for
the method, and the method's docstring must say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dataset.base import DataBundle
from utils.fairness import predictions


@dataclass(frozen=True, kw_only=True)
class NoSettings:
    """A method without settings of its own."""

    def validate(self) -> None:
        return None


@dataclass
class Batch:
    """One training batch as a method's loss sees it (all tensors on the training device).

    Attributes:
        logits: the model's output, shape (B,).
        targets: the labels as floats 0/1, shape (B,).
        minority: True for the minority group, shape (B,).
        weights: per-example loss weights (1 unless :meth:`RepairMethod.prepare` set them), (B,).
        losses: the per-example binary cross-entropy, unweighted, shape (B,).
        activations: the hidden activations the method asked for, by layer name, each (B, ...).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    minority: torch.Tensor
    weights: torch.Tensor
    losses: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """One stretch of training under one rule.

    Attributes:
        name: the phase's name (``train`` for the default single phase), for messages.
        epochs: its length in epochs (at least 1).
        fresh_model: whether the phase starts from the model's initial weights (the same draw as
            the first phase's, from the ``init`` stream) with a new optimizer, rather than
            continuing from the weights the previous phase left.
    """

    name: str
    epochs: int
    fresh_model: bool = False


@dataclass
class TrainingSet:
    """The training set as the trainer holds it, for :meth:`RepairMethod.start_phase`.

    Attributes:
        x: the inputs (on the trainer's device, or on the CPU when they did not fit).
        y: the labels as floats 0/1, (N,).
        minority: True for the minority group, (N,).
        weights: the per-example loss weights, (N,).
        transform: the data set's batch transform (``transform(x, training)``) or None.
        batch_size: examples per forward pass when the method scores the whole set.
    """

    x: torch.Tensor
    y: torch.Tensor
    minority: torch.Tensor
    weights: torch.Tensor
    transform: Any
    batch_size: int


@dataclass
class LossTerms:
    """A batch's training loss: ``per_example.mean() + (coupled or 0)``.

    Attributes:
        per_example: each example's own loss, shape (B,): under DP-SGD the part whose gradient is
            clipped example by example.
        coupled: a scalar that depends on several examples at once (a gap between group means),
            or None. Under DP-SGD it has no per-example clipping, so a method that returns one
            refuses DP unless it can be decomposed.
    """

    per_example: torch.Tensor
    coupled: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        mean = self.per_example.mean() if len(self.per_example) else self.per_example.sum()
        return mean if self.coupled is None else mean + self.coupled


class RepairMethod:
    """Vanilla training; subclasses override the hooks they need.

    Args:
        settings: the method's own settings (``fairness.<name>``), an instance of ``Settings``.
        target: ``fairness.mode``, "dp" or "eo".
        rng: the method's own random stream (utils.seeding "repair"), for its random choices.

    Attributes:
        Settings: the frozen settings dataclass of ``fairness.<name>``.
        refuses: privacy mode -> why the method refuses to run under it.
        wants_activations: whether :meth:`loss` needs the hidden activations (the trainer then
            calls :meth:`hidden_layers` and records their outputs with forward hooks).
    """

    Settings: ClassVar[type] = NoSettings
    refuses: ClassVar[dict[str, str]] = {}
    wants_activations: ClassVar[bool] = False

    def __init__(self, settings: Any, *, target: str, rng: np.random.Generator):
        self.settings = settings
        self.target = target
        self.rng = rng

    def prepare(self, data: DataBundle) -> DataBundle:
        """Pre-processing: the bundle to train on (its training arrays, ``weights_train`` and
        ``info``; the validation and test sets are never touched)."""
        return data

    def hidden_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules whose outputs :meth:`loss` receives as ``Batch.activations``."""
        return {}

    def loss(self, batch: Batch, model: nn.Module) -> LossTerms:
        """The training loss of a batch; Vanilla: the weighted per-example cross-entropy."""
        return LossTerms(batch.losses * batch.weights)

    def phases(self, epochs: int) -> list[Phase]:
        """The training's phases in order, given ``training.epochs``; by default one phase of
        ``epochs``. Model selection (``training.select``) considers the last phase's epochs only:
        an earlier phase's model is not the method's output."""
        return [Phase("train", epochs)]

    def attach(self, model: nn.Module) -> None:
        """Called once with the plain model before training, e.g. to register forward hooks that
        change the training forward pass (they must leave evaluation, ``model.eval()``, alone)."""

    def start_phase(self, index: int, phase: Phase, model: nn.Module, data: TrainingSet) -> None:
        """Called before the first epoch of every phase after the first (``index`` ≥ 1), with the
        model the previous phase left (the trainer resets it afterwards when
        ``phase.fresh_model``)."""

    def before_forward(self, indices: torch.Tensor) -> None:
        """The training-set indices of the batch about to be forwarded (on the device)."""

    def info(self) -> dict[str, Any]:
        """Facts about what the method did (e.g. how many examples a phase marked), for the run's
        ``trainer/info`` in summary.json; keys prefixed with the method's name."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the method computed during training that a resumed run needs (tensors, lists and
        plain values only); nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def postprocess(self, scores: np.ndarray, minority: np.ndarray, threshold: float) -> np.ndarray:
        """Post-processing: scores and group flags to 0/1 decisions."""
        return predictions(scores, threshold)

    @classmethod
    def refusal(cls, name: str, privacy_mode: str) -> str | None:
        """The error message when the method cannot run under ``privacy_mode``, else None."""
        reason = cls.refuses.get(privacy_mode)
        if reason is None:
            return None
        return (f"fairness.method {name!r} refuses privacy.mode {privacy_mode!r}: {reason} "
                f"Use privacy.mode: none, or fairness.method: none under {privacy_mode}.")


def cell_mean_matrix(minority: torch.Tensor, targets: torch.Tensor, target: str) -> torch.Tensor:
    """The rows that average a batch over the groups to compare, as one (2·pairs, B) matrix.

    dp compares the minority with the majority (one pair of rows); eo compares them within each
    label (a pair per label). Row 2k averages the minority side of pair k, row 2k + 1 its majority
    side; a pair with an empty side is left out (it has no gap to measure). ``matrix @ values``
    then gives every mean at once, for any number of columns (neurons), in one product.
    """
    cells = [torch.ones_like(minority)] if target == "dp" else [targets == 0, targets == 1]
    rows = []
    for in_cell in cells:
        sides = [(minority & in_cell), (~minority & in_cell)]
        counts = [side.sum() for side in sides]
        if all(int(count) > 0 for count in counts):  # noqa: SIM102 - one sync per pair, not per op
            rows += [side.to(torch.float32) / count for side, count in zip(sides, counts)]
    if not rows:
        return torch.zeros(0, len(minority), device=minority.device)
    return torch.stack(rows)


def gap_of_means(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ over the pairs of :func:`cell_mean_matrix` of the mean over columns of |mean − mean|."""
    if len(matrix) == 0:
        return values.new_zeros(())
    means = matrix.to(values.dtype) @ values.reshape(len(values), -1)
    return (means[0::2] - means[1::2]).abs().mean(dim=1).sum()


def group_gap(values: torch.Tensor, minority: torch.Tensor, targets: torch.Tensor,
              target: str) -> torch.Tensor:
    """The absolute gap between the groups' mean ``values`` (a scalar; averaged over trailing
    axes): dp compares the groups, eo compares them within each label and sums the two label
    gaps. A comparison with an empty side contributes 0."""
    return gap_of_means(cell_mean_matrix(minority, targets, target), values)
