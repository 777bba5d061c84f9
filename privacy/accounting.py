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

from utils.errors import ConfigError


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


SIGMA_FLOOR = 0.01
"""The smallest noise multiplier the σ search considers. A target ε that σ = 0.01 already meets
(ε in the thousands to millions for usual q and steps) puts no real bound on the noise: it is
refused (:data:`TARGET_PUTS_NO_BOUND`) instead of searched for, since the search would chase σ
towards 0 without end (``privacy.target_epsilon: 1e50`` never returned)."""
MAX_SIGMA = 1e6
MAX_SEARCH_STEPS = 200
TARGET_PUTS_NO_BOUND = ("even σ = {floor} meets it (ε = {epsilon:.4g} there), so the target puts no "
                        "real bound on the noise")
TARGET_TOO_LARGE = ("privacy.target_epsilon: got {target:g}; {reason}. Give a target_epsilon below "
                    "{epsilon:.4g}, or set privacy.noise_multiplier (and target_epsilon: null).")


def noise_for_epsilon(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str, releases: list[tuple[float, float, int]] = (),
                      step_releases: Sequence[float] = ()) -> float:
    """The smallest σ (to 0.01 in ε) whose ε after ``steps`` steps is at most the target.

    ``releases`` are the run's other releases ((σ, q, steps) entries, :mod:`privacy.releases`):
    the training's σ is then chosen for the whole budget, ε of the steps composed with them.
    ``step_releases`` are the noise multipliers of releases every step makes on its sample (a
    clipping rule's, :mod:`privacy.clipping`): each step is then accounted at
    :func:`effective_noise_multiplier` of σ and them.

    Without releases the search is Opacus' ``get_noise_multiplier`` (the same σ to the last bit:
    the same bracket from 20, doubled, then bisection), bounded: σ lies in [:data:`SIGMA_FLOOR`,
    :data:`MAX_SIGMA`] and at most :data:`MAX_SEARCH_STEPS` bisection steps are taken.

    Raises:
        ValueError: the releases alone spend the target, or no σ up to :data:`MAX_SIGMA` meets it.
        ConfigError: the target is met even at :data:`SIGMA_FLOOR` (:data:`TARGET_TOO_LARGE`).
    """
    releases = list(releases)

    def epsilon(sigma: float, by: str = accountant) -> float:
        with warnings.catch_warnings():
            # The search evaluates RDP at small σ candidates, where the best order is often the
            # largest (or smallest) tried; each bound is still valid.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return epsilon_of_history(
                [(effective_noise_multiplier(sigma, step_releases), sample_rate, steps), *releases],
                delta=delta, accountant=by)

    if releases or step_releases:
        # With infinite noise on the sum, what is left is the releases alone: the steps' at the
        # releases' own σ_eff, and the one-off releases.
        alone = list(releases)
        if step_releases:
            alone.append((effective_noise_multiplier(math.inf, step_releases), sample_rate, steps))
        spent = epsilon_of_history(alone, delta=delta, accountant=accountant)
        if spent >= target_epsilon:
            raise ValueError(f"the auxiliary releases alone spend ε = {spent:.3g} of the target "
                             f"{target_epsilon:g}")
    check_target_bound(target_epsilon, epsilon)
    if not releases and not step_releases:
        return _opacus_search(target_epsilon, epsilon)

    # Bisection on the monotone ε(σ), as Opacus' get_noise_multiplier does for one mechanism:
    # stop with ε within 0.01 below the target, keeping the side that meets it.
    low, high = 0.0, 10.0
    while epsilon(high) > target_epsilon:
        high *= 2
        if high > MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to 1e6 reaches ε = {target_epsilon:g}")
    for _ in range(MAX_SEARCH_STEPS):  # ε is continuous in σ: far fewer halvings reach the tolerance
        middle = (low + high) / 2
        value = epsilon(middle)
        if value > target_epsilon:
            low = middle
        else:
            high = middle
            if target_epsilon - value <= 0.01:
                break
    return high


def check_target_bound(target_epsilon: float, epsilon) -> None:
    """Refuse a target ε that :data:`SIGMA_FLOOR` already meets (``epsilon(σ, accountant)``: ε as a
    function of σ), with :data:`TARGET_TOO_LARGE`.

    Decided by RDP whatever the run's accountant: PRV's discretization at σ = 0.01 needs hundreds of
    GiB, and RDP's ε is the larger bound, so a target RDP meets at the floor PRV meets too."""
    at_floor = epsilon(SIGMA_FLOOR, "rdp")
    if at_floor <= target_epsilon:
        raise ConfigError(TARGET_TOO_LARGE.format(
            target=target_epsilon, epsilon=at_floor,
            reason=TARGET_PUTS_NO_BOUND.format(floor=SIGMA_FLOOR, epsilon=at_floor)))


TARGET_UNREACHABLE = "privacy.target_epsilon {target:g}: {error}. Raise {keys}."
"""The refusal of a target ε the releases alone spend, or that no σ up to :data:`MAX_SIGMA` meets;
``keys`` are the config keys whose raising leaves more of the budget for the steps."""


def resolve_noise_multiplier(*, noise_multiplier: float | None, target_epsilon: float | None,
                             delta: float, sample_rate: float, steps: int, accountant: str,
                             releases: list[tuple[float, float, int]] = (),
                             step_releases: Sequence[float] = (),
                             release_keys: Sequence[str] = ()) -> float:
    """σ of every private mechanism of the project (both DP-SGD engines, DP-FedAvg's server): the
    given ``noise_multiplier``, or the smallest σ whose ε after ``steps`` sampled-Gaussian steps at
    rate ``sample_rate`` (steps of DP-SGD, rounds of DP-FedAvg), composed with the one-off
    ``releases`` and each step's ``step_releases`` (:func:`noise_for_epsilon`), is at most
    ``target_epsilon`` at ``delta``.

    Args:
        release_keys: the config keys of the releases' noise, named in the refusal
            (:data:`TARGET_UNREACHABLE`) besides ``privacy.target_epsilon``.

    Raises:
        ValueError: neither or both of ``noise_multiplier`` and ``target_epsilon`` are given.
        ConfigError: the target is out of reach (:data:`TARGET_UNREACHABLE`) or puts no bound on
            the noise (:data:`TARGET_TOO_LARGE`).
    """
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier and target_epsilon")
    if target_epsilon is None:
        return noise_multiplier
    try:
        return noise_for_epsilon(target_epsilon=target_epsilon, delta=delta,
                                 sample_rate=sample_rate, steps=steps, accountant=accountant,
                                 releases=releases, step_releases=step_releases)
    except ValueError as error:
        keys = " or ".join(["privacy.target_epsilon", *release_keys])
        raise ConfigError(TARGET_UNREACHABLE.format(target=target_epsilon, error=error,
                                                    keys=keys)) from None


def _opacus_search(target_epsilon: float, epsilon, tolerance: float = 0.01) -> float:
    """Opacus' ``get_noise_multiplier`` search on ``epsilon`` (σ -> ε): the same candidates in the
    same order, so the same σ; with the number of steps bounded."""
    sigma_low, sigma_high = 0.0, 10.0
    eps_high = math.inf
    while eps_high > target_epsilon:
        sigma_high *= 2
        eps_high = epsilon(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to {MAX_SIGMA:g} reaches ε = {target_epsilon:g}")
    for _ in range(MAX_SEARCH_STEPS):
        if target_epsilon - eps_high <= tolerance:
            return sigma_high
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(sigma)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high  # meets the target (ε ≤ target), if not to within the tolerance
