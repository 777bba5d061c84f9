"""Checkpoint and resume: an interrupted run continues and ends as if it had never stopped.

The central test kills ``running.py`` with a real SIGKILL after its second checkpoint, runs the same
command again, and compares everything with an uninterrupted run of the same seed: summary.json
(apart from the ``time/`` keys), ε and the step count (which must include the steps before the
kill), and metrics.jsonl (each epoch exactly once). DP-FedAvg is interrupted in-process by an
exception after a few rounds. Damaged checkpoints and changed configs must not resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import read_jsonl, running_py
from training import checkpoint
from training import experiment as experiment_module
from training.validation import validated_config

# Slow enough (a few tenths of a second per epoch on the CPU) that the test can kill it mid-way.
DPSGD = {
    "name": "resume_dpsgd",
    "seed": 3,
    "device": "cpu",
    "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 3000},
    "model": {"name": "mlp", "hidden": [32]},
    "training": {"epochs": 6, "batch_size": 32, "optimizer": "adam", "lr": 1e-3},
    "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": True, "wandb": {"mode": "disabled"}, "progress": "never"},
}

FEDAVG = {
    "name": "resume_fedavg",
    "seed": 5,
    "device": "cpu",
    "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"batch_size": 20},
    "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.5},
    "federated": {"num_clients": 20, "client_sample_rate": 0.5, "rounds": 9, "eval_every": 2,
                  "client_lr": 0.1},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"},
}


def without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("time/")}


def write_params(tmp_path: Path, raw: dict, output: str) -> Path:
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / output)}))
    return path


def cli(params: Path) -> list[str]:
    return running_py("--params", str(params))


def cli_env(tmp_path: Path) -> dict:
    # One thread: a tiny MLP gains nothing from more, and the runs stay fast on a busy machine.
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "disabled",
            "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the in-process resume tests)
def test_dpsgd_run_killed_after_second_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    params = write_params(tmp_path, DPSGD, "killed")
    run_dir = tmp_path / "killed" / DPSGD["name"]
    ckpt = run_dir / "checkpoints"
    process = subprocess.Popen(cli(params), cwd=tmp_path, env=cli_env(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    # previous.pt appears when the second checkpoint replaces the first (last.pt is briefly
    # absent while the new one takes its name).
    while not ((ckpt / "previous.pt").exists() and (ckpt / "last.pt").exists()):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never wrote its second checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = checkpoint.load_checkpoint(ckpt / "last.pt").step
    assert 2 <= killed_at < DPSGD["training"]["epochs"]

    resumed = subprocess.run(cli(params), cwd=tmp_path, env=cli_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after unit {killed_at}" in resumed.stderr

    reference_params = write_params(tmp_path, DPSGD, "reference")
    reference = subprocess.run(cli(reference_params), cwd=tmp_path,
                               env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    ref_dir = tmp_path / "reference" / DPSGD["name"]

    got = json.loads((run_dir / "summary.json").read_text())
    want = json.loads((ref_dir / "summary.json").read_text())
    assert without_time(got) == without_time(want)
    epochs = DPSGD["training"]["epochs"]
    # ε counts all the steps, before and after the kill: about epochs / q of them (Poisson batches).
    assert got["privacy/steps"] == want["privacy/steps"] >= epochs * 3000 // 32 * 0.9
    assert got["privacy/epsilon"] == want["privacy/epsilon"]

    rows, ref_rows = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(ref_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, epochs + 1))
    assert [without_time(r) for r in rows] == [without_time(r) for r in ref_rows]
    assert (run_dir / "predictions.csv").read_text() == (ref_dir / "predictions.csv").read_text()
    # The checkpoints of a complete run are removed; the final weights stay.
    assert sorted(p.name for p in ckpt.iterdir()) == ["model_final.pt"]

    # TensorBoard: the purge on resume leaves each epoch once with the resumed run's values.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    accuracy = events.Scalars("test/accuracy")
    assert [e.step for e in accuracy] == list(range(1, epochs + 1))
    assert [e.value for e in accuracy] == pytest.approx([r["test/accuracy"] for r in rows])


class Interrupt(Exception):
    """Stands in for a kill: raised by the run loop's logger after a given step."""


def interrupt_after(monkeypatch, step: int) -> None:
    original = experiment_module.MetricsSink.log

    def log(self, at, metrics):
        original(self, at, metrics)
        if at == step:
            raise Interrupt

    monkeypatch.setattr(experiment_module.MetricsSink, "log", log)


def run_until_interrupted(config, monkeypatch, *, after: int) -> None:
    """Run ``config`` in this process and stop it by an exception right after unit ``after``."""
    with monkeypatch.context() as patch:
        interrupt_after(patch, after)
        with pytest.raises(Interrupt):
            experiment_module.run(config)


def reference_and_interrupted(raw: dict, tmp_path, monkeypatch, *, after: int):
    """The run of ``raw`` uninterrupted (its summary, under tmp_path/reference) and the same run
    under tmp_path/resumed stopped right after unit ``after``: (reference, config, run_dir)."""
    reference = experiment_module.run(validated_config(
        {**raw, "output_dir": str(tmp_path / "reference")}))
    config = validated_config({**raw, "output_dir": str(tmp_path / "resumed")})
    run_until_interrupted(config, monkeypatch, after=after)
    return reference, config, experiment_module.run_directory(config)


def test_dpfedavg_run_interrupted_mid_way_resumes_to_the_uninterrupted_result(tmp_path,
                                                                               monkeypatch):
    # Interrupted at round 5: the last checkpoint is round 4 (eval_every 2), so round 5's row
    # must be dropped and logged again by the resumed run.
    reference, config, run_dir = reference_and_interrupted(FEDAVG, tmp_path, monkeypatch, after=5)
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt").step == 4

    resumed = experiment_module.run(config)
    assert without_time(resumed) == without_time(reference)
    assert resumed["privacy/steps"] == FEDAVG["federated"]["rounds"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 10))


def test_truncated_last_checkpoint_falls_back_to_previous(tmp_path, monkeypatch, capsys):
    config = validated_config({**FEDAVG, "output_dir": str(tmp_path / "runs")})
    reference = experiment_module.run(validated_config(
        {**FEDAVG, "output_dir": str(tmp_path / "reference")}))
    run_dir = experiment_module.run_directory(config)
    run_until_interrupted(config, monkeypatch, after=7)  # checkpoints after rounds 2, 4, 6: last = 6, previous = 4
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    capsys.readouterr()

    resumed = experiment_module.run(config)
    err = capsys.readouterr().err
    assert "checkpoint not usable" in err and "last.pt" in err
    assert "from previous.pt after unit 4" in err
    assert without_time(resumed) == without_time(reference)
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 10))


def test_no_usable_checkpoint_starts_afresh_with_a_warning(tmp_path, monkeypatch, capsys):
    config = validated_config({**FEDAVG, "output_dir": str(tmp_path / "runs")})
    run_dir = experiment_module.run_directory(config)
    run_until_interrupted(config, monkeypatch, after=5)
    for name in ("last.pt", "previous.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    summary = experiment_module.run(config)
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "resuming" not in err
    assert summary["privacy/steps"] == FEDAVG["federated"]["rounds"]
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 10))


def test_changed_config_starts_afresh(tmp_path, monkeypatch, capsys):
    config = validated_config({**FEDAVG, "output_dir": str(tmp_path / "runs")})
    run_dir = experiment_module.run_directory(config)
    run_until_interrupted(config, monkeypatch, after=5)
    changed = validated_config({**FEDAVG, "output_dir": str(tmp_path / "runs"),
                                   "privacy": {**FEDAVG["privacy"], "noise_multiplier": 2.0}})
    assert not checkpoint.saved_config_matches(run_dir, changed)
    capsys.readouterr()
    summary = experiment_module.run(changed)
    err = capsys.readouterr().err
    assert "different config" in err and "resuming" not in err
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["privacy"]["noise_multiplier"] == 2.0
    assert summary["privacy/noise_multiplier"] == 2.0
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 10))


def test_metrics_truncation_keeps_rows_up_to_the_checkpoint(tmp_path):
    from utils.sink import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "x"')  # the half-written line of a killed run
    truncate_metrics(path, 3)
    assert [row["step"] for row in read_jsonl(path)] == [1, 2, 3]
