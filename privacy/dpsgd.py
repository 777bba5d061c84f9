"""DP-SGD through Opacus: a thin adapter, never a copy.

Opacus (Yousefpour et al. 2021) does the work of DP-SGD (Abadi et al. 2016): per-example gradients,
clipping each to ``max_grad_norm``, Gaussian noise of standard deviation ``noise_multiplier *
max_grad_norm`` on their sum, Poisson sampling of batches, and the accountant. This module only
wires the project's config to it and reads out what the run logs.

The training data stay on the device: Opacus samples *indices* (a DataLoader over ``arange(n)``),
and the trainer gathers the batch from the device tensors. The sampling is thus Opacus' own
``UniformWithReplacementSampler`` (each index included independently with probability q, the
sampling the accountant assumes), without a copy of the data per batch.

Randomness: the sampler draws from the generator the trainer gave the index loader (the run's
``batch_sampling`` stream) and the noise from a generator of its own (``dp_noise``), never torch's
global one, which also initialized the model (:mod:`utils.seeding` says why this matters). With
``privacy.secure_rng`` both come from the OS's cryptographic generator (:mod:`privacy.noise`):
batches from :class:`SecurePoissonSampler`, noise through :func:`_draw_noise_securely`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy.accounting import resolve_noise_multiplier
from privacy.clipping import NEEDS_FAST_ENGINE, Flat
from privacy.engine import AccountedSteps
from privacy.noise import SecureRandom, gaussian_noise
from privacy.releases import Release
from utils.config import PrivacyConfig
from utils.errors import ConfigError


@dataclass
class PrivateTraining(AccountedSteps):
    """What Opacus hands back: the wrapped model, optimizer and sampler, and the engine; a
    :class:`privacy.engine.PrivateEngine` (ε and its parts from :class:`privacy.engine.Accounted`).

    Attributes:
        module: the model wrapped to record per-example gradients (``.grad_sample``).
        optimizer: clips, adds noise and steps; it also records each step with the accountant.
        index_loader: yields batches of training indices, Poisson-sampled when configured.
        engine: the privacy engine holding the accountant.
        sample_rate: q, the inclusion probability of one example in one step.
        noise_generator: the seeded generator of the noise (its state goes into checkpoints), or
            None under ``secure_rng``, whose draws have no state to save.
        releases: the run's other releases of private statistics (:mod:`privacy.releases`),
            composed with the training steps in :meth:`epsilon`.
        clipping: the clipping rule, always flat: Opacus' optimizer clips flat, and the config
            refuses other rules with this engine.
    """

    module: GradSampleModule
    optimizer: DPOptimizer
    index_loader: DataLoader
    engine: PrivacyEngine
    sample_rate: float
    noise_generator: torch.Generator | None
    releases: list[Release]
    clipping: Flat
    step_releases = ()  # flat clipping releases nothing per step

    def batch_groups(self, minority: torch.Tensor) -> None:
        """Flat clipping reads no group label."""

    @property
    def noise_multiplier(self) -> float:
        return float(self.optimizer.noise_multiplier)

    @property
    def accountant(self):
        """The accountant recording every step ((σ, q, steps) history, saved in checkpoints)."""
        return self.engine.accountant

    def per_example_norms(self) -> torch.Tensor:
        """Each example's whole gradient norm before clipping, of the last backward pass."""
        return per_example_grad_norms(self.module)

    @contextlib.contextmanager
    def hooks_off(self):
        """Opacus records nothing while a repair method computes on public data."""
        self.module.disable_hooks()
        try:
            yield
        finally:
            self.module.enable_hooks()

    @property
    def accounted_noise_multiplier(self) -> float:
        """Flat clipping releases nothing per step: the accountant records σ itself."""
        return self.noise_multiplier

    @property
    def max_grad_norm(self) -> float:
        return float(self.optimizer.max_grad_norm)

    @property
    def expected_batch_size(self) -> float:
        return self.clipping.expected_batch_size

    def draw_noise(self) -> torch.Tensor:
        """One step's noise N(0, σ²C²), the draws Opacus' optimizer makes (one per parameter, in
        its parameters' order, from the ``dp_noise`` generator or the OS under ``secure_rng``),
        as one flat vector."""
        std = self.optimizer.noise_multiplier * self.optimizer.max_grad_norm
        source = self.noise_generator if self.noise_generator is not None else SecureRandom()
        params = self.optimizer.params
        if std == 0:  # as Opacus: zeros, no draw
            return torch.zeros(sum(p.numel() for p in params), device=params[0].device)
        return torch.cat([gaussian_noise(p, std, source).reshape(-1) for p in params])


class IndexLoader(DataLoader):
    """Batches ``(indices,)`` of example indices in a random order (one ``randperm`` from the
    generator per pass, cut into batches of ``batch_size``, the last one shorter), or in order.

    An epoch is one pass (``steps`` None), or ``steps`` batches (``training.steps_per_epoch``) cut
    from as many fresh passes as they need: every epoch starts a new pass, so an epoch's batches
    depend only on the generator's state at its start (what a checkpoint saves).

    A DataLoader, so that the DP engines can read its dataset, generator and one pass's length
    (:attr:`batches_per_pass`; Opacus' q is 1 / that); iterating it skips DataLoader's machinery,
    which fetched and collated every index one by one: a third of a small MLP's epoch.
    """

    def __init__(self, num_examples: int, batch_size: int, generator: torch.Generator | None,
                 shuffle: bool, steps: int | None = None):
        super().__init__(TensorDataset(torch.arange(num_examples)), batch_size=batch_size,
                         shuffle=shuffle, generator=generator)
        self.num_examples, self.shuffle, self.steps = num_examples, shuffle, steps
        self.batches_per_pass = -(-num_examples // batch_size)

    def __len__(self) -> int:
        return self.batches_per_pass if self.steps is None else self.steps

    def one_pass(self) -> IndexLoader:
        """This loader with one pass an epoch (what Opacus derives q from)."""
        return IndexLoader(self.num_examples, self.batch_size, self.generator, self.shuffle)

    def __iter__(self):
        produced = 0
        while self.num_examples > 0:
            order = (torch.randperm(self.num_examples, generator=self.generator) if self.shuffle
                     else torch.arange(self.num_examples))
            for batch in order.split(self.batch_size):
                yield (batch,)
                produced += 1
                if produced == len(self):
                    return


def index_loader(num_examples: int, batch_size: int, generator: torch.Generator | None = None,
                 shuffle: bool = True, steps: int | None = None) -> IndexLoader:
    """Batches of example indices (:class:`IndexLoader`)."""
    return IndexLoader(num_examples, batch_size, generator, shuffle, steps)


class SecurePoissonSampler:
    """Poisson batches from the OS's cryptographic generator: every step, each of the
    ``num_examples`` indices is included independently with probability ``sample_rate``, the
    sampling of Opacus' ``UniformWithReplacementSampler`` (and the accountant's assumption), with
    draws no seed can replay. ``steps`` batches make an epoch; a batch may be empty."""

    def __init__(self, num_examples: int, sample_rate: float, steps: int, source: SecureRandom):
        self.num_examples, self.sample_rate, self.steps, self.source = (
            num_examples, sample_rate, steps, source)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(self.source.uniform(self.num_examples) < self.sample_rate).tolist()


def _index_batch(rows: list[tuple[torch.Tensor]]) -> tuple[torch.Tensor]:
    """Collate (index,) rows into one index tensor; an empty batch gives an empty one."""
    return (torch.tensor([int(row[0]) for row in rows], dtype=torch.int64),)


def _draw_noise_securely(optimizer: DPOptimizer, source: SecureRandom) -> None:
    """Make ``optimizer`` draw its Gaussian noise from ``source``.

    Opacus' ``add_noise`` sets each parameter's ``grad`` to its clipped per-example sum plus
    N(0, (σC)²) noise from the optimizer's torch generator; this replacement keeps that contract
    (and Opacus' guard against noising a sum twice) and changes only where the draw comes from.
    The accountant still reads σ from the optimizer at every step.
    """
    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = source.gaussian(p.summed_grad.shape, std, device=p.summed_grad.device,
                                    dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 config: PrivacyConfig, epochs: int,
                 noise_generator: torch.Generator | None = None,
                 releases: list[Release] = (),
                 clipping_generator: torch.Generator | None = None) -> PrivateTraining:
    """Wrap model, optimizer and index loader for DP-SGD as ``config`` says.

    With ``target_epsilon`` the smallest noise multiplier is chosen whose ε after ``epochs``
    epochs of ``len(loader)`` steps, composed with ``releases``, is at most the target
    (:func:`privacy.accounting.resolve_noise_multiplier`, Opacus' search procedure); with
    ``noise_multiplier`` it is used as given.

    Args:
        loader: the index loader (:func:`index_loader`); under Poisson sampling Opacus replaces it
            by a Poisson sampler that inherits its generator, q = 1 / (batches of one pass), and
            an epoch is ``len(loader)`` steps (``training.steps_per_epoch``, or one pass).
        noise_generator: the noise's own seeded generator, on the model's device (the run's
            ``dp_noise`` stream). Required unless ``config.secure_rng``; it must not be the
            loader's generator, nor seeded like it.
        clipping_generator: unused (the fast engine's clipping rules draw from it); Opacus clips
            flat, which releases nothing.
    """
    if config.clipping != "flat":
        raise ConfigError(NEEDS_FAST_ENGINE.format(rule=config.clipping))
    secure = config.secure_rng
    if not secure and noise_generator is None:
        raise ValueError("a reproducible DP-SGD run needs its own noise generator")
    # Opacus' secure_mode needs torchcsprng; the project's secure path does not use it
    # (privacy.noise), so Opacus' engine always runs with secure_mode off.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=config.accountant, secure_mode=False)
    # Opacus' own definition of q: one step per batch of one pass of the original loader. An
    # epoch is len(loader) steps (one pass, or training.steps_per_epoch): Opacus is given a loader
    # of one pass, from which it derives q, and the epoch's length is set on what it returns.
    sample_rate = 1.0 / loader.batches_per_pass
    steps_per_epoch = len(loader)
    plain_loader, opacus_loader = loader, loader.one_pass()
    poisson_by_opacus = config.poisson_sampling
    if secure:
        source = SecureRandom()
        opacus_loader = DataLoader(loader.dataset, collate_fn=_index_batch, batch_sampler=
                                   SecurePoissonSampler(len(loader.dataset), sample_rate,
                                                        loader.batches_per_pass, source))
        poisson_by_opacus = False  # the loader already samples by Poisson, at the same q
    common = dict(module=model, optimizer=optimizer, data_loader=opacus_loader,
                  max_grad_norm=config.max_grad_norm, poisson_sampling=poisson_by_opacus,
                  loss_reduction="mean", grad_sample_mode="hooks",
                  noise_generator=None if secure else noise_generator)
    releases = list(releases)
    # σ for the epochs × len(loader) steps the run takes. (Opacus' own search counted
    # int(epochs / q) steps, which float rounding puts one short for some sizes: 3 epochs of 75
    # batches gave 224, so the last step took ε past the target. Every step is counted here.)
    sigma = resolve_noise_multiplier(
        noise_multiplier=config.noise_multiplier, target_epsilon=config.target_epsilon,
        delta=config.delta, sample_rate=sample_rate, steps=epochs * steps_per_epoch,
        accountant=config.accountant, releases=[release.history() for release in releases],
        release_keys=["privacy.counts_noise_multiplier"])
    module, dp_optimizer, dp_loader = engine.make_private(noise_multiplier=sigma, **common)
    if secure:
        _draw_noise_securely(dp_optimizer, source)
    if secure or config.poisson_sampling:
        # Opacus read q off a sampler of one pass; an epoch is steps_per_epoch of its batches
        # (both Poisson samplers take the number of batches they yield as their `steps`).
        dp_loader.batch_sampler.steps = steps_per_epoch
    else:  # fixed-size shuffled batches: our loader, with the epoch's length
        dp_loader = plain_loader
    return PrivateTraining(module=module, optimizer=dp_optimizer, index_loader=dp_loader,
                           engine=engine, sample_rate=sample_rate,
                           noise_generator=None if secure else noise_generator, releases=releases,
                           clipping=Flat(None, max_grad_norm=config.max_grad_norm,
                                         expected_batch_size=len(loader.dataset) * sample_rate))


def per_example_grad_norms(module: nn.Module) -> torch.Tensor:
    """L2 norm of each example's whole gradient, from the ``grad_sample`` Opacus recorded.

    This is the norm DP-SGD compares with ``max_grad_norm`` before clipping, read from the
    per-example gradients the backward pass already produced: no extra backward pass.
    """
    per_param = [torch.linalg.vector_norm(param.grad_sample.reshape(len(param.grad_sample), -1), dim=1)
                 for param in module.parameters()
                 if param.requires_grad and getattr(param, "grad_sample", None) is not None]
    if not per_param:
        raise RuntimeError("no per-example gradients recorded; is the model wrapped by Opacus?")
    return torch.linalg.vector_norm(torch.stack(per_param, dim=1), dim=1)
