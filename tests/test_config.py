"""Config loading: strictness, coercion, range and cross-field checks, overrides, CLI exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from dataset.adult import AdultSettings
from tests.conftest import run_running_py
from training.validation import load_validated, validate, validated_config
from utils.config import NEEDS_NOISE_OR_TARGET, ExperimentConfig, config_from_mapping
from utils.errors import ConfigError
from utils.loader import apply_overrides


def write(tmp_path: Path, payload) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload))
    return path


def test_defaults_are_valid():
    assert config_from_mapping({}) == ExperimentConfig()  # plain data: built, nothing typed
    config = validated_config({})
    assert config == validate(ExperimentConfig())
    assert config.privacy.mode == "none" and config.data.settings == AdultSettings()


def test_unknown_top_level_key_names_the_closest():
    with pytest.raises(ConfigError) as error:
        validated_config({"sed": 1})
    assert str(error.value).startswith("unknown config key 'sed'. Did you mean 'seed'?")


def test_unknown_nested_key_names_the_dotted_closest():
    with pytest.raises(ConfigError) as error:
        validated_config({"privacy": {"noise_multipler": 1.0}})
    message = str(error.value)
    assert message.startswith(
        "unknown config key 'privacy.noise_multipler'. Did you mean 'privacy.noise_multiplier'?")
    assert "Valid keys of privacy:" in message


def test_deeply_nested_unknown_key():
    with pytest.raises(ConfigError, match=r"'logging\.wandb\.projet'\. Did you mean 'logging\.wandb\.project'"):
        validated_config({"logging": {"wandb": {"projet": "x"}}})


def test_scientific_notation_string_becomes_float(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string "1e-3".
    path = write(tmp_path, "training:\n  lr: 1e-3\nprivacy:\n  delta: 1e-5\n")
    assert yaml.safe_load(path.read_text())["training"]["lr"] == "1e-3"
    config = load_validated(path)
    assert config.training.lr == pytest.approx(1e-3) and isinstance(config.training.lr, float)
    assert config.privacy.delta == pytest.approx(1e-5)


def test_integer_coercion_and_refusals():
    assert validated_config({"data": {"train_size": "2.4e4"}}).data.train_size == 24000
    with pytest.raises(ConfigError, match=r"training\.epochs: got 2\.5; expected an integer"):
        validated_config({"training": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match=r"training\.lr: got True; expected a number"):
        validated_config({"training": {"lr": True}})
    with pytest.raises(ConfigError, match=r"model\.hidden\[1\]: got 'x'"):
        validated_config({"model": {"hidden": [10, "x"]}})


def test_yaml_boolean_for_a_string_key_says_to_quote_it(tmp_path):
    # `progress: off` is the boolean False to PyYAML; the error says why and what to write.
    path = write(tmp_path, "logging:\n  progress: off\n")
    with pytest.raises(ConfigError, match=r"logging\.progress: got False; expected a string \(YAML reads "
                       r"unquoted yes, no, on, off, true and false as booleans: quote the value\)"):
        load_validated(path)


@pytest.mark.parametrize("section, key, value, fragment", [
    ("privacy", "delta", 0.0, "privacy.delta: got 0.0; expected a number strictly between 0 and 1"),
    ("privacy", "delta", 1.5, "privacy.delta: got 1.5"),
    ("data", "minority_share", 1.0, "data.minority_share: got 1.0"),
    ("data", "minority_share", 0, "data.minority_share: got 0.0"),
    ("privacy", "max_grad_norm", -1, "privacy.max_grad_norm: got -1.0"),
    ("privacy", "accountant", "moments", "privacy.accountant: got 'moments'; expected one of rdp, prv"),
    ("training", "epochs", 0, "training.epochs: got 0"),
    ("federated", "client_sample_rate", 0, "federated.client_sample_rate: got 0.0"),
    ("logging", "wandb", {"mode": "cloud"}, "logging.wandb.mode: got 'cloud'"),
])
def test_range_checks_name_key_and_value(section, key, value, fragment):
    with pytest.raises(ConfigError) as error:
        validated_config({section: {key: value}})
    assert fragment in str(error.value)


def test_exactly_one_of_noise_and_target_under_dp():
    with pytest.raises(ConfigError, match=f"{NEEDS_NOISE_OR_TARGET}: both are null. Set one of them"):
        validated_config({"privacy": {"mode": "dpsgd"}})
    with pytest.raises(ConfigError, match="exactly one of"):
        validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "target_epsilon": 3}})
    assert validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0}}).privacy.private
    # Non-private runs ignore both.
    assert not validated_config({"privacy": {"noise_multiplier": 1.0, "target_epsilon": 3}}).privacy.private


def test_batch_size_not_larger_than_training_set():
    with pytest.raises(ConfigError, match=r"training\.batch_size: got 512; expected at most data\.train_size \(100\)"):
        validated_config({"data": {"train_size": 100}, "training": {"batch_size": 512}})


def test_overrides_nested_and_parsed_as_yaml(tmp_path):
    path = write(tmp_path, {"privacy": {"mode": "dpsgd", "target_epsilon": 3.0}})
    config = load_validated(path, ["privacy.noise_multiplier=1.1", "privacy.target_epsilon=null",
                                "model.hidden=[64, 32]", "logging.wandb.mode=disabled",
                                "data.minority_share=1e-2"])
    assert config.privacy.noise_multiplier == 1.1 and config.privacy.target_epsilon is None
    assert config.model.hidden == [64, 32]
    assert config.logging.wandb.mode == "disabled"
    assert config.data.minority_share == pytest.approx(0.01)


def test_overrides_go_through_the_same_checks(tmp_path):
    path = write(tmp_path, {})
    with pytest.raises(ConfigError, match="unknown config key 'training.lrr'. Did you mean 'training.lr'"):
        load_validated(path, ["training.lrr=0.1"])
    with pytest.raises(ConfigError, match="privacy.delta: got 2.0"):
        load_validated(path, ["privacy.delta=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_validated(path, ["training.lr"])
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        apply_overrides({}, ["seed.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_validated(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_validated(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_validated(write(tmp_path, "- a\n- b\n"))


def test_resolved_config_round_trips(tmp_path):
    config = validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 0.7},
                                  "model": {"hidden": [8]}})
    path = write(tmp_path, {**config.to_dict(), "provenance": {"git_commit": "abc"}})
    assert load_validated(path) == config


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_running_py(*args, cwd=cwd, timeout=120)


@pytest.mark.parametrize("content, fragment", [
    ("training: [unclosed\n", "is not valid YAML"),
    ("name: bad\ntraining:\n  lrr: 0.1\n", "unknown config key 'training.lrr'. Did you mean 'training.lr'?"),
])
def test_cli_exit_2_and_no_run_directory(tmp_path, content, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(content + f"output_dir: {tmp_path / 'runs'}\n" if "unclosed" not in content else content)
    result = run_cli("--params", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "runs").exists()


def test_cli_missing_file_and_bad_override(tmp_path):
    result = run_cli("--params", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "nope.yaml" in result.stderr and "does not exist" in result.stderr
    path = tmp_path / "params.yaml"
    path.write_text(f"output_dir: {tmp_path / 'runs'}\n")
    result = run_cli("--params", str(path), "--set", "privacy.noise_multipler=1", cwd=tmp_path)
    assert result.returncode == 2 and "Did you mean 'privacy.noise_multiplier'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_grid_file_is_not_one_experiment(tmp_path):
    path = write(tmp_path, {"sweep": {"seed": [0, 1]}})
    with pytest.raises(ConfigError, match="is a grid .* grids.sweep.load_grid"):
        load_validated(path)


def test_registered_names_are_checked_by_their_registry():
    # The config checks names early (before any data is read) by asking the registry that builds
    # them, its one owner; tests/test_registries.py covers every such registry and name.
    from training import TRAINERS
    from utils.registry import UNKNOWN_NAME

    with pytest.raises(ConfigError) as error:
        validated_config({"privacy": {"mode": "dpsdg"}})
    assert str(error.value) == UNKNOWN_NAME.format(
        key="privacy.mode", kind=TRAINERS.kind, name="dpsdg", hint=" Did you mean 'dpsgd'?",
        valid=", ".join(TRAINERS.names()))
