"""A grid's runs read back from disk, grouped into points: the report's input.

:func:`load_runs` reads every immediate subdirectory of a runs directory holding ``config.yaml`` (a
run directory; a grid puts one per point there, see :mod:`grids.sweep`), its ``summary.json`` when
the run finished, and the grid's status file; :func:`group_points` makes the points (runs equal but
for the seed) in report order. Also the summary keys every view reads, the privacy level that
names and orders points (:func:`series_label`), and how values are written in report.csv and
report.md's cells.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grids.sweep import STATUS_FILE, read_status, short_names
from utils.config import PROVENANCE_KEY
from utils.fairness import CONSTANT_PREDICTION, GROUPS, group_key
from utils.rundir import read_summary
from utils.sink import CONFIG_FILE, SUMMARY_FILE, as_number, flatten

SHARE_KEY = "data.minority_share"
MODE_KEY, NOISE_KEY, TARGET_KEY = "privacy.mode", "privacy.noise_multiplier", "privacy.target_epsilon"


ACCURACY = "test/accuracy"
GROUP_ACCURACY = {group: f"test/{group_key('accuracy', group)}" for group in GROUPS}
GAP_TITLES = {
    "test/dp_gap": "Demographic parity gap",
    "test/eo_gap": "Equal opportunity gap (TPR)",
    "test/eodds_gap": "Equalized odds gap",
    "test/eodds_gap_sum": "Equalized odds gap, |ΔTPR| + |ΔFPR|",
    "test/accuracy_gap": "Accuracy gap",
}
EPSILON = "privacy/epsilon"
CLIP_FRACTION = {group: group_key("dp/clip_fraction", group) for group in GROUPS}

METRICS: dict[str, str] = {
    ACCURACY: "accuracy",
    "test/average_precision": "AP",
    **{key: f"{group} acc." for group, key in GROUP_ACCURACY.items()},
    **{key: key.removeprefix("test/").replace("_", " ") for key in GAP_TITLES},
    EPSILON: "ε",
    **{key: f"clipped {group}" for group, key in CLIP_FRACTION.items()},
}
"""The headline metrics of the report, with their report.md column titles. All but ε are fractions
that report.md shows in percent (gaps in percentage points)."""

INDIVIDUAL_PREFIX = "privacy/individual_epsilon/"
INDIVIDUAL_STATISTICS = ("median", "mean", "p10", "p90")
INDIVIDUAL_EPSILON = {group: {statistic: f"{INDIVIDUAL_PREFIX}group={group}/{statistic}"
                              for statistic in INDIVIDUAL_STATISTICS} for group in GROUPS}
INDIVIDUAL_WORST_CASE = f"{INDIVIDUAL_PREFIX}worst_case"
INDIVIDUAL_METRICS: dict[str, str] = {
    **{key: f"individual ε {group} {statistic}" for group, keys in INDIVIDUAL_EPSILON.items()
       for statistic, key in keys.items()},
    INDIVIDUAL_WORST_CASE: "individual ε worst case",
    "time/individual_accounting_s": "individual accounting (s)",
}
"""privacy.individual_accounting's summary keys (:mod:`privacy.individual`), in report.csv (and
report.md's individual privacy section) only when some run logged them, so that the report of a
grid without them is what it was. Plain numbers (ε, seconds), never percent. Computed from the
private data without noise: a diagnostic, not private; the guarantee is the worst-case ε."""


# Keys that never make two runs different points: the seed is what a point averages over, and
# name, output_dir and logging change where and how a run is recorded, not what it trains.
NOT_A_SETTING = ("name", "seed", "output_dir")
NOT_A_SETTING_PREFIX = "logging."

MODE_NAMES = {"dpsgd": "DP-SGD", "dpfedavg": "DP-FedAvg"}


@dataclass(frozen=True)
class Run:
    """One run directory.

    Attributes:
        directory: the run directory.
        settings: its resolved config flattened to dotted keys, without the keys of
            :data:`NOT_A_SETTING` and the logging section.
        seed: the run's seed.
        summary: its summary.json, or None when the run did not finish.
    """

    directory: Path
    settings: dict[str, Any]
    seed: int | None
    summary: dict[str, Any] | None


@dataclass
class Point:
    """The finished runs of one grid point (runs that differ only in the seed).

    Attributes:
        settings: the shared settings, flattened to dotted keys.
        runs: the finished runs, by seed.
    """

    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    def values(self, metric: str) -> list[float]:
        """The metric over the seeds where it is defined (ε = ∞, stored as "inf", included)."""
        values = (as_number(run.summary.get(metric)) for run in self.runs)
        return [value for value in values if value is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        """Sample standard deviation over seeds (ddof = 1); None with fewer than two values or
        an infinite one."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) \
            else None

    def interval(self, metric: str) -> list[float] | None:
        """The bootstrap interval of a single-seed point (None with several seeds or none stored)."""
        if len(self.runs) != 1:
            return None
        interval = self.runs[0].summary.get(f"{metric}_ci")
        return interval if isinstance(interval, list) and len(interval) == 2 else None

    def constant_seeds(self) -> list[int | None]:
        """The seeds whose final model is a constant classifier (:func:`is_constant_run`)."""
        return [run.seed for run in self.runs if is_constant_run(run.summary)]

    def constant_label(self, *, empty: str = "–") -> str:
        """"k/n": k of the point's n seeds ended as a constant classifier; ``empty`` when none."""
        constant = len(self.constant_seeds())
        return f"{constant}/{len(self.runs)}" if constant else empty

    def share(self) -> float | None:
        """The minority share: the configured one, else the measured share of the training set."""
        if isinstance(self.settings.get(SHARE_KEY), (int, float)):
            return float(self.settings[SHARE_KEY])
        shares = []
        for run in self.runs:
            counts = [run.summary.get(f"data/train_count/group={group}") for group in GROUPS]
            if all(isinstance(count, (int, float)) for count in counts) and sum(counts) > 0:
                shares.append(counts[GROUPS.index("minority")] / sum(counts))
        return statistics.fmean(shares) if shares else None


CONSTANT_KEY = f"test/{CONSTANT_PREDICTION}"
CONSTANT_RATES = [f"test/{group_key('selection_rate', group)}" for group in GROUPS]


def is_constant_run(summary: Mapping[str, Any]) -> bool:
    """Whether a finished run's final model decides one class for every test example: its
    ``test/constant_prediction``, or, for a run from before that key, both groups' selection rate
    0 (or both 1)."""
    if CONSTANT_KEY in summary:
        return bool(summary[CONSTANT_KEY])
    rates = [as_number(summary.get(rate)) for rate in CONSTANT_RATES]
    return None not in rates and (all(r == 0 for r in rates) or all(r == 1 for r in rates))


@dataclass(frozen=True)
class Problem:
    """A point or run directory without a finished run, for report.md.

    Attributes:
        name: the point's directory name.
        status: "failed", "incomplete (no summary.json)", or the grid status ("pending", ...).
        error: the error the grid recorded, if any.
    """

    name: str
    status: str
    error: str | None = None


# A file the report cannot use is named in one warning line and left out; the rest is reported.
SKIPPED_RUN = "skipping {path}: {problem}; the report leaves that run out"
IGNORED_STATUS = ("ignoring {path}: {problem}; the report lists no failed or unrun points from it")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's config.yaml as a mapping, or ``(None, problem)``."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except (ValueError, yaml.YAMLError) as error:
        return None, f"not valid YAML ({' '.join(str(error).split())})"
    if not isinstance(raw, dict):
        return None, f"a YAML {type(raw).__name__}, not a mapping of config sections"
    return raw, None


def load_status(runs_dir: Path, *, warn: bool = True) -> dict[str, Any]:
    """The grid status file (:data:`~grids.sweep.STATUS_FILE`) when it is usable, else ``{}``
    (with a warning naming it when ``warn``)."""
    path = runs_dir / STATUS_FILE
    try:
        status = read_status(runs_dir)
    except OSError as error:
        status, problem = None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        status, problem = None, f"not valid JSON ({error})"
    else:
        if status is None:
            return {}
        problem = _status_problem(status)
    if problem is not None:
        if warn:
            _warn(IGNORED_STATUS.format(path=path, problem=problem))
        return {}
    return status


def _status_problem(status: Any) -> str | None:
    if not isinstance(status, dict):
        return f"a JSON {type(status).__name__}, not an object"
    points, keys = status.get("points", []), status.get("keys", [])
    if not isinstance(points, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("label"), str)
            and isinstance(entry.get("status"), str)
            and isinstance(entry.get("error"), (str, type(None))) for entry in points):
        return "its points are not a list of objects with a label, a status and an error"
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return "its keys are not a list of dotted keys"
    return None


def load_runs(runs_dir: Path) -> tuple[list[Run], list[Problem]]:
    """The run directories under ``runs_dir`` and the points that did not finish.

    A run whose config.yaml or summary.json cannot be used (not valid YAML or JSON, not a mapping,
    a summary without the keys every complete run writes) is left out with a warning naming the
    file, and so is a grid status file that cannot be used; the other runs are reported.
    """
    runs: list[Run] = []
    unfinished: dict[str, Problem] = {}
    for directory in sorted(path for path in runs_dir.iterdir() if (path / CONFIG_FILE).is_file()):
        raw, problem = _read_config(directory / CONFIG_FILE)
        if raw is None:
            _warn(SKIPPED_RUN.format(path=directory / CONFIG_FILE, problem=problem))
            unfinished[directory.name] = Problem(directory.name, f"unusable {CONFIG_FILE}")
            continue
        raw.pop(PROVENANCE_KEY, None)
        flat = flatten(raw)
        settings = {key: value for key, value in flat.items()
                    if key not in NOT_A_SETTING and not key.startswith(NOT_A_SETTING_PREFIX)}
        summary, problem = read_summary(directory / SUMMARY_FILE)
        if problem is not None:
            _warn(SKIPPED_RUN.format(path=directory / SUMMARY_FILE, problem=problem))
            unfinished[directory.name] = Problem(directory.name, f"unusable {SUMMARY_FILE}")
            continue
        runs.append(Run(directory, settings, flat.get("seed"), summary))
        if summary is None:
            unfinished[directory.name] = Problem(directory.name, "incomplete (no summary.json)")
    status = load_status(runs_dir)
    for entry in status.get("points", []):
        # A summary.json on disk wins over the status file: the point may have been run since.
        if entry["status"] in ("done", "skipped") or (runs_dir / entry["label"] / SUMMARY_FILE).is_file():
            continue
        unfinished[entry["label"]] = Problem(entry["label"], entry["status"], entry.get("error"))
    return [run for run in runs if run.summary is not None], sorted(unfinished.values(),
                                                                      key=lambda p: p.name)


def group_points(runs: Iterable[Run]) -> list[Point]:
    """Finished runs grouped into points by their settings, in the order of :func:`_point_order`."""
    points: dict[str, Point] = {}
    for run in runs:
        identity = json.dumps(run.settings, sort_keys=True, default=str)
        points.setdefault(identity, Point(run.settings)).runs.append(run)
    for point in points.values():
        point.runs.sort(key=lambda run: (run.seed is None, run.seed))
    return sorted(points.values(), key=_point_order)


def varying_keys(points: list[Point], always: Iterable[str] = ()) -> list[str]:
    """The settings whose values differ between points, and those of ``always`` that the points
    have, in config order: the report's columns."""
    keys: dict[str, None] = {}
    for point in points:
        keys.update(dict.fromkeys(point.settings))
    always = set(always)
    missing = object()
    return [key for key in keys
            if key in always or len({json.dumps(point.settings.get(key, missing), default=repr)
                                     for point in points}) > 1]


def series_label(point: Point, keys: list[str], points: list[Point]) -> tuple[str, tuple]:
    settings = point.settings
    mode = settings.get(MODE_KEY, "none")
    noise, target = settings.get(NOISE_KEY), settings.get(TARGET_KEY)
    if mode == "none":
        label, order = "non-private", (0, 0.0)
    elif noise is not None:
        label, order = f"{MODE_NAMES.get(mode, mode)} σ={noise:g}", (1, -float(noise))
    else:
        label, order = f"{MODE_NAMES.get(mode, mode)} target ε={target:g}", (1, float(target or 0))
    if mode != "none":
        # The ε the runs reached, over every share of this level (equal when train_size is fixed).
        same_level = [p for p in points if all(p.settings.get(k) == settings.get(k)
                                               for k in (MODE_KEY, NOISE_KEY, TARGET_KEY))]
        epsilons = [e for p in same_level for e in p.values(EPSILON)]
        if epsilons:
            low, high = min(epsilons), max(epsilons)
            if math.isinf(low):
                label += " (ε = ∞)"
            else:
                label += (f" (ε≈{low:.2g})" if high - low <= 0.05 * high
                          else f" (ε {low:.2g}–{md_epsilon(high)})")
    # The level says the privacy mode and noise; other privacy settings (a clipping rule) do not.
    others = [key for key in keys if key not in (MODE_KEY, NOISE_KEY, TARGET_KEY)]
    short = short_names(others)
    extra = ", ".join(f"{short[key]}={md_value(settings.get(key))}" for key in others)
    if extra:
        label += f", {extra}"
    return label, (*order, extra)


def _point_order(point: Point) -> tuple:
    """Points by privacy level (non-private first, most noise first), then share, largest first."""
    _, order = series_label(point, [], [])
    share = point.share()
    rest = json.dumps({k: v for k, v in point.settings.items() if k != SHARE_KEY},
                      sort_keys=True, default=str)
    return (*order, -(share if share is not None else math.inf), rest)


def csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def md_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value).replace("|", "\\|")


def md_epsilon(value: float) -> str:
    """ε for report.md: three significant digits, and ∞ for a run without noise."""
    return "∞" if math.isinf(value) else f"{value:.3g}"


def md_metric(point: Point, metric: str) -> str:
    """A table cell: mean ± std (%), or mean [bootstrap interval] for one seed; – when undefined."""
    mean = point.mean(metric)
    if mean is None:
        return "–"
    if metric == EPSILON:
        std = point.std(metric)
        return md_epsilon(mean) + (f" ± {std:.2g}" if std is not None else "")
    cell = f"{100 * mean:.2f}"
    std, interval = point.std(metric), point.interval(metric)
    if std is not None:
        cell += f" ± {100 * std:.2f}"
    elif interval is not None:
        cell += f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
    return cell
