"""The metrics sink's pieces: wandb mode resolution, JSON without NaN, atomic files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from utils import sink


def test_wandb_auto_is_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    assert sink.resolve_wandb_mode("auto") == "offline"
    assert sink.resolve_wandb_mode("disabled") == "disabled"
    assert sink.resolve_wandb_mode("online") == "online"


@pytest.fixture
def no_wandb_environment(monkeypatch):
    """No WANDB_MODE / WANDB_DISABLED (CI exports WANDB_MODE=offline): the key alone decides."""
    for name in ("WANDB_MODE", "WANDB_DISABLED"):
        monkeypatch.delenv(name, raising=False)


def test_wandb_auto_is_online_with_a_key(tmp_path, monkeypatch, no_wandb_environment):
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert sink.resolve_wandb_mode("auto") == "online"


def test_wandb_auto_reads_netrc(tmp_path, monkeypatch, no_wandb_environment):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL")  # wandb's default host, read here only (no wandb.init)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert sink.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # another host: no key
    assert sink.resolve_wandb_mode("auto") == "offline"


def test_json_has_null_for_nan_inf_for_infinity_and_plain_numbers(tmp_path):
    path = tmp_path / "summary.json"
    sink.write_json_atomic(path, {"a": float("nan"), "b": np.float32(0.5), "c": [np.int64(3), math.inf]})
    # NaN (an undefined metric) is null; infinity (ε without noise) stays distinguishable.
    assert json.loads(path.read_text()) == {"a": None, "b": 0.5, "c": [3, sink.INFINITY]}
    assert not list(tmp_path.glob("*.tmp"))


def test_sink_writes_jsonl_rows(tmp_path):
    metrics = sink.MetricsSink(tmp_path, run_name="t", config={}, tensorboard=False,
                               wandb_mode="disabled", wandb_project="p")
    metrics.log(1, {"test/accuracy": 0.5, "test/eo_gap": None})
    metrics.log(2, {"test/accuracy": 0.75, "test/eo_gap": 0.1})
    metrics.close({})
    rows = [json.loads(line) for line in (tmp_path / sink.METRICS_FILE).read_text().splitlines()]
    assert rows == [{"step": 1, "test/accuracy": 0.5, "test/eo_gap": None},
                    {"step": 2, "test/accuracy": 0.75, "test/eo_gap": 0.1}]


def test_wandb_failing_during_the_run_stops_wandb_not_the_run(tmp_path, capsys, monkeypatch):
    """A real offline wandb run that fails to log (its run already finished, as when wandb's
    service goes away): one warning, wandb off for the rest of the run, every row on disk."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    metrics = sink.MetricsSink(tmp_path, run_name="t", config={}, tensorboard=False,
                               wandb_mode="offline", wandb_project="p")
    metrics.log(1, {"test/accuracy": 0.5})
    metrics._wandb_run.finish()  # from now on wandb refuses to log
    capsys.readouterr()
    metrics.log(2, {"test/accuracy": 0.6})
    metrics.log(3, {"test/accuracy": 0.7})
    metrics.close({"test/accuracy": 0.7})
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "could not log step 2" in err[0]
    rows = [json.loads(line) for line in (tmp_path / sink.METRICS_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
