"""The repair-under-privacy view: repair methods crossed with privacy levels and minority shares
(report_gap_closed.csv, the repair_privacy_<mode>.png figures and report.md's gap-closed table)."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grids.figures import Series, legend_below, panel, spread_subtitle
from grids.methods import (
    DATASET_KEY,
    FAIRNESS_MODE_KEY,
    METHOD_KEY,
    METHOD_METRICS,
    TARGET_GAPS,
    MethodRow,
    MethodView,
    own_label,
    settings_label,
    sort_value,
    value_identity,
)
from grids.runs import (
    ACCURACY,
    EPSILON,
    GAP_TITLES,
    GROUP_ACCURACY,
    MODE_KEY,
    NOISE_KEY,
    SHARE_KEY,
    TARGET_KEY,
    Point,
    csv_value,
    md_value,
    series_label,
)
from utils.sink import as_number

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
        """The method's seeds whose final model is a constant classifier (:func:`grids.runs.is_constant_run`):
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
        """Every file the view may write, for :func:`grids.report._check_outputs_are_ours`."""
        return [REPORT_GAP_CLOSED_CSV, *self.figure_names().values()]

    def lines(self, dataset: Any, mode: str, level: PrivacyLevel) -> list[Series]:
        """The lines of one figure row: one per method and own settings (and any other setting
        that is not the share), its points ordered by share; colours as in the trade-off figures."""
        lines: dict[tuple, Series] = {}
        for row in self.methods.rows:
            if (value_identity({"v": row.dataset}) != value_identity({"v": dataset}) or row.mode != mode
                    or self.level_of[id(row.point)] != level or row.point.share() is None):
                continue
            rest = _rest_of(row)
            key = (row.method, value_identity(row.own), value_identity(rest))
            if key not in lines:
                label = ", ".join(part for part in (row.method, own_label(row),
                                                    settings_label(rest)) if part)
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
        label, order = series_label(point, [], points)
        settings = tuple(point.settings.get(key) for key in LEVEL_KEYS)
        level = levels.setdefault(settings, PrivacyLevel(label, order, settings))
        level_of[id(point)] = level

    def where(row: MethodRow, *, mode: bool) -> str:
        return value_identity([row.dataset, row.mode if mode else None, row.others])

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
                               [sort_value(value) for value in c.row.own.values()],
                               value_identity(_rest_of(c.row)), c.level.order,
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
            cells = [csv_value(c.row.dataset)] if datasets else []
            cells += [c.row.mode, c.row.method]
            cells += [csv_value(c.row.own[key]) if key in c.row.own else ""
                      for key in view.methods.own_keys]
            cells += [c.level.label, *(csv_value(value) for value in c.level.settings),
                      csv_value(c.row.point.mean(EPSILON)), csv_value(c.row.point.share())]
            cells += [csv_value(_rest_of(c.row).get(key)) for key in rest_keys]
            cells += [len(c.seeds), " ".join(map(str, c.seeds)), c.gap]
            cells += [csv_value(statistics.fmean(values) if pairs else None)
                      for values in ([b for b, _ in pairs], [m for _, m in pairs])]
            cells += [csv_value(value) for value in c.change(c.gap, closed=True)]
            cells.append(csv_value(c.closed_fraction()))
            for metric in (ACCURACY, MINORITY_ACCURACY):
                cells += [csv_value(value) for value in c.change(metric)]
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


def privacy_repair_markdown(view: PrivacyRepairView, figures: Iterable[Path]) -> list[str]:
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
        mine = [c for c in view.closed if value_identity({"v": c.row.dataset}) == value_identity({"v": dataset})
                and c.row.mode == mode]
        shares = sorted({c.row.point.share() for c in mine if c.row.point.share() is not None},
                        reverse=True)
        gap = METHOD_METRICS[TARGET_GAPS.get(mode, TARGET_GAPS["dp"])]
        where = f", {md_value(dataset)}" if several else ""
        lines += ["", f"### Target {mode}{where}: {gap} closed", ""]
        columns = ["method", *(["settings"] if any(c.row.own or _rest_of(c.row) for c in mine)
                               else []), "privacy", *(f"share {100 * s:g} %" for s in shares)]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        table: dict[tuple, dict[float | None, GapClosed]] = {}
        for c in mine:
            key = (c.row.method, value_identity(c.row.own), value_identity(_rest_of(c.row)), c.level.settings)
            table.setdefault(key, {})[c.row.point.share()] = c
        for cells_by_share in table.values():
            first = next(iter(cells_by_share.values()))
            settings = ", ".join(part for part in (own_label(first.row),
                                                   settings_label(_rest_of(first.row))) if part)
            cells = [md_value(first.row.method), *([settings or "–"] if len(columns) > 2 + len(shares)
                                                     else []), first.level.label]
            cells += [_md_closed(cells_by_share[s]) if s in cells_by_share else "–" for s in shares]
            lines.append("| " + " | ".join(cells) + " |")
    for figure in figures:
        dataset, mode = next(key for key, name in names.items() if name == figure.name)
        where = f", {md_value(dataset)}" if several else ""
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
            panel(ax, lines, metric, unit, heading=f"{heading}\n{level.label}")
            ax.title.set_fontsize(8)
            if ax is not panels[0]:
                ax.set_ylabel("")
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_below(figure, handles, labels, 2.7)
    figure.suptitle(f"Repair under privacy, target {mode}: one row per privacy level, one line per "
                    f"method\n{title}", fontsize=11)
    return figure


def write_privacy_repair_figures(runs_dir: Path, view: PrivacyRepairView, *, title: str) -> list[Path]:
    """One PNG per data set and target (:meth:`PrivacyRepairView.figure_names`)."""
    written = []
    for (dataset, mode), name in view.figure_names().items():
        where = f", {dataset}" if len(view.methods.datasets) > 1 else ""
        figure = privacy_repair_figure(
            view, dataset, mode, title=spread_subtitle(
                f"{title}{where}", (len(row.point.runs) for row in view.methods.rows)))
        figure.savefig(runs_dir / name, dpi=110)
        written.append(runs_dir / name)
    return written
