"""The config as plain data, checked whole by one step above the registries (training.validation),
and the data sets' own settings sections (``data.<name>.…``) with the old spellings still read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset import DATASETS
from models import MODELS
from tests.conftest import cli_args, main_captured
from training.experiment import changed_keys, run_directory
from training.validation import load_validated, validate, validated_config
from utils.config import config_from_mapping
from utils.errors import ConfigError
from utils.legacy import MOVED_KEY_NOTE, MOVED_KEY_TWICE, MOVED_KEYS, translate_moved
from utils.registry import CLOSE_MATCH, UNKNOWN_NAME
from utils.seeding import IDENTITY_IGNORED, identity_settings, run_identity
from utils.sink import CONFIG_FILE

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("key, registry, typo, close", [
    ("data.name", DATASETS, "aduld", "adult"),
    ("model.name", MODELS, "resnet81", "resnet18"),
])
def test_a_misspelt_data_set_or_model_stops_the_dry_run_with_one_line(tmp_path, capsys, key, registry,
                                                                        typo, close):
    # Checked when the config is loaded (--dry-run included), not when the data or model is built.
    section, name = key.split(".")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({section: {name: typo}}))
    result = main_captured(capsys, cli_args(params, output_dir=tmp_path / "out", extra=("--dry-run",)))
    assert result.rc == 2 and result.out == ""
    assert result.err.splitlines() == [
        "error: " + UNKNOWN_NAME.format(key=key, kind=registry.kind, name=typo,
                                        hint=CLOSE_MATCH.format(close=close),
                                        valid=", ".join(registry.names()))]
    assert not (tmp_path / "out").exists()


def test_a_grid_point_with_a_misspelt_model_is_refused_before_anything_runs(tmp_path, capsys):
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump({"name": "g", "sweep": {"model.name": ["mlp", "mpl"]}}))
    result = main_captured(capsys, cli_args(params, output_dir=tmp_path / "out", extra=("--dry-run",)))
    assert result.rc == 2 and len(result.err.splitlines()) == 1
    assert "grid point (model.name='mpl'): model.name: unknown model 'mpl'" in result.err
    assert not (tmp_path / "out").exists()


def test_loading_a_params_file_imports_no_layer_above_utils(tmp_path):
    # utils.config and utils.loader are plain data: a file with a repair method's and a clipping
    # rule's settings, a data set's own section and an old spelling loads without the registries.
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"name": "celeba", "celeba": {"image_size": 64}, "test_size": 100},
        "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "clipping": "global_adapt",
                    "global_adapt": {"z": 20}},
        "fairness": {"method": "runner", "runner": {"lam": 0.5}}}))
    probe = (f"import json, sys; from utils.loader import load_config; "
             f"c = load_config({str(params)!r}, ['fairness.runner.neuron_ratio=0.1']); "
             f"print(json.dumps([c.fairness.settings, c.data.settings, "
             f"sorted(m for m in sys.modules if m.split('.')[0] in "
             f"('training', 'dataset', 'privacy', 'models', 'grids', 'torch'))]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    fairness, data, imported = json.loads(done.stdout)
    assert imported == []
    assert fairness == {"lam": 0.5, "neuron_ratio": 0.1}  # raw until validated
    assert data == {"image_size": 64, "test_size": 100}


def test_validation_types_the_sections_and_changes_nothing_the_second_time():
    raw = {"data": {"name": "celeba", "celeba": {"image_size": 64}},
           "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "clipping": "global_adapt",
                       "dpsgd_f": {}, "global_adapt": {"z": 20}},
           "fairness": {"method": "runner", "runner": {"lam": 0.5}, "gapreg": {"lam": 2.0}}}
    plain = config_from_mapping(raw)
    assert plain.fairness.settings == {"lam": 0.5} and plain.data.settings == {"image_size": 64}
    config = validate(plain)
    assert config.data.settings.image_size == 64 and config.data.settings.split == "protocol"
    assert config.privacy.clipping_settings.z == 20
    assert config.fairness.settings.lam == 0.5 and config.fairness.method_class().__name__
    assert validate(config) == config
    assert validated_config(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"^unknown config key 'fairness\.gapreg\.lamb'"):
        validated_config({**raw, "fairness": {"method": "runner", "gapreg": {"lamb": 1}}})
    with pytest.raises(ValueError, match="training.validation.validate"):
        plain.fairness.method_class()


# --------------------------------------------------------------------------------------------------
# data.<name>.…: old and new spellings


OLD_CELEBA = {"name": "c", "data": {"name": "celeba", "root": "/nowhere", "target": "Smiling",
                                   "protected": "Male", "minority_value": "1", "train_size": 2000,
                                   "test_size": 40, "split": "protocol", "image_size": 64,
                                   "cache_dir": "/tmp/cache"},
              "model": {"name": "cnn"}}
NEW_CELEBA = {"name": "c", "data": {"name": "celeba", "root": "/nowhere", "target": "Smiling",
                                   "protected": "Male", "minority_value": "1", "train_size": 2000,
                                   "celeba": {"test_size": 40, "split": "protocol",
                                              "image_size": 64, "cache_dir": "/tmp/cache"}},
              "model": {"name": "cnn"}}
OLD_ADULT = {"data": {"name": "adult", "protocol": "runner", "minority_share": None}}
NEW_ADULT = {"data": {"name": "adult", "adult": {"protocol": "runner"}, "minority_share": None}}


@pytest.mark.parametrize("old, new", [(OLD_CELEBA, NEW_CELEBA), (OLD_ADULT, NEW_ADULT)])
def test_old_and_new_spellings_are_one_run(tmp_path, capsys, old, new):
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(yaml.safe_dump(old))
    new_file.write_text(yaml.safe_dump(new))
    from_old, from_new = load_validated(old_file), load_validated(new_file)
    notes = capsys.readouterr().err.splitlines()
    moved = [key for key in MOVED_KEYS if key.split(".")[1] in old["data"]]
    assert sorted(notes) == sorted(f"note: {str(old_file)!r}: "
                                   + MOVED_KEY_NOTE.format(old=key, new=MOVED_KEYS[key][0])
                                   for key in moved)
    assert from_old == from_new
    assert run_identity(from_old) == run_identity(from_new)
    assert run_directory(from_old) == run_directory(from_new)
    # The identity holds the moved keys under their old names, as before the move (less those at
    # their old default, and the cache's place, which changes nothing trained).
    identity = identity_settings(from_new)
    for key in moved:
        value = old["data"][key.split(".")[1]]
        if value != MOVED_KEYS[key][1] and key not in IDENTITY_IGNORED:
            assert identity[key] == value
    assert not any(key.startswith(("data.celeba.", "data.adult.")) for key in identity)
    # --set with the old spelling, too.
    key = moved[0]
    value = yaml.safe_dump(old["data"][key.split(".")[1]], default_flow_style=True).strip()
    value = value.removesuffix("...").strip()
    assert load_validated(new_file, [f"{key}={value}"]) == from_new


def test_the_identity_of_a_default_setting_written_out_is_the_default_one():
    plain = validated_config({"data": {"name": "celeba", "target": "Smiling", "protected": "Male",
                                       "minority_value": "1"}})
    written = validated_config({"data": {"name": "celeba", "target": "Smiling", "protected": "Male",
                                         "minority_value": "1",
                                         "celeba": {"split": "protocol", "image_size": 128}}})
    assert run_identity(plain) == run_identity(written)
    assert not any(key.startswith(("data.split", "data.image_size", "data.celeba"))
                   for key in identity_settings(written))


def test_a_config_yaml_in_the_old_spelling_is_the_same_run(tmp_path):
    # A run directory written before the move holds every DataConfig key flat (data.split, ...):
    # resuming or skipping it compares equal, and its saved config matches.
    from training.checkpoint import saved_config_matches

    config = validated_config(NEW_CELEBA)
    stored = config.to_dict()
    data = stored["data"]
    data.update(data.pop("celeba"))
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(stored))
    assert changed_keys(tmp_path, config) == []
    assert saved_config_matches(tmp_path, config)
    adult = validated_config({})
    stored = adult.to_dict()
    stored["data"] = {**{k: v for k, v in stored["data"].items() if k != "adult"},
                      "test_size": None, "split": "protocol", "image_size": 128, "cache_dir": None,
                      "protocol": "official"}
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(stored))
    assert changed_keys(tmp_path, adult) == []
    assert saved_config_matches(tmp_path, adult)
    changed = validated_config({"data": {"adult": {"protocol": "runner"}, "minority_share": None}})
    assert changed_keys(tmp_path, changed) == ["data.minority_share", "data.protocol"]


def test_both_spellings_of_one_setting_are_refused():
    with pytest.raises(ConfigError) as error:
        translate_moved({"data": {"image_size": 64, "celeba": {"image_size": 32}}})
    assert str(error.value) == MOVED_KEY_TWICE.format(old="data.image_size", new="data.celeba.image_size")
    raw = {"data": {"name": "celeba", "split": "official"}}
    assert translate_moved(raw) == ({"data": {"name": "celeba", "celeba": {"split": "official"}}},
                                    ("data.split",))
    assert raw == {"data": {"name": "celeba", "split": "official"}}  # a new mapping, raw untouched


def test_another_data_sets_section_is_checked_and_refused_when_it_sets_something():
    from dataset import UNUSED_KEY

    assert validated_config({"data": {"celeba": {"image_size": 128}}}).data.settings.protocol == "official"
    with pytest.raises(ConfigError) as error:
        validated_config({"data": {"celeba": {"image_size": 64}}})
    assert str(error.value) == UNUSED_KEY.format(key="celeba.image_size", value=64, name="adult",
                                                 users="celeba", default=128)
    with pytest.raises(ConfigError, match=r"^unknown config key 'data\.celeba\.image_sise'"):
        validated_config({"data": {"name": "celeba", "celeba": {"image_sise": 64}}})
    with pytest.raises(ConfigError, match=r"^data\.celeba\.image_size: got 16"):
        validated_config({"data": {"name": "celeba", "celeba": {"image_size": 16}}})
