"""Tabular data sources: one declared table per source, run by the shared code of this module.

A source is a :class:`TabularSource`, filed in :data:`TABULAR_SOURCES` under its ``data.name``
(:mod:`dataset.adult`, :mod:`dataset.compas`, :mod:`dataset.german`, :mod:`dataset.lsac`): its
files, its feature columns and their types (numeric, kept raw; categorical, one-hot), their
public bounds and categories with the documents they come from (:mod:`dataset.preprocessing`),
its label, its protected attributes, its missing-value rule and its train/test split. What only
that source's files need is a small named hook in the table: ``read`` (the file format, parsed and
checked, with the missing-value rule and any published filter applied), ``restrict`` (rows a
comparison leaves out, COMPAS's race pair) and ``protocols`` (another ``data.adult.protocol``'s whole
pipeline, Adult's RUNNER).

The shared code (:func:`load_tabular`) then does what is the same for every source: check
``data.protected``, read, split (the files' own split, or a fixed stratified one), find the
minority group, encode and record the counts in a :class:`TabularPool`. :func:`build_tabular_bundle`
resamples the pool to the configured minority share (:mod:`dataset.imbalance`) and scales the
numeric features. :func:`register_source` files a declaration in both registries; adding a source
is writing its declaration (and its read hook) and registering it.

What the fixed split is, and why (COMPAS, German credit, LSAC): none of them ships an official
split, so each is split 80/20 once, stratified by its declared strata (label × sex × race, × age
group for German credit), with a seed of its own (:data:`SPLIT_SEED`, stream ``{name}_split`` in
:mod:`utils.seeding`) that does *not* depend on the run's seed. A researcher comparing seeds then
compares runs judged on the same test rows (paired comparisons, the spread over seeds is the
spread of training, resampling and noise, not of the test draw), the same way Adult's official
split and CelebA's protocol test set stay fixed. The strata do not depend on ``data.protected``
either, so a ``sex`` run and a ``race`` run of COMPAS share their test rows (the race run keeps the
two races it compares). ``info["test_rows_md5"]`` fingerprints the test rows, so two runs can be
checked to share them. The validation set comes from the run's seed (stream ``validation``).

What every source shares, and why:

* **The protected attribute stays an input**: the study asks how much a model learns about a
  group it rarely sees, not whether it is fair through unawareness, and the other columns carry
  proxies of the group anyway.
* **Positive label = the event predicted** (income >50K; recidivism within two years; bad credit;
  passing the bar), so ``test/selection_rate`` is the predicted rate of that event and
  ``test/eo_gap`` the gap in catching it. For COMPAS and German credit that event is the
  unfavourable outcome.
* **Group names**: ``data.protected`` names one of the declared protected attributes;
  ``data.minority_value`` is a value of it or ``non-X`` for every value but X.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataset import DATASETS
from dataset.base import DataBundle
from dataset.imbalance import resample_to_share, validation_info, validation_split
from dataset.preprocessing import (
    FITTED,
    PUBLIC,
    PublicRange,
    PublicSchema,
    document,
    one_hot_record,
    resolved_mode,
    standardized_record,
)
from utils.errors import ConfigError
from utils.registry import Registry
from utils.seeding import numpy_generator

# Message parts the tests import (fairlearn's habit: constants, not regexes copied by hand).
UNKNOWN_TARGET = "predicts"
ADULT_DEFAULT_TARGET = "is the default of data.target"
UNKNOWN_PROTECTED = "is not a protected attribute of"
UNKNOWN_MINORITY = "does not occur in"

# The fixed split: this share of every stratum goes to the test set, drawn with this seed (not the run's).
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# The DataConfig keys only the tabular data sets read (dataset.check_data_keys refuses them elsewhere).
TABULAR_DATA_KEYS = ("preprocessing",)


@dataclass(frozen=True)
class TabularPool:
    """A tabular data set encoded as numbers, before any resampling.

    Attributes:
        x_pool: float32 features of the training pool, one row per example; numeric features raw
            (not yet standardized), categorical ones one-hot.
        y_pool: int64 0/1 targets of the training pool.
        minority_pool: bool, True where the example belongs to the minority group.
        x_test, y_test, minority_test: the same for the test set.
        feature_names: one name per column of ``x_*`` ("age", "sex=Female", ...).
        numeric_columns: indices of the numeric columns, the ones the bundle builder standardizes.
        info: facts worth logging: file provenance, rows read and dropped per split, group counts.
        x_val, y_val, minority_val: a validation set that the source's protocol fixes itself
            (Adult's RUNNER protocol), or None: then ``data.val_fraction`` draws one from the pool.
        public_ranges: per numeric column (in ``numeric_columns`` order) its public bounds
            (:class:`dataset.preprocessing.PublicRange`), which ``preprocessing: public`` maps
            it with; empty when the loader encoded nothing numeric.
        encoding: preprocessing.json's entries of the columns the loader encoded itself (one-hot
            columns, RUNNER's bins), with their sources.
        preprocessing: the mode the loader encoded with, "public" or "fitted".
    """

    x_pool: np.ndarray
    y_pool: np.ndarray
    minority_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    minority_test: np.ndarray
    feature_names: tuple[str, ...]
    numeric_columns: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    minority_val: np.ndarray | None = None
    public_ranges: tuple[PublicRange, ...] = ()
    encoding: tuple[dict[str, Any], ...] = ()
    preprocessing: str = FITTED

    def __post_init__(self):
        splits = [("pool", self.x_pool), ("test", self.x_test)]
        if self.x_val is not None:
            splits.append(("val", self.x_val))
        for split, x in splits:
            if x.ndim != 2 or x.shape[1] != len(self.feature_names):
                raise ValueError(f"x_{split} has shape {x.shape}, but there are {len(self.feature_names)} feature names")
            for part in ("y", "minority"):
                if len(getattr(self, f"{part}_{split}")) != len(x):
                    raise ValueError(f"{part}_{split} and x_{split} differ in length")


def build_tabular_bundle(
    pool: TabularPool, *, minority_share: float | None, train_size: int | None, seed: int,
    val_fraction: float = 0.0,
) -> DataBundle:
    """Hold out a validation set, resample the rest to the minority share, scale the numbers.

    With ``val_fraction`` > 0 the validation set is :func:`dataset.imbalance.validation_split` of
    the pool (stratified by group and label, its own random stream), drawn first; a pool that
    brings its own validation set (``pool.x_val``, a protocol's) uses that one instead. The
    training set is :func:`dataset.imbalance.resample_to_share` of the rest of the pool (see there
    for the counts and the nesting across shares). The numeric columns are then scaled as the
    pool's ``preprocessing`` says (:mod:`dataset.preprocessing`):

    - public: each clipped to its public bounds and mapped to [-1, 1]
      (:meth:`dataset.preprocessing.PublicRange.scale`), row by row, reading no other row;
    - fitted: centred and scaled with the mean and standard deviation (ddof 0) of the *selected*
      training rows, and the validation and test sets with the same statistics: neither must shape
      the features, and the pool rows left out are not part of this experiment's training data
      either. A numeric column that is constant in the training set keeps scale 1, so it becomes
      all zeros rather than NaN. Under DP these statistics are computed from the private training
      data without noise and are not covered by ε (the run says so).

    Args:
        pool: the source's encoded data.
        minority_share: ``data.minority_share``, or None for the pool's own share.
        train_size: ``data.train_size``, or None to keep all majority examples.
        seed: seed of the resampling and the validation split (the run's seed).
        val_fraction: ``data.val_fraction``; 0 holds out nothing (the training set is then exactly
            the one drawn before validation splits existed).

    Returns:
        A DataBundle with float32 features, ``input_shape`` ``(n_features,)`` and no transform;
        ``info`` holds the pool's facts, its per-group counts, the validation set's and the
        resampling outcome; ``preprocessing`` the content of preprocessing.json.
    """
    if pool.x_val is not None:
        if val_fraction:
            raise ConfigError(f"data.val_fraction: got {val_fraction!r}, but this data protocol brings its own "
                              "validation set; set data.val_fraction: 0.")
        rest = np.arange(len(pool.y_pool))
        x_val, y_val, minority_val = pool.x_val.copy(), pool.y_val.copy(), pool.minority_val.copy()
        val_source = "protocol"
    elif val_fraction > 0:
        val_index, rest = validation_split(pool.minority_pool, pool.y_pool, val_fraction, seed=seed)
        x_val, y_val, minority_val = (pool.x_pool[val_index].copy(), pool.y_pool[val_index],
                                      pool.minority_pool[val_index])
        val_source = "val_fraction"
    else:
        rest = np.arange(len(pool.y_pool))
        x_val = np.zeros((0, pool.x_pool.shape[1]), dtype=pool.x_pool.dtype)
        y_val, minority_val = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        val_source = None
    index = rest[resample_to_share(pool.minority_pool[rest], pool.y_pool[rest], minority_share,
                                   train_size=train_size, seed=seed)]
    x_train = pool.x_pool[index].copy()
    y_train = pool.y_pool[index]
    minority_train = pool.minority_pool[index]
    x_test = pool.x_test.copy()

    numeric = list(pool.numeric_columns)
    numeric_records = []
    if pool.preprocessing == PUBLIC:
        if len(pool.public_ranges) != len(numeric):
            raise ValueError("preprocessing: public needs a public range for every numeric column")
        for column, bounds in zip(numeric, pool.public_ranges):
            for x in (x_train, x_test, x_val):
                x[:, column] = bounds.scale(x[:, column]).astype(np.float32)
            numeric_records.append(bounds.record(pool.feature_names[column]))
    else:
        # Statistics in float64: capital-gain reaches 99,999 and a float32 sum over 30k rows loses digits.
        values = x_train[:, numeric].astype(np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std[std == 0] = 1.0
        x_train[:, numeric] = ((values - mean) / std).astype(np.float32)
        x_test[:, numeric] = ((x_test[:, numeric].astype(np.float64) - mean) / std).astype(np.float32)
        x_val[:, numeric] = ((x_val[:, numeric].astype(np.float64) - mean) / std).astype(np.float32)
        numeric_records = [standardized_record(pool.feature_names[column], m, sd)
                           for column, m, sd in zip(numeric, mean, std)]

    n_min = int(np.count_nonzero(minority_train))
    info = dict(pool.info)
    info.update(
        {
            "minority_share": minority_share,
            "train_size": train_size,
            "train_share": n_min / len(index),
            "train_positive_rate/group=minority": positive_rate(y_train[minority_train]),
            "train_positive_rate/group=majority": positive_rate(y_train[~minority_train]),
            "feature_names": list(pool.feature_names),
            "numeric_features": [pool.feature_names[i] for i in numeric],
            **validation_info(y_val, minority_val, val_fraction, val_source),
        }
    )
    return DataBundle(
        x_train=x_train,
        y_train=y_train,
        minority_train=minority_train,
        x_test=x_test,
        y_test=pool.y_test.copy(),
        minority_test=pool.minority_test.copy(),
        input_shape=(x_train.shape[1],),
        transform=None,
        info=info,
        x_val=x_val,
        y_val=y_val,
        minority_val=minority_val,
        preprocessing=document(pool.preprocessing, [*numeric_records, *pool.encoding],
                               dropped_columns=list(pool.info.get("dropped_columns", []))),
    )




# ---------------------------------------------------------------------------------------------------
# A source's declaration
# ---------------------------------------------------------------------------------------------------

OFFICIAL = "official"
"""``TabularSource.split`` of a source whose files are its train/test split (adult.data, adult.test)."""


@dataclass(frozen=True)
class FixedSplit:
    """The fixed stratified 80/20 split (module docstring) of a source that ships no split.

    Attributes:
        strata: columns of the read table whose value combinations are the strata ("label": the label).
        stream: the random stream of :data:`SPLIT_SEED` that draws it (``{name}_split``).
    """

    strata: tuple[str, ...]
    stream: str


@dataclass(frozen=True)
class Protected:
    """One value ``data.protected`` may take.

    Attributes:
        column: the read table's column holding each row's group; None: the attribute's own name
            (German credit's ``age`` groups are the derived column ``age_group``).
        values: the values ``data.minority_value`` may name (besides "non-X"), or None for those that
            occur in the training pool.
    """

    column: str | None = None
    values: tuple[str, ...] | None = None


@dataclass
class SourceRows:
    """What a source's read hook returns: its files' rows, parsed, checked and filtered.

    Attributes:
        table: column name -> values over the rows (numeric columns as float64, the others as str):
            every declared feature, protected column and stratum.
        labels: int64 0/1 labels, one per row.
        path: the file read (the training file under the official split), for messages.
        info: facts of the files (provenance, md5, rows read, dropped and why), in the order they
            enter the pool's ``info``.
        row_ids: 0-based data row in the file of each row, fingerprinted by ``info["test_rows_md5"]``
            under a fixed split.
        is_test: under the ``OFFICIAL`` split, True for the rows of the test file; else None.
        test_path: under the ``OFFICIAL`` split, the test file, for messages.
    """

    table: dict[str, np.ndarray]
    labels: np.ndarray
    path: Path
    info: dict[str, Any]
    row_ids: np.ndarray | None = None
    is_test: np.ndarray | None = None
    test_path: Path | None = None


# A read hook: (the declaration, data.root) -> its rows. A restrict hook: (the protected column's
# values, the allowed minority values, protected=, minority_value=, info=) -> (allowed values,
# rows kept), recording what it leaves out in info. A protocol hook: (data.root, protected=,
# minority_value=, seed=, preprocessing=) -> TabularPool.
ReadHook = Callable[["TabularSource", "str | Path | None"], SourceRows]
RestrictHook = Callable[..., tuple[Sequence[str], np.ndarray]]
ProtocolHook = Callable[..., "TabularPool"]


@dataclass(frozen=True, eq=False)
class TabularSource:
    """One tabular data set, declared: what the shared code (:func:`load_tabular`) needs to load it.

    Attributes:
        name: ``data.name``.
        title: the data set's name in messages.
        target: the one ``data.target`` it accepts (its label).
        label: what label 1 means, in words (the positive label is the event predicted).
        files: the file names it reads, each with the md5 of the published original (what the
            shipped copy must decompress to), or None where nothing is shipped.
        shipped_dir: where the copies shipped with the repository are; None: the user's copy only.
        url: where the data is published (None: nowhere public).
        numeric: the numeric feature columns, kept raw (the bundle builder scales them), each with
            a public range in ``public``.
        categorical: the categorical feature columns, one-hot in sorted order of their categories,
            each with its documented categories in ``public``.
        public: the public bounds and categories, with their sources (:mod:`dataset.preprocessing`).
        protected: the values of ``data.protected``, in the order messages list them.
        missing: the missing-value rule, in words (the read hook applies it).
        split: :data:`OFFICIAL` or a :class:`FixedSplit`.
        read: the read hook (the file format; see :class:`SourceRows`).
        example: (protected, minority_value) of a typical config, for the forgotten-target hint.
        dropped: columns of the files that are deliberately no feature under the official split
            (recorded in ``info`` and preprocessing.json), with the reason beside the declaration.
        restrict: the restrict hook, or None to keep every row (COMPAS keeps only the two races
            a race comparison is about).
        notes: facts the declaration adds to the pool's ``info`` after the read (and restrict)
            hooks' own.
        protocols: other protocols than "official" (the ``protocol`` of the source's own settings,
            ``data.<name>.protocol``), each with the hook that loads the whole pool its own way
            (Adult's RUNNER protocols).
        settings: the source's own settings class, the config's ``data.<name>`` section
            (training.validation types it; None: the source has no settings of its own).
    """

    name: str
    title: str
    target: str
    label: str
    files: Mapping[str, str | None]
    shipped_dir: Path | None
    url: str | None
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    public: PublicSchema
    protected: Mapping[str, Protected]
    missing: str
    split: FixedSplit | str
    read: ReadHook
    example: tuple[str, str]
    dropped: tuple[str, ...] = ()
    restrict: RestrictHook | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    protocols: Mapping[str, ProtocolHook] = field(default_factory=dict)
    settings: type | None = None

    def load(self, root: str | Path | None, *, protected: str, minority_value: str,
             preprocessing: str = FITTED) -> TabularPool:
        """:func:`load_tabular` of this source."""
        return load_tabular(self, root, protected=protected, minority_value=minority_value,
                            preprocessing=preprocessing)


# Declarations by data.name (each source's module registers its own, register_source).
TABULAR_SOURCES: Registry[TabularSource] = Registry("dataset", "data.name")


# ---------------------------------------------------------------------------------------------------
# The shared code
# ---------------------------------------------------------------------------------------------------


def load_tabular(source: TabularSource, root: str | Path | None, *, protected: str, minority_value: str,
                 preprocessing: str = FITTED) -> TabularPool:
    """The source's training pool and test set, encoded as numbers (:class:`TabularPool`).

    Reads the files (``source.read``), splits them (the files' own split, or the declared fixed
    one), finds the minority rows (``data.minority_value`` among the values of the protected
    column, or "non-X"), keeps the rows ``source.restrict`` keeps, and encodes the declared
    columns: numeric ones raw, categorical ones one-hot over the declared categories
    (``preprocessing`` "public") or those of the training pool ("fitted"); a value outside them
    encodes as all zeros and is counted in ``info``.

    Args:
        source: the declaration.
        root: ``data.root``: None for the shipped copy, else a directory holding the files.
        protected: ``data.protected``, one of ``source.protected``.
        minority_value: ``data.minority_value``.
        preprocessing: "public" or "fitted" (:mod:`dataset.preprocessing`).

    Raises:
        DataError: a missing, corrupted or malformed file (naming the file and line).
        ConfigError: an unknown protected column or minority value (listing the allowed ones), or
            a minority value that leaves a split without one of the groups.
    """
    # Checked before reading the files: this one needs no data to be answered.
    if protected not in source.protected:
        raise ConfigError(f"data.protected: {protected!r} {UNKNOWN_PROTECTED} {source.title}; use one of "
                          f"{', '.join(source.protected)}.")
    rows = source.read(source, root)
    table, labels, info = rows.table, rows.labels, rows.info
    if source.split == OFFICIAL:
        is_test = rows.is_test
    else:
        strata = [labels.astype(str) if name == "label" else table[name] for name in source.split.strata]
        is_test = fixed_split(np.stack(strata, axis=1), source.split.stream)

    attribute = source.protected[protected]
    groups = table[attribute.column or protected]
    allowed = (attribute.values if attribute.values is not None
               else sorted(set(groups[~is_test].tolist())))
    keep = np.ones(len(groups), dtype=bool)
    if source.restrict is not None:
        allowed, keep = source.restrict(groups, allowed, protected=protected, minority_value=minority_value,
                                        info=info)
    minority = minority_mask(groups, allowed, protected=protected, minority_value=minority_value,
                             title=source.title)
    info.update(source.notes)

    train_rows, test_rows = np.flatnonzero(keep & ~is_test), np.flatnonzero(keep & is_test)
    minority_pool, minority_test = minority[train_rows], minority[test_rows]
    _check_groups(source, rows, minority_pool, minority_test, minority_value)

    public = source.public if preprocessing == PUBLIC else None
    encoder = OneHotEncoder({name: table[name][train_rows] for name in source.categorical}, source.numeric,
                            source.categorical, public)
    x_pool, unseen_pool = encoder.encode(table, train_rows)
    if public is not None:  # a user's copy may spell a category otherwise; it then encodes as all zeros
        info["pool_rows_unlisted_category"] = unseen_pool
    x_test, unseen_test = encoder.encode(table, test_rows)
    y_pool, y_test = labels[train_rows], labels[test_rows]
    info.update(_split_facts(source, rows, train_rows, test_rows, minority, {
        "test_rows_unseen_category": unseen_test, "protected": protected, "minority_value": minority_value,
        "minority_values": sorted(set(groups[train_rows][minority_pool].tolist()))}))
    return TabularPool(x_pool=x_pool, y_pool=y_pool, minority_pool=minority_pool, x_test=x_test, y_test=y_test,
                       minority_test=minority_test, feature_names=encoder.names,
                       numeric_columns=encoder.numeric_columns, info=info,
                       public_ranges=tuple(source.public.ranges[name] for name in source.numeric),
                       encoding=tuple(one_hot_record(name, values, public=source.public.categories[name]
                                                     if public is not None else None)
                                      for name, values in encoder.categories.items()),
                       preprocessing=preprocessing)


def _check_groups(source: TabularSource, rows: SourceRows, minority_pool: np.ndarray, minority_test: np.ndarray,
                  minority_value: Any) -> None:
    """Refuse a minority value that leaves a split without a group to compare: under the official
    split a test set without the minority; under a fixed split a pool or test set with no or only
    minority rows."""
    if source.split == OFFICIAL:
        if not minority_test.any():
            raise ConfigError(
                f"data.minority_value: {minority_value!r} occurs in the training pool but not in the test set "
                f"({rows.test_path}), so no group metric could be computed; choose a larger group."
            )
        return
    for split, mask in (("training pool", minority_pool), ("test set", minority_test)):
        if not mask.any() or mask.all():
            which = "no" if not mask.any() else "only"
            raise ConfigError(f"data.minority_value: {minority_value!r} leaves {which} minority examples in "
                              f"the {split} of {source.title} ({rows.path}), so the groups cannot be "
                              "compared; choose another value.")


def _split_facts(source: TabularSource, rows: SourceRows, train_rows: np.ndarray, test_rows: np.ndarray,
                 minority: np.ndarray, groups: dict[str, Any]) -> dict[str, Any]:
    """The pool's ``info`` entries after the encoding, in the order each split has always written
    them: ``groups`` (unseen categories, protected attribute and minority values), the pool's (and
    under a fixed split the test set's) count and positive rate per group, the minority's share of
    the pool, and what says which rows were chosen (the official split: the columns dropped; a
    fixed split: the row counts, the split rule and the test rows' fingerprint)."""
    y_pool, y_test = rows.labels[train_rows], rows.labels[test_rows]
    minority_pool, minority_test = minority[train_rows], minority[test_rows]
    pool = {"minority": (y_pool, minority_pool), "majority": (y_pool, ~minority_pool)}
    if source.split == OFFICIAL:
        return {"dropped_columns": list(source.dropped), **groups, **_group_facts("pool", pool),
                "pool_share": float(minority_pool.mean())}
    test = {"minority": (y_test, minority_test), "majority": (y_test, ~minority_test)}
    return {
        "rows/train": len(train_rows),
        "rows/test": len(test_rows),
        "split": f"fixed stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} (split seed {SPLIT_SEED}, "
                 "independent of the run's seed)",
        # The test set's data rows of the file (0-based), fingerprinted: equal digests, same test rows.
        "test_rows_md5": hashlib.md5(",".join(map(str, rows.row_ids[test_rows])).encode()).hexdigest(),
        **groups,
        "pool_share": float(minority_pool.mean()),
        **_group_facts("pool", pool, "test", test),
    }


def _group_facts(*parts) -> dict[str, Any]:
    """``{part}_count/group=g`` and ``{part}_positive_rate/group=g`` of each (part, {g: (labels, mask)})
    pair in ``parts``, group by group (minority first), each group's parts in the order given."""
    pairs = list(zip(parts[::2], parts[1::2]))
    facts: dict[str, Any] = {}
    for group in ("minority", "majority"):
        for part, by_group in pairs:
            y, mask = by_group[group]
            facts[f"{part}_count/group={group}"] = int(np.count_nonzero(mask))
            facts[f"{part}_positive_rate/group={group}"] = positive_rate(y[mask])
    return facts


def fixed_split(strata: np.ndarray, purpose: str) -> np.ndarray:
    """True for the test rows: ``TEST_FRACTION`` of every stratum, the same whatever the run's seed.

    ``strata`` has one row of strings per example; every distinct row is a stratum. Each stratum's
    members (in file order) are permuted by the ``purpose`` stream of :data:`SPLIT_SEED` and the
    stratum's index among the sorted strata, and the first ``round(TEST_FRACTION * n)`` go to the test set.
    """
    keys = ["\x1f".join(row) for row in strata]
    is_test = np.zeros(len(keys), dtype=bool)
    keys_array = np.array(keys, dtype=object)
    for index, key in enumerate(sorted(set(keys))):
        members = np.flatnonzero(keys_array == key)
        order = numpy_generator(SPLIT_SEED, purpose, index).permutation(members)
        is_test[order[: round(TEST_FRACTION * len(members))]] = True
    return is_test


def minority_mask(values: np.ndarray, allowed: Sequence[str], *, protected: str, minority_value: Any,
                  title: str) -> np.ndarray:
    """The minority mask from ``data.minority_value``: a value of the column, or "non-X" for every value but X."""
    allowed = list(allowed)
    value, negate = str(minority_value), False
    if value.startswith("non-") and value not in allowed:
        value, negate = value[len("non-"):], True
    if value not in allowed:
        choices = allowed + [f"non-{v}" for v in allowed if f"non-{v}" not in allowed and not v.startswith("non-")]
        raise ConfigError(f"data.minority_value: {minority_value!r} {UNKNOWN_MINORITY} column {protected!r} of "
                          f"{title}; use one of {', '.join(choices)}.")
    return values != value if negate else values == value


class OneHotEncoder:
    """Numeric columns raw (the bundle builder scales them), categorical ones one-hot, in sorted
    order, over the documented categories (``public``) or, without them, the values of the
    training pool; a value outside them (a test value unseen in training) encodes as zeros.

    Either fixes one column layout for both splits, independent of the row order.
    """

    def __init__(self, train: dict[str, np.ndarray], numeric: Sequence[str], categorical: Sequence[str],
                 public: PublicSchema | None = None):
        self.numeric = list(numeric)
        self.categories = {name: public.categories[name].sorted() if public is not None
                           else np.unique(train[name]) for name in categorical}
        names = list(self.numeric)
        for name, values in self.categories.items():
            names += [f"{name}={v}" for v in values]
        self.names = tuple(names)
        self.numeric_columns = tuple(range(len(self.numeric)))

    def encode(self, table: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, int]:
        """float32 features of ``rows`` of ``table``, and how many of them had a category outside the list."""
        x = np.zeros((len(rows), len(self.names)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            x[:, j] = table[name][rows]
        offset = len(self.numeric)
        unseen = np.zeros(len(rows), dtype=bool)
        index = np.arange(len(rows))
        for name, values in self.categories.items():
            column = table[name][rows]
            code = np.searchsorted(values, column).clip(max=len(values) - 1)
            seen = values[code] == column
            x[index[seen], offset + code[seen]] = 1.0
            unseen |= ~seen
            offset += len(values)
        return x, int(np.count_nonzero(unseen))


def positive_rate(y: np.ndarray) -> float | None:
    """The positive rate of ``y``, or None for an empty group (JSON-friendly, unlike NaN)."""
    return float(y.mean()) if len(y) else None


# ---------------------------------------------------------------------------------------------------
# Registration in the project's data-set registry
# ---------------------------------------------------------------------------------------------------

def check_target(source: TabularSource, target: str) -> None:
    """``data.target`` must be the source's label; DataConfig's default (Adult's income) gets a hint."""
    if target == source.target:
        return
    protected, value = source.example
    hint = ""
    if target == "income":
        hint = (f" 'income' {ADULT_DEFAULT_TARGET} (UCI Adult's label), so a {source.name} config must set it: "
                f"data: {{name: {source.name}, target: {source.target}, protected: {protected}, "
                f"minority_value: {value}}}.")
    raise ConfigError(f"data.target: got {target!r}; data set {source.name!r} {UNKNOWN_TARGET} {source.target!r} "
                      f"only.{hint}")


def register_source(source: TabularSource) -> TabularSource:
    """File ``source`` in :data:`TABULAR_SOURCES` and its builder in the project's data-set registry:
    load the pool (the declared protocol's hook for another ``data.<name>.protocol``), then resample it."""
    TABULAR_SOURCES.register(source.name)(source)

    @DATASETS.register(source.name)
    def build(config) -> DataBundle:
        data = config.data
        check_target(source, data.target)
        preprocessing = resolved_mode(config)
        # the protocol of the source's own settings (data.adult.protocol); "official" reads the files
        protocol = source.protocols.get(getattr(data.settings, "protocol", "official"))
        if protocol is not None:
            pool = protocol(data.root, protected=data.protected, minority_value=data.minority_value,
                            seed=config.seed, preprocessing=preprocessing)
        else:
            pool = source.load(data.root, protected=data.protected, minority_value=data.minority_value,
                               preprocessing=preprocessing)
        return build_tabular_bundle(pool, minority_share=data.minority_share, train_size=data.train_size,
                                    seed=config.seed, val_fraction=data.val_fraction)

    build.data_keys = TABULAR_DATA_KEYS
    if source.settings is not None:
        build.Settings = source.settings  # the config's data.<name> section (training.validation)
    return source
