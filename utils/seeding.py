"""Every random stream of a run, each derived from the run's seed for one purpose alone.

Differential privacy's accounting assumes that which examples a step samples is independent of the
noise it adds. Two generators seeded with the same number walk the same stream, and the code this
module replaces did exactly that: Opacus' Poisson sampler and its noise (torch's global generator)
were both seeded with ``seed``, so the noise was the sampler's uniform draws at a fixed offset and
the batches could be read off the noise and the initial weights (tests/test_random_streams.py).
So every purpose below has its own stream, from ``numpy.random.SeedSequence`` with the purpose's
tag mixed into the entropy: ``SeedSequence([tag, seed, *extra])``. SeedSequence hashes its entropy,
so streams of different tags (or seeds, or extras) are statistically independent, and a tag, once
given, never changes: renumbering one would change every run's draws of that purpose.

| purpose            | what draws from it                                   | generator           |
| ------------------ | ---------------------------------------------------- | ------------------- |
| resampling         | the imbalance resampler's cell orders                | NumPy, per cell     |
| celeba_test        | CelebA protocol: the balanced test set's order       | NumPy, per cell     |
| celeba_pool        | CelebA protocol: the training pool's order           | NumPy, per cell     |
| celeba_identity    | CelebA protocol: the order test identities are taken | NumPy               |
| compas_split       | COMPAS: the fixed test split (seed 0, not the run's) | NumPy, per cell     |
| german_split       | German credit: the fixed test split (likewise)       | NumPy, per cell     |
| lsac_split         | LSAC bar passage: the fixed test split (likewise)    | NumPy, per cell     |
| init               | model initialization (torch's global generator)      | torch global        |
| augmentation       | dropout, random flips (torch's global generator)     | torch global        |
| batch_sampling     | DP-SGD's Poisson batches, the non-private shuffle    | torch.Generator CPU |
| dp_noise           | DP-SGD's Gaussian noise                              | torch.Generator dev |
| dp_clipping        | a clipping rule's noisy counts (DP-SGD, DP-FedAvg)   | torch.Generator CPU |
| client_partition   | DP-FedAvg: which examples each client holds          | NumPy               |
| client_sampling    | DP-FedAvg: which clients take part in a round        | NumPy               |
| client_shuffle     | DP-FedAvg: each client's local batch order           | torch.Generator CPU |
| client_noise       | DP-FedAvg: the server's Gaussian noise               | torch.Generator dev |
| individual_orders  | DP-FedAvg individual ε pass: orders, augmentation    | torch.Generator CPU |
| bootstrap          | the test-set bootstrap behind every ``_ci`` interval | NumPy               |
| validation         | the validation split (``data.val_fraction``)         | NumPy, per cell     |
| celeba_val_identity| CelebA: the order validation identities are taken    | NumPy               |
| adult_runner_split | Adult, RUNNER protocol: the per-seed shuffle         | NumPy               |
| repair             | a fairness repair method's own choices (oversample)  | NumPy               |
| python_numpy_global| Python's ``random`` and NumPy's legacy global state  | seeded, not drawn   |

Model initialization and the augmentation draws go through torch's global generator (``nn.init``
and ``nn.Dropout`` take no generator); :func:`seed_global_generators` points it at the ``init``
stream before the model is built and at the ``augmentation`` stream right after, so neither shares
draws with anything else.

With ``privacy.secure_rng: true`` the two streams that the guarantee rests on, the sampling (of
batches or clients) and the noise, come from the operating system's cryptographic generator instead
(:mod:`privacy.noise`); they are then not reproducible, and nothing about them follows from the seed.
A reproducible run's seed is in its config.yaml: anyone holding it can replay its noise and batches
and subtract the noise from a released model, so a model meant for release needs ``secure_rng``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

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


def seed_sequence(seed: int, purpose: str, *extra: int) -> np.random.SeedSequence:
    """The seed sequence of ``purpose`` for the run ``seed`` (``extra`` splits it further, e.g.
    per (group, label) cell). Raises KeyError for a purpose missing from :data:`STREAMS`."""
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
