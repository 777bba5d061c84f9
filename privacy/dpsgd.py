"""DP-SGD through Opacus: a thin adapter, never a copy.

Opacus (Yousefpour et al. 2021) does the work of DP-SGD (Abadi et al. 2016): per-example gradients,
clipping each to ``max_grad_norm``, Gaussian noise of standard deviation ``noise_multiplier *
max_grad_norm`` on their sum, Poisson sampling of batches, and the accountant. This module only
wires the project's config to it and reads out what the run logs.

The training data stay on the device: Opacus samples *indices* (a DataLoader over ``arange(n)``),
and the trainer gathers the batch from the device tensors. The sampling is thus Opacus' own
``UniformWithReplacementSampler`` (each index included independently with probability q, the
sampling the accountant assumes), without a copy of the data per batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy.accounting import epsilon_of_history
from utils.config import PrivacyConfig


@dataclass
class PrivateTraining:
    """What Opacus hands back: the wrapped model, optimizer and sampler, and the engine.

    Attributes:
        module: the model wrapped to record per-example gradients (``.grad_sample``).
        optimizer: clips, adds noise and steps; it also records each step with the accountant.
        index_loader: yields batches of training indices, Poisson-sampled when configured.
        engine: the privacy engine holding the accountant.
        sample_rate: q, the inclusion probability of one example in one step.
    """

    module: GradSampleModule
    optimizer: DPOptimizer
    index_loader: DataLoader
    engine: PrivacyEngine
    sample_rate: float

    @property
    def noise_multiplier(self) -> float:
        return float(self.optimizer.noise_multiplier)

    @property
    def steps(self) -> int:
        return int(sum(num_steps for _, _, num_steps in self.engine.accountant.history))

    def epsilon(self, delta: float) -> float:
        """ε of every step the engine's accountant recorded (restored history included)."""
        accountant = self.engine.accountant
        return epsilon_of_history(accountant.history, delta=delta, accountant=accountant.mechanism())


def index_loader(num_examples: int, batch_size: int, generator: torch.Generator | None = None,
                 shuffle: bool = True) -> DataLoader:
    """Batches of example indices; Opacus turns it into a Poisson sampler with q = 1/len(loader)."""
    return DataLoader(TensorDataset(torch.arange(num_examples)), batch_size=batch_size,
                      shuffle=shuffle, generator=generator)


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 config: PrivacyConfig, epochs: int) -> PrivateTraining:
    """Wrap model, optimizer and index loader for DP-SGD as ``config`` says.

    With ``target_epsilon`` Opacus picks the smallest noise multiplier whose ε after ``epochs``
    epochs is at most the target; with ``noise_multiplier`` it is used as given.
    """
    # secure_mode would draw noise from a cryptographic RNG; it is off so that a run is reproducible
    # for its seed, which research needs. The noise is still Gaussian with the right variance.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=config.accountant, secure_mode=False)
    common = dict(module=model, optimizer=optimizer, data_loader=loader,
                  max_grad_norm=config.max_grad_norm, poisson_sampling=config.poisson_sampling,
                  loss_reduction="mean", grad_sample_mode="hooks")
    if config.target_epsilon is not None:
        with warnings.catch_warnings():
            # The noise search evaluates RDP at small σ candidates, where the best order is often
            # the largest tried; the bound is still valid, and the final σ is checked by get_epsilon.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            module, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
                target_epsilon=config.target_epsilon, target_delta=config.delta, epochs=epochs,
                **common)
    else:
        module, dp_optimizer, dp_loader = engine.make_private(
            noise_multiplier=config.noise_multiplier, **common)
    # Opacus' own definition of q: one step per batch of the original loader.
    sample_rate = 1.0 / len(loader)
    return PrivateTraining(module=module, optimizer=dp_optimizer, index_loader=dp_loader,
                           engine=engine, sample_rate=sample_rate)


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
