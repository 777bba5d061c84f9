"""Checkpoints of a run in progress, and the decision whether an interrupted run can resume.

A run saves ``{run_dir}/checkpoints/last.pt`` after every evaluated unit (every epoch, or every
``federated.eval_every`` rounds) except the last, whose results go straight into summary.json. The
file holds the trainer's :meth:`state_dict` (model, optimizer, the privacy accountant's history, the
sampler's and the trainer's own generators), the process-wide random states (torch CPU and CUDA,
NumPy's legacy global generator, Python's ``random``), the number of units done, the wall time
spent so far and, under ``training.select``, the best unit so far with its model and test outputs
(:meth:`training.selection.ModelSelector.state_dict`), so that a resumed run selects the same unit.

Every checkpoint records the run it belongs to: the run's config (``run``: every key but provenance
and ``output_dir``, seed included) as the run saw it. A file whose record is not this run's (a
``last.pt`` of another seed or setting copied into the directory) is refused like a damaged one, so
a resumed run can never continue another run's training under this run's name.

Writing is crash-safe: the checkpoint is serialized in memory, written to a new temporary file in
the same directory (never through an existing path, :func:`utils.sink.replace_file`) and fsynced,
the current ``last.pt`` is renamed to ``previous.pt``, and the temporary file is renamed to
``last.pt`` (renames within one directory are atomic). Whatever moment a run is killed at, one of the
two files is whole, and a failed write (a full disk) removes its temporary file.
:func:`find_resumable` tries ``last.pt`` and falls back to ``previous.pt`` with a warning when the
former cannot be read, lacks a key or belongs to another run.

Resuming restores every random stream at the unit boundary, so the resumed run draws the same
batches and the same DP noise as an uninterrupted one and (on the CPU) ends with the same model and
the same metrics. For privacy this matters twice: ε must count every step taken before the
interruption (the accountant's history is restored, never restarted), and the noise after the
interruption must not repeat draws already used (the noise generators continue from their state).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from utils import rundir
from utils.config import PROVENANCE_KEY, ExperimentConfig, config_from_mapping
from utils.errors import UserInputError
from utils.legacy import translate_moved
from utils.rundir import CHECKPOINT_DIR
from utils.sink import CONFIG_FILE, SUMMARY_FILE, flatten, replace_file

LAST = "last.pt"
PREVIOUS = "previous.pt"
# Bumped whenever the layout below changes, or what a resumed run rebuilds would differ from what
# the interrupted one built, so an old file is refused rather than misread.
# 2: the run's config ("run"), so that another run's checkpoint is refused (issue 26).
# 3 (2026-12-06): the run streams are keyed by the run's identity and the preprocessing is public
# under privacy (issue 25), so a run begun before would resume on other features, or release its
# noisy counts again from another stream.
FORMAT_VERSION = 3
_REQUIRED_KEYS = ("format", "step", "wall_s", "trainer", "rng", "run")
OTHER_RUN = ("{path} belongs to another run (its config differs in {keys}); it is not resumed "
             "here")
# A checkpoint is saved after an evaluated unit and before the last one, so its step lies in
# 1 .. units - 1; any other step (a file from a longer run, a tampered one) cannot be resumed.
STEP_OUT_OF_RANGE = ("{path} is after unit {step}, but this run has {units} units (a checkpoint "
                     "lies after unit 1 to {last})")


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run continues.

    Attributes:
        step: units (epochs or rounds) completed and saved; training continues with unit ``step``.
        wall_s: wall-clock seconds the run had spent up to the checkpoint (``time/wall_s`` goes on
            counting from there).
        trainer_state: what :meth:`Trainer.state_dict` returned at the checkpoint.
        rng_state: the process-wide random states (:func:`rng_state`).
        path: the file it was read from (``last.pt``, or ``previous.pt`` when ``last.pt`` was bad).
        selection: the model selector's state (:mod:`training.selection`), or None in a file
            written without one.
        run: the run the file belongs to (:func:`run_record`).
    """

    step: int
    wall_s: float
    trainer_state: dict[str, Any]
    rng_state: dict[str, Any]
    path: Path
    selection: dict[str, Any] | None = None
    run: str | None = None


def rng_state() -> dict[str, Any]:
    """The global random states a run draws from, in a form ``torch.load(weights_only=True)`` reads.

    Opacus draws DP-SGD's noise from torch's global generator (``secure_mode`` is off), dropout does
    too, and the data pipeline uses NumPy and ``random``; all of them must continue where they were.
    NumPy's state is stored as plain lists and ints, not as an array, for the safe loader.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA only where both then and now have CUDA)."""
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_record(config: ExperimentConfig) -> str:
    """The run a checkpoint belongs to: ``config`` without provenance and ``output_dir`` (a moved
    folder of runs still resumes), seed included, as canonical JSON."""
    record = {key: value for key, value in config.to_dict().items()
              if key != PROVENANCE_KEY and key not in rundir.LOCATION_KEYS}
    return json.dumps(record, sort_keys=True, default=str)



def serialized(payload: Any) -> bytes:
    """``torch.save`` into memory: the bytes are then written by :func:`utils.sink.replace_file`,
    so a full disk is an ``OSError`` naming the file, never an error from inside torch's writer."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(run_dir: Path, *, step: int, wall_s: float, trainer,
                    selection: dict[str, Any] | None = None,
                    config: ExperimentConfig | None = None) -> Path:
    """Save the run's state after ``step`` units as ``checkpoints/last.pt``; keep the old one.

    ``selection`` is the model selector's :meth:`~training.selection.ModelSelector.state_dict`;
    ``config`` is the run's (recorded, :func:`run_record`; a file without it is never resumed).

    The order of operations is what makes it safe to kill the process at any instant: the new file
    is complete and on disk (fsync) before any rename, ``last.pt`` becomes ``previous.pt`` before
    the new file takes its name, and the directory is fsynced so that the renames survive a power
    loss too.
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    payload = {"format": FORMAT_VERSION, "step": step, "wall_s": wall_s,
               "trainer": trainer.state_dict(), "rng": rng_state(),
               "run": None if config is None else run_record(config)}
    if selection is not None:
        payload["selection"] = selection
    data = serialized(payload)
    # replace_file's temporary name is last.pt.tmp; the hidden name keeps it out of listings.
    staged = directory / f".{LAST}"
    replace_file(staged, data)
    last = directory / LAST
    if os.path.lexists(last):
        os.replace(last, directory / PREVIOUS)
    os.replace(staged, last)
    _fsync_directory(directory)
    return last


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the renames are still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> ResumePoint:
    """Read one checkpoint file; raise ``ValueError`` when it is cut short, corrupt or incomplete.

    ``weights_only=True``: a checkpoint is data, and loading it must never run code from the file.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a bad pickle: all mean "not usable"
        raise ValueError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or any(key not in payload for key in _REQUIRED_KEYS):
        raise ValueError(f"{path} is incomplete (missing keys)")
    if payload["format"] != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {payload['format']}, this code reads "
                         f"{FORMAT_VERSION}")
    return ResumePoint(step=int(payload["step"]), wall_s=float(payload["wall_s"]),
                       trainer_state=payload["trainer"], rng_state=payload["rng"], path=path,
                       selection=payload.get("selection"), run=payload["run"])


def saved_config_matches(run_dir: Path, config: ExperimentConfig) -> bool:
    """Whether ``run_dir/config.yaml`` is this config, apart from provenance (such as the start
    time) and where the run is kept (``output_dir``: a folder of runs may have been moved)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text())
        raw = {k: v for k, v in raw.items() if k != PROVENANCE_KEY}
        if raw.get("seed", 0) is None and not config.logging.private_stats:
            # Withheld from config.yaml (logging.private_stats: false); the checkpoint's own
            # record of the run (run_record, seed included) is checked instead.
            raw["seed"] = config.seed
        from training.validation import validate  # it imports the trainers, which import this

        saved = validate(config_from_mapping(translate_moved(raw)[0]))  # old spellings too
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError, UserInputError):
        return False
    here = {key: getattr(config, key) for key in rundir.LOCATION_KEYS}
    return dataclasses.replace(saved, **here) == config


def find_resumable(run_dir: Path, config: ExperimentConfig, trainer, selector=None) -> ResumePoint | None:
    """Continue an interrupted run of ``config`` in ``trainer``; None means start afresh.

    A run directory resumes only when it is the tool's (:func:`utils.rundir.is_marked`), has no
    complete run's summary.json (the run did not finish; a broken summary.json does not count),
    its config.yaml equals ``config`` apart from provenance and ``output_dir`` (a changed config is
    a different experiment, whose earlier epochs would mix two settings; a moved folder is not;
    a seed withheld from config.yaml is checked against the checkpoint's record), and a usable
    checkpoint exists. ``last.pt`` is tried first, then ``previous.pt``. A file is
    usable when it loads, holds every key, belongs to this run (its :func:`run_record` is this
    config's, :data:`OTHER_RUN`), lies after unit 1 to ``trainer.units - 1``
    (:data:`STEP_OUT_OF_RANGE`), and the trainer accepts its state; each unusable file, and a fresh
    start forced by having neither, is reported on stderr, never passed over silently.

    On success the trainer and the global random states are where the checkpoint left them (the
    random states last: building the trainer consumed draws, and the resumed run must draw as the
    interrupted one would have), and so is ``selector`` (a :class:`training.selection.ModelSelector`;
    a file without the state a selection other than "last" needs is not usable). On None the
    trainer is as it was built and the selector empty.
    """
    run_dir = Path(run_dir)
    if (not run_dir.is_dir() or not rundir.is_marked(run_dir)
            or rundir.read_summary(run_dir / SUMMARY_FILE)[0] is not None):
        return None
    directory = run_dir / CHECKPOINT_DIR
    candidates = [path for path in (directory / LAST, directory / PREVIOUS) if path.exists()]
    if not candidates:
        return None
    if not saved_config_matches(run_dir, config):
        print(f"warning: {run_dir} holds an interrupted run of a different config; starting "
              f"afresh", file=sys.stderr)
        return None
    # A state that fails half-way through load_state_dict leaves the trainer partly overwritten;
    # this copy of the fresh state puts it back before the next candidate or a fresh start.
    fresh, fresh_rng = copy.deepcopy(trainer.state_dict()), rng_state()
    for path in candidates:
        try:
            point = load_checkpoint(path)
            if point.run != run_record(config):
                try:
                    theirs = flatten(json.loads(point.run))
                except (TypeError, ValueError):
                    theirs = {}
                ours = flatten(json.loads(run_record(config)))
                keys = sorted(key for key in theirs.keys() | ours.keys()
                              if theirs.get(key, ...) != ours.get(key, ...)) or ["its record"]
                raise ValueError(OTHER_RUN.format(path=path, keys=", ".join(keys)))
            if not 0 < point.step < trainer.units:
                raise ValueError(STEP_OUT_OF_RANGE.format(path=path, step=point.step,
                                                          units=trainer.units,
                                                          last=trainer.units - 1))
            if selector is not None:
                selector.load_state_dict(point.selection)
            trainer.load_state_dict(point.trainer_state)
            set_rng_state(point.rng_state)
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as error:
            print(f"warning: checkpoint not usable, {error}", file=sys.stderr)
            trainer.load_state_dict(fresh)
            set_rng_state(fresh_rng)
            if selector is not None:
                selector.reset()
            continue
        print(f"resuming {run_dir} from {path.name} after unit {point.step}", file=sys.stderr)
        return point
    print(f"warning: no usable checkpoint in {directory}; starting the run afresh", file=sys.stderr)
    return None
