"""Typed, strict experiment configuration.

One frozen, keyword-only dataclass per YAML section (in the manner of jax_privacy's experiment
configs). Loading is strict: an unknown key anywhere is an error that names the dotted key and the
closest valid one, because a silently ignored typo (``privacy.noise_multipler``) would run a
different experiment from the one the researcher wrote down. Values are coerced explicitly from
their annotations, since PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``).

:func:`config_from_mapping` builds and checks the config from a mapping; reading a params file and
``--set`` overrides are :mod:`utils.loader`'s (``load_config(path, overrides)``, the one entry
point for files), which applies overrides to the raw mapping *before* it is checked, so they pass
through exactly the same checks as the file.

This module is plain data: it imports no layer above ``utils``, so reading a params file needs no
training stack. What needs the registries (a registered name such as ``fairness.method``, the
settings sub-sections ``fairness.<method>`` and ``privacy.<rule>``, which stay raw mappings here)
and every rule across sections is checked by one step above them, :mod:`training.validation`,
which running.py, ``--dry-run``, the grid runner and ``training.experiment.run`` call.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from utils.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")
INDIVIDUAL_NEEDS_NOISE = ("privacy.individual_accounting: true with privacy.noise_multiplier 0: "
                          "without noise every example's ε is infinite. Set a positive "
                          "privacy.noise_multiplier, or privacy.individual_accounting: false.")
WANDB_MODES = ("auto", "online", "offline", "disabled")
FAIRNESS_TARGETS = ("dp", "eo")
# data.preprocessing (dataset.preprocessing): auto is public under privacy and fitted without.
PREPROCESSING_MODES = ("auto", "public", "fitted")
ACTIVATIONS = ("relu", "tanh")
PRECISIONS = ("fp32", "bf16")
# training.select: each rule's validation metric (None: the last unit) and whether larger is
# better. "best_val_gap" is the target's own gap (fairness.mode dp: the DP gap; eo: the TPR gap);
# the others name their gap whatever the target. The one home of these names: training.selection
# ranks by this table.
MODEL_SELECTIONS: dict[str, tuple[str | None, bool]] = {
    "last": (None, False),
    "best_val_gap": ("val/{mode}_gap", False),
    "best_val_dp_gap": ("val/dp_gap", False),
    "best_val_eo_gap": ("val/eo_gap", False),
    "best_val_eodds_gap": ("val/eodds_gap", False),
    "best_val_eodds_sum": ("val/eodds_gap_sum", False),
    "best_val_ap": ("val/average_precision", True),
}

# Message part of a model selection asked for without a validation split (tests import it; the
# rule is training.validation's, and training.selection says it again for a data set without one).
SELECT_NEEDS_VALIDATION = "needs a validation split"
# training.balanced_batches (a boolean until the batches setting replaced it) in a params file.
BALANCED_BATCHES_REPLACED = (
    "training.balanced_batches: replaced by training.batches. Write training.batches: "
    "group_balanced (the old true under fairness.mode dp: the same number of examples from each "
    "group), cell_balanced (the old true under eo: from each group x label cell) or shuffled (the "
    "old false).")
# Keys this version no longer has: each with the message a params file that sets it gets, and the
# value it took by default (an old run's config.yaml holding that value trained as today's default,
# so resuming or skipping it is no change of config: training.experiment.changed_keys).
RETIRED_KEYS: dict[str, tuple[str, Any]] = {
    "training.balanced_batches": (BALANCED_BATCHES_REPLACED, False),
}

# Keys a resolved config.yaml carries for provenance; reading such a file back ignores them.
PROVENANCE_KEY = "provenance"
# Sections that make a params file a grid of experiments (grids/sweep.py), not one experiment.
GRID_KEYS = frozenset({"sweep", "zip"})

# Message of a float key given infinity or NaN (``.inf``, ``.nan``, "inf", 1e999).
NON_FINITE_NUMBER = "expected a finite number (infinity and NaN are not allowed for any key)"


# A run's name is its directory under output_dir, so it must be one plain path component: never
# "." or ".." (the run would be output_dir itself or the folder above it, and a fresh start clears
# its run directory), no separator, no NUL, and short enough for a file system's 255-byte limit on
# one component. grids/sweep.py and utils/legacy.py make names by the same rule.
NAME_MAX_BYTES = 200
NAME_EXPECTED = (f"a plain directory name of letters, digits and . _ - = , + (not '.' or '..'), "
                 f"at most {NAME_MAX_BYTES} bytes")
# NumPy's and torch's seeds are unsigned 32-bit integers.
SEED_MAX = 2**32 - 1
SEED_EXPECTED = f"an integer from 0 to {SEED_MAX} (2**32 - 1)"
NUL_IN_STRING = "contains a NUL character (\\0); remove it."


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a run directory's name (see :data:`NAME_EXPECTED`)."""
    return (re.fullmatch(r"[\w.=,+-]+", name) is not None and name not in (".", "..")
            and len(name.encode("utf-8")) <= NAME_MAX_BYTES)


def shown(value: Any, limit: int = 400) -> str:
    """``repr(value)`` for an error message, never itself an error: an integer too long for
    Python to print (over 4,300 digits raises ValueError) is described by its length, and a long
    value is cut at ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3000:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check(condition: bool, key: str, value: Any, expected: str) -> None:
    """Refuse ``value`` of the dotted ``key`` unless ``condition``: one line naming the key, the
    value and what is expected (the config's error contract; repair methods' settings use it too)."""
    if not condition:
        raise ConfigError(f"{key}: got {shown(value)}; expected {expected}.")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``allowed`` (:func:`check`)."""
    check(value in allowed, key, value, "one of " + ", ".join(allowed))


# Metadata of the fields that YAML does not spell as keys of their section: what the validation
# step (training.validation) derives, and the raw sub-sections it types (see SettingsHolder below).
NOT_A_KEY = {"yaml": False}
NOT_VALIDATED = ("{what} needs the config checked by training.validation.validate (the registries "
                 "type the settings sub-sections); this one was only built from its mapping.")


def yaml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of section ``cls`` that YAML spells as its keys (less :data:`NOT_A_KEY` ones and
    the chosen entry's settings, which YAML holds as a sub-section named after the entry)."""
    return [f for f in dataclasses.fields(cls)
            if f.metadata.get("yaml", True) and f.name != SETTINGS_FIELDS.get(cls)]


def settings_mapping(settings: Any) -> dict[str, Any]:
    """A settings sub-section as YAML holds it, typed (validated) or raw (as read)."""
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which data, which groups, and how the training set is resampled.

    Attributes:
        name: data set ("adult", "celeba", ...; see ``dataset.DATASETS``).
        root: directory of the user's copy of the data; null uses the copy shipped in the
            repository where there is one (Adult).
        target: the binary label to predict (Adult: "income"; CelebA: any attribute, e.g. "Smiling").
        protected: the attribute that defines the two groups ("sex", "race"; CelebA "Male").
        minority_value: the protected value of the minority group ("Female"; "non-White" means every
            value but "White"; CelebA attributes use "1" or "-1").
        minority_share: the minority's share of the training set after resampling, in (0, 1); null
            keeps the data's own share.
        train_size: fixed number of training examples at every share, so that the sampling rate and
            with it ε at a given noise are the same across a sweep of shares; null keeps every
            majority example.
        val_fraction: share of the training pool held out as a validation set, in [0, 1); 0 (the
            default) holds out nothing. It is drawn before the resampling to ``minority_share``
            (so it is the same at every share and training size of a seed), stratified by
            (group, label) so that its group shares and label rates are the pool's (to within one
            example), from its own random stream, and it is never resampled. For CelebA's
            protocol the pool is what is left after the test set (and, with identities, the
            validation set is drawn by person too; see ``dataset.celeba``). Model selection
            (``training.select``) and repair methods may use it, and nothing computed from it is
            charged to ε; under privacy that needs ``validation_public: true``.
        preprocessing: how the tabular features are scaled and encoded (``dataset.preprocessing``):
            "public" (numeric columns clipped to public bounds and mapped to [-1, 1], categories
            one-hot over documented lists, RUNNER's bins between public bounds: nothing is read
            off a row, so nothing escapes ε), "fitted" (standardized with the training rows' mean
            and standard deviation, categories of the training pool, RUNNER's deciles: statistics
            of private rows; under privacy the run warns and is marked not private) or "auto"
            (the default: public under privacy.mode dpsgd or dpfedavg, fitted without privacy).
            Tabular data sets only; every run records what it applied in preprocessing.json.
        validation_public: declare the validation split public. It is drawn from the same
            private pool as the training set, and under privacy whatever reads it (the ``val/``
            metrics, ``training.select``, a repair method's public form) reads it without noise,
            outside ε; so a private run with a validation split (``val_fraction`` > 0, or
            ``adult.protocol: runner``) must declare it: true, or the config is refused. The run's
            summary lists it under ``privacy/public_data``. Ignored without privacy.
        settings: the data set's own settings, the sub-section named after it (``data.celeba``:
            split, image_size, cache_dir, test_size; ``data.adult``: protocol), as repair methods
            have ``fairness.<method>``: its raw mapping (None when absent) as read; once
            :func:`training.validation.validate` has checked the config, the settings dataclass
            its builder declares (``Settings``, whose docstring documents the keys; the defaults
            when absent; None for a data set without settings of its own).
        sections: the other data sets' sub-sections as read (raw), for the validation step to
            check (a setting of a data set the run does not use is refused); empty once checked.
            Not compared, not written.
    """

    name: str = "adult"
    root: str | None = None
    target: str = "income"
    protected: str = "sex"
    minority_value: str = "Female"
    minority_share: float | None = 0.1
    train_size: int | None = None
    val_fraction: float = 0.0
    preprocessing: str = "auto"
    validation_public: bool = False
    settings: Any = None
    sections: dict[str, Any] = field(default_factory=dict, compare=False, repr=False,
                                     metadata=NOT_A_KEY)

    def validate(self) -> None:
        if self.minority_share is not None:
            check(0 < self.minority_share < 1, "data.minority_share", self.minority_share,
                   "a number strictly between 0 and 1, or null to keep the data's own share")
        check(self.train_size is None or self.train_size > 0, "data.train_size", self.train_size,
              "a positive integer or null")
        check(0 <= self.val_fraction < 1, "data.val_fraction", self.val_fraction,
               "a number in [0, 1): the share of the training pool held out for validation")
        one_of("data.preprocessing", self.preprocessing, PREPROCESSING_MODES)

    @property
    def has_validation(self) -> bool:
        """Whether the data set built from this config holds a validation split: one drawn by
        ``val_fraction``, or one its own settings bring (``brings_validation``: Adult's RUNNER
        protocols). Read on a checked config, whose settings are typed."""
        return self.val_fraction > 0 or bool(getattr(self.settings, "brings_validation", False))

    def to_dict(self) -> dict[str, Any]:
        """The section as YAML holds it: the data set's own settings as ``data.<name>``."""
        out = {f.name: getattr(self, f.name) for f in yaml_fields(DataConfig)}
        if self.settings is not None and (not dataclasses.is_dataclass(self.settings)
                                          or dataclasses.fields(self.settings)):
            out[self.name] = settings_mapping(self.settings)
        return out


def build_data(raw: Any, key: str = "data") -> DataConfig:
    """Build :class:`DataConfig` from its YAML mapping: its keys, and beside them the data sets'
    own sub-sections (``data.celeba: {...}``), kept raw until the validation step types them."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: got {shown(raw)}; expected a mapping of the section's keys.")
    name = raw.get("name", DataConfig.name)
    own, settings, others = split_sections(raw, DataConfig, name if isinstance(name, str) else "")
    config = build_dataclass(DataConfig, own, prefix=f"{key}.")
    return dataclasses.replace(config, settings=settings, sections=others)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network, built by name from ``models.MODELS``.

    Attributes:
        name: "mlp", "cnn" or "resnet18".
        hidden: hidden layer sizes of the MLP (RUNNER's released model has two layers of 200).
        width: channels of the first stage of the convolutional models.
        weights: optional local file of pretrained weights (a state dict), loaded with
            ``torch.load(weights_only=True)``.
        activation: the MLP's hidden activation, "relu" (the default) or "tanh" (fair-dp's MLP,
            ``configs/dp_mitigation_adult.yaml``); the convolutional models use ReLU.
        channels_last: train a convolutional model (cnn, resnet18) and its inputs in the
            channels-last memory format (faster convolutions on GPUs, above all under bf16); the
            same numbers up to float rounding. The MLP (no images) and DP-FedAvg refuse it.
    """

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [200])
    width: int = 64
    weights: str | None = None
    activation: str = "relu"
    channels_last: bool = False

    def validate(self) -> None:
        check(all(h > 0 for h in self.hidden), "model.hidden", self.hidden,
               "a list of positive layer sizes, e.g. [200]")
        check(self.width > 0, "model.width", self.width, "a positive integer")
        one_of("model.activation", self.activation, ACTIVATIONS)
        check(self.activation == "relu" or self.name == "mlp", "model.activation",
               self.activation, f"relu for model.name {self.name!r} (only the MLP has a choice)")
        check(not self.channels_last or self.name != "mlp", "model.channels_last",
               self.channels_last, "false for model.name 'mlp' (it has no image channels)")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Optimization, the same for every privacy mode.

    Attributes:
        epochs: passes over the training set (centralized modes).
        batch_size: examples per step. Under Poisson sampling (DP-SGD) each example joins a step
            with probability q = 1 / ceil(N / batch_size), Opacus' definition, one step per batch
            of a plain epoch; so the expected batch q·N is a little under batch_size when N is not
            a multiple of it.
        optimizer: "adam" or "sgd".
        lr: learning rate.
        weight_decay: L2 penalty applied by the optimizer.
        momentum: SGD momentum (ignored by Adam).
        eval_batch_size: examples per forward pass at evaluation (memory only; no effect on results).
        select: which evaluated unit (epoch, or federated evaluation round) gives the final model:
            "last"; "best_val_gap", the smallest validation gap of ``fairness.mode``
            (``val/dp_gap`` for dp, ``val/eo_gap``, the TPR gap, for eo); "best_val_dp_gap",
            "best_val_eo_gap", "best_val_eodds_gap" (the larger of the TPR and FPR gaps:
            fairlearn's ``equalized_odds_difference``, which RUNNER's released code selects by
            under its eo target) or "best_val_eodds_sum" (their sum, the gap RUNNER's paper
            reports), whatever the target; or "best_val_ap", the largest
            ``val/average_precision``. Every rule but "last" and "best_val_ap" leaves out the
            first evaluated unit when there are two or more (RUNNER's released code drops its
            first epoch: an almost untrained model predicts one class for everyone and has a gap
            near zero). Ties go to the earlier unit. The chosen unit's model and test scores
            become the run's final ones (summary.json, predictions.csv, intervals,
            model_final.pt; ``select/unit`` says which). Anything but "last" needs a validation
            split (``data.val_fraction`` > 0, or an Adult RUNNER protocol). Selection reads only the
            validation set (which a private run must declare public, ``data.validation_public``)
            and models that are already DP outputs, so it costs no privacy; ε is the whole run's.
        select_skip_constant: leave out of the selection every unit whose validation decisions
            are all one class (``val/constant_prediction``), so that a gap of 0 by construction
            is never chosen. A deviation from RUNNER's released rule, which keeps such epochs;
            false by default and in the RUNNER configs. When every candidate is constant, the
            rule falls back to all of them, with a warning.
        batches: how each step's examples are drawn (``training.batches.BATCHES``):
            "shuffled", shuffled passes over the training set cut into batches of ``batch_size``
            (Poisson batches of expected size ``batch_size`` under DP-SGD); "group_balanced",
            ``batch_size`` / 2 examples from each group every step; "cell_balanced",
            ``batch_size`` / 4 from each group x label cell every step; "uniform",
            ``batch_size`` examples drawn uniformly from the whole training set every step.
            The last three draw without replacement within a step and independently across
            steps, as RUNNER's released code does (group-balanced for every method under its
            dp target, cell-balanced for GapReg and RUNNER under eo, uniform for Vanilla under
            eo); a small cell is then seen many times per epoch. They are non-private only: their
            batches are not Poisson samples, so DP-SGD's accounting would not hold.
        steps_per_epoch: optimizer steps in an epoch; null (the default): one pass, ceil(N /
            ``batch_size``) steps. A number makes every epoch that many steps, each a freshly drawn
            batch (RUNNER's released code: 100): "shuffled" batches come from fresh shuffled passes,
            cut after that many steps; under DP-SGD each step is a Poisson sample at the same
            sample rate q = 1 / ceil(N / ``batch_size``), and the accountant counts steps, so
            ε is that of ``epochs`` x ``steps_per_epoch`` steps at q (and ``target_epsilon``
            solves σ for that many). DP-FedAvg trains in rounds and refuses it.
        pad_batches: static shapes under DP-SGD (``privacy.engine: fast``, flat clipping, a
            method that leaves the training step alone): each Poisson batch is forwarded as
            physical batches of ``physical_batch_size`` rows, the padding masked out of the loss,
            norms and clipped sum; a batch over that size is split, never truncated (the
            argument is in ``privacy.fast_dpsgd``'s docstring). The same update as unpadded up to
            float rounding; what it buys is fixed shapes for ``compile`` and CUDA graphs.
        physical_batch_size: the physical batch under ``pad_batches``; null (the default): the
            expected batch plus 4 standard deviations of its binomial, rounded up to a multiple
            of 8 (``privacy.fast_dpsgd.physical_capacity``).
        compile: run the training forward pass through ``torch.compile`` (and, with
            ``pad_batches``, the engine's clipping of each physical batch). Under DP-SGD it needs
            ``pad_batches`` (every new Poisson batch size would compile again). Compiling takes
            seconds to minutes at the start of the run; the results equal eager ones up to float
            rounding.
        precision: "fp32" (the default) or "bf16": the training forward and backward under bf16
            autocast on the run's device (parameters, optimizer, noise and evaluation stay fp32).
            Under DP-SGD (fast engine only) the per-example norms, clipping factors and clipped
            sums are computed in fp32 from the bf16 pass's records, so every example's clipped
            contribution stays within ``privacy.max_grad_norm``. A GPU without bf16 refuses it.
    """

    epochs: int = 5
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    eval_batch_size: int = 4096
    select: str = "last"
    select_skip_constant: bool = False
    batches: str = "shuffled"
    steps_per_epoch: int | None = None
    pad_batches: bool = False
    physical_batch_size: int | None = None
    compile: bool = False
    precision: str = "fp32"

    def validate(self) -> None:
        check(self.epochs > 0, "training.epochs", self.epochs, "a positive integer")
        one_of("training.precision", self.precision, PRECISIONS)
        check(self.physical_batch_size is None or self.physical_batch_size > 0,
              "training.physical_batch_size", self.physical_batch_size,
              "a positive integer, or null for the expected batch plus 4 standard deviations")
        check(self.physical_batch_size is None or self.pad_batches,
              "training.physical_batch_size", self.physical_batch_size,
              "null unless training.pad_batches is true (it sizes the padded batches)")
        one_of("training.select", self.select, tuple(MODEL_SELECTIONS))
        check(self.steps_per_epoch is None or self.steps_per_epoch > 0, "training.steps_per_epoch",
               self.steps_per_epoch, "a positive integer, or null for one pass over the training set")
        check(self.batch_size > 0, "training.batch_size", self.batch_size, "a positive integer")
        check(self.lr > 0, "training.lr", self.lr, "a positive number")
        check(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "a number >= 0")
        check(0 <= self.momentum < 1, "training.momentum", self.momentum, "a number in [0, 1)")
        check(self.eval_batch_size > 0, "training.eval_batch_size", self.eval_batch_size,
               "a positive integer")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """Differential privacy, in Opacus' vocabulary.

    Attributes:
        mode: "none" (non-private twin), "dpsgd" (example-level DP-SGD, Abadi et al. 2016) or
            "dpfedavg" (user-level DP-FedAvg, McMahan et al. 2018).
        noise_multiplier: σ, the noise standard deviation relative to ``max_grad_norm``. Give this
            or ``target_epsilon``, not both.
        target_epsilon: the ε to reach at the end of training; σ is then chosen by the accountant.
        delta: δ of (ε, δ)-DP; keep it well below 1 / (training set size).
        max_grad_norm: the clipping bound C on each example's gradient (each client's update
            under DP-FedAvg).
        accountant: "rdp" (Mironov 2017) or "prv" (Gopi et al. 2021), Opacus' implementations.
        poisson_sampling: sample each batch by independent inclusion of every example, the sampling
            the accountants' guarantee assumes. Turning it off (DP-SGD only) gives shuffled
            fixed-size batches, for which the reported ε is NOT a guarantee: the accountant's
            amplification by subsampling does not hold for them. Such a run warns and its summary
            says ``privacy/accounting_assumption: poisson_violated``.
        secure_rng: draw the batch sampling and the DP noise from the operating system's
            cryptographic generator (privacy.noise) instead of streams seeded from ``seed``. A
            reproducible run's noise can be replayed by anyone holding its seed (in config.yaml),
            so a model meant for release needs this; such a run cannot be reproduced, and its
            summary says ``privacy/secure_rng: true``. Ignored when ``mode`` is none.
        counts_noise_multiplier: σ of the Gaussian mechanism that releases the training set's four
            (group, label) counts when a repair method needs them under DP-SGD (reweighing's
            weights, the group shares of gapreg's and runner's per-example forms;
            :mod:`privacy.releases`): each count gets N(0, σ²) noise, its cost is composed into ε
            and logged as ``privacy/epsilon_parts/counts``. Unused when no method asks.
        engine: the DP-SGD implementation, a name of ``privacy.ENGINES``: "fast" (the default,
            this project's book-keeping engine, :mod:`privacy.fast_dpsgd`: the same algorithm and
            accountant, several times faster; the registry's layer types only) or "opacus"
            (Opacus' per-sample-gradient hooks, the reference; any layer Opacus supports).
            DP-SGD only.
        individual_accounting: also account each example's own privacy loss from its clipped
            gradient norm (DP-SGD), or each client's from its clipped update norm, carried by each
            of its examples (DP-FedAvg), after Yu et al. (TMLR 2023), :mod:`privacy.individual`:
            individual_privacy.csv and ``privacy/individual_epsilon/…`` in summary.json (per
            group over the examples in both modes). A diagnostic computed from the private data,
            not private itself; it does not change the training or the run's ε. Ignored when
            ``mode`` is none (a non-private run spends no privacy), so a grid's non-private twins
            can share the setting with its private points.
        individual_every: the norms are computed every this many of the trainer's units and held
            for the steps in between: epochs under DP-SGD (a pass over the whole training set),
            ROUNDS under DP-FedAvg (a pass training every client once from the global model, about
            1/``federated.client_sample_rate`` rounds' worth of local training). null (the
            default): once per epoch's worth of data in both modes, 1 epoch under DP-SGD and
            ⌈1/q⌉ rounds under DP-FedAvg (in which every client is expected to train once), which
            keeps the passes' cost near a tenth to a third of the training's.
        clipping: the clipping rule, a name of ``privacy.clipping.RULES`` (:mod:`privacy.clipping`
            says what each does, its sensitivity and its releases): "flat" (the default, DP-SGD's
            and DP-FedAvg's own clipping at ``max_grad_norm``), "dpsgd_f" (a bound per group, Xu
            et al. 2021), "global" and "global_adapt" (scaling by C/Z, Esipova et al. 2023),
            "adaptive" (the bound tracks a private quantile of the norms, Andrew et al. 2021),
            "bounded_adaptive" (the same within bounds, Zhao et al. 2025) or "automatic"
            (normalization, Bu et al. 2023). A rule's settings are a sub-section named after it,
            checked as strictly as any section: ``privacy: {clipping: global_adapt, global_adapt:
            {z: 50, bits_noise_multiplier: 10, lr_z: 0.1, threshold: 1}}``; the resolved config
            holds the chosen rule's. A rule's per-step releases are composed into ε (each step is
            one sampled Gaussian mechanism of the effective noise multiplier), listed in
            ``privacy/epsilon_parts/clipping_*``, and a ``target_epsilon`` solves for
            ``noise_multiplier`` with them included. Rules other than flat need a private mode,
            the fast engine under DP-SGD, and no individual accounting; under DP-FedAvg only
            adaptive and bounded_adaptive apply (to client updates). Each run then logs
            ``dp/clip_bound/group=…`` (the bound in force, mean over the epoch's steps),
            ``dp/noise_bound`` (the sum's sensitivity) and, for the global rules,
            ``dp/clip_threshold`` (Z).
        clipping_settings: the chosen rule's settings, from ``privacy.<clipping>``: its raw mapping
            (None when absent) as read, its settings dataclass (whose docstring documents the keys;
            the rule's defaults when absent, None for a rule without settings) once
            :func:`training.validation.validate` has checked the config.
        clipping_sections: the other rules' sub-sections as read (raw), for the validation step to
            check; empty once checked. Not compared, not written.
        paired_streams: false (the default): every point of a grid draws its own batches, noise
            and initialization (the run streams of :mod:`utils.seeding` are keyed by the seed
            and every config value that changes what is trained). true: common random numbers
            across noise levels: runs that differ only in ``noise_multiplier`` or
            ``target_epsilon`` draw the same batches, initialization and N(0, 1) noise (each
            scaled by its own σ), for lower-variance comparisons between noise levels. Two
            released models of such runs reveal their clipped gradient sums, so each run's ε
            holds for releasing one of them alone: its summary.json says so
            (``privacy/paired_streams``, a warning) and the report counts their combined
            release as covered by no ε.
    """

    mode: str = "none"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    poisson_sampling: bool = True
    secure_rng: bool = False
    counts_noise_multiplier: float = 10.0
    engine: str = "fast"
    individual_accounting: bool = False
    individual_every: int | None = None
    clipping: str = "flat"
    clipping_settings: Any = None
    paired_streams: bool = False
    clipping_sections: dict[str, Any] = field(default_factory=dict, compare=False, repr=False,
                                              metadata=NOT_A_KEY)

    @property
    def private(self) -> bool:
        return self.mode != "none"

    @property
    def accounts_individuals(self) -> bool:
        """Whether this run accounts each example's (client's) own privacy loss: asked for, and
        private (``individual_accounting`` is ignored when ``mode`` is none)."""
        return self.individual_accounting and self.private

    def validate(self) -> None:
        one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
        check(0 < self.delta < 1, "privacy.delta", self.delta, "a number strictly between 0 and 1")
        check(self.max_grad_norm > 0, "privacy.max_grad_norm", self.max_grad_norm, "a positive number")
        if self.noise_multiplier is not None:
            check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier,
                   "a number >= 0")
        if self.target_epsilon is not None:
            check(self.target_epsilon > 0, "privacy.target_epsilon", self.target_epsilon,
                   "a positive number")
        check(self.counts_noise_multiplier > 0, "privacy.counts_noise_multiplier",
               self.counts_noise_multiplier, "a positive number")
        if self.secure_rng and not self.poisson_sampling:
            raise ConfigError("privacy.secure_rng: true needs privacy.poisson_sampling: true (the "
                              "secure sampler draws Poisson batches). Set poisson_sampling: true.")
        if self.individual_every is not None:
            check(self.individual_every > 0, "privacy.individual_every", self.individual_every,
                   "a positive integer, or null (once per epoch's worth of data)")
        if self.accounts_individuals and self.noise_multiplier == 0:
            raise ConfigError(INDIVIDUAL_NEEDS_NOISE)

    def check_noise_level(self) -> None:
        """A private mode needs exactly one of ``noise_multiplier`` and ``target_epsilon``.
        Checked by the validation step once ``mode`` is known to be a registered mode (a misspelt
        one is named as such, not asked for a noise level)."""
        if self.private and self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError(f"privacy.mode {self.mode!r} {NEEDS_NOISE_OR_TARGET}: both are null. Set "
                              f"one of them, e.g. privacy.target_epsilon: 3.0 or "
                              f"privacy.noise_multiplier: 1.0.")
        if self.private and self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ConfigError(
                f"privacy.mode {self.mode!r} needs exactly one of privacy.noise_multiplier and "
                f"privacy.target_epsilon; got noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}. Set the other one to null."
            )
    def to_dict(self) -> dict[str, Any]:
        """The section as YAML holds it: the chosen rule's settings as ``privacy.<clipping>``."""
        out = {f.name: getattr(self, f.name) for f in yaml_fields(PrivacyConfig)}
        settings = self.clipping_settings
        if settings is not None and (not dataclasses.is_dataclass(settings)
                                     or dataclasses.fields(settings)):
            out[self.clipping] = settings_mapping(settings)
        return out


def split_sections(raw: Mapping[str, Any], cls: type, chosen: str) -> tuple[dict, Any, dict]:
    """A section's mapping split into its own keys, the ``chosen`` entry's settings sub-section
    (None when absent) and every other sub-section, as read: which names are entries, and what
    their settings hold, the registries say (:mod:`training.validation`). A sub-section given as
    null stays among the others, for the validation step to refuse."""
    names = {f.name for f in yaml_fields(cls)}
    own = {k: v for k, v in raw.items() if k in names}
    others = {k: v for k, v in raw.items() if k not in names}
    settings = others.pop(chosen) if others.get(chosen) is not None else None
    return own, settings, others


def build_privacy(raw: Any, key: str = "privacy") -> PrivacyConfig:
    """Build :class:`PrivacyConfig` from its YAML mapping: its keys, and beside them the clipping
    rules' settings sections (``privacy.dpsgd_f: {...}``), kept raw. Sections of rules other than
    the chosen one may stand beside it (a grid that sweeps ``privacy.clipping``); the validation
    step checks them too, and only the chosen rule's lands in the checked config (its defaults
    when its section is absent)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: got {raw!r}; expected a mapping of the section's keys.")
    clipping = raw.get("clipping", PrivacyConfig.clipping)
    own, settings, others = split_sections(raw, PrivacyConfig, clipping if isinstance(clipping, str)
                                           else "")
    config = build_dataclass(PrivacyConfig, own, prefix=f"{key}.")
    return dataclasses.replace(config, clipping_settings=settings, clipping_sections=others)


@dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """Federated training (``privacy.mode: dpfedavg``).

    Attributes:
        num_clients: clients the training set is split into.
        client_sample_rate: q, the probability that a client takes part in a round (Poisson).
        local_epochs: local passes over a chosen client's data per round.
        rounds: communication rounds.
        client_lr: local SGD learning rate.
        server_lr: step size applied to the aggregated update.
        server_momentum: momentum of the server's update (0 = plain FedAvg).
        partition: "iid", "dirichlet" (labels skewed by ``dirichlet_alpha``) or "by_group" (the
            minority held by as few clients as possible).
        dirichlet_alpha: concentration of the label Dirichlet; smaller is more skewed.
        eval_every: evaluate the global model every this many rounds.
    """

    num_clients: int = 100
    client_sample_rate: float = 0.1
    local_epochs: int = 1
    rounds: int = 200
    client_lr: float = 0.05
    server_lr: float = 1.0
    server_momentum: float = 0.0
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    eval_every: int = 10

    def validate(self) -> None:
        check(self.num_clients > 0, "federated.num_clients", self.num_clients, "a positive integer")
        check(0 < self.client_sample_rate <= 1, "federated.client_sample_rate",
               self.client_sample_rate, "a number in (0, 1]")
        for key in ("local_epochs", "rounds", "eval_every"):
            check(getattr(self, key) > 0, f"federated.{key}", getattr(self, key), "a positive integer")
        for key in ("client_lr", "server_lr", "dirichlet_alpha"):
            check(getattr(self, key) > 0, f"federated.{key}", getattr(self, key), "a positive number")
        check(0 <= self.server_momentum < 1, "federated.server_momentum", self.server_momentum,
               "a number in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class FairnessConfig:
    """Fairness repair (``training.repair``): which method, for which target, with which settings.

    In YAML the method's own settings are a sub-section named after it, checked as strictly as any
    section: ``fairness: {method: runner, mode: dp, runner: {lam: 0.3, neuron_ratio: 0.5}}``.
    Sub-sections of other methods may stand beside it (a grid that sweeps ``fairness.method``);
    they are checked too, and only the chosen method's lands in the resolved config.

    Attributes:
        method: the repair method, a name of ``training.repair.METHODS`` ("none" is Vanilla
            training; "reweighing", "oversample", "gapreg", "runner", "roc", ...).
        mode: the fairness target, "dp" (demographic parity) or "eo" (equal opportunity /
            equalized odds): which gap a method reduces.
        settings: the chosen method's settings, from ``fairness.<method>``: its raw mapping as read,
            its settings dataclass (whose docstring documents the keys) once
            :func:`training.validation.validate` has checked the config; None when the section is
            absent and the defaults apply.
        public_examples: under DP-SGD, how many validation examples (the first ones of the
            validation split, itself a stratified random draw held out of training) the
            per-example forms of gapreg and runner read at every step for the gap's signs and
            runner's neuron selection; null reads the whole validation split. The validation
            split is public in this tool's threat model, like the test set.
        sections: the other methods' sub-sections as read (raw), for the validation step to
            check; empty once checked. Not compared, not written.
        registered: the registered method class, set by the validation step (None before it).
    """

    method: str = "none"
    mode: str = "dp"
    settings: Any = None
    public_examples: int | None = 2000
    sections: dict[str, Any] = field(default_factory=dict, compare=False, repr=False,
                                     metadata=NOT_A_KEY)
    registered: Any = field(default=None, compare=False, repr=False, metadata=NOT_A_KEY)

    def validate(self) -> None:
        one_of("fairness.mode", self.mode, FAIRNESS_TARGETS)
        if self.public_examples is not None:
            check(self.public_examples > 0, "fairness.public_examples", self.public_examples,
                   "a positive integer, or null for the whole validation split")

    def method_class(self):
        """The registered method class, as the validation step found it in
        ``training.repair.METHODS`` (this module asks no registry)."""
        if self.registered is None:
            raise ValueError(NOT_VALIDATED.format(what="fairness.method_class()"))
        return self.registered

    def resolved_settings(self):
        """The settings the method runs with: the configured ones, or its defaults."""
        return self.settings if self.settings is not None else self.method_class().Settings()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "mode": self.mode,
                               "public_examples": self.public_examples}
        if self.settings is not None and (not dataclasses.is_dataclass(self.settings)
                                          or dataclasses.fields(self.settings)):
            out[self.method] = settings_mapping(self.settings)
        return out


# The field of a section that holds its chosen entry's settings (YAML: a sub-section named after
# the entry), by section class.
SETTINGS_FIELDS: dict[type, str] = {DataConfig: "settings", PrivacyConfig: "clipping_settings",
                                    FairnessConfig: "settings"}


def build_fairness(raw: Any, key: str = "fairness") -> FairnessConfig:
    """Build :class:`FairnessConfig` from its YAML mapping (see its docstring for the shape); the
    methods' sub-sections stay raw until the validation step types them."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: got {shown(raw)}; expected a mapping of the section's keys.")
    method = _coerce(raw.get("method", "none"), str, f"{key}.method")
    mode = _coerce(raw.get("mode", "dp"), str, f"{key}.mode")
    common = {"public_examples": _coerce(raw["public_examples"], int | None,
                                         f"{key}.public_examples")
              } if "public_examples" in raw else {}
    _, settings, others = split_sections(raw, FairnessConfig, method)
    return FairnessConfig(method=method, mode=mode, settings=settings, sections=others, **common)


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """How the test set is scored.

    Attributes:
        threshold: a score at or above it predicts the positive class.
        bootstrap_resamples: resamples of the test set behind every ``_ci`` interval in
            summary.json (0 turns the intervals off).
        confidence: the intervals' confidence level.
    """

    threshold: float = 0.5
    bootstrap_resamples: int = 1000
    confidence: float = 0.95

    def validate(self) -> None:
        check(0 < self.threshold < 1, "evaluation.threshold", self.threshold, "a number in (0, 1)")
        check(self.bootstrap_resamples >= 0, "evaluation.bootstrap_resamples",
               self.bootstrap_resamples, "an integer >= 0")
        check(0 < self.confidence < 1, "evaluation.confidence", self.confidence, "a number in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    """Weights & Biases.

    Attributes:
        mode: "auto" (online when an API key is configured, offline otherwise), "online",
            "offline" or "disabled", as wandb defines them.
        project: wandb project.
        entity: wandb entity (team or user); null is wandb's default.
        group: groups runs in the dashboard (a grid's name); null for none.
    """

    mode: str = "auto"
    project: str = "dp-fairness"
    entity: str | None = None
    group: str | None = None

    def validate(self) -> None:
        one_of("logging.wandb.mode", self.mode, WANDB_MODES)


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """Where metrics go besides metrics.jsonl and summary.json (always written).

    Attributes:
        tensorboard: write TensorBoard event files under ``tb/``.
        wandb: Weights & Biases settings.
        progress: progress bars: "auto" (only on a terminal), "always" or "never".
        private_stats: record the statistics computed from the private training data without
            noise (``train/``, ``dp/``, ``data/``, ``federated/`` keys, ``trainer/info``,
            clients.csv; the list is ``utils.sink.NON_PRIVATE_PREFIXES``). They are diagnostics
            for the researcher, not covered by ε; false leaves them out of every record of the run
            (metrics.jsonl, TensorBoard, wandb, summary.json) for a run directory to be released,
            and withholds the seed (``seed: null`` in config.yaml, summary.json and wandb's config;
            ``--set seed=<withheld>`` in the recorded command lines); the checkpoints, removed
            when the run completes, keep it for resuming.
    """

    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: str = "auto"
    private_stats: bool = True

    def validate(self) -> None:
        self.wandb.validate()
        one_of("logging.progress", self.progress, ("auto", "always", "never"))


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment.

    Attributes:
        name: run directory name under ``output_dir``: one plain path component
            (:data:`NAME_EXPECTED`).
        seed: seeds data resampling, model initialization, sampling and noise (0 to 2**32 - 1).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        output_dir: where run directories are made (utils/rundir.py says what the tool may do
            there).
    """

    name: str = "run"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        check(is_plain_name(self.name), "name", self.name, NAME_EXPECTED)
        check(0 <= self.seed <= SEED_MAX, "seed", self.seed, SEED_EXPECTED)
        check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device",
               self.device, "auto, cpu, cuda or cuda:N")
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        # Rules across sections, and every name a registry owns: training.validation.

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = self.data.to_dict()
        out["privacy"] = self.privacy.to_dict()
        out["fairness"] = self.fairness.to_dict()
        return out


# --------------------------------------------------------------------------------------------------
# Building dataclasses from raw mappings


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {shown(value)}; expected a list of {_describe(item_type)}.")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is DataConfig:  # its data sets' sub-sections stay raw
        return build_data(value, key)
    if annotation is FairnessConfig:  # its methods' sub-sections stay raw
        return build_fairness(value, key)
    if annotation is PrivacyConfig:  # its rules' sub-sections stay raw
        return build_privacy(value, key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {shown(value)}; expected a mapping of the section's keys.")
        return build_dataclass(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {shown(value)}; expected true or false.")
    if annotation is float:
        number = None
        # bool is an int subclass: `lr: yes` must not become 1.0.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)  # PyYAML leaves "1e-3" a string
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: got {shown(value)}; expected a number.")
        try:
            number = float(number)
        except OverflowError:  # an int of hundreds of digits
            number = math.inf
        # Checked here, for every float key present and future: no key gives infinity or NaN a
        # meaning (an infinite target_epsilon or lr would otherwise pass `> 0` and run), and a
        # range check such as `0 < x < 1` lets NaN through because every comparison is False.
        if not math.isfinite(number):
            raise ConfigError(f"{key}: got {shown(value)}; {NON_FINITE_NUMBER}.")
        return number
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {shown(value)}; expected an integer.")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)  # CelebA attribute values such as 1 are read as ints
            if "\0" in text:
                # No name, path or value of the config can hold one; the OS would refuse a path.
                raise ConfigError(f"{key}: {NUL_IN_STRING}")
            return text
        hint = ""
        if isinstance(value, bool):
            # The YAML 1.1 reader turns unquoted yes/no/on/off/true/false into booleans, so a
            # user who wrote `off` sees False here and needs to know why.
            hint = " (YAML reads unquoted yes, no, on, off, true and false as booleans: quote the value)"
        raise ConfigError(f"{key}: got {shown(value)}; expected a string{hint}.")
    raise TypeError(f"no coercion for {annotation!r} at {key}")


def build_settings(value: Any, cls: type, key: str) -> Any:
    """A settings sub-section (``fairness.runner``) as the dataclass ``cls``, coerced and refused
    like any section (unknown keys named with the closest valid one); the validation step calls it
    with the class the registered entry declares."""
    return _coerce(value, cls, key)


def unknown_key_error(key: str, valid: list[str], prefix: str) -> ConfigError:
    if f"{prefix}{key}" in RETIRED_KEYS:  # a key the tool had: say what replaced it
        return ConfigError(RETIRED_KEYS[f"{prefix}{key}"][0])
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}'.{hint} Valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: "
        f"{', '.join(valid)}."
    )


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config class, once per class: it evaluates every annotation
    again on each call, and a grid builds thousands of configs."""
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from a mapping, refusing unknown keys and coercing every value."""
    hints = _type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise unknown_key_error(str(key), valid, prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


NEEDS_NOISE_OR_TARGET = "needs one of privacy.noise_multiplier and privacy.target_epsilon"


# --------------------------------------------------------------------------------------------------
# What --set may name, and the whole config from a mapping (the file and --set: utils.loader)


def override_children(cls: type) -> dict[str, Any]:
    """The keys ``--set`` may name inside section ``cls``, with their types. The fairness and
    privacy sections also hold sub-sections named after registered entries (``fairness.runner.lam``,
    ``privacy.global_adapt.z``), which are not among them: :func:`has_entry_sections` says where
    a name outside them is such a raw sub-section, for the validation step to check."""
    hints = _type_hints(cls)
    return {f.name: hints[f.name] for f in yaml_fields(cls)}


def has_entry_sections(cls: type) -> bool:
    """Whether section ``cls`` holds settings sub-sections named after registered entries."""
    return cls in SETTINGS_FIELDS


def config_from_mapping(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a raw mapping and check each section's own keys
    (types, ranges); :func:`training.validation.validate` checks the rest."""
    raw = {key: value for key, value in raw.items() if key != PROVENANCE_KEY}
    config = build_dataclass(ExperimentConfig, raw)
    config.validate()
    return config
