"""The point table: report.csv (one row per point, every headline metric's mean, std and interval),
report.md's note on constant classifiers and its individual-privacy section."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grids.runs import (
    GROUP_ACCURACY,
    INDIVIDUAL_EPSILON,
    INDIVIDUAL_METRICS,
    INDIVIDUAL_WORST_CASE,
    METRICS,
    Point,
    csv_value,
    md_epsilon,
    md_metric,
    md_value,
)
from utils.fairness import GROUPS


def write_csv(path: Path, points: list[Point], keys: list[str]) -> Path:
    """report.csv: one row per point; the varying keys, the seeds, and per metric mean, std and
    (single-seed points) the bootstrap interval, in summary.json's units."""
    metrics = [*METRICS, *(INDIVIDUAL_METRICS if has_individual_privacy(points) else ())]
    header = [*keys, "n_seeds", "seeds", *CONSTANT_COLUMNS, *csv_metric_header(metrics)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for point in points:
            row = [csv_value(point.settings.get(key)) for key in keys]
            row += [len(point.runs), " ".join(str(seed) for seed in point.seeds)]
            row += csv_constant_cells(point)
            row += csv_metric_cells(point, metrics)
            writer.writerow(row)
    return path


def has_individual_privacy(points: Iterable[Point]) -> bool:
    """Whether some run logged privacy.individual_accounting's per-group individual ε."""
    key = INDIVIDUAL_EPSILON["minority"]["median"]
    return any(point.values(key) for point in points)


CONSTANT_COLUMNS = ("n_constant", "constant_seeds")
"""report.csv's and report_methods.csv's columns of constant classifiers: how many of a point's
seeds, and which."""


def csv_constant_cells(point: Point) -> list[Any]:
    constant = point.constant_seeds()
    return [len(constant), " ".join(str(seed) for seed in constant)]


def csv_metric_header(metrics: Iterable[str]) -> list[str]:
    return [f"{metric}_{part}" for metric in metrics for part in ("mean", "std", "ci_low", "ci_high")]


def csv_metric_cells(point: Point, metrics: Iterable[str]) -> list[Any]:
    """Per metric: mean, std and (single-seed points) the bootstrap interval; blank where undefined."""
    row: list[Any] = []
    for metric in metrics:
        interval = point.interval(metric) or [None, None]
        row += [csv_value(value) for value in (point.mean(metric), point.std(metric), *interval)]
    return row


CONSTANT_NOTE = (
    "**Constant classifiers: {constant} of {runs} runs** ended with a model that decides one class "
    "for every test example (column `constant`: k of a point's n seeds; red rings in the figures). "
    "Their gaps are 0 or undefined by construction: a mean gap over such seeds is not a fairness "
    "result.")


def constant_note(points: Iterable[Point]) -> list[str]:
    """report.md's paragraph on constant classifiers, when any run ended as one."""
    points = list(points)
    constant = sum(len(point.constant_seeds()) for point in points)
    if not constant:
        return []
    return [CONSTANT_NOTE.format(constant=constant, runs=sum(len(p.runs) for p in points)), ""]


def individual_markdown(points: list[Point], keys: list[str], short: Mapping[str, str]) -> list[str]:
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
        cells = [md_value(point.settings.get(key)) for key in keys]
        cells.append(str(len(point.runs)))
        worst = point.mean(INDIVIDUAL_WORST_CASE)
        cells.append("–" if worst is None else md_epsilon(worst))
        for group in GROUPS:
            cells.append(_md_individual(point, group))
        cells += [md_metric(point, GROUP_ACCURACY[group]) for group in GROUPS]
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
    cell = md_epsilon(median)
    std = point.std(keys["median"])
    if std is not None:
        cell += f" ± {std:.2g}"
    low, high = point.mean(keys["p10"]), point.mean(keys["p90"])
    if low is not None and high is not None:
        cell += f" [{md_epsilon(low)}, {md_epsilon(high)}]"
    return cell
