"""Under privacy the feature transform reads no private row (dataset/preprocessing.py).

The audit that asked for this found the numeric columns standardized with the training rows' mean
and standard deviation (capital-gain reaches 99,999: no bounded sensitivity), RUNNER's bins at the
training pool's deciles and the one-hot vocabulary fitted on the pool, so that changing the raw
age of an example no step sampled changed the final model, and one row of adult.data
(native-country Holand-Netherlands) created an input column on its own. These tests change one
row's raw values in a copy of each tabular data set (an extreme capital-gain among them) and check
that, under privacy, preprocessing.json and every other row's inputs stay exactly as they were,
while the fitted pipeline, as a control, changes every row; and that a category seen only in rows
outside the training set creates no column.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dataset import build_dataset
from dataset.adult import ADULT_CATEGORIES, ADULT_COLUMNS, SHIPPED_ADULT_DIR
from dataset.compas import SHIPPED_COMPAS_DIR
from dataset.german import SHIPPED_GERMAN_DIR
from dataset.preprocessing import FITTED_UNDER_PRIVACY, PublicRange
from tests.conftest import main_on_yaml
from tests.lsac_fake import make_fake_lsac
from training.validation import validated_config
from utils.sink import PREPROCESSING_FILE


def config(name: str, root: Path, *, mode: str = "dpsgd", preprocessing: str = "auto", **data):
    privacy = {"mode": mode, "noise_multiplier": 1.0} if mode != "none" else {"mode": "none"}
    if data.get("adult", {}).get("protocol") == "runner":
        data["validation_public"] = True
    return validated_config({
        "data": {"name": name, "root": str(root), "minority_share": None,
                 "preprocessing": preprocessing, **data},
        "privacy": privacy,
    })


def read_gz(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def adult_copy(directory: Path, edit=None) -> Path:
    """adult.data and adult.test in ``directory``; ``edit(fields)`` changes adult.data's first
    complete row (its 15 stripped fields) in place, or returns None to drop the row."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = read_gz(SHIPPED_ADULT_DIR / "adult.data.gz").splitlines()
    if edit is not None:
        for i, line in enumerate(lines):
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 15 and "?" not in fields and edit(fields) is not False:
                lines[i] = ", ".join(fields)
                break
    (directory / "adult.data").write_text("\n".join(lines) + "\n")
    (directory / "adult.test").write_text(read_gz(SHIPPED_ADULT_DIR / "adult.test.gz"))
    return directory


def edit_adult(fields):
    fields[ADULT_COLUMNS.index("capital-gain")] = "5000000"  # beyond any bound: clipped
    fields[ADULT_COLUMNS.index("age")] = "23" if fields[0] != "23" else "61"


def compas_copy(directory: Path, edit: bool) -> Path:
    """The COMPAS file with priors_count of the first row that passes ProPublica's filters set to
    an extreme 500."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = list(csv.reader(io.StringIO(read_gz(SHIPPED_COMPAS_DIR / "compas-scores-two-years.csv.gz"))))
    header = rows[0]
    at = {name: header.index(name) for name in ("days_b_screening_arrest", "is_recid",
                                                  "c_charge_degree", "score_text", "priors_count")}
    if edit:
        for row in rows[1:]:
            days = row[at["days_b_screening_arrest"]]
            if (days and abs(float(days)) <= 30 and row[at["is_recid"]] != "-1"
                    and row[at["c_charge_degree"]] != "O" and row[at["score_text"]] != "N/A"):
                row[at["priors_count"]] = "500"
                break
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (directory / "compas-scores-two-years.csv").write_text(out.getvalue())
    return directory


def german_copy(directory: Path, edit: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = read_gz(SHIPPED_GERMAN_DIR / "german.data.gz").splitlines()
    if edit:
        fields = lines[0].split()
        fields[4] = "900000"  # credit_amount, beyond the bound
        lines[0] = " ".join(fields)
    (directory / "german.data").write_text("\n".join(lines) + "\n")
    return directory


def lsac_copy(directory: Path, edit: bool) -> Path:
    make_fake_lsac(directory)
    if edit:
        path = directory / "bar_pass_prediction.csv"
        rows = list(csv.reader(io.StringIO(path.read_text())))
        rows[1][rows[0].index("lsat")] = "99"  # beyond the 10-48 scale
        rows[1][rows[0].index("ugpa")] = "0.5"
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        path.write_text(out.getvalue())
    return directory


SOURCES = {
    "adult": (lambda d, edit: adult_copy(d, edit_adult if edit else None), {}),
    "adult_runner": (lambda d, edit: adult_copy(d, edit_adult if edit else None), {"adult": {"protocol": "runner"}}),
    "compas": (compas_copy, {"target": "two_year_recid", "protected": "sex"}),
    "german": (german_copy, {"target": "bad_credit", "protected": "sex"}),
    "lsac": (lsac_copy, {"target": "pass_bar", "protected": "sex"}),
}


def all_rows(bundle) -> np.ndarray:
    return np.concatenate([bundle.x_train, bundle.x_val, bundle.x_test])


def changed_rows(a, b) -> int:
    return int(np.count_nonzero((all_rows(a) != all_rows(b)).any(axis=1)))


@pytest.mark.parametrize("source", [pytest.param(source, marks=pytest.mark.slow) if source == "adult"
                                    else source for source in SOURCES])
def test_under_privacy_one_rows_values_change_only_that_row(tmp_path, source):
    make, data = SOURCES[source]
    name = "adult" if source.startswith("adult") else source
    roots = [make(tmp_path / "a", False), make(tmp_path / "b", True)]
    original, edited = (build_dataset(config(name, root, **data)) for root in roots)
    assert original.preprocessing["mode"] == "public" and original.preprocessing["source"] == "public"
    assert original.preprocessing == edited.preprocessing
    assert json.dumps(original.preprocessing)  # preprocessing.json's content is plain JSON
    assert original.info.get("feature_names", None) == edited.info.get("feature_names", None)
    assert len(all_rows(original)) == len(all_rows(edited))
    assert changed_rows(original, edited) == 1  # the edited row, and no other
    # Every input of a public numeric column lies in [-1, 1].
    assert np.abs(all_rows(original)).max() <= 1.0 + 1e-6
    # The control: the fitted pipeline lets the one row move every other row's inputs.
    fitted = [build_dataset(config(name, root, preprocessing="fitted", mode="none", **data))
              for root in roots]
    assert fitted[0].preprocessing["source"] == "fitted"
    if source != "adult_runner":  # deciles move only when the row sits near an edge
        assert fitted[0].preprocessing != fitted[1].preprocessing
        assert changed_rows(*fitted) > 1


def test_a_category_only_outside_the_training_set_creates_no_column(tmp_path):
    """Holand-Netherlands occurs in one row of adult.data: fitted, that row alone makes a column
    (and dropping it drops the column); public, the columns are adult.names' whatever the rows."""
    lines = read_gz(SHIPPED_ADULT_DIR / "adult.data.gz").splitlines()
    assert sum("Holand-Netherlands" in line for line in lines) == 1
    full = adult_copy(tmp_path / "full")
    without = tmp_path / "without"
    without.mkdir()
    (without / "adult.data").write_text("\n".join(line for line in lines if "Holand-Netherlands" not in line) + "\n")
    (without / "adult.test").write_text(read_gz(SHIPPED_ADULT_DIR / "adult.test.gz"))
    public = [build_dataset(config("adult", root)).info["feature_names"] for root in (full, without)]
    assert public[0] == public[1]
    assert "native-country=Holand-Netherlands" in public[0]
    expected = sum(len(c.values) for c in ADULT_CATEGORIES.values()) + 5  # five numeric columns
    assert len(public[0]) == expected
    fitted = [build_dataset(config("adult", root, mode="none")).info["feature_names"]
              for root in (full, without)]
    assert "native-country=Holand-Netherlands" in fitted[0]
    assert "native-country=Holand-Netherlands" not in fitted[1]
    # A training set of 2,000 drawn from the pool: its columns are still adult.names'.
    small = build_dataset(config("adult", full, train_size=2000, minority_share=0.1))
    assert small.info["feature_names"] == public[0]


def test_a_category_outside_the_documented_list_creates_no_column(tmp_path):
    def atlantis(fields):
        fields[ADULT_COLUMNS.index("native-country")] = "Atlantis"

    bundle = build_dataset(config("adult", adult_copy(tmp_path / "a", atlantis)))
    assert not any("Atlantis" in name for name in bundle.info["feature_names"])
    assert bundle.info["pool_rows_unlisted_category"] == 1


def test_public_ranges_clip_and_map_to_the_unit_interval():
    linear = PublicRange(17, 99)
    np.testing.assert_allclose(linear.scale(np.array([0, 17, 58, 99, 500])), [-1, -1, 0, 1, 1])
    log = PublicRange(0, 99_999, log=True)
    np.testing.assert_allclose(log.scale(np.array([0, 99_999, 10**9])), [-1, 1, 1])
    assert log.scale(np.array([np.expm1(np.log1p(99_999) / 2)]))[0] == pytest.approx(0)
    edges = linear.bin_edges(10)
    assert len(edges) == 9 and edges[0] == pytest.approx(17 + 8.2)
    np.testing.assert_allclose(np.diff(log.scale(np.concatenate([[0], log.bin_edges(10), [99_999]]))),
                               0.2)


TINY = """
name: tiny
data: {name: adult, minority_share: 0.2, train_size: 1000}
model: {name: mlp, hidden: [16]}
training: {epochs: 1, batch_size: 100}
privacy: {mode: dpsgd, noise_multiplier: 1.0}
evaluation: {bootstrap_resamples: 10}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


@pytest.mark.slow
def test_every_run_writes_preprocessing_json_and_names_its_source(tmp_path, capsys):
    assert main_on_yaml(tmp_path, TINY) == 0
    run = tmp_path / "out" / "tiny"
    record = json.loads((run / PREPROCESSING_FILE).read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert record["mode"] == "public" and record["source"] == "public"
    assert {entry["column"] for entry in record["columns"]} >= {"age", "capital-gain", "native-country"}
    assert all(entry["reference"] for entry in record["columns"])
    assert summary["privacy/public_data"]["preprocessing"] == {"source": "public", "file": PREPROCESSING_FILE}
    assert summary["privacy/private"] is True
    # Fitted under privacy: it runs, warns, and is not private; its parameters are in the file
    # unless the run is recorded without its non-private statistics.
    assert main_on_yaml(tmp_path, TINY, "name=fitted", "data.preprocessing=fitted") == 0
    assert FITTED_UNDER_PRIVACY.format(mode="dpsgd") in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "fitted" / "summary.json").read_text())
    record = json.loads((tmp_path / "out" / "fitted" / PREPROCESSING_FILE).read_text())
    assert summary["privacy/private"] is False
    assert summary["privacy/public_data"]["preprocessing"]["source"] == "fitted"
    assert FITTED_UNDER_PRIVACY.format(mode="dpsgd") in summary["warnings"]
    age = next(entry for entry in record["columns"] if entry["column"] == "age")
    assert age["source"] == "fitted" and age["parameters"]["std"] > 0
    assert main_on_yaml(tmp_path, TINY, "name=withheld", "data.preprocessing=fitted",
                        "logging.private_stats=false") == 0
    record = json.loads((tmp_path / "out" / "withheld" / PREPROCESSING_FILE).read_text())
    age = next(entry for entry in record["columns"] if entry["column"] == "age")
    assert age["parameters"] is None and age["withheld"]


def test_the_preprocessing_key_is_for_tabular_data_only():
    from dataset import check_data_keys
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="data.preprocessing"):
        check_data_keys(validated_config({"data": {"name": "synthetic", "preprocessing": "public"}}))
    with pytest.raises(ConfigError, match="data.preprocessing"):
        validated_config({"data": {"preprocessing": "standardized"}})


def test_a_finished_private_run_from_before_preprocessing_existed_is_named_fitted(tmp_path, capsys):
    """An older config.yaml without data.preprocessing ran the fitted pipeline; under privacy the
    default is now public, so re-running that config names the difference (it is returned, as
    every finished run is, with the warning)."""
    import yaml

    from training.experiment import run

    raw = {"name": "old", "output_dir": str(tmp_path), "device": "cpu",
           "data": {"name": "synthetic", "train_size": 500}, "model": {"hidden": [8]},
           "training": {"epochs": 1, "batch_size": 100},
           "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0},
           "evaluation": {"bootstrap_resamples": 0},
           "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}}}
    run(validated_config(raw))
    stored_path = tmp_path / "old" / "config.yaml"
    stored = yaml.safe_load(stored_path.read_text())
    del stored["data"]["preprocessing"]  # as the tool wrote it before
    stored_path.write_text(yaml.safe_dump(stored))
    capsys.readouterr()
    assert run(validated_config(raw))["skipped"] is True
    assert "differs in data.preprocessing" in capsys.readouterr().err
    # A non-private one preprocessed as auto still does: no difference.
    non_private = {**raw, "name": "old_np", "privacy": {"mode": "none"}}
    run(validated_config(non_private))
    stored_path = tmp_path / "old_np" / "config.yaml"
    stored = yaml.safe_load(stored_path.read_text())
    del stored["data"]["preprocessing"]
    stored_path.write_text(yaml.safe_dump(stored))
    capsys.readouterr()
    assert run(validated_config(non_private))["skipped"] is True
    assert "warning" not in capsys.readouterr().err
