"""The server's clip-and-noise aggregation of DP-FedAvg (user-level differential privacy).

McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language Models"
(ICLR 2018), make federated averaging differentially private at the level of a *user* (a client and
all of its examples) with three changes to the server's step, all made here:

1. every client's model update Δ_k = θ_k − θ is clipped to L2 norm S (``max_grad_norm``), so that
   one user moves the sum by at most S whatever their data;
2. Gaussian noise N(0, σ²S²) per coordinate (σ = ``noise_multiplier``) is added to the *sum* of
   the clipped updates;
3. the noisy sum is divided by a fixed denominator, the expected number of clients
   W = q·N (the paper's estimator f̃_f with uniform weights), not by the number that actually took
   part. Dividing by the realized count would make the output depend on whether a given user was
   sampled through the denominator as well, and the sensitivity analysis would no longer be the
   sampled Gaussian mechanism's.

With clients taking part by independent Poisson sampling at rate q, one round is then exactly one
step of the sampled Gaussian mechanism with (q, σ), and T rounds are accounted like T DP-SGD steps
(:mod:`privacy.accounting`), with the user in place of the example.

:func:`dp_fedavg_aggregate` is one round's clip-and-noise and knows nothing of rounds, models or
data loaders: it takes the updates as one flat vector per client and returns the vector to apply. A
federated engine (for instance a Flower strategy's ``aggregate_fit``) can call it unchanged with the
clients' updates it received; it uses the parameter names of DP-SGD (``max_grad_norm``,
``noise_multiplier``). :class:`DPFedAvg` is the server's whole mechanism over a run, the engine the
federated trainer calls (as the DP-SGD trainer calls a :class:`privacy.engine.PrivateEngine`): σ,
client sampling, an adaptive clipping rule, the aggregate, the accountant, ε and its parts, and its
state for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privacy.accounting import resolve_noise_multiplier
from privacy.clipping import ClippingRule, build_rule
from privacy.engine import Accounted
from privacy.noise import NoiseSource, SecureRandom, gaussian_noise
from utils.fairness import GROUPS
from utils.seeding import numpy_generator, torch_generator


@dataclass(frozen=True)
class AggregateResult:
    """The server's noisy average update of one round and what clipping did to it.

    Attributes:
        update: the noisy average ``(Σ_k clip(Δ_k) + N(0, σ²S²·I)) / expected_clients``, shape (d,).
        clients: number of updates aggregated (0 in an empty round).
        clip_fraction: share of the updates whose norm exceeded S and were scaled down (None when
            there were no updates).
        update_norm: mean L2 norm of the updates *before* clipping (None when there were none).
        norms: every update's L2 norm before clipping, shape (clients,), on the updates' device
            (for diagnostics that weigh clients, such as the per-group clip fractions).

    ``clip_fraction``, ``update_norm`` and ``norms`` are computed from the clients' raw updates without noise:
    they are diagnostics for choosing S (McMahan et al. tune S against the median norm) and are not
    covered by the run's ε. Do not release them where the guarantee matters.
    """

    update: torch.Tensor
    clients: int
    clip_fraction: float | None
    update_norm: float | None
    norms: torch.Tensor


def clip_updates(updates: torch.Tensor, max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale every row of ``updates`` (one flat update per client) to L2 norm at most S.

    Args:
        updates: shape (clients, d).
        max_grad_norm: the bound S.

    Returns:
        ``(clipped, norms)``: the clipped updates, same shape, and the norms before clipping.

    A row with norm above S is multiplied by S / norm, so it leaves with norm S (to float rounding);
    a row at or below S is returned unchanged (factor exactly 1), so a zero update stays zero.
    Opacus adds 1e-6 to the norm in the denominator to avoid dividing by zero; here the zero norm
    gives an infinite ratio that the clamp turns into 1, so no row is shrunk below the bound.
    """
    if updates.ndim != 2:
        raise ValueError(f"updates must have shape (clients, d), got {tuple(updates.shape)}")
    norms = torch.linalg.vector_norm(updates, dim=1)
    factors = (max_grad_norm / norms).clamp(max=1.0)
    return updates * factors.unsqueeze(1), norms


def dp_fedavg_aggregate(
    updates: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    generator: NoiseSource = None,
) -> AggregateResult:
    """Clip each client's update to ``max_grad_norm``, sum, add noise, divide by the expected count.

    Args:
        updates: the round's client updates Δ_k = local − global, one flattened vector per row,
            shape (clients, d). An empty round passes shape (0, d): it still releases noise, and it
            still counts as a round for the accountant, because under Poisson sampling "nobody was
            sampled" is one of the outcomes the guarantee covers.
        max_grad_norm: S, the bound on one user's contribution to the sum (its L2 sensitivity).
        noise_multiplier: σ; the noise added to the sum has standard deviation σ·S per coordinate.
            0 turns the noise off (then ε is infinite; used only by tests and ablations).
        expected_clients: the fixed denominator W = q·N (client sample rate × number of clients).
        generator: the noise's source (:data:`privacy.noise.NoiseSource`): a seeded torch
            generator on the updates' device (reproducible: anyone with its seed can replay the
            noise, so not for a released model), or :class:`privacy.noise.SecureRandom` for draws
            from the OS's cryptographic generator (``privacy.secure_rng``).

    Returns:
        An :class:`AggregateResult` whose ``update`` has the standard deviation σ·S / W per
        coordinate around the mean of the clipped updates scaled by (clients / W).
    """
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if expected_clients <= 0:
        raise ValueError(f"expected_clients must be positive, got {expected_clients}")
    clipped, norms = clip_updates(updates, max_grad_norm)
    total = clipped.sum(dim=0)
    if noise_multiplier > 0:
        # The noise goes on the *sum*, whose L2 sensitivity to adding or removing one user is S
        # after clipping: std σ·S is the Gaussian mechanism calibrated to that sensitivity.
        total = total + gaussian_noise(total, noise_multiplier * max_grad_norm, generator)
    clients = updates.shape[0]
    return AggregateResult(
        update=total / expected_clients,
        clients=clients,
        clip_fraction=float((norms > max_grad_norm).float().mean()) if clients else None,
        update_norm=float(norms.mean()) if clients else None,
        norms=norms,
    )


@dataclass(frozen=True)
class Round:
    """One round of the server's mechanism (:meth:`DPFedAvg.aggregate`).

    Attributes:
        result: the noisy average update and its clipping diagnostics.
        bound: the round's clipping bound S_t (S itself without an adaptive rule).
        rule_metrics: an adaptive rule's ``dp/clip_bound/group=…`` and ``dp/noise_bound`` (empty
            without one).
    """

    result: AggregateResult
    bound: float
    rule_metrics: dict[str, float]


class DPFedAvg(Accounted):
    """The server's mechanism of DP-FedAvg at the level of a user: who takes part (Poisson at rate
    q), each update clipped to S (or an adaptive rule's S_t), Gaussian noise σS on the sum, the
    fixed denominator qN, and the accountant (one sampled-Gaussian step per round, at σ_eff of the
    round and an adaptive rule's release). ε and ε parts are :class:`privacy.engine.Accounted`'s,
    as for the DP-SGD engines. Built by :meth:`from_config`; the federated trainer calls
    :meth:`sample_clients` and :meth:`aggregate` once per round and nothing else of it changes
    the mechanism.

    Randomness: who takes part from the ``client_sampling`` stream, the noise from
    ``client_noise``, an adaptive rule's release from ``dp_clipping``; all three from the OS's
    CSPRNG under ``secure_rng`` (:mod:`privacy.noise`).

    Attributes:
        noise_multiplier: σ, given or resolved for ``target_epsilon`` over the planned rounds
            (:func:`privacy.accounting.resolve_noise_multiplier`).
        accounted_noise_multiplier: what the accountant records per round: σ, or σ_eff.
        sample_rate: q, the clients' inclusion probability.
        expected_clients: the fixed denominator W = qN.
        max_grad_norm: S.
        clipping: an adaptive clipping rule (:mod:`privacy.clipping`), or None for the fixed S.
        rounds_done: rounds aggregated (the accountant's whole state: every round has the same
            (σ_eff, q)).
    """

    releases = ()  # DP-FedAvg composes no one-off release

    def __init__(self, *, max_grad_norm: float, noise_multiplier: float, sample_rate: float,
                 num_clients: int, accountant: str, clipping: ClippingRule | None = None,
                 secure: SecureRandom | None = None,
                 sampling_rng: np.random.Generator | None = None,
                 noise_generator: torch.Generator | None = None):
        self.max_grad_norm, self.sample_rate = max_grad_norm, sample_rate
        self.noise_multiplier = float(noise_multiplier)
        self.num_clients, self.accountant_name = num_clients, accountant
        # The fixed denominator of McMahan et al.: the expected number of clients in a round. It
        # does not depend on who was sampled, so one user changes the average by at most S / (qN).
        self.expected_clients = sample_rate * num_clients
        self.clipping = clipping
        self.accounted_noise_multiplier = (clipping.accounted_noise_multiplier(self.noise_multiplier)
                                           if clipping is not None else self.noise_multiplier)
        self.secure, self.sampling_rng, self.noise_generator = secure, sampling_rng, noise_generator
        self.rounds_done = 0
        self._epsilon_cache: tuple[int, float, float] | None = None

    @classmethod
    def from_config(cls, privacy, *, num_clients: int, sample_rate: float, rounds: int, seed: int,
                    device: torch.device | str = "cpu") -> DPFedAvg:
        """The mechanism of ``privacy`` (a :class:`utils.config.PrivacyConfig`) for ``rounds``
        rounds of ``num_clients`` clients sampled at ``sample_rate``, its streams derived from the
        run's ``seed`` (:mod:`utils.seeding`). ``privacy.clipping`` adaptive or bounded_adaptive
        gives the adaptive rule (the config refuses the others under DP-FedAvg)."""
        secure = SecureRandom() if privacy.secure_rng else None
        clipping = None
        if privacy.clipping != "flat":
            clipping = build_rule(privacy, expected_batch_size=sample_rate * num_clients,
                                  source=SecureRandom() if privacy.secure_rng
                                  else torch_generator(seed, "dp_clipping"))
        releases = clipping.step_releases() if clipping is not None else []
        sigma = resolve_noise_multiplier(
            noise_multiplier=privacy.noise_multiplier, target_epsilon=privacy.target_epsilon,
            delta=privacy.delta, sample_rate=sample_rate, steps=rounds,
            accountant=privacy.accountant,
            step_releases=[release.noise_multiplier for release in releases],
            release_keys=[release.key for release in releases])
        return cls(max_grad_norm=privacy.max_grad_norm, noise_multiplier=sigma,
                   sample_rate=sample_rate, num_clients=num_clients,
                   accountant=privacy.accountant, clipping=clipping, secure=secure,
                   sampling_rng=None if secure else numpy_generator(seed, "client_sampling"),
                   noise_generator=None if secure else torch_generator(seed, "client_noise",
                                                                       device))

    # --- the accountant's view (privacy.engine.Accounted) ---------------------------------------

    @property
    def steps(self) -> int:
        return self.rounds_done

    @property
    def step_releases(self) -> list:
        """An adaptive rule's per-round release (its noisy count)."""
        return self.clipping.step_releases() if self.clipping is not None else []

    def step_history(self) -> list[tuple[float, float, int]]:
        """The rounds as one accountant entry (σ_eff, q, rounds)."""
        return [(self.accounted_noise_multiplier, self.sample_rate, self.rounds_done)]

    def epsilon(self, delta: float) -> float:
        """User-level ε after the rounds so far (cached per round count)."""
        if self._epsilon_cache is None or self._epsilon_cache[:2] != (self.rounds_done, delta):
            self._epsilon_cache = (self.rounds_done, delta, super().epsilon(delta))
        return self._epsilon_cache[2]

    def account_step(self) -> None:
        """Record one round with the accountant."""
        self.rounds_done += 1

    # --- one round ------------------------------------------------------------------------------

    def sample_clients(self) -> np.ndarray:
        """This round's clients: each joins independently with probability q (may be none)."""
        draws = (self.secure.uniform(self.num_clients) if self.secure is not None
                 else self.sampling_rng.random(self.num_clients))
        return np.flatnonzero(draws < self.sample_rate)

    def aggregate(self, updates: torch.Tensor) -> Round:
        """The round's noisy average of ``updates`` (one flat client update per row, shape
        (clients, d); (0, d) for an empty round, which releases noise and counts as a round all the
        same), and the round recorded with the accountant. Under an adaptive rule the round's bound
        is the rule's S_t, and the rule releases its count and moves the bound."""
        bound, rule_metrics = self.max_grad_norm, {}
        if self.clipping is not None:  # this round's bound S_t; the rule releases its count
            step = self.clipping.clip(torch.linalg.vector_norm(updates, dim=1))
            bound = step.sensitivity
            rule_metrics = {**{f"dp/clip_bound/group={group}": value
                               for group, value in zip(GROUPS, step.bounds)},
                            "dp/noise_bound": step.sensitivity}
        result = dp_fedavg_aggregate(updates, max_grad_norm=bound,
                                     noise_multiplier=self.noise_multiplier,
                                     expected_clients=self.expected_clients,
                                     generator=self.secure or self.noise_generator)
        self.account_step()
        return Round(result, bound, rule_metrics)

    # --- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The mechanism's state at a round boundary, under the checkpoint's keys: the rounds (the
        accountant), the sampling and noise generators (None under ``secure_rng``: the CSPRNG's
        draws have no state to save or replay) and an adaptive rule's bound and generator."""
        return {
            "sampling_rng": (self.sampling_rng.bit_generator.state
                             if self.sampling_rng is not None else None),
            "noise_gen": (self.noise_generator.get_state()
                          if self.noise_generator is not None else None),
            "rounds_done": self.rounds_done,
            "clipping": self.clipping.state_dict() if self.clipping is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s keys (of a mechanism built from the same config)."""
        if self.clipping is not None:
            self.clipping.load_state_dict(state.get("clipping") or {})
        if self.sampling_rng is not None:
            self.sampling_rng.bit_generator.state = state["sampling_rng"]
        if self.noise_generator is not None:
            self.noise_generator.set_state(state["noise_gen"])
        self.rounds_done = int(state["rounds_done"])
