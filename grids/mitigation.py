"""The DP mitigation view of a report: clipping rules against DP-SGD and its non-private twin.

A grid whose runs vary ``privacy.clipping`` (``configs/dp_mitigation_*.yaml``) asks two questions
of each rule (:mod:`privacy.clipping`): what per-group accuracy and which gaps does it give at each
privacy level and minority share, and how much of the disparity that DP-SGD adds does it take
away, at what accuracy? :func:`mitigation_view` answers both from the grid's points
(:mod:`grids.runs`), and :func:`grids.report.write_report` adds to the report:

- a table in report.md (and ``report_mitigation.csv``) per data set: for each privacy level, share
  and rule, ε, accuracy, each group's accuracy and every gap (mean ± std over seeds);
- a table of DP's added gap removed: for the accuracy gap (the accuracy parity gap), ΔDP and ΔEO,
  per seed, DP's added gap is flat DP-SGD's gap minus the non-private run's, and a rule removes
  flat's gap minus its own (positive: fairer than DP-SGD); the mean ± std over seeds, and the
  mean removed as a share of the mean added (100 %: back to the non-private gap; above, fairer
  than non-private); beside it the accuracy the rule costs against flat DP-SGD (flat's minus the
  rule's, per seed; positive: the rule is less accurate) and the minority's accuracy it gains;
- ``mitigation_share.png``: per privacy level a row of panels (each group's accuracy, the accuracy
  gap, ΔDP, ΔEO) against the share, one line per rule, the non-private twin in black;
- ``mitigation_epsilon.png``: per share a row of the same panels against ε, one line per rule
  through its privacy levels, the non-private twin as a dashed horizontal line.

A rule's row is told from others by ``privacy.clipping`` and the settings that go with it in the
grid (fair-dp trains the global rules at another learning rate: a key whose value is fixed by the
rule is part of the rule, not of the point). Runs are paired by seed: one seed's runs share their
data and initialization streams, so the differences measure the rule, not the draw.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grids.figures import Series, legend_below, panel, spread_subtitle
from grids.methods import DATASET_KEY, sort_value
from grids.repair_privacy import LEVEL_KEYS
from grids.runs import (
    ACCURACY,
    EPSILON,
    GROUP_ACCURACY,
    MODE_KEY,
    SHARE_KEY,
    Point,
    csv_value,
    md_metric,
    md_value,
    series_label,
    varying_keys,
)
from utils.sink import as_number

CLIPPING_KEY = "privacy.clipping"
REPORT_MITIGATION_CSV = "report_mitigation.csv"
REPORT_REMOVED_CSV = "report_mitigation_removed.csv"
SHARE_FIGURE, EPSILON_FIGURE = "mitigation_share", "mitigation_epsilon"
NON_PRIVATE, FLAT = "non-private", "flat"

ACCURACY_GAP = "test/accuracy_gap"
GAPS = {ACCURACY_GAP: "acc. gap", "test/dp_gap": "ΔDP", "test/eo_gap": "ΔEO"}
"""The gaps whose DP-added part the removed table measures, with their column titles."""

TABLE_METRICS: dict[str, str] = {
    EPSILON: "ε", ACCURACY: "accuracy",
    **{metric: f"{group} acc." for group, metric in GROUP_ACCURACY.items()},
    **GAPS, "test/eodds_gap": "ΔEOdds",
    **{f"test/selection_rate/group={group}": f"{group} sel." for group in ("minority", "majority")},
}
"""The per-rule table's metrics with their column titles (ε plain, the rest in %). The selection
rates show a model that (almost) always predicts one class, whose gaps are the groups' base rates
rather than anything the rule did."""

PANELS: dict[str, str] = {**{metric: f"{group} accuracy" for group, metric in GROUP_ACCURACY.items()},
                          ACCURACY_GAP: "Accuracy gap", "test/dp_gap": "ΔDP",
                          "test/eo_gap": "ΔEO (TPR gap)"}
"""The figures' panels, one column each."""

RULE_COLORS = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
               "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


@dataclass(frozen=True)
class RuleRow:
    """One point of the view.

    Attributes:
        point: the grid point (its runs are the seeds).
        rule: ``non-private``, or the ``privacy.clipping`` rule (``flat`` is DP-SGD itself).
        level: the privacy level's label ("DP-SGD σ=1 (ε≈3.8)"), "non-private" for the twin.
        level_order: its sort key (non-private first, then the most noise first).
        context: the point's other settings that make it a different point (share, data set, ...).
        own: the rule's own settings (``privacy.<rule>.…``) where they vary among its points (a
            grid sweeping Z), else empty.
    """

    point: Point
    rule: str
    level: str
    level_order: tuple
    context: dict[str, Any]
    own: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The rule with its varying own settings, as the tables show it."""
        settings = ", ".join(f"{key.rsplit('.', 1)[-1]}={md_value(value)}"
                             for key, value in self.own.items())
        return f"{self.rule} ({settings})" if settings else self.rule

    @property
    def share(self) -> float | None:
        return self.point.share()

    @property
    def dataset(self) -> Any:
        return self.context.get(DATASET_KEY)

    def where(self, *, level: bool) -> str:
        """The identity of the point's context (with its privacy level, or without it)."""
        return json.dumps([self.context, self.level if level else None], sort_keys=True,
                          default=repr)


@dataclass(frozen=True)
class Removed:
    """How much of DP's added gap one rule removes at one privacy level and share.

    Attributes:
        row: the rule's row.
        flat: the flat DP-SGD row of the same level and context, or None.
        private: the non-private row of the same context, or None.
    """

    row: RuleRow
    flat: RuleRow | None
    private: RuleRow | None

    def seeds(self) -> list[Any]:
        """The seeds all three points finished."""
        if self.flat is None or self.private is None:
            return []
        have = [{run.seed for run in row.point.runs} for row in (self.row, self.flat, self.private)]
        return sorted(have[0] & have[1] & have[2], key=lambda s: (s is None, s))

    def _by_seed(self, row: RuleRow, metric: str) -> dict[Any, float]:
        values = {run.seed: as_number(run.summary.get(metric)) for run in row.point.runs}
        return {seed: value for seed, value in values.items()
                if value is not None and math.isfinite(value)}

    def differences(self, metric: str, first: RuleRow, second: RuleRow) -> list[float]:
        """first − second of ``metric``, per seed of :meth:`seeds` where both have it."""
        a, b = self._by_seed(first, metric), self._by_seed(second, metric)
        return [a[seed] - b[seed] for seed in self.seeds() if seed in a and seed in b]

    def added(self, gap: str) -> list[float]:
        """DP's added gap, per seed: flat's gap − the non-private run's."""
        return self.differences(gap, self.flat, self.private) if self.seeds() else []

    def removed(self, gap: str) -> list[float]:
        """The gap the rule removes, per seed: flat's gap − the rule's."""
        return self.differences(gap, self.flat, self.row) if self.seeds() else []

    def removed_fraction(self, gap: str) -> float | None:
        """The mean removed over the mean added (None when DP added no gap on average)."""
        added, removed = self.added(gap), self.removed(gap)
        if not added or not removed or statistics.fmean(added) <= 0:
            return None
        return statistics.fmean(removed) / statistics.fmean(added)

    def accuracy_cost(self) -> list[float]:
        """The accuracy the rule costs against flat DP-SGD, per seed (flat's − the rule's)."""
        return self.differences(ACCURACY, self.flat, self.row) if self.seeds() else []

    def minority_gain(self) -> list[float]:
        """The minority's accuracy the rule gains over flat DP-SGD, per seed."""
        minority = GROUP_ACCURACY["minority"]
        return self.differences(minority, self.row, self.flat) if self.seeds() else []


@dataclass
class MitigationView:
    """The view's rows (data set, level, share, rule order), its rule settings and its removed
    table.

    Attributes:
        rows: every point, as a :class:`RuleRow`.
        rules: the rules in the grid's order (non-private, flat, then as the grid lists them).
        rule_keys: the settings that go with a rule (its learning rate in fair-dp's setting).
        rule_settings: each rule's values of ``rule_keys``.
        removed: one :class:`Removed` per private rule other than flat.
        datasets: the data sets, in row order.
    """

    rows: list[RuleRow]
    rules: list[str]
    rule_keys: list[str]
    rule_settings: dict[str, dict[str, Any]]
    removed: list[Removed]
    datasets: list[Any] = field(default_factory=list)

    def figure_names(self) -> dict[tuple[str, Any], str]:
        names = {}
        for dataset in self.datasets:
            suffix = f"_{dataset}" if len(self.datasets) > 1 else ""
            names[(SHARE_FIGURE, dataset)] = f"{SHARE_FIGURE}{suffix}.png"
            names[(EPSILON_FIGURE, dataset)] = f"{EPSILON_FIGURE}{suffix}.png"
        return names

    def outputs(self) -> list[str]:
        """Every file the view may write (for the report's check that they are its own)."""
        return [REPORT_MITIGATION_CSV, REPORT_REMOVED_CSV, *self.figure_names().values()]

    def color(self, rule: str) -> str:
        if rule == NON_PRIVATE:
            return "black"
        private = [r for r in self.rules if r != NON_PRIVATE]
        return RULE_COLORS[private.index(rule) % len(RULE_COLORS)]

    def label(self, rule: str) -> str:
        name = "DP-SGD (flat)" if rule == FLAT else rule
        settings = self.rule_settings.get(rule, {})
        extra = ", ".join(f"{key.rsplit('.', 1)[-1]} {md_value(value)}"
                          for key, value in settings.items()) if rule != NON_PRIVATE else ""
        return f"{name} ({extra})" if extra else name


def _rule(point: Point) -> str:
    if point.settings.get(MODE_KEY, "none") == "none":
        return NON_PRIVATE
    return str(point.settings.get(CLIPPING_KEY, FLAT))


def rule_order(status: dict[str, Any]) -> list[str]:
    """The rules in the order the grid lists them (its zip or sweep), from its status file."""
    order: dict[str, None] = {}
    for entry in status.get("points", []):
        values = entry.get("values")
        if isinstance(values, dict) and isinstance(values.get(CLIPPING_KEY), str):
            order.setdefault(values[CLIPPING_KEY])
    return list(order)


def mitigation_view(points: list[Point], rule_order: Iterable[str] = ()) -> MitigationView | None:
    """The view of ``points``, or None unless some private run used a rule other than flat."""
    if not any(_rule(point) not in (NON_PRIVATE, FLAT) for point in points):
        return None
    listed = list(dict.fromkeys([NON_PRIVATE, FLAT, *rule_order]))
    rules = sorted({_rule(point) for point in points},
                   key=lambda r: (r not in listed, listed.index(r) if r in listed else 0, r))
    # A setting is the rule's when every rule's points agree on it (fair-dp's learning rate per
    # rule); the rules' own sections (privacy.<rule>.*) are the rule's too. Others place a point.
    candidates = [key for key in varying_keys(points)
                  if key not in (CLIPPING_KEY, *LEVEL_KEYS, SHARE_KEY)]
    rule_keys = []
    for key in candidates:
        per_rule: dict[str, set[str]] = {}
        for point in points:
            per_rule.setdefault(_rule(point), set()).add(json.dumps(point.settings.get(key),
                                                                    default=repr))
        if key.startswith("privacy.") or all(len(values) == 1 for values in per_rule.values()):
            rule_keys.append(key)
    context_keys = [key for key in candidates if key not in rule_keys]
    shown = [key for key in rule_keys if not key.startswith("privacy.")]
    rule_settings = {}
    for point in points:
        rule_settings.setdefault(_rule(point), {key: point.settings.get(key) for key in shown})
    own_keys = {rule: [key for key in rule_keys if key.startswith(f"privacy.{rule}.") and len(
        {json.dumps(point.settings.get(key), default=repr) for point in points
         if _rule(point) == rule}) > 1] for rule in rules}
    rows = []
    for point in points:
        label, order = series_label(point, [], points)
        context = {key: point.settings.get(key) for key in context_keys}
        context[SHARE_KEY] = point.share()
        if DATASET_KEY not in context:
            context[DATASET_KEY] = point.settings.get(DATASET_KEY)
        own = {key: point.settings.get(key) for key in own_keys[_rule(point)]}
        rows.append(RuleRow(point, _rule(point), label, order, context, own))
    datasets = sorted({json.dumps(row.dataset, default=repr): row.dataset for row in rows}.values(),
                      key=sort_value)
    rank = {rule: index for index, rule in enumerate(rules)}
    rows.sort(key=lambda row: (datasets.index(row.dataset), row.level_order,
                               -(row.share if row.share is not None else math.inf),
                               json.dumps(row.context, sort_keys=True, default=repr),
                               rank[row.rule], [sort_value(v) for v in row.own.values()]))
    flats = {row.where(level=True): row for row in rows if row.rule == FLAT}
    privates = {row.where(level=False): row for row in rows if row.rule == NON_PRIVATE}
    removed = [Removed(row, flats.get(row.where(level=True)), privates.get(row.where(level=False)))
               for row in rows if row.rule not in (NON_PRIVATE, FLAT)]
    return MitigationView(rows, rules, shown, rule_settings, removed, datasets)


# --- Tables ----------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _md_points(values: list[float]) -> str:
    """Percentage points: mean ± std over seeds, signed."""
    mean, std = _mean_std(values)
    if mean is None:
        return "–"
    return f"{100 * mean:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def write_mitigation_csv(path: Path, view: MitigationView) -> Path:
    """report_mitigation.csv: per data set, level, share and rule, the table's metrics (mean, std
    over seeds) in summary.json's units."""
    context_keys = list(dict.fromkeys(key for row in view.rows for key in row.context))
    own_keys = list(dict.fromkeys(key for row in view.rows for key in row.own))
    header = [*context_keys, "privacy_level", "rule", *view.rule_keys, *own_keys, "n_seeds",
              "seeds"]
    header += [f"{metric}_{part}" for metric in TABLE_METRICS for part in ("mean", "std")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in view.rows:
            cells = [csv_value(row.context.get(key)) for key in context_keys]
            cells += [row.level, row.rule]
            cells += [csv_value(row.point.settings.get(key)) for key in view.rule_keys]
            cells += [csv_value(row.own[key]) if key in row.own else "" for key in own_keys]
            cells += [len(row.point.runs), " ".join(str(seed) for seed in row.point.seeds)]
            for metric in TABLE_METRICS:
                cells += [csv_value(row.point.mean(metric)), csv_value(row.point.std(metric))]
            writer.writerow(cells)
    return path


def write_removed_csv(path: Path, view: MitigationView) -> Path:
    """report_mitigation_removed.csv: per rule, level and share, DP's added gap and the gap the rule
    removes (per gap), the share removed, the accuracy cost and the minority's accuracy gain."""
    context_keys = list(dict.fromkeys(key for r in view.removed for key in r.row.context))
    own_keys = list(dict.fromkeys(key for r in view.removed for key in r.row.own))
    header = [*context_keys, "privacy_level", "rule", *own_keys, "n_seeds", "seeds"]
    for gap in GAPS:
        header += [f"{gap}_added_mean", f"{gap}_added_std", f"{gap}_removed_mean",
                   f"{gap}_removed_std", f"{gap}_removed_fraction"]
    header += ["accuracy_cost_mean", "accuracy_cost_std", "minority_accuracy_gain_mean",
               "minority_accuracy_gain_std"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in view.removed:
            cells = [csv_value(r.row.context.get(key)) for key in context_keys]
            cells += [r.row.level, r.row.rule]
            cells += [csv_value(r.row.own[key]) if key in r.row.own else "" for key in own_keys]
            cells += [len(r.seeds()), " ".join(map(str, r.seeds()))]
            for gap in GAPS:
                cells += [csv_value(v) for v in (*_mean_std(r.added(gap)),
                                                  *_mean_std(r.removed(gap)))]
                cells.append(csv_value(r.removed_fraction(gap)))
            cells += [csv_value(v) for v in (*_mean_std(r.accuracy_cost()),
                                              *_mean_std(r.minority_gain()))]
            writer.writerow(cells)
    return path


def mitigation_markdown(view: MitigationView, figures: Iterable[Path]) -> list[str]:
    """The view's section of report.md."""
    several = len(view.datasets) > 1
    lines = [
        "## DP mitigations: clipping rules",
        "",
        "Each clipping rule (`privacy.clipping`, `privacy/clipping.py`) beside DP-SGD's own "
        "(flat) and the non-private twin: mean ± sample std over seeds, accuracies in %, gaps in "
        "percentage points, ε at the run's δ with every release of the rule composed in; the "
        "groups' selection rates (sel.) near 0 or 100 % mark a model that (almost) always predicts "
        "one class, whose gaps are the groups' base rates. "
        f"Unrounded: `{REPORT_MITIGATION_CSV}`.",
    ]
    if view.rule_keys:
        lines += ["", "Settings that go with a rule in this grid: " + "; ".join(
            f"{view.label(rule)}" for rule in view.rules if rule != NON_PRIVATE) + "."]
    other_context = [key for key in dict.fromkeys(k for row in view.rows for k in row.context)
                     if key not in (SHARE_KEY, DATASET_KEY)]
    for dataset in view.datasets:
        mine = [row for row in view.rows if row.dataset == dataset]
        where = f" ({md_value(dataset)})" if several else ""
        lines += ["", f"### Per-group accuracy and gaps{where}", ""]
        columns = ["privacy", "share", *other_context, "rule", "seeds", *TABLE_METRICS.values()]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in mine:
            share = row.share
            cells = [row.level, "–" if share is None else f"{100 * share:g} %"]
            cells += [md_value(row.context.get(key)) for key in other_context]
            cells += [row.name, str(len(row.point.runs))]
            cells += [md_metric(row.point, metric) for metric in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        removed = [r for r in view.removed if r.row.dataset == dataset]
        lines += [
            "", f"### DP's added gap removed{where}", "",
            "Per seed, DP's added gap is flat DP-SGD's gap minus the non-private run's; a rule "
            "removes flat's gap minus its own (positive: fairer than DP-SGD). Mean ± sample std "
            "over the seeds all three finished, in percentage points, and in brackets the mean "
            "removed over the mean added (100 %: back to the non-private gap). The accuracy cost is "
            "flat's accuracy minus the rule's (positive: the rule is less accurate); the minority "
            "gain is the rule's minority accuracy minus flat's. – where a baseline is missing or "
            f"DP added no gap on average. Unrounded: `{REPORT_REMOVED_CSV}`.",
            "",
        ]
        columns = ["privacy", "share", *other_context, "rule", "seeds",
                   *(f"{title} added" for title in GAPS.values()),
                   *(f"{title} removed" for title in GAPS.values()),
                   "accuracy cost", "minority gain"]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in removed:
            share = r.row.share
            cells = [r.row.level, "–" if share is None else f"{100 * share:g} %"]
            cells += [md_value(r.row.context.get(key)) for key in other_context]
            cells += [r.row.name, str(len(r.seeds()))]
            cells += [_md_points(r.added(gap)) for gap in GAPS]
            for gap in GAPS:
                cell = _md_points(r.removed(gap))
                fraction = r.removed_fraction(gap)
                cells.append(cell + (f" ({round(100 * fraction):d} %)" if fraction is not None
                                     and cell != "–" else ""))
            cells += [_md_points(r.accuracy_cost()), _md_points(r.minority_gain())]
            lines.append("| " + " | ".join(cells) + " |")
    names = {name: key for key, name in view.figure_names().items()}
    for figure in figures:
        kind, dataset = names[figure.name]
        where = f", {md_value(dataset)}" if several else ""
        what = ("against the minority share, one row per privacy level" if kind == SHARE_FIGURE
                else "against ε, one row per minority share")
        lines += ["", f"![Clipping rules{where}: each group's accuracy and the gaps {what}, one "
                      f"line per rule]({figure.name})"]
    return lines


# --- Figures ---------------------------------------------------------------------------------

def _every_line(axes) -> tuple[list, list]:
    """The legend entries of every row's first panel, once each (a rule may miss a level)."""
    entries: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def share_figure(view: MitigationView, dataset: Any, *, title: str):
    """Per privacy level a row of :data:`PANELS` against the share, one line per rule (and the
    non-private twin in black in every row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mine = [row for row in view.rows if row.dataset == dataset and row.share is not None]
    levels = sorted({row.level: row.level_order for row in mine if row.rule != NON_PRIVATE}.items(),
                    key=lambda item: item[1])
    figure = Figure(figsize=(3.3 * len(PANELS), 2.9 * max(1, len(levels)) + 1.3),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(levels)), len(PANELS), sharex=True, squeeze=False)
    for panels, (level, _) in zip(axes, levels):
        lines = []
        for rule in view.rules:
            points = [row.point for row in mine if row.rule == rule
                      and (rule == NON_PRIVATE or row.level == level)]
            if points:
                points.sort(key=lambda point: point.share())
                lines.append(Series(view.label(rule), (), points, color=view.color(rule)))
        for ax, (metric, heading) in zip(panels, PANELS.items()):
            unit = "accuracy (%)" if "accuracy/" in metric else "gap (points)"
            panel(ax, lines, metric, unit, heading=f"{heading}\n{level}")
            ax.title.set_fontsize(8)
            if ax is not panels[0]:
                ax.set_ylabel("")
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    legend_below(figure, *_every_line(axes), 2.6)
    figure.suptitle(f"Clipping rules against the minority share, one row per privacy level\n"
                    f"{title}", fontsize=11)
    return figure


def epsilon_figure(view: MitigationView, dataset: Any, *, title: str):
    """Per share a row of :data:`PANELS` against ε (the mean over seeds), one line per rule through
    its privacy levels; the non-private twin as a dashed horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mine = [row for row in view.rows if row.dataset == dataset and row.share is not None]
    shares = sorted({row.share for row in mine}, reverse=True)
    figure = Figure(figsize=(3.3 * len(PANELS), 2.9 * max(1, len(shares)) + 1.3),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(1, len(shares)), len(PANELS), sharex=True, squeeze=False)
    for panels, share in zip(axes, shares):
        for ax, (metric, heading) in zip(panels, PANELS.items()):
            for rule in view.rules:
                rows = [row for row in mine if row.rule == rule and row.share == share]
                color = view.color(rule)
                if rule == NON_PRIVATE:
                    for row in rows:
                        mean = row.point.mean(metric)
                        if mean is not None:
                            ax.axhline(100 * mean, color=color, linestyle="--", linewidth=1.2,
                                       label=view.label(rule))
                    continue
                drawn = sorted((row.point.mean(EPSILON), row.point.mean(metric),
                                row.point.std(metric)) for row in rows
                               if row.point.mean(EPSILON) is not None
                               and math.isfinite(row.point.mean(EPSILON))
                               and row.point.mean(metric) is not None)
                if drawn:
                    ax.errorbar([e for e, _, _ in drawn], [100 * m for _, m, _ in drawn],
                                yerr=[100 * (s or 0.0) for _, _, s in drawn], color=color,
                                marker="o", markersize=4, linewidth=1.4, capsize=3,
                                label=view.label(rule))
            unit = "accuracy (%)" if "accuracy/" in metric else "gap (points)"
            ax.set_title(f"{heading}\nminority share {100 * share:g} %", fontsize=8)
            ax.set_ylabel(unit if ax is panels[0] else "")
            ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("ε (mean over seeds)")
    legend_below(figure, *_every_line(axes), 2.6)
    figure.suptitle(f"Clipping rules against ε, one row per minority share (dashed: non-private)\n"
                    f"{title}", fontsize=11)
    return figure


def write_mitigation_figures(runs_dir: Path, view: MitigationView, *, title: str) -> list[Path]:
    """Both figures per data set (:meth:`MitigationView.figure_names`)."""
    written = []
    for (kind, dataset), name in view.figure_names().items():
        where = f", {dataset}" if len(view.datasets) > 1 else ""
        subtitle = spread_subtitle(f"{title}{where}", (len(row.point.runs) for row in view.rows))
        draw = share_figure if kind == SHARE_FIGURE else epsilon_figure
        draw(view, dataset, title=subtitle).savefig(runs_dir / name, dpi=110)
        written.append(runs_dir / name)
    return written


def write_mitigation(runs_dir: Path, view: MitigationView, *, title: str
                     ) -> tuple[list[Path], list[str]]:
    """Write the view's CSV files and figures; return them and the view's report.md section."""
    written = [write_mitigation_csv(runs_dir / REPORT_MITIGATION_CSV, view),
               write_removed_csv(runs_dir / REPORT_REMOVED_CSV, view)]
    figures = write_mitigation_figures(runs_dir, view, title=title)
    return written + figures, mitigation_markdown(view, figures)
