"""One experiment from config to run directory: ``run(config) -> summary``.

The straight path every mode shares: seed -> data -> model -> trainer -> (train a unit, score the
test set, log) x units -> bootstrap intervals, predictions.csv, summary.json. The CLI
(``running.py``), the tests and the notebook all call :func:`run`.

Run-directory contract (README): ``summary.json`` is written last and atomically; its presence means
the run is complete, and running the same config again returns it without training. A directory
without it is an interrupted run and is started afresh.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dataset import build_dataset
from models import build_model
from training import build_trainer
from training.evaluation import TestSetEvaluator
from utils import fairness
from utils.config import PROVENANCE_KEY, ExperimentConfig
from utils.errors import UserInputError
from utils.progress import progress
from utils.seeding import resolve_device, seed_everything
from utils.sink import (
    CLIENTS_FILE,
    CONFIG_FILE,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    MetricsSink,
    resolve_wandb_mode,
    write_json_atomic,
    write_predictions,
    write_rows,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "opacus", "numpy", "scikit-learn", "pandas", "wandb",
            "tensorboard", "pyyaml")


def run_directory(config: ExperimentConfig) -> Path:
    return Path(config.output_dir) / config.name


def completed_summary(config: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this config, or None when it has not finished."""
    path = run_directory(config) / SUMMARY_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return None


def provenance() -> dict[str, Any]:
    """Package versions and the project's git commit, so a result can be traced to its code."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=PROJECT_ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty,
            "command": " ".join(sys.argv), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run(config: ExperimentConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate one experiment; return its summary (also written to summary.json).

    A run whose directory already holds summary.json is returned as it is unless ``overwrite``.
    Input errors (:class:`UserInputError`) raised before training leave no run directory behind.
    """
    run_dir = run_directory(config)
    if not overwrite and (done := completed_summary(config)) is not None:
        return {**done, "skipped": True}
    started = time.perf_counter()

    # Everything that can fail on the user's input happens before the run directory exists.
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = build_dataset(config)
    model = build_model(config.model, data.input_shape)
    trainer = build_trainer(config, model, data, device)
    evaluator = TestSetEvaluator(data, device, config.training.eval_batch_size, config.evaluation)

    if run_dir.exists():  # an interrupted run, or --overwrite: nothing in it is trusted
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    resolved = {**config.to_dict(), PROVENANCE_KEY: provenance()}
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
    sink = MetricsSink(run_dir, run_name=config.name, config=config.to_dict(),
                       tensorboard=config.logging.tensorboard,
                       wandb_mode=resolve_wandb_mode(config.logging.wandb.mode),
                       wandb_project=config.logging.wandb.project,
                       wandb_entity=config.logging.wandb.entity,
                       wandb_group=config.logging.wandb.group)
    try:
        summary = _train_and_report(config, data, trainer, evaluator, sink, run_dir, device,
                                    started)
    except BaseException as error:
        sink.close(None)
        if isinstance(error, UserInputError):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    sink.close(summary)
    return summary


def _train_and_report(config, data, trainer, evaluator, sink, run_dir, device, started):
    train_counts = {f"data/train_count/group={g}": n for g, n in data.train_count_by_group.items()}
    row: dict[str, Any] = {}
    y_score = None
    for unit in progress(range(trainer.units), desc=config.name, mode=config.logging.progress):
        row = {**train_counts, **trainer.train_unit(unit)}
        if (unit + 1) % trainer.eval_every == 0 or unit + 1 == trainer.units:
            y_score = evaluator.scores(trainer.model)
            row.update(evaluator.metrics(y_score))
        row.update(trainer.privacy_metrics())
        row["time/wall_s"] = time.perf_counter() - started
        row["time/train_samples_per_s"] = (trainer.train_samples / trainer.train_seconds
                                           if trainer.train_seconds > 0 else None)
        sink.log(unit + 1, row)

    # The final model: intervals, predictions and the summary, in that order (summary last).
    intervals = evaluator.intervals(y_score, seed=config.seed)
    warnings = fairness.small_group_warnings(
        {g: row[f"test/count/group={g}"] for g in fairness.GROUPS})
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    threshold = config.evaluation.threshold
    write_predictions(run_dir / PREDICTIONS_FILE, evaluator.y_true, y_score,
                      (y_score >= threshold).astype(np.int64), evaluator.minority)
    client_counts = getattr(trainer, "client_counts", None)
    if client_counts:  # federated runs: who holds which group, one row per client
        write_rows(run_dir / CLIENTS_FILE, client_counts)
    checkpoint_dir = run_dir / "checkpoints"
    checkpoint_dir.mkdir(exist_ok=True)
    base_model = getattr(trainer.model, "_module", trainer.model)
    torch.save(base_model.state_dict(), checkpoint_dir / "model_final.pt")
    summary = {
        **row, **intervals,
        "time/wall_s": time.perf_counter() - started,
        "name": config.name, "seed": config.seed, "mode": config.privacy.mode,
        "device": str(device), "units": trainer.units, "warnings": warnings,
        "data/info": data.info, "trainer/info": getattr(trainer, "info", {}),
    }
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
