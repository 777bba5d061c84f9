"""Individual privacy accounting: what DP-SGD (DP-FedAvg) cost each example (each client).

The run's ε is a worst case: it assumes every example moves every noisy sum by the whole clipping
bound C. An example whose gradient stays below the bound moves it by less, and so loses less.
Feldman & Zrnic ("Individual Privacy Accounting via a Rényi Filter", NeurIPS 2021) account each
example's Rényi DP with its own sensitivity; Yu et al. ("Individual Privacy Accounting for
Differentially Private Stochastic Gradient Descent", TMLR 2023) apply it to DP-SGD and find that the
groups a private model serves worst are also those with the largest individual privacy loss.

**The mechanism of one example at one step.** Step t adds N(0, σ²C²) to the sum of the sampled
examples' clipped gradients. Example i's clipped gradient has norm s = min(‖g_i(θ_t)‖, C), so for
example i the step is the sampled Gaussian mechanism (rate q) with sensitivity s and noise σC,
i.e. with noise multiplier σ·C/s (s = 0: the output does not depend on i, no loss). Its RDP at
every order is Opacus' ``compute_rdp`` (Mironov et al. 2019) at that noise multiplier; an example's
RDP over the run is the sum over the steps (RDP composes additively, also adaptively, which
Feldman & Zrnic's filter makes rigorous for data-dependent sensitivities), plus the RDP of every
other release composed into the run's ε (the noisy counts of :mod:`privacy.releases`), which every
example pays in full. ε at the run's δ is the conversion the RDP accountant uses (Balle et al.
2020, Thm. 21), at the same orders (:data:`ORDERS`).

**Which variant of Yu et al.** Their individual ε needs every example's gradient norm at every
step, sampled or not. Like their practical algorithm, this module takes the norms of the whole
training set from one batched pass every ``privacy.individual_every`` epochs and holds them for
every step until the next pass (:class:`SensitivityLedger`). That is their approximation, not a
sound per-instance guarantee: the norms drift between passes (Yu et al. measure the error of this
estimate and find it small for a pass per epoch), the pass's model is the one at the start of the
window, and the norms themselves are computed from the private data.

**DP-FedAvg: each client.** Under user-level DP-FedAvg (:mod:`privacy.dpfedavg`) the unit of
privacy is a client, and the same account is made per client (the user-level form of Feldman &
Zrnic's per-instance sensitivities). Round t adds N(0, σ²S²) to the sum of the sampled clients'
clipped updates; client k joins by Poisson sampling at rate q (``federated.client_sample_rate``),
and its clipped update has norm s_k = min(‖Δ_k(θ_t)‖, S), so for client k the round is the sampled
Gaussian mechanism with noise multiplier σ·S/s_k, exactly the step above with the client's update
in place of the example's gradient (the fixed denominator q·N is post-processing). The norms come
from a whole-population pass every ``privacy.individual_every`` ROUNDS: every client's local
training from the current global model (the trainer's own local-update code, on local orders drawn
from a stream of its own, ``utils.seeding`` ``individual_orders``), held for the rounds until the
next pass; Yu et al.'s approximation again, with one more source of drift: a client's update is
random through its local shuffle, and the pass's norm is one draw of it. A pass trains every
client, about 1/q rounds' worth of local training, so ``individual_every`` near 1/q makes one pass
per expected participation. Every example carries its client's ε and mean clipped norm
(individual_privacy.csv's :data:`FEDERATED_CSV_COLUMNS`), and the per-group summaries are over the
examples, so a client counts once per example it holds of the group (the issue's "aggregated per
group by the examples each client holds"), not once per client.

**The grid.** compute_rdp costs about 5 ms, far too much per example and step, so sensitivity
ratios s/C are placed on a geometric grid (:func:`ratio_grid`: 0, and from 1 down 16 points per
octave to 1/4, 8 to 1/16, 4 to 2⁻⁷, 61 points) and each ratio is ROUNDED UP to the next grid point.
RDP grows with the sensitivity, so this only overstates an example's loss (its ratio by at most a
factor 2^(1/16) ≈ 1.044 above 1/4, 2^(1/8) ≈ 1.09 above 1/16, 2^(1/4) ≈ 1.19 below), and it is
exact on the grid: an example always at the bound gets exactly the run's ε, one at half the bound
exactly the ε of noise multiplier 2σ. The grid is finest near the bound, where ε grows fastest
with the ratio; below 1/16 an example's ε is within a few hundredths of the conversion's floor
(below) at the paper grids' noise levels, and ratios below 2⁻⁷ are rounded up to 2⁻⁷.

**The run's accountant.** The individual ε are always RDP ε. Under ``privacy.accountant: rdp`` an
example always at the bound gets exactly ``privacy/epsilon``; under ``prv`` the summary gives the
run's RDP ε beside them (``privacy/individual_epsilon/worst_case``), the bound they are compared
with and never exceed (a PRV accountant per example, of hundreds of different mechanisms, is out
of reach at this cost). An example whose RDP is 0 at every order (no step ever depended on it) has
ε = 0; any other example's ε is at least the conversion's floor min_α log(1/δ)/(α − 1) + …
(about 0.1 at δ = 1e-5 with these orders), so small individual ε are dominated by that floor.

**Honesty.** These ε are computed from the private data without noise: they are a diagnostic for
the researcher, not private themselves (``utils.sink`` lists ``privacy/individual_epsilon/…`` and
individual_privacy.csv as non-private statistics, and ``logging.private_stats: false`` leaves them
out). The run's formal guarantee remains its worst-case ε.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from utils.fairness import GROUPS
from utils.sink import INDIVIDUAL_PRIVACY_FILE, write_rows

ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
"""The RDP orders of Opacus' RDP accountant, which the run's ε is converted at."""

GRID_OCTAVES = ((2, 16), (2, 8), (3, 4))
"""The ratio grid from 1 down: (octaves, points per octave); finest where the loss is largest."""
QUANTILES = {"p10": 10, "median": 50, "p90": 90}
SUMMARY_PREFIX = "privacy/individual_epsilon/"
CSV_COLUMNS = ("index", "group", "label", "epsilon", "mean_clipped_norm")
FEDERATED_CSV_COLUMNS = ("index", "client", "group", "label", "epsilon", "mean_clipped_norm")


def ratio_grid() -> np.ndarray:
    """The sensitivity ratios s/C evaluated, ascending: 0, then 2^e on :data:`GRID_OCTAVES`'s
    exponents, 16 a octave on [1/4, 1], 8 on [1/16, 1/4], 4 on [1/128, 1/16].

    Every power of two from 2⁻⁷ to 1 is on the grid exactly (its exponent is an integer)."""
    exponents, top = [0.0], 0
    for octaves, points in GRID_OCTAVES:
        exponents += [top - k / points for k in range(1, octaves * points + 1)]
        top -= octaves
    return np.concatenate([[0.0], 2.0 ** np.sort(np.array(exponents))])


def round_up_to_grid(ratios: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The index of the smallest grid point at or above each ratio (ratios clipped to [0, 1])."""
    return np.searchsorted(grid, np.clip(np.asarray(ratios, dtype=np.float64), 0.0, 1.0),
                           side="left")


def rdp_of_step(ratio: float, *, noise_multiplier: float, sample_rate: float,
                orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP at ``orders`` of one sampled-Gaussian step for an example of sensitivity ratio s/C."""
    return _rdp_of_step(float(ratio), float(noise_multiplier), float(sample_rate),
                        tuple(orders)).copy()


@functools.lru_cache(maxsize=4096)
def _rdp_of_step(ratio: float, noise_multiplier: float, sample_rate: float,
                 orders: tuple[float, ...]) -> np.ndarray:
    # Cached: runs trained in one process (a grid's levels share their (σ, q)) reuse the grid.
    if ratio == 0:
        return np.zeros(len(orders))
    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier / ratio,
                                  steps=1, orders=list(orders)), dtype=np.float64)


def epsilon_of_rdp(rdp: np.ndarray, *, delta: float,
                   orders: Sequence[float] = ORDERS) -> np.ndarray:
    """ε at ``delta`` of each row of ``rdp`` (rows: examples, columns: ``orders``).

    The conversion of Balle et al. (2020, Thm. 21) that Opacus' RDP accountant applies
    (``opacus.accountants.analysis.rdp.get_privacy_spent``), the best order per row, vectorized
    over the rows; ``tests/test_individual_privacy.py`` checks it against Opacus' function. A row
    that is 0 at every order (no step depended on the example) has ε = 0.
    """
    rdp = np.atleast_2d(np.asarray(rdp, dtype=np.float64))
    alphas = np.asarray(orders, dtype=np.float64)
    per_order = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: no privacy, ε = ∞
        epsilon = np.nanmin(per_order, axis=1)
    epsilon = np.where(np.isnan(epsilon), np.inf, epsilon)
    return np.where((rdp == 0).all(axis=1), 0.0, epsilon)


def individual_epsilons(windows: Sequence[tuple[int, np.ndarray]], *, noise_multiplier: float,
                        sample_rate: float, delta: float,
                        releases: Iterable[tuple[float, float, int]] = (),
                        orders: Sequence[float] = ORDERS) -> np.ndarray:
    """Each example's individual ε over the run.

    Args:
        windows: ``(steps, ratios)`` per stretch of the run: ``steps`` sampled-Gaussian steps during
            which example i's sensitivity ratio min(‖g_i‖, C)/C is held at ``ratios[i]``.
        noise_multiplier, sample_rate: the training's σ and q (one (σ, q) for the whole run).
        delta: the run's δ.
        releases: the run's other releases as accountant entries (σ, q, steps), paid in full by
            every example.

    Returns:
        ε per example, shape (examples,).
    """
    grid = ratio_grid()
    bins = [round_up_to_grid(ratios, grid) for _, ratios in windows]
    examples = len(bins[0]) if bins else 0
    used = np.unique(np.concatenate(bins)) if bins else np.zeros(0, dtype=np.int64)
    # Steps per example and grid point: one example always at one point has a single non-zero
    # count, so its RDP is steps × (one step's RDP) exactly, as the accountant computes it.
    counts = np.zeros((examples, len(used)))
    rows = np.arange(examples)
    for (steps, _), window_bins in zip(windows, bins):
        counts[rows, np.searchsorted(used, window_bins)] += steps
    per_step = np.stack([rdp_of_step(grid[b], noise_multiplier=noise_multiplier,
                                     sample_rate=sample_rate, orders=orders) for b in used]) \
        if len(used) else np.zeros((0, len(orders)))
    rdp = counts @ per_step
    for sigma, rate, steps in releases:
        rdp = rdp + np.asarray(compute_rdp(q=rate, noise_multiplier=sigma, steps=steps,
                                           orders=list(orders)), dtype=np.float64)
    return epsilon_of_rdp(rdp, delta=delta, orders=orders)


class SensitivityLedger:
    """The whole-set passes of one run: at which step each began, and every example's clipped norm.

    The norms of a pass hold for every step from its start to the next pass's (the last pass's to
    the end of training): the approximation of Yu et al. (module docstring). Its state (plain lists
    and tensors) goes into checkpoints, so a resumed run accounts the passes made before the
    interruption.
    """

    def __init__(self, bound: float):
        self.bound = float(bound)
        self.starts: list[int] = []
        self.clipped_norms: list[np.ndarray] = []

    def record(self, start_step: int, norms: np.ndarray) -> None:
        """A pass at ``start_step`` (steps taken before it) with every example's norm before clipping."""
        self.starts.append(int(start_step))
        self.clipped_norms.append(np.minimum(np.asarray(norms, dtype=np.float64), self.bound))

    def windows(self, total_steps: int) -> list[tuple[int, np.ndarray]]:
        """``(steps, ratios)`` per pass, the ratios min(‖g‖, C)/C; passes covering no step dropped."""
        ends = [*self.starts[1:], int(total_steps)]
        return [(end - start, norms / self.bound)
                for start, end, norms in zip(self.starts, ends, self.clipped_norms) if end > start]

    def mean_clipped_norms(self, total_steps: int) -> np.ndarray:
        """Each example's clipped norm averaged over the steps (each pass's weighted by its steps)."""
        windows = self.windows(total_steps)
        steps = sum(s for s, _ in windows)
        if not steps:
            return np.zeros(len(self.clipped_norms[0]) if self.clipped_norms else 0)
        return sum(s * ratios for s, ratios in windows) * self.bound / steps

    def state_dict(self) -> dict[str, Any]:
        """The passes as a list of steps and a list of float64 tensors (``weights_only``-loadable)."""
        return {"starts": list(self.starts),
                "clipped_norms": [torch.from_numpy(norms.copy()) for norms in self.clipped_norms]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.starts = [int(s) for s in state["starts"]]
        self.clipped_norms = [np.asarray(n, dtype=np.float64) for n in state["clipped_norms"]]


@dataclass(frozen=True)
class IndividualPrivacy:
    """What a run's individual accounting found, for individual_privacy.csv and summary.json.

    Attributes:
        rows: one per training example (:data:`CSV_COLUMNS`, with ``client`` under DP-FedAvg).
        metrics: ``privacy/individual_epsilon/group=…/{mean,median,p10,p90}``, the run's RDP ε
            they are bounded by (``…/worst_case``), the accountant they are computed with, and
            ``time/individual_accounting_s``.
        seconds: the time the passes and the accounting took.
    """

    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    seconds: float

    def write(self, run_dir: Path) -> Path:
        """individual_privacy.csv in ``run_dir`` (written atomically); its path."""
        path = Path(run_dir) / INDIVIDUAL_PRIVACY_FILE
        write_rows(path, self.rows)
        return path


def group_summary(epsilon: np.ndarray, minority: np.ndarray) -> dict[str, float | None]:
    """Per group the mean, median, 10th and 90th percentile (numpy's linear interpolation) of the
    examples' individual ε; None for a group without examples."""
    epsilon, minority = np.asarray(epsilon, dtype=np.float64), np.asarray(minority, dtype=bool)
    metrics: dict[str, float | None] = {}
    for group, members in zip(GROUPS, (minority, ~minority)):
        values = epsilon[members]
        metrics[f"{SUMMARY_PREFIX}group={group}/mean"] = float(values.mean()) if len(values) else None
        for name, percent in QUANTILES.items():
            metrics[f"{SUMMARY_PREFIX}group={group}/{name}"] = (
                float(np.percentile(values, percent)) if len(values) else None)
    return metrics


def summarize(epsilon: np.ndarray, mean_clipped_norm: np.ndarray, *, minority: np.ndarray,
              labels: np.ndarray, worst_case: float, seconds: float,
              clients: np.ndarray | None = None) -> IndividualPrivacy:
    """The rows and summary metrics of one run's individual ε, one row per training example.

    DP-SGD and DP-FedAvg share it: under DP-FedAvg ``clients`` is each example's client, and
    ``epsilon`` and ``mean_clipped_norm`` are already its client's, so the rows have
    :data:`FEDERATED_CSV_COLUMNS` and the per-group summaries are over examples in both modes.
    """
    minority = np.asarray(minority, dtype=bool)
    columns = CSV_COLUMNS if clients is None else FEDERATED_CSV_COLUMNS
    rows = []
    for index in range(len(epsilon)):
        row: dict[str, Any] = {"index": index,
                               "client": int(clients[index]) if clients is not None else None,
                               "group": GROUPS[0] if minority[index] else GROUPS[1],
                               "label": int(labels[index]), "epsilon": float(epsilon[index]),
                               "mean_clipped_norm": float(mean_clipped_norm[index])}
        rows.append({column: row[column] for column in columns})
    metrics: dict[str, Any] = {**group_summary(epsilon, minority),
                               f"{SUMMARY_PREFIX}worst_case": worst_case,
                               f"{SUMMARY_PREFIX}accountant": "rdp",
                               "time/individual_accounting_s": seconds}
    return IndividualPrivacy(rows, metrics, seconds)
