"""The method view: a grid of fairness repair methods (report_methods.csv, the trade-off figures and
report.md's method table)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grids.figures import legend_below, mark_constant, spread_subtitle
from grids.runs import ACCURACY, Point, csv_value, md_metric, md_value, series_label, varying_keys
from grids.sweep import format_value, short_names
from grids.table import (
    CONSTANT_COLUMNS,
    constant_note,
    csv_constant_cells,
    csv_metric_cells,
    csv_metric_header,
)
from utils.config import FAIRNESS_TARGETS

REPORT_METHODS_CSV = "report_methods.csv"


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
"""The method view's metrics with their column titles, in the order of the table of
RUNNER's study in docs/results/runner_released_procedure.md, so that the two read side by side."""

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
        return (self.dataset, self.mode, self.method, value_identity(self.others))


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
        """Every file the method view may write, for :func:`grids.report._check_outputs_are_ours`."""
        return [REPORT_METHODS_CSV, *self.figure_names().values()]


def _method(point: Point) -> str:
    # Runs from before repair methods existed have no fairness section: Vanilla training.
    return str(point.settings.get(METHOD_KEY, "none"))


def _mode(point: Point) -> str:
    return str(point.settings.get(FAIRNESS_MODE_KEY, "dp"))


def value_identity(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


def sort_value(value: Any) -> tuple:
    """A total order over config values of mixed types: null first, then numbers, then the rest."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0.0, json.dumps(value, sort_keys=True, default=repr))


def status_methods(status: Mapping[str, Any]) -> list[str]:
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
    come in ``method_order`` (the grid's, so the table reads like the params file and docs/results),
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
        own_keys[method] = [key for key in keys if len({value_identity({"v": point.settings.get(key)})
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
            identity = value_identity([base_identity(point), [point.settings.get(k) for k in other_keys]])
            seen.setdefault(identity, set()).add(value_identity({"v": point.settings.get(key)}))
        if any(len(values) > 1 for values in seen.values()):
            other_keys.append(key)

    rows = [MethodRow(point, point.settings.get(DATASET_KEY), _method(point), _mode(point),
                      {key: point.settings.get(key) for key in own_keys[_method(point)]},
                      {key: point.settings.get(key) for key in other_keys})
            for point in points]
    datasets = sorted({value_identity({"v": row.dataset}): row.dataset for row in rows}.values(),
                      key=sort_value)
    targets = {mode: index for index, mode in enumerate(FAIRNESS_TARGETS)}
    rows.sort(key=lambda row: (
        datasets.index(row.dataset), (row.mode not in targets, targets.get(row.mode, 0), row.mode),
        method_rank[row.method], series_label(row.point, [], [])[1],
        [sort_value(row.others[key]) for key in other_keys],
        [sort_value(value) for value in row.own.values()]))
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
              *csv_metric_header(METHOD_METRICS)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in view.rows:
            cells = [csv_value(row.point.settings.get(key)) for key in keys]
            # A column of another method's setting is blank, not "null": the setting does not apply.
            cells += [csv_value(row.own[key]) if key in row.own else "" for key in view.own_keys]
            cells += [csv_value(row.others[key]) for key in view.other_keys]
            cells += [len(row.point.runs), " ".join(str(seed) for seed in row.point.seeds)]
            cells += csv_constant_cells(row.point)
            cells += csv_metric_cells(row.point, METHOD_METRICS)
            writer.writerow(cells)
    return path


def _setting_label(key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return SETTING_SYMBOLS.get(name, name)


def own_label(row: MethodRow) -> str:
    return ", ".join(f"{_setting_label(key)}={md_value(value)}" for key, value in row.own.items())


def _other_names(keys: Iterable[str]) -> dict[str, str]:
    """Short names of the other settings, told apart from the target (``privacy.mode`` stays
    dotted beside ``fairness.mode``)."""
    return short_names([FAIRNESS_MODE_KEY, *keys])


def settings_label(settings: Mapping[str, Any]) -> str:
    short = _other_names(settings)
    return ", ".join(f"{short[key]}={md_value(value)}" for key, value in settings.items())


def _others_label(row: MethodRow) -> str:
    return settings_label(row.others)


def methods_markdown(view: MethodView, tradeoffs: Iterable[Path]) -> list[str]:
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
        *constant_note(row.point for row in view.rows),
    ]
    short = _other_names(view.other_keys)
    columns = (["data set"] if len(view.datasets) > 1 else []) + ["target", "method"]
    columns += ["settings"] if view.own_keys else []
    columns += [short[key] for key in view.other_keys] + ["seeds", "constant",
                                                          *METHOD_METRICS.values()]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in view.rows:
        cells = [md_value(row.dataset)] if len(view.datasets) > 1 else []
        cells += [md_value(row.mode), md_value(row.method)]
        cells += [own_label(row) or "–"] if view.own_keys else []
        cells += [md_value(row.others[key]) for key in view.other_keys]
        cells += [str(len(row.point.runs)), row.point.constant_label(),
                  *(md_metric(row.point, m) for m in METHOD_METRICS)]
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
        if value_identity({"v": row.dataset}) != value_identity({"v": dataset}) or row.mode != mode:
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
            line.label += f" ({own_label(line.rows[0])})"
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
                      if len({value_identity({"v": row.own.get(key)}) for row in line.rows}) > 1]
            for row, x, _, y, _ in drawn:
                if moving:
                    label = ", ".join(f"{_setting_label(key)}={md_value(row.own[key])}"
                                      for key in moving)
                    ax.annotate(label, (x, y), xytext=(5, 5), textcoords="offset points",
                                fontsize=8, color=line.color)
            mark_constant(ax, [(x, y, row.point) for row, x, _, y, _ in drawn])
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
    legend_below(figure, handles, labels, 2.2)
    figure.suptitle(f"Repair methods, target {mode}: accuracy–fairness trade-off (up and left is "
                    f"better)\n{title}", fontsize=11)
    return figure


def write_tradeoff_figures(runs_dir: Path, view: MethodView, *, title: str) -> list[Path]:
    """One trade-off PNG per data set and target (:meth:`MethodView.figure_names`)."""
    written = []
    for (dataset, mode), name in view.figure_names().items():
        where = f", {dataset}" if len(view.datasets) > 1 else ""
        figure = tradeoff_figure(tradeoff_series(view, dataset, mode), mode,
                                 title=spread_subtitle(f"{title}{where}",
                                                        (len(row.point.runs) for row in view.rows)))
        figure.savefig(runs_dir / name, dpi=150)
        written.append(runs_dir / name)
    return written
