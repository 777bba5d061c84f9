"""Which paths are this tool's, and the only things it ever writes over or removes.

**The marker.** A directory is one of this tool's run directories only if it holds the marker file
:data:`MARKER_FILE` (``.dp-fairness-run``), a small JSON object ``{"tool": "dp-fairness",
"format": 1, "created_at": ...}`` that the tool writes first thing whenever it makes or adopts a run
directory, before config.yaml. Writing into a run directory and removing anything from it need the
marker; reading does not (a complete run of an earlier version of the tool, which wrote no marker,
is still returned as complete when its own config.yaml is the config asked for; another program's
summary.json is not; it cannot be trained again in place).

What is found at ``{output_dir}/{name}`` decides what may happen there (:func:`inspect_run_path`;
:func:`claim_run` is the one walk of it before a run starts, :func:`start_fresh` the one that makes it):

- nothing (:data:`ABSENT`): the directory is made, with the missing parents of output_dir (on a
  failure the folders made so far are removed again, so nothing is left half-made), and marked;
- an empty directory (:data:`EMPTY`): adopted, i.e. marked and used, since nothing in it can be
  lost; an input error during the run leaves it empty again;
- a marked directory (:data:`MARKED`): the tool's. A complete run is returned; an interrupted one
  resumes; a fresh start in it (``--overwrite``, or an interrupted run that cannot resume) removes
  only the tool's own entries (:data:`RUN_ENTRIES`: config.yaml, metrics.jsonl, summary.json,
  predictions.csv, clients.csv, individual_privacy.csv, preprocessing.json, tb/, wandb/,
  checkpoints/ and the ``.tmp`` files of atomic writes).
  Anything else a user put there stays where it is, and a symbolic link at one of those names is
  an error rather than something to follow or remove;
- a directory with other content and no marker (:data:`FOREIGN`), a file, or a symbolic link (to
  anything, or broken): an error (exit 2) naming the path and the way out, and nothing is touched,
  with or without ``--overwrite``.

The run directory must also resolve (``Path.resolve()``) to a path whose parent is ``output_dir``
resolved: with a name that is one plain path component (``ExperimentConfig.validate``) and no link
at the run path, it always does; the check keeps it so.

``summary.json`` is trusted only when it is a JSON object holding every key a complete run writes
(:data:`SUMMARY_REQUIRED_KEYS`); anything else (cut short, empty, ``{}``, a list) is reported by
:func:`read_summary` as broken, and the run directory is then an interrupted run.

**Inside a marked directory** every path the tool writes is checked, on a resume as on a fresh
start (:func:`check_run_entries`): the tool's files must be regular files and its folders (tb/,
wandb/, checkpoints/) folders, with no symbolic link anywhere below them, so that nothing is ever
written through a link a user (or another program) put there. Files are written by creating a new
temporary file and renaming it into place (:func:`utils.sink.replace_file`).

**One process at a time.** A process that trains in a run directory holds an exclusive lock on its
marker file (``fcntl.flock``, :class:`RunLock`) from before it reads a checkpoint until the run ends;
a second process on the same directory gets one error line (:data:`RUN_LOCKED`, exit 2) instead of
training the same units into the same files. The lock dies with its process, so a killed run never
leaves a stale one. (Where flock does not exist, Windows, runs are not locked.)
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import UserInputError
from utils.sink import (
    CLIENTS_FILE,
    CONFIG_FILE,
    INDIVIDUAL_PRIVACY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREPROCESSING_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    TMP_SUFFIX,
    entry_kind,
    write_json_atomic,
)

try:  # POSIX: one process per run directory (RunLock); Windows has no flock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

TOOL = "dp-fairness"
MARKER_FILE = ".dp-fairness-run"
MARKER_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
WANDB_DIR = "wandb"

_RUN_FILES = (SUMMARY_FILE, CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, CLIENTS_FILE,
              INDIVIDUAL_PRIVACY_FILE, PREPROCESSING_FILE)
_RUN_FOLDERS = (TENSORBOARD_DIR, WANDB_DIR, CHECKPOINT_DIR)
RUN_ENTRIES = (*_RUN_FILES, *(f"{name}{TMP_SUFFIX}" for name in _RUN_FILES), *_RUN_FOLDERS)
"""The entries of a run directory the tool writes, and the only ones a fresh start removes
(summary.json first: a clearing stopped half-way leaves an interrupted run, never a "complete" one
with files missing)."""
CHECKPOINT_FILES = ("last.pt", "previous.pt", "model_final.pt", ".last.pt", ".last.pt.tmp",
                    "model_final.pt.tmp")
"""The files the tool writes in checkpoints/ (training.checkpoint, training.experiment)."""

SUMMARY_REQUIRED_KEYS = ("name", "seed", "mode", "units", "test/accuracy", "privacy/epsilon")
"""Keys every complete run writes into summary.json; without one of them it is not trusted."""

LOCATION_KEYS = ("output_dir",)
"""Config keys that say where a run is kept, not what it trains: two configs that differ only in
these (a folder of runs moved elsewhere) are the same experiment, for resuming and for skipping."""

# What inspect_run_path finds at the run path.
ABSENT, EMPTY, MARKED, FOREIGN = "absent", "empty", "marked", "foreign"

# Messages; tests format them with the same fields.
NOT_OURS = ("{path} exists and is not a run directory of this tool (it has no {marker} marker), so "
            "it is left untouched, --overwrite or not. Give the run another name (--set name=...) "
            "or another output_dir, or move {path} away.")
RUN_PATH_IS_FILE = ("the run directory {path} is a file, not a directory; it is left untouched. "
                    "Give the run another name (--set name=...) or move the file away.")
RUN_PATH_IS_LINK = ("the run directory {path} is a symbolic link; links are never followed or "
                    "removed. Give the run another name (--set name=...) or replace the link by "
                    "the directory itself.")
RUN_PATH_OUTSIDE = ("the run directory {path} resolves to {resolved}, which is not directly inside "
                    "output_dir ({output}); nothing was written. Give a plain name "
                    "(--set name=...).")
LINK_IN_RUN_DIR = ("{path} is a symbolic link inside the run directory; the tool neither follows "
                   "nor removes links. Remove or replace it yourself, or give the run another name.")
OUTPUT_DIR_NOT_A_DIRECTORY = ("output_dir {output!r}: {blocker} exists and is not a directory. "
                              "Set output_dir to a directory (--set output_dir=...).")
OUTPUT_DIR_NOT_WRITABLE = ("output_dir {output!r}: cannot write in {where} (permission denied or "
                           "a read-only file system). Set output_dir to a writable directory "
                           "(--set output_dir=...).")
CANNOT_CREATE = ("output_dir {output!r}: cannot create {path} ({reason}); nothing was left "
                 "behind. Set output_dir to a directory that can be made (--set output_dir=...).")
CANNOT_READ = ("the run directory {path} cannot be read ({reason}). Give the run another name "
               "(--set name=...) or fix the directory's permissions.")
SUMMARY_BROKEN = ("{path} is not a complete run's summary ({problem}); treating the run as "
                  "interrupted")
ENTRY_WRONG_KIND = ("{path} is a {kind}, where this tool keeps its {expected}; nothing was written "
                    "or removed. Move it away (or give the run another name) and run again.")
CANNOT_CLEAR = ("cannot remove {path} for a fresh start ({reason}); nothing was removed. Fix its "
                "permissions (or move it away) and run again.")
RUN_LOCKED = ("{path} is in use by another process of this tool (it holds the lock on {marker}); "
              "nothing was written. Wait for that process to finish (or stop it), then run again.")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` if it is a regular file (not a link) holding one, else None:
    the test of a file this tool wrote (its marker, a grid's status file)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def is_marked(run_dir: Path, marker: str = MARKER_FILE) -> bool:
    """Whether ``run_dir`` holds this tool's marker (a regular file, not a link, naming the tool);
    ``marker`` is the run directory's, or a grid directory's (grids.sweep)."""
    payload = read_json_object(Path(run_dir) / marker)
    return payload is not None and payload.get("tool") == TOOL


def write_marker(run_dir: Path, marker: str = MARKER_FILE) -> None:
    """Mark ``run_dir`` as this tool's (the first file of every run directory)."""
    write_json_atomic(run_dir / marker, {"tool": TOOL, "format": MARKER_FORMAT,
                                         "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse an ``output_dir`` that is, or lies under, something other than a directory.

    Writes nothing. Missing folders are fine (they are made when the run starts).
    """
    output = Path(output_dir)
    existing = output
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        raise UserInputError(OUTPUT_DIR_NOT_A_DIRECTORY.format(output=str(output_dir),
                                                               blocker=existing))


def check_writable(run_dir: Path, output_dir: str | Path, state: str) -> None:
    """Refuse to start when the place the run will write to is not writable (writes nothing).

    The run directory itself when it exists, else the nearest existing folder above it, in which
    the missing ones will be made. (root passes every permission check; a read-only file system
    still fails it, and so does any failure to create a folder later, :data:`CANNOT_CREATE`.)
    """
    where = Path(run_dir)
    if state == ABSENT:
        while not os.path.lexists(where) and where != where.parent:
            where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise UserInputError(OUTPUT_DIR_NOT_WRITABLE.format(output=str(output_dir), where=where))


def inspect_run_path(run_dir: Path, output_dir: str | Path, marker: str = MARKER_FILE) -> str:
    """What is at the run path: :data:`ABSENT`, :data:`EMPTY`, :data:`MARKED` or :data:`FOREIGN`.

    Raises:
        UserInputError: output_dir is not a directory (:func:`check_output_dir`), the run path is a
            file or a symbolic link, cannot be read, or does not resolve to a path directly inside
            output_dir.
    """
    run_dir = Path(run_dir)
    check_output_dir(output_dir)
    try:
        info = os.lstat(run_dir)  # never follows a link at the run path
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as error:  # a name too long, a folder above that cannot be searched
        raise UserInputError(CANNOT_READ.format(path=run_dir, reason=error.strerror)) from None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise UserInputError(RUN_PATH_IS_LINK.format(path=run_dir))
    try:
        resolved, output = run_dir.resolve(), Path(output_dir).resolve()
    except (OSError, RuntimeError) as error:  # a loop of links above the run path
        raise UserInputError(CANNOT_READ.format(path=run_dir, reason=error)) from None
    if resolved.parent != output or resolved == output:
        raise UserInputError(RUN_PATH_OUTSIDE.format(path=run_dir, resolved=resolved, output=output))
    if info is None:
        return ABSENT
    if not stat.S_ISDIR(info.st_mode):
        raise UserInputError(RUN_PATH_IS_FILE.format(path=run_dir))
    if is_marked(run_dir, marker):
        return MARKED
    try:
        empty = next(run_dir.iterdir(), None) is None
    except OSError as error:
        raise UserInputError(CANNOT_READ.format(path=run_dir, reason=error.strerror)) from None
    return EMPTY if empty else FOREIGN


def refuse_foreign(run_dir: Path) -> UserInputError:
    """The error for a path that is not this tool's (:data:`NOT_OURS`)."""
    return UserInputError(NOT_OURS.format(path=run_dir, marker=MARKER_FILE))


def read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(summary, None)`` for a complete run's summary.json; ``(None, problem)`` when the file is
    there but cannot be trusted; ``(None, None)`` when there is none."""
    path = Path(path)
    if not os.path.lexists(path):
        return None, None
    try:
        summary = json.loads(path.read_text())
    except OSError as error:
        return None, f"cannot be read: {error.strerror or error}"
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        return None, f"not valid JSON: {error}"
    if not isinstance(summary, dict):
        return None, f"a JSON {type(summary).__name__}, not an object"
    missing = [key for key in SUMMARY_REQUIRED_KEYS if key not in summary]
    if missing:
        return None, f"missing {', '.join(missing)}"
    return summary, None


def check_run_entries(run_dir: Path) -> None:
    """Refuse a marked run directory in which a path the tool writes is not what the tool made.

    Each of :data:`RUN_ENTRIES` that exists must be a regular file (the files) or a folder (tb/,
    wandb/, checkpoints/); no symbolic link may sit at any of them or anywhere below tb/ and
    checkpoints/ (inside wandb/ the links are wandb's, which it replaces and never writes through);
    and checkpoints/' own files (:data:`CHECKPOINT_FILES`) must be regular files. Called before a
    run resumes, before a fresh start clears the directory, and so before anything is written.

    Raises:
        UserInputError: :data:`LINK_IN_RUN_DIR` or :data:`ENTRY_WRONG_KIND`, naming the path.
    """
    run_dir = Path(run_dir)
    for name in RUN_ENTRIES:
        expected = "folder" if name in _RUN_FOLDERS else "file"
        _expect(run_dir / name, expected)
        if expected == "folder" and os.path.lexists(run_dir / name):
            if name == WANDB_DIR:
                # wandb's own folder, full of wandb's own links (latest-run, debug.log, a log in
                # its cache): wandb writes each run into a new folder and replaces its links by
                # renaming, never writing through one, and the tool writes nothing in it.
                continue
            for folder, subfolders, files in os.walk(run_dir / name):  # never follows links
                for child in (*subfolders, *files):
                    if os.path.islink(os.path.join(folder, child)):
                        raise UserInputError(LINK_IN_RUN_DIR.format(path=Path(folder) / child))
    for name in CHECKPOINT_FILES:
        _expect(run_dir / CHECKPOINT_DIR / name, "file")


def _expect(path: Path, expected: str) -> None:
    kind = entry_kind(path)
    if kind == "symbolic link":
        raise UserInputError(LINK_IN_RUN_DIR.format(path=path))
    if kind is not None and kind != expected:
        raise UserInputError(ENTRY_WRONG_KIND.format(path=path, kind=kind, expected=expected))


class RunLock:
    """An exclusive lock on a marked directory, held by this process until :meth:`release`.

    ``flock`` on the directory's marker file, opened without following a link and never written.
    The kernel drops the lock when the process ends, however it ends. Two locks on one directory
    conflict within one process too (each is its own open file description).

    Raises:
        UserInputError: :data:`RUN_LOCKED` when another process (or another run of this one)
            holds it.
    """

    def __init__(self, directory: Path, marker: str = MARKER_FILE):
        self.directory = Path(directory)
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.directory / marker,
                         os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:  # removed or replaced since it was inspected
            raise UserInputError(CANNOT_READ.format(path=self.directory / marker,
                                                    reason=error.strerror or error)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserInputError(RUN_LOCKED.format(path=self.directory, marker=marker)) from None
        except OSError:  # a file system without flock (some network mounts): run unlocked
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def lock_run(run_dir: Path) -> RunLock:
    """:class:`RunLock` on a marked run directory."""
    return RunLock(run_dir, MARKER_FILE)


DIFFERENT_CONFIG = ("{path} holds a finished run of a different config (it differs in {changed}); "
                    "returning that run's results. Use --overwrite to train this config there, or "
                    "give it another name.")


@dataclass(frozen=True)
class RunClaim:
    """What :func:`claim_run` found at a run path.

    Attributes:
        state: :func:`inspect_run_path`'s answer (ABSENT, EMPTY or MARKED once claimed).
        lock: this process's lock on a marked directory (None otherwise, and for a finished run).
        finished: the summary of a finished run to return instead of training, else None.
    """

    state: str
    lock: RunLock | None = None
    finished: dict[str, Any] | None = None


def claim_run(run_dir: Path, output_dir: str | Path, *, overwrite: bool,
              changed_keys: Callable[[], list[str]],
              earlier_version: Callable[[dict[str, Any]], bool]) -> RunClaim:
    """Decide what a run may do at ``run_dir``: the one walk of a run path before a run starts.

    Without ``overwrite``, a marked (or, for a run of an earlier version of the tool, unmarked)
    directory holding a complete summary.json is a finished run: its summary is returned (with a
    warning, :data:`DIFFERENT_CONFIG`, when its config.yaml differs from this config in
    ``changed_keys()``). Otherwise a path that is not the tool's is refused, the path must be
    writable, and a marked directory is locked (:func:`lock_run`) and its entries checked
    (:func:`check_run_entries`) before anything of it is read; a broken summary.json is then a
    warning (:data:`SUMMARY_BROKEN`: the run is an interrupted one). The caller releases the lock
    of the returned claim when it does not go on.

    ``changed_keys`` and ``earlier_version`` (whether an unmarked folder's summary is a finished run
    of this config from before the marker) are the caller's, which knows the config.
    """
    state = inspect_run_path(run_dir, output_dir)
    problem = None
    if not overwrite and state in (MARKED, FOREIGN):
        done, problem = read_summary(run_dir / SUMMARY_FILE)
        if done is not None and state == FOREIGN and not earlier_version(done):
            raise refuse_foreign(run_dir)
        if done is not None:
            if changed := changed_keys():
                print("warning: " + DIFFERENT_CONFIG.format(path=run_dir, changed=", ".join(changed)),
                      file=sys.stderr)
            return RunClaim(state, finished=done)
    if state == FOREIGN:
        raise refuse_foreign(run_dir)
    check_writable(run_dir, output_dir, state)
    # One process per run directory (RunLock): a marked one is locked before its checkpoint is
    # read, an absent or empty one as soon as it is made and marked (start_fresh).
    lock = lock_run(run_dir) if state == MARKED else None
    try:
        if state == MARKED:  # every path a resume or a fresh start writes is the tool's
            check_run_entries(run_dir)
            if problem is not None:
                print("warning: " + SUMMARY_BROKEN.format(path=run_dir / SUMMARY_FILE,
                                                          problem=problem), file=sys.stderr)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunClaim(state, lock=lock)


def start_fresh(run_dir: Path, output_dir: str | Path, expected: str | None = None,
                lock: RunLock | None = None) -> tuple[list[Path], RunLock]:
    """Make ``run_dir`` an empty, marked run directory, locked by this process; return the
    folders made for it and the lock.

    The path is inspected here (again: the data may have taken minutes to load since the first
    look), and a path that is not the tool's is refused. A marked directory is cleared
    (:func:`clear_run_directory`), an empty one adopted, a missing one made. ``expected`` is what
    the caller found at its first look: a directory that was absent then and exists now was made
    by another process meanwhile, and is refused rather than cleared. ``lock`` is the caller's
    lock on the directory when it already holds one (a marked directory is locked when first
    seen).

    Raises:
        UserInputError: the path is not the tool's any more, a folder or the marker cannot be
            written (nothing is left behind), a link or a wrong kind of entry sits at one of the
            tool's entry names, or another process holds the directory.
    """
    run_dir = Path(run_dir)
    now = inspect_run_path(run_dir, output_dir)
    if now == FOREIGN:
        raise refuse_foreign(run_dir)
    if expected is not None and now != expected and now != ABSENT:
        raise UserInputError(RUN_LOCKED.format(path=run_dir, marker=MARKER_FILE))
    if now == MARKED:
        lock = lock or lock_run(run_dir)
        clear_run_directory(run_dir)
        return [], lock
    made = make_dirs(run_dir, output_dir) if now == ABSENT else []
    try:
        write_marker(run_dir)
    except OSError as error:
        _remove_made(made)
        raise UserInputError(CANNOT_CREATE.format(output=str(output_dir), path=run_dir / MARKER_FILE,
                                                  reason=error.strerror or error)) from None
    try:
        return made, lock or lock_run(run_dir)
    except UserInputError:
        raise
    except OSError as error:
        raise UserInputError(CANNOT_CREATE.format(output=str(output_dir), path=run_dir / MARKER_FILE,
                                                  reason=error.strerror or error)) from None


def clear_run_directory(run_dir: Path) -> None:
    """Remove the tool's own entries (:data:`RUN_ENTRIES`) from the marked ``run_dir``.

    Nothing else is touched: entries of other names stay, the marker stays, and a link or a wrong
    kind of entry at one of those names (:func:`check_run_entries`), or one that cannot be removed
    (a read-only folder or file system), stops the clearing before anything is removed.
    summary.json goes first, so a clearing that fails half-way anyway leaves an interrupted run.
    """
    run_dir = Path(run_dir)
    if not is_marked(run_dir):  # a bug if it happens: callers inspect first
        raise RuntimeError(f"refusing to clear {run_dir}: it holds no {MARKER_FILE}")
    check_run_entries(run_dir)
    entries = [run_dir / name for name in RUN_ENTRIES if os.path.lexists(run_dir / name)]
    for entry in entries:
        _check_removable(entry)
    root = run_dir.resolve()
    for entry in entries:
        assert entry.resolve().parent == root, entry  # plain names, no links: always inside
        try:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as error:  # what the check could not foresee (root ignores permissions)
            raise UserInputError(CANNOT_CLEAR.format(path=error.filename or entry,
                                                     reason=error.strerror or error)) from None


def _check_removable(entry: Path) -> None:
    """Refuse (:data:`CANNOT_CLEAR`) an entry that cannot be removed: its folder, or for a folder
    any folder inside it, is not writable (``os.access``; a read-only file system fails it for
    root too)."""
    folders = [entry.parent]
    if entry.is_dir():
        folders += [Path(folder) for folder, _, _ in os.walk(entry)]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserInputError(CANNOT_CLEAR.format(path=entry, reason=f"{folder} is not writable"))


def discard_fresh_run(run_dir: Path, made: list[Path], *, keep_directory: bool) -> None:
    """Undo a fresh start after an input error: the tool's entries, then (unless
    ``keep_directory``, an adopted empty folder) the marker and the folders made for the run."""
    run_dir = Path(run_dir)
    if not is_marked(run_dir):
        return
    clear_run_directory(run_dir)
    if next((p for p in run_dir.iterdir() if p.name != MARKER_FILE), None) is not None:
        return  # someone else's file appeared in it: the directory, marker included, stays
    (run_dir / MARKER_FILE).unlink()
    if not keep_directory:
        _remove_made([*made, run_dir] if run_dir not in made else made)


def make_dirs(run_dir: Path, output_dir: str | Path) -> list[Path]:
    """``mkdir -p run_dir``, one folder at a time; return the folders made. On a failure the
    folders made so far are removed again and the error is a :data:`CANNOT_CREATE` one."""
    missing = []
    path = run_dir
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as error:
            _remove_made(made)
            raise UserInputError(CANNOT_CREATE.format(output=str(output_dir), path=path,
                                                      reason=error.strerror or error)) from None
        made.append(path)
    return made


def _remove_made(made: list[Path]) -> None:
    """Remove folders this process made, deepest first, and only while they are empty."""
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:  # not empty any more (someone else's file): it stays
            return
