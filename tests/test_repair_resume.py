"""Every repair method, in every privacy mode it accepts, resumes from a checkpoint to the result
of the uninterrupted run: what it learned while training (an adversary, a phase's marks, a
public gap) is in the checkpoint, not recomputed or started afresh."""

from __future__ import annotations

import pytest

from tests.test_resume import reference_and_interrupted, without_time
from training import checkpoint
from training import experiment as experiment_module
from training.repair import METHODS

BASE = {
    "seed": 4, "device": "cpu",
    "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 600, "val_fraction": 0.1,
             "validation_public": True},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 4, "batch_size": 60, "optimizer": "adam", "lr": 1e-2},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"},
}
PRIVACY = {
    "none": {"mode": "none"},
    "dpsgd": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "dpfedavg": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.5},
}
FEDERATED = {"num_clients": 20, "client_sample_rate": 0.5, "rounds": 4, "eval_every": 1,
             "client_lr": 0.1}


def cases():
    for method in METHODS.names():
        if method == "none":
            continue
        for mode in PRIVACY:
            if METHODS.get(method).refusal(method, mode) is None:
                yield pytest.param(method, mode, id=f"{method}-{mode}")


@pytest.mark.parametrize("method, mode", list(cases()))
def test_a_method_resumed_mid_run_ends_as_if_uninterrupted(tmp_path, monkeypatch, method, mode):
    raw = {**BASE, "name": f"{method}_{mode}", "privacy": PRIVACY[mode],
           "fairness": {"method": method, "mode": "dp"}}
    if mode == "dpfedavg":
        raw["federated"] = FEDERATED
    # Stopped after unit 3, it resumes from unit 2's checkpoint or later (every unit is one).
    reference, config, run_dir = reference_and_interrupted(raw, tmp_path, monkeypatch, after=3)
    assert checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt").step >= 2
    resumed = experiment_module.run(config)
    assert without_time(resumed) == without_time(reference)
