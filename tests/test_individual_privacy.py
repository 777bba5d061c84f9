"""Individual privacy accounting (privacy/individual.py, privacy.individual_accounting): the math
against Opacus' RDP accountant and Google's dp_accounting, the whole-set norm pass against a
per-example loop, and a run on the shipped Adult data with the CSV and the summary keys."""

from __future__ import annotations

import csv
import re

import dp_accounting
import numpy as np
import pytest
import torch

from privacy.accounting import epsilon_after, epsilon_of_history
from privacy.individual import ORDERS, epsilon_of_rdp, group_summary, individual_epsilons
from tests.conftest import quiet_run
from training.repair import METHODS
from training.validation import validated_config
from utils.errors import ConfigError

SIGMA, Q, STEPS, DELTA = 0.83, 1 / 89, 445, 1e-5


def individual(ratio: float, releases=()) -> float:
    windows = [(STEPS // 5, np.array([ratio]))] * 5
    return float(individual_epsilons(windows, noise_multiplier=SIGMA, sample_rate=Q, delta=DELTA,
                                     releases=releases)[0])


def google_epsilon(sigma: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(ORDERS))
    accountant.compose(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(sigma)),
                       STEPS)
    return accountant.get_epsilon(DELTA)


def test_an_example_always_at_the_bound_gets_exactly_the_runs_epsilon():
    run = epsilon_after(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, delta=DELTA,
                        accountant="rdp")
    assert individual(1.0) == run
    assert individual(1.0) == pytest.approx(google_epsilon(SIGMA), rel=1e-4)


def test_releases_are_paid_in_full_by_every_example():
    release = (10.0, 1.0, 1)
    run = epsilon_of_history([(SIGMA, Q, STEPS), release], delta=DELTA, accountant="rdp")
    assert individual(1.0, releases=[release]) == run
    assert individual(0.5, releases=[release]) > individual(0.5)


def test_half_the_norm_gets_the_epsilon_of_twice_the_noise():
    independent = epsilon_after(noise_multiplier=2 * SIGMA, sample_rate=Q, steps=STEPS,
                                delta=DELTA, accountant="rdp")
    assert individual(0.5) == pytest.approx(independent, rel=1e-12)
    assert individual(0.5) == pytest.approx(google_epsilon(2 * SIGMA), rel=1e-4)


def test_epsilon_is_monotone_in_the_norm_and_never_above_the_runs():
    ratios = np.linspace(0, 1, 41)
    epsilon = individual_epsilons([(STEPS, ratios)], noise_multiplier=SIGMA, sample_rate=Q,
                                  delta=DELTA)
    assert np.all(np.diff(epsilon) >= 0)
    assert epsilon[0] == 0.0 and epsilon[-1] == individual(1.0)
    assert np.all(epsilon <= individual(1.0))


def test_the_conversion_is_opacus_get_privacy_spent():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = np.stack([compute_rdp(q=Q, noise_multiplier=s, steps=STEPS, orders=list(ORDERS))
                    for s in (0.6, 0.83, 2.0)])
    expected = [get_privacy_spent(orders=list(ORDERS), rdp=row, delta=DELTA)[0] for row in rdp]
    assert epsilon_of_rdp(rdp, delta=DELTA).tolist() == expected


def test_config_ignores_it_when_non_private_and_needs_noise_and_a_positive_every():
    # A grid's non-private twins share the base config's setting: ignored there, like secure_rng.
    non_private = validated_config({"privacy": {"individual_accounting": True}})
    assert not non_private.privacy.accounts_individuals
    private = validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0,
                                               "individual_accounting": True}})
    assert private.privacy.accounts_individuals
    with pytest.raises(ConfigError, match="privacy.individual_accounting"):
        validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 0.0,
                                         "individual_accounting": True}})
    with pytest.raises(ConfigError, match="privacy.individual_every: got 0"):
        validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0,
                                         "individual_every": 0}})


# The methods that train as Vanilla does (prepare the data or post-process), by their own hooks.
PLAIN_METHODS = {"none", "reweighing", "oversample", "fairsmote", "roc"}


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_dpsgd_refuses_exactly_the_methods_that_change_the_training_step(method):
    # The whole-set pass takes the norms of the plain weighted cross-entropy, so it is sound only
    # for a method that trains with it; the config refuses the others before any file is written.
    cls = METHODS.get(method)
    assert (not cls.training_changes()) == (method in PLAIN_METHODS)
    mapping = {"data": {"val_fraction": 0.1, "validation_public": True}, "fairness": {"method": method},
               "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "individual_accounting": True}}
    if (refusal := cls.refusal(method, "dpsgd")) is not None:  # refuses DP-SGD altogether
        with pytest.raises(ConfigError, match=re.escape(refusal)):
            validated_config(mapping)
        return
    if method in PLAIN_METHODS:
        assert validated_config(mapping).privacy.accounts_individuals
        return
    with pytest.raises(ConfigError) as error:
        validated_config(mapping)
    message = str(error.value)
    assert message.startswith(f"privacy.individual_accounting does not support fairness.method "
                              f"{method!r} under DP-SGD")
    assert f"({', '.join(cls.training_changes())})" in message
    assert all(name in message for name in PLAIN_METHODS)  # the ones that would work
    # Under DP-FedAvg each client's pass trains with the method's own client loss: accepted.
    federated = {**mapping, "privacy": {**mapping["privacy"], "mode": "dpfedavg"}}
    if cls.refusal(method, "dpfedavg") is None:
        assert validated_config(federated).privacy.accounts_individuals


def adult_run(tmp_path, name: str, *overrides: str) -> dict:
    return quiet_run(tmp_path, "utils/params_adult.yaml", name, "training.epochs=2", *overrides)


# The default tier runs the fast engine; Opacus' run takes minutes on a busy 2-core CPU.
@pytest.mark.parametrize("engine", ["fast", pytest.param("opacus", marks=pytest.mark.slow)])
def test_adult_run_writes_the_csv_and_keys_and_trains_the_same_model(tmp_path, engine):
    on = adult_run(tmp_path, "with", "privacy.individual_accounting=true",
                   f"privacy.engine={engine}")
    off = adult_run(tmp_path, "without", f"privacy.engine={engine}")
    for key in ("test/accuracy", "privacy/epsilon", "train/loss", "test/eo_gap"):
        assert on[key] == off[key], key
    weights = [torch.load(tmp_path / n / "checkpoints/model_final.pt") for n in ("with", "without")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with (tmp_path / "with" / "individual_privacy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "group", "label", "epsilon", "mean_clipped_norm"]
    assert len(rows) == on["data/train_count/group=minority"] + on["data/train_count/group=majority"]
    epsilon = np.array([float(row["epsilon"]) for row in rows])
    minority = np.array([row["group"] == "minority" for row in rows])
    assert epsilon.max() <= on["privacy/epsilon"]
    assert on["privacy/individual_epsilon/worst_case"] == on["privacy/epsilon"]
    recomputed = group_summary(epsilon, minority)
    for key, value in recomputed.items():
        assert on[key] == pytest.approx(value, rel=1e-12), key
    assert "privacy/individual_epsilon/group=minority/median" in on["privacy/non_private_statistics"]


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the fast engine's Adult run)
def test_private_stats_false_drops_the_keys_and_the_file(tmp_path):
    summary = adult_run(tmp_path, "release", "privacy.individual_accounting=true",
                        "logging.private_stats=false")
    assert not any(key.startswith("privacy/individual_epsilon/") for key in summary)
    assert not (tmp_path / "release" / "individual_privacy.csv").exists()
