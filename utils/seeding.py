"""Every random stream of a run, each derived for one purpose alone from the seed and what it keys.

Differential privacy's accounting assumes that which examples a step samples is independent of the
noise it adds. Two generators seeded with the same number walk the same stream, and the code this
module replaces did exactly that: Opacus' Poisson sampler and its noise (torch's global generator)
were both seeded with ``seed``, so the noise was the sampler's uniform draws at a fixed offset and
the batches could be read off the noise and the initial weights (tests/test_random_streams.py).
So every purpose below has its own stream, from ``numpy.random.SeedSequence`` with the purpose's
tag mixed into the entropy: ``SeedSequence([tag, root, *extra])``. SeedSequence hashes its entropy,
so streams of different tags (or roots, or extras) are statistically independent, and a tag, once
given, never changes: renumbering one would change every run's draws of that purpose.

**What a stream is keyed by (its root).** Two kinds of purpose, two roots (:class:`RunStreams`):

- *Run streams* (the default): the root is :func:`run_key`, a hash of the seed and the run's
  identity (:func:`run_identity`: every resolved config value that changes what is trained). The
  code before this rule keyed them by the seed alone, so the points of a grid that share a seed (the
  same run at σ 1.35, 0.83 and 0.6, or at two minority shares with one ``train_size``) drew the same
  Poisson batches and the same N(0, 1) noise, scaled by their own σ: from two released models of
  one step the clipped gradient sum could be solved for, and no ε covered the pair. Keyed by the
  identity, no two points of a grid share batches, noise, initialization or any other draw
  (tests/test_grid_streams.py), while the same config and seed still reproduce exactly.
- *Data streams* (:data:`DATA_STREAMS`): the root is the seed alone. They decide which rows form
  the run's training, validation and (RUNNER's protocol) test sets, not anything a mechanism adds:
  sharing them across a grid's points is what makes the points comparable (the same validation set
  at every share, training sets nested across shares, the same training rows at every noise level
  of a seed), and the report's combined release (:mod:`grids.report`) composes every private run
  trained on a data set's rows as releases about that one pool. A selection of rows is no noise a
  release could be stripped of. The fixed test splits of COMPAS, German credit and LSAC use their
  own split seed, never the run's.

What the identity leaves out, because it changes where or how a run is recorded or evaluated, not
what is trained (:data:`IDENTITY_IGNORED`): ``name``, ``output_dir``, ``device`` (the same run on
a CPU and a GPU draws the same streams), the ``logging`` and ``evaluation`` sections,
``training.eval_batch_size``, ``training.select`` and ``training.select_skip_constant`` (which
evaluated model is kept: one training),
``privacy.individual_accounting`` and ``privacy.individual_every`` (a diagnostic that changes no
draw), ``data.cache_dir`` (``data.celeba.cache_dir`` now: moved keys count under their old
names), ``training.pad_batches``, ``training.physical_batch_size``, ``training.compile``,
``training.precision`` and ``model.channels_last`` (how the same steps are computed: the same
draws, other rounding, as on another device), a repair method that only post-processes the scores
(``roc``: it is counted as ``none``, so it decides on the very model its Vanilla twin trained), and
the seed itself (a root of its own). Every other key counts,
``data.root`` and ``model.weights`` included: two runs on other files must not share noise. Keys
at their default are left out of the hash, so a key the tool gains later does not change the
streams of configs that leave it at its default.

**The paired design** (``privacy.paired_streams: true``, opt-in): the identity also leaves out the
noise level (``privacy.noise_multiplier``, ``privacy.target_epsilon``), so the runs of a grid
that differ only in it draw the same batches, initialization and N(0, 1) noise: common random
numbers, which lower the variance of a comparison between noise levels. Two released models of
such runs reveal their clipped gradient sums, so their ε holds for one of them alone; each such run
says so in summary.json (``privacy/paired_streams``, a warning), and the report counts a pool
holding two of them as covered by no ε.

| purpose            | what draws from it                                   | root | generator           |
| ------------------ | ---------------------------------------------------- | ---- | ------------------- |
| resampling         | the imbalance resampler's cell orders                | data | NumPy, per cell     |
| celeba_test        | CelebA protocol: the balanced test set's order       | data | NumPy, per cell     |
| celeba_pool        | CelebA protocol: the training pool's order           | data | NumPy, per cell     |
| celeba_identity    | CelebA protocol: the order test identities are taken | data | NumPy               |
| compas_split       | COMPAS: the fixed test split (seed 0, not the run's) | fixed| NumPy, per cell     |
| german_split       | German credit: the fixed test split (likewise)       | fixed| NumPy, per cell     |
| lsac_split         | LSAC bar passage: the fixed test split (likewise)    | fixed| NumPy, per cell     |
| init               | model initialization (torch's global generator)      | run  | torch global        |
| augmentation       | dropout, random flips (torch's global generator)     | run  | torch global        |
| batch_sampling     | DP-SGD's Poisson batches, the non-private shuffle    | run  | torch.Generator CPU |
| dp_noise           | DP-SGD's Gaussian noise                              | run  | torch.Generator dev |
| dp_clipping        | a clipping rule's noisy counts (DP-SGD, DP-FedAvg)   | run  | torch.Generator CPU |
| client_partition   | DP-FedAvg: which examples each client holds          | run  | NumPy               |
| client_sampling    | DP-FedAvg: which clients take part in a round        | run  | NumPy               |
| client_shuffle     | DP-FedAvg: each client's local batch order           | run  | torch.Generator CPU |
| client_noise       | DP-FedAvg: the server's Gaussian noise               | run  | torch.Generator dev |
| individual_orders  | DP-FedAvg individual ε pass: orders, augmentation    | run  | torch.Generator CPU |
| bootstrap          | the test-set bootstrap behind every ``_ci`` interval | run  | NumPy               |
| validation         | the validation split (``data.val_fraction``)         | data | NumPy, per cell     |
| celeba_val_identity| CelebA: the order validation identities are taken    | data | NumPy               |
| adult_runner_split | Adult, RUNNER protocol: the per-seed shuffle         | data | NumPy               |
| repair             | a fairness repair method's own choices (oversample)  | run  | NumPy               |
| dp_counts          | the count release's Gaussian noise (privacy.releases)| run  | NumPy               |
| python_numpy_global| Python's ``random`` and NumPy's legacy global state  | run  | seeded, not drawn   |

Model initialization and the augmentation draws go through torch's global generator (``nn.init``
and ``nn.Dropout`` take no generator); :meth:`RunStreams.seed_global` points it at the ``init``
stream before the model is built and at the ``augmentation`` stream right after, so neither shares
draws with anything else.

With ``privacy.secure_rng: true`` the two streams that the guarantee rests on, the sampling (of
batches or clients) and the noise, come from the operating system's cryptographic generator instead
(:mod:`privacy.noise`); they are then not reproducible, and nothing about them follows from the seed.
A reproducible run's seed is in its config.yaml: anyone holding it can replay its noise and batches
and subtract the noise from a released model, so a model meant for release needs ``secure_rng``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

import numpy as np
import torch

from utils.sink import flatten

# purpose -> tag. The data streams keep the tags their modules used before this table existed,
# so data selections are unchanged; never renumber a tag.
STREAMS: dict[str, int] = {
    "resampling": 0x1B5A_7E01,
    "celeba_test": 0xCE1E_7E57,
    "celeba_pool": 0xCE1E_B001,
    "celeba_identity": 0xCE1E_1DE7,
    "compas_split": 0xC0_3A5,
    "german_split": 0x6E_4A5,
    "lsac_split": 0x15AC_5917,
    "init": 0x1417,
    "augmentation": 0xA065,
    "batch_sampling": 0xBA7C,
    "dp_noise": 0xD9_0153,
    "client_partition": 0xFED0,
    "client_sampling": 0xFED1,
    "client_shuffle": 0xFED2,
    "client_noise": 0xFED3,
    "individual_orders": 0xFED4,
    "bootstrap": 0xB007,
    "validation": 0x5A11_DA7E,
    "celeba_val_identity": 0xCE1E_5A1D,
    "adult_runner_split": 0xAD_0C0D,
    "repair": 0x4E9A14,
    "dp_counts": 0xD9_C047,
    "dp_clipping": 0xD9_C119,
    "python_numpy_global": 0x61_0BA1,
}


# The purposes whose root is the seed alone: they select the run's rows (module docstring).
DATA_STREAMS = frozenset({"resampling", "celeba_test", "celeba_pool", "celeba_identity",
                          "validation", "celeba_val_identity", "adult_runner_split"})

# Dotted config keys (or section prefixes ending in ".") that do not enter the run's identity:
# they change where or how a run is recorded or evaluated, not what is trained. Everything else
# does, including keys added to the config later.
IDENTITY_IGNORED = ("name", "seed", "output_dir", "device", "logging.", "evaluation.",
                    "training.eval_batch_size", "training.select", "training.select_skip_constant",
                    "privacy.individual_accounting",
                    "privacy.individual_every", "data.cache_dir",
                    # how the same steps are computed (rounding only, as the device):
                    "training.pad_batches", "training.physical_batch_size", "training.compile",
                    "training.precision", "model.channels_last")
# Left out as well under privacy.paired_streams: the noise level (common random numbers across σ).
PAIRED_IGNORED = ("privacy.noise_multiplier", "privacy.target_epsilon", "privacy.paired_streams")

PAIRED_STREAMS_WARNING = (
    "privacy.paired_streams: true: this run draws the same batches, initialization and N(0, 1) "
    "noise as every run of its grid that differs from it only in the noise level, so two such "
    "released models reveal their clipped gradient sums. Its epsilon holds for releasing one of "
    "them alone; releasing more than one voids it.")


def seed_sequence(seed: int, purpose: str, *extra: int) -> np.random.SeedSequence:
    """The seed sequence of ``purpose`` from the root ``seed`` (a run's seed for a data stream,
    its :func:`run_key` for a run stream, see :class:`RunStreams`; ``extra`` splits it further,
    e.g. per (group, label) cell). Raises KeyError for a purpose missing from :data:`STREAMS`."""
    return np.random.SeedSequence([STREAMS[purpose], int(seed), *map(int, extra)])


def stream_seed(seed: int, purpose: str, *extra: int) -> int:
    """A 63-bit integer seed of the stream, for generators that take one (torch's)."""
    return int(seed_sequence(seed, purpose, *extra).generate_state(1, dtype=np.uint64)[0] >> 1)


def numpy_generator(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    """A NumPy generator (PCG64) of the stream."""
    return np.random.default_rng(seed_sequence(seed, purpose, *extra))


def torch_generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator of the stream on ``device`` (the noise must be drawn where it is added)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose))


def seed_global_generators(seed: int, purpose: str) -> None:
    """Point torch's global generators (CPU and every CUDA device) at ``purpose``'s stream, and
    seed Python's ``random`` and NumPy's legacy global state from a stream of their own (nothing in
    the project draws from those two; a library that does gets a stream no other purpose uses)."""
    torch.manual_seed(stream_seed(seed, purpose))  # also seeds every CUDA device
    legacy = seed_sequence(seed, "python_numpy_global").generate_state(1)[0]  # uint32
    random.seed(int(legacy))
    np.random.seed(int(legacy))


def identity_settings(config: Any) -> dict[str, Any]:
    """The settings that make up the run's identity: the resolved config flattened to dotted
    keys, less :data:`IDENTITY_IGNORED` (and :data:`PAIRED_IGNORED` under
    ``privacy.paired_streams``) and less every key at its default value. Keys that moved into a
    data set's own sub-section (``data.celeba.image_size``) count under their old names with their
    old defaults (:func:`utils.legacy.historic_flat`), so no identity changed with the move. The
    config must be checked (:func:`training.validation.validate`): a repair method's settings
    are typed there."""
    from utils.config import ExperimentConfig
    from utils.legacy import historic_flat

    ignored = IDENTITY_IGNORED + (PAIRED_IGNORED if config.privacy.paired_streams else ())
    defaults = historic_flat(flatten(ExperimentConfig().to_dict()))
    # A method's own settings (fairness.<method>.*) have their defaults in its Settings class, and
    # are compared with the resolved ones so that writing a default out changes nothing.
    fairness = config.fairness
    settings = fairness.resolved_settings() if fairness.method != "none" else None
    flat = historic_flat(flatten(config.to_dict()))
    if settings is not None and fairness.method_class().only_postprocesses():
        # A method that only post-processes the scores (roc) trains what Vanilla trains.
        flat = {key: value for key, value in flat.items()
                if not key.startswith(f"fairness.{fairness.method}.")}
        flat["fairness.method"], settings = "none", None
    if settings is not None:
        method = f"fairness.{fairness.method}."
        flat = {key: value for key, value in flat.items() if not key.startswith(method)}
        flat.update({method + key: value for key, value in dataclasses.asdict(settings).items()})
        defaults.update({method + key: value for key, value in
                         dataclasses.asdict(type(settings)()).items()})
    return {key: value for key, value in sorted(flat.items())
            if not any(key == name or (name.endswith(".") and key.startswith(name))
                       for name in ignored)
            and not (key in defaults and defaults[key] == value)}


def run_identity(config: Any) -> str:
    """The run's identity: a SHA-256 (hex) of :func:`identity_settings`, the same for every run of
    the same experiment whatever its name, place or device. Recorded as ``streams/identity``."""
    text = json.dumps(identity_settings(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_key(config: Any) -> int:
    """The root of the run streams: 128 bits of a hash of the seed and :func:`run_identity`."""
    text = f"{int(config.seed)}:{run_identity(config)}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:32], 16)


class RunStreams:
    """The streams of one run: each purpose from its root (the seed for :data:`DATA_STREAMS`,
    :func:`run_key` for every other), as the module docstring sets out."""

    def __init__(self, config: Any):
        self.seed = int(config.seed)
        self.key = run_key(config)

    def root(self, purpose: str) -> int:
        """The root ``purpose``'s stream is derived from."""
        if purpose not in STREAMS:
            raise KeyError(purpose)
        return self.seed if purpose in DATA_STREAMS else self.key

    def sequence(self, purpose: str, *extra: int) -> np.random.SeedSequence:
        return seed_sequence(self.root(purpose), purpose, *extra)

    def numpy(self, purpose: str, *extra: int) -> np.random.Generator:
        return numpy_generator(self.root(purpose), purpose, *extra)

    def torch(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        return torch_generator(self.root(purpose), purpose, device)

    def torch_seed(self, purpose: str) -> int:
        return stream_seed(self.root(purpose), purpose)

    def seed_global(self, purpose: str) -> None:
        """:func:`seed_global_generators` from this run's root of ``purpose``."""
        seed_global_generators(self.root(purpose), purpose)



def resolve_device(name: str) -> torch.device:
    """``device`` from the config: auto picks CUDA when present; asking for absent CUDA is an error."""
    from utils.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: got {name!r} but no CUDA device is available here. "
                              f"Use device: auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: got {name!r} but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist (cuda:0 ...).")
    return device
