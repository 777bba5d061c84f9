"""Scoring the test set (and the validation set): scores on the device, metrics from the one table
in utils/fairness.py."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dataset.base import DataBundle, place_inputs
from utils import fairness
from utils.config import EvaluationConfig
from utils.errors import ConfigError


class TestSetEvaluator:
    """Holds the test set (or another held-out split) on the device and scores a model on it.

    Args:
        data: the bundle whose test split is scored (never resampled).
        device: where the model lives.
        batch_size: examples per forward pass (memory only).
        config: threshold and bootstrap settings.
        split: "test", or "val" for the validation set (``data.val_fraction``); the metrics are
            prefixed ``{split}/`` (``val/accuracy``, ``val/dp_gap``, ...), names from the same table.
    """

    def __init__(self, data: DataBundle, device: torch.device, batch_size: int,
                 config: EvaluationConfig, *, split: str = "test"):
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', not {split!r}")
        self.split = split
        self.prefix = f"{split}/"
        self.device = torch.device(device)
        self.x = place_inputs(getattr(data, f"x_{split}"), device, what=f"{split} inputs")
        self.y_true = np.asarray(getattr(data, f"y_{split}")).astype(np.int64)
        self.minority = np.asarray(getattr(data, f"minority_{split}")).astype(bool)
        self.transform = data.transform
        self.batch_size = batch_size
        self.config = config

    @torch.no_grad()
    def scores(self, model: nn.Module) -> np.ndarray:
        """P(y = 1 | x) for every test example, in test-set order."""
        was_training = model.training
        model.eval()
        parts = []
        for start in range(0, len(self.x), self.batch_size):
            x = self.x[start:start + self.batch_size].to(self.device, non_blocking=True)
            if self.transform is not None:
                x = self.transform(x, False)
            parts.append(torch.sigmoid(model(x).reshape(-1).float()))
        model.train(was_training)
        scores = torch.cat(parts).cpu().numpy() if parts else np.zeros(0, dtype=np.float32)
        if not np.isfinite(scores).all():
            # A diverged model has no accuracy to report; saying so beats metrics of NaNs.
            raise ConfigError(
                "training diverged: the model's test scores are not finite. Lower training.lr "
                "(or privacy.max_grad_norm / federated.client_lr) and run again.")
        return scores

    def metrics(self, y_score: np.ndarray, y_pred: np.ndarray | None = None) -> dict:
        """Every test metric, ``test/``-prefixed; ``y_pred`` are the decisions (a repair
        method's post-processing), by default the scores thresholded."""
        return fairness.with_prefix(
            fairness.compute_metrics(self.y_true, y_score, self.minority,
                                     threshold=self.config.threshold, y_pred=y_pred), self.prefix)

    def intervals(self, y_score: np.ndarray, y_pred: np.ndarray | None = None, *, seed) -> dict:
        """Bootstrap intervals (``test/<metric>_ci``) of the final model, or {} when turned off."""
        if self.config.bootstrap_resamples == 0:
            return {}
        return fairness.with_prefix(
            fairness.bootstrap_intervals(self.y_true, y_score, self.minority,
                                         n_resamples=self.config.bootstrap_resamples,
                                         confidence=self.config.confidence, seed=seed,
                                         threshold=self.config.threshold, y_pred=y_pred), self.prefix)
