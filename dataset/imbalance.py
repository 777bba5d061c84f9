"""Resample a training pool so that the minority group is a chosen share of it.

The experiments ask one question: how does the share of a minority group in the training data
change what a model (private or not) learns about that group? To answer it, a sweep over
``data.minority_share`` must change the share and nothing else. :func:`resample_to_share` is built
for that:

* **Fixed training size.** With ``data.train_size`` set, every share trains on exactly that many
  examples. Under DP-SGD the privacy cost at a given noise multiplier depends on the sampling rate
  ``batch_size / n`` and the number of steps; with ``n`` fixed, the same noise gives the same ε at
  every share, so accuracy differences between shares are not privacy-budget differences. Without
  ``train_size`` all majority examples are kept and the set grows with the share.
* **Label rates kept per group.** Each group keeps the positive rate it has in the pool, so a change
  of share does not also change the base rates the model sees.
* **Nested selections.** Each (group, label) cell of the pool is put in one random order that
  depends only on the seed and the cell; a selection takes a prefix of each cell's order. For a
  seed, the minority examples at share 0.05 are a subset of those at 0.1, which are a subset of
  those at 0.3, and so on (the majority cells shrink the same way when ``train_size`` is fixed).
  A sweep therefore adds or removes examples rather than drawing a fresh sample per share, which
  takes the sampling noise between shares out of the comparison.

The test set is never resampled: it is the population the model is judged on. Nor is the
validation set (:func:`validation_split`), which is held out of the pool *before* the resampling.
"""

from __future__ import annotations

import math

import numpy as np

from utils.errors import ConfigError, DataError
from utils.seeding import numpy_generator

MINORITY, MAJORITY = 1, 0


def resample_to_share(
    minority: np.ndarray,
    targets: np.ndarray,
    share: float | None,
    *,
    train_size: int | None,
    seed: int,
) -> np.ndarray:
    """Indices into the pool of a training set in which the minority is ``share`` of the examples.

    Counts (``round`` is Python's: to the nearest integer, ties to even):

    * with ``train_size`` T: ``n_min = round(share * T)`` and ``n_maj = T - n_min``;
    * without it: every majority example is kept, ``n_maj`` = the pool's majority count, and
      ``n_min = round(share * n_maj / (1 - share))``;
    * within each group, ``n_pos = round(n_group * p)`` with ``p`` the group's positive rate in the
      pool, and the rest negatives.

    Every (group, label) cell of the pool has one random order fixed by ``seed`` and the cell alone;
    the cell's selection is a prefix of that order, drawn without replacement. For one seed the
    selections at different shares or training sizes are therefore nested cell by cell, and the
    same arguments always return the same indices.

    ``share=None`` keeps the pool's own share: all indices without ``train_size``; with it, a
    uniform subsample of T examples stratified by cell (largest-remainder apportionment), so the
    group shares and label rates stay those of the pool to within one example per cell.

    Args:
        minority: bool per pool example, True for the minority group.
        targets: 0/1 label per pool example.
        share: the minority's share of the returned set, in (0, 1), or None for the pool's own.
        train_size: the size of the returned set, or None (see above).
        seed: non-negative seed of the cell orders.

    Returns:
        Sorted int64 indices into the pool.

    Raises:
        ConfigError: a share outside (0, 1), a train_size below 1 or a negative seed.
        DataError: a share or train_size the pool cannot supply, or one that leaves a group with
            no example at all; the message gives the feasible range of ``data.minority_share`` for
            this pool (and train size).
    """
    minority = np.asarray(minority, dtype=bool)
    targets = np.asarray(targets)
    if minority.ndim != 1 or targets.shape != minority.shape:
        raise ValueError(f"minority {minority.shape} and targets {targets.shape} must be 1-D and equally long")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1 labels")
    targets = targets.astype(np.int64)
    if seed < 0:
        raise ConfigError(f"seed: {seed} is negative; use a seed >= 0.")
    if share is not None and not 0.0 < share < 1.0:
        raise ConfigError(
            f"data.minority_share: {share} is not in (0, 1). Give the minority's share of the "
            "training set as a fraction such as 0.1, or null to keep the data's own share."
        )
    pool_size = len(minority)
    if train_size is not None:
        if train_size < 1:
            raise ConfigError(f"data.train_size: {train_size} is below 1; give a positive size or null.")
        if train_size > pool_size:
            raise DataError(
                f"data.train_size: {train_size} is larger than the training pool of {pool_size} "
                f"examples; sampling is without replacement. Use data.train_size <= {pool_size}, "
                "or null to size the set from the share."
            )

    if share is None and train_size is None:
        return np.arange(pool_size, dtype=np.int64)

    cells = {
        (group, label): _cell_order(minority, targets, group, label, seed)
        for group in (MAJORITY, MINORITY)
        for label in (0, 1)
    }
    if share is None:
        wanted = _apportion(train_size, {cell: len(order) for cell, order in cells.items()})
    else:
        n_group = _group_sizes(minority, share, train_size)
        wanted = {}
        for group in (MAJORITY, MINORITY):
            n_pos_pool, n_neg_pool = len(cells[group, 1]), len(cells[group, 0])
            # n_group <= the group's pool size (_group_sizes checks it), so neither count can exceed its
            # cell: round(n * pos / total) <= pos, and likewise for the negatives.
            n_pos = round(n_group[group] * n_pos_pool / (n_pos_pool + n_neg_pool))
            wanted[group, 1], wanted[group, 0] = n_pos, n_group[group] - n_pos

    chosen = np.concatenate([cells[cell][: wanted[cell]] for cell in sorted(cells)])
    chosen.sort()
    return chosen


def validation_counts(minority: np.ndarray, targets: np.ndarray, fraction: float) -> dict[tuple[int, int], int]:
    """How many examples of each (group, label) cell a validation set of ``fraction`` of the pool takes.

    The total is ``round(fraction * n)``; it is split over the two groups in proportion to their
    pool sizes, then within each group over its labels in proportion to theirs, both by the
    largest remainder (:func:`_apportion`). So each group's validation count is within one example
    of its pool share of the total, and each group's label rate within one example of the pool's.

    Raises:
        DataError: a fraction that selects no example, or every example, of the pool.
    """
    minority = np.asarray(minority, dtype=bool)
    targets = np.asarray(targets).astype(np.int64)
    pool_size = len(minority)
    total = round(fraction * pool_size)
    if total == 0:
        raise DataError(
            f"data.val_fraction: {fraction} of the {pool_size}-example training pool selects no "
            f"validation example; use data.val_fraction >= {_ceil_sig(0.5 / pool_size)}, or 0 for none."
        )
    if total >= pool_size:
        raise DataError(
            f"data.val_fraction: {fraction} of the {pool_size}-example training pool leaves nothing to "
            "train on; use a smaller data.val_fraction."
        )
    groups = {(group,): int(np.count_nonzero(minority == bool(group))) for group in (MAJORITY, MINORITY)}
    counts = {}
    for (group,), n_group in _apportion(total, {g: n for g, n in groups.items() if n}).items():
        members = minority == bool(group)
        cells = {(group, label): int(np.count_nonzero(members & (targets == label))) for label in (0, 1)}
        counts.update(_apportion(n_group, {c: n for c, n in cells.items() if n}))
    return {(g, y): counts.get((g, y), 0) for g in (MAJORITY, MINORITY) for y in (0, 1)}


def validation_split(minority: np.ndarray, targets: np.ndarray, fraction: float, *,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a pool into a validation set and the rest, stratified by (group, label).

    The counts are :func:`validation_counts`. Each (group, label) cell is put in one random order
    fixed by the ``validation`` stream of (seed, group, label) and the cell alone, and the
    validation set takes a prefix of it; so a seed's validation sets at different fractions are
    nested, and the validation set does not depend on ``data.minority_share`` or
    ``data.train_size`` (the resampler only ever sees the rest).

    Args:
        minority: bool per pool example, True for the minority group.
        targets: 0/1 label per pool example.
        fraction: ``data.val_fraction``, in (0, 1).
        seed: the run's seed.

    Returns:
        ``(validation, rest)``: sorted int64 indices into the pool, disjoint, together all of it.
    """
    minority = np.asarray(minority, dtype=bool)
    targets = np.asarray(targets).astype(np.int64)
    counts = validation_counts(minority, targets, fraction)
    parts = []
    for (group, label), count in counts.items():
        members = np.flatnonzero((minority == bool(group)) & (targets == label)).astype(np.int64)
        order = numpy_generator(seed, "validation", group, label).permutation(members)  # utils.seeding
        parts.append(order[:count])
    validation = np.sort(np.concatenate(parts))
    rest = np.setdiff1d(np.arange(len(minority), dtype=np.int64), validation, assume_unique=True)
    return validation, rest


def validation_info(y_val: np.ndarray, minority_val: np.ndarray, val_fraction: float,
                    source: str | None) -> dict:
    """The validation set's facts for a bundle's ``info``: its size, per group, and positive rates.

    ``source`` says where it came from: "val_fraction", "protocol" (a data protocol's own), or
    None where there is none.
    """
    y_val = np.asarray(y_val)
    minority_val = np.asarray(minority_val, dtype=bool)
    info: dict = {"val_fraction": val_fraction, "val_source": source, "val_size": len(y_val)}
    for group, mask in (("minority", minority_val), ("majority", ~minority_val)):
        info[f"val_count/group={group}"] = int(np.count_nonzero(mask))
        info[f"val_positive_rate/group={group}"] = float(y_val[mask].mean()) if mask.any() else None
    return info


def _cell_order(minority: np.ndarray, targets: np.ndarray, group: int, label: int, seed: int) -> np.ndarray:
    """The fixed random order of one (group, label) cell's pool indices.

    The generator is the ``resampling`` stream of (seed, group, label) and permutes the cell's indices in pool
    order, so the order does not depend on the share or train size asked for: that is what makes
    the selections nested.
    """
    members = np.flatnonzero((minority == bool(group)) & (targets == label)).astype(np.int64)
    rng = numpy_generator(seed, "resampling", group, label)  # its own stream (utils.seeding)
    return rng.permutation(members)


def _group_sizes(minority: np.ndarray, share: float, train_size: int | None) -> dict[int, int]:
    """How many minority and majority examples give ``share``, or a DataError saying what can.

    Both groups must be present (at least one example each): a training set without one of them
    has no share to speak of. Printed bounds are rounded inwards, so a printed share is feasible.
    """
    pool_min = int(np.count_nonzero(minority))
    pool_maj = len(minority) - pool_min
    if pool_min == 0 or pool_maj == 0:
        missing = "minority" if pool_min == 0 else "majority"
        raise DataError(
            f"data.minority_share: {share} needs both groups, but the training pool has no {missing} "
            "examples. Check data.protected and data.minority_value."
        )
    if train_size is None:
        n_maj = pool_maj
        n_min = round(share * n_maj / (1.0 - share))
        if n_min > pool_min:
            largest = pool_min / (pool_min + pool_maj)
            raise DataError(
                f"data.minority_share: {share} needs {n_min} minority examples next to all {pool_maj} "
                f"majority ones, but the pool has {pool_min}. The largest share that keeps every majority "
                f"example is the pool's own, {_floor_sig(largest)}; for a larger share set data.train_size "
                f"to at most {math.floor(pool_min / share)}, so that majority examples are left out."
            )
        if n_min == 0:
            raise DataError(
                f"data.minority_share: {share} selects 0 minority examples next to {n_maj} majority ones. "
                f"Use data.minority_share >= {_ceil_sig(1 / (n_maj + 1))} (one minority example)."
            )
        return {MINORITY: n_min, MAJORITY: n_maj}

    n_min = round(share * train_size)
    n_maj = train_size - n_min
    # The minority counts this train size allows: enough minority to fill what the majority cannot,
    # at least one of each group, and no more than the pool holds.
    lowest, highest = max(1, train_size - pool_maj), min(pool_min, train_size - 1)
    if lowest > highest:
        raise DataError(
            f"data.train_size: {train_size} cannot hold both groups from this pool ({pool_min} minority, "
            f"{pool_maj} majority examples). Use a data.train_size from 2 to {len(minority)}."
        )
    feasible = f"{_ceil_sig(lowest / train_size)} to {_floor_sig(highest / train_size)}"
    if n_min == 0:
        raise DataError(
            f"data.minority_share: {share} of data.train_size {train_size} selects 0 minority examples. "
            f"Feasible shares at this train size: {feasible}; or raise data.train_size."
        )
    if n_min > pool_min:
        raise DataError(
            f"data.minority_share: {share} of data.train_size {train_size} needs {n_min} minority examples, "
            f"but the pool has {pool_min}. The largest feasible share at this train size is "
            f"{_floor_sig(highest / train_size)} (feasible: {feasible}); or lower data.train_size to at "
            f"most {math.floor(pool_min / share)}."
        )
    if n_maj > pool_maj:
        raise DataError(
            f"data.minority_share: {share} of data.train_size {train_size} needs {n_maj} majority examples, "
            f"but the pool has {pool_maj}: data.train_size forces more minority examples. The smallest "
            f"feasible share at this train size is {_ceil_sig(lowest / train_size)} (feasible: {feasible}); "
            f"or lower data.train_size to at most {math.floor(pool_maj / (1.0 - share))}."
        )
    if n_maj == 0:
        raise DataError(
            f"data.minority_share: {share} of data.train_size {train_size} leaves 0 majority examples. "
            f"Feasible shares at this train size: {feasible}."
        )
    return {MINORITY: n_min, MAJORITY: n_maj}


def _apportion(total: int, sizes: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """Split ``total`` over the cells in proportion to their sizes (largest remainder method).

    Each cell gets the floor of its proportional quota, and the examples left over go to the cells
    with the largest fractional parts (ties broken by cell, for determinism); the counts sum to
    ``total`` exactly and never exceed a cell's size.
    """
    pool = sum(sizes.values())
    quotas = {cell: total * size / pool for cell, size in sizes.items()}
    counts = {cell: math.floor(q) for cell, q in quotas.items()}
    left = total - sum(counts.values())
    for cell in sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))[:left]:
        counts[cell] += 1
    return counts


def _floor_sig(x: float, digits: int = 4) -> str:
    """``x`` rounded down to ``digits`` significant digits, so that the printed share is feasible."""
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return f"{math.floor(x * scale) / scale:.{digits}g}"


def _ceil_sig(x: float, digits: int = 4) -> str:
    """``x`` rounded up to ``digits`` significant digits, so that the printed share is feasible."""
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return f"{math.ceil(x * scale) / scale:.{digits}g}"
