"""Privacy accounting through Opacus' accountants.

Both DP-SGD (example level) and DP-FedAvg (user level) are compositions of the sampled Gaussian
mechanism: each step includes every example (client) independently with probability q, clips its
contribution to C and adds N(0, σ²C²) noise to the sum. The accountants below bound ε of T such
steps at a given δ; nothing here re-derives them (Mironov 2017 for RDP, Gopi et al. 2021 for PRV).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

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


def effective_noise_multiplier(sigma: float, step_releases: Sequence[float] = ()) -> float:
    """σ_eff = (σ⁻² + Σⱼ σⱼ⁻²)^(-1/2) of a step whose noisy sum (noise multiplier σ) and releases
    (noise multipliers σⱼ) read the same sample: one sampled Gaussian mechanism
    (:mod:`privacy.clipping` gives the argument). σ itself without releases; 0 when a part has no
    noise."""
    if not step_releases:
        return sigma
    multipliers = [sigma, *step_releases]
    if any(value == 0 for value in multipliers):
        return 0.0
    return sum(value ** -2 for value in multipliers) ** -0.5


def noise_for_epsilon(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str, releases: list[tuple[float, float, int]] = (),
                      step_releases: Sequence[float] = ()) -> float:
    """The smallest σ (to 0.01 in ε) whose ε after ``steps`` steps is at most the target.

    ``releases`` are the run's other releases ((σ, q, steps) entries, :mod:`privacy.releases`):
    the training's σ is then chosen for the whole budget, ε of the steps composed with them.
    ``step_releases`` are the noise multipliers of releases every step makes on its sample (a
    clipping rule's, :mod:`privacy.clipping`): each step is then accounted at
    :func:`effective_noise_multiplier` of σ and them.
    Raises ValueError when the releases alone spend the target.
    """
    if not releases and not step_releases:
        with warnings.catch_warnings():
            # The search evaluates RDP at small σ candidates, where the best order is often the
            # largest tried; each bound is still valid.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps,
                                              accountant=accountant))
    releases = list(releases)
    # With infinite noise on the sum, what is left is the releases alone: the steps' at the
    # releases' own σ_eff, and the one-off releases.
    alone = list(releases)
    if step_releases:
        alone.append((effective_noise_multiplier(math.inf, step_releases), sample_rate, steps))
    spent = epsilon_of_history(alone, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise ValueError(f"the auxiliary releases alone spend ε = {spent:.3g} of the target "
                         f"{target_epsilon:g}")

    def epsilon(sigma: float) -> float:
        return epsilon_of_history(
            [(effective_noise_multiplier(sigma, step_releases), sample_rate, steps), *releases],
            delta=delta, accountant=accountant)

    # Bisection on the monotone ε(σ), as Opacus' get_noise_multiplier does for one mechanism:
    # stop with ε within 0.01 below the target, keeping the side that meets it.
    low, high = 0.0, 10.0
    while epsilon(high) > target_epsilon:
        high *= 2
        if high > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches ε = {target_epsilon:g}")
    for _ in range(200):  # ε is continuous in σ: far fewer halvings reach the tolerance
        middle = (low + high) / 2
        value = epsilon(middle)
        if value > target_epsilon:
            low = middle
        else:
            high = middle
            if target_epsilon - value <= 0.01:
                break
    return high
