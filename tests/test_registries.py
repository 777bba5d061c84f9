"""Every list of names has one owner, the registry that builds the named things; and the
``Trainer`` protocol names everything the run loop reads from a trainer.

The config checks a name by asking its registry (``training.validation.NAME_REGISTRIES``), so these tests
are parametrized over the registries themselves: a newly registered entry is tested by being
registered, and no list of valid names is written out here either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dataset import DATASETS
from dataset.celeba_split import SPLITS
from models import MODELS
from privacy import ENGINES
from privacy.clipping import RULES
from training import TRAINERS
from training.base import Trainer
from training.batches import BATCHES
from training.experiment import build_components
from training.optim import OPTIMIZERS
from training.partition import PARTITIONS
from training.repair import METHODS
from training.validation import NAME_REGISTRIES, validated_config
from utils.errors import ConfigError
from utils.registry import CLOSE_MATCH, UNKNOWN_NAME

ROOT = Path(__file__).resolve().parent.parent

# The registries whose names are the valid values of a config key, by that key.
NAMED = {registry.config_key: registry for registry in (DATASETS, MODELS, OPTIMIZERS, TRAINERS, PARTITIONS, METHODS,
                                                             ENGINES, BATCHES, RULES)}
# Under a private privacy.mode the config needs a noise level; a non-private run ignores it.
BASE = {"privacy": {"noise_multiplier": 1.0}}
# A clipping rule other than flat needs DP-SGD (every rule runs under it).
NEEDS = {"privacy.clipping": {"mode": "dpsgd"}}


def with_value(key: str, value: object) -> dict:
    """:data:`BASE` with the dotted ``key`` (section.name) set to ``value``."""
    section, name = key.split(".")
    return {**BASE, section: {**BASE.get(section, {}), **NEEDS.get(key, {}), name: value}}


def test_the_config_asks_exactly_these_registries():
    assert set(NAME_REGISTRIES) == set(NAMED)
    for key, registry in NAMED.items():
        assert NAME_REGISTRIES[key] is registry


@pytest.mark.parametrize(("key", "name"), [(key, name) for key, registry in NAMED.items()
                                           for name in registry.names()])
def test_every_registered_name_is_accepted(key, name):
    config = validated_config(with_value(key, name))
    section, field = key.split(".")
    assert getattr(getattr(config, section), field) == name


@pytest.mark.parametrize("key", NAMED)
def test_a_newly_registered_name_is_accepted(key, monkeypatch):
    registry = NAMED[key]
    with pytest.raises(ConfigError):
        validated_config(with_value(key, "zz_newly_registered"))
    # Filed under a new name (any existing entry will do): the config accepts it, with no other edit.
    monkeypatch.setitem(registry._entries, "zz_newly_registered", registry.get(registry.names()[0]))
    config = validated_config(with_value(key, "zz_newly_registered"))
    section, field = key.split(".")
    assert getattr(getattr(config, section), field) == "zz_newly_registered"


@pytest.mark.parametrize("key", NAMED)
def test_an_unknown_name_lists_exactly_the_registered_ones(key):
    registry = NAMED[key]
    with pytest.raises(ConfigError) as error:
        validated_config(with_value(key, "qqq"))
    assert str(error.value) == UNKNOWN_NAME.format(key=key, kind=registry.kind, name="qqq", hint="",
                                                   valid=", ".join(registry.names()))


@pytest.mark.parametrize("key", NAMED)
def test_a_misspelt_name_names_the_closest(key):
    registry = NAMED[key]
    name = registry.names()[-1]
    with pytest.raises(ConfigError) as error:
        validated_config(with_value(key, name + "x"))
    message = str(error.value)
    assert message.startswith(f"{key}: ")
    assert CLOSE_MATCH.format(close=name) in message
    assert message.endswith(f"Valid values: {', '.join(registry.names())}.")


def test_a_celeba_split_is_checked_by_its_registry():
    # A key of CelebA's own settings (data.celeba.split, dataset.celeba.CelebASettings): every
    # registered split is accepted, another is refused with the registry's line.
    for name in SPLITS.names():
        config = validated_config({"data": {"name": "celeba", "celeba": {"split": name}}})
        assert config.data.settings.split == name
    with pytest.raises(ConfigError) as error:
        validated_config({"data": {"name": "celeba", "celeba": {"split": "qqq"}}})
    assert str(error.value) == UNKNOWN_NAME.format(key=SPLITS.config_key, kind=SPLITS.kind, name="qqq",
                                                   hint="", valid=", ".join(SPLITS.names()))


def test_an_unknown_partition_is_refused_by_the_partitioner_too():
    import numpy as np

    from training.partition import partition_clients

    with pytest.raises(ConfigError, match=r"^federated\.partition: unknown partition 'random'"):
        partition_clients(np.zeros(10), np.zeros(10, dtype=bool), num_clients=2, scheme="random", seed=0)


# --------------------------------------------------------------------------------------------------
# The Trainer protocol


def protocol_members() -> set[str]:
    """The attributes and methods :class:`training.base.Trainer` names."""
    methods = {name for name, value in vars(Trainer).items()
               if callable(value) and not name.startswith("_")}
    return set(Trainer.__annotations__) | methods


def tiny_config(mode: str):
    private = {} if mode == "none" else {"noise_multiplier": 1.0}
    return validated_config({
        "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 200},
        "model": {"name": "mlp", "hidden": [4]},
        "training": {"epochs": 1, "batch_size": 20, "optimizer": "sgd", "lr": 0.1},
        "privacy": {"mode": mode, **private},
        "federated": {"num_clients": 10, "rounds": 1, "eval_every": 1},
        "logging": {"progress": "never"},
    })


def test_the_protocol_names_the_members_the_brief_lists():
    assert {"model", "units", "eval_every", "first_selectable_unit", "method", "train_samples",
            "train_seconds", "info", "client_counts", "privacy_facts", "warnings", "train_unit",
            "privacy_metrics", "base_model", "state_dict", "load_state_dict"} <= protocol_members()


@pytest.mark.parametrize("mode", TRAINERS.names())
def test_every_registered_trainer_has_every_member_of_the_protocol(mode):
    trainer = build_components(tiny_config(mode), torch.device("cpu"))[2]
    missing = sorted(name for name in protocol_members() if not hasattr(trainer, name))
    assert not missing, f"the {mode} trainer ({type(trainer).__name__}) lacks {missing}"
    assert isinstance(trainer, Trainer)
    for name in protocol_members() - set(Trainer.__annotations__):
        assert callable(getattr(trainer, name)), name
    assert isinstance(trainer.base_model(), torch.nn.Module)


def trainer_reads(path: Path) -> set[str]:
    """The names read as ``trainer.<name>`` in the module at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "trainer"}


@pytest.mark.parametrize("module", ["training/experiment.py", "training/selection.py",
                                    "training/checkpoint.py", "running.py"])
def test_the_run_loop_reads_nothing_the_protocol_leaves_out(module):
    unnamed = trainer_reads(ROOT / module) - protocol_members()
    assert not unnamed, f"{module} reads trainer.{sorted(unnamed)}, which training.base.Trainer does not name"
