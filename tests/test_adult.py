"""UCI Adult loading and the tabular bundle, on the real files shipped in dataset/data/adult.

Reference counts come from adult.names (32,561 / 16,281 rows; 30,162 / 15,060 without unknowns)
and from counting the files by hand (grep): 3,700 of the 15,060 complete test rows earn >50K,
9,782 of the 30,162 complete training rows are Female and 4,229 are not White.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from dataset import adult
from dataset.adult import ADULT, SHIPPED_ADULT_DIR, read_adult_files
from dataset.imbalance import resample_to_share
from dataset.tabular import TABULAR_SOURCES, build_tabular_bundle
from utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def sex_pool():
    return ADULT.load(None, protected="sex", minority_value="Female")


@pytest.fixture(scope="module")
def race_pool():
    return ADULT.load(None, protected="race", minority_value="non-White")


def shipped_lines(name):
    return gzip.decompress((SHIPPED_ADULT_DIR / f"{name}.gz").read_bytes()).decode().splitlines(keepends=True)


def test_rows_read_and_dropped_match_the_uci_description(sex_pool):
    info = sex_pool.info
    assert (info["rows_read/train"], info["rows_read/test"]) == (32561, 16281)
    assert (info["rows/train"], info["rows/test"]) == (30162, 15060)
    assert (info["rows_dropped_missing/train"], info["rows_dropped_missing/test"]) == (2399, 1221)
    assert sex_pool.x_pool.shape[0] == len(sex_pool.y_pool) == 30162
    assert sex_pool.x_test.shape[0] == len(sex_pool.y_test) == 15060
    assert info["uci_original/train"] and info["uci_original/test"]


def test_labels_and_group_shares(sex_pool, race_pool):
    assert int(sex_pool.y_test.sum()) == 3700
    assert sex_pool.y_test.mean() == pytest.approx(0.246, abs=5e-4)
    assert sex_pool.y_pool.mean() == pytest.approx(0.2489, abs=1e-4)
    assert int(sex_pool.minority_pool.sum()) == 9782
    assert sex_pool.info["pool_share"] == pytest.approx(0.3243, abs=1e-4)
    # Women earn >50K far less often than men in this data: the gap the study is about.
    assert sex_pool.info["pool_positive_rate/group=minority"] == pytest.approx(0.1137, abs=1e-4)
    assert sex_pool.info["pool_positive_rate/group=majority"] == pytest.approx(0.3138, abs=1e-4)

    assert int(race_pool.minority_pool.sum()) == 4229
    assert race_pool.info["minority_values"] == ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other"]
    white = race_pool.feature_names.index("race=White")
    np.testing.assert_array_equal(race_pool.minority_pool, race_pool.x_pool[:, white] == 0)
    np.testing.assert_array_equal(race_pool.minority_test, race_pool.x_test[:, white] == 0)


def test_one_hot_layout_is_shared_by_both_splits(sex_pool):
    names = sex_pool.feature_names
    assert sex_pool.x_pool.shape[1] == sex_pool.x_test.shape[1] == len(names) == 103
    assert sex_pool.x_pool.dtype == sex_pool.x_test.dtype == np.float32
    assert "fnlwgt" not in names
    assert [names[i] for i in sex_pool.numeric_columns] == [
        "age", "education-num", "capital-gain", "capital-loss", "hours-per-week",
    ]  # fmt: skip
    # Each of the 8 categorical columns sets exactly one indicator per row in both splits
    # (no test category is missing from training in this split, which the info confirms).
    assert sex_pool.info["test_rows_unseen_category"] == 0
    categorical = [i for i in range(len(names)) if i not in sex_pool.numeric_columns]
    for x in (sex_pool.x_pool, sex_pool.x_test):
        assert set(np.unique(x[:, categorical]).tolist()) == {0.0, 1.0}
        blocks = {names[i].split("=")[0] for i in categorical}
        assert len(blocks) == 8
        for block in blocks:
            columns = [i for i in categorical if names[i].startswith(block + "=")]
            np.testing.assert_array_equal(x[:, columns].sum(axis=1), 1.0)
    # The protected column stays a feature, and it is the minority mask.
    female = names.index("sex=Female")
    np.testing.assert_array_equal(sex_pool.x_pool[:, female] == 1, sex_pool.minority_pool)
    # Numerics are raw in the pool: ages in years.
    age = sex_pool.x_pool[:, names.index("age")]
    assert age.min() == 17 and age.max() == 90


def test_bundle_standardizes_with_selected_training_rows_only(sex_pool):
    bundle = build_tabular_bundle(sex_pool, minority_share=0.1, train_size=5000, seed=0)
    assert bundle.train_count_by_group == {"minority": 500, "majority": 4500}
    assert bundle.input_shape == (103,) and bundle.transform is None
    numeric = list(sex_pool.numeric_columns)

    train_num = bundle.x_train[:, numeric].astype(np.float64)
    np.testing.assert_allclose(train_num.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_num.std(axis=0), 1.0, atol=1e-5)
    # The test set is scaled with the training statistics, so it is not exactly centred.
    assert np.abs(bundle.x_test[:, numeric].mean(axis=0)).max() > 1e-3

    # Independent reference: sklearn's scaler fitted on the same selected raw rows.
    index = resample_to_share(sex_pool.minority_pool, sex_pool.y_pool, 0.1, train_size=5000, seed=0)
    scaler = StandardScaler().fit(sex_pool.x_pool[index][:, numeric].astype(np.float64))
    np.testing.assert_allclose(bundle.x_train[:, numeric], scaler.transform(sex_pool.x_pool[index][:, numeric]), atol=1e-4)
    np.testing.assert_allclose(bundle.x_test[:, numeric], scaler.transform(sex_pool.x_test[:, numeric]), atol=1e-4)
    # One-hot columns untouched, test labels and groups passed through unchanged.
    categorical = [i for i in range(103) if i not in numeric]
    np.testing.assert_array_equal(bundle.x_train[:, categorical], sex_pool.x_pool[index][:, categorical])
    np.testing.assert_array_equal(bundle.y_test, sex_pool.y_test)
    # The pool itself is not modified by standardization.
    assert sex_pool.x_pool[:, numeric].max() > 100

    info = bundle.info
    assert info["pool_count/group=minority"] == 9782 and info["pool_count/group=majority"] == 20380
    assert info["rows_dropped_missing/train"] == 2399 and info["rows_dropped_missing/test"] == 1221
    assert info["train_share"] == 0.1


def test_unknown_protected_column_or_value(sex_pool):
    with pytest.raises(ConfigError, match=r"data\.protected: 'age'.*race, sex"):
        ADULT.load(None, protected="age", minority_value="Female")
    with pytest.raises(ConfigError, match=r"data\.minority_value: 'female'.*Female, Male, non-Female, non-Male"):
        ADULT.load(None, protected="sex", minority_value="female")
    with pytest.raises(ConfigError, match=r"data\.minority_value: 'non-Martian'"):
        ADULT.load(None, protected="race", minority_value="non-Martian")


def test_corrupted_shipped_copy_fails_the_checksum(tmp_path, monkeypatch):
    lines = shipped_lines("adult.data")
    lines[0] = lines[0].replace("39,", "38,", 1)  # one age changed: still well-formed, wrong bytes
    (tmp_path / "adult.data.gz").write_bytes(gzip.compress("".join(lines).encode()))
    shutil.copy(SHIPPED_ADULT_DIR / "adult.test.gz", tmp_path / "adult.test.gz")
    monkeypatch.setattr(adult, "SHIPPED_ADULT_DIR", tmp_path)
    with pytest.raises(DataError, match=r"adult\.data\.gz: checksum mismatch.*5d7c39d7b8804f071cdd1f2a7c460872"):
        ADULT.load(None, protected="sex", minority_value="Female")


def test_user_copy_plain_text_loads_like_the_shipped_one(tmp_path, sex_pool):
    for name in ("adult.data", "adult.test"):
        (tmp_path / name).write_text("".join(shipped_lines(name)))
    pool = ADULT.load(tmp_path, protected="sex", minority_value="Female")
    np.testing.assert_array_equal(pool.x_pool, sex_pool.x_pool)
    np.testing.assert_array_equal(pool.y_test, sex_pool.y_test)
    assert pool.info["file/train"] == str(tmp_path / "adult.data")
    assert pool.info["uci_original/train"] and pool.info["uci_original/test"]


@pytest.mark.parametrize(
    "mangle,message",
    [
        (lambda line: line.replace(", Private", "", 1), r"adult\.data, line 3: 14 comma-separated fields, expected 15"),
        (lambda line: line.replace("<=50K", "<=50k"), r"adult\.data, line 3: income label '<=50k'"),
        (lambda line: line.replace("38,", "thirty-eight,", 1), r"adult\.data, line 3: column age is 'thirty-eight'"),
    ],
)
def test_malformed_user_copy_names_file_and_line(tmp_path, mangle, message):
    lines = shipped_lines("adult.data")
    assert lines[2].startswith("38, Private")
    lines[2] = mangle(lines[2])
    (tmp_path / "adult.data").write_text("".join(lines))
    shutil.copy(SHIPPED_ADULT_DIR / "adult.test.gz", tmp_path / "adult.test.gz")
    with pytest.raises(DataError, match=message):
        ADULT.load(tmp_path, protected="sex", minority_value="Female")


def test_missing_file_says_where_to_get_it(tmp_path):
    shutil.copy(SHIPPED_ADULT_DIR / "adult.data.gz", tmp_path / "adult.data.gz")
    with pytest.raises(DataError) as err:
        ADULT.load(tmp_path, protected="sex", minority_value="Female")
    message = str(err.value)
    assert str(tmp_path / "adult.test") in message
    assert "archive.ics.uci.edu/dataset/2/adult" in message
    assert "data.root: null" in message


def test_adult_is_registered():
    assert TABULAR_SOURCES.get("adult") is ADULT
    with pytest.raises(ConfigError, match=r"data\.name: unknown dataset 'adlt'.*Did you mean 'adult'"):
        TABULAR_SOURCES.get("adlt")


def test_parsed_files_are_reused_by_content_and_cannot_be_changed(tmp_path):
    # A grid reads the same two files for every point; the second read is the first's parse, and
    # a copy whose content differs (one row fewer) is parsed anew.
    first = read_adult_files(None)[1]["train"]
    again = read_adult_files(None)[1]["train"]
    assert again[0] is first[0] and again[1] is first[1]
    with pytest.raises(ValueError, match="read-only"):
        first[0][0, 0] = "edited"
    for name in ("adult.data", "adult.test"):
        lines = [line for line in shipped_lines(name) if line.strip()]
        (tmp_path / name).write_text("".join(lines[:-1] if name == "adult.data" else lines))
    edited = read_adult_files(tmp_path)[1]["train"]
    assert len(edited[0]) == len(first[0]) - 1
    np.testing.assert_array_equal(edited[0], first[0][:-1])
