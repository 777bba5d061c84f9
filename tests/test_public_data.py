"""What a run treats as public is written down (summary.json's ``privacy/public_data``), and a
private run must declare a validation split public before anything reads it (utils/config.py:
``data.validation_public``).

The expected lists are derived here from the config and the method's class (which methods have a
public form under DP-SGD, which post-process), not from the function that writes them.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import main_on_yaml
from training.base import PUBLIC_DATA_KEY, public_data_facts
from training.experiment import build_components
from training.repair import METHODS
from training.repair.base import PublicForm, RepairMethod
from training.validation import VALIDATION_NOT_DECLARED, validated_config
from utils.errors import ConfigError


def point(method: str, mode: str, *, val_fraction=0.1, select="last", **data):
    privacy = {"mode": mode, "noise_multiplier": 1.0} if mode != "none" else {"mode": "none"}
    return validated_config({
        "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000,
                 "val_fraction": val_fraction, "validation_public": True, **data},
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 2, "batch_size": 100, "select": select},
        "privacy": privacy,
        "federated": {"num_clients": 20, "rounds": 2, "eval_every": 1},
        "fairness": {"method": method, "mode": "eo"},
        "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}},
    })


def facts_of(config) -> dict:
    data, _, trainer = build_components(config, torch.device("cpu"))
    return public_data_facts(config, has_validation=data.has_validation,
                             preprocessing=data.preprocessing, method=trainer.method)


CASES = [(name, mode) for name in METHODS for mode in ("none", "dpsgd", "dpfedavg")
         if METHODS.get(name).refusal(name, mode) is None]


@pytest.mark.parametrize("name, mode", CASES)
def test_the_public_data_list_matches_the_config_for_every_method(name, mode):
    cls = METHODS.get(name)
    select = "best_val_gap" if mode != "dpfedavg" else "last"
    facts = facts_of(point(name, mode, select=select))
    validation = facts["validation_split"]
    assert validation["declared"] is True
    assert "val/ metrics" in validation["read_by"]
    assert (f"training.select: {select}" in validation["read_by"]) == (select != "last")
    # A method reads the validation split itself only in its public form, under DP-SGD.
    reads = [entry for entry in validation["read_by"] if entry.startswith(f"fairness.{name}:")]
    assert bool(reads) == (issubclass(cls, PublicForm) and mode == "dpsgd"), reads
    if reads:
        assert "fairness.public_examples: 2000" in reads[0]
    # A method that post-processes decides with the group of each person it scores.
    postprocesses = cls.postprocess is not RepairMethod.postprocess
    assert any(entry.startswith(f"fairness.{name} (") for entry in facts["test_split"]["read_by"]) \
        == postprocesses
    assert facts["preprocessing"] == {"source": "public", "file": "preprocessing.json"}
    assert facts["pretrained_weights"] is None


def test_without_a_validation_split_none_is_listed():
    facts = facts_of(point("none", "dpsgd", val_fraction=0.0))
    assert facts["validation_split"] is None
    assert facts["test_split"] == {"read_by": ["test/ metrics", "predictions.csv"]}


@pytest.mark.slow
@pytest.mark.parametrize("mode, source", [("dpsgd", "public"), ("none", "fitted")])
def test_the_preprocessing_source_follows_data_preprocessing(mode, source):
    privacy = {"mode": mode, "noise_multiplier": 1.0} if mode != "none" else {"mode": "none"}
    config = validated_config({"data": {"name": "adult", "train_size": 2000}, "privacy": privacy,
                                  "model": {"name": "mlp", "hidden": [8]}})
    assert facts_of(config)["preprocessing"]["source"] == source


@pytest.mark.parametrize("data, where", [({"val_fraction": 0.1}, "data.val_fraction: 0.1"),
                                         ({"name": "adult", "adult": {"protocol": "runner"}}, "data.adult.protocol: runner")])
@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_a_private_run_must_declare_its_validation_split_public(data, where, mode):
    raw = {"data": {"name": "synthetic", **data}, "privacy": {"mode": mode, "noise_multiplier": 1.0}}
    with pytest.raises(ConfigError) as error:
        validated_config(raw)
    assert str(error.value) == VALIDATION_NOT_DECLARED.format(mode=mode, where=where)
    validated_config({**raw, "data": {**raw["data"], "validation_public": True}})
    validated_config({**raw, "privacy": {"mode": "none"}})  # nothing to declare without privacy


TINY = """
name: declared
data: {name: synthetic, minority_share: 0.2, train_size: 1000, val_fraction: 0.1}
model: {name: mlp, hidden: [8]}
training: {epochs: 2, batch_size: 100, select: best_val_gap}
privacy: {mode: dpsgd, noise_multiplier: 1.0}
fairness: {method: adversarial, mode: eo}
evaluation: {bootstrap_resamples: 10}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


@pytest.mark.slow
def test_the_cli_refuses_an_undeclared_split_and_records_a_declared_one(tmp_path, capsys):
    assert main_on_yaml(tmp_path, TINY) == 2
    assert "data.validation_public: true" in capsys.readouterr().err
    assert not (tmp_path / "out" / "declared").exists()
    assert main_on_yaml(tmp_path, TINY, "data.validation_public=true") == 0
    summary = json.loads((tmp_path / "out" / "declared" / "summary.json").read_text())
    listed = summary[PUBLIC_DATA_KEY]
    assert listed["validation_split"]["declared"] is True
    assert listed["validation_split"]["read_by"] == [
        "val/ metrics", "training.select: best_val_gap",
        "fairness.adversarial: the adversary's updates (fairness.public_examples: 2000)"]
    assert listed["preprocessing"]["source"] == "public"
