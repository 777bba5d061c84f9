"""UCI Adult (census income, 1994): its declared table, its file reader and RUNNER's protocols.

The table (:data:`ADULT`, a :class:`dataset.tabular.TabularSource`) says what :func:`dataset.tabular.load_tabular`
needs: the files and their md5, the columns and their types, the public bounds and categories of
adult.names with their sources, the label, the protected attributes, the missing-value rule and
the official split. Two hooks hold what only Adult needs: :func:`read_adult` (the headerless,
comment-bearing comma-separated format of adult.data and adult.test, with UCI Adult's own
messages) and the RUNNER paper's protocols (:func:`load_adult_runner`, ``data.adult.protocol: runner``
and ``runner_released``), which prepare the same rows their own way.

``ADULT.load`` (:func:`dataset.tabular.load_tabular`) with its official train/test split:

``adult.data`` (32,561 rows) is the training pool and ``adult.test`` (16,281 rows) the test set.
Rows with a missing value ("?", in workclass, occupation or native-country) are dropped from
both splits alike, leaving 30,162 and 15,060; the counts go into ``info``. The label is 1 for
income >50K. Numeric features stay raw (the bundle builder scales them; ``fnlwgt`` is
dropped, see ``ADULT_DROPPED``); each categorical column is one-hot over the categories of
adult.names (``preprocessing`` "public", :data:`ADULT_CATEGORIES`) or of the training pool
("fitted"); a value outside them (a category that occurs only in the test set, when fitted)
encodes as all zeros.

The protected column stays a feature: the study is about how much the model learns of a group
it rarely sees, not about fairness through unawareness, and removing the column would not
remove its proxies (``relationship`` = Husband or Wife gives away sex for the married rows, 46% of
the pool).

``data.root``: None for the copies shipped in ``dataset/data/adult`` (checked against the md5 of
the UCI originals); otherwise a directory with ``adult.data`` and ``adult.test``, plain or gzipped
(``.gz``), checked for format only. ``data.protected``: "sex" or "race"; ``data.minority_value``: a
value of that column ("Female", "Black") or "non-X" for every value except X ("non-White").
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataset.preprocessing import FITTED, PUBLIC, PublicCategories, PublicRange, PublicSchema, column_record
from dataset.tabular import (
    OFFICIAL,
    Protected,
    SourceRows,
    TabularPool,
    TabularSource,
    minority_mask,
    positive_rate,
    register_source,
)
from utils.config import one_of
from utils.errors import ConfigError, DataError, file_problem
from utils.seeding import numpy_generator

ADULT_URL = "https://archive.ics.uci.edu/dataset/2/adult"
SHIPPED_ADULT_DIR = Path(__file__).resolve().parent / "data" / "adult"
# md5 of the original, uncompressed UCI files; the shipped .gz copies must decompress to exactly these.
ADULT_MD5 = {
    "adult.data": "5d7c39d7b8804f071cdd1f2a7c460872",
    "adult.test": "35238206dfdf7f1fe215bbb874adecdc",
}
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    "income",
)  # fmt: skip
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
# fnlwgt is the Census sampling weight: how many people of the population the row stands for, set by
# raking to state, age, sex, race and Hispanic-origin controls (adult.names). It describes the survey
# design, not the person, and it is partly a function of sex and race, so as a feature it would be a
# proxy for the protected attribute with no predictive meaning of its own. It is dropped.
ADULT_DROPPED = ("fnlwgt",)
ADULT_PROTECTED = ("race", "sex")
MISSING = "?"

# Public preprocessing (dataset.preprocessing; data.preprocessing: public): bounds and categories
# that no row of the data set chose, with their sources; the same table is in
# dataset/data/adult/README.md. adult.names (on the UCI page) lists every category of every
# categorical column, and its extraction rule ((AAGE>16) && (AGI>100) && (AFNLWGT>1) && (HRSWK>0))
# gives the lower bounds of age and hours-per-week; it gives no upper bound, so those are
# assumptions fixed from the fields' widths in the 1994 Current Population Survey (two digits for
# age and hours, five for dollar amounts). The two capital amounts are mapped on the log1p scale:
# nine in ten are 0, the rest span four orders of magnitude.
ADULT_NAMES = "adult.names (UCI Adult's description file)"
_ASSUMED_TWO_DIGITS = "assumed: a two-digit field, at most 99"
_ASSUMED_FIVE_DIGITS = "assumed: a non-negative five-digit dollar amount, at most 99,999"
ADULT_PUBLIC_RANGES: dict[str, PublicRange] = {
    "age": PublicRange(17, 99, source=f"low: {ADULT_NAMES}, extraction rule AAGE>16; high: "
                                      f"{_ASSUMED_TWO_DIGITS}"),
    "education-num": PublicRange(1, 16, source=f"{ADULT_NAMES}: the code of one of its 16 "
                                               "education levels, 1 (Preschool) to 16 (Doctorate)"),
    "capital-gain": PublicRange(0, 99_999, log=True, source=_ASSUMED_FIVE_DIGITS),
    "capital-loss": PublicRange(0, 99_999, log=True, source=_ASSUMED_FIVE_DIGITS),
    "hours-per-week": PublicRange(1, 99, source=f"low: {ADULT_NAMES}, extraction rule HRSWK>0; "
                                                f"high: {_ASSUMED_TWO_DIGITS}"),
}
ADULT_CATEGORIES: dict[str, PublicCategories] = {name: PublicCategories(tuple(values), ADULT_NAMES)
                                                 for name, values in {
    "workclass": ("Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov",
                  "State-gov", "Without-pay", "Never-worked"),
    "education": ("Bachelors", "Some-college", "11th", "HS-grad", "Prof-school", "Assoc-acdm",
                  "Assoc-voc", "9th", "7th-8th", "12th", "Masters", "1st-4th", "10th", "Doctorate",
                  "5th-6th", "Preschool"),
    "marital-status": ("Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed",
                       "Married-spouse-absent", "Married-AF-spouse"),
    "occupation": ("Tech-support", "Craft-repair", "Other-service", "Sales", "Exec-managerial",
                   "Prof-specialty", "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical",
                   "Farming-fishing", "Transport-moving", "Priv-house-serv", "Protective-serv",
                   "Armed-Forces"),
    "relationship": ("Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", "Unmarried"),
    "race": ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"),
    "sex": ("Female", "Male"),
    "native-country": (
        "United-States", "Cambodia", "England", "Puerto-Rico", "Canada", "Germany",
        "Outlying-US(Guam-USVI-etc)", "India", "Japan", "Greece", "South", "China", "Cuba", "Iran",
        "Honduras", "Philippines", "Italy", "Poland", "Jamaica", "Vietnam", "Mexico", "Portugal",
        "Ireland", "France", "Dominican-Republic", "Laos", "Ecuador", "Taiwan", "Haiti", "Columbia",
        "Hungary", "Guatemala", "Nicaragua", "Scotland", "Thailand", "Yugoslavia", "El-Salvador",
        "Trinadad&Tobago", "Peru", "Hong", "Holand-Netherlands"),
}.items()}
# Message part for a numeric field that float() reads as NaN or infinity (tests import it).
ADULT_NON_FINITE = "expected a finite number"
ADULT_ALL_MISSING = "every row has a missing value"


def _refuse_all_missing(where: Path, rows: int) -> None:
    # Otherwise the empty table reaches the minority rule, which lists the values that occur in
    # it: "use one of ." with nothing to choose from.
    raise DataError(f"{where}: {ADULT_ALL_MISSING} ({MISSING!r}) in its {rows:,} rows, so none is "
                    f"left once such rows are dropped. Use a copy of UCI Adult with complete rows, "
                    f"or data.root: null for the copy shipped with this repository.")


def read_adult(source: TabularSource, root: str | Path | None) -> SourceRows:
    """The read hook of :data:`ADULT`: both files' rows, less those with a missing value, each
    file's rows in file order (adult.data's first), the test file's marked as the test set."""
    info, splits, paths = read_adult_files(root)
    tables, labels = [], []
    for split, (table, y) in splits.items():
        complete = ~(table == MISSING).any(axis=1)
        if not complete.any():
            _refuse_all_missing(paths["adult.data" if split == "train" else "adult.test"], len(table))
        tables.append(table[complete])
        labels.append(y[complete])
        info[f"rows_read/{split}"] = len(table)
        info[f"rows_dropped_missing/{split}"] = int(np.count_nonzero(~complete))
        info[f"rows/{split}"] = int(np.count_nonzero(complete))
    table = np.concatenate(tables)
    columns = {name: table[:, j].astype(np.float64) if name in source.numeric else table[:, j]
               for j, name in enumerate(ADULT_COLUMNS[:-1])}
    return SourceRows(table=columns, labels=np.concatenate(labels), path=paths["adult.data"], info=info,
                      is_test=np.repeat([False, True], [len(part) for part in tables]),
                      test_path=paths["adult.test"])


def read_adult_files(root: str | Path | None) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]],
                                                        dict[str, Path]]:
    """Read and check adult.data and adult.test: (info on the files, {"train"|"test": (table,
    labels)} of every row, missing values included, {file name: path})."""
    if root is None:
        directory = SHIPPED_ADULT_DIR
        paths = {name: directory / f"{name}.gz" for name in ADULT_MD5}
        for path in paths.values():
            if not path.is_file():
                raise DataError(
                    f"{path}: the shipped copy of UCI Adult is missing from this checkout. Restore it from "
                    f"the repository, or download adult.data and adult.test from {ADULT_URL} and set "
                    "data.root to their directory."
                )
    else:
        directory = Path(root).expanduser()
        paths = {name: _find_user_file(directory, name) for name in ADULT_MD5}

    info: dict[str, Any] = {"source": "adult"}
    splits = {}
    for name, path in paths.items():
        raw = _read_bytes(path)
        digest = hashlib.md5(raw).hexdigest()
        if root is None and digest != ADULT_MD5[name]:
            raise DataError(
                f"{path}: checksum mismatch, md5 of the decompressed file is {digest}, the UCI original's is "
                f"{ADULT_MD5[name]}. The shipped copy is corrupted or was edited; restore it from the "
                f"repository, or download the original from {ADULT_URL} and set data.root to its directory."
            )
        split = "train" if name == "adult.data" else "test"
        info[f"file/{split}"] = str(path)
        info[f"md5/{split}"] = digest
        # A user copy may legitimately differ (a cleaned version); record whether it is the original.
        info[f"uci_original/{split}"] = digest == ADULT_MD5[name]
        splits[split] = _parse_adult_cached(raw, digest, path)
    return info, splits, paths


# Parsed Adult files of this process by the md5 of their bytes: a grid's points read the same two
# files, and parsing them (~0.7 s) took a third of a small Adult run. Keyed by content, so an edited
# file is parsed again; the arrays are read-only, so no caller can change what the next one reads.
_PARSED_ADULT: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _parse_adult_cached(raw: bytes, digest: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if digest not in _PARSED_ADULT:
        table, labels = _parse_adult(raw, path)
        table.flags.writeable = labels.flags.writeable = False
        if len(_PARSED_ADULT) >= 4:  # a few (train, test) pairs; one is the common case
            _PARSED_ADULT.pop(next(iter(_PARSED_ADULT)))
        _PARSED_ADULT[digest] = (table, labels)
    return _PARSED_ADULT[digest]


def _find_user_file(directory: Path, name: str) -> Path:
    """``directory/name`` or ``directory/name.gz``, or a DataError saying where to get it."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
        if os.path.lexists(candidate) and (problem := file_problem(candidate)) != "does not exist":
            raise DataError(f"{candidate}: {problem}; put the UCI Adult file {name} there, or set "
                            f"data.root: null to use the copy shipped with this repository.")
    raise DataError(
        f"{directory / name}: file not found (nor {name}.gz) in data.root {str(directory)!r}. UCI Adult is "
        f"published by the UCI Machine Learning Repository at {ADULT_URL}; put adult.data and adult.test "
        "there, or set data.root: null to use the copy shipped with this repository."
    )


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (recognized by content, not by name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}); replace it with an intact copy.") from None


def _parse_adult(raw: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The stripped string fields (rows x 14 features) and 0/1 labels of one Adult file, checked.

    Lines starting with "|" are comments (adult.test opens with "|1x3 Cross validator") and blank
    lines are skipped. Every other line must have the 15 columns of ``ADULT_COLUMNS``, numbers in
    the numeric columns (unless missing) and a label ">50K" or "<=50K", with or without the trailing
    "." of adult.test; anything else is a DataError naming the file and line.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file ({err}); expected the comma-separated UCI Adult file.") from None
    numeric = [ADULT_COLUMNS.index(name) for name in ADULT_NUMERIC]
    rows, labels = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("|"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(ADULT_COLUMNS):
            raise DataError(
                f"{path}, line {line_no}: {len(fields)} comma-separated fields, expected {len(ADULT_COLUMNS)} "
                f"({', '.join(ADULT_COLUMNS)}). Is this the UCI Adult file?"
            )
        for j in numeric:
            if fields[j] != MISSING:
                try:
                    number = float(fields[j])
                except ValueError:
                    raise DataError(
                        f"{path}, line {line_no}: column {ADULT_COLUMNS[j]} is {fields[j]!r}, expected a number "
                        f"or {MISSING!r}."
                    ) from None
                # float() also reads "nan", "inf" and "1e999"; such a value would pass here and turn
                # the standardized features (and the loss) into NaN, blamed later on training.lr.
                if not math.isfinite(number):
                    raise DataError(
                        f"{path}, line {line_no}: column {ADULT_COLUMNS[j]} is {fields[j]!r}, {ADULT_NON_FINITE} "
                        f"or {MISSING!r} (a missing value). Fix or remove that line."
                    )
        label = fields[-1].rstrip(".")
        if label not in (">50K", "<=50K"):
            raise DataError(f"{path}, line {line_no}: income label {fields[-1]!r}, expected '>50K' or '<=50K'.")
        rows.append(fields[:-1])
        labels.append(label == ">50K")
    if not rows:
        raise DataError(f"{path}: no data rows; expected the comma-separated UCI Adult file.")
    return np.array(rows, dtype=str), np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# RUNNER's protocols, the hooks of data.adult.protocol: runner and runner_released
# ---------------------------------------------------------------------------------------------------

# RUNNER's protocol (data.adult.protocol: runner): the preprocessing of the RUNNER paper's released code
# (Ace0001/RUNNER, dataset.py, itself fair-mixup's, which took get_adult_data from IBM's SenSR),
# re-implemented from its description; see load_adult_runner.
RUNNER_TEST_FRACTION = 0.2
RUNNER_BINS = 10
RUNNER_NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
RUNNER_CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship")
# race enters as White or not (the released code keeps the race_White dummy alone); sex is the
# protected attribute and no input; the others are dropped as in the released code.
RUNNER_RACE_VALUE = "White"
RUNNER_DROPPED = ("fnlwgt", "education", "native-country", "sex")
# The released code's rule: a row goes when native-country or occupation is missing (workclass is
# missing only where occupation is, so this is every row with a missing value in the UCI files).
RUNNER_MISSING_COLUMNS = ("native-country", "occupation")
RUNNER_ROWS = 45_222  # complete rows of adult.data + adult.test


# data.adult.protocol: runner_released under public preprocessing (data.preprocessing: public, or auto
# under privacy); tests import it.
RELEASED_NOT_PUBLIC = (
    "data.adult.protocol: runner_released bins every column at the deciles of standardized age, statistics "
    "of the private training rows, so it has no public form. Under privacy use data.adult.protocol: runner "
    "(public bin ranges), or set data.preprocessing: fitted, which epsilon does not cover.")


def load_adult_runner(root: str | Path | None, *, protected: str, minority_value: str,
                      seed: int, encoding: str = "corrected",
                      preprocessing: str = FITTED) -> TabularPool:
    """UCI Adult as the RUNNER paper's released code prepares it, with the binning done right
    (``encoding="corrected"``, ``data.adult.protocol: runner``) or as released (``"released"``,
    ``data.adult.protocol: runner_released``).

    **Rows.** adult.data and adult.test together, less every row with a missing value: 45,222 of
    48,842 rows (the released code drops rows whose native-country or occupation is "?"; in the
    UCI files those are exactly the rows with any "?", which is the rule here, so a user's copy
    with other gaps loses those rows too). Label: income >50K.

    **Split, per seed.** The rows are shuffled by the ``adult_runner_split`` stream of the run's
    seed; the first ``int(0.8 * n)`` form the training part (36,177) and the rest the test set
    (9,045); the first as many rows of the training part as the test set has (9,045) are the
    validation set and the other 27,132 the training pool, as the released code does (about
    60 / 20 / 20, not stratified). Each split is kept in file order. Different seeds give
    different test sets, unlike the official protocol.

    **Inputs.** sex is the protected attribute and not an input; race stays one, as White or not
    (the released code keeps race_White only); native-country, fnlwgt and education are dropped.
    The five numeric columns (age, education-num, capital-gain, capital-loss, hours-per-week) are
    put into 10 quantile bins each and one-hot encoded, and every one-hot column of workclass,
    marital-status, occupation, relationship and race (White) is encoded as a pair, "col!=v" and
    "col=v", as the released code does (it one-hot encodes each 0/1 dummy again, with two bins).

    **The binning, corrected.** The released code computes the decile edges of the first column
    (age, after standardization) and reuses them for all five columns (``bin_edges`` is set on
    the first pass of its loop and then reused), so education-num, capital-gain, capital-loss and
    hours-per-week are binned on age's scale; and every column gets 10 one-hot columns, used or
    not: 5 × 10 + 35 × 2 = 120 inputs. Here each column gets its own deciles of the training pool
    (``numpy.quantile``, linear interpolation; the edges are statistics of the training rows, like
    the standardization of the official protocol, and recorded in ``info["runner_bin_edges"]``).
    Bins are right-closed, (e_i, e_i+1], between the distinct inner edges, the outer ones open,
    so that a value at a tied edge (capital-gain is 0 for 92 % of the rows, so 9 of its 10 edges
    are 0) falls into one bin and every bin holds rows: capital-gain and capital-loss get 2 bins
    (0, and more than 0), education-num 6, hours-per-week 7, age 10. That makes 27 bin columns
    and 27 + 70 = 97 inputs on the UCI files (for seeds 0 to 19), not 120: the 23 columns
    missing are bins that the buggy edges create for the other four columns, most of them empty.

    **The binning as released** (``encoding="released"``, :func:`_runner_bins_released`): the five
    numeric columns standardized with the mean and (population) standard deviation of the training
    part (training pool and validation rows, as the released code fits its StandardScaler before it
    cuts the validation rows off), the deciles of standardized age over the training pool taken as
    the edges of every column, each value binned by ``numpy.digitize`` (left-closed) clipped to bins
    1..10, and 10 one-hot columns per column, empty ones included: 50 + 70 = 120 inputs, the
    released code's count. The paper's numbers were made with these inputs, so this encoding is the
    one to set beside them; the corrected one is the default because a bin scale borrowed from age
    throws most of the other columns' information away (capital-gain, 0 for 92 % of the rows, lands
    in one or two of age's bins). Both bin at statistics of the private rows (``preprocessing``
    "fitted").

    **Under public preprocessing** (``preprocessing`` "public", the default under privacy) no
    edge or category is read off the rows: each numeric column gets 10 equal-width bins of its
    public range (:data:`ADULT_PUBLIC_RANGES`, on the log1p scale for the capital amounts), empty
    bins included (50 bin columns), and the categorical pairs are those of adult.names' categories
    (:data:`ADULT_CATEGORIES`; workclass has 8 there, with Never-worked, whose rows all miss their
    occupation), so 50 + 72 = 122 inputs whatever the rows. The released encoding has no public
    form (its edges are deciles of standardized age) and is refused under public preprocessing.

    Args:
        root: as for ``ADULT.load``.
        protected: must be "sex".
        minority_value: "Female" or "Male".
        seed: the run's seed (the split).
        encoding: "corrected" (97 inputs on the UCI files) or "released" (120).
        preprocessing: "fitted" (bins and categories of the rows, as the released code) or
            "public" (:mod:`dataset.preprocessing`; the corrected encoding only).

    Returns:
        A TabularPool whose pool is the training pool and which brings its validation set
        (``x_val``); ``numeric_columns`` is empty (every input is a 0/1 indicator).
    """
    if protected != "sex":
        raise ConfigError(f"data.protected: got {protected!r}; data.adult.protocol: runner protects sex (which is not "
                          "an input). Set data.protected: sex, or use data.adult.protocol: official.")
    if encoding not in RUNNER_BINNINGS:
        raise ValueError(f"encoding must be one of {tuple(RUNNER_BINNINGS)}, not {encoding!r}")
    if preprocessing == PUBLIC and encoding != "corrected":
        raise ConfigError(RELEASED_NOT_PUBLIC)
    info, table, labels, directory = _runner_rows(root, encoding)
    rows = runner_split(len(table), seed)
    sex = table[:, ADULT_COLUMNS.index(protected)]
    minority = minority_mask(sex, sorted(set(sex.tolist())), protected=protected,
                             minority_value=minority_value, title=ADULT.title)
    for split in ("train", "val", "test"):
        if not minority[rows[split]].any() or minority[rows[split]].all():
            raise DataError(f"data.adult.protocol: runner: the {split} set of seed {seed} holds only one group; the data "
                            f"in {directory} is too small for this protocol.")
    x, names, records, facts = _runner_inputs(table, rows, encoding, preprocessing)

    info.update({
        "protected": protected, "minority_value": minority_value,
        "minority_values": sorted(set(sex[minority].tolist())),
        "rows/train": len(rows["train"]), "rows/val": len(rows["val"]), "rows/test": len(rows["test"]),
        "split": f"RUNNER: seeded shuffle (seed {seed}), {1 - RUNNER_TEST_FRACTION:.0%} training part, of which "
                 "the first rows, as many as the test set's, validate",
        "test_rows_md5": hashlib.md5(",".join(map(str, rows["test"])).encode()).hexdigest(),
        "dropped_columns": list(RUNNER_DROPPED),
        **facts,
    })
    y_pool, minority_pool = labels[rows["train"]], minority[rows["train"]]
    for group, mask in (("minority", minority_pool), ("majority", ~minority_pool)):
        info[f"pool_count/group={group}"] = int(np.count_nonzero(mask))
        info[f"pool_positive_rate/group={group}"] = positive_rate(y_pool[mask])
        test_mask = minority[rows["test"]] == (group == "minority")
        info[f"test_count/group={group}"] = int(np.count_nonzero(test_mask))
    info["pool_share"] = float(minority_pool.mean())
    return TabularPool(
        x_pool=x[rows["train"]], y_pool=y_pool, minority_pool=minority_pool,
        x_test=x[rows["test"]], y_test=labels[rows["test"]], minority_test=minority[rows["test"]],
        feature_names=tuple(names), numeric_columns=(), info=info,
        x_val=x[rows["val"]], y_val=labels[rows["val"]], minority_val=minority[rows["val"]],
        encoding=tuple(records), preprocessing=preprocessing,
    )


def _runner_rows(root: str | Path | None, encoding: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray, Path]:
    """RUNNER's rows: both files' complete rows, in file order (adult.data's first), their labels,
    the files' info with the row counts, and the directory they came from."""
    info, splits, paths = read_adult_files(root)
    table = np.concatenate([splits["train"][0], splits["test"][0]])
    labels = np.concatenate([splits["train"][1], splits["test"][1]])
    complete = ~(table == MISSING).any(axis=1)
    if not complete.any():
        _refuse_all_missing(paths["adult.data"].parent, len(table))
    info.update({"protocol": "runner" if encoding == "corrected" else "runner_released",
                 "runner_encoding": encoding, "rows_read": len(table),
                 "rows_dropped_missing": int(np.count_nonzero(~complete)),
                 "rows": int(np.count_nonzero(complete))})
    return info, table[complete], labels[complete], paths["adult.data"].parent


def _runner_inputs(table: np.ndarray, rows: dict[str, np.ndarray], encoding: str, preprocessing: str):
    """RUNNER's 0/1 inputs of every row: the numeric columns' bins (:data:`RUNNER_BINNINGS`, or the
    public ranges' bins) and a (col!=v, col=v) pair per category of the categorical columns and for
    race=White. Returns (inputs, their names, preprocessing records, info entries)."""
    column = {name: ADULT_COLUMNS.index(name) for name in ADULT_COLUMNS}
    public = preprocessing == PUBLIC
    numeric = {name: table[:, column[name]].astype(np.float64) for name in RUNNER_NUMERIC}
    if public:
        blocks, names, bins_info, records = _runner_bins_public(numeric)
    else:
        blocks, names, bins_info, records = RUNNER_BINNINGS[encoding](numeric, rows)
    categories = {name: ADULT_CATEGORIES[name].sorted() if public else np.unique(table[:, column[name]])
                  for name in RUNNER_CATEGORICAL}
    dummies = [(name, value, table[:, column[name]] == value)
               for name in RUNNER_CATEGORICAL for value in categories[name]]
    records += [column_record(name, "a pair (col!=v, col=v) per category", {"categories": categories[name].tolist()},
                              PUBLIC if public else FITTED,
                              ADULT_NAMES if public else "the categories of every row of both files")
                for name in RUNNER_CATEGORICAL]
    records.append(column_record("race", "a pair (race!=White, race=White)", None, PUBLIC,
                                 "the released code's race_White dummy"))
    dummies.append(("race", RUNNER_RACE_VALUE, table[:, column["race"]] == RUNNER_RACE_VALUE))
    for name, value, hit in dummies:
        blocks.append(np.stack([~hit, hit], axis=1).astype(np.float32))
        names += [f"{name}!={value}", f"{name}={value}"]
    x = np.concatenate(blocks, axis=1)
    return x, names, records, {
        **bins_info, "input_count": x.shape[1],
        "train_rows_categories_unseen": int(sum(not hit[rows["train"]].any() for _, _, hit in dummies))}


def _runner_bins_public(numeric: dict[str, np.ndarray]):
    """Each numeric column in 10 equal-width bins of its public range (:data:`ADULT_PUBLIC_RANGES`),
    empty bins included: (one-hot blocks, column names, info entries, preprocessing records)."""
    blocks, names, edges_info, records = [], [], {}, []
    for name, values in numeric.items():
        inner = ADULT_PUBLIC_RANGES[name].bin_edges(RUNNER_BINS)
        code = np.searchsorted(inner, values, side="left")  # right-closed bins (e_i, e_i+1]
        blocks.append(np.eye(len(inner) + 1, dtype=np.float32)[code])
        names += _bin_names(name, inner)
        edges_info[name] = [float(e) for e in inner]
        records.append(column_record(
            name, "one-hot of right-closed bins between the edges", {"edges": inner.tolist()},
            PUBLIC, f"{RUNNER_BINS} equal-width bins of the public range: "
                    f"{ADULT_PUBLIC_RANGES[name].source}"))
    return blocks, names, {"runner_bins": {name: len(e) + 1 for name, e in edges_info.items()},
                           "runner_bin_edges": edges_info}, records


def _runner_bins_corrected(numeric: dict[str, np.ndarray], rows: dict[str, np.ndarray]):
    """Each numeric column in its own right-closed decile bins of the training pool (the corrected
    rule of :func:`load_adult_runner`): (one-hot blocks, column names, info entries, preprocessing
    records)."""
    blocks, names, edges_info, records = [], [], {}, []
    for name, values in numeric.items():
        edges = np.quantile(values[rows["train"]], np.linspace(0.0, 1.0, RUNNER_BINS + 1))
        inner = np.unique(edges[1:-1])
        code = np.searchsorted(inner, values, side="left")  # right-closed bins (e_i, e_i+1]
        blocks.append(np.eye(len(inner) + 1, dtype=np.float32)[code])
        names += _bin_names(name, inner)
        edges_info[name] = [float(e) for e in inner]
        records.append(column_record(name, "one-hot of right-closed bins between the edges",
                                     {"edges": inner.tolist()}, FITTED,
                                     "deciles of the training pool's values"))
    return blocks, names, {"runner_bins": {name: len(e) + 1 for name, e in edges_info.items()},
                           "runner_bin_edges": edges_info}, records


def _runner_bins_released(numeric: dict[str, np.ndarray], rows: dict[str, np.ndarray]):
    """The released code's binning (:func:`load_adult_runner`, "as released"): every standardized
    numeric column cut at the deciles of standardized age, 10 one-hot columns each, empty or not."""
    fitted = np.concatenate([rows["train"], rows["val"]])  # the released StandardScaler's rows
    moments = {name: (float(values[fitted].mean()), float(values[fitted].std()))
               for name, values in numeric.items()}
    standardized = {name: (values - moments[name][0]) / moments[name][1]
                    for name, values in numeric.items()}
    edges = np.quantile(standardized["age"][rows["train"]], np.linspace(0.0, 1.0, RUNNER_BINS + 1))
    blocks, names, filled, records = [], [], {}, []
    for name, values in standardized.items():
        code = np.clip(np.digitize(values, edges), 1, RUNNER_BINS) - 1
        blocks.append(np.eye(RUNNER_BINS, dtype=np.float32)[code])
        names += [f"{name}:age_bin={b}" for b in range(RUNNER_BINS)]
        filled[name] = int(np.unique(code[rows["train"]]).size)
        records.append(column_record(
            name, "standardized, then one-hot of numpy.digitize at the edges, clipped to bins 1..10",
            {"mean": moments[name][0], "std": moments[name][1], "edges": edges.tolist()}, FITTED,
            "the released code: mean and std of the training part, edges the deciles of "
            "standardized age over the training pool"))
    return blocks, names, {"runner_bins": {name: RUNNER_BINS for name in numeric},
                           "runner_bins_filled": filled,
                           "runner_age_edges_standardized": [float(e) for e in edges]}, records


# The numeric-column binnings of data.adult.protocol: runner (corrected) and runner_released, fitted on
# the training rows; the public one is _runner_bins_public.
RUNNER_BINNINGS = {"corrected": _runner_bins_corrected, "released": _runner_bins_released}


def runner_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """RUNNER's split of ``n`` rows for ``seed``: {"train", "val", "test"} -> sorted row indices.

    A shuffle by the ``adult_runner_split`` stream; the training part is the first
    ``int(0.8 * n)`` rows of it (aif360's ``split([0.8])``, which the released code calls), the
    test set the rest, and the validation set the first ``len(test)`` rows of the training part.
    """
    order = numpy_generator(seed, "adult_runner_split").permutation(n)
    n_train_part = int((1 - RUNNER_TEST_FRACTION) * n)
    n_test = n - n_train_part
    return {"train": np.sort(order[n_test:n_train_part]), "val": np.sort(order[:n_test]),
            "test": np.sort(order[n_train_part:])}


def _bin_names(name: str, inner: np.ndarray) -> list[str]:
    """Names of the right-closed bins between ``inner`` edges: "age<=22", "age=(22,26]", ..., "age>57"."""
    if len(inner) == 0:
        return [f"{name}=any"]
    edges = [f"{e:g}" for e in inner]
    between = [name + "=(" + low + "," + high + "]" for low, high in zip(edges, edges[1:])]
    return [f"{name}<={edges[0]}", *between, f"{name}>{edges[-1]}"]


# ---------------------------------------------------------------------------------------------------
# The declaration
# ---------------------------------------------------------------------------------------------------

ADULT_MISSING_RULE = ('a row with "?" in any column is dropped from its split (in the UCI files: workclass, '
                      'occupation or native-country)')

ADULT_PROTOCOLS = ("official", "runner", "runner_released")


@dataclass(frozen=True, kw_only=True)
class AdultSettings:
    """Adult's own settings, the config's ``data.adult`` section.

    Attributes:
        protocol: "official" (adult.data trains, adult.test tests), "runner" (the RUNNER paper's
            protocol: the 45,222 complete rows of both files shuffled per seed into 60 / 20 / 20
            train / validation / test, sex not an input, each numeric column in its own decile
            bins (97 inputs), or in 10 bins of its public range under public preprocessing (122);
            see :func:`load_adult_runner`) or "runner_released" (the same rows and split with the
            released code's encoding: every numeric column binned on age's standardized deciles,
            10 one-hot columns each, 120 inputs; for setting this tool's numbers beside the
            paper's; fitted preprocessing only). Both RUNNER protocols bring their own validation
            set, so ``data.val_fraction`` must stay 0.
    """

    protocol: str = "official"

    def validate(self) -> None:
        one_of("data.adult.protocol", self.protocol, ADULT_PROTOCOLS)

    @property
    def runner_protocol(self) -> bool:
        """Whether the data are in one of RUNNER's protocols (their own split and inputs)."""
        return self.protocol in ("runner", "runner_released")

    @property
    def brings_validation(self) -> bool:
        """Whether the protocol brings its own validation split (config.data.has_validation)."""
        return self.runner_protocol

    def validation_source(self) -> str:
        """Where the validation split comes from, for the config's messages."""
        return f"data.adult.protocol: {self.protocol}"

    def refusal(self, data) -> str | None:
        """The config's error when the protocol does not fit ``data`` (the DataConfig), else None."""
        if not self.runner_protocol:
            return None
        if data.val_fraction != 0:
            return (f"data.val_fraction: got {data.val_fraction!r}, but data.adult.protocol: "
                    f"{self.protocol} draws its own validation set (as many rows as the test set, "
                    "20 %). Set data.val_fraction: 0, or use data.adult.protocol: official.")
        if data.protected != "sex":
            return (f"data.protected: got {data.protected!r}; expected sex under "
                    f"data.adult.protocol: {self.protocol} (its protected attribute, not an input).")
        return None


ADULT = register_source(TabularSource(
    name="adult",
    title="UCI Adult",
    target="income",
    label="1 = income >50K",
    files=ADULT_MD5,
    shipped_dir=SHIPPED_ADULT_DIR,
    url=ADULT_URL,
    numeric=tuple(c for c in ADULT_NUMERIC if c not in ADULT_DROPPED),
    categorical=tuple(c for c in ADULT_COLUMNS[:-1] if c not in ADULT_NUMERIC and c not in ADULT_DROPPED),
    public=PublicSchema(ranges=ADULT_PUBLIC_RANGES, categories=ADULT_CATEGORIES),
    protected={name: Protected() for name in ADULT_PROTECTED},
    missing=ADULT_MISSING_RULE,
    split=OFFICIAL,
    read=read_adult,
    example=("sex", "Female"),
    dropped=ADULT_DROPPED,
    protocols={"runner": functools.partial(load_adult_runner, encoding="corrected"),
               "runner_released": functools.partial(load_adult_runner, encoding="released")},
    settings=AdultSettings,
))
