"""DP-SGD invariants, in the style of Opacus' own tests, against independent references.

- zero noise and no effective clipping: a DP-SGD step is the non-private step;
- one example and a small bound: the applied gradient has exactly the bound's norm;
- per-example gradient norms equal a per-example loop's;
- the added noise has standard deviation σ·C (a chi-square test on many coordinates);
- ε for pinned (σ, q, steps, δ) is the accountant's, and the trainer reports exactly that;
- the per-group clip fractions are 0 with a huge bound and 1 with a tiny one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import stats
from torch import nn
from torch.nn import functional as F

from privacy import dpsgd
from privacy.accounting import epsilon_after, noise_for_epsilon
from training.experiment import build_components
from training.validation import validated_config
from utils.config import PrivacyConfig


def small_problem(n=64, d=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = (torch.rand(n, generator=generator) < 0.5).float()
    with torch.random.fork_rng(devices=[]):  # the same weights whichever tests ran before
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(d, 7), nn.ReLU(), nn.Linear(7, 1))
    return x, y, model


def dp_step(model, x, y, *, noise, bound, batch_size, lr=0.1):
    """One DP-SGD step through the project's adapter on the batch x[:batch_size] (no shuffling)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = dpsgd.index_loader(len(x), batch_size, shuffle=False)
    config = PrivacyConfig(mode="dpsgd", noise_multiplier=noise, max_grad_norm=bound,
                           poisson_sampling=False)
    private = dpsgd.make_private(model, optimizer, loader, config, epochs=1,
                                 noise_generator=torch.Generator().manual_seed(1))
    (indices,) = next(iter(private.index_loader))
    private.optimizer.zero_grad()
    loss = F.binary_cross_entropy_with_logits(private.module(x[indices]).squeeze(-1), y[indices])
    loss.backward()
    norms = dpsgd.per_example_grad_norms(private.module)
    private.optimizer.step()
    return private, norms


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_zero_noise_huge_bound_equals_plain_step():
    x, y, model = small_problem()
    reference = copy.deepcopy(model)
    dp_step(model, x, y, noise=0.0, bound=1e6, batch_size=len(x))

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    F.binary_cross_entropy_with_logits(reference(x).squeeze(-1), y).backward()
    optimizer.step()
    torch.testing.assert_close(flat_params(model), flat_params(reference), rtol=1e-5, atol=1e-7)


def test_single_example_gradient_is_clipped_to_exactly_the_bound():
    x, y, model = small_problem()
    before = flat_params(model)
    bound = 1e-3
    _, norms = dp_step(model, x, y, noise=0.0, bound=bound, batch_size=1, lr=1.0)
    assert norms.item() > 100 * bound  # the bound really bites
    applied = (before - flat_params(model)).norm().item()  # SGD with lr 1: the update is the gradient
    # Opacus scales by C / (norm + 1e-6), so the norm is C up to a relative 1e-6 / norm.
    assert applied == pytest.approx(bound, rel=5e-5)  # and float32 rounding of the update


def test_per_example_norms_equal_a_per_example_loop():
    x, y, model = small_problem(n=16)
    reference = copy.deepcopy(model)
    _, norms = dp_step(model, x, y, noise=0.0, bound=1e6, batch_size=len(x))
    loop = []
    for i in range(len(x)):
        reference.zero_grad()
        F.binary_cross_entropy_with_logits(reference(x[i:i + 1]).squeeze(-1), y[i:i + 1]).backward()
        loop.append(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]).norm())
    torch.testing.assert_close(norms, torch.stack(loop), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("secure_rng", [False, True])
def test_noise_has_standard_deviation_sigma_times_bound(secure_rng):
    # A model whose loss has zero gradient: the whole update is the Gaussian noise. Under
    # secure_rng the noise comes from the OS's CSPRNG (privacy.noise) and must have the same law.
    sigma, bound, batch = 1.3, 0.7, 8
    model = nn.Linear(500, 4)
    x = torch.randn(batch, 500)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = dpsgd.index_loader(batch, batch, shuffle=False)
    # One batch per epoch: q = 1, so a Poisson batch (the secure sampler's) holds every example.
    config = PrivacyConfig(mode="dpsgd", noise_multiplier=sigma, max_grad_norm=bound,
                           poisson_sampling=secure_rng, secure_rng=secure_rng)
    noise_generator = None if secure_rng else torch.Generator().manual_seed(0)
    private = dpsgd.make_private(model, optimizer, loader, config, epochs=1,
                                 noise_generator=noise_generator)
    draws = []
    for _ in range(5):
        before = flat_params(private.module)
        private.optimizer.zero_grad()
        (0.0 * private.module(x).sum()).backward()
        private.optimizer.step()
        # Mean reduction divides the noisy sum by the expected batch size.
        draws.append((before - flat_params(private.module)) * batch)
    noise = torch.cat(draws).double().numpy()
    k = noise.size
    statistic = np.sum(noise ** 2) / (sigma * bound) ** 2  # ~ chi-square with k degrees of freedom
    assert stats.chi2.ppf(1e-4, k) < statistic < stats.chi2.ppf(1 - 1e-4, k)
    assert abs(noise.mean()) < 5 * sigma * bound / np.sqrt(k)


@pytest.mark.parametrize("accountant, cls, pinned", [
    ("rdp", RDPAccountant, 2.1013652716430564),
    ("prv", PRVAccountant, 1.838371637017295),
])
def test_pinned_epsilon(accountant, cls, pinned):
    sigma, q, steps, delta = 1.0, 0.01, 1000, 1e-5
    independent = cls()
    for _ in range(steps):
        independent.step(noise_multiplier=sigma, sample_rate=q)
    expected = independent.get_epsilon(delta=delta)
    got = epsilon_after(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta,
                        accountant=accountant)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(pinned, rel=1e-3)  # Opacus 1.5 / 1.6 value, pinned
    # Abadi et al. (2016) regime: σ = 4, q = 0.01, 10,000 steps, δ = 1e-5 gives ε ≈ 1.0 under RDP.
    assert epsilon_after(noise_multiplier=4.0, sample_rate=q, steps=10_000, delta=delta,
                         accountant="rdp") == pytest.approx(1.0355, abs=1e-3)


def synthetic_config(**privacy):
    return validated_config({
        "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "batch_size": 100, "optimizer": "sgd", "lr": 0.1},
        "privacy": privacy,
        "logging": {"progress": "never"},
    })


def make_trainer(config):
    return build_components(config, torch.device("cpu"))[2]


def test_trainer_without_noise_or_clipping_equals_non_private_trainer():
    private = make_trainer(synthetic_config(mode="dpsgd", noise_multiplier=0.0, max_grad_norm=1e6,
                                            poisson_sampling=False))
    plain = make_trainer(synthetic_config(mode="none"))
    # Two configs, two identities, so each draws its own streams (utils.seeding): start the plain
    # trainer from the private one's initial weights and batch stream.
    plain.base_model().load_state_dict(private.base_model().state_dict())
    plain.generator.set_state(private.generator.get_state())
    for unit in range(2):
        private.train_unit(unit)
        plain.train_unit(unit)
    torch.testing.assert_close(flat_params(private.model), flat_params(plain.model),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("accountant, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_trainer_reports_the_accountants_epsilon(accountant, cls):
    trainer = make_trainer(synthetic_config(mode="dpsgd", noise_multiplier=1.1, max_grad_norm=1.0,
                                            accountant=accountant))
    for unit in range(2):
        trainer.train_unit(unit)
    metrics = trainer.privacy_metrics()
    q = metrics["privacy/sample_rate"]
    assert q == pytest.approx(100 / 1000)
    assert metrics["privacy/steps"] == 2 * 10
    independent = cls()
    for _ in range(20):
        independent.step(noise_multiplier=1.1, sample_rate=q)
    assert metrics["privacy/epsilon"] == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-6)


def test_target_epsilon_is_reached_from_below():
    trainer = make_trainer(synthetic_config(mode="dpsgd", target_epsilon=2.0, max_grad_norm=1.0))
    for unit in range(trainer.units):
        trainer.train_unit(unit)
    epsilon = trainer.privacy_metrics()["privacy/epsilon"]
    assert 1.9 <= epsilon <= 2.0
    sigma = noise_for_epsilon(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=20,
                              accountant="rdp")
    assert trainer.privacy_metrics()["privacy/noise_multiplier"] == pytest.approx(sigma, rel=1e-3)


@pytest.mark.parametrize("bound, expected", [(1e6, 0.0), (1e-6, 1.0)])
def test_per_group_clip_fraction(bound, expected):
    trainer = make_trainer(synthetic_config(mode="dpsgd", noise_multiplier=1.0, max_grad_norm=bound))
    metrics = trainer.train_unit(0)
    for group in ("minority", "majority"):
        assert metrics[f"dp/clip_fraction/group={group}"] == expected
        assert metrics[f"dp/grad_norm/group={group}"] > 0
