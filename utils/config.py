"""Typed, strict experiment configuration.

One frozen, keyword-only dataclass per YAML section (in the manner of jax_privacy's experiment
configs). Loading is strict: an unknown key anywhere is an error that names the dotted key and the
closest valid one, because a silently ignored typo (``privacy.noise_multipler``) would run a
different experiment from the one the researcher wrote down. Values are coerced explicitly from
their annotations, since PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``).

``load_config(path, overrides)`` is the one entry point: overrides (``--set privacy.delta=1e-6``)
are applied to the raw mapping *before* it is checked, so they pass through exactly the same checks
as the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError

PRIVACY_MODES = ("none", "dpsgd", "dpfedavg")
ACCOUNTANTS = ("rdp", "prv")
OPTIMIZERS = ("adam", "sgd")
WANDB_MODES = ("auto", "online", "offline", "disabled")
PARTITIONS = ("iid", "dirichlet", "by_group")
FAIRNESS_METHODS = ("none",)
DATA_SPLITS = ("protocol", "official")

# Keys a resolved config.yaml carries for provenance; reading such a file back ignores them.
PROVENANCE_KEY = "provenance"
# Sections that make a params file a grid of experiments (utils/sweep.py), not one experiment.
GRID_KEYS = frozenset({"sweep", "zip"})


def _check(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: got {value!r}; expected {expected}.")


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, key, value, "one of " + ", ".join(allowed))


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
        test_size: size of the balanced test set of CelebA's protocol (null: the source's default).
        split: CelebA only: "protocol" (balanced test set, then resampled training set, as in
            arXiv 2009.06389) or "official" (CelebA's own partition).
        image_size: side of the square images (CelebA: 128 or 64).
        cache_dir: where pre-processed image arrays are kept (null: ``{root}/cache``).
    """

    name: str = "adult"
    root: str | None = None
    target: str = "income"
    protected: str = "sex"
    minority_value: str = "Female"
    minority_share: float | None = 0.1
    train_size: int | None = None
    test_size: int | None = None
    split: str = "protocol"
    image_size: int = 128
    cache_dir: str | None = None

    def validate(self) -> None:
        if self.minority_share is not None:
            _check(0 < self.minority_share < 1, "data.minority_share", self.minority_share,
                   "a number strictly between 0 and 1, or null to keep the data's own share")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}", value, "a positive integer or null")
        _one_of("data.split", self.split, DATA_SPLITS)
        _check(self.image_size >= 32, "data.image_size", self.image_size, "at least 32 pixels")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network, built by name from ``models.MODELS``.

    Attributes:
        name: "mlp", "cnn" or "resnet18".
        hidden: hidden layer sizes of the MLP (the RUNNER paper uses one layer of 200 on Adult).
        width: channels of the first stage of the convolutional models.
        weights: optional local file of pretrained weights (a state dict), loaded with
            ``torch.load(weights_only=True)``.
    """

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [200])
    width: int = 64
    weights: str | None = None

    def validate(self) -> None:
        _check(all(h > 0 for h in self.hidden), "model.hidden", self.hidden,
               "a list of positive layer sizes, e.g. [200]")
        _check(self.width > 0, "model.width", self.width, "a positive integer")


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
    """

    epochs: int = 5
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    eval_batch_size: int = 4096

    def validate(self) -> None:
        _check(self.epochs > 0, "training.epochs", self.epochs, "a positive integer")
        _check(self.batch_size > 0, "training.batch_size", self.batch_size, "a positive integer")
        _one_of("training.optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0, "training.lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "training.momentum", self.momentum, "a number in [0, 1)")
        _check(self.eval_batch_size > 0, "training.eval_batch_size", self.eval_batch_size,
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
    """

    mode: str = "none"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    poisson_sampling: bool = True
    secure_rng: bool = False

    @property
    def private(self) -> bool:
        return self.mode != "none"

    def validate(self) -> None:
        _one_of("privacy.mode", self.mode, PRIVACY_MODES)
        _one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
        _check(0 < self.delta < 1, "privacy.delta", self.delta, "a number strictly between 0 and 1")
        _check(self.max_grad_norm > 0, "privacy.max_grad_norm", self.max_grad_norm, "a positive number")
        if self.noise_multiplier is not None:
            _check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier,
                   "a number >= 0")
        if self.target_epsilon is not None:
            _check(self.target_epsilon > 0, "privacy.target_epsilon", self.target_epsilon,
                   "a positive number")
        if self.secure_rng and not self.poisson_sampling:
            raise ConfigError("privacy.secure_rng: true needs privacy.poisson_sampling: true (the "
                              "secure sampler draws Poisson batches). Set poisson_sampling: true.")
        if self.private and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError(
                f"privacy.mode {self.mode!r} needs exactly one of privacy.noise_multiplier and "
                f"privacy.target_epsilon; got noise_multiplier={self.noise_multiplier!r}, "
                f"target_epsilon={self.target_epsilon!r}. Set the other one to null."
            )


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
        _check(self.num_clients > 0, "federated.num_clients", self.num_clients, "a positive integer")
        _check(0 < self.client_sample_rate <= 1, "federated.client_sample_rate",
               self.client_sample_rate, "a number in (0, 1]")
        for key in ("local_epochs", "rounds", "eval_every"):
            _check(getattr(self, key) > 0, f"federated.{key}", getattr(self, key), "a positive integer")
        for key in ("client_lr", "server_lr", "dirichlet_alpha"):
            _check(getattr(self, key) > 0, f"federated.{key}", getattr(self, key), "a positive number")
        _check(0 <= self.server_momentum < 1, "federated.server_momentum", self.server_momentum,
               "a number in [0, 1)")
        _one_of("federated.partition", self.partition, PARTITIONS)


@dataclass(frozen=True, kw_only=True)
class FairnessConfig:
    """Fairness repair method applied during training.

    Attributes:
        method: "none" (no repair is implemented yet; RUNNER and its baselines will register here).
        mode: the fairness notion the method targets ("dp" demographic parity, "eo" equal opportunity).
        lam: weight of the fairness term.
        neuron_ratio: share of neurons a neuron-level method acts on.
    """

    method: str = "none"
    mode: str = "dp"
    lam: float = 1.0
    neuron_ratio: float = 0.05

    def validate(self) -> None:
        _one_of("fairness.method", self.method, FAIRNESS_METHODS)
        _one_of("fairness.mode", self.mode, ("dp", "eo"))


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
        _check(0 < self.threshold < 1, "evaluation.threshold", self.threshold, "a number in (0, 1)")
        _check(self.bootstrap_resamples >= 0, "evaluation.bootstrap_resamples",
               self.bootstrap_resamples, "an integer >= 0")
        _check(0 < self.confidence < 1, "evaluation.confidence", self.confidence, "a number in (0, 1)")


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
        _one_of("logging.wandb.mode", self.mode, WANDB_MODES)


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
            (metrics.jsonl, TensorBoard, wandb, summary.json) for a run directory to be released.
    """

    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: str = "auto"
    private_stats: bool = True

    def validate(self) -> None:
        self.wandb.validate()
        _one_of("logging.progress", self.progress, ("auto", "always", "never"))


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment.

    Attributes:
        name: run directory name under ``output_dir``.
        seed: seeds data resampling, model initialization, sampling and noise.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        output_dir: where run directories are made.
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
        _check(bool(self.name) and re.fullmatch(r"[\w.=,+-]+", self.name) is not None, "name",
               self.name, "a non-empty directory name of letters, digits and . _ - = , +")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device",
               self.device, "auto, cpu, cuda or cuda:N")
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        if self.data.train_size is not None:
            _check(self.training.batch_size <= self.data.train_size, "training.batch_size",
                   self.training.batch_size, f"at most data.train_size ({self.data.train_size})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
            raise ConfigError(f"{key}: got {value!r}; expected a list of {_describe(item_type)}.")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping of the section's keys.")
        return build_dataclass(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected true or false.")
    if annotation is float:
        # bool is an int subclass: `lr: yes` must not become 1.0.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML leaves "1e-3" a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected a number.")
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
        raise ConfigError(f"{key}: got {value!r}; expected an integer.")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)  # CelebA attribute values such as 1 are read as ints
        raise ConfigError(f"{key}: got {value!r}; expected a string.")
    raise TypeError(f"no coercion for {annotation!r} at {key}")


def _unknown_key_error(key: str, valid: list[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{prefix}{key}'.{hint} Valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: "
        f"{', '.join(valid)}."
    )


def build_dataclass(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from a mapping, refusing unknown keys and coercing every value."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown_key_error(str(key), valid, prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# Files and overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} does not exist. Pass an existing YAML file, "
                          f"e.g. --params utils/params_adult.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {_yaml_problem(error)}. "
                          f"Fix the file's syntax there.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping of config sections, "
                          f"not a {type(raw).__name__}.")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"privacy.noise_multiplier=1.1"`` -> (["privacy", "noise_multiplier"], 1.1); VALUE is YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, "
                          f"e.g. --set privacy.noise_multiplier=1.1")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {_yaml_problem(error)}. "
                          f"Quote strings with special characters.") from None
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides to a raw mapping (a copy); unknown keys are refused."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        cls: Any = ExperimentConfig
        node = merged
        for depth, part in enumerate(path):
            valid = [f.name for f in dataclasses.fields(cls)]
            if part not in valid:
                raise _unknown_key_error(part, valid, "".join(p + "." for p in path[:depth]))
            if depth == len(path) - 1:
                node[part] = value
                break
            cls = typing.get_type_hints(cls)[part]
            if not dataclasses.is_dataclass(cls):
                raise ConfigError(f"--set {text!r}: '{'.'.join(path[:depth + 1])}' is a value, "
                                  f"not a section.")
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
    return merged


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {key: _deep_copy(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(value) for value in raw]
    return raw


def config_from_mapping(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and check an :class:`ExperimentConfig` from a raw mapping."""
    raw = {key: value for key, value in raw.items() if key != PROVENANCE_KEY}
    config = build_dataclass(ExperimentConfig, raw)
    config.validate()
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read ``path``, apply ``--set`` overrides, and return the checked config.

    A file in the flat format of the original code (arXiv 2009.06389) is first translated to the
    nested format, which is printed to stderr once (``utils.legacy``); overrides then use nested keys.
    """
    # Imported here: utils.legacy builds on this module's dataclasses.
    from utils.legacy import is_legacy, translate_legacy

    raw = read_yaml(path)
    if GRID_KEYS & raw.keys():
        raise ConfigError(f"params file {str(path)!r} is a grid (it has a sweep: or zip: section), "
                          f"not one experiment. Run it with running.py, or load its points with "
                          f"utils.sweep.load_grid.")
    if is_legacy(raw):
        raw = translate_legacy(raw, source=path)
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_mapping(raw)
