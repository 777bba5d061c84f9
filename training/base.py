"""What every trainer offers the run loop in ``running.py``.

A trainer owns the model, the optimizer and (under DP) the privacy engine. The run loop only calls
``train_unit`` ``trainer.units`` times, evaluates ``trainer.model`` whenever
``(unit + 1) % trainer.eval_every == 0`` or at the last unit, and logs what both return. A unit is
an epoch for centralized training and a round for federated training, so one metrics.jsonl row is
one unit. ``state_dict`` / ``load_state_dict`` let an interrupted run resume at a unit boundary
(:mod:`training.checkpoint`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Trainer(Protocol):
    """The interface of ``privacy.mode`` none / dpsgd / dpfedavg trainers.

    Attributes:
        model: the module to evaluate (the global model in federated training). Its forward maps a
            float batch to one logit per example, shape (batch,) or (batch, 1).
        units: how many epochs (or rounds) the run trains.
        eval_every: evaluate the test set after every this many units (and after the last one).
        method: the fairness repair method (:mod:`training.repair`) whose post-processing turns
            the scores into decisions.
        train_samples, train_seconds: examples processed and seconds spent training so far (for
            ``time/train_samples_per_s``).
        info: facts about the trainer for summary.json's ``trainer/info`` (may be empty).
        client_counts: per client its counts of groups and labels (federated; None otherwise),
            for clients.csv.
    """

    model: torch.nn.Module
    units: int
    eval_every: int
    method: Any
    train_samples: int
    train_seconds: float
    info: dict[str, Any]
    client_counts: list[dict[str, int]] | None

    def base_model(self) -> torch.nn.Module:
        """The trained module itself, unwrapped from any privacy engine (for saving weights)."""

    def train_unit(self, unit: int) -> dict[str, float]:
        """Train one epoch or round; return flat slash-named metrics such as ``train/loss``."""

    def state_dict(self) -> dict[str, Any]:
        """The trainer's whole state at a unit boundary, for a checkpoint: model, optimizer,
        privacy accounting and every random generator the trainer owns (``torch.save``-able with
        tensors, lists, tuples and plain numbers only, so ``weights_only`` loading reads it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a freshly built trainer of the same config, so
        that training continues exactly as if it had not stopped."""

    privacy_facts: dict[str, object]
    """What the run's guarantee rests on (:func:`guarantee_facts`), for summary.json."""
    warnings: list[str]
    """Warnings the trainer gave the user (already printed), for summary.json's ``warnings``."""

    def privacy_metrics(self) -> dict[str, float | None]:
        """``privacy/epsilon``, ``privacy/delta``, ``privacy/noise_multiplier``,
        ``privacy/sample_rate``, ``privacy/steps`` as of now (values None when not private)."""


PRIVACY_KEYS = ("privacy/epsilon", "privacy/delta", "privacy/noise_multiplier",
                "privacy/sample_rate", "privacy/steps")

POISSON_VIOLATED_WARNING = (
    "privacy.poisson_sampling is false: batches are shuffled and of fixed size, but the accountant "
    "assumes Poisson sampling, so the reported privacy/epsilon is NOT a guarantee for this run "
    "(summary.json marks it privacy/accounting_assumption: poisson_violated). Set "
    "privacy.poisson_sampling: true for a sound epsilon.")


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


def no_privacy_metrics() -> dict[str, None]:
    """The privacy keys of a non-private run: present, and null, so every run has the same keys."""
    return dict.fromkeys(PRIVACY_KEYS)
