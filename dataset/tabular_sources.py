"""COMPAS, German credit and LSAC bar passage: three more tabular sources next to UCI Adult.

Each source is a loader filed in :data:`dataset.tabular.TABULAR_SOURCES` (same signature as
``load_adult``: ``(root, *, protected, minority_value) -> TabularPool``) and a builder filed in
:data:`dataset.DATASETS` that checks ``data.target`` and hands the pool to
:func:`dataset.tabular.build_tabular_bundle` (holding out ``data.val_fraction`` of the training
pool for validation, resampling the rest to ``data.minority_share`` / ``data.train_size`` and
standardizing with the selected training rows' statistics, as for Adult). The validation set comes
from the run's seed (stream ``validation``), unlike the fixed test split.

What the three share, and why:

* **A fixed test split.** None of them ships an official split, so each is split 80/20 once,
  stratified by label × sex × race (× age group for German credit), with a seed of its own
  (:data:`SPLIT_SEED`, stream ``{name}_split`` in :mod:`utils.seeding`) that does *not* depend on the
  run's seed. A researcher comparing seeds then compares runs judged on the same test rows (paired
  comparisons, the spread over seeds is the spread of training, resampling and noise, not of the
  test draw), the same way Adult's official split and CelebA's protocol test set stay fixed. The
  strata do not depend on ``data.protected`` either, so a ``sex`` run and a ``race`` run of COMPAS
  share their test rows (the race run keeps the two races it compares). ``info["test_rows_md5"]``
  fingerprints the test rows, so two runs can be checked to share them.
* **The protected attribute stays an input**, as in Adult: the study asks how much a model learns
  about a group it rarely sees, not whether it is fair through unawareness, and the other columns
  carry proxies of the group anyway.
* **Positive label = the event predicted** (recidivism within two years; bad credit; passing the
  bar), so ``test/selection_rate`` is the predicted rate of that event and ``test/eo_gap`` the gap
  in catching it. For COMPAS and German credit that event is the unfavourable outcome.
* **Group names** follow Adult's: ``data.protected`` is ``sex`` or ``race`` (German credit: ``sex``
  or ``age``); ``data.minority_value`` is a value of the column or ``non-X`` for every value but X.

Files are read by content (gzip or plain); the copies shipped in ``dataset/data/compas`` and
``dataset/data/german`` are checked against the md5 of the originals, a user's copy (``data.root``)
for format only, its md5 and whether it equals the original recorded in ``info``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataset import DATASETS
from dataset.base import DataBundle
from dataset.preprocessing import (
    FITTED,
    PUBLIC,
    PublicCategories,
    PublicRange,
    PublicSchema,
    one_hot_record,
    resolved_mode,
)
from dataset.tabular import TABULAR_DATA_KEYS, TABULAR_SOURCES, TabularPool, build_tabular_bundle
from utils.errors import ConfigError, DataError, file_problem
from utils.seeding import numpy_generator

DATA_DIR = Path(__file__).resolve().parent / "data"

# The fixed split: this share of every stratum goes to the test set, drawn with this seed (not the run's).
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# Message parts the tests import (fairlearn's habit: constants, not regexes copied by hand).
FILE_NOT_FOUND = "file not found"
SHIPPED_MISSING = "the shipped copy"
CHECKSUM_MISMATCH = "checksum mismatch"
MISSING_COLUMNS = "the header lacks"
FIELD_COUNT = "fields, expected"
NOT_A_NUMBER = "expected a number"
NON_FINITE = "expected a finite number"
BAD_VALUE = "expected one of"
UNKNOWN_TARGET = "predicts"
ADULT_DEFAULT_TARGET = "is the default of data.target"
UNKNOWN_PROTECTED = "is not a protected attribute of"
UNKNOWN_MINORITY = "does not occur in"


# ---------------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFacts:
    """What the registry and the error messages need to know about one source.

    Attributes:
        name: ``data.name``.
        title: the data set's name in messages.
        target: the one ``data.target`` it accepts.
        example: (protected, minority_value) of a typical config, for the forgotten-target hint.
    """

    name: str
    title: str
    target: str
    example: tuple[str, str]


def _locate(root: str | Path | None, name: str, *, shipped_dir: Path | None, title: str,
            where: str) -> tuple[Path, bool]:
    """The file to read and whether it is the shipped copy.

    ``root`` None means the shipped ``{name}.gz`` (a DataError if there is none or it is gone);
    otherwise ``root/name`` or ``root/name.gz``. ``where`` says where to get the file.
    """
    if root is None:
        if shipped_dir is None:
            raise DataError(f"data.root: null, but {title} is not shipped with this repository; set data.root to "
                            f"a directory holding your copy of {name}. {where}")
        path = shipped_dir / f"{name}.gz"
        if not path.is_file():
            raise DataError(f"{path}: {SHIPPED_MISSING} of {title} is missing from this checkout. Restore it "
                            f"from the repository, or set data.root to a directory holding {name}. {where}")
        return path, True
    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise DataError(f"data.root: {str(directory)!r} is not a directory; set it to the directory holding "
                        f"{name} (plain or .gz).")
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate, False
        if os.path.lexists(candidate) and (problem := file_problem(candidate)) != "does not exist":
            raise DataError(f"{candidate}: {problem}; put your copy of {name} there. {where}")
    raise DataError(f"{directory / name}: {FILE_NOT_FOUND} (nor {name}.gz) in data.root {str(directory)!r}. "
                    f"{where}")


def _read_text(path: Path, *, shipped: bool, md5: str | None, title: str) -> tuple[str, str]:
    """The file's text and the md5 of its (decompressed) bytes; the shipped copy must match ``md5``.

    gzip is recognized by content, not by name. UTF-8 (with or without a byte-order mark) is tried
    first, then Latin-1, which decodes any byte: the values this module reads are ASCII, and a
    binary file still fails at the header check with a message that lists what was expected.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); check its permissions or replace it.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: not a readable gzip file ({error}); replace it with an intact copy.") from None
    digest = hashlib.md5(raw).hexdigest()
    if shipped and digest != md5:
        raise DataError(f"{path}: {CHECKSUM_MISMATCH}, md5 of the decompressed file is {digest}, the original's "
                        f"is {md5}. The shipped copy of {title} is corrupted or was edited; restore it from the "
                        "repository, or set data.root to a directory holding an original copy.")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: not a text file (it holds NUL bytes); expected the {title} file.")
    try:
        return raw.decode("utf-8-sig"), digest
    except UnicodeDecodeError:
        return raw.decode("latin-1"), digest


def _csv_rows(text: str, path: Path, title: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank data row, each row as wide as the header."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected the comma-separated {title} file with a header.")
        header = [name.strip() for name in header]
        rows = []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(fields)} comma-separated {FIELD_COUNT} "
                                f"{len(header)} as in the header (line 1). Fix or remove that line.")
            rows.append((reader.line_num, fields))
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None
    if not rows:
        raise DataError(f"{path}: no data rows after the header; expected the {title} file.")
    return header, rows


def _columns(header: Sequence[str], wanted: Sequence[str], path: Path, title: str, hint: str = "") -> dict[str, int]:
    """Index of the first occurrence of each wanted column, or a DataError listing what is missing."""
    missing = [name for name in wanted if name not in header]
    if missing:
        found = ", ".join(name for name in header if name) or "(none)"
        raise DataError(f"{path}, line 1: {MISSING_COLUMNS} {', '.join(missing)}. Expected the {title} file with "
                        f"columns {', '.join(wanted)}; found: {found}.{hint}")
    return {name: list(header).index(name) for name in wanted}


def _number(value: str, path: Path, line: int, column: str) -> float:
    """``value`` as a finite float, or a DataError naming the file, line and column."""
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: column {column} is {value!r}, {NOT_A_NUMBER}. "
                        "Fix or remove that line.") from None
    # float() also reads "nan", "inf" and "1e999"; such a value would turn the standardized features
    # (and the loss) into NaN, blamed later on training.lr.
    if not math.isfinite(number):
        raise DataError(f"{path}, line {line}: column {column} is {value!r}, {NON_FINITE}. Fix or remove that line.")
    return number


def _code(value: str) -> str:
    """A category code written as a number ("1", "1.0", " 2 ") in one spelling ("1", "2")."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if math.isfinite(number) and number.is_integer() else value


def _fixed_split(strata: np.ndarray, purpose: str) -> np.ndarray:
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


def _minority_rule(values: np.ndarray, allowed: Sequence[str], *, protected: str, minority_value: Any,
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


def _check_protected(protected: str, allowed: Sequence[str], title: str) -> None:
    if protected not in allowed:
        raise ConfigError(f"data.protected: {protected!r} {UNKNOWN_PROTECTED} {title}; use one of "
                          f"{', '.join(allowed)}.")


class _Encoder:
    """Numeric columns raw (the bundle builder scales them), categorical ones one-hot, in sorted
    order, over the documented categories (``public``) or, without them, the values of the
    training pool; a value outside them (a test value unseen in training) encodes as zeros."""

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


def _rate(y: np.ndarray) -> float | None:
    return float(y.mean()) if len(y) else None


def _assemble(table: dict[str, np.ndarray], labels: np.ndarray, minority: np.ndarray, is_test: np.ndarray,
              keep: np.ndarray, *, groups: np.ndarray, row_ids: np.ndarray, numeric: Sequence[str], categorical: Sequence[str],
              info: dict[str, Any], protected: str, minority_value: Any, title: str, path: Path,
              schema: PublicSchema, preprocessing: str) -> TabularPool:
    """Encode the kept rows into a :class:`TabularPool` and record the counts every source reports.

    ``table`` maps a column to its values over all rows (numbers already as float arrays); only the
    ``numeric`` and ``categorical`` columns become features. ``keep`` says which rows take part in
    this configuration (COMPAS drops races it does not compare); ``groups`` holds each row's value
    of the protected attribute (German credit's age group, say), for ``info["minority_values"]``;
    ``row_ids`` its 0-based data row in the file, for ``info["test_rows_md5"]``. ``schema`` is
    the source's public preprocessing, used when ``preprocessing`` is "public".
    """
    train_rows = np.flatnonzero(keep & ~is_test)
    test_rows = np.flatnonzero(keep & is_test)
    minority_pool, minority_test = minority[train_rows], minority[test_rows]
    for split, mask in (("training pool", minority_pool), ("test set", minority_test)):
        if not mask.any() or mask.all():
            which = "no" if not mask.any() else "only"
            raise ConfigError(f"data.minority_value: {minority_value!r} leaves {which} minority examples in the "
                              f"{split} of {title} ({path}), so the groups cannot be compared; choose another value.")
    public = schema if preprocessing == PUBLIC else None
    encoder = _Encoder({name: table[name][train_rows] for name in categorical}, numeric, categorical, public)
    x_pool, unseen_pool = encoder.encode(table, train_rows)
    if public is not None:  # a user's copy may spell a category otherwise; it then encodes as all zeros
        info["pool_rows_unlisted_category"] = unseen_pool
    x_test, unseen = encoder.encode(table, test_rows)
    y_pool, y_test = labels[train_rows], labels[test_rows]

    info.update({
        "rows/train": len(train_rows),
        "rows/test": len(test_rows),
        "split": f"fixed stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} (split seed {SPLIT_SEED}, "
                 "independent of the run's seed)",
        # The test set's data rows of the file (0-based), fingerprinted: equal digests, same test rows.
        "test_rows_md5": hashlib.md5(",".join(map(str, row_ids[test_rows])).encode()).hexdigest(),
        "test_rows_unseen_category": unseen,
        "protected": protected,
        "minority_value": minority_value,
        "minority_values": sorted(set(groups[train_rows][minority_pool].tolist())),
        "pool_share": float(minority_pool.mean()),
    })
    for group, pool_mask, test_mask in (("minority", minority_pool, minority_test),
                                        ("majority", ~minority_pool, ~minority_test)):
        info[f"pool_count/group={group}"] = int(np.count_nonzero(pool_mask))
        info[f"pool_positive_rate/group={group}"] = _rate(y_pool[pool_mask])
        info[f"test_count/group={group}"] = int(np.count_nonzero(test_mask))
        info[f"test_positive_rate/group={group}"] = _rate(y_test[test_mask])
    return TabularPool(x_pool=x_pool, y_pool=y_pool, minority_pool=minority_pool, x_test=x_test, y_test=y_test,
                       minority_test=minority_test, feature_names=encoder.names,
                       numeric_columns=encoder.numeric_columns, info=info,
                       public_ranges=tuple(schema.ranges[name] for name in numeric),
                       encoding=tuple(one_hot_record(name, values, public=schema.categories[name]
                                                     if public is not None else None)
                                      for name, values in encoder.categories.items()),
                       preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------------
# COMPAS (ProPublica, Broward County 2013-2014)
# ---------------------------------------------------------------------------------------------------

COMPAS = SourceFacts("compas", "ProPublica's COMPAS data (compas-scores-two-years.csv)", "two_year_recid",
                     ("race", "African-American"))
COMPAS_FILE = "compas-scores-two-years.csv"
COMPAS_URL = "https://github.com/propublica/compas-analysis"
COMPAS_MD5 = "9165d40c400bba93a8cffece2b74622b"
SHIPPED_COMPAS_DIR = DATA_DIR / "compas"
COMPAS_NUMERIC = ("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count")
COMPAS_CATEGORICAL = ("age_cat", "sex", "race", "c_charge_degree")
COMPAS_FILTER_COLUMNS = ("days_b_screening_arrest", "is_recid", "c_charge_degree", "score_text")
COMPAS_PROTECTED = ("race", "sex")
# ProPublica compares these two races; a race run with one of them as minority_value keeps only them.
COMPAS_RACE_PAIR = ("African-American", "Caucasian")
COMPAS_SCREENING_WINDOW = 30  # days between the arrest and the COMPAS screening, either way
# Public preprocessing (dataset.preprocessing), also in dataset/data/compas/README.md. The file's
# documentation gives no numeric range: the bounds are assumptions from the columns' meaning, the
# counts on the log1p scale (most are 0 or small, a few run into the tens). The categories are
# the values ProPublica's analysis notebook (Compas Analysis.ipynb) publishes for each column.
_PROPUBLICA = "ProPublica's analysis notebook (compas-analysis, Compas Analysis.ipynb)"
_ASSUMED_COUNT = "assumed: a count of at most two digits"
COMPAS_PUBLIC = PublicSchema(
    ranges={"age": PublicRange(18, 99, source="assumed: adult defendants (the screening is of "
                                              "people arrested as adults), at most two digits"),
            **{name: PublicRange(0, 99, log=True, source=_ASSUMED_COUNT)
               for name in ("priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count")}},
    categories={
        "age_cat": PublicCategories(("Less than 25", "25 - 45", "Greater than 45"), _PROPUBLICA),
        "sex": PublicCategories(("Male", "Female"), _PROPUBLICA),
        "race": PublicCategories(("African-American", "Caucasian", "Hispanic", "Other", "Asian",
                                  "Native American"), _PROPUBLICA),
        "c_charge_degree": PublicCategories(("F", "M"), f"{_PROPUBLICA}: felony or misdemeanour "
                                                        "(its filter drops the other code, O)"),
    })


@TABULAR_SOURCES.register("compas")
def load_compas(root: str | Path | None, *, protected: str, minority_value: str,
                preprocessing: str = FITTED) -> TabularPool:
    """ProPublica's two-year recidivism data, filtered as in ProPublica's analysis.

    ``compas-scores-two-years.csv`` (7,214 defendants screened in Broward County, Florida, in 2013-2014)
    is filtered as ProPublica's notebook does: the COMPAS screening within 30 days of the arrest
    (``days_b_screening_arrest`` in [-30, 30]; a missing value fails this test, as in the notebook),
    ``is_recid != -1``, ``c_charge_degree != 'O'`` and ``score_text != 'N/A'``: 6,172 rows remain.
    The label is ``two_year_recid`` (1 = charged with a new offence within two years).

    Features: ``age``, ``priors_count``, ``juv_fel_count``, ``juv_misd_count``, ``juv_other_count``
    (numeric) and ``age_cat``, ``sex``, ``race``, ``c_charge_degree`` (one-hot). COMPAS's own outputs
    (``decile_score``, ``score_text``, the violence scores) are not features: they are the model under
    audit, and a model fed them would learn to copy it. Outcome columns (``is_recid``, ``r_*``,
    ``violent_recid``, ``event``...) would leak the label; names, dates and case numbers identify people.
    The file repeats ``priors_count`` and ``decile_score``; the first ``priors_count`` is used.

    Groups: ``protected: race`` with ``minority_value`` African-American or Caucasian keeps only
    these two races (ProPublica's comparison and most fairness papers'; the 894 other rows are
    dropped, leaving 5,278); ``non-Caucasian`` (or any ``non-X``) keeps every race. ``protected: sex``
    (Female, Male) keeps every row. The test set is the fixed 20 % split (module docstring).

    Args:
        root: None for the copy shipped in ``dataset/data/compas`` (md5-checked), or a directory with
            ``compas-scores-two-years.csv`` (plain or .gz), checked for format only.
        protected: "race" or "sex".
        minority_value: a value of that column, or "non-X".

    Raises:
        DataError: a missing, corrupted or malformed file (naming the file and line).
        ConfigError: an unknown protected column or minority value (listing the allowed ones).
    """
    _check_protected(protected, COMPAS_PROTECTED, COMPAS.title)
    where = (f"ProPublica publishes it at {COMPAS_URL}; put {COMPAS_FILE} there, or set data.root: null to use "
             "the copy shipped with this repository.")
    path, shipped = _locate(root, COMPAS_FILE, shipped_dir=SHIPPED_COMPAS_DIR, title=COMPAS.title, where=where)
    text, digest = _read_text(path, shipped=shipped, md5=COMPAS_MD5, title=COMPAS.title)
    header, rows = _csv_rows(text, path, COMPAS.title)
    wanted = (COMPAS.target, *COMPAS_NUMERIC, *COMPAS_CATEGORICAL,
              *(c for c in COMPAS_FILTER_COLUMNS if c not in COMPAS_CATEGORICAL))
    column = _columns(header, wanted, path, COMPAS.title)

    n = len(rows)
    table: dict[str, np.ndarray] = {}
    for name in COMPAS_CATEGORICAL + ("score_text",):
        table[name] = np.array([fields[column[name]].strip() for _, fields in rows], dtype=str)
    for name in COMPAS_NUMERIC + ("is_recid",):
        table[name] = np.array([_number(fields[column[name]], path, line, name) for line, fields in rows])
    labels = np.empty(n, dtype=np.int64)
    screening = np.full(n, np.nan)
    for i, (line, fields) in enumerate(rows):
        label = _code(fields[column[COMPAS.target]])
        if label not in ("0", "1"):
            raise DataError(f"{path}, line {line}: column {COMPAS.target} is {fields[column[COMPAS.target]]!r}, "
                            f"{BAD_VALUE} 0, 1.")
        labels[i] = int(label)
        days = fields[column["days_b_screening_arrest"]].strip()
        if days:  # empty: no screening date on record, which the filter below drops
            screening[i] = _number(days, path, line, "days_b_screening_arrest")

    info: dict[str, Any] = {"source": "compas", "file": str(path), "md5": digest,
                            "propublica_original": digest == COMPAS_MD5, "rows_read": n}
    # ProPublica's filters, in the notebook's order; each count is of rows that passed the previous ones.
    keep = np.ones(n, dtype=bool)
    for reason, passes in (
        ("days_b_screening_arrest_missing", ~np.isnan(screening)),
        ("days_b_screening_arrest_outside_30", ~(np.abs(screening) > COMPAS_SCREENING_WINDOW)),
        ("is_recid_-1", table["is_recid"] != -1),
        ("c_charge_degree_O", table["c_charge_degree"] != "O"),
        ("score_text_N/A", table["score_text"] != "N/A"),
    ):
        info[f"rows_dropped/{reason}"] = int(np.count_nonzero(keep & ~passes))
        keep &= passes
    info["rows_after_propublica_filters"] = int(np.count_nonzero(keep))
    if not keep.any():
        raise DataError(f"{path}: no row passes ProPublica's filters (screening within 30 days of arrest, is_recid "
                        "!= -1, c_charge_degree != 'O', score_text != 'N/A'); is this the two-year COMPAS file?")
    filtered = np.flatnonzero(keep)
    table = {name: values[filtered] for name, values in table.items()}
    labels = labels[filtered]

    # Split first, on every filtered row, so that the test rows are the same for sex and race runs.
    is_test = _fixed_split(np.stack([labels.astype(str), table["sex"], table["race"]], axis=1), "compas_split")
    values = table[protected]
    pair = protected == "race" and str(minority_value) in COMPAS_RACE_PAIR
    allowed = COMPAS_RACE_PAIR if pair else sorted(set(values[~is_test].tolist()))
    minority = _minority_rule(values, allowed, protected=protected, minority_value=minority_value,
                              title=COMPAS.title)
    rows_kept = np.isin(values, COMPAS_RACE_PAIR) if pair else np.ones(len(values), dtype=bool)
    info["rows_dropped/other_race"] = int(np.count_nonzero(~rows_kept))
    info["not_features"] = ("COMPAS's own scores (decile_score, score_text, v_decile_score, v_score_text); "
                            "outcome, identity and date columns")
    return _assemble(table, labels, minority, is_test, rows_kept, groups=values, row_ids=filtered,
                     numeric=COMPAS_NUMERIC,
                     categorical=COMPAS_CATEGORICAL, info=info, protected=protected,
                     minority_value=minority_value, title=COMPAS.title, path=path,
                     schema=COMPAS_PUBLIC, preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------------
# German credit (UCI Statlog, Hofmann 1994)
# ---------------------------------------------------------------------------------------------------

GERMAN = SourceFacts("german", "UCI Statlog German Credit (german.data)", "bad_credit", ("age", "young"))
GERMAN_FILE = "german.data"
GERMAN_URL = "https://archive.ics.uci.edu/dataset/144/statlog+german+credit+data"
GERMAN_MD5 = "6b94c2e35480e671545e52a808a8a549"
SHIPPED_GERMAN_DIR = DATA_DIR / "german"
# The 20 attributes in german.doc's order (names ours), then the class (1 good, 2 bad).
GERMAN_COLUMNS = (
    "checking_account", "duration_months", "credit_history", "purpose", "credit_amount", "savings",
    "employment_since", "installment_rate", "personal_status_sex", "other_debtors", "residence_since",
    "property", "age", "other_installment_plans", "housing", "existing_credits", "job",
    "people_liable", "telephone", "foreign_worker",
)  # fmt: skip
# german.doc's numerical attributes (2, 5, 8, 11, 13, 16, 18); the others are codes A<attribute><k>.
GERMAN_NUMERIC = ("duration_months", "credit_amount", "installment_rate", "residence_since", "age",
                  "existing_credits", "people_liable")
GERMAN_CATEGORICAL = tuple(c for c in GERMAN_COLUMNS if c not in GERMAN_NUMERIC)
GERMAN_PROTECTED = ("age", "sex")
# Attribute 9 codes (german.doc): A91 male divorced/separated, A92 female divorced/separated/married,
# A93 male single, A94 male married/widowed, A95 female single (A95 does not occur in the file).
GERMAN_SEX = {"A91": "Male", "A92": "Female", "A93": "Male", "A94": "Male", "A95": "Female"}
# Age groups of Kamiran & Calders (2009), the usual split of this data set: 25 or younger vs older.
GERMAN_YOUNG_MAX_AGE = 25
GERMAN_AGE_GROUPS = ("young", "non-young")
# Public preprocessing (dataset.preprocessing), also in dataset/data/german/README.md. german.doc
# lists every code of the 13 qualitative attributes (A47 and A95 included, which do not occur) and
# no range of the 7 numerical ones: those bounds are assumptions from the attributes' meaning.
_GERMAN_DOC = "german.doc (UCI Statlog German Credit's description file)"
_ASSUMED_SMALL = "assumed: a small code or count, at most 10 (german.doc gives no range)"
_GERMAN_CODES = {
    "checking_account": 4, "credit_history": (0, 4), "purpose": (0, 10), "savings": 5,
    "employment_since": 5, "personal_status_sex": 5, "other_debtors": 3, "property": 4,
    "other_installment_plans": 3, "housing": 3, "job": 4, "telephone": 2, "foreign_worker": 2,
}


def _german_codes(name: str) -> tuple[str, ...]:
    """german.doc's codes of attribute ``name``: A<attribute number><k>, k from 1 (or 0)."""
    attribute = GERMAN_COLUMNS.index(name) + 1
    spec = _GERMAN_CODES[name]
    first, last = spec if isinstance(spec, tuple) else (1, spec)
    return tuple(f"A{attribute}{k}" for k in range(first, last + 1))


GERMAN_PUBLIC = PublicSchema(
    ranges={"duration_months": PublicRange(1, 120, source="assumed: a loan of at most ten years"),
            "credit_amount": PublicRange(0, 100_000, log=True,
                                         source="assumed: at most 100,000 Deutsche Mark"),
            "age": PublicRange(18, 99, source="assumed: adult applicants, at most two digits"),
            **{name: PublicRange(0, 10, source=_ASSUMED_SMALL) for name in
               ("installment_rate", "residence_since", "existing_credits", "people_liable")}},
    categories={name: PublicCategories(_german_codes(name), _GERMAN_DOC) for name in _GERMAN_CODES})


@TABULAR_SOURCES.register("german")
def load_german(root: str | Path | None, *, protected: str, minority_value: str,
                preprocessing: str = FITTED) -> TabularPool:
    """UCI Statlog German Credit: 1,000 loan applicants, 300 of them bad credit risks.

    ``german.data`` has 20 space-separated attributes and the class (1 good, 2 bad). The label is 1
    for *bad* credit (class 2): the positive label is the event the model predicts, as for COMPAS,
    so ``test/tpr`` is the share of bad risks caught. (Many papers instead call good credit the
    favourable outcome; ``test/fpr`` here is then one minus their TPR.) All 20 attributes are
    features: the 7 numerical ones of german.doc raw (standardized by the bundle builder), the 13
    coded ones one-hot over their codes (``purpose=A43``...; the codes are listed in german.doc and
    in ``dataset/data/german/README.md``).

    Groups: ``protected: age``, ``minority_value: young`` (age <= 25, 190 applicants) or
    ``non-young``; or ``protected: sex`` from the personal-status code (A92, A95 Female; A91, A93,
    A94 Male; 310 women), ``minority_value: Female`` or ``Male``. The personal-status code, which
    also says marital status, stays a feature (as the protected column always does). The test set
    is the fixed 20 % split (module docstring): 200 applicants.

    Raises:
        DataError: a missing, corrupted or malformed file (naming the file and line).
        ConfigError: an unknown protected column or minority value (listing the allowed ones).
    """
    _check_protected(protected, GERMAN_PROTECTED, GERMAN.title)
    where = (f"UCI publishes it at {GERMAN_URL}; put {GERMAN_FILE} there, or set data.root: null to use the "
             "copy shipped with this repository.")
    path, shipped = _locate(root, GERMAN_FILE, shipped_dir=SHIPPED_GERMAN_DIR, title=GERMAN.title, where=where)
    text, digest = _read_text(path, shipped=shipped, md5=GERMAN_MD5, title=GERMAN.title)

    width = len(GERMAN_COLUMNS) + 1
    records, labels = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            hint = " This looks like german.data-numeric; use german.data." if len(fields) == 25 else ""
            raise DataError(f"{path}, line {line_no}: {len(fields)} space-separated {FIELD_COUNT} {width} (20 "
                            f"attributes and the class, as in german.doc).{hint}")
        for j, (name, value) in enumerate(zip(GERMAN_COLUMNS, fields), start=1):
            if name in GERMAN_NUMERIC:
                _number(value, path, line_no, name)
            elif not (value.startswith(f"A{j}") and value[len(f'A{j}'):].isdigit()):
                raise DataError(f"{path}, line {line_no}: attribute {j} ({name}) is {value!r}, expected a code "
                                f"A{j}<digit> of german.doc. Is this german.data?")
        if fields[8] not in GERMAN_SEX:
            raise DataError(f"{path}, line {line_no}: attribute 9 (personal_status_sex) is {fields[8]!r}, "
                            f"{BAD_VALUE} {', '.join(GERMAN_SEX)}.")
        if fields[-1] not in ("1", "2"):
            raise DataError(f"{path}, line {line_no}: the class is {fields[-1]!r}, {BAD_VALUE} 1 (good), 2 (bad).")
        records.append(fields[:-1])
        labels.append(fields[-1] == "2")
    if not records:
        raise DataError(f"{path}: no data rows; expected the space-separated german.data of UCI Statlog.")

    raw = np.array(records, dtype=str)
    table: dict[str, np.ndarray] = {}
    for j, name in enumerate(GERMAN_COLUMNS):
        table[name] = raw[:, j].astype(np.float64) if name in GERMAN_NUMERIC else raw[:, j]
    labels = np.array(labels, dtype=np.int64)
    table["sex"] = np.array([GERMAN_SEX[code] for code in raw[:, 8]], dtype=str)
    table["age_group"] = np.where(table["age"] <= GERMAN_YOUNG_MAX_AGE, *GERMAN_AGE_GROUPS)

    is_test = _fixed_split(np.stack([labels.astype(str), table["sex"], table["age_group"]], axis=1), "german_split")
    # The groups come from columns that already are features (numeric age; the personal-status code),
    # so neither age_group nor sex is added as one. "non-young" is a value of its own, which
    # _minority_rule takes as such rather than as the negation of "young" (the same rows either way).
    groups, allowed = ((table["age_group"], GERMAN_AGE_GROUPS) if protected == "age"
                       else (table["sex"], ("Female", "Male")))
    minority = _minority_rule(groups, allowed, protected=protected, minority_value=minority_value,
                              title=GERMAN.title)
    info: dict[str, Any] = {"source": "german", "file": str(path), "md5": digest,
                            "uci_original": digest == GERMAN_MD5, "rows_read": len(records),
                            "label": "1 = bad credit (class 2 of german.data)",
                            "young_max_age": GERMAN_YOUNG_MAX_AGE}
    return _assemble(table, labels, minority, is_test, np.ones(len(labels), dtype=bool), groups=groups,
                     row_ids=np.arange(len(labels)), numeric=GERMAN_NUMERIC, categorical=GERMAN_CATEGORICAL, info=info, protected=protected,
                     minority_value=minority_value, title=GERMAN.title, path=path,
                     schema=GERMAN_PUBLIC, preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------------
# LSAC bar passage (Wightman 1998); the user's copy only
# ---------------------------------------------------------------------------------------------------

LSAC = SourceFacts("lsac", "the LSAC bar passage data (bar_pass_prediction.csv)", "pass_bar", ("race", "non-White"))
LSAC_FILE = "bar_pass_prediction.csv"
LSAC_SAS_FILE = "lsac.sas7bdat"
# pandas is not a requirement of this project, so the SAS original is converted once by the user.
LSAC_SAS_CONVERT = ("python -c \"import pandas as pd; pd.read_sas('lsac.sas7bdat', encoding='latin-1')"
                    ".to_csv('bar_pass_prediction.csv', index=False)\"")
LSAC_NUMERIC = ("lsat", "ugpa", "zfygpa", "zgpa", "fam_inc")
LSAC_CATEGORICAL_CODES = ("fulltime", "tier")
LSAC_PROTECTED = ("race", "sex")
# Versions of the CSV name the same things differently: the first column of each list that the
# header holds is read. bar_pass_prediction.csv (the Google Cloud copy behind TensorFlow's fairness
# case study) has pass_bar, race1 and gender; the cleaned law_school_clean.csv of Le Quy et al.'s
# survey has pass_bar, racetxt and male. Numeric race and sex codes (race, sex) are not read: their
# coding is not documented in the CSV.
LSAC_LABEL_COLUMNS = ("pass_bar", "bar_passed")
LSAC_RACE_COLUMNS = ("race1", "racetxt")
LSAC_SEX_COLUMNS = ("gender", "male")
LSAC_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0}
LSAC_RACES = {"white": "White", "black": "Black", "hisp": "Hispanic", "asian": "Asian", "other": "Other",
              "non-white": "non-White"}
LSAC_SEXES = {"gender": {"female": "Female", "male": "Male"}, "male": {"1": "Male", "0": "Female"}}
# Missing-value spellings: empty (pandas' to_csv), NA (R), NaN/nan (other writers).
LSAC_MISSING = ("", "na", "nan", "null")
# Public preprocessing (dataset.preprocessing), also in docs/data.md (the data is not
# shipped). The LSAT score scale of the study's entering class of 1991 was 10 to 48; GPAs are on
# the 4-point scale; zfygpa and zgpa are z-scores within the law school, clipped at 4 standard
# deviations (an assumption); fam_inc is a quintile code, 1 to 5. Categories: the study's six law
# school tiers, full-time (1) or part-time (2), and the sexes and races this loader maps to.
_LSAC_STUDY = "the LSAC National Longitudinal Bar Passage Study (Wightman 1998)"
LSAC_PUBLIC = PublicSchema(
    ranges={"lsat": PublicRange(10, 48, source=f"{_LSAC_STUDY}: the LSAT's 10 to 48 score scale "
                                               "of the 1991 entering class"),
            "ugpa": PublicRange(0, 4, source="the 4-point grade point average scale"),
            "zfygpa": PublicRange(-4, 4, source="assumed: a z-score within the school, clipped at "
                                                "4 standard deviations"),
            "zgpa": PublicRange(-4, 4, source="assumed: a z-score within the school, clipped at "
                                              "4 standard deviations"),
            "fam_inc": PublicRange(1, 5, source=f"{_LSAC_STUDY}: family income quintile, 1 to 5")},
    categories={"fulltime": PublicCategories(("1", "2"), f"{_LSAC_STUDY}: 1 full-time, 2 part-time"),
                "tier": PublicCategories(tuple(map(str, range(1, 7))),
                                         f"{_LSAC_STUDY}: six law school tiers"),
                "sex": PublicCategories(("Female", "Male"), "this loader's LSAC_SEXES"),
                "race": PublicCategories(("White", "Black", "Hispanic", "Asian", "Other"),
                                         "this loader's LSAC_RACES (race1's white, black, hisp, asian, "
                                         "other)")})


@TABULAR_SOURCES.register("lsac")
def load_lsac(root: str | Path | None, *, protected: str, minority_value: str,
              preprocessing: str = FITTED) -> TabularPool:
    """Bar passage of the LSAC National Longitudinal Bar Passage Study (Wightman 1998), the user's copy.

    Reads ``bar_pass_prediction.csv`` (plain or .gz) from ``data.root``, mapping known column names
    of its versions (``LSAC_LABEL_COLUMNS``, ``LSAC_RACE_COLUMNS``, ``LSAC_SEX_COLUMNS``). The label
    is 1 for passing the bar (``pass_bar``). Features: ``lsat``, ``ugpa`` (undergraduate GPA),
    ``zfygpa`` and ``zgpa`` (standardized first-year and overall law school GPA), ``fam_inc``
    (family income quintile, as a number) and, one-hot, ``fulltime``, ``tier`` (the school's tier),
    ``sex`` and ``race``. Not used: the other bar columns (``bar``, ``bar1``, ``bar2``... restate the
    label), ``dnn_bar_pass_prediction`` (another model's output), ``Dropout`` and ``grad``
    (graduation, which passing requires), deciles and index columns derived from the used ones, IDs.
    Rows with a missing value in a used column are dropped (counted in ``info``).

    Groups: ``protected: race`` with values White, Black, Hispanic, Asian, Other (``race1``'s white,
    black, hisp, asian, other) or ``non-White``; ``protected: sex``, Female or Male. Every row is kept.

    Raises:
        DataError: no data.root, a missing or malformed file (naming the file and line), a header
            without the needed columns (listing what was expected and what was found).
        ConfigError: an unknown protected column or minority value (listing the allowed ones).
    """
    _check_protected(protected, LSAC_PROTECTED, LSAC.title)
    where = (f"Place {LSAC_FILE} there: the widely distributed CSV of Wightman's 1998 LSAC National Longitudinal Bar "
             "Passage Study, with columns pass_bar, lsat, ugpa, zfygpa, zgpa, fam_inc, fulltime, tier, race1, gender "
             f"(and others). If you have the original {LSAC_SAS_FILE} instead, convert it once (pandas is not a "
             f"requirement of this project): {LSAC_SAS_CONVERT}")
    if root is not None and Path(root).expanduser().is_dir():
        directory = Path(root).expanduser()
        if not any((directory / n).is_file() for n in (LSAC_FILE, f"{LSAC_FILE}.gz")) and \
                (directory / LSAC_SAS_FILE).is_file():
            raise DataError(f"{directory / LSAC_FILE}: {FILE_NOT_FOUND}, but {directory / LSAC_SAS_FILE} is there. "
                            f"This reader takes the CSV only (pandas is not a requirement of this project); convert "
                            f"it once in {directory}: {LSAC_SAS_CONVERT}")
    path, _ = _locate(root, LSAC_FILE, shipped_dir=None, title=LSAC.title, where=where)
    text, digest = _read_text(path, shipped=False, md5=None, title=LSAC.title)
    header, rows = _csv_rows(text, path, LSAC.title)

    def pick(names: Sequence[str], what: str) -> str:
        for name in names:
            if name in header:
                return name
        _columns(header, [" or ".join(names)], path, LSAC.title, hint=f" ({what}.)")
        raise AssertionError  # _columns raised

    label_column = pick(LSAC_LABEL_COLUMNS, "the bar passage label")
    race_column = pick(LSAC_RACE_COLUMNS, "race as text: white, black, hisp, asian, other")
    sex_column = pick(LSAC_SEX_COLUMNS, "sex: gender female/male, or male 1/0")
    column = _columns(header, (label_column, race_column, sex_column, *LSAC_NUMERIC, *LSAC_CATEGORICAL_CODES),
                      path, LSAC.title)

    used = (label_column, race_column, sex_column, *LSAC_NUMERIC, *LSAC_CATEGORICAL_CODES)
    complete, row_ids = [], []
    dropped: dict[str, int] = {}  # by the first used column, in ``used`` order, that misses a value
    for row_id, (line, fields) in enumerate(rows):
        gap = next((name for name in used if fields[column[name]].strip().lower() in LSAC_MISSING), None)
        if gap is not None:
            dropped[gap] = dropped.get(gap, 0) + 1
            continue
        complete.append((line, fields))
        row_ids.append(row_id)
    if not complete:
        raise DataError(f"{path}: every row misses a value in one of {', '.join(used)}; nothing is left to train on.")

    n = len(complete)
    table: dict[str, np.ndarray] = {}
    for name in LSAC_NUMERIC:
        table[name] = np.array([_number(fields[column[name]], path, line, name) for line, fields in complete])
    for name in LSAC_CATEGORICAL_CODES:
        table[name] = np.array([_code(fields[column[name]]) for _, fields in complete], dtype=str)
    labels = np.empty(n, dtype=np.int64)
    race = np.empty(n, dtype=object)
    sex = np.empty(n, dtype=object)
    for i, (line, fields) in enumerate(complete):
        value = _code(fields[column[label_column]]).lower()
        if value not in LSAC_LABELS:
            raise DataError(f"{path}, line {line}: column {label_column} is {fields[column[label_column]]!r}, "
                            f"{BAD_VALUE} 0, 1 (or True, False).")
        labels[i] = LSAC_LABELS[value]
        value = fields[column[race_column]].strip()
        race[i] = LSAC_RACES.get(value.lower(), value)
        value = _code(fields[column[sex_column]]).lower()
        if value not in LSAC_SEXES[sex_column]:
            raise DataError(f"{path}, line {line}: column {sex_column} is {fields[column[sex_column]]!r}, "
                            f"{BAD_VALUE} {', '.join(LSAC_SEXES[sex_column])}.")
        sex[i] = LSAC_SEXES[sex_column][value]
    table["race"], table["sex"] = race.astype(str), sex.astype(str)

    is_test = _fixed_split(np.stack([labels.astype(str), table["sex"], table["race"]], axis=1), "lsac_split")
    values = table[protected]
    minority = _minority_rule(values, sorted(set(values[~is_test].tolist())), protected=protected,
                              minority_value=minority_value, title=LSAC.title)
    info: dict[str, Any] = {"source": "lsac", "file": str(path), "md5": digest, "rows_read": len(rows),
                            "rows_dropped_missing": len(rows) - n,
                            **{f"rows_dropped_missing/{name}": count for name, count in sorted(dropped.items())},
                            "columns": {"label": label_column, "race": race_column, "sex": sex_column}}
    return _assemble(table, labels, minority, is_test, np.ones(n, dtype=bool), groups=values,
                     row_ids=np.array(row_ids), numeric=LSAC_NUMERIC,
                     categorical=(*LSAC_CATEGORICAL_CODES, "sex", "race"), info=info, protected=protected,
                     minority_value=minority_value, title=LSAC.title, path=path,
                     schema=LSAC_PUBLIC, preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------------
# Registration in the project's data-set registry
# ---------------------------------------------------------------------------------------------------

SOURCES = {facts.name: facts for facts in (COMPAS, GERMAN, LSAC)}


def check_target(facts: SourceFacts, target: str) -> None:
    """``data.target`` must be the source's label; DataConfig's default (Adult's income) gets a hint."""
    if target == facts.target:
        return
    protected, value = facts.example
    hint = ""
    if target == "income":
        hint = (f" 'income' {ADULT_DEFAULT_TARGET} (UCI Adult's label), so a {facts.name} config must set it: "
                f"data: {{name: {facts.name}, target: {facts.target}, protected: {protected}, "
                f"minority_value: {value}}}.")
    raise ConfigError(f"data.target: got {target!r}; data set {facts.name!r} {UNKNOWN_TARGET} {facts.target!r} "
                      f"only.{hint}")


def _register(facts: SourceFacts) -> None:
    # dataset/tabular.py files the sources registered when it is imported; these come later.
    if facts.name in DATASETS:
        return

    @DATASETS.register(facts.name)
    def build(config) -> DataBundle:
        data = config.data
        check_target(facts, data.target)
        pool = TABULAR_SOURCES.get(facts.name)(data.root, protected=data.protected,
                                               minority_value=data.minority_value,
                                               preprocessing=resolved_mode(config))
        return build_tabular_bundle(pool, minority_share=data.minority_share, train_size=data.train_size,
                                    seed=config.seed, val_fraction=data.val_fraction)

    build.data_keys = TABULAR_DATA_KEYS


for _facts in SOURCES.values():
    _register(_facts)
