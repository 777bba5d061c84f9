"""The LSAC National Longitudinal Bar Passage Study (Wightman 1998): its declared table and reader.

Not shipped: the user's copy only. Reads ``bar_pass_prediction.csv`` (plain or .gz) from
``data.root``, mapping known column names of its versions (``LSAC_LABEL_COLUMNS``,
``LSAC_RACE_COLUMNS``, ``LSAC_SEX_COLUMNS``). The label is 1 for passing the bar (``pass_bar``).
Features: ``lsat``, ``ugpa`` (undergraduate GPA), ``zfygpa`` and ``zgpa`` (standardized first-year
and overall law school GPA), ``fam_inc`` (family income quintile, as a number) and, one-hot,
``fulltime``, ``tier`` (the school's tier), ``sex`` and ``race``. Not used: the other bar columns
(``bar``, ``bar1``, ``bar2``... restate the label), ``dnn_bar_pass_prediction`` (another model's
output), ``Dropout`` and ``grad`` (graduation, which passing requires), deciles and index columns
derived from the used ones, IDs. Rows with a missing value in a used column are dropped (counted
in ``info``).

Groups: ``protected: race`` with values White, Black, Hispanic, Asian, Other (``race1``'s white,
black, hisp, asian, other) or ``non-White``; ``protected: sex``, Female or Male. Every row is kept.
The test set is the fixed 20 % split (:mod:`dataset.tabular`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset.preprocessing import PublicCategories, PublicRange, PublicSchema
from dataset.tabular import FixedSplit, Protected, SourceRows, TabularSource, register_source
from dataset.tabular_files import (
    BAD_VALUE,
    FILE_NOT_FOUND,
    code,
    columns,
    csv_rows,
    locate,
    number,
    read_text,
)
from utils.errors import DataError

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


def read_lsac(source: TabularSource, root: str | Path | None) -> SourceRows:
    """The read hook of :data:`LSAC`: the rows with a value in every used column, in file order.

    Raises:
        DataError: no data.root, a missing or malformed file (naming the file and line), a header
            without the needed columns (listing what was expected and what was found).
    """
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
    path, _ = locate(root, LSAC_FILE, shipped_dir=source.shipped_dir, title=source.title, where=where)
    text, digest = read_text(path, shipped=False, md5=None, title=source.title)
    header, rows = csv_rows(text, path, source.title)

    def pick(names: Sequence[str], what: str) -> str:
        for name in names:
            if name in header:
                return name
        columns(header, [" or ".join(names)], path, source.title, hint=f" ({what}.)")
        raise AssertionError  # _columns raised

    label_column = pick(LSAC_LABEL_COLUMNS, "the bar passage label")
    race_column = pick(LSAC_RACE_COLUMNS, "race as text: white, black, hisp, asian, other")
    sex_column = pick(LSAC_SEX_COLUMNS, "sex: gender female/male, or male 1/0")
    column = columns(header, (label_column, race_column, sex_column, *LSAC_NUMERIC, *LSAC_CATEGORICAL_CODES),
                      path, source.title)

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
        table[name] = np.array([number(fields[column[name]], path, line, name) for line, fields in complete])
    for name in LSAC_CATEGORICAL_CODES:
        table[name] = np.array([code(fields[column[name]]) for _, fields in complete], dtype=str)
    labels = np.empty(n, dtype=np.int64)
    race = np.empty(n, dtype=object)
    sex = np.empty(n, dtype=object)
    for i, (line, fields) in enumerate(complete):
        value = code(fields[column[label_column]]).lower()
        if value not in LSAC_LABELS:
            raise DataError(f"{path}, line {line}: column {label_column} is {fields[column[label_column]]!r}, "
                            f"{BAD_VALUE} 0, 1 (or True, False).")
        labels[i] = LSAC_LABELS[value]
        value = fields[column[race_column]].strip()
        race[i] = LSAC_RACES.get(value.lower(), value)
        value = code(fields[column[sex_column]]).lower()
        if value not in LSAC_SEXES[sex_column]:
            raise DataError(f"{path}, line {line}: column {sex_column} is {fields[column[sex_column]]!r}, "
                            f"{BAD_VALUE} {', '.join(LSAC_SEXES[sex_column])}.")
        sex[i] = LSAC_SEXES[sex_column][value]
    table["race"], table["sex"] = race.astype(str), sex.astype(str)

    info: dict[str, Any] = {"source": "lsac", "file": str(path), "md5": digest, "rows_read": len(rows),
                            "rows_dropped_missing": len(rows) - n,
                            **{f"rows_dropped_missing/{name}": count for name, count in sorted(dropped.items())},
                            "columns": {"label": label_column, "race": race_column, "sex": sex_column}}
    return SourceRows(table=table, labels=labels, path=path, info=info, row_ids=np.array(row_ids))


LSAC = register_source(TabularSource(
    name="lsac",
    title="the LSAC bar passage data (bar_pass_prediction.csv)",
    target="pass_bar",
    label="1 = passed the bar",
    files={LSAC_FILE: None},
    shipped_dir=None,
    url=None,  # LSAC does not publish it; the widely distributed CSV is a copy
    numeric=LSAC_NUMERIC,
    categorical=(*LSAC_CATEGORICAL_CODES, "sex", "race"),
    public=LSAC_PUBLIC,
    protected={name: Protected() for name in LSAC_PROTECTED},
    missing=("a row with an empty, NA, NaN or null value (any case) in a used column is dropped, counted by "
             "the first such column"),
    split=FixedSplit(strata=("label", "sex", "race"), stream="lsac_split"),
    read=read_lsac,
    example=("race", "non-White"),
))
