"""Hostile and absurd input through the real command line (``running.main``).

Every refusal must keep the contract of docs/run_directory.md: exit status 2, exactly one ``error: ...`` line on
stderr naming the key or file, no traceback, and nothing written (the output directory is not made
and the test's directory holds exactly the files the test put there). Messages are checked through
the constants of the modules that write them, not through copied text.

Cases: params files that would exhaust memory or the recursion limit (an alias bomb, deep nesting,
aliases that refer to themselves), binary and non-UTF-8 files, duplicate keys, empty files, files
too large; the same through ``--set``, grids and flat (legacy) files; infinity and NaN in every
float key; ``model.weights`` files that are no state dict, including pickles that would run code;
absurd model sizes; NaN or infinity in a user copy of UCI Adult; and, as a warning rather than a
refusal, a federated client sample rate that expects fewer than one client a round.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import re
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml

import running
from dataset.adult import ADULT_COLUMNS, ADULT_NON_FINITE, SHIPPED_ADULT_DIR
from models import (
    MAX_MODEL_PARAMETERS,
    MODEL_TOO_LARGE,
    MODELS,
    WEIGHTS_NOT_A_STATE_DICT,
    WEIGHTS_REFUSED,
    WEIGHTS_UNREADABLE,
    build_model,
    parameter_count,
)
from tests.conftest import ROOT, CliResult, cli_args, main_captured, run_running_py
from training.federated import FEW_CLIENTS_WARNING
from utils.config import NON_FINITE_NUMBER, ExperimentConfig, ModelConfig
from utils.errors import ConfigError
from utils.loader import (
    MAX_PARAMS_BYTES,
    MAX_YAML_DEPTH,
    PARAMS_BINARY,
    PARAMS_EMPTY,
    PARAMS_NOT_UTF8,
    PARAMS_TOO_LARGE,
    YAML_ALIAS_CYCLE,
    YAML_DUPLICATE_KEY,
    YAML_TOO_DEEP,
    YAML_TOO_MANY_VALUES,
)

# A run that trains in about a second on the in-memory synthetic data set.
TINY_RUN = """\
name: hostile
device: cpu
data: {name: synthetic}
model: {name: mlp, hidden: [8]}
training: {epochs: 1, batch_size: 64}
evaluation: {bootstrap_resamples: 0}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" document: each level a list of ``width`` aliases of the one before
    (9^9 = 387 M strings once written out) in a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(directory.rglob("*"))}


def run_cli(tmp_path: Path, capsys, params: str | bytes, *overrides: str) -> CliResult:
    """``running.py --params FILE --set output_dir=... [--set ...]`` in this process."""
    path = tmp_path / "params.yaml"
    if isinstance(params, bytes):
        path.write_bytes(params)
    else:
        path.write_text(params, encoding="utf-8")
    (tmp_path / "sentinel.txt").write_text("keep")  # beside output_dir: must survive
    return main_captured(capsys, cli_args(path, *overrides, output_dir=tmp_path / "out"))


def assert_refused(result: CliResult, tmp_path: Path, before: dict[str, bytes] | None,
                   *needles: str) -> str:
    """Exit 2, one ``error:`` line holding every needle, no traceback, nothing written."""
    assert result.rc == 2, (result.rc, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "sentinel.txt").read_text() == "keep"
    if before is not None:
        assert snapshot(tmp_path) == before
    return lines[0]


def refused(tmp_path: Path, capsys, params: str | bytes, *overrides: str, needles=()) -> str:
    # The inputs are written once so that the snapshot holds them; the CLI then writes them again
    # with the same bytes.
    run_cli_inputs(tmp_path, params)
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, capsys, params, *overrides)
    return assert_refused(result, tmp_path, before, *needles)


def run_cli_inputs(tmp_path: Path, params: str | bytes) -> None:
    path = tmp_path / "params.yaml"
    if isinstance(params, bytes):
        path.write_bytes(params)
    else:
        path.write_text(params, encoding="utf-8")
    (tmp_path / "sentinel.txt").write_text("keep")


# --------------------------------------------------------------------------------------------------
# Hostile params files


def test_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    run_cli_inputs(tmp_path, alias_bomb())
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, capsys, alias_bomb())
    assert_refused(result, tmp_path, before, "params.yaml", YAML_TOO_MANY_VALUES)
    assert result.seconds < 1.0, result.seconds  # was 2 GB and more than a minute


def test_alias_bomb_through_the_real_command_line(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    started = time.perf_counter()
    result = run_running_py(*cli_args(tmp_path / "bomb.yaml", output_dir=tmp_path / "out"),
                            cwd=tmp_path, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and YAML_TOO_MANY_VALUES in lines[0]
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 60


HOSTILE_FILES = {
    "list_nested_5000_deep": ("[" * 5000 + "]" * 5000, [YAML_TOO_DEEP, f"{MAX_YAML_DEPTH}"]),
    "mapping_nested_5000_deep": ("{a: " * 5000 + "1" + "}" * 5000, [YAML_TOO_DEEP]),
    "block_nested_200_deep": ("a:\n" + "".join("  " * i + "-\n" for i in range(1, 200)),
                              [YAML_TOO_DEEP]),
    # Shallow text, deep once the aliases are written out.
    "alias_chain_80_deep": ("a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80)),
                            [YAML_TOO_DEEP]),
    "alias_inside_itself_list": ("a: &a [1, *a]\n", [YAML_ALIAS_CYCLE]),
    "alias_inside_itself_mapping": ("training: &t {lr: 0.1, again: *t}\n", [YAML_ALIAS_CYCLE]),
    "merge_key_bomb": ("b0: &b0 {" + ", ".join(f"k{i}: lol" for i in range(10)) + "}\n"
                       + "".join(f"b{n}: &b{n} {{<<: [" + ", ".join([f"*b{n - 1}"] * 10) + "]}\n"
                                 for n in range(1, 7)), [YAML_TOO_MANY_VALUES]),
    "duplicate_key": ("training:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n",
                      [YAML_DUPLICATE_KEY, "'lr'", "line 4", "first at line 2"]),
    "duplicate_section": ("privacy:\n  mode: dpsgd\nseed: 1\nprivacy:\n  mode: none\n",
                          [YAML_DUPLICATE_KEY, "'privacy'", "line 4", "first at line 1"]),
    "duplicate_key_in_flow_mapping": ("model: {name: mlp, name: cnn}\n",
                                      [YAML_DUPLICATE_KEY, "'name'"]),
    "duplicate_in_grid_sweep": ("name: g\nsweep:\n  seed: [0, 1]\n  seed: [2, 3]\n",
                                [YAML_DUPLICATE_KEY, "'seed'", "line 4"]),
    "duplicate_in_flat_legacy_file": ("dataset: celeba\ndp: true\nz: 0.7\ndp: false\n",
                                      [YAML_DUPLICATE_KEY, "'dp'", "line 4"]),
    "grid_with_alias_bomb": ("name: g\nsweep:\n  seed: [0, 1]\n" + alias_bomb(),
                             [YAML_TOO_MANY_VALUES]),
    "empty": ("", [PARAMS_EMPTY]),
    "only_comments": ("# an experiment\n\n   # nothing here\n", [PARAMS_EMPTY]),
    "only_null": ("null\n", [PARAMS_EMPTY]),
    "only_tilde_document": ("---\n~\n...\n", [PARAMS_EMPTY]),
    "binary_png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", [PARAMS_BINARY]),
    "binary_torch_file": (b"PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl", [PARAMS_BINARY]),
    "latin1_text": ("name: caf\u00e9\n".encode("latin-1"), [PARAMS_NOT_UTF8, "byte 0xe9", "offset 9"]),
    "utf16_text": ("name: x\n".encode("utf-16"), [PARAMS_NOT_UTF8]),
    "too_large": ("name: x\n# " + "x" * MAX_PARAMS_BYTES + "\n", [PARAMS_TOO_LARGE]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_params_file_is_one_clean_error(tmp_path, capsys, case):
    params, needles = HOSTILE_FILES[case]
    line = refused(tmp_path, capsys, params, needles=["params file", "params.yaml", *needles])
    assert len(line) < 600


def test_deep_nesting_error_is_quick(tmp_path, capsys):
    run_cli_inputs(tmp_path, "[" * 100_000)
    result = run_cli(tmp_path, capsys, "[" * 100_000)
    assert_refused(result, tmp_path, None, YAML_TOO_DEEP)
    assert result.seconds < 5


def test_yaml_features_still_work(tmp_path):
    """Anchors, aliases and merge keys within the bounds load as yaml.safe_load reads them, and a
    merged key may be overridden (YAML's merge semantics, not a duplicate)."""
    from training.validation import load_validated, validated_config

    path = tmp_path / "params.yaml"
    path.write_text("name: merged\ntraining:\n  <<: {lr: 0.01, epochs: 3}\n  lr: 0.02\n"
                    "model: &m {name: mlp, hidden: [16, 16]}\n")
    config = load_validated(path, ["model.hidden=[4, &h 4, *h]"])
    assert config.training.lr == 0.02 and config.training.epochs == 3
    assert config.model.hidden == [4, 4, 4]
    path.write_text("{}\n")  # an explicit empty mapping still means every default
    assert load_validated(path) == validated_config({})


# --------------------------------------------------------------------------------------------------
# --set overrides: the same loader, the same limits


HOSTILE_OVERRIDES = {
    "alias_bomb": ("model.hidden={" + alias_bomb().strip().replace("\n", ", ") + "}",
                   ["--set model.hidden", YAML_TOO_MANY_VALUES]),
    "nested_5000_deep": ("model.hidden=" + "[" * 5000 + "]" * 5000,
                         ["--set model.hidden", YAML_TOO_DEEP]),
    "alias_inside_itself": ("model.hidden=&a [1, *a]", ["--set model.hidden", YAML_ALIAS_CYCLE]),
    "duplicate_key": ("model={name: mlp, name: cnn}", ["--set model", YAML_DUPLICATE_KEY, "'name'"]),
    "too_large": ("name=" + "x" * (MAX_PARAMS_BYTES + 1), ["--set name", PARAMS_TOO_LARGE]),
    "infinite_lr": ("training.lr=.inf", ["training.lr", NON_FINITE_NUMBER]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_OVERRIDES))
def test_hostile_override_is_one_clean_error(tmp_path, capsys, case):
    override, needles = HOSTILE_OVERRIDES[case]
    line = refused(tmp_path, capsys, TINY_RUN, override, needles=needles)
    assert len(line) < 600


# --------------------------------------------------------------------------------------------------
# Infinity and NaN in every float key


def float_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key annotated float or float | None, found from the dataclasses themselves, so a
    float key added later is tested by existing."""
    keys = []
    for name, annotation in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(annotation):
            keys += float_keys(annotation, f"{prefix}{name}.")
        elif annotation is float or float in typing.get_args(annotation):
            keys.append(prefix + name)
    return keys


FLOAT_KEYS = float_keys()
NON_FINITE_VALUES = [".inf", "-.inf", ".nan", "inf", "nan", ".NaN", "1e999"]


def test_the_float_keys_are_found():
    assert {"training.lr", "training.weight_decay", "privacy.max_grad_norm",
            "privacy.target_epsilon", "privacy.delta", "federated.client_sample_rate"} <= set(FLOAT_KEYS)


def with_raw_value(key: str, value: str) -> str:
    """TINY_RUN with ``key`` set to ``value`` written as it stands in the YAML file."""
    raw = yaml.safe_load(TINY_RUN)
    *sections, name = key.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
    node[name] = "VALUE_HERE"
    return yaml.safe_dump(raw, sort_keys=False).replace("VALUE_HERE", value)


@pytest.mark.parametrize("value", NON_FINITE_VALUES)
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_float_is_refused_naming_the_key(tmp_path, capsys, key, value):
    refused(tmp_path, capsys, with_raw_value(key, value),
            needles=[f"{key}: got", NON_FINITE_NUMBER])


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_infinite_target_epsilon_no_longer_runs(tmp_path, capsys, value):
    # Before: ran silently at sigma = 10 and reported it as a private run.
    refused(tmp_path, capsys, TINY_RUN.replace("training:", "privacy: {mode: dpsgd}\ntraining:"),
            f"privacy.target_epsilon={value}",
            needles=["privacy.target_epsilon: got", NON_FINITE_NUMBER])


def test_huge_integer_for_a_float_key_is_refused(tmp_path, capsys):
    refused(tmp_path, capsys, TINY_RUN, "training.lr=" + "9" * 400,
            needles=["training.lr: got", NON_FINITE_NUMBER])


# --------------------------------------------------------------------------------------------------
# model.weights


class RunsShell:
    """A pickle that runs a shell command when unpickled (what torch.load(weights_only=False) does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_weights(path: Path, kind: str, pwned: Path) -> None:
    if kind == "malicious_raw_pickle":
        path.write_bytes(pickle.dumps({"net.0.weight": RunsShell(f"touch {pwned}")}))
    elif kind == "malicious_torch_save":
        torch.save({"net.0.weight": RunsShell(f"touch {pwned}")}, path)
    elif kind == "malicious_checkpoint":
        torch.save({"model": {"net.0.weight": RunsShell(f"touch {pwned}")}}, path)
    elif kind == "int":
        torch.save(3, path)
    elif kind == "list":
        torch.save([torch.zeros(2), 1], path)
    elif kind == "dict_of_ints":
        torch.save({"net.0.weight": 1, "net.0.bias": 2}, path)
    elif kind == "dict_of_lists":
        torch.save({"net.0.weight": [1.0, 2.0]}, path)
    elif kind == "garbage":
        path.write_bytes(b"these are not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(kind)


WEIGHT_CASES = {
    "malicious_raw_pickle": [WEIGHTS_REFUSED],
    "malicious_torch_save": [WEIGHTS_REFUSED],
    "malicious_checkpoint": [WEIGHTS_REFUSED],
    "int": ["of type int"],
    "list": ["of type list"],
    "dict_of_ints": ["not all tensors"],
    "dict_of_lists": ["not all tensors"],
    "garbage": [],  # refused by the safe unpickler or unreadable, depending on the bytes
    "empty": [WEIGHTS_UNREADABLE, "EOFError"],
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_CASES))
def test_weights_that_are_not_a_state_dict(tmp_path, capsys, kind):
    weights = tmp_path / "weights.pt"
    pwned = tmp_path / "PWNED"
    write_weights(weights, kind, pwned)
    params = TINY_RUN.replace("hidden: [8]}", f"hidden: [8], weights: {json.dumps(str(weights))}}}")
    needles = ["model.weights", str(weights), WEIGHTS_NOT_A_STATE_DICT, *WEIGHT_CASES[kind]]
    line = refused(tmp_path, capsys, params, needles=needles)
    assert not pwned.exists()  # the pickle's command never ran
    # torch's own advice would be to load with weights_only=False, i.e. to run the pickle.
    assert "weights_only=False" not in line and "`weights_only` set to `False`" not in line
    assert "False" not in line


def test_a_real_state_dict_still_loads(tmp_path, capsys):
    from dataset.synthetic import FEATURES
    from models.mlp import MLP

    weights = tmp_path / "weights.pt"
    torch.save(MLP(FEATURES, [8]).state_dict(), weights)
    params = TINY_RUN.replace("hidden: [8]}", f"hidden: [8], weights: {json.dumps(str(weights))}}}")
    result = run_cli(tmp_path, capsys, params)
    assert result.rc == 0, result.err
    assert (tmp_path / "out" / "hostile" / "summary.json").is_file()


# --------------------------------------------------------------------------------------------------
# Absurd model sizes


@pytest.mark.parametrize("hidden", ["[1000000000]", "[100000, 100000, 100000]",
                                    "[" + "9" * 30 + "]"])
def test_absurd_mlp_is_refused_before_allocation(tmp_path, capsys, hidden):
    line = refused(tmp_path, capsys, TINY_RUN, f"model.hidden={hidden}",
                   needles=["model.hidden", MODEL_TOO_LARGE, "'mlp'"])
    assert "parameters" in line


def test_adult_mlp_of_the_audit_is_refused(tmp_path, capsys):
    params = TINY_RUN.replace("{name: synthetic}", "{name: adult}")
    line = refused(tmp_path, capsys, params, "model.hidden=[100000000]",
                   needles=["model.hidden", MODEL_TOO_LARGE])
    assert "10,500,000,001 parameters" in line  # 103 inputs: 103·10^8 + 10^8, then 10^8 + 1


@pytest.mark.parametrize("name", MODELS.names())
def test_parameter_count_is_exact_for_every_model(name):
    config = ModelConfig(name=name, hidden=[16, 8], width=8)
    shape = (8,) if name == "mlp" else (3, 32, 32)
    model = build_model(config, shape)
    assert parameter_count(config, shape) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_the_size_check_leaves_initialization_unchanged(name):
    """Counting on the meta device draws nothing from torch's generator, so a seeded run initializes
    its model exactly as it did before the check existed."""
    config = ModelConfig(name=name, hidden=[16], width=8)
    shape = (8,) if name == "mlp" else (3, 32, 32)
    torch.manual_seed(0)
    checked = build_model(config, shape)
    torch.manual_seed(0)
    direct = MODELS.get(name)(config, shape)
    for (key, a), (_, b) in zip(checked.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("size", [10**10, 10**25])  # counted; beyond a tensor's int64 size
def test_every_model_refuses_absurd_sizes(name, size):
    config = ModelConfig(name=name, hidden=[size], width=size)
    shape = (8,) if name == "mlp" else (3, 64, 64)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        build_model(config, shape)
    assert MODEL_TOO_LARGE in str(error.value)
    assert "\n" not in str(error.value)
    assert time.perf_counter() - started < 10  # nothing was allocated or initialized
    assert MAX_MODEL_PARAMETERS == 2_000_000_000  # the documented limit


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_convolutional_models_count_their_width(name):
    with pytest.raises(ConfigError) as error:
        build_model(ModelConfig(name=name, width=100_000), (3, 64, 64))
    message = str(error.value)
    assert message.startswith("model.width: got 100000") and " parameters (" in message


# --------------------------------------------------------------------------------------------------
# NaN and infinity in a user copy of UCI Adult


def adult_copy(tmp_path: Path, split: str, line_no: int, column: str, value: str) -> Path:
    """A data.root holding the shipped Adult files as plain text, one field of one line replaced."""
    root = tmp_path / "adult"
    root.mkdir()
    for name in ("adult.data", "adult.test"):
        lines = gzip.decompress((SHIPPED_ADULT_DIR / f"{name}.gz").read_bytes()).decode().splitlines(True)
        if name == f"adult.{split}":
            fields = lines[line_no - 1].rstrip("\n").split(", ")
            fields[ADULT_COLUMNS.index(column)] = value
            lines[line_no - 1] = ", ".join(fields) + "\n"
        (root / name).write_text("".join(lines))
    return root


@pytest.mark.parametrize(("split", "line_no", "column", "value"), [
    ("data", 3, "age", "nan"),
    ("data", 7, "hours-per-week", "inf"),
    ("data", 11, "capital-gain", "-inf"),
    ("data", 2, "education-num", "NaN"),
    ("data", 5, "capital-loss", "1e999"),
    ("data", 4, "fnlwgt", "Infinity"),
    ("test", 2, "age", "nan"),  # adult.test's line 1 is its "|1x3 Cross validator" comment
])
def test_adult_value_nan_or_inf_names_file_line_and_column(tmp_path, capsys, split, line_no, column, value):
    root = adult_copy(tmp_path, split, line_no, column, value)
    params = TINY_RUN.replace("{name: synthetic}", f"{{name: adult, root: {json.dumps(str(root))}}}")
    refused(tmp_path, capsys, params, needles=[
        f"{root / f'adult.{split}'}, line {line_no}: column {column} is {value!r}", ADULT_NON_FINITE])


# --------------------------------------------------------------------------------------------------
# A federated run that expects fewer than one client a round: a warning, in stderr and summary.json


FEDERATED_RUN = TINY_RUN.replace("training: {epochs: 1, batch_size: 64}", """\
training: {batch_size: 16}
privacy: {mode: dpfedavg, noise_multiplier: 1.0, max_grad_norm: 1.0}
federated: {num_clients: 10, rounds: 2, eval_every: 1, local_epochs: 1}""")


@pytest.mark.parametrize(("rate", "warned"), [(1e-9, True), (0.5, False)])
def test_too_few_expected_clients_per_round_warns(tmp_path, capsys, rate, warned):
    result = run_cli(tmp_path, capsys, FEDERATED_RUN, f"federated.client_sample_rate={rate}")
    assert result.rc == 0, result.err
    warnings = [line for line in result.err.splitlines() if FEW_CLIENTS_WARNING in line]
    summary = json.loads((tmp_path / "out" / "hostile" / "summary.json").read_text())
    recorded = [message for message in summary["warnings"] if FEW_CLIENTS_WARNING in message]
    if not warned:
        assert not warnings and not recorded
        return
    assert len(warnings) == 1 and warnings[0].startswith("warning: federated.client_sample_rate")
    assert "1e-08" in warnings[0]  # the expected number of clients, 1e-9 x 10
    assert "at least 0.1" in warnings[0]  # the fix: 1 / num_clients
    assert [f"warning: {message}" for message in recorded] == warnings


# --------------------------------------------------------------------------------------------------
# A NUL in any string of the config (a path above all: the OS would refuse it mid-run)


@pytest.mark.parametrize("key", ["data.root", "data.celeba.cache_dir", "model.weights", "name",
                                 "logging.wandb.project"])
def test_nul_in_any_string_key_is_refused(tmp_path, capsys, key):
    from utils.config import NUL_IN_STRING

    refused(tmp_path, capsys, TINY_RUN, f'{key}="a\\0b"', needles=(key, NUL_IN_STRING))


# --------------------------------------------------------------------------------------------------
# Hostile input, round three (issue 26): privacy of the records, wrong results without a word,
# unbounded work, and the right exit with the wrong words


def test_delta_above_one_over_n_warns_and_is_not_called_private(tmp_path, capsys):
    """Issue 26: privacy.delta above 1/n (0.01 with n = 2,000) ran with privacy/private: true and no
    warning. Now a warning in stderr and in summary.json, and privacy/private: false."""
    from training.base import DELTA_TOO_LARGE

    params = TINY_RUN.replace("training:", "privacy: {mode: dpsgd, noise_multiplier: 1.0}\ntraining:")
    result = run_cli(tmp_path, capsys, params, "privacy.delta=0.01", "data.train_size=500")
    assert result.rc == 0, result.err
    warnings = [line for line in result.err.splitlines() if DELTA_TOO_LARGE in line]
    assert len(warnings) == 1 and "1/n = 0.002" in warnings[0] and "500 training examples" in warnings[0]
    summary = json.loads((tmp_path / "out" / "hostile" / "summary.json").read_text())
    assert summary["privacy/private"] is False
    assert [f"warning: {m}" for m in summary["warnings"] if DELTA_TOO_LARGE in m] == warnings
    # Below 1/n: no warning, and private.
    result = run_cli(tmp_path, capsys, params, "privacy.delta=0.001", "data.train_size=500",
                     "name=fine")
    assert result.rc == 0 and DELTA_TOO_LARGE not in result.err
    assert json.loads((tmp_path / "out" / "fine" / "summary.json").read_text())["privacy/private"]


def test_delta_above_one_over_the_clients_warns_under_dpfedavg(tmp_path, capsys):
    from training.base import DELTA_TOO_LARGE

    result = run_cli(tmp_path, capsys, FEDERATED_RUN, "privacy.delta=0.2")  # 10 clients
    assert result.rc == 0, result.err
    assert "10 clients, 1/n = 0.1" in result.err and DELTA_TOO_LARGE in result.err
    summary = json.loads((tmp_path / "out" / "hostile" / "summary.json").read_text())
    assert summary["privacy/private"] is False


@pytest.mark.parametrize("override", ["privacy.max_grad_norm=1e30", "training.weight_decay=1e30"])
def test_a_model_that_learns_nothing_says_so(tmp_path, capsys, override):
    """Issue 26: privacy.max_grad_norm: 1e30 or training.weight_decay: 1e30 with Adam left the model
    bit-identical to its initialization (Adam divides by an overflowed second moment), and the run
    finished with ε 2.76 and no warning. It now says so, in stderr and summary.json."""
    from training.experiment import MODEL_UNCHANGED

    params = TINY_RUN.replace("training: {epochs: 1, batch_size: 64}",
                              "training: {epochs: 2, batch_size: 64, optimizer: adam}\n"
                              "privacy: {mode: dpsgd, noise_multiplier: 1.0}")
    result = run_cli(tmp_path, capsys, params, override)
    assert result.rc == 0, result.err
    assert result.err.count(MODEL_UNCHANGED) == 1
    summary = json.loads((tmp_path / "out" / "hostile" / "summary.json").read_text())
    assert MODEL_UNCHANGED in summary["warnings"]
    result = run_cli(tmp_path, capsys, params, "name=learns")  # the same run, sane: no warning
    assert result.rc == 0 and MODEL_UNCHANGED not in result.err


def test_every_key_settable_in_a_file_is_settable_by_set_and_by_a_sweep(tmp_path, capsys):
    """Issue 26: fairness.public_examples was accepted in a params file but refused by --set and by
    a sweep as an unknown key. Every key of the resolved config (each method's settings included)
    now goes through --set and a sweep."""
    from grids.sweep import expand_grid
    from training.validation import validated_config
    from utils.loader import apply_overrides

    def flat(mapping, prefix=""):
        for key, value in mapping.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for key, value in flat(ExperimentConfig().to_dict()):
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
        validated_config(apply_overrides({}, [f"{key}={text}"]))
    refused_before = "fairness.public_examples"
    assert validated_config(apply_overrides({}, [f"{refused_before}=100"])).fairness.public_examples == 100
    grid = expand_grid({"name": "g", "sweep": {refused_before: [100, None]}})
    assert [point.config.fairness.public_examples for point in grid.points] == [100, None]
    result = run_cli(tmp_path, capsys, TINY_RUN, f"{refused_before}=100")
    assert result.rc == 0, result.err


def test_backend_ray_on_a_single_run_is_refused(tmp_path, capsys):
    """Issue 26: --backend ray on a single-run file ran locally without a word (--stack was refused
    in the same situation). Both are refused now, before anything runs."""
    run_cli_inputs(tmp_path, TINY_RUN)
    before = snapshot(tmp_path)
    result = main_captured(capsys, cli_args(tmp_path / "params.yaml", output_dir=tmp_path / "out",
                                            extra=("--backend", "ray")))
    assert_refused(result, tmp_path, before,
                   running.BACKEND_NEEDS_GRID.format(params=tmp_path / "params.yaml"))


@pytest.mark.parametrize("value", ["1e50", "1e308"])
@pytest.mark.parametrize("engine", ["fast", "opacus", "dpfedavg"])
def test_a_target_epsilon_that_bounds_nothing_is_refused_quickly(tmp_path, capsys, value, engine):
    """Issue 26: privacy.target_epsilon 1e50 or 1e308 sent the noise search chasing σ towards 0
    and it never returned. The search is bounded (σ in [0.01, 1e6], at most 200 steps), and a
    target that σ = 0.01 already meets is refused at once."""
    from privacy.accounting import SIGMA_FLOOR, TARGET_PUTS_NO_BOUND

    if engine == "dpfedavg":
        params, overrides = FEDERATED_RUN.replace("noise_multiplier: 1.0", "target_epsilon: 3.0"), []
    else:
        params = TINY_RUN.replace("training:", "privacy: {mode: dpsgd, target_epsilon: 3.0}\ntraining:")
        overrides = [f"privacy.engine={engine}"]
    run_cli_inputs(tmp_path, params)
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, capsys, params, *overrides, f"privacy.target_epsilon={value}")
    fragment = TARGET_PUTS_NO_BOUND.split("{")[0] + str(SIGMA_FLOOR)
    assert_refused(result, tmp_path, before, "privacy.target_epsilon: got", fragment)
    assert result.seconds < 30, result.seconds


@pytest.mark.parametrize("where", ["set", "file", "float-key"])
def test_a_number_of_5000_digits_is_one_clean_error(tmp_path, capsys, where):
    """Issue 26: a seed of 5,000 digits raised `ValueError: Exceeds the limit (4300 digits)` while
    the error message itself was being built. Refused by the YAML reader with one line."""
    from utils.loader import INTEGER_TOO_LONG

    digits = "9" * 5000
    if where == "file":
        params, overrides = f"seed: {digits}\n" + TINY_RUN, ()
    else:
        params, overrides = TINY_RUN, (f"seed={digits}" if where == "set" else f"training.lr={digits}",)
    line = refused(tmp_path, capsys, params, *overrides, needles=[INTEGER_TOO_LONG, "5,000 digits"])
    assert len(line) < 600


def test_a_long_value_in_a_message_is_cut(tmp_path, capsys):
    line = refused(tmp_path, capsys, TINY_RUN, "seed=" + "9" * 900, needles=["seed: got 999", "..."])
    assert len(line) < 600


def test_running_out_of_memory_is_one_clean_error(tmp_path, capsys, monkeypatch):
    """Issue 26: model.hidden: [20000, 20000] under a memory limit gave the allocator's traceback.
    A memory limit cannot be set safely inside the test process, so the allocation fails as torch's
    CPU allocator fails (the message measured under `ulimit -v`)."""
    from training import experiment
    from utils.errors import OUT_OF_MEMORY

    message = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
               "memory: you tried to allocate 1600000000 bytes. Error code 12 (Cannot allocate memory)")

    def build_model(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(experiment, "build_model", build_model)
    run_cli_inputs(tmp_path, TINY_RUN)
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, capsys, TINY_RUN, "model.hidden=[20000, 20000]")
    assert_refused(result, tmp_path, before, OUT_OF_MEMORY.split("(")[0], "can't allocate memory",
                   "model.hidden")


@pytest.mark.parametrize("kind", ["folder", "dev-zero", "fifo"])
def test_a_params_path_that_is_not_a_file_says_what_it_is(tmp_path, capsys, kind):
    """Issue 26: a params path that is a directory, /dev/zero or a FIFO was reported as "does not
    exist" (and a FIFO would block if opened). Each is now named for what it is."""
    from utils.errors import NOT_A_REGULAR_FILE

    path = {"folder": tmp_path / "folder", "dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fifo"}[kind]
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    before = {p.name for p in tmp_path.iterdir()}
    capsys.readouterr()
    rc = running.main(["--params", str(path), "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "does not exist" not in err
    assert ("is a folder, not a file" if kind == "folder" else NOT_A_REGULAR_FILE) in err
    assert {p.name for p in tmp_path.iterdir()} == before


def test_model_weights_and_adult_files_that_are_not_files_say_what_they_are(tmp_path, capsys):
    from utils.errors import NOT_A_REGULAR_FILE

    refused(tmp_path, capsys, TINY_RUN, "model.weights=/dev/zero",
            needles=["model.weights", "/dev/zero", NOT_A_REGULAR_FILE])
    root = tmp_path / "adult"
    root.mkdir()
    os.mkfifo(root / "adult.data")
    params = TINY_RUN.replace("{name: synthetic}", f"{{name: adult, root: {json.dumps(str(root))}}}")
    refused(tmp_path, capsys, params, needles=[str(root / "adult.data"), NOT_A_REGULAR_FILE])


@pytest.mark.parametrize("protocol", ["official", "runner"])
def test_adult_with_a_missing_value_in_every_row_names_the_file(tmp_path, capsys, protocol):
    """Issue 26: every Adult row with a missing value gave "'Female' does not occur …; use one of ."
    with an empty list. The file is now named with what is wrong with it."""
    from dataset.adult import ADULT_ALL_MISSING

    root = tmp_path / "adult"
    root.mkdir()
    for name in ("adult.data", "adult.test"):
        lines = gzip.decompress((SHIPPED_ADULT_DIR / f"{name}.gz").read_bytes()).decode().splitlines(True)
        out = []
        for line in lines:
            fields = line.rstrip("\n").split(", ")
            if len(fields) >= len(ADULT_COLUMNS):
                fields[ADULT_COLUMNS.index("workclass")] = "?"
            out.append(", ".join(fields) + "\n")
        (root / name).write_text("".join(out))
    params = TINY_RUN.replace("{name: synthetic}", f"{{name: adult, root: {json.dumps(str(root))}, "
                                                   f"adult: {{protocol: {protocol}}}}}")
    line = refused(tmp_path, capsys, params, needles=[str(root), ADULT_ALL_MISSING, "'?'"])
    assert "use one of ." not in line


def test_weights_full_of_nan_are_named_not_called_divergence(tmp_path, capsys):
    """Issue 26: all-NaN weights were called divergence, with "lower training.lr"."""
    from dataset.synthetic import FEATURES
    from models import WEIGHTS_NOT_FINITE
    from models.mlp import MLP

    weights = tmp_path / "weights.pt"
    state = MLP(FEATURES, [8]).state_dict()
    torch.save({key: torch.full_like(value, float("nan")) for key, value in state.items()}, weights)
    params = TINY_RUN.replace("hidden: [8]}", f"hidden: [8], weights: {json.dumps(str(weights))}}}")
    line = refused(tmp_path, capsys, params, needles=["model.weights", str(weights), WEIGHTS_NOT_FINITE])
    assert "training.lr" not in line and "diverged" not in line


@pytest.mark.parametrize("z", ["", "z: null\n"], ids=["no-z", "z-null"])
def test_legacy_dp_true_without_z_asks_for_z(tmp_path, capsys, z):
    """Issue 26: a flat (legacy) file with dp: true and no z said "set the other one to null" when
    both noise_multiplier and target_epsilon were null. It now asks for z."""
    from utils.legacy import LEGACY_DP_NEEDS_Z

    params = f"dataset: adult\ndp: true\n{z}epochs: 1\n"
    line = refused(tmp_path, capsys, params, needles=["dp: true", "params.yaml", LEGACY_DP_NEEDS_Z])
    assert "other one" not in line


def test_both_noise_and_target_null_says_to_set_one(tmp_path, capsys):
    from utils.config import NEEDS_NOISE_OR_TARGET

    params = TINY_RUN.replace("training:", "privacy: {mode: dpsgd, target_epsilon: null}\ntraining:")
    line = refused(tmp_path, capsys, params, needles=[NEEDS_NOISE_OR_TARGET, "both are null"])
    assert "other one" not in line


@pytest.mark.parametrize(("value", "expected"), [
    ("training.epochs=2", ["training.epochs=2"]),
    ("training.epochs=2\nseed=1\n", ["training.epochs=2", "seed=1"]),
    ("", []),
    (["model.hidden=[8, 8]"], ["model.hidden=[8, 8]"]),
])
def test_the_notebooks_overrides_given_as_a_string_are_not_split_into_characters(value, expected):
    """Issue 26: the notebook's OVERRIDES given as a string became one --set per character. The
    notebook now passes it through utils.loader.override_list (one override per line)."""
    from utils.loader import OVERRIDES_EXPECTED, override_list

    assert override_list(value) == expected
    for bad in (3, ["a", "b"], {"seed": 1}):
        with pytest.raises(ConfigError, match=re.escape(OVERRIDES_EXPECTED)):
            override_list(bad)
    notebook = json.loads((ROOT / "startup.ipynb").read_text())
    code = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    first_use = code.index("*OVERRIDES")
    assert code.index("OVERRIDES = override_list(OVERRIDES)") < first_use


@pytest.mark.slow
def test_a_celeba_cache_with_a_flipped_byte_is_rebuilt_not_used(tmp_path, capsys):
    """Issue 26: a CelebA image cache with flipped bytes was used as it was (accuracy 0.575 →
    0.525). Each cache now has its SHA-256 beside it; a mismatch rebuilds it with a warning, and the
    run matches the one on the intact cache."""
    from dataset.celeba_cache import CACHE_CHECKSUM_MISMATCH
    from tests.celeba_fake import make_fake_celeba

    fake = make_fake_celeba(tmp_path / "celeba", n_images=200, seed=0)
    cache = tmp_path / "cache"
    params = TINY_RUN.replace("{name: synthetic}", (
        f"{{name: celeba, root: {json.dumps(str(fake['root']))}, target: Smiling, protected: Male, "
        f"minority_value: '1', minority_share: 0.2, train_size: 60, test_size: 40, image_size: 32, "
        f"cache_dir: {json.dumps(str(cache))}}}")).replace("{name: mlp, hidden: [8]}", "{name: cnn}")
    params = params.replace("batch_size: 64", "batch_size: 16")
    first = run_cli(tmp_path, capsys, params)
    assert first.rc == 0, first.err
    (npy,) = cache.glob("*.npy")
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF  # one pixel of the last image
    npy.write_bytes(bytes(data))
    again = run_cli(tmp_path, capsys, params, "name=again")
    assert again.rc == 0, again.err
    assert CACHE_CHECKSUM_MISMATCH in again.err and "building it again" in again.err
    summaries = [json.loads((tmp_path / "out" / name / "summary.json").read_text())
                 for name in ("hostile", "again")]
    assert summaries[0]["test/accuracy"] == summaries[1]["test/accuracy"]
    assert npy.read_bytes()[-1] != data[-1]  # the rebuilt cache holds the real pixel again
