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

Every point's config is built and checked (the same :func:`utils.config.apply_overrides` and
:func:`utils.config.config_from_mapping` as ``--set`` and the file) before anything runs, so a typo in
``sweep:`` or a point the checks refuse stops the grid with exit status 2 before any training and
without creating a directory. ``--set`` overrides apply to the base, i.e. to every point; a ``--set``
of a swept key is refused, since it would make the points identical.

:func:`run_grid` then runs the points in order. A point that fails (a share the data cannot supply
raises a :class:`~utils.errors.UserInputError` inside ``run``) is recorded and the grid goes on.
Started again, a grid skips its complete points and continues an interrupted one from its last
checkpoint: ``run`` does both, because a point's config is the same every time the file expands
(the same values give the same name and run directory). The grid's directory holds
``grid_status.json`` (:data:`STATUS_FILE`), rewritten atomically after every point: each point's
values, run directory, status (``pending``, ``running``, ``done``, ``skipped``, ``failed``,
``interrupted``) and error, which the report (:mod:`utils.report`) reads to mark failed points.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.config import ExperimentConfig, apply_overrides, config_from_mapping, parse_override, read_yaml
from utils.errors import ConfigError, UserInputError
from utils.sink import SUMMARY_FILE, write_json_atomic

SWEEP_SECTION = "sweep"
ZIP_SECTION = "zip"
GRID_SECTIONS = (SWEEP_SECTION, ZIP_SECTION)
STATUS_FILE = "grid_status.json"

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

# A point's name is a directory name; keep well below the usual 255-byte limit of one path part.
MAX_NAME_LENGTH = 200


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
    """

    point: GridPoint
    status: str
    error: str | None = None
    summary: dict[str, Any] | None = None
    wall_s: float = 0.0


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
            swept key, two points with the same name, or a point whose config fails the checks
            (the message names the point).
    """
    factors = parse_factors(raw)
    keys = tuple(key for factor in factors for key in factor.keys)
    _refuse_overrides_of_swept_keys(list(overrides or []), keys)
    base = apply_overrides({k: v for k, v in raw.items() if k not in GRID_SECTIONS},
                           list(overrides or []))
    short = short_names(keys)

    points: list[GridPoint] = []
    seen: dict[str, dict[str, Any]] = {}
    grid_name = grid_dir = None
    for combination in itertools.product(*(factor.rows for factor in factors)):
        values = {key: value for factor, row in zip(factors, combination)
                  for key, value in zip(factor.keys, row)}
        config = _point_config(base, values, factors)
        label = ",".join(f"{short[key]}={format_value(_get_dotted(config, key))}" for key in keys)
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


def run_grid(grid: Grid, *, overwrite: bool = False) -> list[PointResult]:
    """Run every point of ``grid`` in order; a failing point is recorded and the others still run.

    One line per point goes to stdout; a failure's ``error: ...`` line (and a bug's traceback) to
    stderr. The status file is rewritten before and after every point, so it always tells which
    points are complete, which failed and why, and which one an interruption (Ctrl-C) stopped.

    Args:
        grid: from :func:`expand_grid` / :func:`load_grid`.
        overwrite: train points again even when complete (``--overwrite``).

    Returns:
        One :class:`PointResult` per point, in running order.
    """
    from training.experiment import run  # torch is loaded only when something trains

    grid.directory.mkdir(parents=True, exist_ok=True)
    entries = [_status_entry(point, "pending") for point in grid.points]
    results: list[PointResult] = []
    total = len(grid.points)
    for index, point in enumerate(grid.points):
        entries[index] = _status_entry(point, "running")
        _write_status(grid, entries)
        started = time.perf_counter()
        try:
            summary = run(point.config, overwrite=overwrite)
        except UserInputError as error:  # the user's to fix, e.g. a share the data cannot supply
            result = PointResult(point, "failed", error=str(error))
        except Exception as error:  # a bug: keep its traceback, but let the other points run
            traceback.print_exc()
            result = PointResult(point, "failed", error=f"{type(error).__name__}: {error}")
        except BaseException:
            entries[index] = _status_entry(point, "interrupted")
            _write_status(grid, entries)
            raise
        else:
            result = PointResult(point, "skipped" if summary.get("skipped") else "done",
                                 summary=summary)
        result = dataclasses.replace(result, wall_s=time.perf_counter() - started)
        results.append(result)
        entries[index] = _status_entry(point, result.status, result.error, result.wall_s)
        _write_status(grid, entries)
        print(f"[{index + 1}/{total}] {_result_line(result)}", flush=True)
        if result.error is not None:
            print(f"error: grid point {point.label}: {result.error}", file=sys.stderr, flush=True)
    return results


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
    try:
        return config_from_mapping(raw)
    except ConfigError as error:
        point = ", ".join(f"{key}={value!r}" for key, value in values.items())
        raise ConfigError(f"grid point ({point}): {error}") from None


def _get_dotted(config: ExperimentConfig, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), config)


def _check_label(label: str, values: dict[str, Any], seen: dict[str, dict[str, Any]]) -> None:
    # Case-insensitive, since on macOS' and Windows' file systems "mode=A" and "mode=a" are one folder.
    folded = label.lower()
    if folded in seen:
        raise ConfigError(f"grid points {seen[folded]} and {values} get the same run directory "
                          f"{label!r}; make the swept values distinct (a value repeated in a list?).")
    if len(label) > MAX_NAME_LENGTH:
        raise ConfigError(f"grid point {values}: its directory name has {len(label)} characters "
                          f"(at most {MAX_NAME_LENGTH}); sweep fewer keys or shorter values.")
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


def _result_line(result: PointResult) -> str:
    label = result.point.label
    if result.status == "failed":
        return f"{label}: FAILED after {result.wall_s:.1f} s (error on stderr)"
    if result.status == "skipped":
        return f"{label}: already complete, skipped"
    summary = result.summary or {}
    facts = [f"{key} {summary[key]:.4g}" for key in ("test/accuracy", "privacy/epsilon")
             if isinstance(summary.get(key), (int, float))]
    return f"{label}: done in {result.wall_s:.1f} s" + (f" ({', '.join(facts)})" if facts else "")
