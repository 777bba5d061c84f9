"""COMPAS, German credit and LSAC bar passage (dataset/compas.py, german.py, lsac.py).

Reference counts are computed here from the files with the csv module and str.split, not with the
reader's code: ProPublica's filters leave 6,172 of 7,214 COMPAS rows (3,175 African-American, 2,103
Caucasian, 1,175 women, 2,809 recidivists); German credit has 1,000 rows, 300 bad, 190 aged 25 or
younger (80 bad) and 310 women (A92). LSAC is read from the fake of tests/lsac_fake.py.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

import running
from dataset import DATASETS, build_dataset
from dataset.compas import COMPAS, COMPAS_MD5, SHIPPED_COMPAS_DIR
from dataset.german import GERMAN, GERMAN_MD5, SHIPPED_GERMAN_DIR
from dataset.lsac import LSAC, LSAC_SAS_CONVERT
from dataset.tabular import (
    ADULT_DEFAULT_TARGET,
    TABULAR_SOURCES,
    UNKNOWN_MINORITY,
    UNKNOWN_PROTECTED,
    UNKNOWN_TARGET,
)
from dataset.tabular_files import (
    BAD_VALUE,
    CHECKSUM_MISMATCH,
    FIELD_COUNT,
    FILE_NOT_FOUND,
    MISSING_COLUMNS,
    NON_FINITE,
    NOT_A_NUMBER,
    SHIPPED_MISSING,
)
from tests.lsac_fake import USED, make_fake_lsac
from training.validation import validated_config
from utils.errors import ConfigError, DataError

COMPAS_GZ = SHIPPED_COMPAS_DIR / "compas-scores-two-years.csv.gz"
GERMAN_GZ = SHIPPED_GERMAN_DIR / "german.data.gz"


def compas_text() -> str:
    return gzip.decompress(COMPAS_GZ.read_bytes()).decode()


def german_lines() -> list[str]:
    return gzip.decompress(GERMAN_GZ.read_bytes()).decode().splitlines()


@pytest.fixture(scope="module")
def compas_reference():
    """ProPublica's filtered rows, counted with the csv module (the header's first occurrence of a name)."""
    rows = list(csv.reader(io.StringIO(compas_text())))
    header, data = rows[0], rows[1:]
    col = {name: header.index(name) for name in header}
    kept = [r for r in data
            if r[col["days_b_screening_arrest"]] != "" and abs(int(r[col["days_b_screening_arrest"]])) <= 30
            and r[col["is_recid"]] != "-1" and r[col["c_charge_degree"]] != "O" and r[col["score_text"]] != "N/A"]
    return {"read": len(data), "kept": kept, "col": col}


@pytest.fixture(scope="module")
def compas_race():
    return COMPAS.load(None, protected="race", minority_value="African-American")


@pytest.fixture(scope="module")
def compas_sex():
    return COMPAS.load(None, protected="sex", minority_value="Female")


def config(name, **data):
    targets = {"compas": "two_year_recid", "german": "bad_credit", "lsac": "pass_bar"}
    return validated_config({
        "name": f"t_{name}", "seed": data.pop("seed", 0), "device": "cpu", "training": {"batch_size": 64},
        "data": {"name": name, "target": targets[name], **data},
    })


# --- shipped files ---------------------------------------------------------------------------------


def test_shipped_files_are_the_originals():
    assert hashlib.md5(gzip.decompress(COMPAS_GZ.read_bytes())).hexdigest() == "9165d40c400bba93a8cffece2b74622b"
    assert hashlib.md5(gzip.decompress(GERMAN_GZ.read_bytes())).hexdigest() == "6b94c2e35480e671545e52a808a8a549"
    assert COMPAS_MD5 == "9165d40c400bba93a8cffece2b74622b"
    assert GERMAN_MD5 == "6b94c2e35480e671545e52a808a8a549"
    # gzip -9 -n: no stored name or timestamp (mtime bytes 4-7 are zero), so the bytes are reproducible.
    for path in (COMPAS_GZ, GERMAN_GZ):
        assert path.read_bytes()[4:8] == b"\0\0\0\0"
        assert (path.parent / "README.md").is_file()


def test_registered():
    for name in ("compas", "german", "lsac"):
        assert name in DATASETS and name in TABULAR_SOURCES


# --- COMPAS ----------------------------------------------------------------------------------------


def test_compas_filters_match_an_independent_count(compas_reference, compas_sex, compas_race):
    kept, col = compas_reference["kept"], compas_reference["col"]
    assert compas_reference["read"] == 7214 and len(kept) == 6172
    info = compas_sex.info
    assert info["rows_read"] == 7214 and info["rows_after_propublica_filters"] == 6172
    assert info["rows_dropped/days_b_screening_arrest_missing"] + \
        info["rows_dropped/days_b_screening_arrest_outside_30"] == 7214 - 6172
    assert info["propublica_original"] and info["md5"] == "9165d40c400bba93a8cffece2b74622b"
    # Every filtered row is in the pool or the test set of the sex run.
    assert len(compas_sex.y_pool) + len(compas_sex.y_test) == 6172
    labels = Counter(r[col["two_year_recid"]] for r in kept)
    assert int(compas_sex.y_pool.sum() + compas_sex.y_test.sum()) == labels["1"] == 2809
    sexes = Counter(r[col["sex"]] for r in kept)
    assert int(compas_sex.minority_pool.sum() + compas_sex.minority_test.sum()) == sexes["Female"] == 1175
    races = Counter(r[col["race"]] for r in kept)
    assert (races["African-American"], races["Caucasian"]) == (3175, 2103)
    # The race run keeps the two races only.
    assert len(compas_race.y_pool) + len(compas_race.y_test) == 3175 + 2103
    assert compas_race.info["rows_dropped/other_race"] == 6172 - 3175 - 2103
    assert int(compas_race.minority_pool.sum() + compas_race.minority_test.sum()) == 3175
    aa_recid = sum(r[col["two_year_recid"]] == "1" for r in kept if r[col["race"]] == "African-American")
    minority_y = np.concatenate([compas_race.y_pool[compas_race.minority_pool],
                                 compas_race.y_test[compas_race.minority_test]])
    assert int(minority_y.sum()) == aa_recid


def test_compas_features_and_groups(compas_race, compas_sex):
    names = compas_race.feature_names
    assert [n for n in names if n.startswith("race=")] == ["race=African-American", "race=Caucasian"]
    assert len([n for n in compas_sex.feature_names if n.startswith("race=")]) == 6
    # COMPAS's own scores and the outcome columns are not inputs.
    for name in compas_sex.feature_names:
        assert not name.startswith(("decile_score", "score_text", "v_", "is_recid", "two_year_recid", "name"))
    assert names[:5] == ("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count")
    assert len(compas_sex.feature_names) == 5 + 3 + 2 + 6 + 2  # numeric, age_cat, sex, race, charge degree
    assert compas_race.info["minority_values"] == ["African-American"]
    everyone = COMPAS.load(None, protected="race", minority_value="non-Caucasian")
    assert everyone.info["minority_values"] == ["African-American", "Asian", "Hispanic", "Native American", "Other"]
    assert len(everyone.y_pool) + len(everyone.y_test) == 6172
    # The protected attribute is an input: the minority flag is the race=African-American column.
    column = names.index("race=African-American")
    assert np.array_equal(compas_race.x_pool[:, column] == 1, compas_race.minority_pool)


def cells(x, y, names, columns):
    """(label, one-hot column set) counts, read back from the encoded features."""
    index = [names.index(c) for c in columns]
    return Counter((int(label), *(int(v) for v in row)) for label, row in zip(y, x[:, index]))


def test_compas_split_is_stratified_fixed_and_shared(compas_sex, compas_race):
    columns = ["sex=Female", *[n for n in compas_sex.feature_names if n.startswith("race=")]]
    test = cells(compas_sex.x_test, compas_sex.y_test, compas_sex.feature_names, columns)
    pool = cells(compas_sex.x_pool, compas_sex.y_pool, compas_sex.feature_names, columns)
    for cell in set(test) | set(pool):
        assert test[cell] == round(0.2 * (test[cell] + pool[cell]))
    # The race run's test set is the sex run's test rows of the two races, cell by cell.
    race_columns = ["sex=Female", "race=African-American", "race=Caucasian"]
    race_test = cells(compas_race.x_test, compas_race.y_test, compas_race.feature_names, race_columns)
    pair = [columns.index("race=African-American"), columns.index("race=Caucasian")]
    expected = Counter()
    for (label, female, *race), count in test.items():
        if race[pair[0] - 1] or race[pair[1] - 1]:
            expected[(label, female, race[pair[0] - 1], race[pair[1] - 1])] += count
    assert race_test == expected
    # The same test rows whatever the run's seed (the numeric columns are scaled with each run's
    # training statistics, so only the one-hot columns, the labels and the groups compare exactly).
    a, b = build_dataset(config("compas", seed=0)), build_dataset(config("compas", seed=7))
    assert np.array_equal(a.x_test[:, 5:], b.x_test[:, 5:]) and np.array_equal(a.y_test, b.y_test)
    assert np.array_equal(a.minority_test, b.minority_test)
    assert a.info["test_rows_md5"] == b.info["test_rows_md5"]
    assert not np.array_equal(a.x_train, b.x_train)  # while the resampled training set does change


def test_compas_resampling_reaches_the_share():
    bundle = build_dataset(config("compas", protected="race", minority_value="African-American",
                                  minority_share=0.2, train_size=1000))
    assert len(bundle.y_train) == 1000 and int(bundle.minority_train.sum()) == 200
    assert bundle.info["train_share"] == pytest.approx(0.2)
    # Numeric features standardized with the training rows' statistics.
    numeric = bundle.x_train[:, :5]
    assert np.allclose(numeric.mean(axis=0), 0, atol=1e-5) and np.allclose(numeric.std(axis=0), 1, atol=1e-4)
    no_size = build_dataset(config("compas", protected="race", minority_value="African-American",
                                   minority_share=0.1))
    majority = no_size.info["pool_count/group=majority"]
    assert int((~no_size.minority_train).sum()) == majority
    assert int(no_size.minority_train.sum()) == round(0.1 * majority / 0.9)


def test_compas_user_copy(tmp_path, compas_sex):
    (tmp_path / "compas-scores-two-years.csv").write_text(compas_text())
    plain = COMPAS.load(tmp_path, protected="sex", minority_value="Female")
    assert plain.info["propublica_original"] and plain.info["file"].endswith(".csv")
    assert np.array_equal(plain.x_test, compas_sex.x_test)
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    shutil.copy(COMPAS_GZ, gz_dir)
    assert COMPAS.load(gz_dir, protected="sex", minority_value="Female").info["test_rows_md5"] == \
        compas_sex.info["test_rows_md5"]


# --- German credit ---------------------------------------------------------------------------------


def test_german_counts_match_an_independent_count():
    rows = [line.split() for line in german_lines()]
    assert len(rows) == 1000 and all(len(r) == 21 for r in rows)
    bad = sum(r[20] == "2" for r in rows)
    young = [r for r in rows if int(r[12]) <= 25]
    women = [r for r in rows if r[8] in ("A92", "A95")]
    assert (bad, len(young), sum(r[20] == "2" for r in young), len(women)) == (300, 190, 80, 310)

    age = GERMAN.load(None, protected="age", minority_value="young")
    assert age.info["uci_original"] and age.info["rows_read"] == 1000
    assert (len(age.y_pool), len(age.y_test)) == (800, 200)
    assert int(age.y_pool.sum() + age.y_test.sum()) == bad
    assert int(age.minority_pool.sum() + age.minority_test.sum()) == len(young)
    assert int(age.y_pool[age.minority_pool].sum() + age.y_test[age.minority_test].sum()) == 80
    assert age.info["minority_values"] == ["young"]
    # 7 numeric attributes and the one-hot codes of the 13 others, counted from the file.
    codes = sum(len({r[j] for r in rows}) for j in range(20) if rows[0][j].startswith("A"))
    assert len(age.feature_names) == 7 + codes == 61
    # Age is an input (numeric): the young are the rows whose raw age is at most 25.
    raw_age = age.x_pool[:, age.feature_names.index("age")]
    assert np.array_equal(raw_age <= 25, age.minority_pool)

    sex = GERMAN.load(None, protected="sex", minority_value="Female")
    assert int(sex.minority_pool.sum() + sex.minority_test.sum()) == len(women)
    assert np.array_equal(sex.x_test, age.x_test)  # same split and features whatever the groups
    older = GERMAN.load(None, protected="age", minority_value="non-young")
    assert np.array_equal(older.minority_pool, ~age.minority_pool)


def test_german_resampling_and_fixed_test_set():
    a = build_dataset(config("german", protected="age", minority_value="young", minority_share=0.1))
    assert int((~a.minority_train).sum()) == 648 and int(a.minority_train.sum()) == round(0.1 * 648 / 0.9)
    b = build_dataset(config("german", protected="age", minority_value="young", minority_share=0.1, seed=3))
    assert np.array_equal(a.x_test[:, 7:], b.x_test[:, 7:]) and np.array_equal(a.y_test, b.y_test)
    assert a.info["test_rows_md5"] == b.info["test_rows_md5"]
    c = build_dataset(config("german", protected="sex", minority_value="Female", minority_share=0.25,
                             train_size=400))
    assert len(c.y_train) == 400 and int(c.minority_train.sum()) == 100


# --- LSAC ------------------------------------------------------------------------------------------


def independent_lsac_counts(path):
    """Rows with every used value, and their pass / race / sex counts, read with the csv module."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    complete = [r for r in rows if all(r[c].strip() for c in USED)]
    return {"read": len(rows), "kept": len(complete), "pass": sum(r["pass_bar"] == "1" for r in complete),
            "non_white": sum(r["race1"] != "white" for r in complete),
            "female": sum(r["gender"] == "female" for r in complete)}


@pytest.fixture(scope="module")
def fake_lsac(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsac")
    make_fake_lsac(root, n_rows=600, seed=1)
    return root


def test_lsac_from_the_fake(fake_lsac):
    expected = independent_lsac_counts(fake_lsac / "bar_pass_prediction.csv")
    assert expected["kept"] < expected["read"] == 600  # the fake has rows with missing used values
    pool = LSAC.load(fake_lsac, protected="race", minority_value="non-White")
    info = pool.info
    assert info["rows_read"] == 600 and info["rows_dropped_missing"] == 600 - expected["kept"]
    assert len(pool.y_pool) + len(pool.y_test) == expected["kept"]
    assert int(pool.y_pool.sum() + pool.y_test.sum()) == expected["pass"]
    assert int(pool.minority_pool.sum() + pool.minority_test.sum()) == expected["non_white"]
    assert info["minority_values"] == ["Asian", "Black", "Hispanic", "Other"]
    assert info["columns"] == {"label": "pass_bar", "race": "race1", "sex": "gender"}
    for name in pool.feature_names:  # no restated label, no other model's output
        assert not name.startswith(("bar", "pass_bar", "dnn", "Dropout", "grad", "decile", "ID"))
    sex = LSAC.load(fake_lsac, protected="sex", minority_value="Female")
    assert int(sex.minority_pool.sum() + sex.minority_test.sum()) == expected["female"]
    assert np.array_equal(sex.x_test, pool.x_test)
    bundle = build_dataset(config("lsac", root=str(fake_lsac), protected="race", minority_value="non-White",
                                  minority_share=0.3, train_size=200))
    assert len(bundle.y_train) == 200 and int(bundle.minority_train.sum()) == 60


def test_lsac_other_version_and_gzip(tmp_path, fake_lsac):
    make_fake_lsac(tmp_path, n_rows=600, seed=1, variant="law_school_clean", compress=True)
    clean = LSAC.load(tmp_path, protected="sex", minority_value="Female")
    assert clean.info["columns"] == {"label": "pass_bar", "race": "racetxt", "sex": "male"}
    assert clean.info["file"].endswith(".csv.gz")
    original = LSAC.load(fake_lsac, protected="sex", minority_value="Female")
    # The same people, named differently: the same rows, labels and groups (the split differs: its
    # strata are the race values, five in one version and two in the other).
    for a in (clean, original):
        assert (len(a.y_pool) + len(a.y_test), int(a.y_pool.sum() + a.y_test.sum()),
                int(a.minority_pool.sum() + a.minority_test.sum())) == \
            (len(original.y_pool) + len(original.y_test), int(original.y_pool.sum() + original.y_test.sum()),
             int(original.minority_pool.sum() + original.minority_test.sum()))
    race = LSAC.load(tmp_path, protected="race", minority_value="non-White")
    assert race.info["minority_values"] == ["non-White"]


# --- named errors ----------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match=FILE_NOT_FOUND) as error:
        COMPAS.load(tmp_path, protected="race", minority_value="African-American")
    assert str(tmp_path / "compas-scores-two-years.csv") in str(error.value)
    with pytest.raises(DataError, match=FILE_NOT_FOUND):
        GERMAN.load(tmp_path, protected="age", minority_value="young")
    with pytest.raises(DataError, match="not a directory"):
        GERMAN.load(tmp_path / "nope", protected="age", minority_value="young")
    # LSAC: never shipped; the message says what to place where, and how to convert the SAS original.
    with pytest.raises(DataError, match="not shipped") as error:
        LSAC.load(None, protected="race", minority_value="non-White")
    assert "bar_pass_prediction.csv" in str(error.value) and LSAC_SAS_CONVERT in str(error.value)
    with pytest.raises(DataError, match=FILE_NOT_FOUND) as error:
        LSAC.load(tmp_path, protected="race", minority_value="non-White")
    assert str(tmp_path / "bar_pass_prediction.csv") in str(error.value)
    (tmp_path / "lsac.sas7bdat").write_bytes(b"SAS FILE")
    with pytest.raises(DataError, match="lsac.sas7bdat is there") as error:
        LSAC.load(tmp_path, protected="race", minority_value="non-White")
    assert LSAC_SAS_CONVERT in str(error.value)
    # A checkout that lost its shipped copy.
    with pytest.raises(DataError, match=SHIPPED_MISSING):
        replace(GERMAN, shipped_dir=tmp_path / "empty").load(None, protected="age", minority_value="young")


def test_corrupted_shipped_copy(tmp_path):
    lines = german_lines()
    lines[0] = lines[0].replace(" 67 ", " 68 ")
    (tmp_path / "german.data.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError, match=CHECKSUM_MISMATCH):
        replace(GERMAN, shipped_dir=tmp_path).load(None, protected="age", minority_value="young")
    # The same edited file as a user copy is read (format checks only), and marked as not the original.
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(tmp_path / "german.data.gz", user)
    assert not GERMAN.load(user, protected="age", minority_value="young").info["uci_original"]
    (user / "german.data.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="not a readable gzip file"):
        GERMAN.load(user, protected="age", minority_value="young")


def test_wrong_target_names_the_fix():
    with pytest.raises(ConfigError, match=UNKNOWN_TARGET) as error:
        build_dataset(validated_config({"name": "t", "data": {"name": "compas"}}))  # DataConfig's default
    message = str(error.value)
    assert ADULT_DEFAULT_TARGET in message and "target: two_year_recid" in message
    with pytest.raises(ConfigError, match="'bad_credit' only"):
        build_dataset(validated_config({"name": "t", "data": {"name": "german", "target": "credit"}}))
    with pytest.raises(ConfigError, match="'pass_bar' only"):
        build_dataset(validated_config({"name": "t", "data": {"name": "lsac", "target": "bar"}}))


def test_cli_reports_a_forgotten_target(tmp_path, capsys):
    code = running.main(["--params", "utils/params_compas.yaml", "--set", "data.target=income",
                         "--set", f"output_dir={tmp_path}"])
    assert code == 2
    assert "error: data.target" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_unknown_groups_list_the_choices(fake_lsac):
    with pytest.raises(ConfigError, match=UNKNOWN_PROTECTED) as error:
        GERMAN.load(None, protected="race", minority_value="x")
    assert "age, sex" in str(error.value)
    with pytest.raises(ConfigError, match=UNKNOWN_MINORITY) as error:
        GERMAN.load(None, protected="age", minority_value="old")
    assert "young, non-young" in str(error.value) and "non-non" not in str(error.value)
    with pytest.raises(ConfigError, match=UNKNOWN_MINORITY) as error:
        COMPAS.load(None, protected="race", minority_value="Black")
    assert "African-American" in str(error.value) and "non-Caucasian" in str(error.value)
    with pytest.raises(ConfigError, match=UNKNOWN_PROTECTED):
        COMPAS.load(None, protected="age", minority_value="x")
    with pytest.raises(ConfigError, match=UNKNOWN_MINORITY) as error:
        LSAC.load(fake_lsac, protected="sex", minority_value="female")
    assert "Female, Male" in str(error.value)


def write_compas(tmp_path, edit):
    lines = compas_text().splitlines()
    edit(lines)
    (tmp_path / "compas-scores-two-years.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_malformed_compas(tmp_path):
    def truncate(lines):
        lines[99] = lines[99].rsplit(",", 3)[0]
    write_compas(tmp_path, truncate)
    with pytest.raises(DataError, match=FIELD_COUNT) as error:
        COMPAS.load(tmp_path, protected="sex", minority_value="Female")
    assert "line 100:" in str(error.value) and "compas-scores-two-years.csv" in str(error.value)

    def bad_age(lines):
        fields = lines[9].split(",")
        fields[7] = "sixty"
        lines[9] = ",".join(fields)
    write_compas(tmp_path, bad_age)
    with pytest.raises(DataError, match=NOT_A_NUMBER) as error:
        COMPAS.load(tmp_path, protected="sex", minority_value="Female")
    assert "line 10: column age is 'sixty'" in str(error.value)

    def no_label(lines):
        lines[0] = lines[0].replace("two_year_recid", "two_year")
    write_compas(tmp_path, no_label)
    with pytest.raises(DataError, match=MISSING_COLUMNS) as error:
        COMPAS.load(tmp_path, protected="sex", minority_value="Female")
    assert "two_year_recid" in str(error.value) and "found: id, name" in str(error.value)


def test_malformed_german(tmp_path):
    cases = {
        1: (lambda fields: fields[:-1], FIELD_COUNT),
        2: (lambda fields: fields[:3] + ["A99"] + fields[4:], "attribute 4 (purpose) is 'A99'"),
        3: (lambda fields: fields[:4] + ["inf"] + fields[5:], NON_FINITE),
        4: (lambda fields: fields[:-1] + ["3"], BAD_VALUE),
    }
    for line_no, (edit, message) in cases.items():
        lines = german_lines()
        lines[line_no - 1] = " ".join(edit(lines[line_no - 1].split()))
        (tmp_path / "german.data").write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=re.escape(message)) as error:
            GERMAN.load(tmp_path, protected="age", minority_value="young")
        assert f"line {line_no}:" in str(error.value)


def test_malformed_lsac(tmp_path):
    fake = make_fake_lsac(tmp_path, n_rows=300, seed=2)
    header, rows = fake["header"], fake["rows"]
    # A row with every used value, so that an edit is not hidden by the row being dropped as incomplete.
    index = next(i for i, row in enumerate(rows) if i >= 5 and all(row[header.index(c)] for c in USED))
    line = f"line {index + 2}:"  # the header is line 1

    def write(edit_row, new_header=None):
        edited = [list(r) for r in rows]
        edit_row(edited[index])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(new_header or header)
        writer.writerows(edited)
        fake["path"].write_text(buffer.getvalue())

    write(lambda row: row.pop())
    with pytest.raises(DataError, match=FIELD_COUNT) as error:
        LSAC.load(tmp_path, protected="race", minority_value="non-White")
    assert line in str(error.value)

    def set_value(column, value):
        def edit(row):
            row[header.index(column)] = value
        return edit

    for column, value, message in (("lsat", "forty", NOT_A_NUMBER), ("ugpa", "inf", NON_FINITE),
                                   ("pass_bar", "2", BAD_VALUE), ("gender", "unknown", BAD_VALUE)):
        write(set_value(column, value))
        with pytest.raises(DataError, match=message) as error:
            LSAC.load(tmp_path, protected="race", minority_value="non-White")
        assert line in str(error.value) and column in str(error.value)

    renamed = {"pass_bar": "labels", "bar_passed": "passed"}
    write(lambda row: None, new_header=[renamed.get(c, c) for c in header])
    with pytest.raises(DataError, match=MISSING_COLUMNS) as error:
        LSAC.load(tmp_path, protected="race", minority_value="non-White")
    assert "pass_bar or bar_passed" in str(error.value) and "found: decile1b" in str(error.value)


# --- end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["compas", "german", "lsac"])
def test_end_to_end(name, tmp_path, fake_lsac):
    params = {"compas": "utils/params_compas.yaml", "german": "utils/params_german.yaml",
              "lsac": "utils/params_compas.yaml"}[name]
    overrides = ["training.epochs=1", "data.train_size=300", "logging.wandb.mode=disabled",
                 "logging.tensorboard=false", "logging.progress=never", "evaluation.bootstrap_resamples=0",
                 f"output_dir={tmp_path}", "device=cpu", f"name=e2e_{name}", "training.batch_size=64"]
    if name == "lsac":
        overrides += ["data.name=lsac", f"data.root={fake_lsac}", "data.target=pass_bar",
                      "data.minority_value=non-White", "data.minority_share=0.3", "data.train_size=200"]
    argv = ["--params", params]
    for override in overrides:
        argv += ["--set", override]
    assert running.main(argv) == 0
    summary = json.loads((tmp_path / f"e2e_{name}" / "summary.json").read_text())
    assert 0.0 <= summary["test/accuracy"] <= 1.0
    assert summary["data/info"]["source"] == name
    assert sum(summary["data/train_count/group=" + g] for g in ("minority", "majority")) == \
        (200 if name == "lsac" else 300)
    predictions = (tmp_path / f"e2e_{name}" / "predictions.csv").read_text().splitlines()
    assert len(predictions) - 1 == summary["data/info"]["rows/test"]


@pytest.mark.parametrize("override, key", [("data.celeba.split=official", "celeba.split"),
                                           ("data.celeba.test_size=100", "celeba.test_size"),
                                           ("data.celeba.image_size=64", "celeba.image_size"),
                                           ("data.celeba.cache_dir=/tmp/x", "celeba.cache_dir")])
def test_celeba_only_keys_are_refused_for_other_data_sets(tmp_path, capsys, override, key):
    import running
    from dataset import UNUSED_KEY

    params = tmp_path / "params.yaml"
    params.write_text("data: {name: synthetic}\nlogging: {wandb: {mode: disabled}}\n")
    code = running.main(["--params", str(params), "--set", f"output_dir={tmp_path / 'out'}",
                         "--set", override])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "out").exists()
    prefix = UNUSED_KEY.split("{value")[0].format(key=key)
    assert err[0].startswith(f"error: {prefix}") and "'synthetic' does not use it (only celeba" in err[0]
