"""RUNNER's study grids (``configs/runner_*.yaml``): each holds what its comment says, and points
of each run end to end through the CLI on tiny data (the shipped COMPAS and German files, a fake
LSAC file and a fake CelebA of real JPEGs for the two data sets the user supplies).

- every tabular grid runs every registered method for both targets over 10 seeds in the released
  procedure (10 epochs of 100 freshly drawn batches, 15 adversarial, 5 + 5 FairNeuron; the released
  batches per method and target; the released selection per target), with RUNNER's settings per
  data set (k, λ, batch);
- the CelebA grid runs the README's image methods on both tasks with the k table's ratios;
- the λ grid runs each (method, λ) once per target and seed;
- a Vanilla, a RUNNER and a FairNeuron point of each grid train and write their summary;
- Adult's grid, three seeds of Vanilla and RUNNER under eo in the released procedure (3 epochs):
  no selected model is a constant classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import running
from grids.sweep import load_grid
from tests.celeba_fake import make_fake_celeba
from tests.lsac_fake import make_fake_lsac
from tests.test_configs import deep_merge
from training.repair import METHODS
from utils.loader import apply_overrides

ROOT = Path(__file__).resolve().parent.parent
TABULAR = ["runner_adult", "runner_compas", "runner_german", "runner_lsac"]
K_TABLE = {  # RUNNER's README: data set -> (dp, eo) neuron ratio
    "runner_adult": (0.5, 0.05), "runner_compas": (0.05, 0.05), "runner_german": (0.05, 0.05),
    "runner_lsac": (0.05, 0.05),
}
BATCH = {  # data set -> (dp, eo) batch size: the released 1,000 / 2,000 where the cells allow
    "runner_adult": (1000, 2000), "runner_compas": (500, 1000), "runner_german": (64, 128),
    "runner_lsac": (1000, 1000),
}
# The released code's selection per target (fairlearn's DP difference; its equalized-odds
# difference, the larger of the TPR and FPR gaps).
RELEASED_SELECT = {"dp": "best_val_dp_gap", "eo": "best_val_eodds_gap"}


def released_batches(method: str, mode: str) -> str:
    """The released batches: group-balanced for every method under dp; under eo cell-balanced for
    GapReg and RUNNER, uniform for Vanilla (and the methods trained as Vanilla)."""
    if mode == "dp":
        return "group_balanced"
    return "cell_balanced" if method in ("gapreg", "runner") else "uniform"


def grid_of(name: str, *overrides: str):
    return load_grid(ROOT / "configs" / f"{name}.yaml", list(overrides))


@pytest.mark.parametrize("name", TABULAR)
def test_tabular_grids_run_every_method_for_both_targets_over_ten_seeds(name):
    grid = grid_of(name)
    assert len(grid.points) == len(METHODS.names()) * 2 * 10
    cells = {(p.config.fairness.method, p.config.fairness.mode) for p in grid.points}
    assert cells == {(method, mode) for method in METHODS for mode in ("dp", "eo")}
    for point in grid.points:
        config = point.config
        method, mode = config.fairness.method, config.fairness.mode
        assert config.privacy.mode == "none" and config.training.select == RELEASED_SELECT[mode]
        assert not config.training.select_skip_constant
        assert config.training.steps_per_epoch == 100
        assert config.training.batches == released_batches(method, mode)
        assert config.training.batch_size == BATCH[name][mode == "eo"]
        assert config.training.epochs == {"adversarial": 15, "fairneuron": 5}.get(method, 10)
        if method == "fairneuron":
            assert config.fairness.settings.retrain_epochs == 5
        assert config.model.hidden == [200, 200] and config.training.lr == 1e-3
        if config.fairness.method == "runner":
            ratio = K_TABLE[name][config.fairness.mode == "eo"]
            assert config.fairness.settings.neuron_ratio == ratio
            assert config.fairness.settings.lam == {"dp": 0.3, "eo": 1.0}[config.fairness.mode]
        if config.fairness.method == "adversarial":
            assert config.fairness.settings.lam == 0.5
            assert config.fairness.settings.adversary_lr == 1e-4


def test_celeba_grid_is_the_readme_image_study():
    grid = grid_of("runner_celeba")
    ratios = {(p.config.data.target, p.config.fairness.mode): p.config.fairness.settings.neuron_ratio
              for p in grid.points if p.config.fairness.method == "runner"}
    assert ratios == {("Wavy_Hair", "dp"): 0.2, ("Wavy_Hair", "eo"): 0.5,
                      ("Attractive", "dp"): 0.05, ("Attractive", "eo"): 0.2}
    assert {p.config.fairness.method for p in grid.points} == {"none", "oversample", "runner",
                                                               "adversarial"}
    for point in grid.points:
        config = point.config
        assert config.data.protected == "Male" and config.training.lr == 1e-4
        assert config.training.batch_size == {"dp": 64, "eo": 128}[config.fairness.mode]
        assert config.training.epochs == (20 if config.fairness.method == "adversarial" else 10)
        assert config.training.steps_per_epoch == 100
        assert config.training.select == RELEASED_SELECT[config.fairness.mode]
        assert config.training.batches == released_batches(config.fairness.method,
                                                            config.fairness.mode)


def test_lambda_grid_runs_each_method_and_lambda_once_per_cell():
    grid = grid_of("runner_adult_lambda")
    runs = [(p.config.fairness.method, getattr(p.config.fairness.settings, "lam", None),
             p.config.fairness.mode, p.config.seed) for p in grid.points]
    assert len(runs) == len(set(runs)) == (1 + 5 + 5 + 4) * 2 * 5
    lams = {(m, lam) for m, lam, *_ in runs}
    assert {lam for m, lam in lams if m == "gapreg"} == {0.1, 0.3, 1.0, 3.0, 10.0}
    assert {lam for m, lam in lams if m == "runner"} == {0.1, 0.3, 1.0, 3.0, 10.0}
    assert {lam for m, lam in lams if m == "adversarial"} == {0.1, 0.5, 1.0, 2.0}
    for point in grid.points:  # the released procedure, as in runner_adult.yaml
        config = point.config
        method, mode = config.fairness.method, config.fairness.mode
        assert config.training.steps_per_epoch == 100
        assert config.training.select == RELEASED_SELECT[mode]
        assert config.training.batches == released_batches(method, mode)
        assert config.training.epochs == (15 if method == "adversarial" else 10)


SHRINK = ["training.epochs=1", "training.steps_per_epoch=5", "evaluation.bootstrap_resamples=20",
          "logging.tensorboard=false", "logging.wandb.mode=disabled", "logging.progress=never"]
DATA_SHRINK = {
    "runner_adult": ["data.adult.protocol=official", "data.train_size=1500", "data.minority_share=0.3",
                     "data.val_fraction=0.2"],
    "runner_compas": [],
    "runner_german": [],
    "runner_lsac": [],
    "runner_celeba": ["data.train_size=80", "data.celeba.test_size=40", "data.celeba.image_size=64",
                      "model.name=cnn", "model.width=8"],
}


@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory):
    lsac = tmp_path_factory.mktemp("lsac")
    make_fake_lsac(lsac, n_rows=1500, seed=0)
    celeba = tmp_path_factory.mktemp("celeba")
    make_fake_celeba(celeba, n_images=300, seed=0)
    return {"runner_lsac": lsac, "runner_celeba": celeba}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*TABULAR, "runner_celeba"])
def test_points_of_each_grid_run_end_to_end(tmp_path, fake_roots, name):
    grid = grid_of(name)
    wanted = {("none", "dp"), ("runner", "eo"), ("fairneuron", "dp")}
    chosen = {}
    for point in grid.points:
        key = (point.config.fairness.method, point.config.fairness.mode)
        if key in wanted and point.config.seed == 0:
            chosen.setdefault(key, point)
    assert set(chosen) == (wanted if name != "runner_celeba" else wanted - {("fairneuron", "dp")})
    for point in chosen.values():
        overrides = [*SHRINK, *DATA_SHRINK[name], f"output_dir={tmp_path}", "device=cpu",
                     "name=point"]
        if name in fake_roots:
            overrides.append(f"data.root={fake_roots[name]}")
        if name == "runner_celeba":
            overrides += [f"data.celeba.cache_dir={tmp_path / 'cache'}", "training.batch_size=16"]
        if name in ("runner_adult", "runner_compas", "runner_lsac"):
            overrides.append("training.batch_size=100")
        # The point's resolved config as a params file, shrunk, through the command line.
        params = tmp_path / "point.yaml"
        params.write_text(yaml.safe_dump(apply_overrides(point.config.to_dict(), overrides)))
        assert running.main(["--params", str(params), "--overwrite"]) == 0, point.label
        summary = json.loads((tmp_path / "point" / "summary.json").read_text())
        assert 0 <= summary["test/accuracy"] <= 1, point.label
        assert summary["select/criterion"] == RELEASED_SELECT[point.config.fairness.mode]
        retrain = getattr(point.config.fairness.settings, "retrain_epochs", 0)
        assert summary["units"] == 1 + retrain, point.label


@pytest.mark.slow
def test_adult_in_the_released_procedure_selects_no_constant_classifier(tmp_path):
    """Three seeds of Vanilla and RUNNER (its λ and k for eo) on Adult's RUNNER protocol, in the
    released procedure with the smoke overlay (one epoch: 100 freshly drawn batches): what was a
    constant classifier before (14 steps an epoch of the natural mix at batch 2,000) is not now."""
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    grid = grid_of("runner_adult")
    chosen = [point for point in grid.points if point.config.fairness.mode == "eo"
              and point.config.fairness.method in ("none", "runner") and point.config.seed < 3]
    assert len(chosen) == 6
    for point in chosen:
        raw = deep_merge(point.config.to_dict(), smoke)
        raw = apply_overrides(raw, [f"output_dir={tmp_path}", "device=cpu", "logging.tensorboard=false"])
        params = tmp_path / "point.yaml"
        params.write_text(yaml.safe_dump(raw))
        assert running.main(["--params", str(params)]) == 0, point.label
        summary = json.loads((tmp_path / point.label / "summary.json").read_text())
        assert summary["test/constant_prediction"] is False, point.label
        assert summary["val/constant_prediction"] is False, point.label
        assert summary["select/metric"] == "val/eodds_gap" and summary["units"] == 1
        assert not any("constant classifier" in warning for warning in summary["warnings"])
