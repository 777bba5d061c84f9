"""Report on a grid's runs: ``report.md``, ``report.csv`` and the paper's figures.

``python running.py --report RUNS_DIR`` (or :func:`write_report`) reads every immediate
subdirectory of ``RUNS_DIR`` holding ``config.yaml`` (a run directory; a grid puts one per point
there, see :mod:`grids.sweep`) and its ``summary.json`` when the run finished (:mod:`grids.runs`).
This module decides which views a grid gets, writes them through a staging folder and a ledger, and
assembles report.md; each view lives in its own module: the point table (:mod:`grids.table`) and
figures (:mod:`grids.figures`), the method view (:mod:`grids.methods`), the repair-under-privacy
view (:mod:`grids.repair_privacy`), what ε covers (:mod:`grids.release`) and the DP mitigation view
(:mod:`grids.mitigation`).

Grid points are found from the configs, not from directory names: runs whose resolved configs are
equal except for ``seed`` (and ``name``, ``output_dir`` and the ``logging`` section, which do not
change what is trained) are seeds of one point, so the report also works on run directories made
one by one with ``--set``. The columns of the report are the config keys that differ between
points.

For each point and each headline metric (:data:`grids.runs.METRICS`) the report gives the mean over the seeds
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
accuracy, and their columns in report.csv (:data:`grids.runs.INDIVIDUAL_METRICS`). They are computed from the
private data without noise, a diagnostic and not private; the run's guarantee is its worst-case ε.

A grid with a private run also gets "What ε covers" (:mod:`grids.release`): per training pool
(the data set's files) the runs, each run's own ε, the ε of releasing every model with a guarantee
trained on the pool together (the RDP composition of the runs' ``privacy/history``), whether a
run without a guarantee voids that release, and what the runs treated as public
(``privacy/public_data``); in report.md right after the table and in ``report_release.csv``.

A grid of fairness repair methods (any run with ``fairness.method`` other than "none", e.g.
``configs/runner_adult.yaml``) also gets a method view (:func:`grids.methods.method_view`): a table in report.md and
``report_methods.csv`` with one row per data set (when there are several), target
(``fairness.mode``), method and the method's own settings that vary in the grid (its λ,
``fairness.<method>.lam``), giving AP, accuracy, ΔDP, ΔEO and ΔEOdds sum over the seeds; and per
target a trade-off figure, ``tradeoff_<mode>.png``: AP against the target's gap (and against
ΔEOdds sum), one marker per method and λ, a method's λ values joined in λ order. A grid without a
repair method gets exactly the report it got before.

A grid that crosses repair methods with privacy (``configs/repair_under_dp_*.yaml``: some run has
``privacy.mode`` other than "none") also gets the repair-under-privacy view
(:func:`grids.repair_privacy.privacy_repair_view`): per target a figure ``repair_privacy_<mode>.png`` with one row per
privacy level and one column per metric (the minority's accuracy and each gap) against the share,
one line per method; and a table, in report.md and ``report_gap_closed.csv``, of how much of
Vanilla's gap each method closes at each privacy level and share, with the accuracy it costs
(per-seed differences against the ``none`` run of the same seed, see :class:`grids.repair_privacy.GapClosed`).

A grid of clipping rules (some DP run with ``privacy.clipping`` other than flat,
``configs/dp_mitigation_*.yaml``) also gets the DP mitigation view (:mod:`grids.mitigation`):
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

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from grids.figures import FIGURES, write_figures
from grids.methods import (
    REPORT_METHODS_CSV,
    MethodView,
    method_view,
    methods_markdown,
    status_methods,
    write_methods_csv,
    write_tradeoff_figures,
)
from grids.mitigation import mitigation_view, rule_order, write_mitigation
from grids.release import REPORT_RELEASE_CSV, Pool, release_markdown, release_pools, write_release_csv
from grids.repair_privacy import (
    REPORT_GAP_CLOSED_CSV,
    PrivacyRepairView,
    privacy_repair_markdown,
    privacy_repair_view,
    write_gap_closed_csv,
    write_privacy_repair_figures,
)
from grids.runs import (
    METRICS,
    NOT_A_SETTING,
    Point,
    Problem,
    group_points,
    load_runs,
    load_status,
    md_metric,
    md_value,
    varying_keys,
)
from grids.sweep import STATUS_FILE, short_names
from grids.table import constant_note, has_individual_privacy, individual_markdown, write_csv
from utils.errors import UserInputError
from utils.rundir import TOOL, read_json_object
from utils.sink import CONFIG_FILE, SUMMARY_FILE, write_json_atomic

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"


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
    status = load_status(runs_dir, warn=False)
    swept = [key for key in status.get("keys", []) if key not in NOT_A_SETTING]
    keys = varying_keys(points, always=swept)
    view = method_view(points, method_order=status_methods(status))
    private_view = privacy_repair_view(view, points)
    mitigation = mitigation_view(points, rule_order(status))
    release = release_pools((run.settings, run.summary) for run in runs)  # grids.release
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
        if mitigation is not None:  # a grid of clipping rules (grids.mitigation)
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


def write_markdown(path: Path, runs_dir: Path, points: list[Point], keys: list[str],
                   problems: list[Problem], figures: list[Path], *, view: MethodView | None = None,
                   tradeoffs: Iterable[Path] = (), private_view: PrivacyRepairView | None = None,
                   private_figures: Iterable[Path] = (), release: list[Pool] | None = None,
                   sections: Iterable[list[str]] = ()) -> Path:
    """report.md: what was read, the table of points, what ε covers (the combined release per
    training pool, :mod:`grids.release`, when a run is private), the method view (a grid of
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
        *constant_note(points),
    ]
    columns = [*(short[key] for key in keys), "seeds", "constant", *METRICS.values()]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for point in points:
        cells = [md_value(point.settings.get(key)) for key in keys]
        cells += [str(len(point.runs)), point.constant_label()]
        cells += [md_metric(point, metric) for metric in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if release:
        lines += ["", *release_markdown(release)]
    if has_individual_privacy(points):
        lines += ["", *individual_markdown(points, keys, short)]
    if view is not None:
        lines += ["", *methods_markdown(view, tradeoffs)]
    if private_view is not None:
        lines += ["", *privacy_repair_markdown(private_view, private_figures)]
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
