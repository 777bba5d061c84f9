"""CelebA's splits (``data.celeba.split``): the identity-disjoint protocol of Farrand et al. and CelebA's own.

**The split.** ``data.celeba.split: protocol`` follows "Neither Private Nor Fair: Impact of Data Imbalance
on Utility and Fairness in Differential Privacy" (Farrand, Mireshghallah, Singh and Trask, 2020,
arXiv 2009.06389): a fixed test set balanced over target × group, then a training set of fixed size
in which the minority is ``data.minority_share`` and each group is half positive; see
:func:`protocol_split`. ``data.celeba.split: official`` uses CelebA's partition; see :func:`official_split`.
Either way ``data.val_fraction`` > 0 holds out a validation set from the training pool before the
resampling (stratified by group and label; by person where identities are known).

**Identities.** CelebA holds about 20 images of each of its 10,177 celebrities. A test set that
shares people with the training set measures recognition of faces the model has seen, not
generalization to new people: test accuracy is inflated, and unevenly so (the more images a group
has per person, the more of its test faces were seen in training), which can hide or create group
gaps. With ``identity_CelebA.txt`` present, the protocol draws its test set by identity and leaves
every image of a test identity out of the training pool, so that no person is on both sides;
``DataBundle.info`` records ``identity_disjoint: true`` and the identity counts. Without the file
the split is disjoint by image only: a warning says so and ``info`` records ``identity_disjoint:
false``. CelebA's official partition is disjoint by identity by construction; with the file present
that is checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataset.celeba_files import IDENTITY_FILE, PARTITION_FILE
from dataset.imbalance import resample_to_share, validation_counts, validation_info, validation_split
from utils.errors import DataError
from utils.registry import Registry
from utils.seeding import numpy_generator

DEFAULT_TEST_SIZE = 6000

# The splits by name (``data.celeba.split``): each entry is the function that draws the split's rows
# (:func:`protocol_split`, :func:`official_split`), and the registry is what the config checks
# ``data.celeba.split`` against, so the valid names are exactly these.
SPLITS: Registry = Registry("split", "data.celeba.split")

# The protocol's random orders each draw from a stream of their own (utils.seeding.STREAMS): the
# test set's cells, the pool's cells, and the order in which the test set takes identities (when
# identity_CelebA.txt is present).
_TEST_STREAM, _POOL_STREAM, _IDENTITY_STREAM = "celeba_test", "celeba_pool", "celeba_identity"
# The validation set (data.val_fraction) takes identities in an order of its own.
_VAL_IDENTITY_STREAM = "celeba_val_identity"


@dataclass(frozen=True)
class Split:
    """Rows of the attribute file chosen for one run.

    Attributes:
        test_rows: sorted row indices of the test set.
        train_rows: sorted row indices of the training set (disjoint from ``test_rows``, and by
            identity too where ``info["identity_disjoint"]`` is True).
        info: the counts behind the choice (per cell of group × label, and of identities), for
            ``DataBundle.info``.
        val_rows: sorted row indices of the validation set (``data.val_fraction``; empty without
            one), disjoint from both, and by identity too where identities were read.
    """

    test_rows: np.ndarray
    train_rows: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@SPLITS.register("protocol")
def protocol_split(
    targets: np.ndarray,
    minority: np.ndarray,
    *,
    share: float | None,
    train_size: int | None,
    test_size: int | None,
    seed: int,
    identities: np.ndarray | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """The test and training rows of the protocol of Farrand et al. (2020, arXiv 2009.06389).

    1. **Test set**, drawn from all rows: ``test_size`` (default 6,000) examples split evenly over
       the four cells (minority, majority) × (positive, negative), ``test_size // 4`` each; when
       ``test_size`` is not a multiple of 4 the first cells in the order (minority, positive),
       (minority, negative), (majority, positive), (majority, negative) get one more. Each cell is a
       prefix of a random order fixed by the seed (and the identities) alone, so the test set is the
       same at every share and training size: results across a sweep of shares are scored on the
       same images. Without ``identities`` the order is one of images; with them, see below.
    2. **Balanced pool**, from the remaining rows (less, with ``identities``, every image of a test
       identity): within each group, the larger of its two label cells is cut (again a prefix of a
       seeded order) to the size of the smaller, so each group of the pool is exactly half positive.
       The pool does not depend on the share either.
    3. **Training set**: :func:`dataset.imbalance.resample_to_share` of the pool. Because each group
       of the pool is half positive and the resampler keeps each group's label rate, every group of
       the training set is half positive (to within one example for an odd group size), and the
       resampler's nesting carries over: for one seed, the training set at a smaller share takes
       fewer minority examples from the same prefix, and all shares share one pool and test set.

    **Validation set** (``val_fraction`` > 0; the paper has none): drawn from the balanced pool
    after step 2 and before step 3, ``round(val_fraction * len(pool))`` images stratified by
    (group, label) as :func:`dataset.imbalance.validation_counts` says (so half positive in each
    group, like the pool, and the pool's group shares). Without ``identities`` each cell's
    validation images are a prefix of a seeded order of the cell (stream ``validation``); with
    them they are taken person by person, as the test set is (stream ``celeba_val_identity``),
    and every other pool image of a validation person is left out of training, so no person is in
    two of the three sets. What is left is balanced again (within each group the larger label
    cell is cut to the smaller, keeping the pool's order), so each group of the training pool
    stays exactly half positive, and step 3 resamples it. With ``val_fraction`` 0 nothing of this
    happens and the selection is the one made before validation sets existed.

    **Disjoint by identity.** A person in both sets lets the model be scored on a face it has
    trained on, which inflates test accuracy, and more so for a group with more images per person.
    With ``identities`` the test set is drawn *by identity*: the identities are walked in a random
    order fixed by the seed (images within an identity in random order too), and each identity's
    images go into the test cells they belong to while those cells have room; each cell is then the
    prefix of this identity-major order restricted to the cell. Every other image of an identity
    that gave the test set at least one image is then left out of the pool. Why by identity rather
    than drawing images as without ``identities`` and excluding their identities afterwards: CelebA
    has about 20 images per person, so 6,000 images drawn one by one touch more than 4,000 of its
    10,177 persons, and excluding those would throw away about 45 % of the data; drawn by identity,
    the test set takes (nearly) all images of about 300 persons, and only the images of the last
    persons that fall into cells already full are lost (about 0.2 % of CelebA; both figures from a
    simulation with CelebA's sizes and rates). That matters most with ``train_size: None``, where
    the pool's size is the training set's. The price is a test set of fewer persons: its images are
    a cluster sample (persons drawn at random, each with all its images in the cell), which
    estimates a cell's per-image accuracy without systematic bias but more noisily than as many
    independent images would, so intervals that resample test images as if independent are
    somewhat too narrow; ``info["identities_test"]`` says how many persons they rest on. CelebA's
    own test partition is built the same way (whole persons). The training set is drawn from the
    pool as above, so its nesting across shares is untouched.

    Args:
        targets: 0/1 label per row of the attribute file.
        minority: True where the row belongs to the minority group.
        share: ``data.minority_share`` (None keeps the pool's own share).
        train_size: ``data.train_size`` (None keeps every majority example of the pool).
        test_size: ``data.celeba.test_size`` (None: 6,000 as in the paper).
        seed: the run seed.
        identities: the identity (person) of each row, from :func:`read_identities`, or None where
            ``identity_CelebA.txt`` is absent: then the split is disjoint by image only.
        val_fraction: ``data.val_fraction``, the share of the balanced pool held out for validation.

    Returns:
        The split; its ``info`` has the cell counts of the test set and the pool, and
        ``identity_disjoint`` (whether ``identities`` were used). With identities, also
        ``identities_test`` and ``identities_train`` (distinct persons in each set) and
        ``identity_overlap_excluded`` (images not in the test set whose person is, left out of the
        pool).

    Raises:
        DataError: a test set or training set the data cannot supply, with the feasible sizes
            (of the pool after the identity exclusion).
    """
    targets = np.asarray(targets, dtype=np.int64)
    minority = np.asarray(minority, dtype=bool)
    identities = None if identities is None else np.asarray(identities)
    n_test = DEFAULT_TEST_SIZE if test_size is None else test_size
    members = {cell: np.flatnonzero((minority == cell[0]) & (targets == cell[1])) for cell in _CELLS}
    test_rows = _protocol_test_rows(targets, minority, members, n_test, seed, identities)
    unavailable = np.zeros(len(targets), dtype=bool)
    unavailable[test_rows] = True
    if identities is not None:
        test_identities = np.unique(identities[test_rows])
        # The rest of each test person's images: training on them would put that person on both sides.
        excluded = np.isin(identities, test_identities) & ~unavailable
        unavailable |= excluded
    rest = {cell: members[cell][~unavailable[members[cell]]] for cell in _CELLS}  # sorted, as members are
    pool_orders = _balanced_pool_orders(rest, seed)
    pool = np.sort(np.concatenate(list(pool_orders.values())))
    train_pool, val_rows, val_info = pool, np.zeros(0, dtype=np.int64), {}
    if val_fraction > 0:
        train_pool, val_rows, val_info = _hold_out_validation(pool, pool_orders, targets, minority, val_fraction,
                                                              seed, identities)
    try:
        chosen = resample_to_share(minority[train_pool], targets[train_pool], share, train_size=train_size,
                                   seed=seed)
    except DataError as error:
        n_min = int(np.count_nonzero(minority[train_pool]))
        left_out = ("" if identities is None else
                    f" (after leaving out {np.count_nonzero(excluded)} more images of the test set's "
                    f"{len(test_identities)} identities)")
        after_val = "" if not len(val_rows) else f" and the {len(val_rows)}-image validation set"
        raise DataError(
            f"CelebA protocol: after the {n_test}-image test set{left_out}{after_val}, the training pool balanced "
            f"on the target within each group holds {n_min} minority and {len(train_pool) - n_min} majority "
            f"images. {error}"
        ) from None
    train_rows = train_pool[chosen]

    info: dict[str, Any] = {"split": "protocol", "test_size": len(test_rows),
                            "identity_disjoint": identities is not None}
    if identities is not None:
        info["identities_test"] = len(test_identities)
        info["identities_train"] = len(np.unique(identities[train_rows]))
        info["identity_overlap_excluded"] = int(np.count_nonzero(excluded))
    info.update(cell_counts("test_count", targets[test_rows], minority[test_rows]))
    info.update(cell_counts("pool_count", targets[pool], minority[pool]))
    info.update(val_info)
    return Split(test_rows, train_rows, info, val_rows)


# The protocol's four cells (minority?, label), in the order that gets the test set's odd images first.
_CELLS = ((True, 1), (True, 0), (False, 1), (False, 0))


def _protocol_test_rows(targets: np.ndarray, minority: np.ndarray, members: dict[tuple[bool, int], np.ndarray],
                        n_test: int, seed: int, identities: np.ndarray | None) -> np.ndarray:
    """Step 1 of :func:`protocol_split`: the sorted test rows, ``n_test // 4`` per cell (the first
    ``n_test % 4`` cells one more), each a prefix of a seeded order of images or, with
    ``identities``, of the identity-major order; a DataError when a cell is too small."""
    wanted = {cell: n_test // 4 + (i < n_test % 4) for i, cell in enumerate(_CELLS)}
    smallest = min(len(rows) for rows in members.values())
    for cell in _CELLS:
        if wanted[cell] > len(members[cell]):
            raise DataError(
                f"data.celeba.test_size: {n_test} needs {wanted[cell]} test images of the {_cell_name(cell)} cell, but "
                f"the data has {len(members[cell])}. Use data.celeba.test_size <= {4 * smallest}."
            )
    if identities is None:
        test_parts = [_seeded_order(members[cell], _TEST_STREAM, seed, cell)[: wanted[cell]] for cell in _CELLS]
    else:
        if identities.shape != targets.shape:
            raise ValueError(f"identities {identities.shape} and targets {targets.shape} must be equally long")
        # Every image is reachable in this order, so the test-size check above stays exact.
        order = _identity_order(identities, seed)
        test_parts = [order[(minority[order] == group) & (targets[order] == label)][: wanted[group, label]]
                      for group, label in _CELLS]
    return np.sort(np.concatenate(test_parts))


def _balanced_pool_orders(rest: dict[tuple[bool, int], np.ndarray], seed: int) -> dict[tuple[bool, int], np.ndarray]:
    """Step 2 of :func:`protocol_split`: per cell, the pool's rows in their seeded order, the larger
    label cell of each group cut to the size of the smaller (so each group is half positive)."""
    pool_orders = {}
    for group in (True, False):
        keep = min(len(rest[group, 1]), len(rest[group, 0]))
        for label in (1, 0):
            pool_orders[group, label] = _seeded_order(rest[group, label], _POOL_STREAM, seed, (group, label))[:keep]
    return pool_orders


def _hold_out_validation(pool: np.ndarray, pool_orders: dict[tuple[bool, int], np.ndarray], targets: np.ndarray,
                         minority: np.ndarray, fraction: float, seed: int,
                         identities: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The protocol's validation set (:func:`_draw_validation` of the balanced pool) and what is left
    for training, balanced again: within each group, in the pool's order, the larger label cell cut
    to the smaller. Returns (training pool, validation rows, info)."""
    val_rows, removed, val_info = _draw_validation(pool, targets, minority, fraction, seed, identities)
    gone = np.zeros(len(targets), dtype=bool)
    gone[removed] = True
    parts = []
    for group in (True, False):
        left = {label: pool_orders[group, label][~gone[pool_orders[group, label]]] for label in (1, 0)}
        keep = min(len(left[1]), len(left[0]))
        parts += [left[1][:keep], left[0][:keep]]
    train_pool = np.sort(np.concatenate(parts))
    val_info["val_rebalance_left_out"] = len(pool) - len(removed) - len(train_pool)
    return train_pool, val_rows, val_info


@SPLITS.register("official")
def official_split(
    targets: np.ndarray,
    minority: np.ndarray,
    partition: np.ndarray,
    *,
    share: float | None,
    train_size: int | None,
    seed: int,
    identities: np.ndarray | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """CelebA's own partition: the training partition (0) resampled, the test partition (2) whole.

    The training set is :func:`dataset.imbalance.resample_to_share` of partition 0 (162,770 images),
    which keeps each group's label rate from the partition rather than balancing it. The validation
    partition (1) is not used. The test set is all of partition 2 (19,962 images), unbalanced.
    With ``val_fraction`` > 0 a validation set is drawn from partition 0 first, as in
    :func:`protocol_split` (stratified; by person when ``identities`` are given, the other
    partition-0 images of its persons then left out of training), and the rest is resampled.

    CelebA built its partition from whole persons, so it is disjoint by identity. With
    ``identities`` that is checked rather than trusted: ``info["identity_overlap"]`` counts the
    identities found in both partition 0 and partition 2, ``identity_disjoint`` is True when there
    are none (the training set is a subset of partition 0, so it is then disjoint too), and any
    overlap is warned about, since it means the partition and identity files do not come from one
    release and the test accuracy may be inflated by faces seen in training. Without
    ``identities``, ``identity_disjoint`` is "by CelebA's construction": asserted, not verified.
    """
    targets = np.asarray(targets, dtype=np.int64)
    minority = np.asarray(minority, dtype=bool)
    pool = np.flatnonzero(partition == 0)
    test_rows = np.flatnonzero(partition == 2)
    if not len(pool) or not len(test_rows):
        raise DataError(f"{PARTITION_FILE}: the partition has {len(pool)} training (0) and {len(test_rows)} test (2) "
                        "images; data.celeba.split: official needs both. Use the file of the CelebA release, or "
                        "data.celeba.split: protocol.")
    val_rows, val_info = np.zeros(0, dtype=np.int64), {}
    if val_fraction > 0:
        val_rows, removed, val_info = _draw_validation(pool, targets, minority, val_fraction, seed, identities)
        pool = np.setdiff1d(pool, removed, assume_unique=True)
    chosen = resample_to_share(minority[pool], targets[pool], share, train_size=train_size, seed=seed)
    info: dict[str, Any] = {"split": "official", "test_size": len(test_rows),
                            "identity_disjoint": "by CelebA's construction"}
    if identities is not None:
        identities = np.asarray(identities)
        shared = np.intersect1d(identities[pool], identities[test_rows])
        info["identity_disjoint"] = len(shared) == 0
        info["identity_overlap"] = len(shared)
        info["identities_test"] = len(np.unique(identities[test_rows]))
        info["identities_train"] = len(np.unique(identities[pool[chosen]]))
        if len(shared):
            warnings.warn(
                f"CelebA official split: {len(shared)} identities (e.g. {shared[0]}) have images in both the "
                f"training partition (0) and the test partition (2) of {PARTITION_FILE}, which CelebA's release "
                f"does not; the partition and {IDENTITY_FILE} are likely from different copies, and test accuracy "
                "may be inflated by faces seen in training. Use both files of one release, or data.celeba.split: protocol "
                "(disjoint by identity).",
                stacklevel=2,
            )
    info.update(cell_counts("test_count", targets[test_rows], minority[test_rows]))
    info.update(cell_counts("pool_count", targets[pool], minority[pool]))
    info.update(val_info)
    return Split(test_rows, pool[chosen], info, val_rows)


def _draw_validation(pool: np.ndarray, targets: np.ndarray, minority: np.ndarray, fraction: float, seed: int,
                     identities: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A validation set of ``fraction`` of the ``pool`` rows, stratified by (group, label).

    Returns ``(validation rows, rows to leave out of training, info)``, rows sorted. Without
    ``identities`` the second is the first (:func:`dataset.imbalance.validation_split` of the
    pool). With them the cells' counts are the same, but filled person by person in a seeded
    order of the pool's identities (as the test set is); the rows left out of training are then
    every pool row of a validation person, those that did not fit into a full cell included, and
    ``info["val_identity_overlap_excluded"]`` counts the latter.
    """
    if identities is None:
        local, _ = validation_split(minority[pool], targets[pool], fraction, seed=seed)
        val_rows = pool[local]
        removed, extra = val_rows, {}
    else:
        counts = validation_counts(minority[pool], targets[pool], fraction)
        order = pool[_identity_order(identities[pool], seed, _VAL_IDENTITY_STREAM)]
        parts = [order[(minority[order] == bool(group)) & (targets[order] == label)][:count]
                 for (group, label), count in counts.items()]
        val_rows = np.sort(np.concatenate(parts))
        people = np.unique(identities[val_rows])
        removed = pool[np.isin(identities[pool], people)]
        extra = {"identities_val": len(people), "val_identity_overlap_excluded": len(removed) - len(val_rows)}
    info = {**validation_info(targets[val_rows], minority[val_rows], fraction, "val_fraction"),
            **cell_counts("val_count", targets[val_rows], minority[val_rows]), **extra}
    return val_rows, removed, info


def _seeded_order(rows: np.ndarray, stream: str, seed: int, cell: tuple[bool, int]) -> np.ndarray:
    """``rows`` in a random order fixed by (stream, seed, cell) alone, so prefixes of it nest."""
    rng = numpy_generator(seed, stream, int(cell[0]), cell[1])
    return rng.permutation(rows)


def _identity_order(identities: np.ndarray, seed: int, stream: str = _IDENTITY_STREAM) -> np.ndarray:
    """All row indices, identity by identity in a random order, each identity's rows in a random order.

    Fixed by (``stream``, seed) and the identities alone, not by labels, groups or share.
    """
    rng = numpy_generator(seed, stream)
    _, person = np.unique(identities, return_inverse=True)
    rank = rng.permutation(int(person.max()) + 1 if len(person) else 0)  # each identity's place in the walk
    rows = rng.permutation(len(identities))
    return rows[np.argsort(rank[person[rows]], kind="stable")]


def _cell_name(cell: tuple[bool, int]) -> str:
    return f"{'minority' if cell[0] else 'majority'} {'positive' if cell[1] else 'negative'}"


def cell_counts(prefix: str, targets: np.ndarray, minority: np.ndarray) -> dict[str, int]:
    """Counts per group and per (group, label), named like the project's metric keys."""
    counts = {}
    for group, mask in (("minority", minority), ("majority", ~minority)):
        counts[f"{prefix}/group={group}"] = int(np.count_nonzero(mask))
        counts[f"{prefix}/group={group}/label=1"] = int(np.count_nonzero(mask & (targets == 1)))
        counts[f"{prefix}/group={group}/label=0"] = int(np.count_nonzero(mask & (targets == 0)))
    return counts
