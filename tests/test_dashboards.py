"""A grid where researchers look (utils/sink.py, grids/dashboards.py), read back with each tool's own
reader: wandb's offline run folders with ``wandb leet inspect`` (wandb's reader of its transaction
log), TensorBoard's event files with the HParams plugin's own request handlers (what its dashboard
shows) and TensorBoard's event reader. Real runs of a tiny grid on the synthetic data set, real
wandb in offline mode (never a server: tests/conftest.py), real TensorBoard files.

- Each run: wandb holds its config as dotted keys, its tags and group, and its final metrics (each
  interval as _low/_high); TensorBoard holds an HParams session with the run's config and its final
  metrics.
- The grid: one wandb report run (report.csv as a table equal to the file, every figure, report.md
  as HTML), the same run updated by a second report; TensorBoard's grid-level experiment (the
  swept keys and the seed, the final metrics) and the report's figures and text.
- wandb disabled: wandb is never started and no wandb folder appears anywhere.
- ``logging.private_stats: false``: no statistic of the private data reaches wandb or TensorBoard.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.util import tensor_util

import running
from grids import dashboards, runs
from grids.report import REPORT_CSV, REPORT_MD
from utils import sink

BASE = {
    "name": "tiny",
    "data": {"name": "synthetic", "train_size": 1500},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 1, "batch_size": 300, "lr": 0.01},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": True, "wandb": {"mode": "offline"}, "progress": "never"},
    "sweep": {"data.minority_share": [0.2, 0.05]},
    "zip": {"privacy.mode": ["none", "dpsgd"], "privacy.noise_multiplier": [None, 1.0]},
}
SWEPT = ["data.minority_share", "privacy.mode", "privacy.noise_multiplier"]


def run_grid(tmp_path: Path, **changes) -> Path:
    """Run the tiny grid (BASE with ``changes`` per section) through the CLI; its directory."""
    raw = {**BASE, "output_dir": str(tmp_path / "runs"), **changes}
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert running.main(["--params", str(params)]) == 0
    return tmp_path / "runs" / raw["name"]


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    """wandb's own folders (config, cache) in a temporary home, for the module's runs; its data
    folder left to the report run (grids.dashboards keeps it in the grid's wandb folder)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        for variable, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache")):
            patch.setenv(variable, str(home / folder))
        for variable in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_DATA_DIR"):
            patch.delenv(variable, raising=False)
        yield home


def leet(folder: Path, *options: str) -> str:
    """``wandb leet inspect`` (wandb's reader of an offline run's transaction log) on a run folder."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *options, str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_wandb_run(folder: Path) -> dict:
    """An offline run as wandb reads it back: its summary view (config, summary, tags, run id) and
    its records (the run record's group and job type, the history rows)."""
    view = json.loads(leet(folder, "--summary", "--json"))
    records = [json.loads(line) for line in leet(folder, "--json").splitlines() if line.strip()]
    [run_record] = [record["run"] for record in records if record["type"] == "run"]
    view["group"] = run_record.get("run_group")
    view["history"] = [record["history"]["item"] for record in records if record["type"] == "history"]
    view["folder"] = folder
    return view


def only_offline_run(directory: Path) -> Path:
    [folder] = (directory / "wandb").glob("offline-run-*")
    return folder


def flat_config(run_dir: Path) -> dict:
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("provenance")
    return sink.flatten(raw)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run_dirs(grid: Path) -> list[Path]:
    return sorted(path.parent for path in grid.glob("*/summary.json"))


def csv_cell_equals(text: str, value) -> bool:
    """A report.csv cell and its table value: empty is None, a number the same number, text itself."""
    if text == "":
        return value is None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(text) == value
    return text == value


# --------------------------------------------------------------------------------------------------
# Units


def test_wandb_summary_keeps_numbers_and_splits_intervals():
    summary = {"test/eo_gap": 0.25, "test/eo_gap_ci": [0.1, 0.4], "test/tpr/group=minority_ci": [0.5, None],
               "privacy/epsilon": math.inf, "test/fpr_gap": float("nan"), "privacy/noise_multiplier": None,
               "test/constant_prediction": False, "mode": "dpsgd", "units": np.int64(3),
               "warnings": ["a warning"], "data/info": {"dropped_columns": ["fnlwgt"]}}
    assert sink.wandb_summary(summary) == {
        "test/eo_gap": 0.25, "test/eo_gap_ci_low": 0.1, "test/eo_gap_ci_high": 0.4,
        "test/tpr/group=minority_ci_low": 0.5, "privacy/epsilon": math.inf,
        "test/constant_prediction": False, "mode": "dpsgd", "units": 3, "warnings": ["a warning"]}


def test_tags_hparams_and_final_metrics_follow_the_config():
    flat = {"name": "n", "output_dir": "runs", "seed": 2, "data.name": "adult", "privacy.mode": "none",
            "privacy.noise_multiplier": None, "fairness.method": "runner", "model.hidden": [200, 100],
            "privacy.poisson_sampling": True, "logging.tensorboard": True}
    assert sink.run_tags(flat) == ["data:adult", "privacy:none", "method:runner"]
    assert sink.run_hparams(flat) == {"seed": 2, "data.name": "adult", "privacy.mode": "none",
                                      "fairness.method": "runner", "model.hidden": "[200, 100]",
                                      "privacy.poisson_sampling": True}
    assert sink.final_metrics({"test/accuracy": 0.5, "privacy/epsilon": None, "train/loss": 1.0}) == {
        "final/test/accuracy": 0.5}
    # TensorBoard's metrics are the report's headline metrics, so the two views never differ.
    assert set(sink.FINAL_METRICS) == set(runs.METRICS)


def test_report_run_id_is_stable_per_group_and_project():
    assert dashboards.report_run_id("p", "grid") == dashboards.report_run_id("p", "grid")
    assert len({dashboards.report_run_id(*pair) for pair in
                (("p", "grid"), ("p", "grid2"), ("q", "grid"))}) == 3


# --------------------------------------------------------------------------------------------------
# wandb, offline, read back with wandb's reader


@pytest.fixture(scope="module")
def wandb_grid(tmp_path_factory, wandb_home) -> Path:
    """The tiny grid with wandb offline and TensorBoard on: 4 runs, and at its end the report and
    its wandb report run."""
    return run_grid(tmp_path_factory.mktemp("wandb_grid"))


@pytest.mark.slow
def test_each_run_logs_its_flat_config_tags_group_and_final_metrics(wandb_grid):
    directories = run_dirs(wandb_grid)
    assert len(directories) == 4
    for run_dir in directories:
        run = read_wandb_run(only_offline_run(run_dir))
        config, summary = flat_config(run_dir), summary_of(run_dir)
        # The config as the dotted keys a user types, equal to config.yaml; no nested sections.
        logged = {key: value for key, value in run["config"].items() if not key.startswith("_")}
        assert logged == config
        assert logged["data.minority_share"] in (0.2, 0.05) and "privacy" not in logged
        assert run["tags"] == ["data:synthetic", f"privacy:{config['privacy.mode']}", "method:none"]
        assert run["group"] == "tiny"
        # The final metrics: every number of summary.json, each interval as _low and _high.
        for key, value in summary.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            assert run["summary"][key] == pytest.approx(value, rel=1e-12), key
        for key in ("test/eo_gap", "test/accuracy/group=minority", "test/dp_gap"):
            low, high = summary[f"{key}_ci"]
            assert (run["summary"][f"{key}_ci_low"], run["summary"][f"{key}_ci_high"]) == (low, high)
        if config["privacy.mode"] == "dpsgd":
            assert run["summary"]["privacy/epsilon"] == pytest.approx(summary["privacy/epsilon"])
        else:  # null in summary.json: not a number to filter on
            assert "privacy/epsilon" not in run["summary"]
        assert [row["_step"] for row in run["history"]] == [1]


def check_report_run(grid: Path, folder: Path) -> dict:
    """The report run in ``folder`` holds the grid's current report: report.csv as a table equal to
    the file, every figure (the same bytes), report.md as HTML."""
    run = read_wandb_run(folder)
    assert run["group"] == "tiny" and run["tags"] == ["report"]
    assert run["run_id"] == dashboards.report_run_id("dp-fairness", "tiny")
    table_file = run["summary"]["tables/report"]
    assert table_file["_type"] == "table-file"
    table = json.loads((folder / "files" / table_file["path"]).read_text())
    header, *rows = list(csv.reader((grid / REPORT_CSV).read_text().splitlines()))
    assert table["columns"] == header and len(table["data"]) == len(rows) == 4
    for row, logged in zip(rows, table["data"]):
        assert all(csv_cell_equals(text, value) for text, value in zip(row, logged, strict=True)), (row, logged)
    assert run["summary"]["report/points"] == 4
    figures = sorted(path for path in grid.glob("*.png"))
    assert {path.name for path in figures} >= {"accuracy.png", "gaps.png"}
    for path in figures:
        image = run["summary"][f"figures/{path.stem}"]
        assert image["_type"] == "image-file"
        assert image["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (folder / "files" / image["path"]).is_file()
    page = (folder / "files" / run["summary"]["report/markdown"]["path"]).read_text()
    assert "<h1>Report: tiny</h1>" in page and "<table>" in page
    # Every figure report.md shows, inlined.
    assert page.count("data:image/png;base64,") == (grid / REPORT_MD).read_text().count(".png)") > 0
    return run


@pytest.mark.slow
def test_the_grid_end_logs_one_report_run_that_a_second_report_updates(wandb_grid):
    first_folder = only_offline_run(wandb_grid)
    first = check_report_run(wandb_grid, first_folder)
    assert (wandb_grid / REPORT_MD).is_file()  # the grid wrote its report at its end
    # wandb's staging copies of the tables stay in the grid's wandb folder.
    assert list((wandb_grid / "wandb" / "artifacts" / "staging").iterdir())

    assert running.main(["--report", str(wandb_grid)]) == 0
    folders = sorted((wandb_grid / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and first_folder in folders
    [second_folder] = [folder for folder in folders if folder != first_folder]
    second = check_report_run(wandb_grid, second_folder)
    # The same run, and the later report after the earlier one.
    assert second["run_id"] == first["run_id"]
    assert second["step"] > first["step"]


@pytest.mark.slow
def test_private_stats_false_keeps_private_statistics_out_of_wandb_and_tensorboard(tmp_path, wandb_home):
    grid = run_grid(tmp_path, name="withheld", sweep={"data.minority_share": [0.2]},
                    zip={"privacy.mode": ["dpsgd"], "privacy.noise_multiplier": [1.0]},
                    logging={**BASE["logging"], "private_stats": False})
    [run_dir] = run_dirs(grid)
    run = read_wandb_run(only_offline_run(run_dir))
    logged = [*run["summary"], *(key for row in run["history"] for key in row)]
    assert "test/accuracy" in logged and "privacy/epsilon" in logged
    assert not [key for key in logged if sink.is_non_private_statistic(key)]
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "final/test/accuracy" in scalars and "test/accuracy" in scalars
    assert not [tag for tag in scalars if sink.is_non_private_statistic(tag.removeprefix("final/"))]
    # The grid's HParams experiment lists no such metric either; the report run's table has no
    # value of one (the report can only read what summary.json holds).
    experiment, _ = hparams_dashboard(grid)
    assert not [m.name.tag for m in experiment.metric_infos
                if sink.is_non_private_statistic(m.name.tag.removeprefix("final/"))]
    table = json.loads((only_offline_run(grid) / "files" /
                        read_wandb_run(only_offline_run(grid))["summary"]["tables/report"]["path"]).read_text())
    for column, values in zip(table["columns"], zip(*table["data"])):
        if sink.is_non_private_statistic(column):
            assert set(values) == {None}, column


# --------------------------------------------------------------------------------------------------
# TensorBoard, read back with the HParams plugin's own handlers; wandb disabled


def hparams_dashboard(logdir: Path):
    """What TensorBoard's HParams dashboard shows for ``logdir``: the experiment (its hyperparameter
    and metric columns) and the session groups (rows), from the plugin's own request handlers."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, get_experiment, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(
        data_provider=provider, logdir=str(logdir), multiplexer=multiplexer))
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest()).run()
    columns = ([api_pb2.ColParams(hparam=info.name) for info in experiment.hparam_infos]
               + [api_pb2.ColParams(metric=info.name) for info in experiment.metric_infos])
    groups = list_session_groups.Handler(request, backend, "", api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=1000, col_params=columns,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN])).run()
    return experiment, list(groups.session_groups)


@pytest.fixture(scope="module")
def tensorboard_grid(tmp_path_factory):
    """The tiny grid with two seeds, TensorBoard on and wandb disabled, with wandb.init watched:
    (its directory, the wandb.init calls made while it ran and while its report was written)."""
    import wandb

    tmp_path = tmp_path_factory.mktemp("tensorboard_grid")
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wandb, "init", lambda *args, **kwargs: calls.append(kwargs))
        grid = run_grid(tmp_path, sweep={**BASE["sweep"], "seed": [0, 1]},
                        logging={**BASE["logging"], "wandb": {"mode": "disabled"}})
        after_grid = sorted(path.name for path in grid.iterdir())
        assert running.main(["--report", str(grid)]) == 0
    return grid, calls, after_grid


@pytest.mark.slow
def test_nothing_reaches_wandb_when_it_is_disabled(tensorboard_grid):
    grid, calls, after_grid = tensorboard_grid
    assert calls == []
    assert not list(grid.parent.parent.rglob("wandb"))
    # Without wandb the grid's end writes no report, only its HParams experiment.
    assert REPORT_MD not in after_grid and "tb" in after_grid


@pytest.mark.slow
def test_hparams_dashboard_shows_the_grid_as_a_table(tensorboard_grid):
    grid, _, _ = tensorboard_grid
    experiment, groups = hparams_dashboard(grid)
    # Columns: the swept keys by their short names, and the seed; the final metrics.
    hparams = {info.name: info for info in experiment.hparam_infos}
    assert list(hparams) == [*SWEPT, "seed"]
    assert [hparams[key].display_name for key in hparams] == ["share", "mode", "noise", "seed"]
    share = hparams["data.minority_share"].domain_interval
    assert (share.min_value, share.max_value) == (0.05, 0.2)
    assert sorted(value.string_value for value in hparams["privacy.mode"].domain_discrete.values) == [
        "dpsgd", "none"]
    assert [info.name.tag for info in experiment.metric_infos] == [
        sink.FINAL_PREFIX + key for key in sink.FINAL_METRICS]
    assert experiment.metric_infos[0].display_name == runs.METRICS["test/accuracy"]
    # Rows: every run, its session the run's own tb/ folder, its values and final metrics.
    directories = run_dirs(grid)
    assert len(directories) == len(groups) == 8
    by_session = {group.sessions[0].name: group for group in groups}
    for run_dir in directories:
        group = by_session[f"{run_dir.name}/tb"]
        config, summary = flat_config(run_dir), summary_of(run_dir)
        values = {key: getattr(value, value.WhichOneof("kind")) for key, value in group.hparams.items()}
        assert values["data.minority_share"] == config["data.minority_share"]
        assert values["privacy.mode"] == config["privacy.mode"]
        assert values["seed"] == config["seed"]
        if config["privacy.noise_multiplier"] is None:  # no noise multiplier: left out, not "None"
            assert "privacy.noise_multiplier" not in values
        else:
            assert values["privacy.noise_multiplier"] == config["privacy.noise_multiplier"]
        metrics = {value.name.tag: value.value for value in group.metric_values}
        for key in sink.FINAL_METRICS:
            if summary.get(key) is None:
                assert sink.FINAL_PREFIX + key not in metrics
            else:
                assert metrics[sink.FINAL_PREFIX + key] == pytest.approx(summary[key], rel=1e-6), key
        assert group.sessions[0].status == api_pb2.STATUS_SUCCESS


@pytest.mark.slow
def test_the_report_puts_its_figures_and_text_in_the_grid_log_directory(tensorboard_grid):
    grid, _, _ = tensorboard_grid
    events = EventAccumulator(str(grid / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    figures = sorted(grid.glob("*.png"))
    assert len(figures) >= 4
    assert sorted(events.Tags()["images"]) == sorted(f"report/{path.stem}" for path in figures)
    for path in figures:
        [image] = events.Images(f"report/{path.stem}")
        assert image.encoded_image_string == path.read_bytes()
    [text] = events.Tensors(f"report/{REPORT_MD}")
    assert tensor_util.make_ndarray(text.tensor_proto).item().decode() == (grid / REPORT_MD).read_text()
    # The HParams experiment now has report.csv's setting columns (the same keys) and the seed.
    experiment, _ = hparams_dashboard(grid)
    assert [info.name for info in experiment.hparam_infos] == [*SWEPT, "seed"]


# --------------------------------------------------------------------------------------------------
# Never through a link


def test_a_linked_tb_or_wandb_folder_in_the_grid_is_left_alone(tmp_path, capsys, monkeypatch):
    """A ``tb`` or ``wandb`` in the grid's folder that is a link: nothing is written through it,
    wandb is not started, one warning each, and the report's publishing goes on."""
    import wandb
    from PIL import Image

    grid, elsewhere = tmp_path / "grid", tmp_path / "elsewhere"
    (grid / "point").mkdir(parents=True)
    elsewhere.mkdir()
    (grid / "point" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "data": {"minority_share": 0.1},
         "logging": {"tensorboard": True, "wandb": {"mode": "offline"}}}))
    (grid / "tb").symlink_to(elsewhere, target_is_directory=True)
    (grid / "wandb").symlink_to(elsewhere, target_is_directory=True)
    Image.new("RGB", (4, 3)).save(grid / "accuracy.png")
    (grid / REPORT_MD).write_text("# Report: grid\n")
    calls = []
    monkeypatch.setattr(wandb, "init", lambda *args, **kwargs: calls.append(kwargs))
    lines = dashboards.publish_report(grid, [grid / REPORT_MD, grid / "accuracy.png"])
    assert lines == [] and calls == [] and not list(elsewhere.iterdir())
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3  # the HParams experiment, the report's events, the wandb report run
    assert all("is a link or not a folder" in line for line in warnings)
