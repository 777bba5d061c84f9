"""Every declared tabular source is complete and consistent, and the shared code loads it as before.

Each source is a declaration (:class:`dataset.tabular.TabularSource`) run by shared code, so these
tests are parametrized over :data:`dataset.tabular.TABULAR_SOURCES`: a new source is checked by
being registered. The shipped files are held against their declarations (every category they hold
is a declared one, every number lies within its public bounds), and the pools the shared code
builds from them are pinned to checksums computed with the per-source loaders this code replaced
(main at 30c4ee2, before issue 27 item 4), so a change in rows, order, features or encoding shows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dataset import DATASETS
from dataset.adult import load_adult_runner
from dataset.preprocessing import PublicCategories, PublicRange
from dataset.tabular import (
    OFFICIAL,
    TABULAR_DATA_KEYS,
    TABULAR_SOURCES,
    FixedSplit,
    TabularPool,
    TabularSource,
)

SOURCES = list(TABULAR_SOURCES)
SHIPPED = [name for name in SOURCES if TABULAR_SOURCES.get(name).shipped_dir is not None]


def pool_digest(pool: TabularPool) -> str:
    """SHA-256 of a pool's arrays (dtype, shape and bytes, in a fixed order) and feature names."""
    digest = hashlib.sha256()
    for name in ("x_pool", "y_pool", "minority_pool", "x_test", "y_test", "minority_test",
                 "x_val", "y_val", "minority_val"):
        array = getattr(pool, name)
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(f"{name}{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    digest.update("\n".join(pool.feature_names).encode())
    return digest.hexdigest()


# Computed on main at 30c4ee2 with load_adult / load_compas / load_german / load_adult_runner.
PINNED = {
    ("adult", "sex", "Female", "fitted"): "8c4efd3fade382e12f89a1d78e577bece45d577a1fe035b4c256b0f5f9567930",
    ("adult", "sex", "Female", "public"): "bad2cf7407a6f3dc12edc96bf78de5741d61caee03d987adf0219bfc493c0080",
    ("adult", "race", "non-White", "fitted"): "315ad31b181c67a0ce8e6a3a0a1dfef87af496ecd09581707713cc62244be3e4",
    ("adult", "race", "non-White", "public"): "89715eb478baa634b1bf0729ad5570e57d87564df222f69f1214d77f04d62dde",
    ("compas", "race", "African-American", "fitted"):
        "0f0c39414ce8f67a25bf082527a9b276a4a3ce1dc49c171eb74727e20da1ec29",
    ("compas", "race", "African-American", "public"):
        "98587379c0a2065cc2e3680c70ce0900947a6a2c907802c9b3d355c2826ee1cb",
    ("compas", "sex", "Female", "fitted"): "79ae4abe1f967296af545da8f5cd139633296e47d6541607979dfda2e4d25f00",
    # The same: the pool's numbers are raw, and the shipped file holds exactly the declared categories.
    ("compas", "sex", "Female", "public"): "79ae4abe1f967296af545da8f5cd139633296e47d6541607979dfda2e4d25f00",
    ("german", "age", "young", "fitted"): "9c553c63d648688eff3e1a11ce639bc9e391a992359043107b959eaf865e343f",
    ("german", "age", "young", "public"): "009ee6589026656b8d6e813198cb792f4684bb4029d6be297669041b0cfe0fd5",
    ("german", "sex", "Female", "fitted"): "dbb6ef58593bf590b23209b2701188409653756299e4b9e59855d142bc93805c",
    ("german", "sex", "Female", "public"): "49a415b9560edbf64ba39766199e82a74dd1ca85041a8fc6b9c4160af0f3f15f",
}
PINNED_RUNNER = {
    ("corrected", "fitted"): "6f50c1f65c714a182fd77eff2deec527f1bf41d95bee4eba0c032f4e49ab33ff",
    ("corrected", "public"): "392e7667695a02f3dc40ad82076e616f0f1e44acf85616ae442f371d3f0ab263",
    ("released", "fitted"): "76a9974f65ba752539237f45e8a4d17ac380df2e5684bffe623adab84457195a",
}


@pytest.fixture(scope="module")
def shipped_rows():
    """Each shipped source's rows as its read hook returns them (memoized across tests)."""
    return {name: TABULAR_SOURCES.get(name).read(TABULAR_SOURCES.get(name), None) for name in SHIPPED}


@pytest.mark.parametrize("name", SOURCES)
def test_the_declaration_is_complete(name):
    source = TABULAR_SOURCES.get(name)
    assert isinstance(source, TabularSource) and source.name == name
    assert DATASETS.get(name).data_keys == TABULAR_DATA_KEYS
    assert source.title and source.target and source.label and source.missing
    assert source.files and all(md5 is None or len(md5) == 32 for md5 in source.files.values())
    # Every feature has exactly one type and its public parameters, each with its source.
    assert not set(source.numeric) & set(source.categorical)
    assert set(source.public.ranges) == set(source.numeric)
    assert set(source.public.categories) == set(source.categorical)
    for bounds in source.public.ranges.values():
        assert isinstance(bounds, PublicRange) and bounds.source
    for categories in source.public.categories.values():
        assert isinstance(categories, PublicCategories) and categories.source
        assert len(set(categories.values)) == len(categories.values) > 0
    assert not set(source.dropped) & (set(source.numeric) | set(source.categorical))
    # The protected attributes, and the example of the forgotten-target hint among them.
    assert source.protected and source.example[0] in source.protected
    assert source.split == OFFICIAL or (isinstance(source.split, FixedSplit)
                                        and source.split.stream == f"{name}_split" and "label" in source.split.strata)
    assert callable(source.read) and all(callable(hook) for hook in source.protocols.values())
    if source.shipped_dir is not None:
        for file, md5 in source.files.items():
            assert md5 is not None and (source.shipped_dir / f"{file}.gz").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_files_hold_the_declared_columns(name, shipped_rows):
    source, rows = TABULAR_SOURCES.get(name), shipped_rows[name]
    n = len(rows.labels)
    assert set(np.unique(rows.labels)) == {0, 1}
    for column in (*source.numeric, *source.categorical):
        assert len(rows.table[column]) == n, column
    for attribute, declared in source.protected.items():
        groups = rows.table[declared.column or attribute]
        if declared.values is not None:
            assert set(groups.tolist()) <= set(declared.values), attribute
    if source.split == OFFICIAL:
        assert rows.is_test is not None and rows.is_test.any() and not rows.is_test.all()
    else:
        assert all(stratum == "label" or stratum in rows.table for stratum in source.split.strata)
        assert len(rows.row_ids) == n and len(set(rows.row_ids.tolist())) == n


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_values_lie_within_the_public_bounds_and_categories(name, shipped_rows):
    source, rows = TABULAR_SOURCES.get(name), shipped_rows[name]
    for column, bounds in source.public.ranges.items():
        values = rows.table[column]
        assert values.dtype == np.float64
        assert bounds.low <= values.min() and values.max() <= bounds.high, (column, values.min(), values.max())
    for column, categories in source.public.categories.items():
        held = set(rows.table[column].tolist())
        assert held <= set(categories.values), (column, held - set(categories.values))


@pytest.mark.parametrize("name", SHIPPED)
def test_public_encoding_of_the_shipped_files_lists_every_value(name):
    """The consequence of the two tests above for the pipeline: no row encodes as all zeros."""
    source = TABULAR_SOURCES.get(name)
    protected, value = source.example
    pool = source.load(None, protected=protected, minority_value=value, preprocessing="public")
    assert pool.info["pool_rows_unlisted_category"] == 0
    assert pool.info["test_rows_unseen_category"] == 0
    assert len(pool.public_ranges) == len(pool.numeric_columns) == len(source.numeric)


@pytest.mark.parametrize("case", sorted(PINNED), ids="/".join)
def test_the_shared_code_loads_each_shipped_source_as_before(case):
    name, protected, value, preprocessing = case
    pool = TABULAR_SOURCES.get(name).load(None, protected=protected, minority_value=value,
                                          preprocessing=preprocessing)
    assert pool_digest(pool) == PINNED[case]


@pytest.mark.parametrize("case", sorted(PINNED_RUNNER), ids="/".join)
def test_runner_protocols_load_as_before(case):
    encoding, preprocessing = case
    pool = load_adult_runner(None, protected="sex", minority_value="Female", seed=0, encoding=encoding,
                             preprocessing=preprocessing)
    assert pool_digest(pool) == PINNED_RUNNER[case]


def test_every_pinned_shipped_source_is_pinned():
    assert {name for name, *_ in PINNED} == set(SHIPPED)
    assert set(TABULAR_SOURCES.get("adult").protocols) == {"runner", "runner_released"}
