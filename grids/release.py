"""What releasing a grid's models together costs: the report's "What ε covers" view.

Each run's ε covers releasing that run's model alone. A grid trains many models on the rows of one
data set, and a reader who publishes its table, or its models, releases all of them: a person in
the data set is in the training set of many of them. This view groups a grid's finished runs by
their **training pool** and gives, per pool, the ε of releasing every model trained on it.

- **The pool** is the data set's files: ``data.name`` and ``data.root``. Every run reading the same
  files is counted, whatever its minority share, training size, protected attribute, split or
  seed, since each of them may train on any given person. That is conservative: a person left out
  of a run's training set loses nothing to it, and this view does not try to tell who was.
- **The combined ε** is the RDP composition of the runs' whole histories (``privacy/history`` in
  summary.json: every (σ, q, steps) entry of each run's steps and releases) with one RDP
  accountant, converted at the pool's δ (the runs' δ; the smallest when they differ). RDP composes
  any adaptively chosen sequence of mechanisms with independent randomness (Mironov 2017), which
  the run streams of :mod:`utils.seeding` give the runs of a grid. It is computed with
  :func:`privacy.accounting.epsilon_of_history`, the project's one definition of ε, and checked
  against Google's ``dp_accounting`` in tests/test_release.py. It always uses RDP, whatever each
  run's ``privacy.accountant``.
- **Runs without a guarantee** void the release of every model: a non-private run, and a private
  one whose summary says ``privacy/private: false`` (no Poisson sampling, zero noise, fitted
  preprocessing). So do two runs of ``privacy.paired_streams`` that share their streams (equal
  seed and ``streams/identity``): their noise cancels between them. The view then gives the
  combined ε of the private models that stay covered, beside the note.
- **Public data**: what the pool's runs treated as public (``privacy/public_data``: the test
  split, a declared validation split and what read it, the preprocessing's source), which no ε
  covers; shown beside the ε so that a reader sees both.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_RELEASE_CSV = "report_release.csv"
HISTORY = "privacy/history"
PUBLIC_DATA = "privacy/public_data"

# Why a run leaves the combined release without a guarantee.
NOT_PRIVATE = "non-private"
NO_GUARANTEE = "private mode, no guarantee (privacy/private: false)"
NO_HISTORY = ("no privacy/history (run before 2026-12-06, on streams keyed by the seed alone, "
              "which the grid's other points of its seed may share)")
SHARED_STREAMS = "paired streams shared with another run"


@dataclass
class Pool:
    """The finished runs trained on one data set's rows.

    Attributes:
        name, root: ``data.name`` and ``data.root`` (None: the shipped copy).
        covered: the runs whose ε holds, each as (settings, summary).
        uncovered: the others, with the reason.
    """

    name: str
    root: str | None
    covered: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = field(default_factory=list)
    uncovered: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({'shipped copy' if self.root is None else self.root})"

    def epsilons(self) -> list[float]:
        return [float(summary["privacy/epsilon"]) for _, summary in self.covered]

    def delta(self) -> float | None:
        deltas = {float(summary["privacy/delta"]) for _, summary in self.covered}
        return min(deltas) if deltas else None

    def history(self) -> list[tuple[float, float, int]]:
        return [(float(sigma), float(q), int(steps)) for _, summary in self.covered
                for sigma, q, steps in summary[HISTORY]]

    def combined_epsilon(self) -> float | None:
        """ε of releasing every covered model (RDP), None when there is none."""
        if not self.covered:
            return None
        # The one definition of ε (it imports Opacus); imported here, as grids/sweep.py imports
        # the training layer, so that a report of a non-private grid needs neither.
        from privacy.accounting import epsilon_of_history

        return epsilon_of_history(self.history(), delta=self.delta(), accountant="rdp")

    def public_data(self) -> dict[str, int]:
        """Each distinct description of what the pool's runs treated as public, with its count."""
        counts: dict[str, int] = {}
        for summary in (summary for _, summary in self.covered):
            text = describe_public_data(summary.get(PUBLIC_DATA))
            counts[text] = counts.get(text, 0) + 1
        return counts


def describe_public_data(facts: Mapping[str, Any] | None) -> str:
    """One line from a run's ``privacy/public_data``."""
    if not isinstance(facts, Mapping):
        return "not recorded (a run from before privacy/public_data)"
    parts = ["test split"]
    validation = facts.get("validation_split")
    if isinstance(validation, Mapping):
        declared = "declared public" if validation.get("declared") else "NOT declared"
        parts.append(f"validation split ({declared}; read by {', '.join(validation.get('read_by', []))})")
    preprocessing = facts.get("preprocessing")
    if isinstance(preprocessing, Mapping):
        parts.append(f"preprocessing: {preprocessing.get('source')}")
    if facts.get("pretrained_weights"):
        parts.append(f"pretrained weights {facts['pretrained_weights']}")
    return "; ".join(parts)


def release_pools(runs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[Pool]:
    """The pools of ``runs`` (each its flattened config settings and its summary.json), in the
    order first seen. A grid without any private run has no release to describe: empty."""
    runs = list(runs)
    if not any(settings.get("privacy.mode", "none") != "none" for settings, _ in runs):
        return []
    pools: dict[tuple[str, str | None], Pool] = {}
    shared: dict[tuple[Any, Any], int] = {}
    for _, summary in runs:
        if summary.get("privacy/paired_streams"):
            key = (summary.get("seed"), summary.get("streams/identity"))
            shared[key] = shared.get(key, 0) + 1
    for settings, summary in runs:
        key = (str(settings.get("data.name")), settings.get("data.root"))
        pool = pools.setdefault(key, Pool(*key))
        if settings.get("privacy.mode", "none") == "none":
            pool.uncovered.append((settings, NOT_PRIVATE))
        elif summary.get("privacy/private") is not True:
            pool.uncovered.append((settings, NO_GUARANTEE))
        elif not summary.get(HISTORY):
            pool.uncovered.append((settings, NO_HISTORY))
        elif shared.get((summary.get("seed"), summary.get("streams/identity")), 0) > 1 and \
                summary.get("privacy/paired_streams"):
            pool.uncovered.append((settings, SHARED_STREAMS))
        else:
            pool.covered.append((settings, summary))
    return list(pools.values())


def _reasons(pool: Pool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in pool.uncovered:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.3g}"


def release_markdown(pools: list[Pool]) -> list[str]:
    """report.md's section: per pool the runs, their own ε, the combined ε and the public data."""
    lines = [
        "## What ε covers: releasing the grid's models together",
        "",
        "Each run's ε covers releasing its model alone. Per training pool (the data set's files: "
        "every run that read them may hold any person in them), the ε of releasing every model "
        "with a guarantee trained on it: the RDP composition of the runs' whole histories "
        "(training steps and releases) at the pool's δ. A run without a guarantee (non-private, "
        "or `privacy/private: false`, or sharing paired streams with another) leaves the release "
        "of all the pool's models covered by no ε. What the runs treated as public is read "
        "without noise and charged nothing.",
        "",
        "| training pool | runs | with a guarantee | each run's ε | δ | combined ε (every model with a guarantee) | every model of the pool | treated as public |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pool in pools:
        epsilons = pool.epsilons()
        each = (f"{_fmt(min(epsilons))}–{_fmt(max(epsilons))}" if epsilons and min(epsilons) != max(epsilons)
                else _fmt(epsilons[0]) if epsilons else "–")
        combined = pool.combined_epsilon()
        reasons = _reasons(pool)
        everything = (_fmt(combined) if not reasons else
                      "no ε: " + ", ".join(f"{count} {reason}" for reason, count in reasons.items()))
        public = "<br>".join(f"{text} ({count} runs)" for text, count in pool.public_data().items()) or "–"
        lines.append(f"| {pool.label} | {len(pool.covered) + len(pool.uncovered)} | {len(pool.covered)} | "
                     f"{each} | {_fmt(pool.delta()) if pool.delta() is not None else '–'} | "
                     f"{_fmt(combined)} | {everything} | {public} |")
    return lines


def write_release_csv(path: Path, pools: list[Pool]) -> Path:
    """report_release.csv: one row per pool, the numbers of :func:`release_markdown` unrounded."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data.name", "data.root", "runs", "runs_with_guarantee", "epsilon_min",
                         "epsilon_max", "delta", "combined_epsilon", "runs_without_guarantee",
                         "public_data"])
        for pool in pools:
            epsilons = pool.epsilons()
            combined = pool.combined_epsilon()
            writer.writerow([
                pool.name, pool.root or "", len(pool.covered) + len(pool.uncovered),
                len(pool.covered), min(epsilons) if epsilons else "", max(epsilons) if epsilons else "",
                pool.delta() if pool.delta() is not None else "",
                "" if combined is None else combined,
                "; ".join(f"{count} {reason}" for reason, count in _reasons(pool).items()),
                " | ".join(f"{text} ({count})" for text, count in pool.public_data().items()),
            ])
    return path
