"""Individual privacy accounting under DP-FedAvg (privacy.individual_accounting, mode dpfedavg):
each client's user-level ε from its clipped update norm, carried by each of its examples.

- a client always at the bound gets exactly the run's ε, one below it less;
- the whole-population pass's norms equal a per-client loop's (``local_updates_loop``) for the same
  local orders, with any chunking, and with a method that trains in the clients (its own loss);
- the pass changes no training stream: accounting on and off train the same model, also with
  dropout (torch's global generator) and on the per-client loop path;
- a small Adult run writes individual_privacy.csv with the federated columns and the summary keys,
  every ε at most the run's, per-group summaries recomputed from the CSV equal to the summary's;
- an interrupted run resumes to the uninterrupted result, CSV included.
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from torch import nn

from models.mlp import MLP
from privacy.individual import FEDERATED_CSV_COLUMNS, SUMMARY_PREFIX, group_summary
from tests.conftest import quiet_run, read_jsonl
from tests.test_dpfedavg import federated_trainer, flat, synthetic_bundle
from tests.test_resume import reference_and_interrupted, without_time
from training import experiment as experiment_module
from training.federated import FederatedTrainer, draw_local_orders, local_updates_loop
from training.repair import METHODS
from training.validation import validated_config


def trainer_of(data, model=None, seed=0, **overrides) -> FederatedTrainer:
    torch.manual_seed(seed)
    model = model if model is not None else MLP(data.input_shape[0], [8])
    kwargs = {"num_clients": 12, "client_sample_rate": 0.5, "local_epochs": 2, "rounds": 5,
              "client_lr": 0.3, "batch_size": 4, "max_grad_norm": 0.5, "delta": 1e-5,
              "noise_multiplier": 1.0, "seed": seed, "individual_every": 2}
    kwargs.update(overrides)
    return federated_trainer(model, data, **kwargs)


def train(trainer: FederatedTrainer, rounds: int) -> list[dict]:
    return [trainer.train_unit(unit) for unit in range(rounds)]


def fedavg_method(name: str):
    cls = METHODS.get(name)
    return cls(cls.Settings(), target="dp", rng=np.random.default_rng(0), name=name,
               privacy_mode="dpfedavg")


def test_a_client_always_at_the_bound_gets_exactly_the_runs_epsilon():
    data = synthetic_bundle(n=240)
    clipped = trainer_of(data, max_grad_norm=1e-6)  # every update far above the bound
    train(clipped, 5)
    result = clipped.individual_privacy()
    run_epsilon = clipped.privacy_metrics()["privacy/epsilon"]
    assert {row["epsilon"] for row in result.rows} == {run_epsilon}
    assert result.metrics[f"{SUMMARY_PREFIX}worst_case"] == run_epsilon
    assert {row["mean_clipped_norm"] for row in result.rows} == {1e-6}
    assert clipped.individual.starts == [0, 2, 4]  # every individual_every = 2 rounds
    # A bound above most updates: clients below it lose less, none more than the run.
    loose = trainer_of(data, max_grad_norm=5.0)
    train(loose, 5)
    epsilon = np.array([row["epsilon"] for row in loose.individual_privacy().rows])
    assert epsilon.max() <= loose.epsilon() and epsilon.min() < loose.epsilon()
    # Every example carries its own client's ε.
    rows = loose.individual_privacy().rows
    for k, indices in enumerate(loose.clients):
        assert {rows[i]["client"] for i in indices} == {k}
        assert len({rows[i]["epsilon"] for i in indices}) == 1


@pytest.mark.parametrize("method", [None, "gapreg", "runner"])
def test_the_population_pass_equals_a_per_client_loop(method):
    data = synthetic_bundle(n=250)  # 12 clients of 20 or 21 examples
    repair = fedavg_method(method) if method else None
    trainer = trainer_of(data, method=repair, client_chunk_size=5)
    train(trainer, 1)  # away from the initial model
    state = trainer._individual_gen.get_state()
    norms = trainer.population_update_norms()
    orders = draw_local_orders(trainer._client_table, trainer._client_sizes,
                               trainer.federated.local_epochs, torch.Generator().set_state(state))
    loop, _, _ = local_updates_loop(
        copy.deepcopy(trainer.model), trainer.global_params, trainer.x, trainer.y, orders, lr=0.3,
        batch_size=4, minority=trainer.minority, method=repair)
    assert len(norms) == len(trainer.clients) == 12
    torch.testing.assert_close(norms, loop.norm(dim=1), rtol=1e-5, atol=1e-6)
    assert (norms > 0).all()
    # The next pass draws new orders (the stream moves on), from the same model.
    assert not torch.equal(trainer.population_update_norms(), norms)


class DropoutNet(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("vectorized", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_the_pass_changes_no_training_stream(vectorized):
    data = synthetic_bundle(n=250)
    torch.manual_seed(1)
    model = DropoutNet(data.input_shape[0])
    runs = {}
    for name, every in (("on", 1), ("off", None)):
        trainer = trainer_of(data, model=copy.deepcopy(model), vectorized=vectorized,
                             individual_every=every)
        torch.manual_seed(7)  # the augmentation stream (dropout) both runs start from
        runs[name] = (train(trainer, 4), flat(trainer.model), trainer)
    assert runs["on"][0] == runs["off"][0]  # every round's metrics
    assert torch.equal(runs["on"][1], runs["off"][1])
    assert runs["on"][2].individual.starts == [0, 1, 2, 3]
    assert runs["off"][2].individual_privacy() is None


def adult_run(tmp_path, name: str, *overrides: str) -> dict:
    return quiet_run(tmp_path, "utils/params_adult_fedavg.yaml", name, "data.train_size=4000",
                   "federated.num_clients=100", "federated.client_sample_rate=0.1",
                   "federated.rounds=4", "federated.eval_every=2", *overrides)


def test_adult_run_writes_the_csv_and_keys_and_trains_the_same_model(tmp_path):
    # max_grad_norm 1.0: above many updates, so the clients' ε differ.
    on = adult_run(tmp_path, "with", "privacy.individual_accounting=true",
                   "privacy.individual_every=2", "privacy.max_grad_norm=1.0")
    off = adult_run(tmp_path, "without", "privacy.max_grad_norm=1.0")
    individual = {key for key in on if key.startswith(SUMMARY_PREFIX)}
    unshared = {"name", "privacy/non_private_statistics"}
    same = {key for key in on if not key.startswith("time/")} - individual - unshared
    assert same == {key for key in off if not key.startswith("time/")} - unshared
    for key in same:
        assert on[key] == off[key], key
    weights = [torch.load(tmp_path / n / "checkpoints/model_final.pt") for n in ("with", "without")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not (tmp_path / "without" / "individual_privacy.csv").exists()

    with (tmp_path / "with" / "individual_privacy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == FEDERATED_CSV_COLUMNS
    assert len(rows) == on["data/train_count/group=minority"] + on["data/train_count/group=majority"]
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))
    assert len({row["client"] for row in rows}) == 100
    epsilon = np.array([float(row["epsilon"]) for row in rows])
    norms = np.array([float(row["mean_clipped_norm"]) for row in rows])
    minority = np.array([row["group"] == "minority" for row in rows])
    assert epsilon.max() <= on["privacy/epsilon"] and epsilon.min() < on["privacy/epsilon"]
    assert np.all((norms > 0) & (norms <= 1.0))
    assert on[f"{SUMMARY_PREFIX}worst_case"] == on["privacy/epsilon"]
    assert on[f"{SUMMARY_PREFIX}accountant"] == "rdp"
    for key, value in group_summary(epsilon, minority).items():
        assert on[key] == pytest.approx(value, rel=1e-12), key
    assert f"{SUMMARY_PREFIX}group=minority/median" in on["privacy/non_private_statistics"]
    assert 0 < on["time/individual_accounting_s"] < on["time/wall_s"]


FEDAVG = {
    "name": "resume_individual",
    "seed": 5,
    "device": "cpu",
    "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"batch_size": 20},
    "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.5,
                "individual_accounting": True, "individual_every": 3},
    "federated": {"num_clients": 20, "client_sample_rate": 0.5, "rounds": 9, "eval_every": 2,
                  "client_lr": 0.1},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"},
}


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the Adult run and the per-client loop)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # Passes before rounds 1, 4 and 7; the last checkpoint before the interruption is after
    # round 4, so the resumed run holds two passes and the pass stream's state after them.
    reference, config, run_dir = reference_and_interrupted(FEDAVG, tmp_path, monkeypatch, after=5)
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    resumed = experiment_module.run(config)
    assert without_time(resumed) == without_time(reference)
    assert any(key.startswith(SUMMARY_PREFIX) for key in resumed)
    csvs = [(tmp_path / out / "resume_individual" / "individual_privacy.csv").read_text()
            for out in ("reference", "resumed")]
    assert csvs[0] == csvs[1]


def test_individual_every_defaults_to_an_epochs_worth_of_rounds():
    from training.federated import build_federated_trainer

    data = synthetic_bundle(n=240)
    config = validated_config({
        "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "individual_accounting": True},
        "federated": {"num_clients": 12, "client_sample_rate": 0.3, "rounds": 5}})
    assert config.privacy.individual_every is None
    trainer = build_federated_trainer(config, MLP(data.input_shape[0], [8]), data, "cpu",
                                      method=fedavg_method("none"))
    assert trainer.individual_every == 4  # ⌈1 / 0.3⌉ rounds: each client expected to train once
