"""UCI Statlog German Credit (Hofmann 1994): its declared table and its file reader.

1,000 loan applicants, 300 of them bad credit risks. ``german.data`` has 20 space-separated
attributes and the class (1 good, 2 bad). The label is 1 for *bad* credit (class 2): the positive
label is the event the model predicts, as for COMPAS, so ``test/tpr`` is the share of bad risks
caught. (Many papers instead call good credit the favourable outcome; ``test/fpr`` here is then one
minus their TPR.) All 20 attributes are features: the 7 numerical ones of german.doc raw
(standardized by the bundle builder), the 13 coded ones one-hot over their codes
(``purpose=A43``...; the codes are listed in german.doc and in ``dataset/data/german/README.md``).

Groups: ``protected: age``, ``minority_value: young`` (age <= 25, 190 applicants) or
``non-young``; or ``protected: sex`` from the personal-status code (A92, A95 Female; A91, A93,
A94 Male; 310 women), ``minority_value: Female`` or ``Male``. The groups come from columns that
already are features (numeric age; the personal-status code), so neither ``age_group`` nor
``sex`` is added as one; the personal-status code, which also says marital status, stays a feature
(as the protected column always does). "non-young" is a value of its own, which the minority rule
takes as such rather than as the negation of "young" (the same rows either way). The test set is
the fixed 20 % split (:mod:`dataset.tabular`): 200 applicants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dataset.preprocessing import PublicCategories, PublicRange, PublicSchema
from dataset.tabular import FixedSplit, Protected, SourceRows, TabularSource, register_source
from dataset.tabular_files import BAD_VALUE, DATA_DIR, FIELD_COUNT, locate, number, read_text
from utils.errors import DataError

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
GERMAN_LABEL = "1 = bad credit (class 2 of german.data)"
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




def read_german(source: TabularSource, root: str | Path | None) -> SourceRows:
    """The read hook of :data:`GERMAN`: every row of german.data, checked against german.doc's
    format, with the derived group columns ``sex`` (from the personal-status code) and ``age_group``."""
    where = (f"UCI publishes it at {GERMAN_URL}; put {GERMAN_FILE} there, or set data.root: null to use the "
             "copy shipped with this repository.")
    path, shipped = locate(root, GERMAN_FILE, shipped_dir=source.shipped_dir, title=source.title, where=where)
    text, digest = read_text(path, shipped=shipped, md5=source.files[GERMAN_FILE], title=source.title)

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
                number(value, path, line_no, name)
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
    table["sex"] = np.array([GERMAN_SEX[code] for code in raw[:, 8]], dtype=str)
    table["age_group"] = np.where(table["age"] <= GERMAN_YOUNG_MAX_AGE, *GERMAN_AGE_GROUPS)
    info: dict[str, Any] = {"source": "german", "file": str(path), "md5": digest,
                            "uci_original": digest == source.files[GERMAN_FILE], "rows_read": len(records)}
    return SourceRows(table=table, labels=np.array(labels, dtype=np.int64), path=path, info=info,
                      row_ids=np.arange(len(records)))


GERMAN = register_source(TabularSource(
    name="german",
    title="UCI Statlog German Credit (german.data)",
    target="bad_credit",
    label=GERMAN_LABEL,
    files={GERMAN_FILE: GERMAN_MD5},
    shipped_dir=SHIPPED_GERMAN_DIR,
    url=GERMAN_URL,
    numeric=GERMAN_NUMERIC,
    categorical=GERMAN_CATEGORICAL,
    public=GERMAN_PUBLIC,
    protected={"age": Protected(column="age_group", values=GERMAN_AGE_GROUPS),
               "sex": Protected(values=("Female", "Male"))},
    missing="none: german.doc lists no missing values, and a malformed field is an error naming the line",
    split=FixedSplit(strata=("label", "sex", "age_group"), stream="german_split"),
    read=read_german,
    example=("age", "young"),
    notes={"label": GERMAN_LABEL, "young_max_age": GERMAN_YOUNG_MAX_AGE},
))
