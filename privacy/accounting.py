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


def epsilon_of_history(history: list[tuple[float, float, int]], *, delta: float,
                       accountant: str) -> float:
    """ε of a composition of sampled-Gaussian steps, as Opacus records it: (σ, q, steps) entries.

    The one definition of ε in the project: DP-SGD passes the history its engine recorded, DP-FedAvg
    one entry for its rounds. No step spends nothing; a step without noise is not private (ε = ∞).
    """
    if sum(steps for _, _, steps in history) == 0:
        return 0.0
    if any(sigma == 0 and steps > 0 for sigma, _, steps in history):
        return float("inf")
    acc = make_accountant(accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        # RDP warns when its best order is the largest one tried (few steps or little noise): the ε
        # it returns is then still a valid upper bound, just not the tightest.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def epsilon_after(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str) -> float:
    """ε of ``steps`` sampled-Gaussian steps at (σ, q) for ``delta``."""
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta=delta,
                              accountant=accountant)


def noise_for_epsilon(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str) -> float:
    """The smallest σ (to Opacus' tolerance) whose ε after ``steps`` steps is at most the target."""
    with warnings.catch_warnings():
        # The search evaluates RDP at small σ candidates, where the best order is often the largest
        # tried; each bound is still valid.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant=accountant))
