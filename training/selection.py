"""Which evaluated unit's model becomes the run's final one (``training.select``).

``last`` keeps the model of the last unit. The other rules rank the evaluated units (epochs, or
federated evaluation rounds) by one validation metric, from the table
:data:`utils.config.MODEL_SELECTIONS`: ``best_val_gap`` the smallest validation gap of the fairness
target (``val/dp_gap`` under ``fairness.mode: dp``, ``val/eo_gap`` under ``eo``);
``best_val_dp_gap``, ``best_val_eo_gap``, ``best_val_eodds_gap`` (``val/eodds_gap``, the larger of
the TPR and FPR gaps: fairlearn's ``equalized_odds_difference``) and ``best_val_eodds_sum``
(``val/eodds_gap_sum``, their sum) the smallest of that gap whatever the target; ``best_val_ap``
the largest ``val/average_precision``. RUNNER's released code keeps, per seed, the epoch with the
smallest validation ``demographic_parity_difference`` (dp target) or ``equalized_odds_difference``
(eo target), its first epoch left out: ``best_val_dp_gap`` / ``best_val_eodds_gap`` here.

Every gap rule leaves the first evaluated unit out when there are two or more (an almost untrained
model predicts one class for everyone and has a gap near zero), as RUNNER's released code does. A
repair method that trains in phases (FairNeuron) offers only its last phase's units, the first of
them likewise left out. With ``training.select_skip_constant`` a unit whose validation decisions are
all one class (``val/constant_prediction``) is no candidate either (a deviation from the released
rule, off by default); when every candidate is constant the rule falls back to them, with a warning.
Ties go to the earlier unit; a unit whose criterion is undefined (null: a group of the validation
set without positives, say) is no candidate, and when no unit has a defined value the last one is
kept, with a warning.

The selected unit's model weights, test scores and test decisions replace the last unit's: they
give summary.json's ``test/`` and ``val/`` metrics, the bootstrap intervals, predictions.csv and
``checkpoints/model_final.pt``; summary.json says which unit in ``select/unit`` (the unit's
``step`` in metrics.jsonl, 1-based), ``select/criterion`` and ``select/metric`` / ``select/value``.
Everything else in the summary (privacy/ε, train/loss, time/) stays the whole run's: the choice
depends on the models of every evaluated unit, so the released model is a function of all of
training, and its ε is the final one. The choice itself reads only the validation set, which is
held out and public like the test set, and the models, which are already DP outputs: it is
post-processing and costs no privacy.

The best model so far is kept in memory, a CPU copy of its state dict (never on disk until
model_final.pt), and it is part of every checkpoint (:meth:`ModelSelector.state_dict`), so a
resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from utils.config import MODEL_SELECTIONS, SELECT_NEEDS_VALIDATION
from utils.errors import ConfigError, warn_user
from utils.fairness import CONSTANT_PREDICTION

# Message part of a checkpoint that lacks the selection state (tests import it).
NO_SELECTION_STATE = "holds no model-selection state"


def selection_metric(select: str, fairness_mode: str) -> str | None:
    """The metrics.jsonl key ``select`` ranks units by (None for "last")."""
    metric, _ = MODEL_SELECTIONS[select]
    return None if metric is None else metric.format(mode=fairness_mode)


def ranks_a_gap(select: str) -> bool:
    """Whether ``select`` picks the smallest of a gap (its first evaluated unit left out)."""
    metric, larger_is_better = MODEL_SELECTIONS[select]
    return metric is not None and not larger_is_better


def evaluated_units(units: int, eval_every: int) -> list[int]:
    """The 0-based units after which the run loop evaluates (as ``training.base.Trainer`` says)."""
    return [unit for unit in range(units) if (unit + 1) % eval_every == 0 or unit + 1 == units]


@dataclass
class Candidate:
    """What the selector keeps of an evaluated unit: its model (a CPU copy of the state dict), its
    test scores and decisions, and its ``test/`` and ``val/`` metrics."""

    unit: int
    value: float
    model: dict[str, torch.Tensor]
    scores: np.ndarray
    decisions: np.ndarray | None
    metrics: dict[str, Any]

    @classmethod
    def of(cls, unit: int, value: float, row: dict[str, Any], y_score, y_pred, trainer) -> Candidate:
        return cls(unit=unit, value=value,
                   model={key: tensor.detach().to("cpu", copy=True)
                          for key, tensor in _base_model(trainer).state_dict().items()},
                   scores=np.array(y_score, copy=True),
                   decisions=None if y_pred is None else np.array(y_pred, copy=True),
                   metrics={key: v for key, v in row.items() if key.startswith(("test/", "val/"))})

    def state(self) -> dict[str, Any]:
        """As a checkpoint holds it (tensors and plain values: ``torch.load(weights_only=True)``)."""
        return {"unit": self.unit, "value": self.value, "model": self.model,
                "scores": torch.from_numpy(self.scores),
                "decisions": None if self.decisions is None else torch.from_numpy(self.decisions),
                "metrics": self.metrics}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Candidate | None:
        if state.get("unit") is None:
            return None
        return cls(unit=int(state["unit"]), value=float(state["value"]), model=state["model"],
                   scores=state["scores"].numpy(),
                   decisions=None if state["decisions"] is None else state["decisions"].numpy(),
                   metrics=state["metrics"])


# What a checkpoint of a selector that has kept no unit yet holds in the unit's place.
_NOTHING_KEPT = {"unit": None, "value": None, "model": None, "scores": None, "decisions": None,
                 "metrics": None}


class ModelSelector:
    """Follows the evaluated units of a run and keeps the best one's model and test outputs.

    Args:
        config: the run's config (``training.select``, ``fairness.mode``).
        units: the trainer's units.
        eval_every: the trainer's evaluation period.
        has_validation: whether the data hold a validation set.
        first_unit: the first unit whose model may be chosen (the start of a repair method's last
            phase, ``trainer.first_selectable_unit``; 0 for one phase).

    Raises:
        ConfigError: a selection other than "last" without a validation set.
    """

    def __init__(self, config, *, units: int, eval_every: int, has_validation: bool,
                 first_unit: int = 0):
        self.select = config.training.select
        self.metric = selection_metric(self.select, config.fairness.mode)
        if self.metric is not None and not has_validation:
            raise ConfigError(
                f"training.select: {self.select!r} {SELECT_NEEDS_VALIDATION}, but the data set holds "
                f"none (data.val_fraction is {config.data.val_fraction!r}). Set data.val_fraction to a "
                "share of the training pool such as 0.2, or training.select: last.")
        self.larger_is_better = MODEL_SELECTIONS[self.select][1]
        self.skip_constant = config.training.select_skip_constant
        evaluated = [unit for unit in evaluated_units(units, eval_every) if unit >= first_unit]
        skip_first = ranks_a_gap(self.select) and len(evaluated) >= 2
        self.first_candidate = evaluated[1] if skip_first else evaluated[0]
        self.last_unit = units - 1
        self.reset()

    def reset(self) -> None:
        """Forget every unit seen (a fresh run, or a checkpoint that could not be restored)."""
        self.best: Candidate | None = None
        # select_skip_constant: the best of the constant units, used when every candidate is one.
        self.fallback: Candidate | None = None

    def observe(self, unit: int, row: dict[str, Any], y_score: np.ndarray, y_pred: np.ndarray | None,
                trainer) -> None:
        """Consider evaluated ``unit`` (0-based), whose metrics row (with ``val/`` keys) is ``row``."""
        if self.metric is None or unit < self.first_candidate:
            return
        value = row.get(self.metric)
        if value is None:
            return
        value = float(value)
        if self.skip_constant and row.get(f"val/{CONSTANT_PREDICTION}"):
            # No candidate while a non-constant unit exists; kept aside in case none does.
            if self.best is None and self._better(value, self.fallback):
                self.fallback = Candidate.of(unit, value, row, y_score, y_pred, trainer)
            return
        if self._better(value, self.best):
            self.best, self.fallback = Candidate.of(unit, value, row, y_score, y_pred, trainer), None

    def _better(self, value: float, than: Candidate | None) -> bool:
        return than is None or (value > than.value if self.larger_is_better else value < than.value)

    def finish(self, row: dict[str, Any], y_score: np.ndarray, y_pred: np.ndarray | None, trainer,
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
        """The final ``(row, test scores, test decisions)``; the trainer's model gets the chosen weights.

        ``row``, ``y_score`` and ``y_pred`` are the last unit's. The returned row is it with the
        chosen unit's ``test/`` and ``val/`` metrics and the ``select/`` keys.
        """
        facts = {"select/criterion": self.select, "select/metric": self.metric}
        if self.best is None and self.fallback is not None:
            warn_user(f"training.select_skip_constant: every candidate unit's validation decisions "
                      f"are all one class, so the best of them by {self.metric} is kept.",
                      trainer.warnings)
            self.best = self.fallback
        if self.metric is None or self.best is None:
            if self.metric is not None:
                warn_user(f"training.select: {self.select}: {self.metric} is undefined (null) at every "
                          f"candidate unit, so the last unit's model is kept.", trainer.warnings)
            return {**row, **facts, "select/unit": self.last_unit + 1,
                    "select/value": None if self.metric is None else row.get(self.metric)}, y_score, y_pred
        best = self.best
        _base_model(trainer).load_state_dict(best.model)
        chosen = {**row, **best.metrics, **facts, "select/unit": best.unit + 1, "select/value": best.value}
        return chosen, best.scores, best.decisions

    def state_dict(self) -> dict[str, Any]:
        """The best unit so far (at the top level, as checkpoints have always held it) and the
        constant fallback, for a checkpoint."""
        return {"select": self.select, **(self.best.state() if self.best else _NOTHING_KEPT),
                "fallback": self.fallback.state() if self.fallback else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s output; ValueError when it is missing or of another selection."""
        if self.metric is None:
            return  # "last" keeps nothing
        if state is None:
            raise ValueError(f"the checkpoint {NO_SELECTION_STATE} (training.select: {self.select})")
        if state.get("select") != self.select:
            raise ValueError(f"the checkpoint selects by {state.get('select')!r}, this run by {self.select!r}")
        self.best = Candidate.from_state(state)
        self.fallback = Candidate.from_state(state.get("fallback") or {})


def _base_model(trainer) -> torch.nn.Module:
    """The trainer's plain model (under DP-SGD the module Opacus' wrapper holds)."""
    if hasattr(trainer, "base_model"):
        return trainer.base_model()
    return getattr(trainer.model, "_module", trainer.model)
