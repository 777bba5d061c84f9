"""Params files in the flat format of the code this project replaces.

The experiments of "Neither Private Nor Fair" (Farrand, Mireshghallah, Singh and Trask, 2020,
arXiv 2009.06389) ran from flat YAML files such as its ``utils/params_celeba.yaml``, a format the
paper's code inherited from Bagdasaryan et al.'s DP-SGD code: ``dp: true``, ``S: 5`` (the clipping
bound), ``z: 0.7`` (the noise multiplier), ``batch_size: 32`` and so on, all at the top level.
This module lets such a file be passed to ``running.py --params`` unchanged, so that a researcher
can rerun an experiment of the paper before rewriting anything:

* :func:`is_legacy` recognizes the format: none of the nested sections (``data``, ``model``,
  ``training``, ``privacy``, ...) and at least one key that only the flat format has. ``name`` and
  ``seed`` exist in both formats and prove nothing; ``model`` counts only with a string value
  (``model: resnet``), since in the nested format it is a section.
* :func:`translate` maps every key to its nested equivalent (the table ``LEGACY_KEYS`` below) and
  collects warnings for what cannot be honoured. A key outside the table is a :class:`ConfigError`
  that names it and the closest known key, as the strict loader does for nested files: a typo
  silently dropped would run a different experiment from the one the file describes.
* :func:`translate_legacy` is what :func:`utils.loader.load_config` calls: it translates, prints the
  equivalent nested YAML once to stderr under a one-line header telling the user to switch to it,
  then the warnings, and returns the nested mapping. ``--set`` overrides apply to that mapping, with
  their nested keys (``--set training.epochs=1``), exactly as for a nested file.

What cannot be honoured, and why (each is named in a ``warning: ...`` line):

* ``num_microbatches`` other than per-example. The original split each batch's losses into
  ``num_microbatches`` groups and clipped the mean gradient of each group to ``S``; only
  ``num_microbatches == batch_size`` clips every example, which is what this project (Opacus)
  always does. Null or absent means per-example here, and the warning is only given for private
  runs (``dp: true``), since the original used microbatches only when training privately. Any other
  value, 0 included (the original could not run with 0), changes what is clipped, and with it the
  noise per example, so the result is not comparable with the original's run at that setting.
* ``multi_gpu: true``. The original wrapped the model in ``nn.DataParallel``; a run here uses one
  device (``device: auto`` picks one GPU).
* ``scheduler: true``. The original divided the learning rate by 10 at 50 % and 75 % of the epochs;
  this project keeps ``training.lr`` constant.
* ``resumed_model``. The original resumed from its own checkpoints; a run here starts afresh.
* ``model: PretrainedRes``. The original loaded torchvision's ImageNet weights; this project
  downloads nothing (``model.weights`` loads a local state dict), so the ResNet-18 starts from a
  random initialization. Note also that this project's ResNet-18 uses GroupNorm where
  torchvision's uses BatchNorm, because per-example gradients (Opacus) cannot pass through
  BatchNorm; that holds for every ResNet run and is not warned about.
* ``mu`` and ``ds_size``. The original used them in its exponential class sampler; the imbalance
  here is ``data.minority_share`` of ``data.train_size`` examples.

Keys read and dropped with a ``note: ...`` line: ``name`` and ``current_time`` (the original named
its output folder from them; here the run directory is ``{output_dir}/{name}``, and ``name`` is
taken from the file's name so that two translated files never share a run directory, where the
second would be taken for complete and skipped), ``save_model`` and ``save_on_epochs`` (what a run
directory holds is this project's contract).

CelebA defaults of the paper: when ``dataset: celeba``, the translation fills, unless the file gives
them, ``data.train_size: 24000`` and ``data.celeba.test_size: 6000`` (the paper's 24,000 training
images at every minority share and its balanced test set of 1,500 per group and label),
``data.celeba.split: protocol`` (that protocol rather than CelebA's official partition),
``privacy.delta: 1e-6`` (the δ at which the paper reports ε), and the paper's task,
``data.target: Smiling`` with ``data.protected: Male`` and ``data.minority_value: "1"`` (men the
minority, as in the paper).

Keys of this project's own nested format that moved (:data:`MOVED_KEYS`): the settings only one
data set reads live in that data set's sub-section now (``data.celeba.image_size``,
``data.adult.protocol``), as repair methods' settings live in ``fairness.<method>``. The old
spellings (``data.image_size``, ``data.protocol``) keep working: :func:`translate_moved` (a pure
mapping-to-mapping function) puts them at their new place, and :func:`utils.loader.load_config`
prints one ``note: ...`` line per old spelling it read, as for a flat file. A run's identity
(:func:`utils.seeding.identity_settings`) and the comparison of a stored config.yaml
(``training.experiment.changed_keys``) read the moved keys under their old names
(:func:`historic_flat`), so streams, run directories and resumption are those of before the move.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from utils.config import NAME_MAX_BYTES, ExperimentConfig, TrainingConfig, is_plain_name
from utils.errors import ConfigError

# Legacy keys whose value carries over unchanged to one nested key. The strict loader then coerces
# and checks the value under its new name, so a bad value is refused like one in a nested file.
DIRECT_KEYS: dict[str, str] = {
    "selected_attr": "data.target",
    "protected_attr": "data.protected",
    "minority_share": "data.minority_share",
    "ratio": "data.minority_share",
    "data_path": "data.root",
    "root": "data.root",
    "image_size": "data.celeba.image_size",
    "S": "privacy.max_grad_norm",
    "z": "privacy.noise_multiplier",
    "delta": "privacy.delta",
    "batch_size": "training.batch_size",
    "test_batch_size": "training.eval_batch_size",
    "lr": "training.lr",
    "decay": "training.weight_decay",
    "momentum": "training.momentum",
    "epochs": "training.epochs",
    "seed": "seed",
}

# Legacy keys translated by a rule of their own in `translate` (value changes, warnings).
RULE_KEYS: tuple[str, ...] = ("dp", "optimizer", "dataset", "model", "num_microbatches",
                              "multi_gpu", "scheduler", "resumed_model", "mu", "ds_size")

# Legacy keys read and dropped, with the reason printed as a note.
DROPPED_KEYS: dict[str, str] = {
    "name": "the run directory is {output_dir}/{name}, and name is taken from the file's name",
    "current_time": "the run directory is {output_dir}/{name}, and name is taken from the file's name",
    "save_model": "what a run directory holds (summary.json, predictions.csv, ...) is fixed here",
    "save_on_epochs": "what a run directory holds (summary.json, predictions.csv, ...) is fixed here",
}

LEGACY_KEYS: frozenset[str] = frozenset(DIRECT_KEYS) | frozenset(RULE_KEYS) | frozenset(DROPPED_KEYS)

# Legacy model names and their registry names here (compared in lower case).
MODEL_NAMES: dict[str, str] = {"resnet": "resnet18", "resnet18": "resnet18", "pretrainedres": "resnet18"}

# The paper's CelebA protocol (arXiv 2009.06389), filled for `dataset: celeba` unless given.
CELEBA_PAPER_DEFAULTS: dict[str, Any] = {
    "data.target": "Smiling",
    "data.protected": "Male",
    "data.minority_value": "1",
    "data.train_size": 24000,
    "data.celeba.test_size": 6000,
    "data.celeba.split": "protocol",
    "privacy.delta": 1e-6,
}

# Keys that moved into a data set's own sub-section, by their old dotted name: the new name and the
# default the old key had (which the run's identity leaves out; historic_flat).
MOVED_KEYS: dict[str, tuple[str, Any]] = {
    "data.split": ("data.celeba.split", "protocol"),
    "data.image_size": ("data.celeba.image_size", 128),
    "data.cache_dir": ("data.celeba.cache_dir", None),
    "data.test_size": ("data.celeba.test_size", None),
    "data.protocol": ("data.adult.protocol", "official"),
}
MOVED_KEY_NOTE = "{old} is now {new} (read as such); write {new}."
MOVED_KEY_TWICE = ("{old} and {new} are one setting, given twice ({old} is its old spelling); "
                   "keep {new}.")

PAPER = "arXiv 2009.06389"
LEGACY_DP_NEEDS_Z = "needs z, the noise multiplier the original code trained with"


def moved_key(dotted: str) -> str:
    """The current spelling of a dotted key: a moved key's new one (:data:`MOVED_KEYS`), or the
    key itself."""
    return MOVED_KEYS[dotted][0] if dotted in MOVED_KEYS else dotted


def translate_moved(raw: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``raw`` (a nested params mapping) with every moved key at its new place, and the old keys
    it held, in order. A new mapping; ``raw`` is not changed.

    Raises:
        ConfigError: a setting given in both spellings, or a data set's sub-section that is not a
            mapping where an old key would go.
    """
    data = raw.get("data")
    if not isinstance(data, Mapping):
        return dict(raw), ()
    found = tuple(f"data.{key}" for key in data if f"data.{key}" in MOVED_KEYS)
    if not found:
        return dict(raw), ()
    moved = {key: value for key, value in data.items() if f"data.{key}" not in MOVED_KEYS}
    for old in found:
        new = MOVED_KEYS[old][0]
        _, section, key = new.split(".")
        sub = moved.get(section)
        if sub is None:
            sub = {}
        if not isinstance(sub, Mapping):
            raise ConfigError(f"data.{section}: got {sub!r}; expected a mapping of the data set's "
                              f"settings (it receives {old}, the old spelling of {new}).")
        if key in sub:
            raise ConfigError(MOVED_KEY_TWICE.format(old=old, new=new))
        moved[section] = {**sub, key: data[old.split(".", 1)[1]]}
    return {**raw, "data": moved}, found


def historic_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A config flattened to dotted keys, with every moved key under its old name and the old
    default written in for one it lacks: the form of a config from before the move, in which a
    run's identity and the comparison of a stored config.yaml are computed (so neither changed)."""
    old_name = {new: old for old, (new, _) in MOVED_KEYS.items()}
    out = {old_name.get(key, key): value for key, value in flat.items()}
    for old, (_, default) in MOVED_KEYS.items():
        out.setdefault(old, default)
    return out


def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_names() -> tuple[str, ...]:
    hints = _fields(ExperimentConfig)
    return tuple(f.name for f in dataclasses.fields(ExperimentConfig) if dataclasses.is_dataclass(hints[f.name]))


def _top_level_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def is_legacy(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` (a params file as read) is in the original flat format.

    It is when it holds none of the nested format's sections and at least one key that only the flat
    format has. ``model`` is a section of the nested format and a string in the flat one, so a string
    ``model`` counts as flat and is not a section; keys both formats share at the top level
    (``name``, ``seed``) decide nothing, so ``{seed: 1}`` stays a nested file.
    """
    sections = _section_names()
    for key, value in raw.items():
        if key in sections and not (key == "model" and isinstance(value, str)):
            return False
    shared = set(_top_level_names()) - {"model"}
    return any(key in LEGACY_KEYS and key not in shared for key in raw)


@dataclass(frozen=True)
class LegacyTranslation:
    """A flat params file translated to the nested format.

    Attributes:
        mapping: the nested mapping, in the order of the config's fields; what
            :func:`utils.config.config_from_mapping` builds the experiment from.
        warnings: one line per legacy setting this project cannot honour, each naming the key.
        notes: one line per legacy key read and dropped because it has no bearing on the result.
        source: the file the flat mapping came from, for messages; None when it came from code.
    """

    mapping: dict[str, Any]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    source: str | None

    def new_format_yaml(self) -> str:
        """The nested mapping as YAML, ready to be saved as a params file of this project."""
        return yaml.safe_dump(self.mapping, sort_keys=False, default_flow_style=False)

    def report(self) -> str:
        """What :func:`translate_legacy` prints: header, nested YAML, then warnings and notes."""
        where = self.source if self.source is not None else "the params mapping"
        header = (f"note: {where} is in the flat params format of the original code ({PAPER}); "
                  f"it was read as the nested file below: switch to it by saving it as your params file.")
        lines = [header, self.new_format_yaml().rstrip("\n")]
        lines += [f"warning: {text}" for text in self.warnings]
        lines += [f"note: {text}" for text in self.notes]
        return "\n".join(lines) + "\n"


def _put(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    node = mapping
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value


def _has(mapping: Mapping[str, Any], dotted: str) -> bool:
    *sections, key = dotted.split(".")
    node: Any = mapping
    for section in sections:
        node = node.get(section)
        if not isinstance(node, Mapping):
            return False
    return key in node


def _ordered(mapping: Mapping[str, Any], cls: type = ExperimentConfig) -> dict[str, Any]:
    """``mapping`` with its keys in the order of ``cls``'s fields, the order a reader expects."""
    hints = _fields(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in mapping:
            value = mapping[f.name]
            nested = dataclasses.is_dataclass(hints[f.name]) and isinstance(value, Mapping)
            out[f.name] = _ordered(value, hints[f.name]) if nested else value
    # Every key of the table lands on a field, so nothing is left over; were one to, the strict
    # loader must still see it and refuse it rather than this function drop it.
    out.update({key: value for key, value in mapping.items() if key not in out})
    return out


def _unknown_legacy_key(key: str, where: str) -> ConfigError:
    known = sorted(LEGACY_KEYS, key=str.lower)
    # `s`/`Z`/`LR`: the flat format's keys differ from each other in case alone, which difflib
    # would score as unrelated, so a case-insensitive match comes first.
    same_case = [name for name in known if name.lower() == key.lower()]
    close = same_case or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}, a params file in the flat format of the "
                       f"original code.{hint} Keys of that format: {', '.join(known)}.")


def _run_name(source: str | None) -> str | None:
    """A run name from the file's name, with characters a run name refuses replaced by ``_``.

    The result is a plain name by the rule of :func:`utils.config.is_plain_name`: a stem of dots
    alone (``...yaml`` gives ``..``, which would be the folder above output_dir) has its dots
    replaced by ``_``, and a long stem is cut to ``NAME_MAX_BYTES``.
    """
    if source is None:
        return None
    name = re.sub(r"[^\w.=,+-]", "_", Path(source).stem)
    if set(name) == {"."}:
        name = "_" * len(name)
    name = name.encode("utf-8")[:NAME_MAX_BYTES].decode("utf-8", errors="ignore")
    return name if is_plain_name(name) else None


def _as_int(value: Any) -> int | None:
    """``value`` as an integer when it plainly is one (``32``, ``32.0``, ``"32"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def translate(raw: Mapping[str, Any], *, source: str | Path | None = None) -> LegacyTranslation:
    """Translate a flat params mapping to the nested format, without printing anything.

    Args:
        raw: the flat mapping as read from the file (see :func:`is_legacy`).
        source: the file it came from; it names the file in messages and gives the run its name.

    Returns:
        The nested mapping with the warnings and notes (see the module's docstring for each rule).

    Raises:
        ConfigError: a key outside the flat format's table (naming it and the closest known key),
            two keys for the same setting (``minority_share`` and ``ratio``), or a value no rule can
            read (``dp: maybe``, ``num_microbatches: many``).
    """
    where = repr(str(source)) if source is not None else "the params mapping"
    for key in raw:
        if key not in LEGACY_KEYS:
            raise _unknown_legacy_key(str(key), where)

    mapping: dict[str, Any] = {}
    warnings: list[str] = []
    dropped: list[str] = []

    name = _run_name(None if source is None else str(source))
    if name is not None:
        mapping["name"] = name

    # Keys with a value that carries over unchanged; two synonyms for one setting must not both
    # be given, since which one wins would be a guess.
    given_by: dict[str, str] = {}
    for key, target in DIRECT_KEYS.items():
        if key not in raw:
            continue
        if target in given_by:
            raise ConfigError(f"{where} sets {target} twice, as '{given_by[target]}' and as '{key}' "
                              f"(synonyms in the flat format); keep one of them.")
        given_by[target] = key
        _put(mapping, target, raw[key])
    if "protected_attr" in raw:
        # The original's groups are the two values of a binary attribute, value 1 the minority
        # (Male = 1 on CelebA).
        _put(mapping, "data.minority_value", "1")
    if "z" in raw:
        # The original fixed σ and reported the resulting ε; it never searched σ for a target ε.
        _put(mapping, "privacy.target_epsilon", None)

    if "dp" in raw:
        if not isinstance(raw["dp"], bool):
            raise ConfigError(f"dp: got {raw['dp']!r} in {where}; expected true or false.")
        _put(mapping, "privacy.mode", "dpsgd" if raw["dp"] else "none")
    private = raw.get("dp") is True
    if private and raw.get("z") is None:
        # The original always trained dp: true at the noise multiplier z; it had no target ε.
        raise ConfigError(f"dp: true in {where} {LEGACY_DP_NEEDS_Z} (got z: "
                          f"{'null' if 'z' in raw else 'none given'}). Give z, e.g. z: 0.7 as in the "
                          f"paper's CelebA setting, or dp: false.")

    for key, target in (("optimizer", "training.optimizer"), ("dataset", "data.name")):
        if key in raw:
            value = raw[key]
            # The original compared 'Adam'/'SGD' exactly; names here are lower case.
            _put(mapping, target, value.lower() if isinstance(value, str) else value)

    if "model" in raw:
        value = raw["model"]
        if isinstance(value, str):
            if value.lower() == "pretrainedres":
                warnings.append(
                    f"model: {value!r} loaded torchvision's ImageNet weights in the original; nothing is "
                    f"downloaded here, so the ResNet-18 starts from a random initialization (model.weights "
                    f"can name a local state dict).")
            value = MODEL_NAMES.get(value.lower(), value.lower())
        _put(mapping, "model.name", value)

    if "num_microbatches" in raw and raw["num_microbatches"] is not None:
        microbatches = _as_int(raw["num_microbatches"])
        if microbatches is None:
            raise ConfigError(f"num_microbatches: got {raw['num_microbatches']!r} in {where}; expected an "
                              f"integer (the batch size for per-example clipping) or null.")
        batch_size = _as_int(raw.get("batch_size", TrainingConfig().batch_size))
        if private and batch_size is not None and microbatches != batch_size:
            warnings.append(
                f"num_microbatches: {microbatches} is not per-example (that is num_microbatches equal to "
                f"batch_size, {batch_size}): the original clipped the mean gradient of each of "
                f"{microbatches} microbatches to S, while this project clips every example's gradient, "
                f"so clipping and noise per example differ from the original's run.")

    if raw.get("multi_gpu"):
        warnings.append("multi_gpu: true is not supported: the run uses one device (device: auto picks "
                        "one GPU), not the original's nn.DataParallel.")
    if raw.get("scheduler"):
        warnings.append("scheduler: true is not supported: the original divided the learning rate by 10 "
                        "at 50% and 75% of the epochs; here training.lr stays constant.")
    if raw.get("resumed_model"):
        warnings.append(f"resumed_model: {raw['resumed_model']!r} is not supported: the run trains from "
                        f"scratch, not from the original's checkpoint.")
    ignored_sampler = [key for key in ("mu", "ds_size") if key in raw]
    if ignored_sampler:
        warnings.append(f"{', '.join(ignored_sampler)}: ignored: the original's exponential class sampler "
                        f"is not reproduced; the imbalance here is data.minority_share of data.train_size "
                        f"examples.")

    for key in raw:
        if key in DROPPED_KEYS:
            dropped.append(key)
    notes: list[str] = []
    for reason in dict.fromkeys(DROPPED_KEYS[key] for key in dropped):
        keys = [key for key in dropped if DROPPED_KEYS[key] == reason]
        notes.append(f"{', '.join(keys)}: ignored; {reason}.")

    if _has(mapping, "data.name") and mapping["data"]["name"] == "celeba":
        for target, value in CELEBA_PAPER_DEFAULTS.items():
            if not _has(mapping, target):
                _put(mapping, target, value)

    return LegacyTranslation(mapping=_ordered(mapping), warnings=tuple(warnings), notes=tuple(notes),
                             source=None if source is None else str(source))


def translate_legacy(raw: Mapping[str, Any], *, source: str | Path | None = None,
                     stream: TextIO | None = None) -> dict[str, Any]:
    """Translate a flat params mapping, print the nested equivalent once, and return it.

    The report (see :meth:`LegacyTranslation.report`) goes to ``stream``, stderr by default, so that
    stdout keeps only the run's own output. A key this function cannot read raises before anything
    is printed, so a refused file gives the command line its one ``error: ...`` line and nothing else.

    Args:
        raw: the flat mapping as read from the file.
        source: the file it came from (messages and the run's name).
        stream: where the report goes; None is ``sys.stderr`` at call time.

    Returns:
        The nested mapping, for ``--set`` overrides and :func:`utils.config.config_from_mapping`.
    """
    translation = translate(raw, source=source)
    print(translation.report(), end="", file=stream if stream is not None else sys.stderr)
    return translation.mapping
