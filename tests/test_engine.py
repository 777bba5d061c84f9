"""The one DP-SGD engine interface and the one σ resolution (privacy.engine, privacy.accounting).

- both engines of ``privacy.ENGINES`` hand back a :class:`privacy.engine.PrivateEngine`: every
  member of the Protocol, checked by name and by ``isinstance``;
- for the same settings and the same training they report the same ε and ε parts, to the last
  digit, and the same σ for a target ε;
- :func:`privacy.accounting.resolve_noise_multiplier` against Google's dp_accounting: the σ it picks
  meets the target within the search's tolerance, with one-off and per-step releases composed.
"""

from __future__ import annotations

import dp_accounting
import pytest
import torch
import torch.nn.functional as F

from privacy import ENGINES, dpsgd
from privacy.accounting import (
    TARGET_UNREACHABLE,
    effective_noise_multiplier,
    resolve_noise_multiplier,
)
from privacy.engine import PrivateEngine
from privacy.releases import Release
from utils.config import PrivacyConfig
from utils.errors import ConfigError

PROTOCOL_MEMBERS = sorted(
    name for name in {*PrivateEngine.__annotations__, *vars(PrivateEngine)}
    if not name.startswith("_"))


def wrapped(engine: str, *, steps: int = 0, seed: int = 0, **privacy):
    """A small MLP wrapped by ``engine`` with a counts release, after ``steps`` private steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=generator)
    y = (torch.rand(40, generator=generator) < 0.5).float()
    loader = dpsgd.index_loader(40, 10, generator=torch.Generator().manual_seed(seed + 1))
    config = PrivacyConfig(mode="dpsgd", max_grad_norm=1.0, engine=engine,
                           **({"noise_multiplier": 1.1} | privacy))
    private = ENGINES.get(engine)(model, optimizer, loader, config, 3,
                                  noise_generator=torch.Generator().manual_seed(seed + 2),
                                  releases=[Release("counts", 10.0)])
    batches = iter(private.index_loader)
    for _ in range(steps):
        (rows,) = next(batches)
        private.optimizer.zero_grad(set_to_none=True)
        logits = private.module(x[rows]).reshape(-1)
        F.binary_cross_entropy_with_logits(logits, y[rows]).backward()
        private.optimizer.step()
    return private


def test_the_protocol_names_what_the_trainers_read():
    assert {"draw_noise", "account_step", "per_example_norms", "accountant_state",
            "load_accountant_state", "epsilon", "epsilon_parts", "history", "hooks_off",
            "noise_multiplier", "sample_rate", "steps", "releases", "step_releases",
            "noise_generator", "module", "optimizer", "index_loader"} <= set(PROTOCOL_MEMBERS)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_implements_the_protocol(engine):
    private = wrapped(engine)
    assert isinstance(private, PrivateEngine)
    missing = [name for name in PROTOCOL_MEMBERS if not hasattr(private, name)]
    assert not missing, f"{engine} lacks {missing}"
    noise = private.draw_noise()
    assert noise.shape == (sum(p.numel() for p in private.module.parameters()),)
    assert float(noise.std()) == pytest.approx(1.1 * 1.0, rel=0.5)  # σC, on 57 draws


def test_both_engines_give_the_same_epsilon_and_parts():
    engines = [wrapped(name, steps=4) for name in ("opacus", "fast")]
    for private in engines:
        assert private.steps == 4
        assert private.accountant_state() == [(1.1, 0.25, 4)]
    opacus, fast = engines
    assert opacus.epsilon(1e-5) == fast.epsilon(1e-5)
    assert opacus.epsilon_parts(1e-5) == fast.epsilon_parts(1e-5)
    assert set(fast.epsilon_parts(1e-5)) == {"training", "counts"}
    # account_step records what an optimizer step records; the restored state is the state
    for private in engines:
        private.account_step()
        private.load_accountant_state([list(entry) for entry in private.accountant_state()])
        assert private.history() == [(1.1, 0.25, 5), (10.0, 1.0, 1)]
    assert opacus.epsilon(1e-5) == fast.epsilon(1e-5)


@pytest.mark.parametrize("with_releases", [False, True])
def test_both_engines_resolve_the_same_sigma_for_a_target(with_releases):
    sigmas = []
    for name in ("opacus", "fast"):
        private = wrapped(name, noise_multiplier=None, target_epsilon=3.0)
        if not with_releases:  # the same σ without the counts: each engine's own resolution
            private = _without_releases(name)
        sigmas.append(private.noise_multiplier)
    assert sigmas[0] == sigmas[1]


def _without_releases(engine: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 1))
    config = PrivacyConfig(mode="dpsgd", target_epsilon=3.0, max_grad_norm=1.0, engine=engine)
    return ENGINES.get(engine)(model, torch.optim.SGD(model.parameters(), lr=0.1),
                               dpsgd.index_loader(40, 10, generator=torch.Generator()), config, 3,
                               noise_generator=torch.Generator())


def google_epsilon(entries, delta):
    """ε of (σ, q, steps) sampled-Gaussian entries by dp_accounting's RDP accountant."""
    accountant = dp_accounting.rdp.RdpAccountant()
    for sigma, q, steps in entries:
        event = dp_accounting.GaussianDpEvent(sigma)
        accountant.compose(event if q == 1 else dp_accounting.PoissonSampledDpEvent(q, event),
                           steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("releases, step_releases", [
    ((), ()), (((8.0, 1.0, 1),), ()), ((), (6.0,)), (((8.0, 1.0, 1),), (6.0, 9.0))])
def test_the_resolved_sigma_meets_the_target_by_dp_accounting(releases, step_releases):
    target, delta, q, steps = 2.0, 1e-5, 0.05, 300
    sigma = resolve_noise_multiplier(noise_multiplier=None, target_epsilon=target, delta=delta,
                                     sample_rate=q, steps=steps, accountant="rdp",
                                     releases=list(releases), step_releases=list(step_releases))

    def epsilon(s):
        return google_epsilon([(effective_noise_multiplier(s, step_releases), q, steps),
                               *releases], delta)

    assert target - 0.011 <= epsilon(sigma) <= target + 1e-9  # within the search's tolerance
    assert epsilon(sigma * 0.98) > target  # and not much more noise than needed


def test_a_given_noise_multiplier_is_used_as_given():
    assert resolve_noise_multiplier(noise_multiplier=0.7, target_epsilon=None, delta=1e-5,
                                    sample_rate=0.1, steps=10, accountant="rdp") == 0.7
    for both_or_neither in ((0.7, 2.0), (None, None)):
        with pytest.raises(ValueError, match="exactly one"):
            resolve_noise_multiplier(noise_multiplier=both_or_neither[0],
                                     target_epsilon=both_or_neither[1], delta=1e-5,
                                     sample_rate=0.1, steps=10, accountant="rdp")


def test_a_target_the_releases_spend_is_refused_naming_their_keys():
    with pytest.raises(ConfigError) as refused:
        resolve_noise_multiplier(noise_multiplier=None, target_epsilon=0.5, delta=1e-5,
                                 sample_rate=0.1, steps=10, accountant="rdp",
                                 releases=[(0.5, 1.0, 1)],
                                 release_keys=["privacy.counts_noise_multiplier"])
    message = str(refused.value)
    assert message.startswith(TARGET_UNREACHABLE.split("{error}")[0].format(target=0.5))
    assert message.endswith("Raise privacy.target_epsilon or privacy.counts_noise_multiplier.")


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_sigma_for_a_target_counts_every_step_the_run_takes(engine):
    # 3 epochs of 75 Poisson batches: 225 steps. Opacus' own search counted int(3 / (1/75)) = 224
    # (float rounding), so its σ let the 225th step take ε past the target.
    assert int(3 / (1 / 75)) == 224
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 1))
    target, delta = 3.0, 1e-5
    config = PrivacyConfig(mode="dpsgd", target_epsilon=target, delta=delta, max_grad_norm=1.0,
                           engine=engine)
    private = ENGINES.get(engine)(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                  dpsgd.index_loader(750, 10, generator=torch.Generator()),
                                  config, 3, noise_generator=torch.Generator())
    assert private.sample_rate == pytest.approx(1 / 75)
    assert google_epsilon([(private.noise_multiplier, private.sample_rate, 225)], delta) <= target
