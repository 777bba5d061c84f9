"""The repair-under-privacy study grids (``configs/repair_under_dp_*.yaml``): each holds what its
comment says, every method in it is sound under its privacy mode, and a shrunk copy of the Adult
grid runs end to end through the CLI and its report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import running
from grids.sweep import load_grid
from training.repair import METHODS

ROOT = Path(__file__).resolve().parent.parent
SOUND_UNDER_DPSGD = {name for name in METHODS if not METHODS.get(name).refuses.get("dpsgd")}


def grid_of(name: str):
    return load_grid(ROOT / "configs" / f"{name}.yaml")


def privacy_level(config) -> tuple:
    return (config.privacy.mode, config.privacy.target_epsilon, config.privacy.noise_multiplier)


@pytest.mark.parametrize("name", ["repair_under_dp_adult", "repair_under_dp_compas"])
def test_tabular_studies_cross_every_sound_method_with_privacy_share_target_and_seed(name):
    grid = grid_of(name)
    configs = [point.config for point in grid.points]
    assert {c.fairness.method for c in configs} == SOUND_UNDER_DPSGD
    assert {privacy_level(c) for c in configs} == {("none", None, None), ("dpsgd", 1.0, None),
                                                   ("dpsgd", 3.0, None), ("dpsgd", 8.0, None)}
    assert {c.data.minority_share for c in configs} == {0.3, 0.1, 0.05, 0.01}
    assert {c.fairness.mode for c in configs} == {"dp", "eo"}
    assert {c.seed for c in configs} == {0, 1, 2, 3, 4}
    assert len(configs) == len(SOUND_UNDER_DPSGD) * 4 * 4 * 2 * 5
    for config in configs:
        assert config.data.val_fraction > 0  # the public split the DP forms read
        assert config.data.validation_public  # declared as such
        assert config.data.train_size is not None  # the same q and steps at every share
    assert configs[0].data.name == name.rsplit("_", 1)[1]


def test_the_quick_adult_grid_is_a_share_of_the_full_one():
    full = {point.config.to_dict()["fairness"]["method"]: point.config
            for point in grid_of("repair_under_dp_adult").points}
    quick = grid_of("repair_under_dp_adult_quick")
    assert len(quick.points) == len(SOUND_UNDER_DPSGD) * 4 * 2 * 3
    for point in quick.points:
        config = point.config
        assert config.fairness.mode == "eo" and config.data.minority_share in (0.1, 0.01)
        assert config.data.train_size == full["none"].data.train_size
        assert config.training == full["none"].training


def test_celeba_study_is_the_papers_setting_with_four_methods():
    configs = [point.config for point in grid_of("repair_under_dp_celeba").points]
    assert {c.fairness.method for c in configs} == {"none", "reweighing", "runner", "roc"}
    assert {privacy_level(c) for c in configs} == {("none", None, None), ("dpsgd", None, 0.7)}
    assert {c.data.minority_share for c in configs} == {0.1, 0.01}
    for config in configs:
        assert config.data.target == "Smiling" and config.data.protected == "Male"
        assert config.data.minority_value == "1" and config.data.settings.image_size == 64


@pytest.mark.slow
def test_a_shrunk_adult_study_runs_end_to_end_and_reports(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "repair_under_dp_adult.yaml").read_text())
    # Four of the methods (every sound one runs end to end in tests/test_repair_under_dp.py).
    methods = ["none", "reweighing", "runner", "roc"]
    assert set(methods) <= set(raw["sweep"]["fairness.method"])
    raw["sweep"] = {"fairness.method": methods, "data.minority_share": [0.3, 0.1], "seed": [0]}
    raw["zip"] = [{"privacy.mode": ["none", "dpsgd"], "privacy.target_epsilon": [None, 3.0]}]
    raw["fairness"]["mode"] = "eo"
    raw["fairness"]["public_examples"] = 200
    raw.update(output_dir=str(tmp_path / "runs"), device="cpu")
    raw["data"].update(train_size=1000)
    raw["training"].update(epochs=1, batch_size=100)
    raw["evaluation"] = {"bootstrap_resamples": 20}
    raw["logging"] = {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"}
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert running.main(["--params", str(params)]) == 0
    runs = tmp_path / "runs" / raw["name"]
    summaries = [json.loads(path.read_text()) for path in runs.glob("*/summary.json")]
    assert len(summaries) == len(methods) * 2 * 2
    for summary in summaries:
        if summary["privacy/private"]:
            assert 2.98 <= summary["privacy/epsilon"] <= 3.0
    assert running.main(["--report", str(runs)]) == 0
    # The repair-under-privacy view: the gap each method closes per privacy level and share, and
    # the figure of every metric against the share per level.
    with (runs / "report_gap_closed.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["fairness.method"], row["privacy.mode"], float(row["data.minority_share"]))
                  for row in rows) == sorted((method, mode, share) for method in methods[1:]
                                             for mode in ("none", "dpsgd") for share in (0.3, 0.1))
    assert all(row["gap"] == "test/eo_gap" and row["gap_closed_mean"] for row in rows)
    assert (runs / "repair_privacy_eo.png").stat().st_size > 50_000
    assert "## Repair under privacy" in (runs / "report.md").read_text()
