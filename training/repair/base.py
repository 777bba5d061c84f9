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
the method, and the method's docstring must say why, by the rule of this tool: under DP every
quantity computed from the private training data is (a) inside the clipped-and-noised sum, each
example's (DP-SGD) or client's (DP-FedAvg) whole contribution clipped as one unit, (b) released
through its own accounted mechanism (:mod:`privacy.releases`, composed into the run's ε), or (c)
computed from data the run treats as public: the validation and test splits, held out of training.

For (b) and (c) a method under DP-SGD has :attr:`RepairMethod.statistics` (the run's
:class:`privacy.releases.PrivateStatistics`) and, when it sets :attr:`RepairMethod.reads_public`,
the hook :meth:`RepairMethod.before_step`, called every step with the plain model (the DP engine's
per-example hooks off) to compute its public quantities from the validation split. The gap
regularizers use both through :class:`PublicGapForm`: the sign of each group gap from the
validation split and the group shares from the noisy counts turn a gap between batch means into a
sum of per-example terms (:func:`per_example_gap`), which DP-SGD clips with each example's loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dataset.base import DataBundle
from privacy.releases import CELLS, PrivateStatistics
from utils.errors import ConfigError
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


# The hooks through which a method changes how a training batch is computed (its loss, forward
# pass, phases or per-step state). A method overriding none of them trains exactly as Vanilla does,
# which the individual accounting's whole-set pass and the stacked trainer rely on.
TRAINING_HOOKS = ("loss", "phases", "start_phase", "attach", "before_forward", "before_step",
                  "hidden_layers")


class RepairMethod:
    """Vanilla training; subclasses override the hooks they need.

    Args:
        settings: the method's own settings (``fairness.<name>``), an instance of ``Settings``.
        target: ``fairness.mode``, "dp" or "eo".
        rng: the method's own random stream (utils.seeding "repair"), for its random choices.
        name: its ``fairness.method`` name, for messages.
        privacy_mode: ``privacy.mode`` of the run ("none", "dpsgd", "dpfedavg").
        statistics: the run's accounted releases under DP-SGD, else None.
        public_examples: ``fairness.public_examples``.

    Attributes:
        Settings: the frozen settings dataclass of ``fairness.<name>``.
        refuses: privacy mode -> why the method refuses to run under it.
        wants_activations: whether :meth:`loss` needs the hidden activations (the trainer then
            calls :meth:`hidden_layers` and records their outputs with forward hooks).
        reads_public: whether the trainer calls :meth:`before_step` (set per instance).
        trains_in_clients: under DP-FedAvg, whether each client trains with :meth:`loss` on its
            own batches (sound: a client's whole update is clipped as one unit, whatever it
            computes from its own data); otherwise clients train on the plain weighted loss.
    """

    Settings: ClassVar[type] = NoSettings
    refuses: ClassVar[dict[str, str]] = {}
    wants_activations: ClassVar[bool] = False
    trains_in_clients: ClassVar[bool] = False
    reads_public: bool = False

    def __init__(self, settings: Any, *, target: str, rng: np.random.Generator, name: str = "none",
                 privacy_mode: str = "none", statistics: PrivateStatistics | None = None,
                 public_examples: int | None = None):
        self.settings = settings
        self.target = target
        self.rng = rng
        self.name = name
        self.privacy_mode = privacy_mode
        self.statistics = statistics
        self.public_examples = public_examples

    def releases(self) -> list:
        """The accounted releases the method made (:mod:`privacy.releases`), for the accountant."""
        return list(self.statistics.releases) if self.statistics is not None else []

    def prepare(self, data: DataBundle) -> DataBundle:
        """Pre-processing: the bundle to train on (its training arrays, ``weights_train`` and
        ``info``; the validation and test sets are never touched)."""
        return data

    def client_weights(self, y: np.ndarray, minority: np.ndarray) -> np.ndarray | None:
        """Under DP-FedAvg: the loss weights of one client's examples from that client's own data
        (labels and groups), or None for 1."""
        return None

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

    def before_step(self, model: nn.Module) -> None:
        """When :attr:`reads_public`: called before every training step with the plain model in
        evaluation mode and the DP engine's per-example hooks off, to compute public quantities
        (from the validation split) that the step's loss uses."""

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
    def training_changes(cls) -> list[str]:
        """How the method changes the plain training step: the names of the :data:`TRAINING_HOOKS`
        it overrides, and "hidden activations" when its loss reads them. Empty for a method that
        only prepares the data or post-processes the scores (it trains as Vanilla does)."""
        changes = [hook for hook in TRAINING_HOOKS if getattr(cls, hook) is not getattr(RepairMethod, hook)]
        if cls.wants_activations:
            changes.append("hidden activations")
        return changes

    @classmethod
    def only_postprocesses(cls) -> bool:
        """Whether the method leaves training exactly Vanilla's (no training hook, no preparation
        of the data, no client weights) and acts on the scores alone: the run then trains what a
        ``none`` run of the same settings trains, and shares its random streams (utils.seeding)."""
        return (not cls.training_changes() and cls.prepare is RepairMethod.prepare
                and cls.client_weights is RepairMethod.client_weights)

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


# --- The per-example form of a gap regularizer, for DP-SGD -----------------------------------------

def pair_masks(minority: torch.Tensor, targets: torch.Tensor, target: str
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (minority side, majority side) masks of every pair a gap compares: one pair (dp), or
    one per label, 0 then 1 (eo); the pairs of :func:`cell_mean_matrix`, none left out."""
    if target == "dp":
        return [(minority, ~minority)]
    return [(minority & (targets == label), ~minority & (targets == label)) for label in (0, 1)]


def pair_signs(values: torch.Tensor, minority: torch.Tensor, targets: torch.Tensor,
               target: str) -> torch.Tensor:
    """sign(mean over the minority side − mean over the majority side) of every column of
    ``values`` (n, m) in every pair, shape (pairs, m); 0 for a pair with an empty side."""
    values = values.reshape(len(values), -1)
    signs = []
    for low, high in pair_masks(minority, targets, target):
        if bool(low.any()) and bool(high.any()):
            signs.append(torch.sign(values[low].mean(0) - values[high].mean(0)))
        else:
            signs.append(values.new_zeros(values.shape[1]))
    return torch.stack(signs)


def pair_inverse_shares(shares: np.ndarray, target: str) -> np.ndarray:
    """1 / (each side's share of the training set) of every pair, shape (pairs, 2), from the cell
    shares in :data:`privacy.releases.CELLS` order."""
    share = dict(zip(CELLS, np.asarray(shares, dtype=np.float64)))
    if target == "dp":
        sides = [(share[(True, 0)] + share[(True, 1)], share[(False, 0)] + share[(False, 1)])]
    else:
        sides = [(share[(True, label)], share[(False, label)]) for label in (0, 1)]
    return 1.0 / np.array(sides)


def per_example_gap(values: torch.Tensor, minority: torch.Tensor, targets: torch.Tensor,
                    target: str, signs: torch.Tensor, inverse_shares: torch.Tensor) -> torch.Tensor:
    """Each example's term of a gap regularizer whose signs and group shares are fixed, shape (B,).

    For a pair k of sides with training-set shares p_k⁻ (minority) and p_k⁺ (majority), column
    signs s_kj and an example i of ``values`` v_i (m columns):

        r_i = Σ_k [i ∈ minority side of k] / p_k⁻ · mean_j s_kj v_ij
            − Σ_k [i ∈ majority side of k] / p_k⁺ · mean_j s_kj v_ij

    Summed over a Poisson batch and divided by its expected size qN, as DP-SGD averages, its
    expectation is Σ_k mean_j s_kj (mean v_j over the minority side − over the majority side) of
    the training set: the gap of :func:`gap_of_means` where the signs are right. Each r_i reads
    only example i and the fixed quantities, so adding it to example i's loss keeps DP-SGD's
    per-example clipping a bound on that example's whole contribution.
    """
    values = values.reshape(len(values), -1)
    columns = values.shape[1]
    coefficient = torch.stack(
        [low.to(values.dtype) * inverse_shares[k, 0] - high.to(values.dtype) * inverse_shares[k, 1]
         for k, (low, high) in enumerate(pair_masks(minority, targets, target))], dim=1)
    return (coefficient * (values @ signs.to(values.dtype).T) / columns).sum(dim=1)


@dataclass
class PublicSplit:
    """The validation examples a method reads as public, on the training device."""

    x: torch.Tensor
    y: torch.Tensor
    minority: torch.Tensor
    transform: Any

    def inputs(self) -> torch.Tensor:
        return self.x if self.transform is None else self.transform(self.x, False)


NEEDS_VALIDATION = ("fairness.method {name!r} under privacy.mode {mode!r} computes {what} from the "
                    "validation split, which is public, but this run holds none out. Set "
                    "data.val_fraction > 0 (e.g. 0.1).")


class PublicForm:
    """A method's form under DP-SGD that reads the public validation split at every step (a mixin
    of :class:`RepairMethod`): :meth:`_keep_public` in ``prepare``, :meth:`public_split` in
    :meth:`RepairMethod.before_step`."""

    public_reads: ClassVar[str] = "its public quantities"  # what it computes there, for messages

    @property
    def uses_public_form(self) -> bool:
        return self.privacy_mode == "dpsgd"

    def _keep_public(self, data: DataBundle) -> None:
        if len(data.y_val) == 0:
            raise ConfigError(NEEDS_VALIDATION.format(name=self.name, mode=self.privacy_mode,
                                                      what=self.public_reads))
        n = len(data.y_val) if self.public_examples is None else self.public_examples
        self._public_arrays = (data.x_val[:n], data.y_val[:n], data.minority_val[:n],
                               data.transform)
        self._public: PublicSplit | None = None
        self.reads_public = True

    def public_split(self, device: torch.device) -> PublicSplit:
        """The public examples on ``device`` (moved there once)."""
        if self._public is None:
            x, y, minority, transform = self._public_arrays
            self._public = PublicSplit(torch.as_tensor(x).to(device),
                                       torch.as_tensor(y).to(device, torch.float32),
                                       torch.as_tensor(minority).to(device, torch.bool), transform)
        return self._public


class PublicGapForm(PublicForm):
    """A gap regularizer's per-example form under DP-SGD: the public validation split for the
    signs (:class:`PublicForm`) and the group shares from the noisy counts (released once and
    accounted, :mod:`privacy.releases`) for :func:`per_example_gap`."""

    public_reads = "the sign of each group gap"

    def _prepare_public_form(self, data: DataBundle) -> None:
        self._keep_public(data)
        shares = self.statistics.cell_shares(data.y_train, data.minority_train)
        self._inverse_shares = torch.as_tensor(pair_inverse_shares(shares, self.target),
                                               dtype=torch.float32)

    def public_split(self, device: torch.device) -> PublicSplit:
        self._inverse_shares = self._inverse_shares.to(device)
        return super().public_split(device)
