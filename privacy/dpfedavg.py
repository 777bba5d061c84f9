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

The function below is the whole mechanism and knows nothing of rounds, models or data loaders: it
takes the updates as one flat vector per client and returns the vector to apply. A federated engine
(for instance a Flower strategy's ``aggregate_fit``) can call it unchanged with the clients' updates
it received; it uses the parameter names of DP-SGD (``max_grad_norm``, ``noise_multiplier``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privacy.noise import NoiseSource, gaussian_noise


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
