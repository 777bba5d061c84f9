"""The point figures (accuracy, gaps, each group's accuracy, clipped shares, individual ε against
the minority share, one line per privacy level) and the drawing helpers every view's figures use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grids.runs import (
    ACCURACY,
    CLIP_FRACTION,
    GAP_TITLES,
    GROUP_ACCURACY,
    INDIVIDUAL_EPSILON,
    INDIVIDUAL_WORST_CASE,
    SHARE_KEY,
    Point,
    series_label,
    varying_keys,
)
from grids.table import has_individual_privacy

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
    subtitle = spread_subtitle(title, (len(point.runs) for point in points))
    written = []

    def save(figure: Figure, name: str, heading: str, handles_from) -> None:
        legend_below(figure, *handles_from.get_legend_handles_labels(), 2.7)
        figure.suptitle(f"{heading}\n{subtitle}", fontsize=11)
        FigureCanvasAgg(figure)
        figure.savefig(runs_dir / name, dpi=150)
        written.append(runs_dir / name)

    figure = Figure(figsize=(7, 5), layout="constrained")
    ax = figure.add_subplot()
    panel(ax, series, ACCURACY, "test accuracy (%)")
    save(figure, "accuracy.png", "Test accuracy", ax)

    figure = Figure(figsize=(11, 8.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    for ax, (metric, heading) in zip(axes.flat, GAP_TITLES.items()):
        panel(ax, series, metric, "gap (percentage points)", heading=heading)
    for ax in axes[0]:
        ax.set_xlabel("")  # shared x axis: labelled once, under each column
    save(figure, "gaps.png", "Fairness gaps |minority − majority|", axes.flat[0])

    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (group, metric) in zip(axes, GROUP_ACCURACY.items()):
        panel(ax, series, metric, "test accuracy (%)", heading=f"{group} group")
    axes[1].set_ylabel("")  # shared y axis: labelled once, on the left
    save(figure, "group_accuracy.png", "Accuracy of each group", axes[0])

    private = [s for s in series if any(p.values(CLIP_FRACTION["minority"]) for p in s.points)]
    if private:
        figure = Figure(figsize=(11, 5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for ax, (group, metric) in zip(axes, CLIP_FRACTION.items()):
            panel(ax, private, metric, "examples clipped, last epoch or round (%)",
                   heading=f"{group} group")
        axes[1].set_ylabel("")
        save(figure, "clip_fraction.png", "Gradient clipping under DP, per group", axes[0])

    accounted = [s for s in series if has_individual_privacy(s.points)]
    if accounted:
        figure = Figure(figsize=(11, 5), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for ax, (group, keys) in zip(axes, INDIVIDUAL_EPSILON.items()):
            panel(ax, accounted, keys["median"], "individual ε (median; band: p10–p90)",
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
        label, order = series_label(point, keys, points)
        by_label.setdefault(label, Series(label, order)).points.append(point)
    series = sorted(by_label.values(), key=lambda s: s.order)
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                    "tab:pink", "tab:olive", "tab:cyan"] * 10)
    for line in series:
        line.color = "black" if line.order[0] == 0 else next(palette)
        line.points.sort(key=lambda point: point.share())
    return series


def panel(ax, series: list[Series], metric: str, ylabel: str, *, heading: str | None = None,
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
        mark_constant(ax, [(x, scale * y, point)
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


CONSTANT_LEGEND = "constant classifier in k/n seeds"


def mark_constant(ax, placed: Iterable[tuple[float, float, Point]]) -> None:
    """A red ring around each drawn point (x, y) whose point has constant-classifier seeds, with
    "k/n const." beside it; the figure then gets the ring in its legend (:func:`legend_below`)."""
    for x, y, point in placed:
        label = point.constant_label(empty="")
        if not label:
            continue
        ax.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red",
                markeredgewidth=1.4, linestyle="none", zorder=5)
        ax.annotate(f"{label} const.", (x, y), xytext=(6, -11), textcoords="offset points",
                    fontsize=7, color="red")
        ax.figure.has_constant = True


def legend_below(figure, handles, labels, inches_per_entry: float) -> None:
    """The figure's legend under its axes, in as many columns as fit its width (with the ring of
    :func:`mark_constant` when some point has constant-classifier seeds)."""
    if getattr(figure, "has_constant", False):
        from matplotlib.lines import Line2D

        handles = [*handles, Line2D([], [], marker="o", markersize=10, markerfacecolor="none",
                                    markeredgecolor="red", linestyle="none")]
        labels = [*labels, CONSTANT_LEGEND]
    if labels:
        columns = max(1, min(len(labels), int(figure.get_figwidth() // inches_per_entry)))
        figure.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)


def spread_subtitle(title: str, seed_counts: Iterable[int]) -> str:
    """``title`` with how many seeds each point averages and what the error bars are."""
    seeds = sorted(set(seed_counts))
    spread = "error bars: ±1 std over seeds" if seeds != [1] else "one seed: no error bars"
    return f"{title}; mean over {'/'.join(map(str, seeds))} seed(s), {spread}"
