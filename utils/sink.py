"""The one place metrics go: metrics.jsonl, TensorBoard and wandb, and the run directory's files.

Every metric is logged once through :meth:`MetricsSink.log`, and each backend receives the same flat,
slash-named dict, so the three records cannot disagree. Nothing here runs at import time: TensorBoard
and wandb are imported when a sink is opened, so importing the project never starts a logger.

Beside the per-step scalars, each dashboard gets what a reader filters and compares runs by
(:func:`flatten`, :func:`run_tags`, :func:`wandb_summary`, :func:`run_hparams`): wandb the config
as the dotted keys a user types (``data.minority_share``), tags naming the data set, privacy mode and
repair method, and the final metrics as the run's summary (each interval as ``_low`` / ``_high``);
TensorBoard an HParams session (the config as hyperparameters, :data:`FINAL_METRICS` as metrics
under :data:`FINAL_PREFIX`). The grid's own records (its report run, its HParams experiment and
figures) are :mod:`grids.dashboards`'.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import netrc
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from utils.errors import UserInputError, warn_user

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
CLIENTS_FILE = "clients.csv"
INDIVIDUAL_PRIVACY_FILE = "individual_privacy.csv"  # privacy.individual_accounting, non-private
PREPROCESSING_FILE = "preprocessing.json"  # the feature transform and its sources (dataset.preprocessing)
TENSORBOARD_DIR = "tb"

# WANDB_MODE values (wandb's own environment variable) and the mode `auto` then resolves to;
# "dryrun" is wandb's old name for offline. WANDB_DISABLED with one of WANDB_DISABLED_VALUES turns
# wandb off.
WANDB_ENV_MODES = {"online": "online", "offline": "offline", "disabled": "disabled",
                   "dryrun": "offline"}
WANDB_DISABLED_VALUES = ("true", "1", "yes")
# The modes tried, in order, when wandb.init fails: the files on disk are the run's record, so a
# wandb that cannot start (no network, a bad key, a broken install) never stops a run.
WANDB_FALLBACKS = {"online": ("online", "offline"), "offline": ("offline",)}
WANDB_START_FAILED = ("wandb could not start ({failures}); {outcome}. The run's files on disk "
                      "(metrics.jsonl, summary.json) are its full record.")
WANDB_FALLBACK_TO = "logging to wandb in {mode} mode instead"
WANDB_OFF = "wandb is off for this run"
WANDB_LOG_FAILED = ("wandb could not log step {step} ({error}); wandb is off for the rest of the run. "
                    "metrics.jsonl and TensorBoard hold every step.")
WANDB_FINISH_FAILED = ("wandb could not finish its run ({error}); the run's files on disk are its "
                       "full record.")


def wandb_api_key_configured() -> bool:
    """Whether wandb would find an API key: ``WANDB_API_KEY`` or a netrc entry for its host.

    ``logging.wandb.mode: auto`` uses this to choose online or offline (when the environment does
    not choose, :func:`resolve_wandb_mode`), so a machine with no key logs offline instead of
    stopping at wandb's login prompt. An unreadable or malformed netrc counts as no key.
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, ValueError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """The wandb mode a run uses: "online", "offline" or "disabled".

    ``auto`` honours the environment first, as wandb itself would: ``WANDB_DISABLED`` set to true
    (or 1, yes) gives "disabled", and ``WANDB_MODE`` (online, offline, disabled, dryrun = offline)
    gives that mode; otherwise "online" with an API key (:func:`wandb_api_key_configured`) and
    "offline" without. Any other mode is the user's explicit choice and is returned as it is.
    """
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in WANDB_DISABLED_VALUES:
        return "disabled"
    from_env = WANDB_ENV_MODES.get(os.environ.get("WANDB_MODE", "").strip().lower())
    if from_env is not None:
        return from_env
    return "online" if wandb_api_key_configured() else "offline"


def _warn(message: str) -> None:
    warn_user(message)


def _one_line(error: BaseException) -> str:
    """An exception as one short line (wandb's messages run over several)."""
    text = " ".join(str(error).split("\n", 1)[0].split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Keys (summary.json, metrics.jsonl) of statistics computed from the private training data without
# noise, so not covered by the run's ε: the training loss, the clipping diagnostics, the training
# set's group counts and positive rates (data/), the federated clients' counts, the trainer's and
# data's info blocks, and the individual ε of privacy.individual_accounting (each example's privacy
# loss, computed from its own gradient norms). The test set is held out and treated as public.
# ``logging.private_stats: false`` drops them all (and clients.csv and individual_privacy.csv);
# summary.json lists the ones it holds under NON_PRIVATE_LIST_KEY.
NON_PRIVATE_PREFIXES = ("train/", "dp/", "data/", "federated/", "trainer/",
                        "privacy/individual_epsilon/")
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
    """Plain JSON values: numpy scalars to Python; ±infinity to "inf"/"-inf" (see
    :data:`INFINITY`); NaN, an undefined metric (a rate of an empty group), to null."""
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


TMP_SUFFIX = ".tmp"
NOT_A_FILE = ("{path} is a {kind}, where this tool writes a file; it is left untouched. Move it "
              "away and run again.")


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` atomically: a new temporary file beside it (``{name}.tmp``), fsynced,
    then renamed over ``path``.

    Nothing is ever written through an existing path: the temporary file is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a stale one the tool left, a regular file, is removed first;
    a link or anything else at that name is refused), and the rename replaces whatever entry is at
    ``path`` (a link included) rather than writing into what it points at. A reader sees the old
    file or the new one, never half of one. On any failure (a full disk, ``ulimit -f``, Ctrl-C)
    the temporary file is removed and the error propagates; ``path`` is as it was.

    Raises:
        UserInputError: a link, folder or other non-file sits at ``path`` or at its temporary name.
        OSError: the write failed (ENOSPC, EFBIG, EROFS, ...).
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    for entry in (path, tmp):
        kind = entry_kind(entry)
        if kind not in (None, "file"):
            raise UserInputError(NOT_A_FILE.format(path=entry, kind=kind))
    if os.path.lexists(tmp):  # the leftover of an interrupted write of this tool
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as error:  # os.write's error names no file: name the one being written
            if error.filename is None:
                error.filename = str(tmp)
            raise
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def entry_kind(path: Path) -> str | None:
    """What is at ``path`` without following a link: None (nothing), "file", "folder",
    "symbolic link" or "special file" (a FIFO, a device, a socket)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file and rename it, so a reader never sees half a file."""
    replace_file(path, (json.dumps(to_jsonable(payload), indent=2, sort_keys=True) + "\n").encode())


def write_predictions(path: Path, y_true: np.ndarray, y_score: np.ndarray, y_pred: np.ndarray,
                      minority: np.ndarray) -> None:
    """The test set's predictions, one row per example, so any metric can be recomputed.

    Scores are written exactly: ``repr`` of each score as a float64 is the shortest decimal that
    reads back to the same number, so a metric recomputed from the file (average precision, a
    prediction at any threshold) equals the run's to the last bit.
    """
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(PREDICTION_COLUMNS)
    for row in zip(y_true.astype(int).tolist(), np.asarray(y_score, dtype=np.float64).tolist(),
                   y_pred.astype(int).tolist(), minority.astype(int).tolist()):
        writer.writerow([row[0], repr(row[1]), row[2], row[3]])
    replace_file(path, handle.getvalue().encode())


PREDICTION_COLUMNS = ("y_true", "y_score", "y_pred", "minority")


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """A run's predictions.csv as arrays (``y_true``, ``y_score``, ``y_pred`` int/float, and
    ``minority`` bool), ready for :func:`utils.fairness.compute_metrics` or any other metric."""
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if tuple(header) != PREDICTION_COLUMNS:
            raise ValueError(f"{path}: columns {header}, expected {list(PREDICTION_COLUMNS)}")
        rows = list(reader)
    columns = list(zip(*rows)) if rows else [(), (), (), ()]
    return {"y_true": np.array(columns[0], dtype=np.int64),
            "y_score": np.array(columns[1], dtype=np.float64),
            "y_pred": np.array(columns[2], dtype=np.int64),
            "minority": np.array(columns[3], dtype=np.int64).astype(bool)}


def write_rows(path: Path, rows: list[Mapping[str, Any]]) -> None:
    """A list of same-keyed dicts as CSV (e.g. the federated clients' group counts)."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    replace_file(path, handle.getvalue().encode())


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
    replace_file(path, "".join(kept).encode())


@contextlib.contextmanager
def _argv(argv: list[str] | None):
    """``sys.argv`` as ``argv`` while wandb starts (it records the command line it finds there);
    None leaves it alone."""
    if argv is None:
        yield
        return
    import sys

    saved, sys.argv = sys.argv, list(argv)
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError of a write (a full disk) that names no file names ``path``, so the user is told
    which file could not be written (utils.errors.describe_fault)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


class MetricsSink:
    """Writes each step's metrics to metrics.jsonl, TensorBoard and wandb.

    Args:
        run_dir: the run directory (exists).
        run_name: the run's name, shown by wandb.
        config: the resolved config as a plain nested dict; wandb's run config is it flattened
            (:func:`flatten`), TensorBoard's HParams session :func:`run_hparams` of that.
        tensorboard: write event files under ``run_dir/tb``.
        wandb_mode: "online", "offline" or "disabled" (already resolved from "auto"). When
            ``wandb.init`` fails, the sink warns once and falls back to offline, then to no wandb
            (:data:`WANDB_FALLBACKS`); a failure at ``close`` also only warns. ``wandb_mode`` the
            attribute is the mode wandb ended up in.
        wandb_project, wandb_entity, wandb_group: wandb's run placement.
        resume_step: set when an interrupted run continues after this many units (its
            checkpoint); the records are cut back to that step so that no step appears twice.
        wandb_argv: the command line wandb records instead of ``sys.argv`` (one with a secret
            masked, such as a withheld seed); None records the real one.

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
                 wandb_group: str | None = None, resume_step: int | None = None,
                 wandb_concurrent: bool = False, wandb_argv: list[str] | None = None):
        self.run_dir = Path(run_dir)
        if resume_step is not None:
            truncate_metrics(self.run_dir / METRICS_FILE, resume_step)
        # Appended to, so opened without following a link (resume checks the run directory's
        # entries first, utils.rundir.check_run_entries; O_NOFOLLOW keeps it so).
        fd = os.open(self.run_dir / METRICS_FILE,
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        self._jsonl = os.fdopen(fd, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)
        # Dashboards filter, group and plot by the dotted keys a user types (data.minority_share).
        config = flatten(config)
        self._hparams = run_hparams(config)
        self._started_at = time.time()
        self._last_step = 0
        if resume_step is not None:
            config = {**config, "resumed_from_step": resume_step}
        self._wandb_run = None
        self.wandb_mode = "disabled"  # the mode wandb actually runs in (after any fallback)
        if wandb_mode != "disabled":
            # One process holds one wandb run at a time unless runs are trained together
            # (training.stacking), where each run's sink keeps its own.
            reinit = "create_new" if wandb_concurrent else "finish_previous"
            with _argv(wandb_argv):
                self._wandb_run, self.wandb_mode = self._start_wandb(
                    wandb_mode, reinit=reinit, project=wandb_project, entity=wandb_entity,
                    group=wandb_group, name=run_name, config=dict(config), tags=run_tags(config),
                    dir=str(self.run_dir))

    @staticmethod
    def _start_wandb(mode: str, **init_args: Any) -> tuple[Any, str]:
        """``wandb.init`` in ``mode``, falling back (:data:`WANDB_FALLBACKS`) with one warning
        line when it fails, and to no wandb at all when every mode fails; never raises."""
        failures = []
        try:
            import wandb
        except Exception as error:  # not installed, or a broken install
            _warn(WANDB_START_FAILED.format(failures=_one_line(error), outcome=WANDB_OFF))
            return None, "disabled"
        for attempt in WANDB_FALLBACKS.get(mode, (mode, "offline")):
            try:
                run = wandb.init(mode=attempt,
                                 settings=wandb.Settings(silent=True, console="off"), **init_args)
            except Exception as error:  # CommError (no network), AuthenticationError, UsageError...
                failures.append(f"{attempt} mode: {_one_line(error)}")
                continue
            if failures:
                _warn(WANDB_START_FAILED.format(failures="; ".join(failures),
                                                outcome=WANDB_FALLBACK_TO.format(mode=attempt)))
            return run, attempt
        _warn(WANDB_START_FAILED.format(failures="; ".join(failures), outcome=WANDB_OFF))
        return None, "disabled"

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at ``step`` (an epoch or round, counted from 1)."""
        row = to_jsonable({"step": step, **metrics})
        self._last_step = step
        with _naming(self.run_dir / METRICS_FILE):
            self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
            self._jsonl.flush()  # a crash keeps every finished epoch
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            with _naming(self.run_dir / TENSORBOARD_DIR):  # its writer thread's error surfaces here
                for key, value in scalars.items():
                    self._tb.add_scalar(key, value, global_step=step)
                self._tb.flush()
        if self._wandb_run is not None:
            try:
                self._wandb_run.log(scalars, step=step)
            except Exception as error:  # noqa: BLE001 - wandb must never stop a run
                # The files on disk hold every step; wandb stops here rather than fail each step.
                _warn(WANDB_LOG_FAILED.format(step=step, error=_one_line(error)))
                self._wandb_run = None

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Flush and close every backend. ``summary`` (a finished run's) also becomes wandb's run
        summary (:func:`wandb_summary`) and TensorBoard's HParams session (:func:`hparams_session`,
        with :func:`final_metrics` as scalars at the last step); None (a failed run) adds neither."""
        self._jsonl.close()
        if self._tb is not None:
            if summary is not None:  # a finished run: its row in TensorBoard's HParams dashboard
                for proto in hparams_session(self._hparams, self._started_at):
                    self._tb.file_writer.add_summary(proto, global_step=self._last_step)
                for key, value in final_metrics(summary).items():
                    self._tb.add_scalar(key, value, global_step=self._last_step)
            self._tb.close()
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            try:
                if summary is not None:
                    # Close the last step's history row first: wandb writes an open row's values
                    # into the summary when it closes it, over the final metrics (which, with
                    # training.select, are another unit's).
                    run.log({}, commit=True)
                    run.summary.update(wandb_summary(summary))
                run.finish(exit_code=0 if summary is not None else 1)
            except Exception as error:  # the upload failed: the files on disk are the record
                _warn(WANDB_FINISH_FAILED.format(error=_one_line(error)))


def start_wandb(mode: str, **init_args: Any) -> tuple[Any, str]:
    """``wandb.init(mode=mode, **init_args)`` with the sink's fallbacks (:data:`WANDB_FALLBACKS`,
    one warning line, never raises): ``(run or None, the mode wandb ended up in)``. For a wandb run
    that is not a training run's, such as a grid's report run (:mod:`grids.dashboards`)."""
    return MetricsSink._start_wandb(mode, **init_args)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys: ``{"privacy": {"mode": x}}`` -> ``privacy.mode``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# A run's wandb tags, from its flat config: "data:adult", "privacy:dpsgd", "method:runner". Prefixed,
# because the bare values collide (privacy.mode none and fairness.method none).
TAG_KEYS = {"data.name": "data", "privacy.mode": "privacy", "fairness.method": "method"}
WANDB_TAG_MAX = 64  # wandb refuses longer tags


def run_tags(flat_config: Mapping[str, Any]) -> list[str]:
    """The wandb tags of a run (:data:`TAG_KEYS`): what its data set, privacy mode and repair method
    are, to filter the dashboard by."""
    return [f"{label}:{flat_config[key]}"[:WANDB_TAG_MAX] for key, label in TAG_KEYS.items()
            if flat_config.get(key) is not None]


INTERVAL_SUFFIX = "_ci"


def wandb_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run's summary as wandb's run summary: every number (ε = ∞ stays a number), flag
    and text of summary.json under its own key, and each bootstrap interval (``test/eo_gap_ci:
    [low, high]``) as two numbers, ``test/eo_gap_ci_low`` and ``test/eo_gap_ci_high`` (report.csv's
    names), which the runs table can sort and the parallel-coordinates plot can draw. Undefined
    values (None, NaN) and the nested info blocks (``data/info``, ``trainer/info``) are left out;
    lists of text (``warnings``) are kept."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, np.generic):
            value = value.item()
        if key.endswith(INTERVAL_SUFFIX) and isinstance(value, (list, tuple)) and len(value) == 2:
            for part, bound in zip(("low", "high"), value):
                if (number := _defined_number(bound)) is not None:
                    out[f"{key}_{part}"] = number
        elif isinstance(value, (bool, str)):
            out[key] = value
        elif (number := _defined_number(value)) is not None:
            out[key] = number
        elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            out[key] = list(value)
    return out


def _defined_number(value: Any) -> float | int | None:
    """``value`` when it is a number other than NaN (a bool is not), else None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


# TensorBoard's HParams dashboard: the final metrics of each run, as scalars under FINAL_PREFIX (the
# per-step curves keep their own tags; the final model may be an earlier unit's, training.select).
# The report's headline metrics (grids.runs.METRICS; tests/test_dashboards.py keeps the two equal).
FINAL_PREFIX = "final/"
FINAL_METRICS = (
    "test/accuracy", "test/average_precision",
    "test/accuracy/group=minority", "test/accuracy/group=majority",
    "test/dp_gap", "test/eo_gap", "test/eodds_gap", "test/eodds_gap_sum", "test/accuracy_gap",
    "privacy/epsilon",
    "dp/clip_fraction/group=minority", "dp/clip_fraction/group=majority",
)
# Config keys that are not hyperparameters: where a run is kept (the session's name is its folder)
# and how it is recorded.
NOT_HPARAMS = ("name", "output_dir")
NOT_HPARAMS_PREFIX = "logging."


def final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The :data:`FINAL_METRICS` a finished run defines, by their TensorBoard tags
    (``final/test/accuracy``); the summary is already without the statistics
    ``logging.private_stats: false`` withholds, so they stay out here too."""
    values = {key: _defined_number(summary.get(key)) for key in FINAL_METRICS}
    return {FINAL_PREFIX + key: float(value) for key, value in values.items() if value is not None}


def hparam_value(value: Any) -> bool | int | float | str | None:
    """A config value as an HParams value: booleans, numbers and text as they are, a list as its
    JSON text (``[200]``), None as None (the session leaves that hyperparameter out, so a numeric
    column such as ``privacy.noise_multiplier`` stays numeric where a non-private run has none).
    One rule for the runs' sessions and the grid's experiment (:mod:`grids.dashboards`)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


def run_hparams(flat_config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A run's hyperparameters for TensorBoard: every key of its flat config that says what is
    trained (not :data:`NOT_HPARAMS` nor ``logging.``), by :func:`hparam_value`, None left out."""
    values = {key: hparam_value(value) for key, value in flat_config.items()
              if key not in NOT_HPARAMS and not key.startswith(NOT_HPARAMS_PREFIX)}
    return {key: value for key, value in values.items() if value is not None}


def hparams_session(hparams: Mapping[str, Any], started_at: float) -> list[Any]:
    """The summaries that make a run one session of TensorBoard's HParams dashboard: its start
    (``hparams``; the session is the run's own ``tb/`` folder, so the dashboard links each row to
    the run's curves) and its successful end. The metric values are the :func:`final_metrics`
    scalars written beside them; the columns shown are chosen by the grid's experiment
    (:func:`grids.dashboards.write_hparams_experiment`), or inferred by TensorBoard without one."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    # trial_id "": each run is its own session group (seeds are rows of their own, not averaged).
    start = hp.hparams_pb(dict(hparams), trial_id="", start_time_secs=started_at)
    end_info = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()))
    end = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(end_info),
        tensor=metadata.NULL_TENSOR)])
    return [start, end]
