"""Report on a grid's runs: ``report.md``, ``report.csv`` and the paper's figures.

``python running.py --report RUNS_DIR`` (or :func:`write_report`) reads every immediate
subdirectory of ``RUNS_DIR`` holding ``config.yaml`` (a run directory; a grid puts one per point
there, see :mod:`utils.sweep`) and its ``summary.json`` when the run finished.

Grid points are found from the configs, not from directory names: runs whose resolved configs are
equal except for ``seed`` (and ``name``, ``output_dir`` and the ``logging`` section, which do not
change what is trained) are seeds of one point, so the report also works on run directories made
one by one with ``--set``. The columns of the report are the config keys that differ between
points.

For each point and each headline metric (:data:`METRICS`) the report gives the mean over the seeds
and the sample standard deviation (ddof = 1; blank with one seed), over the seeds where the metric is
defined (null metrics, e.g. ε of a non-private run, are left out). A point with a single seed has no
spread over seeds; it gets the 95 % bootstrap interval over the test set from its ``summary.json``
(``<metric>_ci``) instead. ``report.csv`` keeps the units of summary.json (fractions);
``report.md`` and the figures show percent.

Figures, after arXiv 2009.06389, all against the minority share on a log axis (shares go down to
0.001), one line per privacy level (non-private, then each noise multiplier or target ε), error bars
one standard deviation over seeds: test accuracy; the four gaps (demographic parity, equal
opportunity, equalized odds, accuracy); each group's accuracy; and under DP the share of each
group's examples whose gradient was clipped (``dp/clip_fraction/group=...``), the mechanism behind
DP-SGD's disparate impact; under DP-FedAvg the share of each group's examples held by clients whose
update was clipped (the same key). Runs with ``privacy.individual_accounting`` add
``individual_epsilon.png``: each group's median individual ε (band: 10th to 90th percentile, dotted:
the worst-case ε) against the share, a section of report.md with those numbers beside each group's
accuracy, and their columns in report.csv (:data:`INDIVIDUAL_METRICS`). They are computed from the
private data without noise, a diagnostic and not private; the run's guarantee is its worst-case ε.

A grid with a private run also gets "What ε covers" (:mod:`utils.release`): per training pool
(the data set's files) the runs, each run's own ε, the ε of releasing every model with a guarantee
trained on the pool together (the RDP composition of the runs' ``privacy/history``), whether a
run without a guarantee voids that release, and what the runs treated as public
(``privacy/public_data``); in report.md right after the table and in ``report_release.csv``.

A grid of fairness repair methods (any run with ``fairness.method`` other than "none", e.g.
``configs/runner_adult.yaml``) also gets a method view (:func:`method_view`): a table in report.md and
``report_methods.csv`` with one row per data set (when there are several), target
(``fairness.mode``), method and the method's own settings that vary in the grid (its λ,
``fairness.<method>.lam``), giving AP, accuracy, ΔDP, ΔEO and ΔEOdds sum over the seeds; and per
target a trade-off figure, ``tradeoff_<mode>.png``: AP against the target's gap (and against
ΔEOdds sum), one marker per method and λ, a method's λ values joined in λ order. A grid without a
repair method gets exactly the report it got before.

A grid that crosses repair methods with privacy (``configs/repair_under_dp_*.yaml``: some run has
``privacy.mode`` other than "none") also gets the repair-under-privacy view
(:func:`privacy_repair_view`): per target a figure ``repair_privacy_<mode>.png`` with one row per
privacy level and one column per metric (the minority's accuracy and each gap) against the share,
one line per method; and a table, in report.md and ``report_gap_closed.csv``, of how much of
Vanilla's gap each method closes at each privacy level and share, with the accuracy it costs
(per-seed differences against the ``none`` run of the same seed, see :class:`GapClosed`).

A grid of clipping rules (some DP run with ``privacy.clipping`` other than flat,
``configs/dp_mitigation_*.yaml``) also gets the DP mitigation view (:mod:`utils.report_mitigation`):
per-group accuracy and every gap against ε and share, one line per rule, and a table of how much of
DP-SGD's added gap each rule removes, with the accuracy it costs.

A run whose final model decides one class for every test example (``test/constant_prediction``
in its summary; for runs from before that key, both groups' selection rates 0, or both 1) is a
constant classifier: its gaps are 0 or undefined by construction and say nothing about fairness.
Every view says how many of a point's seeds ended so: a ``constant`` column in report.md's tables
("k/n"), ``n_constant`` and ``constant_seeds`` in report.csv and report_methods.csv, the gap-closed
table's "[k/n constant]", and in every figure a red ring around such a point with "k/n const."
beside it.

Points that did not finish are listed in report.md: those the grid's status file
(``grid_status.json``) records as failed or not run, and run directories without ``summary.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.config import FAIRNESS_TARGETS, PROVENANCE_KEY
from utils.errors import UserInputError
from utils.fairness import CONSTANT_PREDICTION, GROUPS, group_key
from utils.release import REPORT_RELEASE_CSV, Pool, release_markdown, release_pools, write_release_csv
from utils.rundir import TOOL, read_json_object, read_summary
from utils.sink import CONFIG_FILE, SUMMARY_FILE, as_number, flatten, write_json_atomic
from utils.sweep import STATUS_FILE, format_value, read_status, short_names

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
REPORT_METHODS_CSV = "report_methods.csv"

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

FIGURES = {
    "accuracy.png": "Test accuracy against the minority share",
    "gaps.png": "Fairness gaps against the minority share",
    "group_accuracy.png": "Accuracy of each group against the minority share",
    "clip_fraction.png": ("Share of each group's examples whose gradient (DP-SGD) or client update "
                          "(DP-FedAvg) was clipped, against the minority share"),
    "individual_epsilon.png": ("Individual ε of each group's training examples (median, band from "
                               "the 10th to the 90th percentile; dotted: the run's worst-case ε) "
                               "against the minority share. A non-private diagnostic: computed from "
                               "the private data without noise; the formal guarantee is the "
                               "worst-case ε"),
}
"""The figures, by file name, with their captions in report.md."""

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


def write_report(runs_dir: str | Path) -> list[Path]:
    """Write report.md, report.csv and the figures into ``runs_dir``; return the files written.

    The report never overwrites a file it did not write. Every file it writes is recorded, with
    the SHA-256 of its content, in ``runs_dir/.dp-fairness-report`` (:data:`REPORT_LEDGER`); a file
    of an output's name whose content is not one recorded there (a user's own report.md, a figure
    replaced after an earlier report, a link) stops the report before anything is written. The
    files are made in a fresh staging folder inside ``runs_dir`` and then renamed into place one by
    one, the ledger listing both the old and the new content of a file while it is replaced: an
    interrupt (Ctrl-C) at any moment leaves each file whole, old or new, and the next report
    accepts both.

    Raises:
        UserInputError: ``runs_dir`` is not a directory or cannot be written, holds no run
            directory and no grid status file, or holds a file of an output's name that an earlier
            report did not write (:data:`REPORT_FILE_NOT_OURS`).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserInputError(f"--report {str(runs_dir)!r}: no such directory. Give the directory of "
                             f"a grid's runs, e.g. runs/paper_adult.")
    runs, problems = load_runs(runs_dir)
    if not runs and not problems:
        raise UserInputError(f"--report {str(runs_dir)!r}: no run directories in it (subdirectories "
                             f"holding {CONFIG_FILE}). Give the directory of a grid's runs, "
                             f"e.g. runs/paper_adult, not a run directory itself.")
    if not os.access(runs_dir, os.W_OK | os.X_OK):
        raise UserInputError(REPORT_NOT_WRITABLE.format(path=runs_dir))
    points = group_points(runs)
    # A grid's swept keys are columns even where the finished points agree on them (the others
    # failed), so that the report reads the same way as the grid.
    status = _load_status(runs_dir, warn=False)
    swept = [key for key in status.get("keys", []) if key not in NOT_A_SETTING]
    keys = varying_keys(points, always=swept)
    view = method_view(points, method_order=_status_methods(status))
    private_view = privacy_repair_view(view, points)
    # Imported here: the view builds on this module's points and panels.
    from utils.report_mitigation import mitigation_view, rule_order, write_mitigation

    mitigation = mitigation_view(points, rule_order(status))
    release = release_pools((run.settings, run.summary) for run in runs)  # utils.release
    ledger = _check_outputs_are_ours(runs_dir, [
        *(view.outputs() if view is not None else ()),
        *(private_view.outputs() if private_view is not None else ()),
        *(mitigation.outputs() if mitigation is not None else ()),
        *([REPORT_RELEASE_CSV] if release else [])])
    title = runs_dir.resolve().name
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=runs_dir))  # new, so never a link
    try:
        written = [write_csv(staging / REPORT_CSV, points, keys)]
        if release:
            written.append(write_release_csv(staging / REPORT_RELEASE_CSV, release))
        figures = write_figures(staging, points, title=title)
        written += figures
        tradeoffs: list[Path] = []
        if view is not None:
            written.append(write_methods_csv(staging / REPORT_METHODS_CSV, view))
            tradeoffs = write_tradeoff_figures(staging, view, title=title)
            written += tradeoffs
        private_figures: list[Path] = []
        if private_view is not None:
            written.append(write_gap_closed_csv(staging / REPORT_GAP_CLOSED_CSV, private_view))
            private_figures = write_privacy_repair_figures(staging, private_view, title=title)
            written += private_figures
        sections: list[list[str]] = []
        if mitigation is not None:  # a grid of clipping rules (utils.report_mitigation)
            files, section = write_mitigation(staging, mitigation, title=title)
            written += files
            sections.append(section)
        written.insert(0, write_markdown(staging / REPORT_MD, runs_dir, points, keys, problems,
                                         figures, view=view, tradeoffs=tradeoffs,
                                         private_view=private_view,
                                         private_figures=private_figures, release=release,
                                         sections=sections))
        return [_put_in_place(runs_dir, staged, ledger) for staged in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


REPORT_TITLE = "# Report: "
REPORT_LEDGER = ".dp-fairness-report"
"""The report's record of what it wrote: JSON ``{"tool", "format", "files": {name: [sha256, ...]}}``."""
REPORT_FILE_NOT_OURS = ("--report: {path} exists and was not written by an earlier report of this "
                        "tool (its content is not one the report recorded in {ledger}); it is left "
                        "untouched. Move it away, or report on a copy of the runs.")
REPORT_NOT_WRITABLE = ("--report: cannot write in {path} (permission denied or a read-only file "
                       "system); nothing was written. Report on a writable copy of the runs.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ledger(runs_dir: Path) -> dict[str, list[str]]:
    """The files an earlier report wrote here and their accepted contents (hashes); {} without a
    ledger of this tool."""
    payload = read_json_object(runs_dir / REPORT_LEDGER)
    files = payload.get("files") if payload is not None and payload.get("tool") == TOOL else None
    if not isinstance(files, dict):
        return {}
    return {str(name): [str(h) for h in hashes] for name, hashes in files.items()
            if isinstance(hashes, list)}


def _write_ledger(runs_dir: Path, ledger: Mapping[str, list[str]]) -> None:
    write_json_atomic(runs_dir / REPORT_LEDGER, {"tool": TOOL, "format": 1, "files": dict(ledger)})


def _check_outputs_are_ours(runs_dir: Path, extra: Iterable[str] = ()) -> dict[str, list[str]]:
    """Refuse to overwrite report.md, report.csv, a figure, or one of the ``extra`` files (the
    method view's, whose names depend on the grid) that this tool did not write; return the
    ledger (:data:`REPORT_LEDGER`) of the files it did write, as they are on disk now.

    A file of those names is the report's only when it is a regular file (not a link) whose
    SHA-256 the ledger records for that name. Anything else stops the report before anything is
    written.
    """
    ledger = _read_ledger(runs_dir)
    names = [REPORT_MD, REPORT_CSV, *FIGURES, *extra]
    for name in names:
        path = runs_dir / name
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_file() or _sha256(path) not in ledger.get(name, ()):
            raise UserInputError(REPORT_FILE_NOT_OURS.format(path=path, ledger=REPORT_LEDGER))
    # Files recorded but since removed or changed are forgotten; the others keep their entry.
    return {name: [digest] for name, hashes in ledger.items()
            if (runs_dir / name).is_file() and not (runs_dir / name).is_symlink()
            and (digest := _sha256(runs_dir / name)) in hashes}


def _put_in_place(runs_dir: Path, staged: Path, ledger: dict[str, list[str]]) -> Path:
    """Rename the staged file over its name in ``runs_dir``, recording its hash first, with the
    old one, so that the file on disk is always one the ledger accepts."""
    name = staged.name
    digest = _sha256(staged)
    ledger[name] = sorted({*ledger.get(name, ()), digest})
    _write_ledger(runs_dir, ledger)
    os.replace(staged, runs_dir / name)
    ledger[name] = [digest]
    _write_ledger(runs_dir, ledger)
    return runs_dir / name


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


def _load_status(runs_dir: Path, *, warn: bool = True) -> dict[str, Any]:
    """The grid status file (:data:`~utils.sweep.STATUS_FILE`) when it is usable, else ``{}``
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
    status = _load_status(runs_dir)
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


def write_csv(path: Path, points: list[Point], keys: list[str]) -> Path:
    """report.csv: one row per point; the varying keys, the seeds, and per metric mean, std and
    (single-seed points) the bootstrap interval, in summary.json's units."""
    metrics = [*METRICS, *(INDIVIDUAL_METRICS if has_individual_privacy(points) else ())]
    header = [*keys, "n_seeds", "seeds", *CONSTANT_COLUMNS, *_csv_metric_header(metrics)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for point in points:
            row = [_csv_value(point.settings.get(key)) for key in keys]
            row += [len(point.runs), " ".join(str(seed) for seed in point.seeds)]
            row += _csv_constant_cells(point)
            row += _csv_metric_cells(point, metrics)
            writer.writerow(row)
    return path


def has_individual_privacy(points: Iterable[Point]) -> bool:
    """Whether some run logged privacy.individual_accounting's per-group individual ε."""
    key = INDIVIDUAL_EPSILON["minority"]["median"]
    return any(point.values(key) for point in points)


CONSTANT_COLUMNS = ("n_constant", "constant_seeds")
"""report.csv's and report_methods.csv's columns of constant classifiers: how many of a point's
seeds, and which."""


def _csv_constant_cells(point: Point) -> list[Any]:
    constant = point.constant_seeds()
    return [len(constant), " ".join(str(seed) for seed in constant)]


def _csv_metric_header(metrics: Iterable[str]) -> list[str]:
    return [f"{metric}_{part}" for metric in metrics for part in ("mean", "std", "ci_low", "ci_high")]


def _csv_metric_cells(point: Point, metrics: Iterable[str]) -> list[Any]:
    """Per metric: mean, std and (single-seed points) the bootstrap interval; blank where undefined."""
    row: list[Any] = []
    for metric in metrics:
        interval = point.interval(metric) or [None, None]
        row += [_csv_value(value) for value in (point.mean(metric), point.std(metric), *interval)]
    return row


def write_markdown(path: Path, runs_dir: Path, points: list[Point], keys: list[str],
                   problems: list[Problem], figures: list[Path], *, view: MethodView | None = None,
                   tradeoffs: Iterable[Path] = (), private_view: PrivacyRepairView | None = None,
                   private_figures: Iterable[Path] = (), release: list[Pool] | None = None,
                   sections: Iterable[list[str]] = ()) -> Path:
    """report.md: what was read, the table of points, what ε covers (the combined release per
    training pool, :mod:`utils.release`, when a run is private), the method view (a grid of
    repair methods), the repair-under-privacy view (methods crossed with privacy levels), further
    views' sections (the DP mitigation view), the figures and the unfinished points."""
    short = short_names(keys)
    n_runs = sum(len(point.runs) for point in points)
    seed_counts = sorted({len(point.runs) for point in points})
    lines = [
        f"{REPORT_TITLE}{runs_dir.resolve().name}",
        "",
        f"{n_runs} finished runs in {len(points)} grid points "
        f"({'/'.join(map(str, seed_counts)) or 0} seeds per point) read from `{runs_dir}`; "
        f"{len(problems)} point(s) did not finish (listed at the end). "
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python running.py --report {runs_dir}`.",
        "",
        "Cells are the mean ± sample standard deviation (ddof = 1) over seeds; a point with a single "
        "seed shows its 95 % bootstrap interval over the test set in brackets instead. Accuracies "
        "and clipped shares are in %, gaps in percentage points, ε at the run's δ. "
        f"All numbers, unrounded and in summary.json's units, are in `{REPORT_CSV}`.",
        "",
        *_constant_note(points),
    ]
    columns = [*(short[key] for key in keys), "seeds", "constant", *METRICS.values()]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for point in points:
        cells = [_md_value(point.settings.get(key)) for key in keys]
        cells += [str(len(point.runs)), point.constant_label()]
        cells += [_md_metric(point, metric) for metric in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if release:
        lines += ["", *release_markdown(release)]
    if has_individual_privacy(points):
        lines += ["", *_individual_markdown(points, keys, short)]
    if view is not None:
        lines += ["", *_methods_markdown(view, tradeoffs)]
    if private_view is not None:
        lines += ["", *_privacy_repair_markdown(private_view, private_figures)]
    for section in sections:
        lines += ["", *section]
    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            lines += [f"![{FIGURES[figure.name]}]({figure.name})", ""]
    if problems:
        lines += ["", "## Points that did not finish", "",
                  f"From `{STATUS_FILE}` and run directories without `{SUMMARY_FILE}`; "
                  "they are missing from the table and the figures.", ""]
        for problem in problems:
            error = f": {' '.join(problem.error.split())}" if problem.error else ""
            lines.append(f"- **FAILED** `{problem.name}`{error}" if problem.status == "failed"
                         else f"- `{problem.name}`: {problem.status}{error}")
    path.write_text("\n".join(lines) + "\n")
    return path


CONSTANT_NOTE = (
    "**Constant classifiers: {constant} of {runs} runs** ended with a model that decides one class "
    "for every test example (column `constant`: k of a point's n seeds; red rings in the figures). "
    "Their gaps are 0 or undefined by construction: a mean gap over such seeds is not a fairness "
    "result.")


def _constant_note(points: Iterable[Point]) -> list[str]:
    """report.md's paragraph on constant classifiers, when any run ended as one."""
    points = list(points)
    constant = sum(len(point.constant_seeds()) for point in points)
    if not constant:
        return []
    return [CONSTANT_NOTE.format(constant=constant, runs=sum(len(p.runs) for p in points)), ""]


def _individual_markdown(points: list[Point], keys: list[str], short: Mapping[str, str]) -> list[str]:
    """report.md's section on privacy.individual_accounting: per point that logged it, each
    group's median individual ε with its 10th–90th percentile beside the group's accuracy and
    the run's worst-case ε."""
    mine = [point for point in points if point.values(INDIVIDUAL_EPSILON["minority"]["median"])]
    lines = [
        "## Individual privacy (a non-private diagnostic)",
        "",
        "What privacy cost each training example (`privacy.individual_accounting`, "
        "`privacy/individual.py`; under DP-FedAvg each example carries its client's): an example "
        "whose clipped gradient (update) stays below the bound loses less than the run's worst "
        "case. Per group, the median of the examples' individual ε and "
        "in brackets the 10th and 90th percentile (each the mean over seeds; ± the sample std of "
        "the median over seeds), beside the group's test accuracy (%) and the worst-case ε they "
        "never exceed (RDP; `privacy/epsilon` itself under the RDP accountant). **These numbers "
        "are computed from the private training data without noise: they are not private** and "
        "are for the researcher, not for release. The run's formal guarantee is the worst-case ε. "
        "Each run's `individual_privacy.csv` holds every example's ε.",
        "",
    ]
    columns = [*(short[key] for key in keys), "seeds", "worst-case ε",
               *(f"{group} median ε [p10, p90]" for group in GROUPS),
               *(f"{group} acc." for group in GROUPS), "accounting (s)"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for point in mine:
        cells = [_md_value(point.settings.get(key)) for key in keys]
        cells.append(str(len(point.runs)))
        worst = point.mean(INDIVIDUAL_WORST_CASE)
        cells.append("–" if worst is None else _md_epsilon(worst))
        for group in GROUPS:
            cells.append(_md_individual(point, group))
        cells += [_md_metric(point, GROUP_ACCURACY[group]) for group in GROUPS]
        seconds = point.mean("time/individual_accounting_s")
        cells.append("–" if seconds is None else f"{seconds:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_individual(point: Point, group: str) -> str:
    """A group's median individual ε (± std over seeds) and [p10, p90], three significant digits."""
    keys = INDIVIDUAL_EPSILON[group]
    median = point.mean(keys["median"])
    if median is None:
        return "–"
    cell = _md_epsilon(median)
    std = point.std(keys["median"])
    if std is not None:
        cell += f" ± {std:.2g}"
    low, high = point.mean(keys["p10"]), point.mean(keys["p90"])
    if low is not None and high is not None:
        cell += f" [{_md_epsilon(low)}, {_md_epsilon(high)}]"
    return cell


# --------------------------------------------------------------------------------------------------
# Method view: a grid of fairness repair methods

METHOD_KEY, FAIRNESS_MODE_KEY, DATASET_KEY = "fairness.method", "fairness.mode", "data.name"
AVERAGE_PRECISION = "test/average_precision"
EODDS_SUM = "test/eodds_gap_sum"

METHOD_METRICS: dict[str, str] = {
    AVERAGE_PRECISION: "AP",
    ACCURACY: "accuracy",
    "test/dp_gap": "ΔDP",
    "test/eo_gap": "ΔEO",
    EODDS_SUM: "ΔEOdds sum",
}
"""The method view's metrics with their column titles, in the order of the README's table of
RUNNER's study, so that the two read side by side."""

TARGET_GAPS = {"dp": "test/dp_gap", "eo": "test/eo_gap"}
"""The gap each fairness target (``fairness.mode``) reduces: the x axis of its trade-off figure."""

GAP_AXIS_LABELS = {
    "test/dp_gap": "ΔDP, selection-rate gap",
    "test/eo_gap": "ΔEO, TPR gap",
    EODDS_SUM: "ΔEOdds sum, |ΔTPR| + |ΔFPR|",
}

TRADEOFF_PREFIX = "tradeoff_"

# Short names of the methods' own settings in report.md and in the figures' labels.
SETTING_SYMBOLS = {"lam": "λ"}

_STYLES = [("tab:blue", "s"), ("tab:orange", "^"), ("tab:green", "D"), ("tab:red", "v"),
           ("tab:purple", "P"), ("tab:brown", "X"), ("tab:pink", "*"), ("tab:olive", "<"),
           ("tab:cyan", ">"), ("tab:gray", "h")]


@dataclass(frozen=True)
class MethodRow:
    """One row of the method view: one grid point, named by what a reader of a repair study asks.

    Attributes:
        point: the grid point (its runs are the seeds).
        dataset: ``data.name``.
        method: ``fairness.method``.
        mode: ``fairness.mode``, the target.
        own: the method's own settings that vary among its points (``fairness.<method>.lam``, ...).
        others: other settings that tell points of the same method, target and own settings apart
            (a privacy level in a grid of methods under DP, say); empty in a plain repair study.
    """

    point: Point
    dataset: Any
    method: str
    mode: str
    own: dict[str, Any]
    others: dict[str, Any]

    @property
    def series(self) -> tuple:
        """What a trade-off line holds fixed: the method and the other settings; λ moves along it."""
        return (self.dataset, self.mode, self.method, _identity(self.others))


@dataclass
class MethodView:
    """The method view of a grid: its rows in report order and the columns they need.

    Attributes:
        rows: ordered by data set, target, method (in the grid's order, "none" first), privacy
            level (non-private first, then the most noise first, as in the other tables), the other
            settings, then the method's own settings (λ ascending), so that the rows of one
            trade-off line are adjacent.
        datasets: the data sets, in row order; a column of their own only when there are several.
        own_keys: every method's own varying settings, dotted, in order of first appearance.
        other_keys: the other settings that tell rows apart, in config order.
        styles: colour and marker of each trade-off line (by :attr:`MethodRow.series` without the
            data set and target), the same in every figure.
    """

    rows: list[MethodRow]
    datasets: list[Any]
    own_keys: list[str]
    other_keys: list[str]
    styles: dict[tuple, tuple[str, str]] = field(default_factory=dict)

    def figure_names(self, prefix: str = TRADEOFF_PREFIX) -> dict[tuple[Any, str], str]:
        """The figure of each (data set, target) that has one, by file name: the trade-off
        figures, or with another ``prefix`` the repair-under-privacy view's."""
        names = {}
        for row in self.rows:
            if row.mode in TARGET_GAPS and (row.dataset, row.mode) not in names:
                dataset = f"{format_value(row.dataset)}_" if len(self.datasets) > 1 else ""
                names[(row.dataset, row.mode)] = f"{prefix}{dataset}{format_value(row.mode)}.png"
        return names

    def outputs(self) -> list[str]:
        """Every file the method view may write, for :func:`_check_outputs_are_ours`."""
        return [REPORT_METHODS_CSV, *self.figure_names().values()]


def _method(point: Point) -> str:
    # Runs from before repair methods existed have no fairness section: Vanilla training.
    return str(point.settings.get(METHOD_KEY, "none"))


def _mode(point: Point) -> str:
    return str(point.settings.get(FAIRNESS_MODE_KEY, "dp"))


def _identity(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


def _sort_value(value: Any) -> tuple:
    """A total order over config values of mixed types: null first, then numbers, then the rest."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0.0, json.dumps(value, sort_keys=True, default=repr))


def _status_methods(status: Mapping[str, Any]) -> list[str]:
    """The methods in the order the grid lists them (its sweep or zip list), from the status file."""
    order: dict[str, None] = {}
    for entry in status.get("points", []):
        values = entry.get("values")
        if isinstance(values, dict) and isinstance(values.get(METHOD_KEY), str):
            order.setdefault(values[METHOD_KEY])
    return list(order)


def method_view(points: list[Point], method_order: Iterable[str] = ()) -> MethodView | None:
    """The method view of ``points``, or None when no run used a repair method.

    A privacy grid (every run Vanilla) gets None, so its report is what it was before the method
    view existed. Rows are grid points: a point is already one setting over its seeds. Methods
    come in ``method_order`` (the grid's, so the table reads like the params file and the README),
    "none" first as the baseline the others are read against, then any method not listed there
    in name order (the registry's order).
    """
    if all(_method(point) == "none" for point in points):
        return None
    listed = list(dict.fromkeys(["none", *method_order]))
    rank = {method: index for index, method in enumerate(listed)}
    methods = sorted({_method(point) for point in points},
                     key=lambda m: (m not in rank, rank.get(m, 0), m))
    method_rank = {method: index for index, method in enumerate(methods)}

    # A method's own settings: the keys of its section (only the chosen method's section is in a
    # resolved config) whose values differ among that method's points. Constant ones (RUNNER's
    # neuron ratio in a pure λ sweep) would only repeat on every row.
    own_keys: dict[str, list[str]] = {}
    for method in methods:
        mine = [point for point in points if _method(point) == method]
        prefix = f"fairness.{method}."
        keys = dict.fromkeys(key for point in mine for key in point.settings if key.startswith(prefix))
        own_keys[method] = [key for key in keys if len({_identity({"v": point.settings.get(key)})
                                                         for point in mine}) > 1]

    def base_identity(point: Point) -> tuple:
        method = _method(point)
        return (point.settings.get(DATASET_KEY), method, _mode(point),
                tuple(point.settings.get(key) for key in own_keys[method]))

    # Other varying settings become columns only where they split rows that would otherwise read
    # alike: a privacy level crossed with the methods does, but RUNNER's grid zips the epochs with
    # the method and the batch size with the target, and those would only repeat what the row says.
    candidates = [key for key in varying_keys(points)
                  if key not in (DATASET_KEY, METHOD_KEY, FAIRNESS_MODE_KEY)
                  and not key.startswith("fairness.")]
    other_keys: list[str] = []
    for key in candidates:
        seen: dict[str, set[str]] = {}
        for point in points:
            identity = _identity([base_identity(point), [point.settings.get(k) for k in other_keys]])
            seen.setdefault(identity, set()).add(_identity({"v": point.settings.get(key)}))
        if any(len(values) > 1 for values in seen.values()):
            other_keys.append(key)

    rows = [MethodRow(point, point.settings.get(DATASET_KEY), _method(point), _mode(point),
                      {key: point.settings.get(key) for key in own_keys[_method(point)]},
                      {key: point.settings.get(key) for key in other_keys})
            for point in points]
    datasets = sorted({_identity({"v": row.dataset}): row.dataset for row in rows}.values(),
                      key=_sort_value)
    targets = {mode: index for index, mode in enumerate(FAIRNESS_TARGETS)}
    rows.sort(key=lambda row: (
        datasets.index(row.dataset), (row.mode not in targets, targets.get(row.mode, 0), row.mode),
        method_rank[row.method], _series_label(row.point, [], [])[1],
        [_sort_value(row.others[key]) for key in other_keys],
        [_sort_value(value) for value in row.own.values()]))
    view = MethodView(rows, datasets,
                      list(dict.fromkeys(key for method in methods for key in own_keys[method])),
                      other_keys)
    palette = iter(_STYLES * (1 + len(rows) // len(_STYLES)))
    for row in rows:
        style = row.series[2:]
        if style not in view.styles:
            view.styles[style] = ("black", "o") if row.method == "none" and not row.others \
                else next(palette)
    return view


def write_methods_csv(path: Path, view: MethodView) -> Path:
    """report_methods.csv: the method view's rows, in summary.json's units (fractions) like
    report.csv, with the bootstrap interval of single-seed rows."""
    keys = ([DATASET_KEY] if len(view.datasets) > 1 else []) + [METHOD_KEY, FAIRNESS_MODE_KEY]
    header = [*keys, *view.own_keys, *view.other_keys, "n_seeds", "seeds", *CONSTANT_COLUMNS,
              *_csv_metric_header(METHOD_METRICS)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in view.rows:
            cells = [_csv_value(row.point.settings.get(key)) for key in keys]
            # A column of another method's setting is blank, not "null": the setting does not apply.
            cells += [_csv_value(row.own[key]) if key in row.own else "" for key in view.own_keys]
            cells += [_csv_value(row.others[key]) for key in view.other_keys]
            cells += [len(row.point.runs), " ".join(str(seed) for seed in row.point.seeds)]
            cells += _csv_constant_cells(row.point)
            cells += _csv_metric_cells(row.point, METHOD_METRICS)
            writer.writerow(cells)
    return path


def _setting_label(key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return SETTING_SYMBOLS.get(name, name)


def _own_label(row: MethodRow) -> str:
    return ", ".join(f"{_setting_label(key)}={_md_value(value)}" for key, value in row.own.items())


def _other_names(keys: Iterable[str]) -> dict[str, str]:
    """Short names of the other settings, told apart from the target (``privacy.mode`` stays
    dotted beside ``fairness.mode``)."""
    return short_names([FAIRNESS_MODE_KEY, *keys])


def _settings_label(settings: Mapping[str, Any]) -> str:
    short = _other_names(settings)
    return ", ".join(f"{short[key]}={_md_value(value)}" for key, value in settings.items())


def _others_label(row: MethodRow) -> str:
    return _settings_label(row.others)


def _methods_markdown(view: MethodView, tradeoffs: Iterable[Path]) -> list[str]:
    """The method view's section of report.md: its table, then its trade-off figures."""
    seed_counts = sorted({len(row.point.runs) for row in view.rows})
    lines = [
        "## Fairness repair methods",
        "",
        f"One row per {'data set, ' if len(view.datasets) > 1 else ''}target "
        "(`fairness.mode`), method (`fairness.method`) and the method's own settings that vary in "
        f"this grid, over {'/'.join(map(str, seed_counts))} seed(s): mean ± sample standard "
        "deviation over seeds, in % (gaps in percentage points; a single seed shows its bootstrap "
        "interval instead); – where the runs did not record the metric. ΔEOdds sum = |ΔTPR| + "
        f"|ΔFPR|. Unrounded, in summary.json's units: `{REPORT_METHODS_CSV}`.",
        "",
        *_constant_note(row.point for row in view.rows),
    ]
    short = _other_names(view.other_keys)
    columns = (["data set"] if len(view.datasets) > 1 else []) + ["target", "method"]
    columns += ["settings"] if view.own_keys else []
    columns += [short[key] for key in view.other_keys] + ["seeds", "constant",
                                                          *METHOD_METRICS.values()]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in view.rows:
        cells = [_md_value(row.dataset)] if len(view.datasets) > 1 else []
        cells += [_md_value(row.mode), _md_value(row.method)]
        cells += [_own_label(row) or "–"] if view.own_keys else []
        cells += [_md_value(row.others[key]) for key in view.other_keys]
        cells += [str(len(row.point.runs)), row.point.constant_label(),
                  *(_md_metric(row.point, m) for m in METHOD_METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    names = {name: key for key, name in view.figure_names().items()}
    for figure in tradeoffs:
        dataset, mode = names[figure.name]
        where = f", {dataset}" if len(view.datasets) > 1 else ""
        gap = METHOD_METRICS[TARGET_GAPS[mode]]
        lines += ["", f"![Trade-off of the repair methods, target {mode}{where}: AP against {gap} "
                      f"(up and left is better)]({figure.name})"]
    return lines


@dataclass
class TradeoffSeries:
    """One line of a trade-off figure: a method (and fixed other settings) over its λ values.

    Attributes:
        label: the legend's entry.
        rows: the method view's rows on the line, λ ascending.
        color, marker: its style, the same in every figure of the report.
    """

    label: str
    rows: list[MethodRow]
    color: str
    marker: str

    def drawn(self, x_metric: str, y_metric: str = AVERAGE_PRECISION) -> list[tuple]:
        """``(row, x, x_std, y, y_std)`` in percent for the rows where both metrics are defined;
        a std is 0 where there is one seed (no spread over seeds to draw)."""
        out = []
        for row in self.rows:
            x, y = row.point.mean(x_metric), row.point.mean(y_metric)
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                continue
            x_std, y_std = row.point.std(x_metric), row.point.std(y_metric)
            out.append((row, 100 * x, 100 * (x_std or 0.0), 100 * y, 100 * (y_std or 0.0)))
        return out


def tradeoff_series(view: MethodView, dataset: Any, mode: str) -> list[TradeoffSeries]:
    """The lines of the trade-off figure of one data set and target, in the table's order."""
    series: dict[tuple, TradeoffSeries] = {}
    for row in view.rows:
        if _identity({"v": row.dataset}) != _identity({"v": dataset}) or row.mode != mode:
            continue
        if row.series not in series:
            color, marker = view.styles[row.series[2:]]
            others = _others_label(row)
            series[row.series] = TradeoffSeries(row.method + (f", {others}" if others else ""), [],
                                                color, marker)
        series[row.series].rows.append(row)
    for line in series.values():
        # A line of one point says its settings in the legend; longer lines label their points.
        if len(line.rows) == 1 and line.rows[0].own:
            line.label += f" ({_own_label(line.rows[0])})"
    return list(series.values())


def tradeoff_figure(series: list[TradeoffSeries], mode: str, *, title: str):
    """A trade-off figure (a matplotlib Figure on the Agg canvas, not saved): AP against the
    target's gap, and against ΔEOdds sum when the runs recorded it and the target is not it.

    Both axes carry one standard deviation over seeds, since a method "dominates" only where its
    advantage is larger than the spread between seeds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gaps = [TARGET_GAPS[mode]]
    if EODDS_SUM not in gaps and any(line.drawn(EODDS_SUM) for line in series):
        gaps.append(EODDS_SUM)
    figure = Figure(figsize=(6.5 * len(gaps), 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(gaps), sharey=True, squeeze=False)[0]
    for ax, gap in zip(axes, gaps):
        for line in series:
            drawn = line.drawn(gap)
            if not drawn:
                continue
            ax.errorbar([x for _, x, _, _, _ in drawn], [y for _, _, _, y, _ in drawn],
                        xerr=[s for _, _, s, _, _ in drawn], yerr=[s for _, _, _, _, s in drawn],
                        color=line.color, marker=line.marker, markersize=7, linewidth=1.4,
                        elinewidth=0.9, capsize=3, label=line.label)
            # Which λ is which point of the line: the own settings that vary along it (a
            # neuron ratio zipped with the target is the same on every point of one figure).
            moving = [key for key in line.rows[0].own
                      if len({_identity({"v": row.own.get(key)}) for row in line.rows}) > 1]
            for row, x, _, y, _ in drawn:
                if moving:
                    label = ", ".join(f"{_setting_label(key)}={_md_value(row.own[key])}"
                                      for key in moving)
                    ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points",
                                fontsize=8, color=line.color)
            _mark_constant(ax, [(x, y, row.point) for row, x, _, y, _ in drawn])
        if not ax.has_data():
            ax.text(0.5, 0.5, f"no run recorded {gap}", transform=ax.transAxes, ha="center",
                    va="center", color="gray")
        ax.set_xlabel(f"{GAP_AXIS_LABELS[gap]} (percentage points) ← lower is fairer")
        ax.set_title(f"AP against {METHOD_METRICS[gap]}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test average precision (%) ↑ higher is better")
    handles, labels = axes[0].get_legend_handles_labels()
    if not labels and len(axes) > 1:
        handles, labels = axes[1].get_legend_handles_labels()
    _legend_below(figure, handles, labels, 2.2)
    figure.suptitle(f"Repair methods, target {mode}: accuracy–fairness trade-off (up and left is "
                    f"better)\n{title}", fontsize=11)
    return figure


def write_tradeoff_figures(runs_dir: Path, view: MethodView, *, title: str) -> list[Path]:
    """One trade-off PNG per data set and target (:meth:`MethodView.figure_names`)."""
    written = []
    for (dataset, mode), name in view.figure_names().items():
        where = f", {dataset}" if len(view.datasets) > 1 else ""
        figure = tradeoff_figure(tradeoff_series(view, dataset, mode), mode,
                                 title=_spread_subtitle(f"{title}{where}",
                                                        (len(row.point.runs) for row in view.rows)))
        figure.savefig(runs_dir / name, dpi=150)
        written.append(runs_dir / name)
    return written


# --------------------------------------------------------------------------------------------------
# Repair under privacy: repair methods crossed with privacy levels and minority shares

REPORT_GAP_CLOSED_CSV = "report_gap_closed.csv"
REPAIR_PRIVACY_PREFIX = "repair_privacy_"
LEVEL_KEYS = (MODE_KEY, NOISE_KEY, TARGET_KEY)
MINORITY_ACCURACY = GROUP_ACCURACY["minority"]

REPAIR_PRIVACY_PANELS: dict[str, str] = {MINORITY_ACCURACY: "Minority accuracy", **GAP_TITLES}
"""The panels of a repair-under-privacy figure, one column each: the minority's accuracy and every
gap, each against the minority share."""


@dataclass(frozen=True)
class PrivacyLevel:
    """A privacy level: non-private, or a private mode with its noise multiplier or target ε.

    Attributes:
        label: as in the other figures' legends, with the ε the runs reached
            ("DP-SGD target ε=3 (ε≈3)").
        order: non-private first, then the most noise first (smallest ε first).
        settings: the values of :data:`LEVEL_KEYS`.
    """

    label: str
    order: tuple
    settings: tuple


@dataclass(frozen=True)
class GapClosed:
    """How much of the Vanilla gap one repair method closes at one privacy level and share.

    The baseline is the grid's ``none`` point with the same data set, privacy level, share and other
    settings (the same target where the grid ran ``none`` per target). Differences are taken per
    seed, between runs of the same seed (the same resampled data; each run its own initialization,
    batch and noise streams, as :mod:`utils.seeding` keys them by the run's identity, except a
    method that only post-processes, which shares its Vanilla twin's model), and averaged over the
    seeds both points finished; the std is the sample std of those per-seed differences (ddof = 1),
    so that it measures how reliable the repair is, not how much the gap itself moves between seeds.

    Attributes:
        row: the method's row of the method view.
        baseline: the ``none`` row it is compared with, or None when the grid has none.
        level: the privacy level of both.
        gap: the target's gap metric (``test/dp_gap`` or ``test/eo_gap``).
    """

    row: MethodRow
    baseline: MethodRow | None
    level: PrivacyLevel
    gap: str

    def paired(self, metric: str) -> list[tuple[float, float]]:
        """``(baseline, method)`` values of ``metric`` for each seed both points finished with it."""
        if self.baseline is None:
            return []
        # A withheld seed (logging.private_stats: false) pairs with nothing: pairing runs whose
        # seeds are unknown would compare arbitrary runs.
        base = {run.seed: as_number(run.summary.get(metric)) for run in self.baseline.point.runs
                if run.seed is not None}
        pairs = []
        for run in self.row.point.runs:
            mine = as_number(run.summary.get(metric))
            if run.seed is not None and mine is not None and base.get(run.seed) is not None:
                pairs.append((base[run.seed], mine))
        return [(b, m) for b, m in pairs if math.isfinite(b) and math.isfinite(m)]

    def change(self, metric: str, *, closed: bool = False) -> tuple[float | None, float | None]:
        """Mean and std over seeds of method − baseline (``closed``: baseline − method, so that a
        gap the method narrows is positive); None where undefined."""
        differences = [(b - m) if closed else (m - b) for b, m in self.paired(metric)]
        if not differences:
            return None, None
        return (statistics.fmean(differences),
                statistics.stdev(differences) if len(differences) > 1 else None)

    def closed_fraction(self) -> float | None:
        """The mean gap closed over the mean baseline gap of the same seeds (None for a zero gap)."""
        pairs = self.paired(self.gap)
        base = statistics.fmean(b for b, _ in pairs) if pairs else 0.0
        closed, _ = self.change(self.gap, closed=True)
        return closed / base if closed is not None and base > 0 else None

    @property
    def seeds(self) -> list[int | None]:
        base = ({run.seed for run in self.baseline.point.runs if run.seed is not None}
                if self.baseline else set())
        return [run.seed for run in self.row.point.runs if run.seed in base]

    def constant_seeds(self) -> list[int | None]:
        """The method's seeds whose final model is a constant classifier (:func:`is_constant_run`):
        their gaps are 0 by construction, so a gap they "close" is no repair."""
        return self.row.point.constant_seeds()


@dataclass
class PrivacyRepairView:
    """The repair-under-privacy view of a grid that crosses repair methods with privacy levels.

    Attributes:
        methods: the grid's method view (its rows, own settings and styles).
        levels: the privacy levels, in :attr:`PrivacyLevel.order`.
        level_of: each row's level, by ``id`` of its point.
        closed: one :class:`GapClosed` per method row other than ``none``, in table order (data
            set, target, method, own settings, level, share).
    """

    methods: MethodView
    levels: list[PrivacyLevel]
    level_of: dict[int, PrivacyLevel]
    closed: list[GapClosed]

    def figure_names(self) -> dict[tuple[Any, str], str]:
        """The figure of each (data set, target), by file name."""
        return self.methods.figure_names(REPAIR_PRIVACY_PREFIX)

    def outputs(self) -> list[str]:
        """Every file the view may write, for :func:`_check_outputs_are_ours`."""
        return [REPORT_GAP_CLOSED_CSV, *self.figure_names().values()]

    def lines(self, dataset: Any, mode: str, level: PrivacyLevel) -> list[Series]:
        """The lines of one figure row: one per method and own settings (and any other setting
        that is not the share), its points ordered by share; colours as in the trade-off figures."""
        lines: dict[tuple, Series] = {}
        for row in self.methods.rows:
            if (_identity({"v": row.dataset}) != _identity({"v": dataset}) or row.mode != mode
                    or self.level_of[id(row.point)] != level or row.point.share() is None):
                continue
            rest = _rest_of(row)
            key = (row.method, _identity(row.own), _identity(rest))
            if key not in lines:
                label = ", ".join(part for part in (row.method, _own_label(row),
                                                    _settings_label(rest)) if part)
                lines[key] = Series(label, (len(lines),), color=self._color(row))
            lines[key].points.append(row.point)
        for line in lines.values():
            line.points.sort(key=lambda point: point.share())
        return list(lines.values())

    def _color(self, row: MethodRow) -> str:
        # The trade-off figures style a line by method and other settings; here the level and the
        # share are the figure's rows and x axis, so a method keeps the colour of its first line;
        # Vanilla, the baseline every other line is read against, is black.
        if row.method == "none":
            return "black"
        for other in self.methods.rows:
            if other.method == row.method and other.own == row.own:
                return self.methods.styles[other.series[2:]][0]
        return "black"


def _rest_of(row: MethodRow) -> dict[str, Any]:
    """The row's other settings without the privacy level and the share (the view's own axes)."""
    return {key: value for key, value in row.others.items()
            if key not in LEVEL_KEYS and key != SHARE_KEY}


def privacy_repair_view(view: MethodView | None, points: list[Point]) -> PrivacyRepairView | None:
    """The repair-under-privacy view, or None unless the grid has repair methods and a private run.

    A repair study without privacy keeps exactly its method view, and a privacy grid without
    methods its figures against the share.
    """
    if view is None or all(row.point.settings.get(MODE_KEY, "none") == "none" for row in view.rows):
        return None
    level_of: dict[int, PrivacyLevel] = {}
    levels: dict[tuple, PrivacyLevel] = {}
    for point in points:
        label, order = _series_label(point, [], points)
        settings = tuple(point.settings.get(key) for key in LEVEL_KEYS)
        level = levels.setdefault(settings, PrivacyLevel(label, order, settings))
        level_of[id(point)] = level

    def where(row: MethodRow, *, mode: bool) -> str:
        return _identity([row.dataset, row.mode if mode else None, row.others])

    baselines: dict[str, MethodRow] = {}
    for row in view.rows:
        if row.method == "none":
            baselines.setdefault(where(row, mode=True), row)
            baselines.setdefault(where(row, mode=False), row)
    closed = [GapClosed(row, baselines.get(where(row, mode=True), baselines.get(where(row, mode=False))),
                        level_of[id(row.point)], TARGET_GAPS.get(row.mode, TARGET_GAPS["dp"]))
              for row in view.rows if row.method != "none"]
    method_rank = {row.method: index for index, row in reversed(list(enumerate(view.rows)))}
    closed.sort(key=lambda c: (view.datasets.index(c.row.dataset), c.row.mode,
                               method_rank[c.row.method],
                               [_sort_value(value) for value in c.row.own.values()],
                               _identity(_rest_of(c.row)), c.level.order,
                               -(c.row.point.share() or 0.0)))
    return PrivacyRepairView(view, sorted(levels.values(), key=lambda level: level.order),
                             level_of, closed)


def write_gap_closed_csv(path: Path, view: PrivacyRepairView) -> Path:
    """report_gap_closed.csv: per method, privacy level and share, the target's gap of the method and
    of Vanilla, the gap closed (points and share of Vanilla's) and the change in accuracy and in the
    minority's accuracy, in summary.json's units (fractions), over the seeds both finished."""
    datasets = [DATASET_KEY] if len(view.methods.datasets) > 1 else []
    rest_keys = list(dict.fromkeys(key for c in view.closed for key in _rest_of(c.row)))
    header = [*datasets, FAIRNESS_MODE_KEY, METHOD_KEY, *view.methods.own_keys, "privacy_level",
              *LEVEL_KEYS, EPSILON, SHARE_KEY, *rest_keys, "n_seeds", "seeds", "gap",
              "baseline_gap_mean", "gap_mean", "gap_closed_mean", "gap_closed_std",
              "gap_closed_fraction", "accuracy_change_mean", "accuracy_change_std",
              "minority_accuracy_change_mean", "minority_accuracy_change_std",
              "constant_classifier_seeds"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for c in view.closed:
            pairs = c.paired(c.gap)
            cells = [_csv_value(c.row.dataset)] if datasets else []
            cells += [c.row.mode, c.row.method]
            cells += [_csv_value(c.row.own[key]) if key in c.row.own else ""
                      for key in view.methods.own_keys]
            cells += [c.level.label, *(_csv_value(value) for value in c.level.settings),
                      _csv_value(c.row.point.mean(EPSILON)), _csv_value(c.row.point.share())]
            cells += [_csv_value(_rest_of(c.row).get(key)) for key in rest_keys]
            cells += [len(c.seeds), " ".join(map(str, c.seeds)), c.gap]
            cells += [_csv_value(statistics.fmean(values) if pairs else None)
                      for values in ([b for b, _ in pairs], [m for _, m in pairs])]
            cells += [_csv_value(value) for value in c.change(c.gap, closed=True)]
            cells.append(_csv_value(c.closed_fraction()))
            for metric in (ACCURACY, MINORITY_ACCURACY):
                cells += [_csv_value(value) for value in c.change(metric)]
            cells.append(" ".join(map(str, c.constant_seeds())))
            writer.writerow(cells)
    return path


def _md_closed(c: GapClosed) -> str:
    """A cell of the gap-closed table: points closed ± std over seeds, and the share of Vanilla's."""
    mean, std = c.change(c.gap, closed=True)
    if mean is None:
        return "–"
    cell = f"{100 * mean:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    fraction = c.closed_fraction()
    cell += f" ({round(100 * fraction):d} %)" if fraction is not None else ""
    constant = len(c.constant_seeds())
    return cell + (f" [{constant}/{len(c.row.point.runs)} constant]" if constant else "")


def _privacy_repair_markdown(view: PrivacyRepairView, figures: Iterable[Path]) -> list[str]:
    """The view's section of report.md: a gap-closed table per data set and target, then its
    figures."""
    several = len(view.methods.datasets) > 1
    lines = [
        "## Repair under privacy",
        "",
        "How much of Vanilla's gap (`fairness.method: none` at the same privacy level, share and "
        "other settings) each method closes: the target's gap of Vanilla minus the method's, in "
        "percentage points, mean ± sample std over seeds of the per-seed differences (runs of one "
        "seed share their data and initialization), and in brackets that mean as a share of "
        "Vanilla's gap. Positive is fairer; above 100 % the gap reversed. – where Vanilla did not "
        "run at that point. [k/n constant]: k of the method's n seeds ended as a constant "
        "classifier (every test decision one class), whose gaps are 0 without any repair. The "
        "accuracy each repair costs, overall and for the minority, is in "
        f"`{REPORT_GAP_CLOSED_CSV}`.",
    ]
    names = view.figure_names()
    for dataset, mode in names:
        mine = [c for c in view.closed if _identity({"v": c.row.dataset}) == _identity({"v": dataset})
                and c.row.mode == mode]
        shares = sorted({c.row.point.share() for c in mine if c.row.point.share() is not None},
                        reverse=True)
        gap = METHOD_METRICS[TARGET_GAPS.get(mode, TARGET_GAPS["dp"])]
        where = f", {_md_value(dataset)}" if several else ""
        lines += ["", f"### Target {mode}{where}: {gap} closed", ""]
        columns = ["method", *(["settings"] if any(c.row.own or _rest_of(c.row) for c in mine)
                               else []), "privacy", *(f"share {100 * s:g} %" for s in shares)]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        table: dict[tuple, dict[float | None, GapClosed]] = {}
        for c in mine:
            key = (c.row.method, _identity(c.row.own), _identity(_rest_of(c.row)), c.level.settings)
            table.setdefault(key, {})[c.row.point.share()] = c
        for cells_by_share in table.values():
            first = next(iter(cells_by_share.values()))
            settings = ", ".join(part for part in (_own_label(first.row),
                                                   _settings_label(_rest_of(first.row))) if part)
            cells = [_md_value(first.row.method), *([settings or "–"] if len(columns) > 2 + len(shares)
                                                     else []), first.level.label]
            cells += [_md_closed(cells_by_share[s]) if s in cells_by_share else "–" for s in shares]
            lines.append("| " + " | ".join(cells) + " |")
    for figure in figures:
        dataset, mode = next(key for key, name in names.items() if name == figure.name)
        where = f", {_md_value(dataset)}" if several else ""
        lines += ["", f"![Repair under privacy, target {mode}{where}: the minority's accuracy and "
                      f"each gap against the share, one row per privacy level, one line per method]"
                      f"({figure.name})"]
    return lines


def privacy_repair_figure(view: PrivacyRepairView, dataset: Any, mode: str, *, title: str):
    """One row of panels per privacy level and one column per metric of
    :data:`REPAIR_PRIVACY_PANELS`, each against the minority share with one line per method (a
    matplotlib Figure on the Agg canvas, not saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levels = [level for level in view.levels if view.lines(dataset, mode, level)]
    figure = Figure(figsize=(3.4 * len(REPAIR_PRIVACY_PANELS), 2.9 * len(levels) + 1.2),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(levels), len(REPAIR_PRIVACY_PANELS), sharex=True, squeeze=False)
    for panels, level in zip(axes, levels):
        lines = view.lines(dataset, mode, level)
        for ax, (metric, heading) in zip(panels, REPAIR_PRIVACY_PANELS.items()):
            unit = "accuracy (%)" if metric == MINORITY_ACCURACY else "gap (points)"
            _panel(ax, lines, metric, unit, heading=f"{heading}\n{level.label}")
            ax.title.set_fontsize(8)
            if ax is not panels[0]:
                ax.set_ylabel("")
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(figure, handles, labels, 2.7)
    figure.suptitle(f"Repair under privacy, target {mode}: one row per privacy level, one line per "
                    f"method\n{title}", fontsize=11)
    return figure


def write_privacy_repair_figures(runs_dir: Path, view: PrivacyRepairView, *, title: str) -> list[Path]:
    """One PNG per data set and target (:meth:`PrivacyRepairView.figure_names`)."""
    written = []
    for (dataset, mode), name in view.figure_names().items():
        where = f", {dataset}" if len(view.methods.datasets) > 1 else ""
        figure = privacy_repair_figure(
            view, dataset, mode, title=_spread_subtitle(
                f"{title}{where}", (len(row.point.runs) for row in view.methods.rows)))
        figure.savefig(runs_dir / name, dpi=110)
        written.append(runs_dir / name)
    return written


# --------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Series:
    """The points drawn as one line: same settings but for the minority share."""

    label: str
    order: tuple
    points: list[Point] = field(default_factory=list)
    color: str = "black"


def write_figures(runs_dir: Path, points: list[Point], *, title: str) -> list[Path]:
    """The PNG figures of :data:`FIGURES` (clip fractions and individual ε only when a run logged
    them)."""
    # The object-oriented API with the Agg canvas: no pyplot state, no display, and no change to
    # the backend of a notebook that calls this.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = make_series(points)
    if not series:
        return []
    subtitle = _spread_subtitle(title, (len(point.runs) for point in points))
    written = []

    def save(figure: Figure, name: str, heading: str, handles_from) -> None:
        _legend_below(figure, *handles_from.get_legend_handles_labels(), 2.7)
        figure.suptitle(f"{heading}\n{subtitle}", fontsize=11)
        FigureCanvasAgg(figure)
        figure.savefig(runs_dir / name, dpi=150)
        written.append(runs_dir / name)

    figure = Figure(figsize=(7, 5), layout="constrained")
    ax = figure.add_subplot()
    _panel(ax, series, ACCURACY, "test accuracy (%)")
    save(figure, "accuracy.png", "Test accuracy", ax)

    figure = Figure(figsize=(11, 8.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    for ax, (metric, heading) in zip(axes.flat, GAP_TITLES.items()):
        _panel(ax, series, metric, "gap (percentage points)", heading=heading)
    for ax in axes[0]:
        ax.set_xlabel("")  # shared x axis: labelled once, under each column
    save(figure, "gaps.png", "Fairness gaps |minority − majority|", axes.flat[0])

    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (group, metric) in zip(axes, GROUP_ACCURACY.items()):
        _panel(ax, series, metric, "test accuracy (%)", heading=f"{group} group")
    axes[1].set_ylabel("")  # shared y axis: labelled once, on the left
    save(figure, "group_accuracy.png", "Accuracy of each group", axes[0])

    private = [s for s in series if any(p.values(CLIP_FRACTION["minority"]) for p in s.points)]
    if private:
        figure = Figure(figsize=(11, 5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for ax, (group, metric) in zip(axes, CLIP_FRACTION.items()):
            _panel(ax, private, metric, "examples clipped, last epoch or round (%)",
                   heading=f"{group} group")
        axes[1].set_ylabel("")
        save(figure, "clip_fraction.png", "Gradient clipping under DP, per group", axes[0])

    accounted = [s for s in series if has_individual_privacy(s.points)]
    if accounted:
        figure = Figure(figsize=(11, 5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for ax, (group, keys) in zip(axes, INDIVIDUAL_EPSILON.items()):
            _panel(ax, accounted, keys["median"], "individual ε (median; band: p10–p90)",
                   heading=f"{group} group", scale=1.0, band=(keys["p10"], keys["p90"]),
                   reference=INDIVIDUAL_WORST_CASE)
        axes[1].set_ylabel("")
        save(figure, "individual_epsilon.png",
             "Individual ε per group (not private: a diagnostic; the guarantee is the worst-case "
             "ε, dotted)", axes[0])
    return written


def make_series(points: list[Point]) -> list[Series]:
    """Lines of the figures: points grouped by every varying setting but the share, ordered
    non-private first and then from the most to the least noise (smallest to largest ε)."""
    keys = [key for key in varying_keys(points) if key != SHARE_KEY]
    by_label: dict[str, Series] = {}
    for point in points:
        if point.share() is None:
            continue  # nothing to place on the x axis
        label, order = _series_label(point, keys, points)
        by_label.setdefault(label, Series(label, order)).points.append(point)
    series = sorted(by_label.values(), key=lambda s: s.order)
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                    "tab:pink", "tab:olive", "tab:cyan"] * 10)
    for line in series:
        line.color = "black" if line.order[0] == 0 else next(palette)
        line.points.sort(key=lambda point: point.share())
    return series


def _series_label(point: Point, keys: list[str], points: list[Point]) -> tuple[str, tuple]:
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
                          else f" (ε {low:.2g}–{_md_epsilon(high)})")
    # The level says the privacy mode and noise; other privacy settings (a clipping rule) do not.
    others = [key for key in keys if key not in (MODE_KEY, NOISE_KEY, TARGET_KEY)]
    short = short_names(others)
    extra = ", ".join(f"{short[key]}={_md_value(settings.get(key))}" for key in others)
    if extra:
        label += f", {extra}"
    return label, (*order, extra)


def _panel(ax, series: list[Series], metric: str, ylabel: str, *, heading: str | None = None,
           scale: float = 100.0, band: tuple[str, str] | None = None,
           reference: str | None = None) -> None:
    """One axes: ``metric`` times ``scale`` (percent by default) against the share, one line per
    series; optionally a shaded ``band`` between two metrics' means (a percentile range) and a
    dotted ``reference`` line (a bound the metric stays under) in the line's colour."""
    shares: set[float] = set()
    for index, line in enumerate(series):
        drawn = [(point.share(), point.mean(metric), point.std(metric)) for point in line.points
                 if point.mean(metric) is not None]
        if not drawn:
            continue
        shares.update(x for x, _, _ in drawn)
        # Lines share their x positions; a small sideways shift per line (a fixed ratio, i.e. a
        # fixed distance on the log axis) keeps their error bars from hiding one another.
        dodge = 10 ** (0.012 * (index - (len(series) - 1) / 2))
        xs = [x * dodge for x, _, _ in drawn]
        ax.errorbar(xs, [scale * y for _, y, _ in drawn],
                    yerr=[scale * (s if s is not None else 0.0) for _, _, s in drawn],
                    color=line.color, marker="o", markersize=5, linewidth=1.6, capsize=3,
                    label=line.label)
        drawn_points = [point for point in line.points if point.mean(metric) is not None]
        _mark_constant(ax, [(x, scale * y, point)
                            for x, (_, y, _), point in zip(xs, drawn, drawn_points)])
        if band is not None:
            edges = [(point.share() * dodge, point.mean(band[0]), point.mean(band[1]))
                     for point in line.points if point.mean(metric) is not None]
            edges = [(x, low, high) for x, low, high in edges if low is not None and high is not None]
            if edges:
                ax.fill_between([x for x, _, _ in edges], [scale * low for _, low, _ in edges],
                                [scale * high for _, _, high in edges], color=line.color,
                                alpha=0.15, linewidth=0)
        if reference is not None:
            bound = [(point.share() * dodge, point.mean(reference)) for point in line.points
                     if point.mean(metric) is not None and point.mean(reference) is not None]
            if bound:
                ax.plot([x for x, _ in bound], [scale * y for _, y in bound], color=line.color,
                        linestyle=":", linewidth=1.2)
    ax.set_xscale("log")
    if shares:
        from matplotlib.ticker import FixedLocator, NullLocator

        ticks = sorted(shares)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{100 * share:g}%" for share in ticks])
        # Keep points off the frame: half a decade of margin on a log axis.
        ax.set_xlim(ticks[0] / 1.6, ticks[-1] * 1.6)
    ax.set_xlabel("minority share of the training set (log scale)")
    ax.set_ylabel(ylabel)
    if heading:
        ax.set_title(heading, fontsize=10)
    ax.grid(True, alpha=0.3)


# --------------------------------------------------------------------------------------------------
# Formatting


def _point_order(point: Point) -> tuple:
    """Points by privacy level (non-private first, most noise first), then share, largest first."""
    _, order = _series_label(point, [], [])
    share = point.share()
    rest = json.dumps({k: v for k, v in point.settings.items() if k != SHARE_KEY},
                      sort_keys=True, default=str)
    return (*order, -(share if share is not None else math.inf), rest)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value


def _md_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value).replace("|", "\\|")


def _md_epsilon(value: float) -> str:
    """ε for report.md: three significant digits, and ∞ for a run without noise."""
    return "∞" if math.isinf(value) else f"{value:.3g}"


def _md_metric(point: Point, metric: str) -> str:
    """A table cell: mean ± std (%), or mean [bootstrap interval] for one seed; – when undefined."""
    mean = point.mean(metric)
    if mean is None:
        return "–"
    if metric == EPSILON:
        std = point.std(metric)
        return _md_epsilon(mean) + (f" ± {std:.2g}" if std is not None else "")
    cell = f"{100 * mean:.2f}"
    std, interval = point.std(metric), point.interval(metric)
    if std is not None:
        cell += f" ± {100 * std:.2f}"
    elif interval is not None:
        cell += f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
    return cell


CONSTANT_LEGEND = "constant classifier in k/n seeds"


def _mark_constant(ax, placed: Iterable[tuple[float, float, Point]]) -> None:
    """A red ring around each drawn point (x, y) whose point has constant-classifier seeds, with
    "k/n const." beside it; the figure then gets the ring in its legend (:func:`_legend_below`)."""
    for x, y, point in placed:
        label = point.constant_label(empty="")
        if not label:
            continue
        ax.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red",
                markeredgewidth=1.4, linestyle="none", zorder=5)
        ax.annotate(f"{label} const.", (x, y), xytext=(6, -11), textcoords="offset points",
                    fontsize=7, color="red")
        ax.figure.has_constant = True


def _legend_below(figure, handles, labels, inches_per_entry: float) -> None:
    """The figure's legend under its axes, in as many columns as fit its width (with the ring of
    :func:`_mark_constant` when some point has constant-classifier seeds)."""
    if getattr(figure, "has_constant", False):
        from matplotlib.lines import Line2D

        handles = [*handles, Line2D([], [], marker="o", markersize=10, markerfacecolor="none",
                                    markeredgecolor="red", linestyle="none")]
        labels = [*labels, CONSTANT_LEGEND]
    if labels:
        columns = max(1, min(len(labels), int(figure.get_figwidth() // inches_per_entry)))
        figure.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)


def _spread_subtitle(title: str, seed_counts: Iterable[int]) -> str:
    """``title`` with how many seeds each point averages and what the error bars are."""
    seeds = sorted(set(seed_counts))
    spread = "error bars: ±1 std over seeds" if seeds != [1] else "one seed: no error bars"
    return f"{title}; mean over {'/'.join(map(str, seeds))} seed(s), {spread}"
