"""Params files in the original flat format (arXiv 2009.06389's code): detection, translation to the
nested format, the printed equivalent, warnings for what cannot be honoured, errors, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, cli_args, run_running_py
from training.validation import load_validated, validated_config
from utils.errors import ConfigError
from utils.legacy import is_legacy, translate, translate_legacy

FIXTURE = ROOT / "tests" / "fixtures" / "params_celeba_original.yaml"
HEADER = "is in the flat params format of the original code"

# The fixture written by hand in the nested format: the paper's CelebA setting (Smiling, men the
# minority, S = 5, z = 0.7, δ = 1e-6, batch 32, 60 epochs, Adam at 5e-5 with decay 5e-4).
NESTED_EQUIVALENT = """
name: params_celeba_original
data:
  name: celeba
  target: Smiling
  protected: Male
  minority_value: "1"
  train_size: 24000
  celeba:
    test_size: 6000
    split: protocol
model:
  name: resnet18
training:
  epochs: 60
  batch_size: 32
  optimizer: adam
  lr: 5.0e-5
  weight_decay: 5.0e-4
  momentum: 0.9
  eval_batch_size: 1000
privacy:
  mode: dpsgd
  noise_multiplier: 0.7
  target_epsilon: null
  delta: 1.0e-6
  max_grad_norm: 5.0
"""


def flat() -> dict:
    return yaml.safe_load(FIXTURE.read_text())


def write(tmp_path: Path, mapping: dict, name: str = "old_params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_fixture_loads_to_the_same_config_as_its_hand_written_nested_equivalent(tmp_path, capsys):
    nested = tmp_path / "params_celeba_original.yaml"  # same stem: the run name comes from it
    nested.write_text(NESTED_EQUIVALENT)
    expected = load_validated(nested)
    assert capsys.readouterr().err == ""  # a nested file is not translated
    assert load_validated(FIXTURE) == expected
    assert expected.privacy.max_grad_norm == 5.0 and expected.data.minority_value == "1"


def test_the_nested_yaml_is_printed_once_and_itself_loads_to_the_same_config(tmp_path, capsys):
    config = load_validated(FIXTURE)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays the run's own
    err = captured.err
    assert err.count(HEADER) == 1 and err.startswith("note: ") and str(FIXTURE) in err.splitlines()[0]
    # Per-example microbatches (32 = batch_size) and multi_gpu: false need no warning.
    assert "warning" not in err
    printed = "\n".join(err.splitlines()[1:])
    saved = tmp_path / "params_celeba_original.yaml"
    saved.write_text(printed)
    assert load_validated(saved) == config
    assert capsys.readouterr().err == ""  # the printed file is nested: no second translation


def test_detection():
    assert is_legacy(flat())
    assert is_legacy({"S": 1, "z": 0.5})
    assert is_legacy({"model": "resnet", "seed": 3})  # model as a string is the flat format's
    assert not is_legacy({})
    assert not is_legacy({"name": "x", "seed": 1})  # keys both formats share decide nothing
    assert not is_legacy({"training": {"epochs": 1}, "lr": 0.1})  # any section: the strict loader's
    assert not is_legacy({"model": {"name": "mlp"}, "dataset": "adult"})


@pytest.mark.parametrize("microbatches, warned", [(32, False), (None, False), (8, True), (0, True)])
def test_num_microbatches_warned_unless_per_example(microbatches, warned):
    raw = flat() | {"num_microbatches": microbatches}
    warnings = translate(raw).warnings
    assert any(w.startswith("num_microbatches: ") for w in warnings) == warned
    if warned:
        assert f"num_microbatches: {microbatches} is not per-example" in warnings[0]
        assert "batch_size, 32" in warnings[0]


def test_microbatches_are_not_warned_about_without_dp():
    # The original used microbatches only in its private training step.
    assert translate(flat() | {"dp": False, "num_microbatches": 8}).warnings == ()


def test_multi_gpu_true_is_named_in_a_stderr_warning(tmp_path, capsys):
    path = write(tmp_path, flat() | {"multi_gpu": True, "num_microbatches": 4})
    load_validated(path)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: num_microbatches: 4 is not per-example")
    assert warnings[1].startswith("warning: multi_gpu: true is not supported")


def test_other_unhonoured_keys_warn_and_bookkeeping_keys_are_noted():
    translation = translate(flat() | {"model": "PretrainedRes", "scheduler": True, "mu": 1.0,
                                      "ds_size": 70000, "name": "x", "current_time": "t",
                                      "save_on_epochs": [10, 20]})
    keys = [w.split(":")[0] for w in translation.warnings]
    assert keys == ["model", "scheduler", "mu, ds_size"]
    assert translation.mapping["model"] == {"name": "resnet18"}
    assert [n.split(":")[0] for n in translation.notes] == ["name, current_time", "save_on_epochs"]
    assert translate(flat() | {"scheduler": False}).warnings == ()


def test_unknown_flat_key_is_an_error_naming_it_and_the_closest():
    with pytest.raises(ConfigError) as error:
        translate(flat() | {"protected_atr": "Male"}, source="old.yaml")
    message = str(error.value)
    assert message.startswith("unknown config key 'protected_atr' in 'old.yaml'")
    assert "Did you mean 'protected_attr'?" in message
    with pytest.raises(ConfigError, match=r"unknown config key 's'.*Did you mean 'S'\?"):
        translate(flat() | {"s": 1})


def test_unreadable_values_and_synonyms_are_errors():
    with pytest.raises(ConfigError, match=r"^dp: got 'maybe'"):
        translate(flat() | {"dp": "maybe"})
    with pytest.raises(ConfigError, match=r"^num_microbatches: got 'many'"):
        translate(flat() | {"num_microbatches": "many"})
    with pytest.raises(ConfigError, match=r"data\.minority_share twice, as 'minority_share' and as 'ratio'"):
        translate(flat() | {"minority_share": 0.1, "ratio": 0.2})


def test_dp_false_gives_mode_none_and_keeps_s_and_z_for_the_twin():
    config = validated_config(translate(flat() | {"dp": False}).mapping)
    assert config.privacy.mode == "none" and not config.privacy.private
    assert config.privacy.noise_multiplier == 0.7  # flipping the mode back gives the private twin


def test_remaining_keys_map_to_their_nested_names():
    raw = {"dataset": "celeba", "selected_attr": "Blond_Hair", "protected_attr": "Young", "ratio": 0.01,
           "data_path": "/data/celeba", "image_size": 64, "seed": 7, "delta": 1e-5,
           "optimizer": "SGD", "model": "resnet18"}
    config = validated_config(translate(raw).mapping)
    assert (config.data.target, config.data.protected, config.data.minority_value) == ("Blond_Hair", "Young", "1")
    assert config.data.minority_share == 0.01 and config.data.root == "/data/celeba"
    assert config.data.settings.image_size == 64 and config.seed == 7
    assert config.privacy.delta == 1e-5  # given, so the paper's 1e-6 is not filled in
    assert config.training.optimizer == "sgd" and config.model.name == "resnet18"


def test_paper_defaults_only_for_celeba():
    config = validated_config(translate({"dataset": "adult", "lr": 0.01}).mapping)
    assert config.data.name == "adult" and config.data.train_size is None
    assert config.privacy.delta == 1e-5 and config.training.lr == 0.01


def test_set_overrides_apply_after_translation(capsys):
    config = load_validated(FIXTURE, ["training.epochs=1", "privacy.noise_multiplier=1.5"])
    assert config.training.epochs == 1 and config.privacy.noise_multiplier == 1.5
    assert config.training.batch_size == 32  # the rest is the file's
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        load_validated(FIXTURE, ["epochs=1"])  # overrides use nested keys, not flat ones


def test_translate_legacy_writes_to_the_given_stream_and_returns_the_mapping():
    stream = io.StringIO()
    mapping = translate_legacy(flat(), stream=stream)
    assert "name" not in mapping  # no file, no run name: the config's default
    assert stream.getvalue().startswith("note: the params mapping " + HEADER)


def test_cli_refuses_a_bad_flat_key_with_one_error_line(tmp_path):
    path = write(tmp_path, flat() | {"epochz": 3})
    runs = tmp_path / "runs"
    result = run_running_py(*cli_args(path, "training.epochs=1", output_dir=runs), cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: unknown config key 'epochz'")
    assert "Did you mean 'epochs'?" in result.stderr
    assert result.stderr.count("\n") == 1  # refused before the translation is printed
    assert result.stdout == "" and not runs.exists()
