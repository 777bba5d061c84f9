"""The one place metrics go: metrics.jsonl, TensorBoard and wandb, and the run directory's files.

Every metric is logged once through :meth:`MetricsSink.log`, and each backend receives the same flat,
slash-named dict, so the three records cannot disagree. Nothing here runs at import time: TensorBoard
and wandb are imported when a sink is opened, so importing the project never starts a logger.
"""

from __future__ import annotations

import csv
import json
import math
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
CLIENTS_FILE = "clients.csv"
TENSORBOARD_DIR = "tb"


def wandb_api_key_configured() -> bool:
    """Whether wandb would find an API key: ``WANDB_API_KEY`` or a netrc entry for its host.

    ``logging.wandb.mode: auto`` uses this to choose online or offline, so a machine with no key
    logs offline instead of stopping at wandb's login prompt.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> ``online`` with a key, ``offline`` without; other modes are wandb's own."""
    if mode == "auto":
        return "online" if wandb_api_key_configured() else "offline"
    return mode


# Keys (summary.json, metrics.jsonl) of statistics computed from the private training data without
# noise, so not covered by the run's ε: the training loss, the clipping diagnostics, the training
# set's group counts and positive rates (data/), the federated clients' counts, and the trainer's and
# data's info blocks. The test set is held out and treated as public. ``logging.private_stats:
# false`` drops them all; summary.json lists the ones it holds under NON_PRIVATE_LIST_KEY.
NON_PRIVATE_PREFIXES = ("train/", "dp/", "data/", "federated/", "trainer/")
NON_PRIVATE_LIST_KEY = "privacy/non_private_statistics"

# JSON has no infinity: an infinite value (ε of a run without noise) is written as this string,
# which float() reads back, so that it stays distinct from null (a non-private run's ε).
INFINITY, NEG_INFINITY = "inf", "-inf"


def is_non_private_statistic(key: str) -> bool:
    return key.startswith(NON_PRIVATE_PREFIXES)


def without_non_private_statistics(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` without the keys of :data:`NON_PRIVATE_PREFIXES`."""
    return {key: value for key, value in row.items() if not is_non_private_statistic(key)}


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN and infinities to null (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return None
        return INFINITY if value > 0 else NEG_INFINITY
    return value


def as_number(value: Any) -> float | None:
    """A metric value read back from JSON as a float: numbers as they are, "inf"/"-inf" as
    infinities, anything else (null, text) as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in (INFINITY, NEG_INFINITY):
        return float(value)
    return None


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file and rename it, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_predictions(path: Path, y_true: np.ndarray, y_score: np.ndarray, y_pred: np.ndarray,
                      minority: np.ndarray) -> None:
    """The test set's predictions, one row per example, so any metric can be recomputed.

    Scores are written exactly: ``repr`` of each score as a float64 is the shortest decimal that
    reads back to the same number, so a metric recomputed from the file (average precision, a
    prediction at any threshold) equals the run's to the last bit.
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["y_true", "y_score", "y_pred", "minority"])
        for row in zip(y_true.astype(int).tolist(), np.asarray(y_score, dtype=np.float64).tolist(),
                       y_pred.astype(int).tolist(), minority.astype(int).tolist()):
            writer.writerow([row[0], repr(row[1]), row[2], row[3]])
    os.replace(tmp, path)


def write_rows(path: Path, rows: list[Mapping[str, Any]]) -> None:
    """A list of same-keyed dicts as CSV (e.g. the federated clients' group counts)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep exactly the rows of metrics.jsonl with ``step <= last_step``, rewriting it atomically.

    A line that does not parse (the half-written last line of a killed run) is dropped with the
    rows after the checkpoint; a kill during the rewrite leaves the old file whole.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class MetricsSink:
    """Writes each step's metrics to metrics.jsonl, TensorBoard and wandb.

    Args:
        run_dir: the run directory (exists).
        run_name: the run's name, shown by wandb.
        config: the resolved config as a plain dict (wandb's run config).
        tensorboard: write event files under ``run_dir/tb``.
        wandb_mode: "online", "offline" or "disabled" (already resolved from "auto").
        wandb_project, wandb_entity, wandb_group: wandb's run placement.
        resume_step: set when an interrupted run continues after this many units (its
            checkpoint); the records are cut back to that step so that no step appears twice.

    Resuming: metrics.jsonl keeps exactly its rows with ``step <= resume_step`` (rewritten
    atomically; rows a killed run logged after its last checkpoint are dropped, because the resumed
    run logs those steps again) and grows from there. TensorBoard's writer opens with
    ``purge_step = resume_step + 1``, which makes TensorBoard discard the old events from that step
    on. wandb starts a new run with the same name and group, whose history begins at
    ``resume_step + 1``, and ``resumed_from_step`` in its config: wandb's own resume needs the run
    on its server, which an offline or killed run may never have reached, so the earlier steps stay
    in the interrupted run's record.
    """

    def __init__(self, run_dir: Path, *, run_name: str, config: Mapping[str, Any], tensorboard: bool,
                 wandb_mode: str, wandb_project: str, wandb_entity: str | None = None,
                 wandb_group: str | None = None, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        if resume_step is not None:
            truncate_metrics(self.run_dir / METRICS_FILE, resume_step)
        self._jsonl = (self.run_dir / METRICS_FILE).open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)
        if resume_step is not None:
            config = {**config, "resumed_from_step": resume_step}
        self._wandb_run = None
        if wandb_mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                mode=wandb_mode, project=wandb_project, entity=wandb_entity, group=wandb_group,
                name=run_name, config=dict(config), dir=str(self.run_dir), reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at ``step`` (an epoch or round, counted from 1)."""
        row = to_jsonable({"step": step, **metrics})
        self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
        self._jsonl.flush()  # a crash keeps every finished epoch
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=step)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Flush and close every backend; ``summary`` also becomes wandb's run summary."""
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            if summary is not None:
                scalars = {k: v for k, v in to_jsonable(summary).items()
                           if isinstance(v, (int, float, str, list)) and v is not None}
                self._wandb_run.summary.update(scalars)
            self._wandb_run.finish(exit_code=0 if summary is not None else 1)
