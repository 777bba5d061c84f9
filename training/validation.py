"""The one validation step above the registries: a config built from its mapping, checked whole.

:mod:`utils.config` is plain data: it builds each section and checks its own keys (types, ranges),
and asks no registry, so reading a params file (:func:`utils.loader.load_config`) needs no training
stack. What needs more is checked here, once, by :func:`validate`:

* every key whose valid values are the names of a registry (:data:`NAME_REGISTRIES`: ``data.name``,
  ``model.name``, ``privacy.mode``, ``fairness.method``, ...). The registry that builds a key's value
  is the one owner of its names, so registering an entry is all it takes for the config to accept
  its name, and an unknown one is refused with the registry's own line (the dotted key, the closest
  name and every valid one, ``utils.registry.UNKNOWN_NAME``);
* the settings sub-sections named after registered entries (``data.<name>``, ``fairness.<method>``,
  ``privacy.<rule>``), kept raw by the schema, typed here with the entry's ``Settings`` class and
  checked as strictly as any section (those of entries other than the chosen one too: a grid that
  sweeps ``fairness.method`` holds several);
* the rules across sections and the refusals of methods, rules and data sets (a method or clipping
  rule unsound under the privacy mode, a validation split not declared public under privacy, ...).

running.py (``--dry-run`` included) and the grid runner (every point, grids/sweep.py) call it
before anything runs, so a typo gives its one line and exit status 2 at load time; so does
:func:`training.experiment.open_run` for configs built in code (validating a checked config again
changes nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataset import DATASETS, UNUSED_KEY, check_data_keys
from models import MODELS
from privacy import ENGINES
from privacy.clipping import RULES
from training import TRAINERS
from training.batches import BATCHES
from training.optim import OPTIMIZERS
from training.partition import PARTITIONS
from training.repair import METHODS
from utils.config import (
    SELECT_NEEDS_VALIDATION,
    DataConfig,
    ExperimentConfig,
    FairnessConfig,
    PrivacyConfig,
    build_settings,
    check,
    config_from_mapping,
    unknown_key_error,
    yaml_fields,
)
from utils.errors import ConfigError
from utils.legacy import translate_moved
from utils.loader import load_config
from utils.registry import Registry

# The keys whose valid values are the names of a registry, each with that registry (whose
# config_key is the key).
NAME_REGISTRIES: dict[str, Registry] = {
    registry.config_key: registry
    for registry in (DATASETS, MODELS, OPTIMIZERS, BATCHES, TRAINERS, ENGINES, RULES, PARTITIONS,
                     METHODS)}

INDIVIDUAL_UNSUPPORTED = (
    "privacy.individual_accounting does not support fairness.method {method!r} under DP-SGD: its "
    "whole-set pass computes the norm of each example's weighted cross-entropy gradient, and this "
    "method changes the training step ({changes}). Use a method that only prepares the data or "
    "post-processes (none, reweighing, oversample, fairsmote, roc), or "
    "privacy.individual_accounting: false.")
VALIDATION_NOT_DECLARED = (
    "privacy.mode {mode!r} with a validation split ({where}): the validation rows are drawn from "
    "the private pool, and the val/ metrics, training.select and the repair methods read them "
    "without noise, outside epsilon. Declare them public with data.validation_public: true (the "
    "run's summary then lists them under privacy/public_data), or hold none out "
    "(data.val_fraction: 0, training.select: last).")
BATCHES_NOT_PRIVATE = (
    "training.batches: {batches!r} refuses privacy.mode {mode!r}: its steps draw a fixed number of "
    "examples (from each cell, or from the whole set), not a Poisson sample of the training set, "
    "so the accountant's epsilon would not hold. Use training.batches: shuffled under privacy "
    "(Poisson batches), or privacy.mode: none.")
STEPS_PER_EPOCH_NOT_FEDERATED = (
    "training.steps_per_epoch: got {steps}, but privacy.mode dpfedavg trains in federated rounds "
    "(federated.rounds, each client federated.local_epochs passes over its own data). Set "
    "training.steps_per_epoch: null under DP-FedAvg.")

# training.pad_batches / compile / precision outside what supports them:
STATIC_SHAPES_UNSUPPORTED = (
    "training.pad_batches needs privacy.mode dpsgd with privacy.engine fast, "
    "privacy.poisson_sampling true, privacy.clipping flat and a fairness.method that leaves the "
    "training step alone (got {what}). Set training.pad_batches: false.")
COMPILE_NEEDS_PADDING = (
    "training.compile under privacy.mode dpsgd needs training.pad_batches: true (each Poisson "
    "batch size would compile again) and privacy.engine fast. Set training.pad_batches: true, or "
    "training.compile: false.")
SPEED_OPTIONS_CENTRALIZED = (
    "{key}: {value!r} applies to centralized training ({where}), not {what}. Leave {key} at its "
    "default.")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` checked whole (names, settings sub-sections, rules across sections, refusals;
    see the module's docstring), with its settings sub-sections typed. Raises ConfigError."""
    for key, registry in NAME_REGISTRIES.items():
        section, name = key.split(".")
        registry.get(getattr(getattr(config, section), name))
    config.privacy.check_noise_level()
    config = dataclasses.replace(config, data=_typed_data(config.data),
                                 privacy=_typed_privacy(config.privacy),
                                 fairness=_typed_fairness(config.fairness))
    _check_across_sections(config)
    return config


def validated_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """:func:`utils.config.config_from_mapping` (old spellings of moved keys read at their new
    place, :func:`utils.legacy.translate_moved`), then :func:`validate`."""
    return validate(config_from_mapping(translate_moved(raw)[0]))


def load_validated(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """:func:`utils.loader.load_config` (the file and ``--set``), then :func:`validate`."""
    return validate(load_config(path, overrides))


def _typed(sections: Mapping[str, Any], known: Mapping[str, type], own: list[str],
           prefix: str) -> dict[str, Any]:
    """Each sub-section typed with its entry's settings class and checked; a name that is neither
    an entry nor a key of the section (``own``) is refused with the closest one."""
    for name in sections:
        if name not in known:
            raise unknown_key_error(str(name), [*own, *known], prefix)
    built = {}
    for name, values in sections.items():
        if isinstance(values, known[name]):  # typed by an earlier validation
            settings = values
        else:
            settings = build_settings(values, known[name], prefix + str(name))
        settings.validate()
        built[name] = settings
    return built


def _typed_data(data: DataConfig) -> DataConfig:
    """The data section with its data set's own settings typed (the builder's ``Settings``; its
    defaults when the sub-section is absent; None for a data set without settings), and the other
    data sets' sub-sections checked and refused where they set anything: a setting of a data set
    the run does not read would be silently ignored (``dataset.UNUSED_KEY``)."""
    declared = {name: getattr(DATASETS.get(name), "Settings", None) for name in DATASETS}
    known = {name: cls for name, cls in declared.items() if cls is not None}
    own = [f.name for f in yaml_fields(DataConfig)]
    sections = dict(data.sections)
    if data.settings is not None:
        sections[data.name] = data.settings
    built = _typed(sections, known, own, "data.")
    for name, settings in built.items():
        if name == data.name:
            continue
        defaults = type(settings)()
        for f in dataclasses.fields(settings):
            value, default = getattr(settings, f.name), getattr(defaults, f.name)
            if value != default:
                raise ConfigError(UNUSED_KEY.format(key=f"{name}.{f.name}", value=value,
                                                    name=data.name, users=name, default=default))
    chosen = built.get(data.name)
    if chosen is None and known.get(data.name) is not None:
        chosen = known[data.name]()
    if chosen is not None and not dataclasses.fields(chosen):
        chosen = None
    return dataclasses.replace(data, settings=chosen, sections={})


def _typed_privacy(privacy: PrivacyConfig) -> PrivacyConfig:
    """The privacy section with the chosen clipping rule's settings typed (its defaults when its
    sub-section is absent; None for a rule without settings), the other rules' checked and dropped,
    and the rule's refusal applied."""
    rules = {name: RULES.get(name).Settings for name in RULES}
    own = [f.name for f in yaml_fields(PrivacyConfig)]
    sections = dict(privacy.clipping_sections)
    if privacy.clipping_settings is not None:
        sections[privacy.clipping] = privacy.clipping_settings
    built = _typed(sections, rules, own, "privacy.")
    chosen = built.get(privacy.clipping)
    if chosen is None:  # the rule's defaults, written out
        chosen = rules[privacy.clipping]()
    if not dataclasses.fields(chosen):
        chosen = None
    privacy = dataclasses.replace(privacy, clipping_settings=chosen, clipping_sections={})
    if (refusal := RULES.get(privacy.clipping).refusal(privacy)) is not None:
        raise ConfigError(refusal)
    return privacy


def _typed_fairness(fairness: FairnessConfig) -> FairnessConfig:
    """The fairness section with the chosen method's settings typed (None when its sub-section is
    absent: the method's defaults apply), the other methods' checked and dropped, and the
    registered method class attached (``FairnessConfig.method_class``)."""
    methods = {name: METHODS.get(name).Settings for name in METHODS}
    own = [f.name for f in yaml_fields(FairnessConfig)]
    sections = dict(fairness.sections)
    if fairness.settings is not None:
        sections[fairness.method] = fairness.settings
    built = _typed(sections, methods, own, "fairness.")
    return dataclasses.replace(fairness, settings=built.get(fairness.method), sections={},
                               registered=METHODS.get(fairness.method))


def _check_across_sections(config: ExperimentConfig) -> None:
    """The rules that read more than one section, and the refusals of methods and data sets."""
    data, training, privacy, fairness = config.data, config.training, config.privacy, config.fairness
    method = fairness.method_class()
    if (refusal := getattr(data.settings, "refusal", lambda _: None)(data)) is not None:
        raise ConfigError(refusal)  # the data set's own rule across its keys (Adult's protocols)
    if fairness.method != "none" and privacy.private:
        refusal = method.refusal(fairness.method, privacy.mode)
        if refusal is not None:
            raise ConfigError(refusal)
    if privacy.accounts_individuals and privacy.mode == "dpsgd":
        # DP-FedAvg's pass trains each client with the method's own client loss; DP-SGD's
        # pass takes the norms of the plain weighted cross-entropy, so it must be what trains.
        if changes := method.training_changes():
            raise ConfigError(INDIVIDUAL_UNSUPPORTED.format(method=fairness.method,
                                                            changes=", ".join(changes)))
    if privacy.private and data.has_validation and not data.validation_public:
        where = (f"data.val_fraction: {data.val_fraction!r}" if data.val_fraction > 0
                 else data.settings.validation_source())
        raise ConfigError(VALIDATION_NOT_DECLARED.format(mode=privacy.mode, where=where))
    if training.batches != "shuffled" and privacy.private:
        raise ConfigError(BATCHES_NOT_PRIVATE.format(batches=training.batches, mode=privacy.mode))
    if training.steps_per_epoch is not None and privacy.mode == "dpfedavg":
        raise ConfigError(STEPS_PER_EPOCH_NOT_FEDERATED.format(steps=training.steps_per_epoch))
    if data.train_size is not None:
        check(training.batch_size <= data.train_size, "training.batch_size",
              training.batch_size, f"at most data.train_size ({data.train_size})")
    check_speed_options(config)
    check_selection(config)
    check_data_keys(config)  # a data-set-specific key its data set does not read


def check_selection(config: ExperimentConfig) -> None:
    """``training.select`` other than "last" needs a validation split to select on."""
    if config.training.select != "last" and not config.data.has_validation:
        raise ConfigError(
            f"training.select: {config.training.select!r} {SELECT_NEEDS_VALIDATION}, but "
            f"data.val_fraction is {config.data.val_fraction!r}. Set data.val_fraction to a share "
            "of the training pool such as 0.2 (or, for Adult, data.adult.protocol: runner), or "
            "training.select: last.")


def check_speed_options(config: ExperimentConfig) -> None:
    """``training.pad_batches``, ``compile`` and ``precision`` where the trainer supports them:
    centralized training, and under DP-SGD the fast engine (its clipping is what they change)."""
    training, privacy = config.training, config.privacy
    fast_dpsgd = privacy.mode == "dpsgd" and privacy.engine == "fast"
    unsupported = (privacy.mode == "dpfedavg" or (privacy.mode == "dpsgd" and not fast_dpsgd))
    what = f"privacy.mode {privacy.mode!r}, privacy.engine {privacy.engine!r}"
    where = "privacy.mode none or dpsgd with privacy.engine fast"
    for key, default in (("compile", False), ("precision", "fp32")):
        value = getattr(training, key)
        if value != default and unsupported:
            raise ConfigError(SPEED_OPTIONS_CENTRALIZED.format(
                key=f"training.{key}", value=value, where=where, what=what))
    if config.model.channels_last and privacy.mode == "dpfedavg":
        raise ConfigError(SPEED_OPTIONS_CENTRALIZED.format(
            key="model.channels_last", value=True, where="privacy.mode none or dpsgd", what=what))
    if training.pad_batches:
        reasons = []
        if not fast_dpsgd:
            reasons.append(what)
        if not privacy.poisson_sampling:
            reasons.append("privacy.poisson_sampling false")
        if privacy.clipping != "flat":
            reasons.append(f"privacy.clipping {privacy.clipping!r}")
        if config.fairness.method != "none" and config.fairness.method_class().training_changes():
            reasons.append(f"fairness.method {config.fairness.method!r}")
        if reasons:
            raise ConfigError(STATIC_SHAPES_UNSUPPORTED.format(what=", ".join(reasons)))
    if training.compile and privacy.mode == "dpsgd" and not training.pad_batches:
        raise ConfigError(COMPILE_NEEDS_PADDING)
