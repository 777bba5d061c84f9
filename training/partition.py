"""Splitting a training set into federated clients (``federated.partition``).

Under user-level DP the unit of privacy is the client, so how the examples are spread over clients
decides what the guarantee protects and how hard it is to learn. Three schemes:

``iid``
    A random permutation cut into ``num_clients`` contiguous pieces whose sizes differ by at most 1.
``dirichlet``
    Label skew as Hsu, Qi and Brown define it ("Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", 2019): each client draws its label
    proportions p_k ~ Dir(α·p), with p the training set's label frequencies, and receives its
    examples label by label in those proportions. Clients keep the iid sizes, so the skew is in the
    labels only, not in the amount of data a user holds. Smaller α, more skew; α → ∞ gives iid.
``by_group``
    The minority group held by as few clients as possible: the minority examples fill the (largest)
    clients first, one after another, and the majority examples fill the rest. This is the case in
    which the minority is a minority of *users* (ceil(n_min / client size) of them), not only of
    examples; under user-level DP its few users are exactly what clipping and noise hide.

Every scheme assigns every training example to exactly one client and is a deterministic function
of its inputs and ``seed``. The schemes are registered in :data:`PARTITIONS`, which is also what the
config checks ``federated.partition`` against: a new scheme is one registered function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils.registry import Registry

# A scheme is ``fn(labels, minority, sizes, rng, *, dirichlet_alpha) -> parts``: the (integer)
# labels, the minority flags, the client sizes of :func:`client_sizes` (largest first), the
# partition's generator; one int64 array of example indices per client, covering every example once.
PartitionScheme = Callable[..., list[np.ndarray]]
PARTITIONS: Registry[PartitionScheme] = Registry("partition", "federated.partition")


def client_sizes(n: int, num_clients: int) -> np.ndarray:
    """Sizes of ``num_clients`` near-equal pieces of ``n`` examples, the larger pieces first."""
    if num_clients > n:
        raise ValueError(f"cannot split {n} examples into {num_clients} non-empty clients")
    base, extra = divmod(n, num_clients)
    return np.array([base + 1] * extra + [base] * (num_clients - extra), dtype=np.int64)


def partition_clients(
    labels: np.ndarray,
    minority: np.ndarray,
    *,
    num_clients: int,
    scheme: str,
    seed: int,
    dirichlet_alpha: float = 0.5,
) -> list[np.ndarray]:
    """Split the training set into clients.

    Args:
        labels: training targets (any integer classes; binary here).
        minority: True where the example belongs to the minority group.
        num_clients: how many clients; at most the number of examples (no client is empty).
        scheme: a name of :data:`PARTITIONS`: "iid", "dirichlet" or "by_group" (see the module
            docstring).
        seed: seeds every random choice of the partition.
        dirichlet_alpha: α of the label Dirichlet of the ``dirichlet`` scheme.

    Returns:
        One sorted int64 array of example indices per client; together they cover
        ``range(len(labels))`` exactly once.

    Raises:
        ConfigError: ``scheme`` is not registered (the message lists the registered ones).
    """
    labels = np.asarray(labels)
    minority = np.asarray(minority, dtype=bool)
    if len(labels) != len(minority):
        raise ValueError(f"labels has {len(labels)} rows, minority {len(minority)}")
    build = PARTITIONS.get(scheme)
    rng = np.random.default_rng(seed)
    sizes = client_sizes(len(labels), num_clients)
    return build(labels, minority, sizes, rng, dirichlet_alpha=dirichlet_alpha)


def _cut(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """``order`` cut into consecutive pieces of ``sizes``, each sorted."""
    bounds = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


@PARTITIONS.register("iid")
def _iid_partition(labels: np.ndarray, minority: np.ndarray, sizes: np.ndarray,
                   rng: np.random.Generator, *, dirichlet_alpha: float) -> list[np.ndarray]:
    """A random permutation cut into the client sizes."""
    return _cut(rng.permutation(len(labels)), sizes)


@PARTITIONS.register("by_group")
def _by_group_partition(labels: np.ndarray, minority: np.ndarray, sizes: np.ndarray,
                        rng: np.random.Generator, *, dirichlet_alpha: float) -> list[np.ndarray]:
    """The minority on as few clients as possible (see the module docstring)."""
    # Shuffle within each group, then lay the minority first: cut into pieces of the sizes
    # (largest first), the minority fills the fewest clients that can hold it.
    order = np.concatenate([rng.permutation(np.flatnonzero(minority)),
                            rng.permutation(np.flatnonzero(~minority))])
    return _cut(order, sizes)


@PARTITIONS.register("dirichlet")
def _dirichlet_scheme(labels: np.ndarray, minority: np.ndarray, sizes: np.ndarray,
                      rng: np.random.Generator, *, dirichlet_alpha: float) -> list[np.ndarray]:
    """Hsu et al. (2019) label skew of concentration ``dirichlet_alpha``."""
    return _dirichlet_partition(labels, sizes, dirichlet_alpha, rng)


def _dirichlet_partition(labels: np.ndarray, sizes: np.ndarray, alpha: float,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """Hsu et al. (2019) label skew with fixed client sizes (see the module docstring).

    Clients are filled one after another. Client k draws proportions p_k ~ Dir(α·p) and then its
    label counts from Multinomial(n_k, p_k); where a label has fewer examples left than drawn, the
    shortfall is taken from the labels that still have examples, in proportion to p_k (or to what
    is left when p_k puts no mass there). The last clients may therefore be less skewed than they
    drew; with many clients this touches few of them.
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [list(rng.permutation(np.flatnonzero(inverse == c))) for c in range(len(classes))]
    remaining = np.array([len(pool) for pool in pools], dtype=np.int64)
    prior = remaining / remaining.sum()
    parts = []
    for size in sizes:
        proportions = rng.dirichlet(alpha * prior)
        counts = np.minimum(rng.multinomial(size, proportions), remaining)
        while counts.sum() < size:
            room = remaining - counts
            weights = np.where(room > 0, proportions, 0.0)
            if weights.sum() == 0:
                weights = room.astype(float)
            extra = rng.multinomial(size - counts.sum(), weights / weights.sum())
            counts = counts + np.minimum(extra, room)
        part = []
        for c, count in enumerate(counts):
            part.extend(pools[c][:count])
            del pools[c][:count]
        remaining -= counts
        parts.append(np.sort(np.array(part, dtype=np.int64)))
    return parts


def partition_counts(parts: list[np.ndarray], labels: np.ndarray,
                     minority: np.ndarray) -> list[dict[str, int]]:
    """Per-client counts: ``client``, ``size``, ``minority``, ``majority``, ``positive``.

    One dict per client, in client order, ready to be written as a table (CSV or JSON lines).
    """
    labels = np.asarray(labels)
    minority = np.asarray(minority, dtype=bool)
    rows = []
    for k, part in enumerate(parts):
        n_min = int(np.count_nonzero(minority[part]))
        rows.append({"client": k, "size": len(part), "minority": n_min,
                     "majority": len(part) - n_min,
                     "positive": int(np.count_nonzero(labels[part] == 1))})
    return rows


def partition_summary(counts: list[dict[str, int]]) -> dict[str, Any]:
    """Summary statistics of :func:`partition_counts` worth logging with a run.

    ``clients_with_minority`` is the number of users the minority group is spread over, which is
    what user-level DP's clipping acts on; ``minority_client_share`` is the same as a share of the
    clients; ``max_minority_share_of_client`` tells whether any client is mostly minority.
    """
    sizes = np.array([row["size"] for row in counts])
    n_min = np.array([row["minority"] for row in counts])
    positive = np.array([row["positive"] for row in counts])
    holding = n_min > 0
    return {
        "num_clients": len(counts),
        "client_size_min": int(sizes.min()),
        "client_size_max": int(sizes.max()),
        "client_size_mean": float(sizes.mean()),
        "clients_with_minority": int(holding.sum()),
        "minority_client_share": float(holding.mean()),
        "minority_per_holding_client_mean": float(n_min[holding].mean()) if holding.any() else 0.0,
        "max_minority_share_of_client": float((n_min / sizes).max()),
        "positive_rate_client_std": float((positive / sizes).std()),
    }
