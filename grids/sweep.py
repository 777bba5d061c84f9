"""Experiment grids: one YAML file, many ordinary runs, resumable point by point.

A params file becomes a grid when it holds a ``sweep:`` or a ``zip:`` section next to the usual
config sections (which are the base every point starts from)::

    name: paper_adult                         # the grid's name: runs go to {output_dir}/paper_adult/
    sweep:                                    # each key is one factor of a product
      data.minority_share: [0.3, 0.1, 0.01]
      seed: [0, 1, 2]
    zip:                                      # keys that move together: one factor, not a product
      privacy.mode: [none, dpsgd, dpsgd]
      privacy.noise_multiplier: [null, 1.35, 0.6]

``zip:`` may also be a list of such groups, each one more factor. The grid is the product of all
factors, here 3 shares x 3 privacy levels x 3 seeds = 27 points. Factors are taken in the order the
file writes them, except that the factor holding ``seed`` is always last: the seeds of one setting
run one after the other, so an interrupted grid leaves whole settings rather than scattered seeds,
and seeds sit next to each other in a directory listing.

Every point is an ordinary run (:func:`training.experiment.run`) with its own run directory,
``{output_dir}/{grid name}/{point}``, where ``{point}`` spells the point's values, e.g.
``share=0.1,mode=dpsgd,noise=0.7,seed=0``: the point's ``name`` is that string and its
``output_dir`` is the grid's directory, so the single-run contract (``{output_dir}/{name}``, complete
when ``summary.json`` exists) holds unchanged for each point. Keys are shortened to the short names
of :data:`SHORT_NAMES` (else the last part of the dotted key) unless two keys would then read alike,
and values are written so that a name only uses the characters a config ``name`` allows.

Every point's config is built and checked (the same :func:`utils.loader.apply_overrides`,
:func:`utils.config.config_from_mapping` and :func:`training.validation.validate` as ``--set`` and
the file) before anything runs, so a typo in
``sweep:`` or a point the checks refuse stops the grid with exit status 2 before any training and
without creating a directory. ``--set`` overrides apply to the base, i.e. to every point; a ``--set``
of a swept key is refused, since it would make the points identical.

:func:`run_grid` then runs the points, by default in order in this process (``--backend ray`` runs
them as Ray tasks instead, :func:`ray_executor`). A point that fails (a share the data cannot supply
raises a :class:`~utils.errors.UserInputError` inside ``run``) is recorded and the grid goes on.
Started again, a grid skips its complete points and continues an interrupted one from its last
checkpoint: ``run`` does both, because a point's config is the same every time the file expands
(the same values give the same name and run directory). The grid's directory holds
``grid_status.json`` (:data:`STATUS_FILE`), rewritten atomically after every point: each point's
values, run directory, status (``pending``, ``running``, ``done``, ``skipped``, ``failed``,
``interrupted``) and error, which the report (:mod:`grids.report`) reads to mark failed points.

The grid's directory is the tool's only with its marker (:data:`GRID_MARKER`, like a run
directory's; :func:`open_grid_directory`), and a running grid holds its lock, so a second process on
the same grid is refused. A grid is capped (:data:`MAX_GRID_COMBINATIONS`, :data:`MAX_GRID_POINTS`)
and refused before anything is expanded: a sweep of a million points costs nothing to refuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.config import NAME_MAX_BYTES, ExperimentConfig, config_from_mapping
from utils.errors import ConfigError, UserInputError, describe_fault, warn_user
from utils.legacy import moved_key, translate_moved
from utils.loader import apply_overrides, parse_override, read_yaml
from utils.rundir import (
    ABSENT,
    CANNOT_CREATE,
    FOREIGN,
    MARKED,
    OUTPUT_DIR_NOT_A_DIRECTORY,
    RunLock,
    inspect_run_path,
    make_dirs,
    read_json_object,
    write_marker,
)
from utils.sink import SUMMARY_FILE, entry_kind, write_json_atomic

SWEEP_SECTION = "sweep"
ZIP_SECTION = "zip"
GRID_SECTIONS = (SWEEP_SECTION, ZIP_SECTION)
STATUS_FILE = "grid_status.json"
GRID_MARKER = ".dp-fairness-grid"
"""A grid directory's marker (JSON naming the tool, like a run directory's), written when the tool
makes or adopts it; the lock of a running grid is held on it."""
MAX_GRID_COMBINATIONS = 100_000
"""The most combinations a grid's factors may multiply out to (before points that differ only in
another repair method's settings are merged): refused at once, before anything is expanded."""
MAX_GRID_POINTS = 10_000
"""The most runs (distinct points) a grid may hold: each is a training run with its own directory,
and checking this many configs already takes seconds. Split a larger study into several files."""
GRID_TOO_LARGE = ("the grid has {count:,} {what} ({spelled}), more than the {limit:,} this tool "
                  "expands; nothing was run or written. Sweep fewer values, or split the study "
                  "into several grid files (each with its own name).")
GRID_NOT_OURS = ("{path} exists and is not a grid directory of this tool (it has no {marker} "
                 "marker and no grid status file); it is left untouched. Give the grid another name "
                 "(--set name=...) or another output_dir, or move {path} away.")
GRID_PATH_IS_LINK = ("the grid directory {path} is a symbolic link; links are never followed. Give "
                     "the grid another name (--set name=...) or replace the link by the directory.")
SEED_IN_POINT_NAMES = ("logging.private_stats: false leaves the seed out of each run's records, but "
                       "this grid sweeps seed, so every point's name (its run directory, the name in "
                       "config.yaml and summary.json, wandb's run name) spells its seed. Sweep seeds "
                       "in separate grid files (seed set in each) to keep them out of the records.")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

SHORT_NAMES: dict[str, str] = {
    "data.minority_share": "share",
    "data.train_size": "n",
    "privacy.mode": "mode",
    "privacy.noise_multiplier": "noise",
    "privacy.target_epsilon": "eps",
    "privacy.max_grad_norm": "clip",
    "training.batch_size": "batch",
    "training.lr": "lr",
    "training.epochs": "epochs",
    "fairness.method": "fairness",
    "model.name": "model",
    "data.name": "data",
}
"""Short names of common swept keys in point names; any other key is written as its last part."""

# The grid itself decides these for every point (see the module docstring).
GRID_OWNED_KEYS = ("name", "output_dir")

# A point's name is a directory name, checked by the rule of every run name (utils.config:
# NAME_MAX_BYTES, well below the usual 255-byte limit of one path part); this message says which
# point made it too long.
MAX_NAME_LENGTH = NAME_MAX_BYTES


@dataclass(frozen=True)
class Factor:
    """One factor of the grid's product: a single swept key, or a zip group of keys.

    Attributes:
        section: where the file declares it ("sweep" or "zip"), for error messages.
        keys: the dotted keys that move together (one key for a ``sweep:`` entry).
        rows: the factor's levels; each row holds one value per key, in the order of ``keys``.
    """

    section: str
    keys: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: the swept values and the checked config that runs them.

    Attributes:
        values: the swept values of this point, by dotted key, as the file writes them.
        label: the point's directory name (also its config ``name``).
        config: the point's full config; its run directory is ``{output_dir}/{name}``.
    """

    values: dict[str, Any]
    label: str
    config: ExperimentConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir) / self.config.name


@dataclass(frozen=True)
class Grid:
    """A grid of runs: its name, its directory and its points in the order they run.

    Attributes:
        name: the grid's name (the base config's ``name``); also the wandb group of every point.
        directory: ``{output_dir}/{name}``, holding one run directory per point and the status file.
        keys: the swept dotted keys, in the order point names spell them.
        points: every point, in running order.
        source: the params file the grid came from (recorded in the status file).
    """

    name: str
    directory: Path
    keys: tuple[str, ...]
    points: tuple[GridPoint, ...]
    source: str = ""


@dataclass(frozen=True)
class PointResult:
    """What became of one point when the grid ran.

    Attributes:
        point: the grid point.
        status: "done" (trained now), "skipped" (already complete) or "failed".
        error: the failure's message (None unless failed).
        summary: the run's summary (None when failed).
        wall_s: seconds this point took in this invocation.
        traceback: a bug's traceback (None for an input error), printed by :func:`run_grid`.
    """

    point: GridPoint
    status: str
    error: str | None = None
    summary: dict[str, Any] | None = None
    wall_s: float = 0.0
    traceback: str | None = None


Executor = Callable[[Sequence[GridPoint], bool], Generator[tuple[int, "PointResult | None"], None, None]]
"""How a grid's points run: a generator function that, called with the points and ``overwrite``,
yields ``(index, None)`` when the point at ``index`` starts and ``(index, result)`` when it ends, in
any order, every point ending once. :func:`run_grid` keeps the status file from these events alone,
so backends differ only in where and how many points run at a time."""


def is_grid(raw: Mapping[str, Any]) -> bool:
    """Whether a raw params mapping describes a grid (holds ``sweep:`` or ``zip:``)."""
    return any(section in raw for section in GRID_SECTIONS)


def load_grid(path: str | Path, overrides: list[str] | None = None) -> Grid | None:
    """The grid of a params file with every point checked, or None for a single-run file."""
    raw = read_yaml(path)
    if not is_grid(raw):
        return None
    return expand_grid(raw, overrides, source=str(path))


def expand_grid(raw: Mapping[str, Any], overrides: list[str] | None = None, *,
                source: str = "") -> Grid:
    """Expand a grid mapping into its points, building and checking every point's config.

    Args:
        raw: a params mapping with a ``sweep:`` and/or ``zip:`` section; the other sections are the
            base config of every point.
        overrides: ``--set KEY=VALUE`` strings applied to the base (hence to every point).
        source: where ``raw`` came from, recorded in the status file.

    Raises:
        ConfigError: a malformed section (not a mapping of lists, an empty list, zip lists of
            unequal lengths), an unknown or grid-owned swept key, a key swept twice, a ``--set`` of a
            swept key, two points with the same name, a point whose config fails the checks
            (the message names the point), or a grid larger than :data:`MAX_GRID_COMBINATIONS`
            combinations or :data:`MAX_GRID_POINTS` runs (:data:`GRID_TOO_LARGE`).
    """
    factors = parse_factors(raw)
    spelled = " x ".join(f"{len(factor.rows)} {'/'.join(factor.keys)}" for factor in factors)
    combinations = math.prod(len(factor.rows) for factor in factors)
    if combinations > MAX_GRID_COMBINATIONS:  # refused before anything is built
        raise ConfigError(GRID_TOO_LARGE.format(count=combinations, what="combinations",
                                                spelled=spelled, limit=MAX_GRID_COMBINATIONS))
    keys = tuple(key for factor in factors for key in factor.keys)
    _refuse_overrides_of_swept_keys(list(overrides or []), keys)
    # Old spellings of moved keys (data.image_size) read at their new place, as load_config does.
    base = apply_overrides(translate_moved({k: v for k, v in raw.items() if k not in GRID_SECTIONS})[0],
                           list(overrides or []))
    short = short_names(keys)

    points: list[GridPoint] = []
    seen: dict[str, dict[str, Any]] = {}
    grid_name = grid_dir = None
    base_method = (base.get("fairness") or {}).get("method", "none") \
        if isinstance(base.get("fairness"), dict) else "none"
    runs: set[tuple] = set()
    distinct: list[dict[str, Any]] = []
    for combination in itertools.product(*(factor.rows for factor in factors)):
        values = {key: value for factor, row in zip(factors, combination)
                  for key, value in zip(factor.keys, row)}
        # A point reads only its own method's settings: points that differ only in another
        # method's (a product of several methods' λ lists) are one run, kept once. Decided before
        # the config is built, which is the slow part of a large product.
        method = values.get("fairness.method", base_method)
        run = tuple((key, repr(value)) for key, value in values.items()
                    if not _other_methods_setting(key, method))
        if run in runs and any(_other_methods_setting(key, method) for key in values):
            continue
        runs.add(run)
        distinct.append(values)
    if len(distinct) > MAX_GRID_POINTS:
        raise ConfigError(GRID_TOO_LARGE.format(count=len(distinct), what="runs", spelled=spelled,
                                                limit=MAX_GRID_POINTS))
    for values in distinct:
        config = _point_config(base, values, factors)
        used = {key: value for key in keys if (value := _get_dotted(config, key)) is not _UNUSED}
        label = ",".join(f"{short[key]}={format_value(value)}" for key, value in used.items())
        _check_label(label, values, seen)
        grid_name, grid_dir = config.name, Path(config.output_dir) / config.name
        wandb = config.logging.wandb
        config = dataclasses.replace(
            config, name=label, output_dir=str(grid_dir),
            # Grouping puts a grid's runs side by side in wandb; an explicit group is kept.
            logging=dataclasses.replace(config.logging, wandb=dataclasses.replace(
                wandb, group=wandb.group if wandb.group is not None else grid_name)))
        config.validate()
        points.append(GridPoint(values=values, label=label, config=config))
    if "seed" in keys and any(not point.config.logging.private_stats for point in points):
        warn_user(SEED_IN_POINT_NAMES)
    return Grid(name=grid_name, directory=grid_dir, keys=keys, points=tuple(points), source=source)


def parse_factors(raw: Mapping[str, Any]) -> list[Factor]:
    """The grid's factors in the file's order, the one holding ``seed`` moved last.

    Only the shape is checked here (mappings of non-empty lists, equal zip lengths, each key once,
    no grid-owned key); whether a key exists is checked when the points' configs are built.
    """
    factors: list[Factor] = []
    for section in (key for key in raw if key in GRID_SECTIONS):
        body = raw[section]
        if section == SWEEP_SECTION:
            mapping = _section_mapping(body, section)
            factors += [Factor(section, (key,), tuple((value,) for value in
                                                      _values_list(values, f"{section}.{key}")))
                        for key, values in mapping.items()]
        else:
            groups = body if isinstance(body, list) else [body]
            for index, group in enumerate(groups):
                where = f"{section}[{index}]" if isinstance(body, list) else section
                factors.append(_zip_factor(_section_mapping(group, where), where))
    if not factors:
        raise ConfigError("the grid sweeps nothing: give sweep: and/or zip: at least one key with a "
                          "list of values, e.g. sweep: {seed: [0, 1, 2]}.")

    declared: dict[str, str] = {}
    for factor in factors:
        for key in factor.keys:
            if key in declared:
                raise ConfigError(f"{factor.section}: '{key}' is already swept in {declared[key]}; "
                                  f"sweep each key once (put keys that move together in one zip group).")
            if key in GRID_OWNED_KEYS:
                raise ConfigError(f"{factor.section}: '{key}' cannot be swept: the grid names each point "
                                  f"and puts it under {{output_dir}}/{{name}}. Sweep other keys.")
            declared[key] = factor.section
    # The seed factor runs innermost (see the module docstring); sorted() is stable.
    return sorted(factors, key=lambda factor: "seed" in factor.keys)


def short_names(keys: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The name each dotted key has in point names and report columns, unique among ``keys``.

    A key gets its entry in :data:`SHORT_NAMES`, else the last part of the dotted key; keys whose
    short names would collide (``privacy.mode`` and ``fairness.mode``) keep their full dotted key.
    """
    wanted = {key: SHORT_NAMES.get(key, key.rsplit(".", 1)[-1]) for key in keys}
    taken = list(wanted.values())
    return {key: name if taken.count(name) == 1 else key for key, name in wanted.items()}


def format_value(value: Any) -> str:
    """A value as it appears in a point's name: stable, short, and safe in a directory name.

    Floats use Python's shortest round-trip form (``0.001``, ``1e-05``), so the same number always
    gives the same name; None is ``none``; lists join their items with ``+`` (``[200, 100]`` ->
    ``200+100``); booleans are ``true``/``false``; other characters than letters, digits and
    ``. _ + -`` (``=`` and ``,`` separate the parts of a name) become ``_``.
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(item) for item in value)
    return re.sub(r"[^\w.+-]", "_", str(value))


def describe(grid: Grid) -> list[str]:
    """The dry-run listing: a header line, then one line per point with its run directory."""
    done = [(point.run_dir / SUMMARY_FILE).is_file() for point in grid.points]
    lines = [f"grid {grid.name}: {len(grid.points)} points in {grid.directory} "
             f"({sum(done)} already complete)"]
    width = len(str(len(grid.points)))
    for index, (point, complete) in enumerate(zip(grid.points, done), 1):
        lines.append(f"{index:>{width}}/{len(grid.points)}  {point.run_dir}"
                     + ("  (complete)" if complete else ""))
    return lines


def run_grid(grid: Grid, *, overwrite: bool = False,
             executor: Executor | None = None) -> list[PointResult]:
    """Run every point of ``grid``; a failing point is recorded and the others still run.

    One line per point goes to stdout as it finishes; a failure's ``error: ...`` line (and a bug's
    traceback) to stderr. The status file is rewritten whenever a point starts or finishes, so it
    always tells which points are complete, which failed and why, and which ones an interruption
    (Ctrl-C) stopped. This bookkeeping is the same whatever ``executor`` runs the points.

    Args:
        grid: from :func:`expand_grid` / :func:`load_grid`.
        overwrite: train points again even when complete (``--overwrite``).
        executor: how the points run (see :data:`Executor`); :func:`run_in_process` (one after the
            other, in this process) by default, or :func:`ray_executor`.

    Returns:
        One :class:`PointResult` per point, in the grid's order.
    """
    lock = open_grid_directory(grid)
    try:
        return _run_points(grid, overwrite=overwrite, executor=executor)
    finally:
        lock.release()


def open_grid_directory(grid: Grid) -> RunLock:
    """Make, adopt or reuse the grid's directory, and lock it for this process.

    Like a run's directory (utils.rundir), it is the tool's only with its marker
    (:data:`GRID_MARKER`): a missing directory is made and marked, an empty one adopted, a marked
    one used; an unmarked folder is adopted only when it holds this tool's grid status file (a grid
    run before the marker existed); a link, a file or another unmarked folder is an error that
    writes nothing. An output_dir that is, or lies under, a file, or a folder that cannot be made
    is an input error with one line, before any point runs. The lock (:class:`RunLock` on the
    marker) keeps a second process off the same grid.
    """
    directory, output = grid.directory, grid.directory.parent
    kind = entry_kind(directory)
    if kind == "symbolic link":
        raise UserInputError(GRID_PATH_IS_LINK.format(path=directory))
    if kind not in (None, "folder"):
        raise UserInputError(OUTPUT_DIR_NOT_A_DIRECTORY.format(output=str(output), blocker=directory))
    state = inspect_run_path(directory, output, marker=GRID_MARKER)
    status = directory / STATUS_FILE
    if os.path.lexists(status) and not is_status_file(status):
        # A file of that name the tool did not write (a user's folder named like the grid).
        raise UserInputError(STATUS_NOT_OURS.format(path=status))
    if state == FOREIGN and not os.path.lexists(status):
        raise UserInputError(GRID_NOT_OURS.format(path=directory, marker=GRID_MARKER))
    made = make_dirs(directory, output) if state == ABSENT else []
    if state != MARKED:
        try:
            write_marker(directory, GRID_MARKER)
        except OSError as error:
            for folder in reversed(made):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise UserInputError(CANNOT_CREATE.format(output=str(output), path=directory / GRID_MARKER,
                                                      reason=error.strerror or error)) from None
    return RunLock(directory, GRID_MARKER)


def _run_points(grid: Grid, *, overwrite: bool, executor: Executor | None) -> list[PointResult]:
    """:func:`run_grid` in its opened, locked directory."""
    entries = [_status_entry(point, "pending") for point in grid.points]
    results: dict[int, PointResult] = {}
    total = len(grid.points)
    events = (executor or run_in_process)(grid.points, overwrite)
    try:
        # closing(): whatever stops this loop ends the executor at once (a Ray one cancels its tasks).
        with contextlib.closing(events):
            for index, result in events:
                point = grid.points[index]
                if result is None:
                    entries[index] = _status_entry(point, "running")
                    _write_status(grid, entries)
                    continue
                results[index] = result
                entries[index] = _status_entry(point, result.status, result.error, result.wall_s)
                _write_status(grid, entries)
                print(f"[{len(results)}/{total}] {_result_line(result)}", flush=True)
                if result.traceback is not None:
                    print(result.traceback, end="", file=sys.stderr, flush=True)
                if result.error is not None:
                    print(f"error: grid point {point.label}: {result.error}", file=sys.stderr, flush=True)
    except BaseException:
        entries = [_status_entry(grid.points[i], "interrupted") if entry["status"] == "running"
                   else entry for i, entry in enumerate(entries)]
        _write_status(grid, entries)
        raise
    return [results[index] for index in sorted(results)]


def run_in_process(points: Sequence[GridPoint], overwrite: bool) -> Generator[tuple[int, PointResult | None], None, None]:
    """The default :data:`Executor`: the points one after the other, in this process."""
    for index, point in enumerate(points):
        yield index, None
        yield index, run_point(point, overwrite)


def run_point(point: GridPoint, overwrite: bool = False) -> PointResult:
    """Run one point (:func:`training.experiment.run`) and say what became of it.

    A :class:`~utils.errors.UserInputError` (a share the data cannot supply) and a bug alike become a
    ``failed`` result, a bug with its traceback, so that one point cannot stop the grid; Ctrl-C and
    other ``BaseException`` still propagate. Executors call this wherever the point runs (a Ray worker
    included), so a point's outcome is decided the same way by every backend.
    """
    from training.experiment import run  # torch is loaded only when something trains

    started = time.perf_counter()
    try:
        outcome = run(point.config, overwrite=overwrite)
    except Exception as error:  # noqa: BLE001 - decided by point_result
        outcome = error
    return point_result(point, outcome, time.perf_counter() - started)


def point_result(point: GridPoint, outcome: dict[str, Any] | Exception, wall_s: float,
                 ) -> PointResult:
    """A point's result from its run's summary or the exception that stopped it (an input error
    or a fault of the machine, :func:`utils.errors.describe_fault`, is the user's to fix; anything
    else is a bug, kept with its traceback)."""
    if isinstance(outcome, UserInputError):
        return PointResult(point, "failed", error=str(outcome), wall_s=wall_s)
    if isinstance(outcome, Exception) and (fault := describe_fault(outcome)) is not None:
        # The machine refused (a full disk, memory): the user's to fix, like an input error.
        return PointResult(point, "failed", error=fault, wall_s=wall_s)
    if isinstance(outcome, Exception):
        trace = "".join(traceback.format_exception(outcome))
        return PointResult(point, "failed", error=f"{type(outcome).__name__}: {outcome}",
                           traceback=trace, wall_s=wall_s)
    return PointResult(point, "skipped" if outcome.get("skipped") else "done", summary=outcome,
                       wall_s=wall_s)


def stacked_executor(size: int) -> Executor:
    """An :data:`Executor` that trains up to ``size`` points at a time as one batched computation
    (``--stack K``, :mod:`training.stacking`): points that differ only in
    :data:`training.stacking.STACKED_KEYS` share a stack; any other point runs on its own. Each
    point keeps its own run directory, streams and accountant; a stack's points start together and
    end together (each with the stack's wall time)."""

    def execute(points: Sequence[GridPoint], overwrite: bool) -> Generator[tuple[int, PointResult | None], None, None]:
        from training.stacking import plan_stacks, run_stacked

        for stack in plan_stacks([point.config for point in points], size):
            if len(stack) == 1:
                yield stack[0], None
                yield stack[0], run_point(points[stack[0]], overwrite)
                continue
            for index in stack:
                yield index, None
            started = time.perf_counter()
            outcomes = run_stacked([points[index].config for index in stack], overwrite=overwrite)
            wall_s = time.perf_counter() - started
            for index, outcome in zip(stack, outcomes):
                yield index, point_result(points[index], outcome, wall_s)

    return execute


def ray_executor(address: str | None = None, gpus_per_run: float | None = None) -> Executor:
    """An :data:`Executor` that runs every point as a Ray task, as many at a time as Ray has room.

    Each task runs :func:`run_point` in a Ray worker, so a point writes the same run directory, and
    fails the same way, as in process. Workers import this project through ``PYTHONPATH`` set to the
    repository root (a local Ray's workers do not see the driver's ``sys.path``) and work in the
    driver's current directory, so relative paths in a config mean the same; on a cluster the
    repository and the grid's ``output_dir`` must therefore be on a file system shared at the same
    paths by every node.

    Args:
        address: a running Ray cluster (``auto``, ``ray://host:10001``); None starts Ray on this
            machine only (its CPUs, no dashboard) unless Ray is already initialised in this process.
        gpus_per_run: GPUs each point gets (0.5 puts two points on a GPU); None gives 1 when the
            cluster has GPUs and 0 otherwise.

    Raises:
        UserInputError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise UserInputError("--backend ray needs Ray: pip install -r requirements-ray.txt") from None

    def execute(points: Sequence[GridPoint], overwrite: bool) -> Generator[tuple[int, PointResult | None], None, None]:
        started_here = not ray.is_initialized()
        if started_here and address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        elif started_here:
            ray.init(address=address, log_to_driver=False)
        pending: dict[Any, int] = {}
        try:
            gpus = gpus_per_run if gpus_per_run is not None else (
                1 if ray.cluster_resources().get("GPU", 0) > 0 else 0)
            path = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
            task = ray.remote(_run_point_in).options(
                num_cpus=1, num_gpus=gpus, runtime_env={"env_vars": {"PYTHONPATH": path}})
            for index, point in enumerate(points):
                pending[task.remote(_absolute(point), overwrite, os.getcwd())] = index
                yield index, None
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as error:  # the worker died (out of memory, a node lost)
                    result = PointResult(points[index], "failed", error=f"{type(error).__name__}: {error}")
                yield index, dataclasses.replace(result, point=points[index])
        finally:
            for ref in pending:  # interrupted: points still queued or running must not go on
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    return execute


STATUS_NOT_OURS = ("{path} exists and is not a grid status file of this tool; it is left "
                   "untouched. Give the grid another name (--set name=...) or another output_dir, "
                   "or move the file away.")


def is_status_file(path: Path) -> bool:
    """Whether ``path`` is a status file this tool wrote: a regular file (not a link) holding a
    JSON object with the keys :func:`_write_status` writes."""
    payload = read_json_object(path)
    return payload is not None and {"grid", "points", "updated_at"} <= payload.keys()


def read_status(directory: str | Path) -> dict[str, Any] | None:
    """The status file of a grid directory, or None when there is none."""
    path = Path(directory) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# Helpers


def _section_mapping(body: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping) or not body:
        raise ConfigError(f"{where}: expected a mapping of dotted keys to lists of values, e.g. "
                          f"{{data.minority_share: [0.3, 0.1], seed: [0, 1, 2]}}; got {body!r}.")
    return body


def _values_list(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: got {values!r}; expected a non-empty list of values, "
                          f"e.g. [0, 1, 2] (a single value belongs in the config sections).")
    for value in values:
        if isinstance(value, Mapping):
            raise ConfigError(f"{where}: got the mapping {value!r}; sweep the section's keys "
                              f"one by one (e.g. privacy.mode) instead of the whole section.")
    return values


def _zip_factor(mapping: Mapping[str, Any], where: str) -> Factor:
    columns = {key: _values_list(values, f"{where}.{key}") for key, values in mapping.items()}
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        spelled = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise ConfigError(f"{where}: the lists of a zip group move together and need equal lengths; "
                          f"{spelled}. Give every key of the group one value per level.")
    return Factor(ZIP_SECTION, tuple(columns), tuple(zip(*columns.values())))


def _refuse_overrides_of_swept_keys(overrides: list[str], keys: tuple[str, ...]) -> None:
    for text in overrides:
        path = ".".join(parse_override(text)[0])
        for key in keys:
            # Also a section containing a swept key (--set privacy={...}) or a part of a swept list.
            if path == key or key.startswith(path + ".") or path.startswith(key + "."):
                raise ConfigError(f"--set {text!r}: '{key}' is swept by the grid, so the override "
                                  f"would make its points identical. Change its list in the file, "
                                  f"or run a single point with a params file without {key}.")


def _point_config(base: dict[str, Any], values: dict[str, Any],
                  factors: list[Factor]) -> ExperimentConfig:
    """The base with one point's values applied, built and checked like a file with ``--set``."""
    section_of = {key: factor.section for factor in factors for key in factor.keys}
    raw = base
    for key, value in values.items():
        # Through apply_overrides so a swept key passes exactly the checks of --set (unknown keys
        # are named with the closest valid one); YAML text round-trips every YAML value exactly.
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
        try:
            raw = apply_overrides(raw, [f"{key}={text}"])
        except ConfigError as error:
            raise ConfigError(f"{section_of[key]}: {error}") from None
    # Imported here so that running.py's --help and YAML errors answer without loading torch.
    from training.validation import validate

    try:
        return validate(config_from_mapping(raw))
    except ConfigError as error:
        point = ", ".join(f"{key}={value!r}" for key, value in values.items())
        raise ConfigError(f"grid point ({point}): {error}") from None


_UNUSED = object()  # a swept key of a repair method this point does not run


def _get_dotted(config: ExperimentConfig, key: str) -> Any:
    """The value of a dotted key in ``config``; ``fairness.<method>.<key>`` reads the method's
    settings, and is :data:`_UNUSED` at a point that runs another method (the grid sweeps several
    methods' settings side by side); ``data.<name>.<key>`` likewise reads the data set's own
    settings (an old spelling such as ``data.image_size`` is read at its new place)."""
    parts = moved_key(key).split(".")
    if parts[0] == "fairness" and len(parts) > 2:
        if parts[1] != config.fairness.method:
            return _UNUSED
        return functools.reduce(getattr, parts[2:], config.fairness.resolved_settings())
    if parts[0] == "data" and len(parts) > 2:
        if parts[1] != config.data.name or config.data.settings is None:
            return _UNUSED
        return functools.reduce(getattr, parts[2:], config.data.settings)
    return functools.reduce(getattr, parts, config)


def _other_methods_setting(key: str, method: Any) -> bool:
    """Whether ``key`` is a setting of a repair method other than ``method``
    (``fairness.<name>.<setting>`` with another name)."""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "fairness" and parts[1] != method


def _check_label(label: str, values: dict[str, Any], seen: dict[str, dict[str, Any]]) -> None:
    # Case-insensitive, since on macOS' and Windows' file systems "mode=A" and "mode=a" are one folder.
    folded = label.lower()
    if folded in seen:
        raise ConfigError(f"grid points {seen[folded]} and {values} get the same run directory "
                          f"{label!r}; make the swept values distinct (a value repeated in a list?).")
    if len(label.encode("utf-8")) > MAX_NAME_LENGTH:
        raise ConfigError(f"grid point {values}: its directory name has {len(label.encode('utf-8'))} "
                          f"bytes (at most {MAX_NAME_LENGTH}); sweep fewer keys or shorter values.")
    seen[folded] = values


def _status_entry(point: GridPoint, status: str, error: str | None = None,
                  wall_s: float | None = None) -> dict[str, Any]:
    return {"label": point.label, "run_dir": str(point.run_dir), "values": point.values,
            "status": status, "error": error, "wall_s": wall_s}


def _write_status(grid: Grid, entries: list[dict[str, Any]]) -> None:
    counts = {status: sum(entry["status"] == status for entry in entries)
              for status in ("done", "skipped", "failed", "running", "pending", "interrupted")}
    write_json_atomic(grid.directory / STATUS_FILE, {
        "grid": grid.name, "params": grid.source, "keys": list(grid.keys),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {status: n for status, n in counts.items() if n}, "points": entries})


def _absolute(point: GridPoint) -> GridPoint:
    # A worker may start in another directory (or on another node): give it an absolute output_dir.
    config = dataclasses.replace(point.config, output_dir=str(Path(point.config.output_dir).resolve()))
    return dataclasses.replace(point, config=config)


def _run_point_in(point: GridPoint, overwrite: bool, cwd: str) -> PointResult:
    """:func:`run_point` in ``cwd`` (the driver's directory, when this node has it): a Ray task."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    return run_point(point, overwrite)


def _result_line(result: PointResult) -> str:
    label = result.point.label
    if result.status == "failed":
        return f"{label}: FAILED after {result.wall_s:.1f} s (error on stderr)"
    if result.status == "skipped":
        return f"{label}: already complete, skipped"
    summary = result.summary or {}
    facts = [f"{key} {summary[key]:.4g}" for key in ("test/accuracy", "privacy/epsilon")
             if isinstance(summary.get(key), (int, float))]
    if summary.get("test/constant_prediction"):  # its gaps say nothing: say so where it is seen
        facts.append("CONSTANT CLASSIFIER")
    return f"{label}: done in {result.wall_s:.1f} s" + (f" ({', '.join(facts)})" if facts else "")
