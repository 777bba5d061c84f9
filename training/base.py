"""What every trainer offers the run loop (:func:`training.experiment.run`).

A trainer owns the model, the optimizer and (under DP) the privacy engine. The run loop only calls
``train_unit`` ``trainer.units`` times, evaluates ``trainer.model`` whenever
``(unit + 1) % trainer.eval_every == 0`` or at the last unit, and logs what both return. A unit is
an epoch for centralized training and a round for federated training, so one metrics.jsonl row is
one unit. ``state_dict`` / ``load_state_dict`` let an interrupted run resume at a unit boundary
(:mod:`training.checkpoint`).

:class:`Trainer` names everything the run loop, the model selection (:mod:`training.selection`)
and the checkpoints read from a trainer, and nothing else; ``tests/test_registries.py`` checks that
every registered trainer has all of it and that the loop reads nothing the protocol leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from training.repair.base import RepairMethod


@runtime_checkable
class Trainer(Protocol):
    """The interface of the ``privacy.mode`` trainers (none / dpsgd / dpfedavg, ``training.TRAINERS``).

    ``isinstance(trainer, Trainer)`` checks that every member below is present (not their types).
    """

    model: torch.nn.Module
    """The module to evaluate (the global model in federated training; Opacus' wrapper under DP-SGD),
    whose forward maps a float batch to one logit per example, shape (batch,) or (batch, 1)."""
    units: int
    """How many epochs (or federated rounds) the run trains."""
    eval_every: int
    """Evaluate after every this many units, and after the last one."""
    first_selectable_unit: int
    """The first (0-based) unit whose model ``training.select`` may choose (0 for one phase)."""
    method: RepairMethod
    """The fairness repair method (:mod:`training.repair`); its ``postprocess`` makes the decisions."""
    train_samples: int
    """Examples processed in training so far (for ``time/train_samples_per_s``)."""
    train_seconds: float
    """Seconds spent in training so far (for ``time/train_samples_per_s``)."""
    info: dict[str, Any]
    """Facts about the trainer for summary.json's ``trainer/info`` (may be empty)."""
    client_counts: list[dict[str, int]] | None
    """Per client its counts of groups and labels, for clients.csv (federated; None otherwise)."""
    privacy_facts: dict[str, object]
    """What the run's guarantee rests on (:func:`guarantee_facts`), for summary.json."""
    warnings: list[str]
    """Warnings the trainer gave the user (already printed), for summary.json's ``warnings``."""

    def train_unit(self, unit: int) -> dict[str, float]:
        """Train one epoch or round; return flat slash-named metrics such as ``train/loss``."""

    def privacy_metrics(self) -> dict[str, float | None]:
        """``privacy/epsilon``, ``privacy/delta``, ``privacy/noise_multiplier``,
        ``privacy/sample_rate``, ``privacy/steps`` as of now (values None when not private)."""

    def base_model(self) -> torch.nn.Module:
        """The trained module itself, unwrapped from any privacy engine (for saving weights)."""

    def individual_privacy(self):
        """Each training example's individual ε (:class:`privacy.individual.IndividualPrivacy`)
        under ``privacy.individual_accounting``, else None."""

    def state_dict(self) -> dict[str, Any]:
        """The trainer's whole state at a unit boundary, for a checkpoint: model, optimizer,
        privacy accounting and every random generator the trainer owns (``torch.save``-able with
        tensors, lists, tuples and plain numbers only, so ``weights_only`` loading reads it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a freshly built trainer of the same config, so
        that training continues exactly as if it had not stopped."""


PRIVACY_KEYS = ("privacy/epsilon", "privacy/delta", "privacy/noise_multiplier",
                "privacy/sample_rate", "privacy/steps")

POISSON_VIOLATED_WARNING = (
    "privacy.poisson_sampling is false: batches are shuffled and of fixed size, but the accountant "
    "assumes Poisson sampling, so the reported privacy/epsilon is NOT a guarantee for this run "
    "(summary.json marks it privacy/accounting_assumption: poisson_violated). Set "
    "privacy.poisson_sampling: true for a sound epsilon.")


DELTA_TOO_LARGE = "is not below 1/n"


def delta_warning(delta: float, n: int, unit: str) -> str | None:
    """The warning for a δ of at least 1/n (``n`` examples, or clients under user-level DP), or
    None. At such a δ, publishing one randomly chosen ``unit`` in the clear meets (0, δ)-DP, so the
    (ε, δ) pair promises next to nothing; the run says so and records ``privacy/private: false``."""
    if n <= 0 or delta < 1 / n:
        return None
    return (f"privacy.delta {delta:g} {DELTA_TOO_LARGE} ({n} {unit}s, 1/n = {1 / n:.3g}): a "
            f"mechanism that publishes one {unit} in the clear meets (0, δ)-DP at such a δ, so this "
            f"run's (ε, δ) guarantees little and its summary says privacy/private: false. Set "
            f"privacy.delta well below 1/n, e.g. {1 / (10 * n):.1g}.")


def guarantee_facts(privacy, *, poisson: bool) -> dict[str, object]:
    """What a run's reported (ε, δ) rests on, for summary.json.

    Keys: ``privacy/private`` (the run claims a DP guarantee: a private mode whose accounting
    assumption holds; an infinite ε, with zero noise, is also recorded as not private by the
    experiment once ε is known), ``privacy/secure_rng`` (sampling and noise from the OS's CSPRNG;
    false means anyone with the seed can replay them), and ``privacy/accounting_assumption``
    ("poisson", "poisson_violated", or None for a non-private run).
    """
    if not privacy.private:
        return {"privacy/private": False, "privacy/secure_rng": False,
                "privacy/accounting_assumption": None}
    return {"privacy/private": poisson, "privacy/secure_rng": privacy.secure_rng,
            "privacy/accounting_assumption": "poisson" if poisson else "poisson_violated"}


PUBLIC_DATA_KEY = "privacy/public_data"
# summary.json: a private run's composition, the (σ, q, steps) entries ε was computed from.
HISTORY_KEY = "privacy/history"


def public_data_facts(config, *, has_validation: bool, preprocessing: dict | None,
                      method) -> dict[str, object]:
    """What the run treated as public, for summary.json's ``privacy/public_data``: data read
    without noise and charged nothing, which ε does not cover.

    - ``test_split``: always; what reads it (the test metrics, predictions.csv, and a repair
      method's post-processing, which decides with each test person's group).
    - ``validation_split``: null without one; else whether it was declared public
      (``data.validation_public``, required under privacy) and what reads it: the ``val/``
      metrics, ``training.select`` other than last, and a repair method's public form
      (:attr:`training.repair.base.RepairMethod.reads_public`, with what it computes there).
    - ``preprocessing``: where the feature transform's parameters come from (preprocessing.json):
      "public", or "fitted" on the private training rows, which ε does not cover.
    - ``pretrained_weights``: ``model.weights``, when set: trained on other data, taken as public.
    """
    from training.repair.base import RepairMethod

    postprocesses = type(method).postprocess is not RepairMethod.postprocess
    decisions = [f"fairness.{method.name} (its decisions use each person's group)"] if postprocesses else []
    facts: dict[str, object] = {"test_split": {"read_by": ["test/ metrics", "predictions.csv", *decisions]},
                                "validation_split": None}
    if has_validation:
        read_by = ["val/ metrics", *decisions]
        if config.training.select != "last":
            read_by.append(f"training.select: {config.training.select}")
        if method.reads_public:
            examples = config.fairness.public_examples
            read_by.append(f"fairness.{method.name}: {method.public_reads} (fairness.public_examples: "
                           f"{'all' if examples is None else examples})")
        facts["validation_split"] = {"declared": config.data.validation_public, "read_by": read_by}
    facts["preprocessing"] = (None if preprocessing is None else
                              {"source": preprocessing["source"], "file": "preprocessing.json"})
    facts["pretrained_weights"] = config.model.weights
    return facts


def no_privacy_metrics() -> dict[str, None]:
    """The privacy keys of a non-private run: present, and null, so every run has the same keys."""
    return dict.fromkeys(PRIVACY_KEYS)
