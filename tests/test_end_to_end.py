"""End to end through ``running.py`` on the real, shipped UCI Adult files.

Each run must leave every file of the run-directory contract, TensorBoard events that TensorBoard's
own reader reads back with the logged values, a wandb offline run folder, and predictions from
which the summary's metrics can be recomputed. A second run of the same config is skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import accuracy_score, average_precision_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, cli_args, read_jsonl, run_running_py
from utils import fairness
from utils.rundir import write_marker
from utils.sink import read_predictions

CONTRACT_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "predictions.csv")
PRIVACY_KEYS = ("privacy/epsilon", "privacy/delta", "privacy/noise_multiplier",
                "privacy/sample_rate", "privacy/steps")


def run_cli(tmp_path: Path, *overrides: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    args = cli_args(ROOT / "utils/params_adult.yaml", "training.epochs=2",
                    "evaluation.bootstrap_resamples=200", *overrides, output_dir=tmp_path / "runs")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_SILENT": "true",
           "WANDB_DISABLE_GIT": "true", "WANDB_BASE_URL": "http://127.0.0.1:9",  # never a server
           **(env_extra or {})}
    return run_running_py(*args, cwd=tmp_path, env=env, timeout=600)


def check_run_directory(run_dir: Path, *, private: bool) -> dict:
    for name in CONTRACT_FILES:
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]

    # Every contract metric name is in every row and in the summary.
    names = ([f"test/{name}" for name in fairness.METRIC_NAMES]
             + [f"data/train_count/group={g}" for g in fairness.GROUPS]
             + ["train/loss", "time/wall_s", "time/train_samples_per_s", *PRIVACY_KEYS])
    for row in (*rows, summary):
        missing = [name for name in names if name not in row]
        assert not missing, missing
    for name in fairness.INTERVAL_NAMES:
        interval = summary[f"test/{name}"]
        assert interval is None or (len(interval) == 2 and interval[0] <= interval[1])
    assert summary["data/train_count/group=minority"] == 2264  # 10 % next to Adult's 20,380 men
    assert summary["test/count/group=minority"] + summary["test/count/group=majority"] == 15060

    # predictions.csv recomputes the summary's metrics.
    # (read_predictions checks the columns: y_true,y_score,y_pred,minority)
    y_true, y_score, y_pred, minority = read_predictions(run_dir / "predictions.csv").values()
    assert len(y_true) == 15060
    assert accuracy_score(y_true, y_pred) == pytest.approx(summary["test/accuracy"], abs=1e-9)
    assert average_precision_score(y_true, y_score) == pytest.approx(summary["test/average_precision"], abs=1e-4)
    assert accuracy_score(y_true[minority], y_pred[minority]) == pytest.approx(
        summary["test/accuracy/group=minority"], abs=1e-9)

    # TensorBoard's own reader sees the same values as metrics.jsonl.
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test/accuracy", "test/eo_gap", "train/loss"} <= tags
    logged = [(event.step, event.value) for event in events.Scalars("test/accuracy")]
    assert [step for step, _ in logged] == [1, 2]
    assert logged[-1][1] == pytest.approx(rows[-1]["test/accuracy"], rel=1e-6)

    # Provenance in the resolved config.
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["provenance"]["versions"]["torch"] and resolved["provenance"]["versions"]["opacus"]
    assert resolved["privacy"]["mode"] == ("dpsgd" if private else "none")

    if private:
        assert 0 < summary["privacy/epsilon"] <= 3.0  # target ε 3 over the 2 planned epochs
        assert "privacy/epsilon" in tags
        assert summary["privacy/delta"] == 1e-5 and summary["privacy/steps"] > 0
        assert all(0 <= summary[f"dp/clip_fraction/group={g}"] <= 1 for g in fairness.GROUPS)
    else:
        assert all(summary[key] is None for key in PRIVACY_KEYS)
        assert "privacy/epsilon" not in tags  # null values are not logged as scalars
    return summary


@pytest.mark.slow
def test_dpsgd_run_with_wandb_offline_then_skipped(tmp_path):
    result = run_cli(tmp_path, "logging.wandb.mode=auto")  # no key in this HOME: offline
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "adult_dpsgd_eps3"
    summary = check_run_directory(run_dir, private=True)
    assert summary["test/accuracy"] > 0.75

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "wandb's offline run file is missing"

    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    again = run_cli(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 2


@pytest.mark.slow
def test_non_private_run(tmp_path):
    result = run_cli(tmp_path, "privacy.mode=none", "name=adult_none", "logging.wandb.mode=disabled")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "adult_none"
    summary = check_run_directory(run_dir, private=False)
    assert summary["test/accuracy"] > 0.83
    assert not (run_dir / "wandb").exists()


def test_infeasible_share_exits_2_without_run_directory(tmp_path):
    result = run_cli(tmp_path, "data.minority_share=0.6", "logging.wandb.mode=disabled")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "data.minority_share" in result.stderr
    assert not (tmp_path / "runs" / "adult_dpsgd_eps3").exists()


@pytest.mark.slow
def test_interrupted_run_is_not_trusted(tmp_path):
    # A run directory without summary.json (a run that died) is trained afresh, not reported as
    # done. It is the tool's (marked), so its stale files may be replaced.
    stale = tmp_path / "runs" / "adult_none"
    stale.mkdir(parents=True)
    write_marker(stale)
    (stale / "metrics.jsonl").write_text('{"step": 1, "test/accuracy": 0.1}\n')
    result = run_cli(tmp_path, "privacy.mode=none", "name=adult_none", "training.epochs=1",
                     "logging.wandb.mode=disabled", "logging.tensorboard=false")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(stale / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["test/accuracy"] > 0.5


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the interrupted and the infeasible runs)
def test_finished_run_of_another_config_warns(tmp_path):
    first = run_cli(tmp_path, "privacy.mode=none", "name=adult_none", "training.epochs=1",
                    "logging.wandb.mode=disabled", "logging.tensorboard=false")
    assert first.returncode == 0, first.stderr
    again = run_cli(tmp_path, "privacy.mode=none", "name=adult_none", "training.epochs=1",
                    "training.lr=0.01", "logging.wandb.mode=disabled", "logging.tensorboard=false")
    assert again.returncode == 0 and "already complete" in again.stdout
    assert "different config" in again.stderr and "training.lr" in again.stderr


def test_a_finished_run_warns_only_about_real_config_differences(tmp_path, capsys):
    """Re-running a finished run returns it; a key that differs is named in a warning, while a key
    an older version of the tool did not write (at its default here) is no difference."""
    from training.experiment import run
    from training.validation import validated_config

    raw = {"name": "r", "output_dir": str(tmp_path), "device": "cpu",
           "data": {"name": "synthetic", "train_size": 500}, "model": {"hidden": [8]},
           "training": {"epochs": 1, "batch_size": 100},
           "evaluation": {"bootstrap_resamples": 0},
           "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}}}
    run(validated_config(raw))
    stored_path = tmp_path / "r" / "config.yaml"
    stored = yaml.safe_load(stored_path.read_text())
    del stored["data"]["val_fraction"], stored["training"]["select"]  # as an older tool wrote it
    stored_path.write_text(yaml.safe_dump(stored))
    capsys.readouterr()
    assert run(validated_config(raw))["skipped"] is True
    assert "warning" not in capsys.readouterr().err
    changed = {**raw, "training": {**raw["training"], "lr": 0.01}}
    assert run(validated_config(changed))["skipped"] is True
    err = capsys.readouterr().err
    assert "differs in training.lr)" in err and "val_fraction" not in err
