"""Auxiliary releases of private statistics, composed into the run's ε with the training steps.

A repair method under DP-SGD may need a statistic of the private training set besides the model's
updates: reweighing's (group, label) counts, the group shares that let a gap regularizer split into
per-example terms. Such a statistic is released here through the Gaussian mechanism and recorded
as a :class:`Release`; the trainer composes every release with its own steps in one accountant
(:func:`privacy.accounting.epsilon_of_history`), so ε stays one number per run, and logs each
part's ε alone as ``privacy/epsilon_parts/<name>``.

The count release. The four (group, label) cell counts form a histogram: adding or removing one
example changes exactly one count by one, so the vector's L2 sensitivity is 1 (the add/remove
adjacency of the DP-SGD accountant). Gaussian noise of standard deviation σ on each count is then
the Gaussian mechanism with noise multiplier σ, which an RDP/PRV accountant composes as one step
of the sampled Gaussian mechanism with sampling rate 1: the history entry (σ, 1.0, 1) (Mironov
2017, Prop. 7 and Cor. 3). Everything computed from the noisy counts afterwards is
post-processing. The draws come from the run's ``dp_counts`` stream, or from the operating
system's cryptographic generator under ``privacy.secure_rng``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy.noise import SecureRandom
from utils.seeding import numpy_generator

# The order of the released cells, the order of every count vector in this module.
CELLS: tuple[tuple[bool, int], ...] = ((True, 0), (True, 1), (False, 0), (False, 1))


@dataclass(frozen=True)
class Release:
    """One Gaussian-mechanism release of a statistic of L2 sensitivity 1.

    Attributes:
        name: what was released (``counts``), the key of ``privacy/epsilon_parts/<name>``.
        noise_multiplier: σ, the noise's standard deviation over the sensitivity.
        sample_rate: the share of the data it reads (1: all of it).
        steps: how many times it was released.
    """

    name: str
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def history(self) -> tuple[float, float, int]:
        """The accountant's (σ, q, steps) entry of this release."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def cell_counts(labels: np.ndarray, minority: np.ndarray) -> np.ndarray:
    """The exact training-set counts of the :data:`CELLS`, as floats."""
    labels, minority = np.asarray(labels).astype(int), np.asarray(minority).astype(bool)
    return np.array([np.sum((minority == group) & (labels == label)) for group, label in CELLS],
                    dtype=np.float64)


class PrivateStatistics:
    """The releases of one DP-SGD run: drawn once, cached, and listed for the accountant.

    Args:
        counts_noise_multiplier: σ of the count release (``privacy.counts_noise_multiplier``).
        seed: the root of the run's ``dp_counts`` stream (``utils.seeding.RunStreams.root``),
            unless ``secure``.
        secure: draw from the OS's cryptographic generator (``privacy.secure_rng``).
    """

    def __init__(self, *, counts_noise_multiplier: float, seed: int, secure: bool = False):
        self.counts_noise_multiplier = float(counts_noise_multiplier)
        self.secure = secure
        self._source = SecureRandom() if secure else numpy_generator(seed, "dp_counts")
        self._counts: np.ndarray | None = None
        self.releases: list[Release] = []

    def noisy_cell_counts(self, labels: np.ndarray, minority: np.ndarray) -> np.ndarray:
        """The :data:`CELLS` counts of the training set plus N(0, σ²) each, released once per run
        (every later call returns the same release, so asking twice costs nothing more)."""
        if self._counts is None:
            exact = cell_counts(labels, minority)
            sigma = self.counts_noise_multiplier
            noise = (sigma * self._source.standard_normal(len(exact)) if self.secure
                     else self._source.normal(0.0, sigma, size=exact.shape))
            self._counts = exact + np.asarray(noise, dtype=np.float64)
            self.releases.append(Release("counts", sigma))
        return self._counts.copy()

    def cell_shares(self, labels: np.ndarray, minority: np.ndarray) -> np.ndarray:
        """Each cell's share of the training set from the noisy counts (post-processing): every
        count raised to at least 1, so that a share is positive and its inverse finite."""
        counts = np.maximum(self.noisy_cell_counts(labels, minority), 1.0)
        return counts / counts.sum()
