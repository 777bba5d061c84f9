"""A small fake of the LSAC bar passage CSV, in the formats of its two common versions, for tests.

LSAC's data cannot be shipped, so tests read this instead. ``bar_pass_prediction`` writes the 39
columns of the widely distributed ``bar_pass_prediction.csv`` in its order and spelling (floats
written as ``44.0``, race1 ``white``/``black``/``hisp``/``asian``/``other``, gender
``female``/``male``, pass_bar 0/1, empty fields for missing values, as pandas writes them);
``law_school_clean`` writes the 12 columns of the cleaned file of Le Quy et al.'s survey (racetxt
``White``/``Non-White``, male 1/0). Passing the bar depends on LSAT and GPA, so a model can learn
something. A share of rows gets an empty field in a column the reader uses, another share in
columns it ignores (which must not drop a row).
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

BAR_PASS_HEADER = (
    "decile1b", "decile3", "ID", "decile1", "sex", "race", "cluster", "lsat", "ugpa", "zfygpa", "DOB_yr",
    "grad", "zgpa", "bar1", "bar1_yr", "bar2", "bar2_yr", "fulltime", "fam_inc", "age", "gender",
    "parttime", "male", "race1", "race2", "Dropout", "other", "asian", "black", "hisp", "pass_bar", "bar",
    "bar_passed", "tier", "index6040", "indxgrp", "indxgrp2", "dnn_bar_pass_prediction", "gpa",
)  # fmt: skip
CLEAN_HEADER = ("decile1b", "decile3", "lsat", "ugpa", "zfygpa", "zgpa", "fulltime", "fam_inc", "male", "tier",
                "racetxt", "pass_bar")
# Columns the reader uses (bar_pass_prediction spelling); a missing value in one of them drops the row.
USED = ("pass_bar", "race1", "gender", "lsat", "ugpa", "zfygpa", "zgpa", "fam_inc", "fulltime", "tier")
RACES = ("white", "black", "hisp", "asian", "other")
RACE_P = (0.6, 0.15, 0.1, 0.1, 0.05)


def make_fake_lsac(root: Path, n_rows: int = 500, seed: int = 0, variant: str = "bar_pass_prediction",
                   compress: bool = False, missing_rate: float = 0.04) -> dict:
    """Write ``bar_pass_prediction.csv`` (or ``.csv.gz``) of ``n_rows`` rows under ``root``.

    Returns ``{"path": the file, "header": its columns, "rows": the written rows as lists of
    strings}``; tests count from these (or from the file) rather than trusting the reader.
    """
    if variant not in ("bar_pass_prediction", "law_school_clean"):
        raise ValueError(f"unknown variant {variant!r}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    race = rng.choice(RACES, size=n_rows, p=RACE_P)
    female = rng.random(n_rows) < 0.45
    lsat = np.clip(rng.normal(36.5, 5.5, n_rows) - 3.0 * (race != "white"), 11, 48).round()
    ugpa = np.clip(rng.normal(3.2, 0.4, n_rows), 1.5, 4.0).round(1)
    zfygpa = rng.normal(0.0, 1.0, n_rows).round(2)
    zgpa = (0.7 * zfygpa + rng.normal(0.0, 0.6, n_rows)).round(2)
    fam_inc = rng.integers(1, 6, n_rows)
    fulltime = rng.choice((1, 2), size=n_rows, p=(0.9, 0.1))
    tier = rng.integers(1, 7, n_rows)
    logit = 2.2 + 0.25 * (lsat - 36.5) + 1.0 * zfygpa
    passed = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(int)
    missing_used = rng.random(n_rows) < missing_rate
    missing_other = rng.random(n_rows) < 0.2

    rows = []
    for i in range(n_rows):
        values = {
            "decile1b": f"{rng.integers(1, 11)}.0", "decile3": f"{rng.integers(1, 11)}.0", "ID": str(i + 2),
            "decile1": f"{rng.integers(1, 11)}.0", "sex": "1.0" if female[i] else "2.0",
            "race": f"{RACES.index(race[i]) + 3}.0", "cluster": f"{rng.integers(1, 7)}.0",
            "lsat": f"{lsat[i]:.1f}", "ugpa": f"{ugpa[i]:.1f}", "zfygpa": f"{zfygpa[i]:.2f}",
            "DOB_yr": f"{rng.integers(50, 70)}.0", "grad": "Y", "zgpa": f"{zgpa[i]:.2f}",
            "bar1": "P" if passed[i] else "F", "bar1_yr": "7.0", "bar2": "P" if passed[i] else "F",
            "bar2_yr": "7.0", "fulltime": f"{fulltime[i]}.0", "fam_inc": f"{fam_inc[i]}.0",
            "age": f"{rng.integers(-65, -50)}.0", "gender": "female" if female[i] else "male",
            "parttime": "1.0" if fulltime[i] == 2 else "0.0", "male": "0.0" if female[i] else "1.0",
            "race1": race[i], "race2": "white" if race[i] == "white" else "non-white", "Dropout": "NO",
            "other": str(int(race[i] == "other")), "asian": str(int(race[i] == "asian")),
            "black": str(int(race[i] == "black")), "hisp": str(int(race[i] == "hisp")),
            "pass_bar": str(passed[i]), "bar": "a Passed 1st time" if passed[i] else "c Failed",
            "bar_passed": "True" if passed[i] else "False", "tier": f"{tier[i]}.0",
            "index6040": f"{rng.normal(700, 100):.4f}", "indxgrp": "f 640-700", "indxgrp2": "f 640-700",
            "dnn_bar_pass_prediction": f"{rng.random():.6f}", "gpa": f"{ugpa[i]:.1f}",
        }
        if missing_used[i]:
            values[USED[rng.integers(0, len(USED))]] = ""
        if missing_other[i]:
            values["decile1"] = values["DOB_yr"] = ""
        if variant == "law_school_clean":
            values["racetxt"] = "" if values["race1"] == "" else ("White" if race[i] == "white" else "Non-White")
            values["male"] = "" if values["gender"] == "" else ("0" if female[i] else "1")
            values["fulltime"] = values["fulltime"][:1]
            rows.append([values[name] for name in CLEAN_HEADER])
        else:
            rows.append([values[name] for name in BAR_PASS_HEADER])

    header = CLEAN_HEADER if variant == "law_school_clean" else BAR_PASS_HEADER
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    path = root / ("bar_pass_prediction.csv.gz" if compress else "bar_pass_prediction.csv")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return {"path": path, "header": list(header), "rows": rows}
