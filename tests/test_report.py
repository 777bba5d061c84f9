"""Reports (utils/report.py, ``running.py --report``) on a real grid of synthetic runs: the numbers of
report.csv and report.md recomputed here from the runs' own summary.json files, the figures, the
failed points, and a point left with one seed."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

import running
from tests.test_sweep import SWEEP, ZIP, grid_raw, write_params

# Spelled out here rather than imported, so that a metric dropped from the report fails the test.
METRICS = ["test/accuracy", "test/accuracy/group=minority", "test/accuracy/group=majority",
           "test/dp_gap", "test/eo_gap", "test/eodds_gap", "test/accuracy_gap", "privacy/epsilon",
           "dp/clip_fraction/group=minority", "dp/clip_fraction/group=majority"]
FIGURES = ["accuracy.png", "gaps.png", "group_accuracy.png", "clip_fraction.png"]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> Path:
    """A grid of 3 shares x 2 privacy levels x 2 seeds (the 4 runs at share 0.9 fail), reported."""
    tmp_path = tmp_path_factory.mktemp("report")
    assert running.main(["--params", str(write_params(tmp_path, grid_raw(tmp_path, sweep=SWEEP, zip=ZIP)))]) == 1
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    return directory


def runs_by_point(directory: Path) -> dict[tuple, list[dict]]:
    """Every finished run's summary, keyed by (share, mode, noise), read straight from the files."""
    points: dict[tuple, list[dict]] = {}
    for summary_path in sorted(directory.glob("*/summary.json")):
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        key = (config["data"]["minority_share"], config["privacy"]["mode"],
               config["privacy"]["noise_multiplier"])
        points.setdefault(key, []).append(json.loads(summary_path.read_text()))
    return points


def read_csv(directory: Path) -> dict[tuple, dict[str, str]]:
    with (directory / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {(float(row["data.minority_share"]), row["privacy.mode"],
             float(row["privacy.noise_multiplier"]) if row["privacy.noise_multiplier"] else None): row
            for row in rows}


def test_report_numbers_match_the_runs(grid_dir):
    rows = read_csv(grid_dir)
    expected = runs_by_point(grid_dir)
    assert set(rows) == set(expected) == {(share, mode, noise) for share in (0.2, 0.05)
                                          for mode, noise in (("none", None), ("dpsgd", 1.0))}
    markdown = (grid_dir / "report.md").read_text()
    for key, summaries in expected.items():
        row = rows[key]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        for metric in METRICS:
            values = [s[metric] for s in summaries if s.get(metric) is not None]
            if not values:  # ε and clip fractions of the non-private point
                assert row[f"{metric}_mean"] == row[f"{metric}_std"] == ""
                continue
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
            assert row[f"{metric}_ci_low"] == row[f"{metric}_ci_high"] == ""  # two seeds: no CI
        accuracy = [s["test/accuracy"] for s in summaries]
        cell = f"{100 * statistics.mean(accuracy):.2f} ± {100 * statistics.stdev(accuracy):.2f}"
        assert f"| {cell} |" in markdown


def test_report_marks_failed_points_and_embeds_figures(grid_dir):
    markdown = (grid_dir / "report.md").read_text()
    assert "8 finished runs in 4 grid points (2 seeds per point)" in markdown
    failed = [line for line in markdown.splitlines() if line.startswith("- **FAILED**")]
    assert len(failed) == 4
    assert any(line.startswith("- **FAILED** `share=0.9,mode=dpsgd,noise=1.0,seed=1`: data.minority_share: "
                               "0.9 of data.train_size 3000 needs 2700 minority examples")
               for line in failed)
    for figure in FIGURES:
        assert f"]({figure})" in markdown


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_are_real_images(grid_dir, figure):
    path = grid_dir / figure
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # lines, markers, text and anti-aliasing, not a blank canvas


def test_single_seed_point_shows_its_bootstrap_interval_and_the_incomplete_run(grid_dir, tmp_path,
                                                                              capsys):
    copy = tmp_path / "tiny"
    shutil.copytree(grid_dir, copy)
    interrupted = copy / "share=0.2,mode=dpsgd,noise=1.0,seed=1"
    (interrupted / "summary.json").unlink()  # as a run stopped before its end leaves it
    assert running.main(["--report", str(copy)]) == 0
    assert f"wrote {copy / 'report.md'}" in capsys.readouterr().out
    row = read_csv(copy)[(0.2, "dpsgd", 1.0)]
    kept = json.loads((copy / "share=0.2,mode=dpsgd,noise=1.0,seed=0" / "summary.json").read_text())
    assert row["n_seeds"] == "1" and row["test/accuracy_std"] == ""
    assert float(row["test/accuracy_mean"]) == kept["test/accuracy"]
    assert [float(row["test/dp_gap_ci_low"]), float(row["test/dp_gap_ci_high"])] == kept["test/dp_gap_ci"]
    markdown = (copy / "report.md").read_text()
    low, high = kept["test/accuracy_ci"]
    assert f"{100 * kept['test/accuracy']:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in markdown
    assert f"- `{interrupted.name}`: incomplete (no summary.json)" in markdown


def test_report_input_errors(tmp_path, capsys):
    assert running.main(["--report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert running.main(["--report", str(tmp_path)]) == 2
    assert "no run directories in it" in capsys.readouterr().err


def test_federated_grid_reports_per_group_clipping_of_client_updates(tmp_path):
    """DP-FedAvg logs the DP-SGD per-group clip keys (for client updates), so its grids get the
    clip columns and figure too; the minority held by clients of its own (by_group). Every client joins every round, so both groups take part."""
    raw = grid_raw(tmp_path, privacy={"mode": "dpfedavg", "noise_multiplier": 1.0,
                                      "max_grad_norm": 0.05},
                   federated={"num_clients": 30, "client_sample_rate": 1.0, "rounds": 4,
                              "eval_every": 2, "partition": "by_group", "client_lr": 0.5},
                   sweep={"data.minority_share": [0.2, 0.05]})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 0
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    with (directory / "report.csv").open() as handle:
        rows = {float(row["data.minority_share"]): row for row in csv.DictReader(handle)}
    for share, row in rows.items():
        (summary_path,) = directory.glob(f"share={share}*/summary.json")
        summary = json.loads(summary_path.read_text())
        for group in ("minority", "majority"):
            key = f"dp/clip_fraction/group={group}"
            assert float(row[f"{key}_mean"]) == summary[key]
    assert (directory / "clip_fraction.png").stat().st_size > 10_000
