"""The validation split (``data.val_fraction``), validation metrics, model selection
(``training.select``) and the RUNNER paper's Adult protocol (``data.adult.protocol: runner``).

Data: the split is disjoint from training and test (by index where the data expose it, by unique
rows for the synthetic set, by person for CelebA with identities), stratified by (group, label) to
within one example of the pool's shares, drawn before the resampling (the same at every share) and
absent at ``val_fraction`` 0, which leaves every existing selection as it was. Runs: every
evaluated row carries ``val/`` twins of the ``test/`` metrics; ``best_val_gap`` / ``best_val_ap``
pick the unit recomputed from metrics.jsonl, and summary.json, predictions.csv and model_final.pt
are that unit's; a selection survives an interruption.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dataset import build_dataset
from dataset.adult import (
    ADULT_COLUMNS,
    RELEASED_NOT_PUBLIC,
    RUNNER_MISSING_COLUMNS,
    RUNNER_ROWS,
    load_adult_runner,
    read_adult_files,
    runner_split,
)
from dataset.celeba_split import official_split, protocol_split
from dataset.imbalance import resample_to_share, validation_counts, validation_split
from dataset.synthetic import POOL_SIZE, make_synthetic
from models import build_model
from tests.conftest import read_jsonl, run_running_py
from tests.test_resume import run_until_interrupted
from training import checkpoint
from training import experiment as experiment_module
from training.evaluation import TestSetEvaluator as Evaluator
from training.selection import NO_SELECTION_STATE
from training.validation import validated_config
from utils.config import SELECT_NEEDS_VALIDATION
from utils.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent

# The validation size per group lies within one example of the pool's share of it.
ONE_EXAMPLE = 1.0


def synthetic(output_dir, **overrides) -> dict:
    # Seed 8: its best validation gap is at unit 3 of 5 (the selection tests need one before the
    # last, and the resume test one before the interruption after unit 4).
    raw = {"name": "val", "seed": 8, "device": "cpu", "output_dir": str(output_dir),
           "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 2000, "val_fraction": 0.2},
           "model": {"name": "mlp", "hidden": [16]},
           "training": {"epochs": 5, "batch_size": 64, "select": "best_val_gap"},
           "evaluation": {"bootstrap_resamples": 20},
           "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"}}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            raw[section] = {**raw[section], name: value}
        else:
            raw[section] = value
    return raw


def without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("time/")}


def check_stratified(minority, targets, val):
    """Each group's (and each group's positives') validation count within one example of its share."""
    minority, targets = np.asarray(minority, bool), np.asarray(targets)
    for group in (True, False):
        in_group = minority == group
        expected = len(val) * in_group.mean()
        got = np.count_nonzero(minority[val] == group)
        assert abs(got - expected) <= ONE_EXAMPLE, (group, got, expected)
        positives = in_group & (targets == 1)
        expected_pos = got * positives.sum() / in_group.sum()
        assert abs(np.count_nonzero(positives[val]) - expected_pos) <= ONE_EXAMPLE


# ---------------------------------------------------------------------------------------------------
# The split itself


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.37])
def test_validation_split_is_disjoint_stratified_and_nested(fraction):
    rng = np.random.default_rng(0)
    minority = rng.random(5003) < 0.3
    targets = (rng.random(5003) < np.where(minority, 0.2, 0.45)).astype(np.int64)
    val, rest = validation_split(minority, targets, fraction, seed=4)
    assert len(np.intersect1d(val, rest)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([val, rest])), np.arange(5003))
    assert len(val) == round(fraction * 5003)
    check_stratified(minority, targets, val)
    assert sum(validation_counts(minority, targets, fraction).values()) == len(val)
    # A larger fraction of the same seed holds the smaller one; another seed draws another set.
    larger, _ = validation_split(minority, targets, fraction + 0.1, seed=4)
    assert np.isin(val, larger).all()
    other, _ = validation_split(minority, targets, fraction, seed=5)
    assert not np.array_equal(val, other)


def test_validation_split_refuses_a_fraction_that_selects_nothing():
    minority = np.array([True, False] * 10)
    targets = np.array([0, 1, 1, 0] * 5)
    with pytest.raises(DataError, match="data.val_fraction"):
        validation_split(minority, targets, 0.01, seed=0)


def test_val_fraction_out_of_range_is_a_config_error():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="data.val_fraction"):
            validated_config({"data": {"val_fraction": bad}})


def test_synthetic_train_val_test_are_disjoint_rows_and_val_is_the_pools_mix(tmp_path):
    pool_x, pool_y, pool_minority = make_synthetic(POOL_SIZE, np.random.default_rng(12345))
    for share in (0.1, 0.3):
        config = validated_config(synthetic(tmp_path, **{"data.minority_share": share}))
        data = build_dataset(config)
        rows = {split: {row.tobytes() for row in getattr(data, f"x_{split}")} for split in ("train", "val", "test")}
        assert len(rows["val"]) == len(data.x_val) == round(0.2 * POOL_SIZE)
        assert not rows["train"] & rows["val"] and not rows["val"] & rows["test"]
        assert not rows["train"] & rows["test"]
        # Indices into the pool (synthetic rows are unique): the validation set's group shares.
        index = {row.tobytes(): i for i, row in enumerate(pool_x)}
        val = np.array([index[row.tobytes()] for row in data.x_val])
        check_stratified(pool_minority, pool_y, val)
        assert data.info["val_count/group=minority"] == int(data.minority_val.sum())
        assert data.info["val_size"] == len(val)
        if share == 0.1:
            first_val = val
    np.testing.assert_array_equal(np.sort(first_val), np.sort(val))  # the same at every share


def test_val_fraction_zero_keeps_the_earlier_selection(tmp_path):
    config = validated_config(synthetic(tmp_path, **{"data.val_fraction": 0.0, "training.select": "last"}))
    data = build_dataset(config)
    pool_x, pool_y, pool_minority = make_synthetic(POOL_SIZE, np.random.default_rng(12345))
    keep = resample_to_share(pool_minority, pool_y, 0.2, train_size=2000, seed=config.seed)
    np.testing.assert_array_equal(data.x_train, pool_x[keep])
    assert data.x_val.shape == (0, pool_x.shape[1]) and len(data.y_val) == len(data.minority_val) == 0
    assert not data.has_validation and data.info["val_size"] == 0


def test_adult_official_with_validation_split(tmp_path):
    raw = {"data": {"name": "adult", "minority_share": None, "val_fraction": 0.25}, "seed": 2}
    data = build_dataset(validated_config(raw))
    assert len(data.y_val) == round(0.25 * 30162) and len(data.y_train) == 30162 - len(data.y_val)
    assert len(data.y_test) == 15060
    for group in ("minority", "majority"):
        pool = data.info[f"pool_count/group={group}"]
        assert abs(data.info[f"val_count/group={group}"] - len(data.y_val) * pool / 30162) <= ONE_EXAMPLE
    # Standardized with the training rows' statistics: the training mean is 0, the validation's near it.
    assert abs(data.x_train[:, 0].mean()) < 1e-4 and abs(data.x_val[:, 0].mean()) < 0.05
    # The resampled training set is drawn from the rest only.
    # The same validation rows at another share (its features standardized with the other training set's
    # statistics, so only the one-hot columns are compared).
    resampled = build_dataset(validated_config({**raw, "data": {**raw["data"], "minority_share": 0.1}}))
    one_hot = len(data.info["numeric_features"])
    np.testing.assert_array_equal(resampled.x_val[:, one_hot:], data.x_val[:, one_hot:])
    np.testing.assert_array_equal(resampled.y_val, data.y_val)
    assert resampled.info["train_share"] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("name", ["compas", "german"])
def test_other_tabular_sources_take_a_validation_split(name):
    target = {"compas": "two_year_recid", "german": "bad_credit"}[name]
    protected, value = {"compas": ("sex", "Female"), "german": ("age", "young")}[name]
    data = build_dataset(validated_config({"data": {"name": name, "target": target, "protected": protected,
                                                       "minority_value": value, "minority_share": None,
                                                       "val_fraction": 0.2}}))
    pool = data.info["rows/train"]
    assert len(data.y_val) == round(0.2 * pool) and len(data.y_train) + len(data.y_val) == pool
    assert data.info["val_count/group=minority"] == int(data.minority_val.sum()) > 0


# ---------------------------------------------------------------------------------------------------
# CelebA


def celeba_attributes(n=20_000, seed=3):
    rng = np.random.default_rng(seed)
    minority = rng.random(n) < 0.42
    targets = (rng.random(n) < np.where(minority, 0.4, 0.55)).astype(np.int64)
    people = np.empty(n, dtype=np.int64)  # persons of 5 to 35 images, each of one group
    count = 0
    for group in (True, False):
        rows = rng.permutation(np.flatnonzero(minority == group))
        cuts = np.cumsum(rng.integers(5, 36, size=len(rows)))
        for part in np.split(rows, cuts[cuts < len(rows)]):
            people[part] = count
            count += 1
    return targets, minority, people


@pytest.mark.parametrize("with_identities", [False, True])
def test_celeba_protocol_validation_is_disjoint_stratified_and_share_free(with_identities):
    targets, minority, people = celeba_attributes()
    identities = people if with_identities else None
    splits = [protocol_split(targets, minority, share=share, train_size=3000, test_size=800, seed=2,
                             identities=identities, val_fraction=0.1) for share in (0.05, 0.3)]
    for split in splits:
        val, train, test = split.val_rows, split.train_rows, split.test_rows
        assert len(np.intersect1d(val, train)) == len(np.intersect1d(val, test)) == 0
        assert len(np.intersect1d(train, test)) == 0
        pool = split.info["pool_count/group=minority"] + split.info["pool_count/group=majority"]
        assert len(val) == round(0.1 * pool)
        for group, name in ((True, "minority"), (False, "majority")):
            in_val = minority[val] == group
            assert abs(in_val.sum() - len(val) * split.info[f"pool_count/group={name}"] / pool) <= ONE_EXAMPLE
            assert abs(2 * targets[val][in_val].sum() - in_val.sum()) <= 1  # half positive, as the pool
            in_train = minority[train] == group
            assert abs(2 * targets[train][in_train].sum() - in_train.sum()) <= 1
            assert split.info[f"val_count/group={name}"] == int(in_val.sum())
        if with_identities:
            persons = {name: set(people[rows].tolist()) for name, rows in (("val", val), ("train", train),
                                                                             ("test", test))}
            assert not persons["val"] & persons["train"] and not persons["val"] & persons["test"]
            assert not persons["train"] & persons["test"]
            assert split.info["identities_val"] == len(persons["val"])
    np.testing.assert_array_equal(splits[0].val_rows, splits[1].val_rows)
    # val_fraction 0 is the split made before validation sets existed.
    plain = protocol_split(targets, minority, share=0.05, train_size=3000, test_size=800, seed=2,
                           identities=identities)
    again = protocol_split(targets, minority, share=0.05, train_size=3000, test_size=800, seed=2,
                           identities=identities, val_fraction=0.0)
    np.testing.assert_array_equal(plain.train_rows, again.train_rows)
    assert len(again.val_rows) == 0


def test_celeba_official_validation_comes_from_the_training_partition():
    targets, minority, people = celeba_attributes()
    partition = np.where(people % 5 == 0, 2, 0).astype(np.int8)  # whole persons, as CelebA's
    split = official_split(targets, minority, partition, share=None, train_size=None, seed=0,
                           identities=people, val_fraction=0.1)
    assert (partition[split.val_rows] == 0).all()
    assert len(split.val_rows) == round(0.1 * np.count_nonzero(partition == 0))
    assert len(np.intersect1d(split.val_rows, split.train_rows)) == 0
    assert not set(people[split.val_rows].tolist()) & set(people[split.train_rows].tolist())
    check_stratified(minority[partition == 0], targets[partition == 0],
                     np.searchsorted(np.flatnonzero(partition == 0), split.val_rows))


def test_celeba_bundle_holds_the_validation_images(tmp_path):
    from tests.celeba_fake import make_fake_celeba

    fake = make_fake_celeba(tmp_path / "celeba", n_images=300, seed=0)
    raw = {"data": {"name": "celeba", "root": str(fake["root"]), "target": "Smiling", "protected": "Male",
                    "minority_value": "1", "minority_share": 0.2, "train_size": 80, "val_fraction": 0.2,
                    "celeba": {"test_size": 40, "image_size": 32, "cache_dir": str(tmp_path / "cache")}},
           "model": {"name": "cnn"}, "training": {"batch_size": 8}, "device": "cpu"}
    data = build_dataset(validated_config(raw))
    assert data.x_val.shape[1:] == (3, 32, 32) and len(data.x_val) == data.info["val_size"] > 0
    assert data.x_val.dtype == np.uint8 and len(data.y_val) == len(data.minority_val) == len(data.x_val)
    assert data.info["identities_val"] > 0
    plain = build_dataset(validated_config({**raw, "data": {**raw["data"], "val_fraction": 0.0}}))
    assert len(plain.x_val) == 0 and plain.info["val_size"] == 0


# ---------------------------------------------------------------------------------------------------
# Runs: validation metrics and model selection


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("select")
    config = validated_config(synthetic(out))
    summary = experiment_module.run(config)
    return config, summary, experiment_module.run_directory(config)


def test_every_evaluated_row_has_the_validation_twins_of_the_test_metrics(selected_run):
    _, _, run_dir = selected_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for row in rows:
        test_keys = {key[len("test/"):] for key in row if key.startswith("test/")}
        val_keys = {key[len("val/"):] for key in row if key.startswith("val/")}
        assert test_keys and val_keys == test_keys
        assert row["val/count/group=minority"] + row["val/count/group=majority"] == 1200


def test_best_val_gap_picks_the_smallest_gap_after_the_first_unit(selected_run):
    config, summary, run_dir = selected_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    candidates = rows[1:]  # the first evaluated unit is no candidate
    best = min(candidates, key=lambda row: (row["val/dp_gap"], row["step"]))
    assert summary["select/unit"] == best["step"] and summary["select/criterion"] == "best_val_gap"
    assert summary["select/metric"] == "val/dp_gap" and summary["select/value"] == best["val/dp_gap"]
    for key, value in best.items():
        if key.startswith(("test/", "val/")):
            assert summary[key] == value, key
    # predictions.csv and model_final.pt are the selected unit's.
    with (run_dir / "predictions.csv").open() as handle:
        table = list(csv.DictReader(handle))
    correct = sum(int(r["y_true"]) == int(r["y_pred"]) for r in table)
    assert correct / len(table) == pytest.approx(best["test/accuracy"])
    data = build_dataset(config)
    model = build_model(config.model, data.input_shape)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "model_final.pt", weights_only=True))
    evaluator = Evaluator(data, torch.device("cpu"), 4096, config.evaluation)
    scores = evaluator.scores(model)
    np.testing.assert_allclose(scores, [float(r["y_score"]) for r in table], rtol=1e-5, atol=1e-6)
    # summary.json on disk is the returned summary.
    assert json.loads((run_dir / "summary.json").read_text())["select/unit"] == best["step"]


def test_selection_is_not_the_last_unit_in_this_fixture(selected_run):
    # The fixture's best unit lies before the last, so the tests above check a real replacement.
    _, summary, _ = selected_run
    assert summary["select/unit"] < summary["units"]


@pytest.mark.parametrize("select, mode, metric, larger", [
    ("best_val_gap", "eo", "val/eo_gap", False),
    ("best_val_ap", "dp", "val/average_precision", True),
    ("best_val_dp_gap", "eo", "val/dp_gap", False),
    ("best_val_eo_gap", "dp", "val/eo_gap", False),
    ("best_val_eodds_gap", "dp", "val/eodds_gap", False),
    ("best_val_eodds_sum", "eo", "val/eodds_gap_sum", False),
])
def test_other_criteria_pick_their_metric(tmp_path, select, mode, metric, larger):
    raw = synthetic(tmp_path, **{"training.select": select, "training.epochs": 4, "fairness": {"mode": mode}})
    summary = experiment_module.run(validated_config(raw))
    rows = read_jsonl(tmp_path / "val" / "metrics.jsonl")
    candidates = rows if larger else rows[1:]  # every gap rule leaves the first unit out
    if larger:  # ties go to the earlier unit
        best = max(candidates, key=lambda row: (row[metric], -row["step"]))
    else:
        best = min(candidates, key=lambda row: (row[metric], row["step"]))
    assert summary["select/unit"] == best["step"] and summary["select/metric"] == metric
    assert summary["test/accuracy"] == best["test/accuracy"]


@pytest.mark.parametrize("select", ["best_val_eodds_gap", "best_val_eodds_sum"])
def test_the_equalized_odds_selections_rank_by_fairlearns_gap_and_by_the_sum(tmp_path, select):
    """The selected model's validation gap, recomputed from model_final.pt on the validation set:
    fairlearn's equalized_odds_difference (the larger of the TPR and FPR differences) for
    best_val_eodds_gap, |ΔTPR| + |ΔFPR| from sklearn's per-group recall for best_val_eodds_sum."""
    from fairlearn.metrics import equalized_odds_difference
    from sklearn.metrics import recall_score

    raw = synthetic(tmp_path, **{"training.select": select, "training.epochs": 4,
                                 "fairness": {"mode": "eo"}})
    config = validated_config(raw)
    summary = experiment_module.run(config)
    run_dir = experiment_module.run_directory(config)
    data = build_dataset(config)
    model = build_model(config.model, data.input_shape)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "model_final.pt", weights_only=True))
    evaluator = Evaluator(data, torch.device("cpu"), 4096, config.evaluation, split="val")
    y_pred = (evaluator.scores(model) >= 0.5).astype(int)
    y_true, group = evaluator.y_true, np.where(evaluator.minority, "minority", "majority")
    if select == "best_val_eodds_gap":
        expected = equalized_odds_difference(y_true, y_pred, sensitive_features=group)
    else:
        def rates(mask):  # TPR = recall of the positives; FPR = 1 - recall of the negatives
            return (recall_score(y_true[mask], y_pred[mask]),
                    1 - recall_score(1 - y_true[mask], 1 - y_pred[mask]))
        (tpr_min, fpr_min), (tpr_maj, fpr_maj) = rates(evaluator.minority), rates(~evaluator.minority)
        expected = abs(tpr_min - tpr_maj) + abs(fpr_min - fpr_maj)
    assert summary["select/value"] == pytest.approx(expected, abs=1e-12)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert summary["select/value"] == min(row[summary["select/metric"]] for row in rows[1:])


class _Trainer:
    """What ModelSelector reads of a trainer: its model and its warnings."""

    def __init__(self):
        self.model, self.warnings = torch.nn.Linear(2, 1), []

    def base_model(self):
        return self.model


def _selector(skip_constant: bool, units: int = 5):
    from training.selection import ModelSelector

    config = validated_config({"data": {"name": "synthetic", "val_fraction": 0.2},
                                  "training": {"select": "best_val_dp_gap",
                                               "select_skip_constant": skip_constant}})
    return ModelSelector(config, units=units, eval_every=1, has_validation=True)


def _observe(selector, trainer, gaps_and_constant):
    for unit, (gap, constant) in enumerate(gaps_and_constant):
        with torch.no_grad():
            trainer.model.weight.fill_(unit)  # tells the units' models apart
        row = {"val/dp_gap": gap, "val/constant_prediction": constant, "test/accuracy": unit / 10}
        selector.observe(unit, row, np.full(3, unit / 10), np.full(3, unit % 2), trainer)


@pytest.mark.parametrize("skip_constant, chosen", [(False, 3), (True, 4)])
def test_skip_constant_passes_over_units_whose_validation_decisions_are_one_class(skip_constant,
                                                                                  chosen):
    # Unit 0 (no candidate: the first), 3 (constant, gap 0) and 4 (the best non-constant).
    trainer, selector = _Trainer(), _selector(skip_constant)
    _observe(selector, trainer, [(0.0, True), (0.30, False), (0.20, True), (0.0, True), (0.10, False)])
    row, scores, _ = selector.finish({"val/dp_gap": 0.1}, np.zeros(3), None, trainer)
    assert row["select/unit"] == chosen + 1 and float(trainer.model.weight[0, 0].detach()) == chosen
    assert scores[0] == pytest.approx(chosen / 10) and not trainer.warnings


def test_skip_constant_falls_back_to_the_constant_units_when_every_candidate_is_one(capsys):
    trainer, selector = _Trainer(), _selector(True, units=4)
    _observe(selector, trainer, [(0.0, False), (0.2, True), (0.1, True), (0.3, True)])
    # The state survives a checkpoint in the middle (what a resumed run restores).
    restored = _selector(True, units=4)
    restored.load_state_dict(selector.state_dict())
    row, _, _ = restored.finish({}, np.zeros(3), None, trainer)
    assert row["select/unit"] == 3 and row["select/value"] == 0.1
    assert len(trainer.warnings) == 1 and "every candidate" in trainer.warnings[0]
    assert "select_skip_constant" in capsys.readouterr().err


def test_a_constant_final_model_is_flagged_in_the_summary_and_on_stderr(tmp_path, capsys):
    # A threshold no score reaches: every test decision is 0, so every gap is 0 by construction.
    raw = synthetic(tmp_path, **{"training.select": "last", "training.epochs": 1,
                                 "evaluation": {"bootstrap_resamples": 20, "threshold": 0.999999}})
    summary = experiment_module.run(validated_config(raw))
    err = capsys.readouterr().err
    assert summary["test/constant_prediction"] is True and summary["test/dp_gap"] == 0
    message = experiment_module.CONSTANT_CLASSIFIER.format(unit=1, units=1, label=0)
    assert f"warning: {message}" in err and message in summary["warnings"]
    stored = json.loads((tmp_path / "val" / "summary.json").read_text())
    assert stored["test/constant_prediction"] is True
    assert read_jsonl(tmp_path / "val" / "metrics.jsonl")[0]["test/constant_prediction"] is True


def test_last_records_the_last_unit(tmp_path):
    summary = experiment_module.run(validated_config(synthetic(tmp_path, **{"training.select": "last",
                                                                               "training.epochs": 2})))
    rows = read_jsonl(tmp_path / "val" / "metrics.jsonl")
    assert summary["select/unit"] == 2 and summary["select/criterion"] == "last"
    assert summary["test/accuracy"] == rows[-1]["test/accuracy"] and "val/accuracy" in summary


def test_selection_without_a_validation_split_is_a_config_error_naming_val_fraction(tmp_path):
    raw = synthetic(tmp_path, **{"data.val_fraction": 0.0})
    with pytest.raises(ConfigError, match=f"{SELECT_NEEDS_VALIDATION}.*data.val_fraction"):
        validated_config(raw)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    done = run_running_py("--params", str(params), cwd=tmp_path, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "disabled"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "data.val_fraction" in done.stderr
    assert not (tmp_path / "val").exists()


# ---------------------------------------------------------------------------------------------------
# Resume


def test_an_interrupted_selecting_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    reference = experiment_module.run(validated_config(synthetic(tmp_path / "reference")))
    assert reference["select/unit"] <= 3  # chosen before the interruption: it must come from the checkpoint
    config = validated_config(synthetic(tmp_path / "resumed"))
    run_dir = experiment_module.run_directory(config)
    run_until_interrupted(config, monkeypatch, after=4)
    state = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # Killed after logging unit 4, before its checkpoint: the run resumes after unit 3.
    assert state.step == 3 and state.selection["unit"] + 1 == reference["select/unit"]

    resumed = experiment_module.run(config)
    assert without_time(resumed) == without_time(reference)
    ref_dir = tmp_path / "reference" / "val"
    assert (run_dir / "predictions.csv").read_text() == (ref_dir / "predictions.csv").read_text()
    got = torch.load(run_dir / "checkpoints" / "model_final.pt", weights_only=True)
    want = torch.load(ref_dir / "checkpoints" / "model_final.pt", weights_only=True)
    assert all(torch.equal(got[key], want[key]) for key in want)


def test_a_checkpoint_without_the_selection_state_is_not_resumed(tmp_path, monkeypatch, capsys):
    config = validated_config(synthetic(tmp_path, **{"training.epochs": 3}))
    run_dir = experiment_module.run_directory(config)
    run_until_interrupted(config, monkeypatch, after=2)
    for name in ("last.pt", "previous.pt"):
        path = run_dir / "checkpoints" / name
        if path.exists():
            payload = torch.load(path, weights_only=True)
            del payload["selection"]
            torch.save(payload, path)
    capsys.readouterr()
    summary = experiment_module.run(config)
    err = capsys.readouterr().err
    assert NO_SELECTION_STATE in err and "starting the run afresh" in err
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert summary["select/unit"] in (2, 3)


# ---------------------------------------------------------------------------------------------------
# RUNNER's Adult protocol

# 5 numeric columns in their own decile bins (10 + 6 + 2 + 2 + 7) and 35 one-hot columns as pairs.
RUNNER_INPUTS = 27 + 35 * 2


@pytest.fixture(scope="module")
def runner_pools():
    return {seed: load_adult_runner(None, protected="sex", minority_value="Female", seed=seed) for seed in (0, 1)}


def test_runner_protocol_rows_inputs_and_sizes(runner_pools):
    pool = runner_pools[0]
    assert pool.info["rows"] == RUNNER_ROWS == 45_222 and pool.info["rows_read"] == 48_842
    assert len(pool.feature_names) == pool.x_pool.shape[1] == RUNNER_INPUTS == 97
    assert pool.info["runner_bins"] == {"age": 10, "education-num": 6, "capital-gain": 2, "capital-loss": 2,
                                        "hours-per-week": 7}
    assert not any(name.startswith("sex") for name in pool.feature_names)
    assert not any(name.startswith(("native-country", "education=", "education!=", "fnlwgt"))
                   for name in pool.feature_names)
    assert {"race=White", "race!=White"} <= set(pool.feature_names)
    assert (len(pool.y_pool), len(pool.y_val), len(pool.y_test)) == (27_132, 9_045, 9_045)
    # Every row: one bin per numeric column and one of each pair.
    assert (pool.x_pool.sum(axis=1) == 5 + 35).all()
    assert pool.numeric_columns == ()


def test_runner_rows_are_the_released_codes_rows():
    _, splits, _ = read_adult_files(None)
    table = np.concatenate([splits["train"][0], splits["test"][0]])
    released = np.ones(len(table), dtype=bool)
    for name in RUNNER_MISSING_COLUMNS:
        released &= table[:, ADULT_COLUMNS.index(name)] != "?"
    np.testing.assert_array_equal(released, ~(table == "?").any(axis=1))
    assert released.sum() == RUNNER_ROWS


def test_runner_split_is_disjoint_sized_and_seeded():
    for seed in (0, 1):
        rows = runner_split(RUNNER_ROWS, seed)
        assert [len(rows[s]) for s in ("train", "val", "test")] == [27_132, 9_045, 9_045]
        everything = np.concatenate(list(rows.values()))
        assert len(np.unique(everything)) == RUNNER_ROWS
    a, b = runner_split(RUNNER_ROWS, 0), runner_split(RUNNER_ROWS, 1)
    for split in ("train", "val", "test"):
        assert not np.array_equal(a[split], b[split])
    np.testing.assert_array_equal(runner_split(RUNNER_ROWS, 0)["val"], a["val"])


def test_runner_seeds_differ_and_the_bundle_resamples_only_training(runner_pools):
    assert runner_pools[0].info["test_rows_md5"] != runner_pools[1].info["test_rows_md5"]
    raw = {"data": {"name": "adult", "adult": {"protocol": "runner"}, "minority_share": None}, "seed": 0}
    data = build_dataset(validated_config(raw))
    assert data.x_train.shape == (27_132, 97) and data.x_val.shape == data.x_test.shape == (9_045, 97)
    assert data.info["val_source"] == "protocol" and data.info["val_size"] == 9_045
    assert data.info["feature_names"] == list(runner_pools[0].feature_names)
    resampled = build_dataset(validated_config({**raw, "data": {**raw["data"], "minority_share": 0.1}}))
    np.testing.assert_array_equal(resampled.x_val, data.x_val)
    np.testing.assert_array_equal(resampled.x_test, data.x_test)
    assert resampled.info["train_share"] == pytest.approx(0.1, abs=1e-3)


def test_the_released_encoding_has_120_inputs_binned_on_ages_standardized_deciles(runner_pools):
    """data.adult.protocol: runner_released, against an independent re-implementation of the released
    rule: sklearn's StandardScaler fitted on the training part (pool and validation rows), the
    deciles of standardized age over the pool as every column's edges, each value through
    numpy.digitize one at a time, clipped to bins 1..10, and 10 one-hot columns per column."""
    from sklearn.preprocessing import StandardScaler

    released = load_adult_runner(None, protected="sex", minority_value="Female", seed=0,
                                 encoding="released")
    corrected = runner_pools[0]
    assert released.x_pool.shape == (27_132, 120) and len(released.feature_names) == 120
    assert released.info["runner_bins"] == dict.fromkeys(
        ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week"), 10)
    # The one-hot pairs are the corrected protocol's; only the 50 bin columns differ.
    np.testing.assert_array_equal(released.x_pool[:, 50:], corrected.x_pool[:, 27:])
    np.testing.assert_array_equal(released.x_test[:, 50:], corrected.x_test[:, 27:])
    _, splits, _ = read_adult_files(None)
    table = np.concatenate([splits["train"][0], splits["test"][0]])
    table = table[~(table == "?").any(axis=1)]
    rows = runner_split(len(table), 0)
    numeric = table[:, [ADULT_COLUMNS.index(c) for c in ("age", "education-num", "capital-gain",
                                                          "capital-loss", "hours-per-week")]]
    numeric = numeric.astype(np.float64)
    scaler = StandardScaler().fit(numeric[np.concatenate([rows["train"], rows["val"]])])
    z = scaler.transform(numeric)
    edges = np.quantile(z[rows["train"], 0], np.linspace(0, 1, 11))
    for split, x in (("train", released.x_pool), ("val", released.x_val), ("test", released.x_test)):
        for column in range(5):
            codes = np.array([min(max(int(np.digitize(value, edges)), 1), 10) - 1
                              for value in z[rows[split], column]])
            np.testing.assert_array_equal(x[:, 10 * column:10 * column + 10],
                                          np.eye(10, dtype=np.float32)[codes])
    # Age's own bins hold a tenth of the pool each (to within ties); the others are on its scale.
    assert released.info["runner_bins_filled"]["age"] == 10
    assert released.info["runner_bins_filled"]["capital-gain"] < 10
    raw = {"data": {"name": "adult", "adult": {"protocol": "runner_released"}, "minority_share": None}}
    data = build_dataset(validated_config(raw))
    assert data.x_train.shape == (27_132, 120) and data.info["runner_encoding"] == "released"
    assert data.info["protocol"] == "runner_released"


@pytest.mark.parametrize("data, key", [
    ({"name": "adult", "adult": {"protocol": "runner"}, "val_fraction": 0.2}, "data.val_fraction"),
    ({"name": "adult", "adult": {"protocol": "runner_released"}, "val_fraction": 0.2}, "data.val_fraction"),
    ({"name": "compas", "target": "two_year_recid", "adult": {"protocol": "runner_released"}},
     "data.adult.protocol"),
    ({"name": "compas", "target": "two_year_recid", "adult": {"protocol": "runner"}}, "data.adult.protocol"),
    ({"name": "adult", "adult": {"protocol": "runner"}, "protected": "race", "minority_value": "non-White"},
     "data.protected"),
    ({"name": "adult", "adult": {"protocol": "paper"}}, "data.adult.protocol"),
    ({"name": "adult", "protocol": "runner", "val_fraction": 0.2}, "data.val_fraction"),  # old spelling
])
def test_runner_protocol_misuse_is_a_config_error(data, key):
    with pytest.raises(ConfigError, match=key):
        validated_config({"data": data})


def test_runner_protocol_implies_a_validation_split_for_selection():
    config = validated_config({"data": {"name": "adult", "adult": {"protocol": "runner"}, "minority_share": None},
                                  "training": {"select": "best_val_gap"}})
    assert config.data.has_validation


def test_the_released_encoding_has_no_public_form_and_is_refused_under_privacy():
    """runner_released bins at deciles of standardized age over the training rows: under privacy
    (auto resolves to public preprocessing) it is refused with the way out; fitted still builds."""
    raw = {"data": {"name": "adult", "adult": {"protocol": "runner_released"}, "minority_share": None,
                    "validation_public": True},
           "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0}}
    with pytest.raises(ConfigError) as refused:
        build_dataset(validated_config(raw))
    assert str(refused.value) == RELEASED_NOT_PUBLIC
    raw["data"]["preprocessing"] = "fitted"
    data = build_dataset(validated_config(raw))
    assert data.x_train.shape == (27_132, 120) and data.info["runner_encoding"] == "released"
