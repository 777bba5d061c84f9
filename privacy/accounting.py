"""Privacy accounting through Opacus' accountants.

Both DP-SGD (example level) and DP-FedAvg (user level) are compositions of the sampled Gaussian
mechanism: each step includes every example (client) independently with probability q, clips its
contribution to C and adds N(0, σ²C²) noise to the sum. The accountants below bound ε of T such
steps at a given δ; nothing here re-derives them (Mironov 2017 for RDP, Gopi et al. 2021 for PRV).
"""

from __future__ import annotations

import warnings

from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier


def make_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant ("rdp" or "prv")."""
    return create_accountant(mechanism=name)


def epsilon_after(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str) -> float:
    """ε of ``steps`` sampled-Gaussian steps at (σ, q) for ``delta``; 0 steps spend nothing."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    acc = make_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        # PRV warns about its own discretization for tiny ε; the value is still its bound.
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def noise_for_epsilon(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str) -> float:
    """The smallest σ (to Opacus' tolerance) whose ε after ``steps`` steps is at most the target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant=accountant))
