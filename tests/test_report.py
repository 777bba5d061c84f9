"""Reports (grids/report.py, ``running.py --report``) on a real grid of synthetic runs: the numbers of
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
from grids.methods import method_view, tradeoff_figure, tradeoff_series
from grids.repair_privacy import privacy_repair_figure, privacy_repair_view
from grids.report import REPORT_FILE_NOT_OURS, REPORT_LEDGER
from grids.runs import group_points, load_runs
from grids.table import CONSTANT_NOTE
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


# --------------------------------------------------------------------------------------------------
# The method view: a grid of fairness repair methods

METHOD_METRICS = ["test/average_precision", "test/accuracy", "test/dp_gap", "test/eo_gap",
                  "test/eodds_gap_sum"]
# Methods in the grid's order (reweighing before gapreg, unlike the alphabetical registry) and
# gapreg's λ listed descending, so that the report's order is its own doing.
METHOD_ZIP = [{"fairness.method": ["none", "reweighing", "gapreg", "gapreg"],
               "fairness.gapreg.lam": [1.0, 1.0, 3.0, 0.5]},
              {"fairness.mode": ["dp", "eo"]}]
METHOD_ROWS = [(mode, method, lam) for mode in ("dp", "eo")
               for method, lam in (("none", None), ("reweighing", None), ("gapreg", 0.5),
                                   ("gapreg", 3.0))]


@pytest.fixture(scope="module")
def method_grid(tmp_path_factory) -> Path:
    """none, reweighing and gapreg at λ 0.5 and 3 x dp/eo x 2 seeds on the synthetic data, reported."""
    tmp_path = tmp_path_factory.mktemp("methods")
    # One epoch on 1,500 examples: the view's arithmetic, not the methods, is under test here.
    raw = grid_raw(tmp_path, sweep={"seed": [0, 1]}, zip=METHOD_ZIP,
                   data={"name": "synthetic", "train_size": 1500},
                   training={"epochs": 1, "batch_size": 300, "lr": 0.01})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 0
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    return directory


def method_runs(directory: Path) -> dict[tuple, list[dict]]:
    """Every run's summary keyed by (mode, method, gapreg's λ or None), from the files alone."""
    rows: dict[tuple, list[dict]] = {}
    for summary_path in sorted(directory.glob("*/summary.json")):
        fairness = yaml.safe_load((summary_path.parent / "config.yaml").read_text())["fairness"]
        key = (fairness["mode"], fairness["method"], fairness.get("gapreg", {}).get("lam"))
        rows.setdefault(key, []).append(json.loads(summary_path.read_text()))
    return rows


def read_method_csv(directory: Path) -> list[dict[str, str]]:
    with (directory / "report_methods.csv").open() as handle:
        return list(csv.DictReader(handle))


def method_view_of(directory: Path, **kwargs):
    runs, _ = load_runs(directory)
    return method_view(group_points(runs), **kwargs)


def test_method_table_numbers_and_order_match_the_runs(method_grid):
    rows = read_method_csv(method_grid)
    keys = [(row["fairness.mode"], row["fairness.method"],
             float(row["fairness.gapreg.lam"]) if row["fairness.gapreg.lam"] else None) for row in rows]
    assert keys == METHOD_ROWS  # target, then the grid's method order (none first), then λ
    expected = method_runs(method_grid)
    assert set(expected) == set(METHOD_ROWS)
    markdown = (method_grid / "report.md").read_text()
    section = markdown.split("## Fairness repair methods", 1)[1].split("## Figures", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0] == ("| target | method | settings | seeds | constant | AP | accuracy | ΔDP | ΔEO "
                        "| ΔEOdds sum |")
    assert len(table) == 1 + len(METHOD_ROWS)
    for row, key, line in zip(rows, keys, table[1:]):
        summaries = expected[key]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        cells = [key[0], key[1], f"λ={key[2]:g}" if key[2] is not None else "–", "2"]
        constant = [s["seed"] for s in summaries if s["test/constant_prediction"]]
        assert row["n_constant"] == str(len(constant))
        cells.append(f"{len(constant)}/2" if constant else "–")
        for metric in METHOD_METRICS:
            values = [s[metric] for s in summaries]
            mean, std = statistics.mean(values), statistics.stdev(values)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(std, rel=1e-12)
            cells.append(f"{100 * mean:.2f} ± {100 * std:.2f}")
        assert line == "| " + " | ".join(cells) + " |"


def test_runs_made_without_a_grid_order_methods_by_name_after_none(method_grid):
    view = method_view_of(method_grid)  # no method_order: as for run directories made by --set
    assert [(row.mode, row.method) for row in view.rows] == [
        (mode, method) for mode in ("dp", "eo") for method in ("none", "gapreg", "gapreg", "reweighing")]


@pytest.mark.parametrize("mode, gap", [("dp", "test/dp_gap"), ("eo", "test/eo_gap")])
def test_tradeoff_figure_draws_one_point_per_method_and_lambda(method_grid, mode, gap):
    path = method_grid / f"tradeoff_{mode}.png"
    assert f"]({path.name})" in (method_grid / "report.md").read_text()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    expected = method_runs(method_grid)
    view = method_view_of(method_grid, method_order=["none", "reweighing", "gapreg"])
    series = tradeoff_series(view, "synthetic", mode)
    assert [line.label for line in series] == ["none", "reweighing", "gapreg"]
    figure = tradeoff_figure(series, mode, title="t")
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == [f"AP against {'ΔDP' if mode == 'dp' else 'ΔEO'}",
                                               "AP against ΔEOdds sum"]
    lines = [[("none", None)], [("reweighing", None)], [("gapreg", 0.5), ("gapreg", 3.0)]]
    for ax, x_metric in zip(axes, (gap, "test/eodds_gap_sum")):
        assert len(ax.containers) == len(lines)  # one errorbar line per method
        for container, points in zip(ax.containers, lines):
            data_line, _, bars = container.lines
            # Error bars: horizontal segments are ±std of the gap, vertical ones ±std of AP.
            half = {"x": [], "y": []}
            for collection in bars:
                for (x0, y0), (x1, y1) in collection.get_segments():
                    half["y" if x0 == x1 else "x"].append((abs(x1 - x0) + abs(y1 - y0)) / 2)
            # One marker per method and λ, gapreg's λ values joined in λ order.
            assert len(data_line.get_xdata()) == len(points) == len(half["x"]) == len(half["y"])
            for x, y, dx, dy, (method, lam) in zip(data_line.get_xdata(), data_line.get_ydata(),
                                                   half["x"], half["y"], points):
                summaries = expected[(mode, method, lam)]
                xs = [100 * s[x_metric] for s in summaries]
                ys = [100 * s["test/average_precision"] for s in summaries]
                assert (x, y) == pytest.approx((statistics.mean(xs), statistics.mean(ys)))
                assert (dx, dy) == pytest.approx((statistics.stdev(xs), statistics.stdev(ys)))
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["none", "reweighing",
                                                                             "gapreg"]


def test_a_privacy_grid_gets_no_method_view(grid_dir):
    """Every run trains Vanilla: the report is the one it was before the method view existed."""
    assert method_view_of(grid_dir) is None
    assert not (grid_dir / "report_methods.csv").exists()
    assert not list(grid_dir.glob("tradeoff_*"))
    markdown = (grid_dir / "report.md").read_text()
    assert "Fairness repair methods" not in markdown and "tradeoff" not in markdown


def test_runs_without_a_metric_show_a_dash(method_grid, tmp_path):
    """Runs of a version from before test/eodds_gap_sum: "–" in report.md, blank in the CSV, and the
    trade-off figure keeps its one panel that can be drawn."""
    copy = tmp_path / "tiny"
    shutil.copytree(method_grid, copy)
    for path in copy.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        del summary["test/eodds_gap_sum"], summary["test/eodds_gap_sum_ci"]
        path.write_text(json.dumps(summary))
    assert running.main(["--report", str(copy)]) == 0
    rows = read_method_csv(copy)
    assert len(rows) == len(METHOD_ROWS)
    assert all(row["test/eodds_gap_sum_mean"] == row["test/eodds_gap_sum_std"] == "" for row in rows)
    assert all(row["test/eo_gap_mean"] for row in rows)
    section = (copy / "report.md").read_text().split("## Fairness repair methods", 1)[1]
    table = [line for line in section.split("## Figures", 1)[0].splitlines() if line.startswith("| ")]
    assert all(line.endswith(" | – |") for line in table[1:])
    view = method_view_of(copy)
    figure = tradeoff_figure(tradeoff_series(view, "synthetic", "eo"), "eo", title="t")
    assert [ax.get_title() for ax in figure.axes] == ["AP against ΔEO"]
    assert (copy / "tradeoff_eo.png").stat().st_size > 10_000


@pytest.mark.parametrize("grid, name", [
    ("method_grid", "report_methods.csv"), ("method_grid", "tradeoff_dp.png"),
    ("method_grid", "tradeoff_eo.png"), ("private_method_grid", "report_gap_closed.csv"),
    ("private_method_grid", "repair_privacy_eo.png")])
def test_report_never_overwrites_a_view_file_it_did_not_write(grid, name, request, tmp_path, capsys):
    """A file of the method view's or the repair-under-privacy view's name that the report did not
    write stops the report before it writes anything."""
    copy = tmp_path / "tiny"
    shutil.copytree(request.getfixturevalue(grid), copy,
                    ignore=shutil.ignore_patterns("report*", "*.png"))
    (copy / name).write_bytes(b"the user's own file\n")
    assert running.main(["--report", str(copy)]) == 2
    assert REPORT_FILE_NOT_OURS.format(path=copy / name, ledger=REPORT_LEDGER) \
        in capsys.readouterr().err
    assert (copy / name).read_bytes() == b"the user's own file\n"
    assert not (copy / "report.md").exists() and not (copy / "report.csv").exists()
    assert [path.name for path in copy.glob("*.png")] == ([name] if name.endswith(".png") else [])


# --------------------------------------------------------------------------------------------------
# The repair-under-privacy view: methods crossed with privacy levels and shares

PRIVATE_METHODS = ["none", "reweighing", "roc"]
PRIVATE_SHARES = [0.2, 0.05]
PRIVATE_LEVELS = [("none", None), ("dpsgd", 1.0)]
PANEL_METRICS = ["test/accuracy/group=minority", "test/dp_gap", "test/eo_gap", "test/eodds_gap",
                 "test/eodds_gap_sum", "test/accuracy_gap"]


@pytest.fixture(scope="module")
def private_method_grid(tmp_path_factory) -> Path:
    """none, reweighing and roc x non-private and DP-SGD sigma 1 x 2 shares x 2 seeds, target eo."""
    tmp_path = tmp_path_factory.mktemp("private_methods")
    raw = grid_raw(tmp_path, sweep={"fairness.method": PRIVATE_METHODS,
                                    "data.minority_share": PRIVATE_SHARES, "seed": [0, 1]},
                   zip={"privacy.mode": [mode for mode, _ in PRIVATE_LEVELS],
                        "privacy.noise_multiplier": [noise for _, noise in PRIVATE_LEVELS]},
                   data={"name": "synthetic", "train_size": 1500, "val_fraction": 0.1,
                         "validation_public": True},
                   training={"epochs": 1, "batch_size": 300, "lr": 0.01},
                   fairness={"mode": "eo"})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 0
    directory = tmp_path / "runs" / "tiny"
    assert running.main(["--report", str(directory)]) == 0
    return directory


def private_runs(directory: Path) -> dict[tuple, dict[int, dict]]:
    """Every run's summary by (method, privacy mode, share), then by seed, from the files alone."""
    runs: dict[tuple, dict[int, dict]] = {}
    for summary_path in sorted(directory.glob("*/summary.json")):
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        key = (config["fairness"]["method"], config["privacy"]["mode"],
               config["data"]["minority_share"])
        runs.setdefault(key, {})[config["seed"]] = json.loads(summary_path.read_text())
    return runs


def test_gap_closed_table_is_the_per_seed_difference_against_vanilla(private_method_grid):
    with (private_method_grid / "report_gap_closed.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = private_runs(private_method_grid)
    assert len(expected) == len(PRIVATE_METHODS) * len(PRIVATE_LEVELS) * len(PRIVATE_SHARES)
    # Method, then privacy level (non-private first), then share (largest first); no row for none.
    assert [(row["fairness.method"], row["privacy.mode"], float(row["data.minority_share"]))
            for row in rows] == [(method, mode, share) for method in ("reweighing", "roc")
                                 for mode, _ in PRIVATE_LEVELS for share in PRIVATE_SHARES]
    markdown = (private_method_grid / "report.md").read_text()
    section = markdown.split("## Repair under privacy", 1)[1].split("## Figures", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0] == "| method | privacy | share 20 % | share 5 % |"
    assert len(table) == 1 + 2 * len(PRIVATE_LEVELS)
    for row in rows:
        assert row["gap"] == "test/eo_gap" and row["seeds"] == "0 1"
        method, mode, share = row["fairness.method"], row["privacy.mode"], float(row["data.minority_share"])
        mine, vanilla = expected[(method, mode, share)], expected[("none", mode, share)]
        closed = [vanilla[s]["test/eo_gap"] - mine[s]["test/eo_gap"] for s in (0, 1)]
        assert float(row["gap_closed_mean"]) == pytest.approx(statistics.mean(closed), rel=1e-9)
        assert float(row["gap_closed_std"]) == pytest.approx(statistics.stdev(closed), rel=1e-9)
        base = statistics.mean(vanilla[s]["test/eo_gap"] for s in (0, 1))
        assert float(row["baseline_gap_mean"]) == pytest.approx(base, rel=1e-9)
        assert float(row["gap_closed_fraction"]) == pytest.approx(statistics.mean(closed) / base,
                                                                  rel=1e-9)
        for metric, column in (("test/accuracy", "accuracy_change"),
                               ("test/accuracy/group=minority", "minority_accuracy_change")):
            change = [mine[s][metric] - vanilla[s][metric] for s in (0, 1)]
            assert float(row[f"{column}_mean"]) == pytest.approx(statistics.mean(change), abs=1e-12)
        if mode == "dpsgd":
            epsilon = statistics.mean(mine[s]["privacy/epsilon"] for s in (0, 1))
            assert float(row["privacy/epsilon"]) == pytest.approx(epsilon, rel=1e-9)
            assert row["privacy_level"].startswith("DP-SGD σ=1 (ε")
        else:
            assert row["privacy_level"] == "non-private" and row["privacy/epsilon"] == ""
        cell = (f"{100 * statistics.mean(closed):+.2f} ± {100 * statistics.stdev(closed):.2f} "
                f"({round(100 * statistics.mean(closed) / base):d} %)")
        line = next(line for line in table if line.startswith(f"| {method} | {row['privacy_level']} |"))
        assert cell in line


def test_gap_closed_never_pairs_runs_whose_seeds_were_withheld(private_method_grid, tmp_path):
    """Issue 26: logging.private_stats: false writes seed: null. The per-seed differences against
    Vanilla then have no seeds to pair by: the cells are blank, never a difference between
    arbitrary runs."""
    copy = tmp_path / "tiny"
    shutil.copytree(private_method_grid, copy, ignore=shutil.ignore_patterns("report*", "*.png",
                                                                            ".dp-fairness-report"))
    for path in copy.glob("*/config.yaml"):
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "seed": None}, sort_keys=False))
        summary = json.loads((path.parent / "summary.json").read_text())
        (path.parent / "summary.json").write_text(json.dumps({**summary, "seed": None}))
    assert running.main(["--report", str(copy)]) == 0
    with (copy / "report_gap_closed.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["gap_closed_mean"] == "" and row["seeds"] == "" for row in rows)


def test_privacy_repair_figure_has_a_row_per_level_and_a_line_per_method(private_method_grid):
    path = private_method_grid / "repair_privacy_eo.png"
    assert f"]({path.name})" in (private_method_grid / "report.md").read_text()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 1500 and image.height >= 600
    runs, _ = load_runs(private_method_grid)
    points = group_points(runs)
    view = privacy_repair_view(method_view(points), points)
    figure = privacy_repair_figure(view, "synthetic", "eo", title="t")
    assert len(figure.axes) == len(PRIVATE_LEVELS) * len(PANEL_METRICS)
    expected = private_runs(private_method_grid)
    for index, ax in enumerate(figure.axes):
        (mode, _), metric = PRIVATE_LEVELS[index // len(PANEL_METRICS)], PANEL_METRICS[index % len(PANEL_METRICS)]
        assert ("non-private" if mode == "none" else "DP-SGD σ=1") in ax.get_title()
        assert len(ax.containers) == len(PRIVATE_METHODS)  # one line per method
        for container, method in zip(ax.containers, PRIVATE_METHODS):
            data_line = container.lines[0]
            # x: the shares ascending (dodged sideways by under 5 %); y: the mean over seeds in %.
            assert data_line.get_xdata() == pytest.approx(sorted(PRIVATE_SHARES), rel=0.05)
            means = [100 * statistics.mean(s[metric] for s in expected[(method, mode, share)].values())
                     for share in sorted(PRIVATE_SHARES)]
            assert list(data_line.get_ydata()) == pytest.approx(means)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == PRIVATE_METHODS


def test_grids_without_privacy_or_without_methods_get_no_privacy_view(method_grid, grid_dir):
    for directory in (method_grid, grid_dir):
        assert not (directory / "report_gap_closed.csv").exists()
        assert not list(directory.glob("repair_privacy_*"))
        assert "## Repair under privacy" not in (directory / "report.md").read_text()


@pytest.mark.parametrize("recorded", ["flag", "older run"])
def test_a_constant_classifier_is_marked_in_every_table_and_figure(private_method_grid, tmp_path,
                                                                   recorded):
    """A seed whose test decisions are all one class has every gap 0 without any repair: every
    table says so (the gap-closed table beside the gap it "closed"), and every figure rings it.
    The run says so itself (test/constant_prediction); a run from before that key is recognised
    by both groups' selection rates being 0."""
    copy = tmp_path / "tiny"
    shutil.copytree(private_method_grid, copy)
    for path in copy.glob("*/*.png"):
        path.unlink()
    before = {path.name: _red_pixels(path) for path in private_method_grid.glob("*.png")}
    for path in copy.glob("*/summary.json"):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        if (config["fairness"]["method"], config["privacy"]["mode"], config["seed"],
                config["data"]["minority_share"]) == ("roc", "dpsgd", 1, 0.05):
            summary = json.loads(path.read_text())
            assert summary["test/constant_prediction"] is False
            if recorded == "flag":
                summary["test/constant_prediction"] = True
            else:
                del summary["test/constant_prediction"]
                summary["test/selection_rate/group=minority"] = 0.0
                summary["test/selection_rate/group=majority"] = 0.0
            path.write_text(json.dumps(summary))
    assert running.main(["--report", str(copy)]) == 0
    with (copy / "report_gap_closed.csv").open() as handle:
        rows = {(row["fairness.method"], row["privacy.mode"], float(row["data.minority_share"])):
                row["constant_classifier_seeds"] for row in csv.DictReader(handle)}
    assert rows.pop(("roc", "dpsgd", 0.05)) == "1"
    assert set(rows.values()) == {""}
    markdown = (copy / "report.md").read_text()
    line = next(line for line in markdown.splitlines() if line.startswith("| roc | DP-SGD"))
    assert line.endswith("[1/2 constant] |") and line.count("constant") == 1
    assert CONSTANT_NOTE.split("{")[0] in markdown
    for name in ("report.csv", "report_methods.csv"):
        with (copy / name).open() as handle:
            table = list(csv.DictReader(handle))
        marked = [row for row in table if row["n_constant"] != "0"]
        assert len(marked) == 1 and marked[0]["constant_seeds"] == "1", name
        assert marked[0]["fairness.method"] == "roc" and marked[0]["privacy.mode"] == "dpsgd"
    # report.md's tables: one "1/2" in the main table and one in the method table.
    assert sum(" | 1/2 | " in line for line in markdown.splitlines()) == 2
    # Every figure that draws the point rings it in red (the palette holds no pure red).
    for name in ("accuracy.png", "gaps.png", "group_accuracy.png", "repair_privacy_eo.png",
                 "tradeoff_eo.png"):
        assert _red_pixels(copy / name) > before[name] + 50, name


def _red_pixels(path: Path) -> int:
    """Pixels of the constant-classifier ring's pure red (the palette has none)."""
    with Image.open(path) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 22)
    return sum(count for count, (r, g, b) in colors if r > 230 and g < 40 and b < 40)
