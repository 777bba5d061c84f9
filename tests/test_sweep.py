"""Grids (grids/sweep.py and running.py): expansion, names, checks before anything runs, --dry-run,
and a real grid on the synthetic data set in which some points fail and the others finish."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import running
from grids.sweep import STATUS_FILE, expand_grid, format_value, load_grid, run_grid, short_names
from utils.config import ExperimentConfig
from utils.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# A base that trains in well under a second per point on 2 cores.
BASE = {
    "name": "tiny",
    "data": {"name": "synthetic", "train_size": 3000},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 2, "batch_size": 300, "lr": 0.01},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"},
}
# The synthetic pool holds about 2,400 minority examples: share 0.9 of 3,000 (2,700) is infeasible,
# which run() reports as a UserInputError once it has the data, i.e. while the grid runs.
SWEEP = {"data.minority_share": [0.2, 0.05, 0.9], "seed": [0, 1]}
ZIP = {"privacy.mode": ["none", "dpsgd"], "privacy.noise_multiplier": [None, 1.0]}


def grid_raw(tmp_path: Path, **sections) -> dict:
    return {**BASE, "output_dir": str(tmp_path / "runs"), **sections}


def write_params(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_product_and_zip_expand_seed_innermost(tmp_path):
    grid = expand_grid(grid_raw(tmp_path, sweep=SWEEP, zip=ZIP))
    assert grid.name == "tiny" and grid.directory == tmp_path / "runs" / "tiny"
    assert grid.keys == ("data.minority_share", "privacy.mode", "privacy.noise_multiplier", "seed")
    assert [p.label for p in grid.points] == [
        f"share={share},mode={mode},noise={noise},seed={seed}"
        for share in ("0.2", "0.05", "0.9") for mode, noise in (("none", "none"), ("dpsgd", "1.0"))
        for seed in (0, 1)]
    for point in grid.points:
        config = point.config
        assert isinstance(config, ExperimentConfig)
        assert config.data.minority_share == point.values["data.minority_share"]
        assert (config.privacy.mode, config.privacy.noise_multiplier) == (
            point.values["privacy.mode"], point.values["privacy.noise_multiplier"])
        assert config.seed == point.values["seed"]
        # The single-run contract per point: {output_dir}/{name} is the grid's directory / label.
        assert config.name == point.label and Path(config.output_dir) == grid.directory
        assert point.run_dir == grid.directory / point.label
        assert config.logging.wandb.group == "tiny"
        assert config.training.epochs == 2  # the base reaches every point


def test_names_are_stable_unique_and_directory_safe(tmp_path):
    raw = grid_raw(tmp_path, sweep={"data.minority_share": [1e-3, 0.25], "model.hidden": [[16, 8], [4]],
                                    "data.minority_value": ["non-White", "a b/c"]})
    first, second = expand_grid(raw), expand_grid(raw)
    labels = [p.label for p in first.points]
    assert labels == [p.label for p in second.points]
    assert len(set(labels)) == len(labels) == 8
    assert all(re.fullmatch(r"[\w.=,+-]+", label) for label in labels)
    assert labels[0] == "share=0.001,hidden=16+8,minority_value=non-White"
    assert "share=0.25,hidden=4,minority_value=a_b_c" in labels
    assert [format_value(v) for v in (1e-5, 0.1, None, True, 3, [200, 100])] == [
        "1e-05", "0.1", "none", "true", "3", "200+100"]
    # PyYAML reads 1e-3 as the string "1e-3": the name comes from the coerced config value.
    assert expand_grid(grid_raw(tmp_path, sweep={"training.lr": ["1e-3"]})).points[0].label == "lr=0.001"


def test_list_of_zip_groups_is_a_product_of_groups(tmp_path):
    grid = expand_grid(grid_raw(tmp_path, zip=[ZIP, {"training.lr": [0.01, 0.1, 1.0],
                                                     "training.epochs": [1, 2, 3]}]))
    assert len(grid.points) == 6
    assert {(p.config.training.lr, p.config.training.epochs) for p in grid.points} == {
        (0.01, 1), (0.1, 2), (1.0, 3)}


def test_colliding_short_names_keep_their_dotted_keys(tmp_path):
    assert short_names(["privacy.mode", "fairness.mode", "seed"]) == {
        "privacy.mode": "privacy.mode", "fairness.mode": "fairness.mode", "seed": "seed"}
    grid = expand_grid(grid_raw(tmp_path, sweep={"privacy.mode": ["none"], "fairness.mode": ["dp", "eo"]}))
    assert [p.label for p in grid.points] == ["privacy.mode=none,fairness.mode=dp",
                                              "privacy.mode=none,fairness.mode=eo"]


@pytest.mark.parametrize("sections, fragment", [
    ({"sweep": [0.1, 0.2]}, "sweep: expected a mapping of dotted keys to lists"),
    ({"sweep": {"seed": 3}}, "sweep.seed: got 3; expected a non-empty list"),
    ({"sweep": {"seed": []}}, "sweep.seed: got []"),
    ({"sweep": {"privacy": [{"mode": "none"}]}}, "sweep the section's keys one by one"),
    ({"zip": {"privacy.mode": ["none", "dpsgd"], "privacy.noise_multiplier": [None, 1.0, 0.5]}},
     "zip: the lists of a zip group move together and need equal lengths; privacy.mode has 2, "
     "privacy.noise_multiplier has 3"),
    ({"sweep": {"seed": [0, 1]}, "zip": {"seed": [2, 3]}}, "zip: 'seed' is already swept in sweep"),
    ({"sweep": {"name": ["a", "b"]}}, "'name' cannot be swept"),
    ({"sweep": {"seed": [0, 0]}}, "get the same run directory 'seed=0'"),
    ({"sweep": {"data.minority_shar": [0.1]}},
     "sweep: unknown config key 'data.minority_shar'. Did you mean 'data.minority_share'?"),
    ({"zip": {"privacy.noise_multipler": [1.0]}}, "zip: unknown config key 'privacy.noise_multipler'"),
    ({"zip": {"privacy.mode": ["dpsgd"], "privacy.noise_multiplier": [None]}},
     "grid point (privacy.mode='dpsgd', privacy.noise_multiplier=None): privacy.mode 'dpsgd' needs "
     "one of privacy.noise_multiplier and privacy.target_epsilon: both are null"),
    ({"sweep": {"data.minority_share": [0.1, 1.5]}}, "grid point (data.minority_share=1.5): data.minority_share: got 1.5"),
])
def test_bad_grids_are_config_errors(tmp_path, sections, fragment):
    with pytest.raises(ConfigError) as error:
        expand_grid(grid_raw(tmp_path, **sections))
    assert fragment in str(error.value)


def test_set_applies_to_every_point_and_refuses_swept_keys(tmp_path):
    raw = grid_raw(tmp_path, sweep=SWEEP, zip=ZIP)
    grid = expand_grid(raw, ["training.epochs=1", "name=other"])
    assert {p.config.training.epochs for p in grid.points} == {1}
    assert grid.directory == tmp_path / "runs" / "other"
    assert {p.config.logging.wandb.group for p in grid.points} == {"other"}
    for override in ("seed=3", "data.minority_share=0.1", "privacy={mode: none}"):
        with pytest.raises(ConfigError, match="is swept by the grid"):
            expand_grid(raw, [override])


def test_bad_sweep_key_stops_the_cli_before_anything_runs(tmp_path, capsys):
    raw = grid_raw(tmp_path, sweep={"seed": [0, 1], "data.minority_shar": [0.1, 0.2]})
    assert running.main(["--params", str(write_params(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep: unknown config key 'data.minority_shar'. Did you mean "
                          "'data.minority_share'?")
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_every_point_and_runs_nothing(tmp_path, capsys):
    path = write_params(tmp_path, grid_raw(tmp_path, sweep=SWEEP, zip=ZIP))
    assert running.main(["--params", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    grid = load_grid(path)
    assert lines[0] == f"grid tiny: 12 points in {grid.directory} (0 already complete)"
    assert lines[1:] == [f"{i:>2}/12  {point.run_dir}" for i, point in enumerate(grid.points, 1)]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, count, last", [
    ("paper_adult", 60, "share=0.01,mode=dpsgd,noise=0.6,seed=2"),
    ("paper_celeba", 60, "share=0.001,mode=dpsgd,noise=0.5,seed=2"),
])
def test_paper_grids_expand(tmp_path, capsys, name, count, last):
    path = ROOT / "configs" / f"{name}.yaml"
    assert running.main(["--params", str(path), "--set", f"output_dir={tmp_path}", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == count + 1 and lines[-1].endswith(f"{tmp_path}/{name}/{last}")
    grid = load_grid(path)
    shares = {p.config.data.minority_share for p in grid.points}
    assert {p.config.data.train_size for p in grid.points} == {grid.points[0].config.data.train_size}
    assert len(shares) == 5 and {p.config.seed for p in grid.points} == {0, 1, 2}
    assert len({(p.config.privacy.mode, p.config.privacy.noise_multiplier) for p in grid.points}) == 4
    assert not any(tmp_path.iterdir())


def test_runner_grid_expands_every_method_and_target_with_its_own_settings(tmp_path, capsys):
    from training.repair import METHODS

    path = ROOT / "configs" / "runner_adult.yaml"
    assert running.main(["--params", str(path), "--set", f"output_dir={tmp_path}", "--dry-run"]) == 0
    grid = load_grid(path)
    assert len(grid.points) == 180 and not any(tmp_path.iterdir())
    methods = {p.config.fairness.method for p in grid.points}
    assert methods == set(METHODS)  # every registered method
    for point in grid.points:
        config = point.config
        assert config.data.settings.protocol == "runner" and config.training.steps_per_epoch == 100
        assert config.training.select == {"dp": "best_val_dp_gap",
                                          "eo": "best_val_eodds_gap"}[config.fairness.mode]
        assert config.training.batch_size == {"dp": 1000, "eo": 2000}[config.fairness.mode]
        if config.fairness.method == "runner":
            expected = {"dp": (0.3, 0.5), "eo": (1.0, 0.05)}[config.fairness.mode]
            assert (config.fairness.settings.lam, config.fairness.settings.neuron_ratio) == expected
            assert "neuron_ratio=" in point.run_dir.name
        else:  # another method's settings never reach a point's name or resolved config
            assert "neuron_ratio=" not in point.run_dir.name
            assert "runner" not in config.to_dict()["fairness"]


def test_a_product_of_several_methods_lambda_lists_runs_each_method_and_lambda_once(tmp_path):
    # none reads no λ, gapreg only its own: 1 + 3 + 2 distinct runs, not 3 x 3 x 2.
    grid = expand_grid(grid_raw(tmp_path, sweep={
        "fairness.method": ["none", "gapreg", "runner"], "fairness.gapreg.lam": [0.5, 1.0, 2.0],
        "fairness.runner.lam": [0.3, 1.0]}))
    runs = [(p.config.fairness.method, getattr(p.config.fairness.settings, "lam", None))
            for p in grid.points]
    assert runs == [("none", None), ("gapreg", 0.5), ("gapreg", 1.0), ("gapreg", 2.0),
                    ("runner", 0.3), ("runner", 1.0)]
    assert len({p.label for p in grid.points}) == 6
    assert [p.label for p in grid.points][:2] == ["fairness=none",
                                                  "fairness=gapreg,fairness.gapreg.lam=0.5"]


@pytest.fixture(scope="module")
def ran_grid(tmp_path_factory):
    """The grid of SWEEP x ZIP (12 points) on disk, for the test that runs it through the CLI."""
    tmp_path = tmp_path_factory.mktemp("grid")
    path = write_params(tmp_path, grid_raw(tmp_path, sweep=SWEEP, zip=ZIP))
    return path, load_grid(path)


def test_grid_runs_every_point_and_reports_the_failing_ones(ran_grid, capsys):
    path, grid = ran_grid
    assert running.main(["--params", str(path)]) == 1  # some points failed: exit status 1
    out, err = capsys.readouterr()
    failing = [p for p in grid.points if p.config.data.minority_share == 0.9]
    finished = [p for p in grid.points if p.config.data.minority_share != 0.9]
    assert len(failing) == 4 and len(finished) == 8
    for point in failing:
        assert (f"error: grid point {point.label}: data.minority_share: 0.9 of data.train_size 3000 "
                f"needs 2700 minority examples") in err
        assert not point.run_dir.exists()  # run() leaves no directory after an input error
    for point in finished:
        for file in ("config.yaml", "summary.json", "metrics.jsonl", "predictions.csv"):
            assert (point.run_dir / file).is_file()
        assert yaml.safe_load((point.run_dir / "config.yaml").read_text())["name"] == point.label
    assert "grid tiny: 8 of 12 points complete, 4 failed" in out

    status = json.loads((grid.directory / STATUS_FILE).read_text())
    by_label = {entry["label"]: entry for entry in status["points"]}
    assert status["counts"] == {"done": 8, "failed": 4}
    assert all(by_label[p.label]["status"] == "failed" and "2700 minority examples"
               in by_label[p.label]["error"] for p in failing)
    assert by_label[finished[0].label]["values"] == {"data.minority_share": 0.2, "privacy.mode": "none",
                                                     "privacy.noise_multiplier": None, "seed": 0}

    # Started again, the complete points are skipped and the failing ones fail again.
    assert running.main(["--params", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("already complete, skipped") == 8
    status = json.loads((grid.directory / STATUS_FILE).read_text())
    assert status["counts"] == {"skipped": 8, "failed": 4}


def test_a_bug_in_one_point_is_recorded_and_ctrl_c_marks_the_point_interrupted(tmp_path, monkeypatch,
                                                                                capsys):
    # run() is replaced here: a real bug or Ctrl-C cannot be provoked on demand in a real run.
    import training.experiment

    grid = expand_grid(grid_raw(tmp_path, sweep={"seed": [0, 1, 2, 3]}))
    outcomes = iter([{"test/accuracy": 0.5}, RuntimeError("boom"), {"test/accuracy": 0.6},
                     KeyboardInterrupt()])

    def fake_run(config, overwrite=False):
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(training.experiment, "run", fake_run)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid)
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err  # the traceback of a bug is kept
    assert "error: grid point seed=1: RuntimeError: boom" in err
    status = json.loads((grid.directory / STATUS_FILE).read_text())
    assert [entry["status"] for entry in status["points"]] == ["done", "failed", "done", "interrupted"]
    assert status["points"][1]["error"] == "RuntimeError: boom"


@pytest.mark.parametrize("constant", [True, False])
def test_a_points_line_says_when_its_model_is_a_constant_classifier(tmp_path, constant):
    from grids.sweep import PointResult, _result_line

    point = expand_grid(grid_raw(tmp_path, sweep={"seed": [0]})).points[0]
    line = _result_line(PointResult(point, "done", summary={
        "test/accuracy": 0.75, "test/constant_prediction": constant}, wall_s=1.0))
    assert line.startswith(f"{point.label}: done in 1.0 s (test/accuracy 0.75")
    assert ("CONSTANT CLASSIFIER" in line) is constant
