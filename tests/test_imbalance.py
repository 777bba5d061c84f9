"""resample_to_share against hand-counted cells of a synthetic pool.

The pool has 4,000 majority examples (1,200 positive: rate 0.3) and 4,500 minority examples (675
positive: rate 0.15), interleaved in a fixed random order so that no result can come from the
pool's layout. Its own minority share is 4500 / 8500 = 0.5294.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dataset.imbalance import resample_to_share
from utils.errors import ConfigError, DataError

MAJ_POS, MAJ_NEG, MIN_POS, MIN_NEG = 1200, 2800, 675, 3825


@pytest.fixture(scope="module")
def pool():
    minority = np.repeat([False, False, True, True], [MAJ_POS, MAJ_NEG, MIN_POS, MIN_NEG])
    targets = np.repeat([1, 0, 1, 0], [MAJ_POS, MAJ_NEG, MIN_POS, MIN_NEG])
    order = np.random.default_rng(12345).permutation(len(minority))
    return minority[order], targets[order]


def cell_counts(minority, targets, index):
    """(minority positives, minority negatives, majority positives, majority negatives) of a selection."""
    m, y = minority[index], targets[index]
    return (
        int(np.sum(m & (y == 1))),
        int(np.sum(m & (y == 0))),
        int(np.sum(~m & (y == 1))),
        int(np.sum(~m & (y == 0))),
    )


def cells(minority, targets, index):
    """The selected pool indices of each (group, label) cell, as sets."""
    return {
        (g, label): set(index[(minority[index] == g) & (targets[index] == label)].tolist())
        for g in (False, True)
        for label in (0, 1)
    }


# Counted by hand from the rules in the docstring of resample_to_share, e.g. share 0.3 without a
# train size: n_min = round(0.3 * 4000 / 0.7) = round(1714.29) = 1714, of which round(1714 * 0.15)
# = round(257.1) = 257 positive. With train size 1234: n_min = round(370.2) = 370, positives
# round(55.5) = 56 (ties to even), n_maj = 864, positives round(259.2) = 259.
EXPECTED = [
    # share, train_size, (min_pos, min_neg, maj_pos, maj_neg)
    (0.5, None, (600, 3400, 1200, 2800)),
    (0.3, None, (257, 1457, 1200, 2800)),
    (0.1, None, (67, 377, 1200, 2800)),
    (0.01, None, (6, 34, 1200, 2800)),
    (0.5, 2000, (150, 850, 300, 700)),
    (0.3, 2000, (90, 510, 420, 980)),
    (0.1, 2000, (30, 170, 540, 1260)),
    (0.01, 2000, (3, 17, 594, 1386)),
    (0.3, 1234, (56, 314, 259, 605)),
]


@pytest.mark.parametrize("share,train_size,expected", EXPECTED)
def test_exact_cell_counts(pool, share, train_size, expected):
    minority, targets = pool
    index = resample_to_share(minority, targets, share, train_size=train_size, seed=0)
    assert cell_counts(minority, targets, index) == expected
    assert index.dtype == np.int64
    assert np.all(np.diff(index) > 0), "indices must be sorted and without repeats"


@pytest.mark.parametrize("train_size", [None, 777, 3000, 8000])
def test_share_and_label_rates_to_the_nearest_example(pool, train_size):
    minority, targets = pool
    for share in np.linspace(0.02, 0.52, 26):
        if train_size == 8000 and not 0.5 <= share <= 0.5625:
            continue  # infeasible at this size; see test_infeasible_*
        index = resample_to_share(minority, targets, float(share), train_size=train_size, seed=3)
        m, y = minority[index], targets[index]
        n_min, n_maj = int(m.sum()), int((~m).sum())
        if train_size is None:
            assert n_maj == MAJ_POS + MAJ_NEG
            assert abs(n_min - share * n_maj / (1 - share)) <= 0.5
        else:
            assert len(index) == train_size
            assert abs(n_min - share * train_size) <= 0.5
        for group_mask, n, rate in ((m, n_min, 0.15), (~m, n_maj, 0.3)):
            assert abs(y[group_mask].sum() - rate * n) <= 0.5


@pytest.mark.parametrize("train_size", [None, 2000])
def test_selections_are_nested_across_shares(pool, train_size):
    minority, targets = pool
    shares = [0.01, 0.05, 0.1, 0.3, 0.5]
    selections = [cells(minority, targets, resample_to_share(minority, targets, s, train_size=train_size, seed=7))
                  for s in shares]
    for smaller, larger in itertools.pairwise(selections):
        for label in (0, 1):
            # The minority only grows with the share ...
            assert smaller[True, label] <= larger[True, label]
            # ... and the majority is all kept (no train size) or only shrinks (fixed train size).
            if train_size is None:
                assert smaller[False, label] == larger[False, label]
            else:
                assert larger[False, label] <= smaller[False, label]


def test_selections_are_nested_across_train_sizes(pool):
    minority, targets = pool
    small = cells(minority, targets, resample_to_share(minority, targets, 0.1, train_size=1000, seed=7))
    large = cells(minority, targets, resample_to_share(minority, targets, 0.1, train_size=3000, seed=7))
    for cell in small:
        assert small[cell] < large[cell]


def test_deterministic_for_a_seed_and_different_across_seeds(pool):
    minority, targets = pool
    first = resample_to_share(minority, targets, 0.1, train_size=2000, seed=11)
    again = resample_to_share(minority.copy(), targets.copy(), 0.1, train_size=2000, seed=11)
    other = resample_to_share(minority, targets, 0.1, train_size=2000, seed=12)
    np.testing.assert_array_equal(first, again)
    assert cell_counts(minority, targets, other) == cell_counts(minority, targets, first)
    # Same counts, different examples: 200 minority out of 4,500 rarely overlap much.
    overlap = len(np.intersect1d(first[minority[first]], other[minority[other]]))
    assert overlap < 50


def test_infeasible_share_without_train_size_names_largest(pool):
    minority, targets = pool
    with pytest.raises(DataError, match=r"data\.minority_share") as err:
        resample_to_share(minority, targets, 0.6, train_size=None, seed=0)
    # 4500 / 8500 = 0.52941..., printed rounded down so that the printed share is feasible.
    assert "0.5294" in str(err.value)
    assert "data.train_size" in str(err.value)
    index = resample_to_share(minority, targets, 0.5294, train_size=None, seed=0)
    assert minority[index].sum() == round(0.5294 * 4000 / (1 - 0.5294)) <= 4500


def test_infeasible_share_with_train_size_names_the_feasible_range(pool):
    minority, targets = pool
    # 8,000 examples from 4,000 majority + 4,500 minority: the minority must be 4,000 to 4,500 of them.
    with pytest.raises(DataError, match=r"data\.minority_share.*data\.train_size") as err:
        resample_to_share(minority, targets, 0.3, train_size=8000, seed=0)
    assert "smallest feasible share at this train size is 0.5 " in str(err.value)
    with pytest.raises(DataError, match=r"largest feasible share at this train size is 0\.5625"):
        resample_to_share(minority, targets, 0.6, train_size=8000, seed=0)
    for feasible in (0.5, 0.5625):
        assert len(resample_to_share(minority, targets, feasible, train_size=8000, seed=0)) == 8000


def test_zero_minority_and_oversized_train_set_are_refused(pool):
    minority, targets = pool
    with pytest.raises(DataError, match=r"data\.minority_share: 0\.0001 .* selects 0 minority"):
        resample_to_share(minority, targets, 0.0001, train_size=2000, seed=0)
    with pytest.raises(DataError, match=r"selects 0 minority"):
        resample_to_share(minority, targets, 0.0001, train_size=None, seed=0)
    with pytest.raises(DataError, match=r"data\.train_size: 9000 is larger than the training pool of 8500"):
        resample_to_share(minority, targets, 0.1, train_size=9000, seed=0)
    with pytest.raises(ConfigError, match=r"data\.minority_share"):
        resample_to_share(minority, targets, 1.0, train_size=None, seed=0)
    with pytest.raises(DataError, match="no minority"):
        resample_to_share(np.zeros(100, bool), np.arange(100) % 2, 0.1, train_size=None, seed=0)


def test_share_none_keeps_the_pools_share(pool):
    minority, targets = pool
    np.testing.assert_array_equal(resample_to_share(minority, targets, None, train_size=None, seed=0), np.arange(8500))
    index = resample_to_share(minority, targets, None, train_size=1000, seed=0)
    assert len(index) == 1000 and len(np.unique(index)) == 1000
    # Largest remainder: each cell gets its quota 1000 * cell / 8500 rounded up or down.
    for got, cell in zip(cell_counts(minority, targets, index), (MIN_POS, MIN_NEG, MAJ_POS, MAJ_NEG)):
        assert abs(got - 1000 * cell / 8500) < 1
