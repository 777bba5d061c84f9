"""ProPublica's COMPAS two-year recidivism data (Broward County 2013-2014): its declared table and hooks.

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
dropped, leaving 5,278; :func:`restrict_to_race_pair`); ``non-Caucasian`` (or any ``non-X``) keeps
every race. ``protected: sex`` (Female, Male) keeps every row. The test set is the fixed 20 % split
(:mod:`dataset.tabular`).

``data.root``: None for the copy shipped in ``dataset/data/compas`` (md5-checked), or a directory
with ``compas-scores-two-years.csv`` (plain or .gz), checked for format only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset.preprocessing import PublicCategories, PublicRange, PublicSchema
from dataset.tabular import FixedSplit, Protected, SourceRows, TabularSource, register_source
from dataset.tabular_files import BAD_VALUE, DATA_DIR, code, columns, csv_rows, locate, number, read_text
from utils.errors import DataError

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




def read_compas(source: TabularSource, root: str | Path | None) -> SourceRows:
    """The read hook of :data:`COMPAS`: the rows that pass ProPublica's filters, in file order."""
    where = (f"ProPublica publishes it at {COMPAS_URL}; put {COMPAS_FILE} there, or set data.root: null to use "
             "the copy shipped with this repository.")
    path, shipped = locate(root, COMPAS_FILE, shipped_dir=source.shipped_dir, title=source.title, where=where)
    text, digest = read_text(path, shipped=shipped, md5=source.files[COMPAS_FILE], title=source.title)
    header, rows = csv_rows(text, path, source.title)
    wanted = (source.target, *COMPAS_NUMERIC, *COMPAS_CATEGORICAL,
              *(c for c in COMPAS_FILTER_COLUMNS if c not in COMPAS_CATEGORICAL))
    column = columns(header, wanted, path, source.title)

    n = len(rows)
    table: dict[str, np.ndarray] = {}
    for name in COMPAS_CATEGORICAL + ("score_text",):
        table[name] = np.array([fields[column[name]].strip() for _, fields in rows], dtype=str)
    for name in COMPAS_NUMERIC + ("is_recid",):
        table[name] = np.array([number(fields[column[name]], path, line, name) for line, fields in rows])
    labels = np.empty(n, dtype=np.int64)
    screening = np.full(n, np.nan)
    for i, (line, fields) in enumerate(rows):
        label = code(fields[column[source.target]])
        if label not in ("0", "1"):
            raise DataError(f"{path}, line {line}: column {source.target} is {fields[column[source.target]]!r}, "
                            f"{BAD_VALUE} 0, 1.")
        labels[i] = int(label)
        days = fields[column["days_b_screening_arrest"]].strip()
        if days:  # empty: no screening date on record, which the filter below drops
            screening[i] = number(days, path, line, "days_b_screening_arrest")

    info: dict[str, Any] = {"source": "compas", "file": str(path), "md5": digest,
                            "propublica_original": digest == source.files[COMPAS_FILE], "rows_read": n}
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
    # The split comes next, on every filtered row, so that the test rows are the same for sex and race runs.
    return SourceRows(table={name: values[filtered] for name, values in table.items()}, labels=labels[filtered],
                      path=path, info=info, row_ids=filtered)


def restrict_to_race_pair(values: np.ndarray, allowed: Sequence[str], *, protected: str, minority_value: Any,
                          info: dict[str, Any]) -> tuple[Sequence[str], np.ndarray]:
    """The restrict hook of :data:`COMPAS`: a race run whose minority value is one of
    :data:`COMPAS_RACE_PAIR` compares those two races and keeps only their rows."""
    pair = protected == "race" and str(minority_value) in COMPAS_RACE_PAIR
    rows_kept = np.isin(values, COMPAS_RACE_PAIR) if pair else np.ones(len(values), dtype=bool)
    info["rows_dropped/other_race"] = int(np.count_nonzero(~rows_kept))
    return (COMPAS_RACE_PAIR if pair else allowed), rows_kept


COMPAS = register_source(TabularSource(
    name="compas",
    title="ProPublica's COMPAS data (compas-scores-two-years.csv)",
    target="two_year_recid",
    label="1 = charged with a new offence within two years",
    files={COMPAS_FILE: COMPAS_MD5},
    shipped_dir=SHIPPED_COMPAS_DIR,
    url=COMPAS_URL,
    numeric=COMPAS_NUMERIC,
    categorical=COMPAS_CATEGORICAL,
    public=COMPAS_PUBLIC,
    protected={name: Protected() for name in COMPAS_PROTECTED},
    missing=("an empty days_b_screening_arrest fails ProPublica's screening filter, which drops the row; "
             "an empty numeric feature is an error naming the line"),
    split=FixedSplit(strata=("label", "sex", "race"), stream="compas_split"),
    read=read_compas,
    example=("race", "African-American"),
    restrict=restrict_to_race_pair,
    notes={"not_features": "COMPAS's own scores (decile_score, score_text, v_decile_score, v_score_text); "
                           "outcome, identity and date columns"},
))
