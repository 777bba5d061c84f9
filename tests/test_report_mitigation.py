"""The DP mitigation view (grids/mitigation.py) on a real grid of synthetic runs: its tables
recomputed here from the runs' own summary.json files (DP's added gap and what each rule removes,
per seed), the rule's own settings told from the point's, and its figures."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

import running
from grids.mitigation import GAPS, REPORT_MITIGATION_CSV, REPORT_REMOVED_CSV, mitigation_view
from grids.runs import Point, Run
from tests.test_sweep import grid_raw, write_params

RULES = ["flat", "dpsgd_f", "global_adapt", "automatic"]
SHARES = [0.3, 0.1]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def rule_grid(tmp_path_factory) -> Path:
    """The non-private twin and DP-SGD with 4 rules (Global-Adapt at another learning rate, as in
    fair-dp) x 2 shares x 2 seeds, reported."""
    tmp_path = tmp_path_factory.mktemp("mitigation")
    raw = grid_raw(tmp_path, sweep={"data.minority_share": SHARES, "seed": SEEDS},
                   zip={"privacy.mode": ["none", *["dpsgd"] * len(RULES)],
                        "privacy.clipping": ["flat", *RULES],
                        "training.lr": [0.01, 0.01, 0.01, 0.05, 0.01]},
                   data={"name": "synthetic", "train_size": 1500},
                   training={"epochs": 1, "batch_size": 300, "lr": 0.01},
                   privacy={"noise_multiplier": 1.0, "max_grad_norm": 0.5})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 0
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    return directory


def runs(directory: Path) -> dict[tuple, dict[int, dict]]:
    """Every run's summary by (rule or non-private, share), then by seed, from the files alone."""
    found: dict[tuple, dict[int, dict]] = {}
    for path in sorted(directory.glob("*/summary.json")):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        rule = ("non-private" if config["privacy"]["mode"] == "none"
                else config["privacy"]["clipping"])
        found.setdefault((rule, config["data"]["minority_share"]), {})[config["seed"]] = \
            json.loads(path.read_text())
    return found


def read(directory: Path, name: str) -> list[dict[str, str]]:
    with (directory / name).open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # a grid of runs, then the report
def test_the_removed_table_is_the_per_seed_difference_against_flat_and_non_private(rule_grid):
    expected = runs(rule_grid)
    rows = read(rule_grid, REPORT_REMOVED_CSV)
    # One row per rule other than flat, per share; rules in the grid's order, shares largest first.
    assert [(row["rule"], float(row["data.minority_share"])) for row in rows] == [
        (rule, share) for share in SHARES for rule in RULES[1:]]
    for row in rows:
        share = float(row["data.minority_share"])
        mine, flat = expected[(row["rule"], share)], expected[("flat", share)]
        private = expected[("non-private", share)]
        assert row["seeds"] == "0 1"
        for gap in GAPS:
            added = [flat[s][gap] - private[s][gap] for s in SEEDS]
            removed = [flat[s][gap] - mine[s][gap] for s in SEEDS]
            assert float(row[f"{gap}_added_mean"]) == pytest.approx(statistics.fmean(added))
            assert float(row[f"{gap}_removed_mean"]) == pytest.approx(statistics.fmean(removed))
            assert float(row[f"{gap}_removed_std"]) == pytest.approx(statistics.stdev(removed))
            if statistics.fmean(added) > 0:
                assert float(row[f"{gap}_removed_fraction"]) == pytest.approx(
                    statistics.fmean(removed) / statistics.fmean(added))
            else:
                assert row[f"{gap}_removed_fraction"] == ""
        cost = [flat[s]["test/accuracy"] - mine[s]["test/accuracy"] for s in SEEDS]
        gain = [mine[s]["test/accuracy/group=minority"] - flat[s]["test/accuracy/group=minority"]
                for s in SEEDS]
        assert float(row["accuracy_cost_mean"]) == pytest.approx(statistics.fmean(cost))
        assert float(row["minority_accuracy_gain_mean"]) == pytest.approx(statistics.fmean(gain))


@pytest.mark.slow  # a grid of runs, then the report
def test_the_rule_table_holds_every_point_and_the_rules_own_settings(rule_grid):
    expected = runs(rule_grid)
    rows = read(rule_grid, REPORT_MITIGATION_CSV)
    assert len(rows) == len(expected) == (1 + len(RULES)) * len(SHARES)
    for row in rows:
        summaries = expected[(row["rule"], float(row["data.minority_share"]))]
        for metric in ("test/accuracy", "test/accuracy_gap", "test/dp_gap", "test/eo_gap",
                       "test/accuracy/group=minority"):
            assert float(row[f"{metric}_mean"]) == pytest.approx(
                statistics.fmean(summaries[s][metric] for s in SEEDS))
        # The learning rate goes with the rule (zipped with it), so it is the rule's, not a point's.
        assert float(row["training.lr"]) == (0.05 if row["rule"] == "global_adapt" else 0.01)
    markdown = (rule_grid / "report.md").read_text()
    assert "## DP mitigations: clipping rules" in markdown
    assert "global_adapt (lr 0.05)" in markdown
    assert markdown.count("| DP-SGD σ=1") >= len(RULES) * len(SHARES)


@pytest.mark.slow  # a grid of runs, then the report
@pytest.mark.parametrize("figure", ["mitigation_share.png", "mitigation_epsilon.png"])
def test_the_views_figures_are_real_images(rule_grid, figure):
    with Image.open(rule_grid / figure) as image:
        assert image.format == "PNG" and image.size[0] > 1000
    assert f"]({figure})" in (rule_grid / "report.md").read_text()


@pytest.mark.slow  # a grid of runs, then the report
def test_the_general_figures_keep_one_line_per_rule(rule_grid):
    # The report's own series: a rule is a setting like any other, never merged with flat's line.
    from grids import figures, runs

    points = runs.group_points(runs.load_runs(rule_grid)[0])
    labels = {series.label for series in figures.make_series(points)}
    assert len(labels) == 1 + len(RULES)


@pytest.mark.slow  # a grid of runs, then the report
def test_a_grid_without_rules_gets_no_mitigation_view(tmp_path):
    raw = grid_raw(tmp_path, sweep={"seed": [0]},
                   zip={"privacy.mode": ["none", "dpsgd"], "privacy.noise_multiplier": [None, 1.0]},
                   data={"name": "synthetic", "train_size": 900, "minority_share": 0.2},
                   training={"epochs": 1, "batch_size": 300})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 0
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    assert not (directory / REPORT_MITIGATION_CSV).exists()
    assert "DP mitigations" not in (directory / "report.md").read_text()


def point(rule: str, *, mode: str = "dpsgd", lr: float = 0.01, z: float | None = None,
          gaps=(0.1, 0.2)) -> Point:
    """A grid point of two seeds with hand-set summaries (accuracy gap per seed)."""
    settings = {"data.name": "adult", "data.minority_share": 0.1, "privacy.mode": mode,
                "privacy.noise_multiplier": 1.0 if mode != "none" else None,
                "privacy.clipping": rule, "training.lr": lr}
    if z is not None:
        settings["privacy.global_adapt.z"] = z
    runs = [Run(Path("."), settings, seed, {"test/accuracy_gap": gap, "test/accuracy": 0.8,
                                            "privacy/epsilon": 1.0 if mode != "none" else None})
            for seed, gap in zip(SEEDS, gaps)]
    return Point(settings, runs)


def test_a_rules_own_varying_setting_names_its_rows_and_shares_the_baselines():
    points = [point("flat", mode="none", gaps=(0.1, 0.1)), point("flat", gaps=(0.3, 0.5)),
              point("global_adapt", z=20.0, gaps=(0.2, 0.2)),
              point("global_adapt", z=50.0, gaps=(0.4, 0.4))]
    view = mitigation_view(points)
    assert [row.name for row in view.rows if row.rule == "global_adapt"] == [
        "global_adapt (z=20)", "global_adapt (z=50)"]
    removed = {r.row.own["privacy.global_adapt.z"]: r for r in view.removed}
    for r in removed.values():  # one flat and one non-private baseline for both
        assert r.flat.rule == "flat" and r.private.rule == "non-private"
        assert r.added("test/accuracy_gap") == pytest.approx([0.2, 0.4])
    assert removed[20.0].removed("test/accuracy_gap") == pytest.approx([0.1, 0.3])
    assert removed[50.0].removed("test/accuracy_gap") == pytest.approx([-0.1, 0.1])
    assert removed[20.0].removed_fraction("test/accuracy_gap") == pytest.approx(0.2 / 0.3)


def test_a_setting_that_varies_within_a_rule_places_the_point():
    # DP-SGD and the twin at two learning rates: each rule meets the baselines at its own lr.
    points = [point("flat", mode="none"), point("flat", mode="none", lr=0.2), point("flat"),
              point("flat", lr=0.2), point("global", lr=0.2), point("dpsgd_f")]
    view = mitigation_view(points)
    for r in view.removed:
        assert r.flat.context["training.lr"] == r.private.context["training.lr"] == \
            r.row.context["training.lr"]
    assert mitigation_view([point("flat", mode="none"), point("flat")]) is None
