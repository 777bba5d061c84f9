"""DP-FedAvg (user-level DP, McMahan et al. 2018) against independent references.

- zero noise, a huge bound, every client in the round and one full-batch local step each: a round
  is one full-batch SGD step on the union of the clients' data (``torch.optim.SGD``);
- an update above the bound leaves with norm exactly the bound, one below it unchanged;
- the noise on the average has standard deviation σ·S / (q·N) (chi-square interval), also in an
  empty round;
- the per-group clip diagnostics weigh each client by its examples of the group (by hand), are 0
  and 1 at a huge and a tiny bound, and separate the groups when the minority's clients differ;
- the batched clients (vmap) and the per-client loop give the same global model, with clients of
  unequal sizes, several local epochs and several rounds;
- ε after T rounds is Opacus' RDP / PRV accountant stepped T times by hand; ``target_epsilon`` lands
  at or just below the target; empty rounds count as rounds;
- the partitions cover every example once, are deterministic, ``by_group`` packs the minority on
  ceil(n_min / client size) clients and ``dirichlet`` skews labels more at smaller α;
- utils/params_adult_fedavg.yaml runs end to end through running.py with a tiny overlay.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import stats
from torch.nn import functional as F

from dataset.base import DataBundle
from models.mlp import MLP
from privacy.accounting import epsilon_of_history, resolve_noise_multiplier
from privacy.dpfedavg import DPFedAvg, clip_updates, dp_fedavg_aggregate
from training import TRAINERS
from training.federated import (
    FederatedTrainer,
    build_federated_trainer,
    client_table,
    draw_local_orders,
    group_clip_diagnostics,
    local_updates_loop,
    local_updates_vectorized,
    pad_orders,
)
from training.partition import partition_clients, partition_counts, partition_summary
from training.validation import validated_config
from utils.config import FederatedConfig, PrivacyConfig
from utils.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def synthetic_bundle(n=240, d=6, minority_share=0.2, seed=0) -> DataBundle:
    """A linearly separable-ish binary task with a minority flag, as float32 / int64 arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    minority = rng.random(n) < minority_share
    return DataBundle(x, y, minority, x[:50], y[:50], minority[:50], (d,))


FEDERATED_KEYS = {field.name for field in dataclasses.fields(FederatedConfig)}


def federated_trainer(model, data, *, batch_size, seed=0, method=None, vectorized=True,
                      client_chunk_size=None, individual_every=None, **keys) -> FederatedTrainer:
    """A :class:`FederatedTrainer` from flat keys: those of the ``federated`` section go there
    (evaluation every round unless given), the rest into a DP-FedAvg ``privacy`` section;
    ``individual_every`` turns individual accounting on."""
    federated = FederatedConfig(**{"eval_every": 1} | {k: v for k, v in keys.items()
                                                       if k in FEDERATED_KEYS})
    privacy = PrivacyConfig(mode="dpfedavg", individual_accounting=individual_every is not None,
                            individual_every=individual_every,
                            **{k: v for k, v in keys.items() if k not in FEDERATED_KEYS})
    return FederatedTrainer(model, data, "cpu", federated=federated, privacy=privacy,
                            batch_size=batch_size, seed=seed, method=method,
                            vectorized=vectorized, client_chunk_size=client_chunk_size)


def make_trainer(data, seed=0, **overrides) -> FederatedTrainer:
    torch.manual_seed(seed)
    model = MLP(data.input_shape[0], [8])
    kwargs = {"num_clients": 12, "client_sample_rate": 0.5, "local_epochs": 2, "rounds": 5,
              "client_lr": 0.3, "batch_size": 4, "max_grad_norm": 0.5, "delta": 1e-5,
              "noise_multiplier": 1.0, "seed": seed}
    kwargs.update(overrides)
    return federated_trainer(model, data, **kwargs)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------------------------------
# The mechanism


@pytest.mark.parametrize("vectorized", [True, False])
def test_round_without_noise_or_clipping_is_full_batch_sgd_on_the_union(vectorized):
    data = synthetic_bundle(n=240)  # 12 clients of exactly 20
    trainer = make_trainer(data, client_sample_rate=1.0, local_epochs=1, batch_size=64,
                           max_grad_norm=1e6, noise_multiplier=0.0, server_lr=1.0,
                           server_momentum=0.0, vectorized=vectorized)
    assert {row["size"] for row in trainer.client_counts} == {20}
    reference = copy.deepcopy(trainer.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.3)
    loss = F.binary_cross_entropy_with_logits(reference(torch.as_tensor(data.x_train)),
                                              torch.as_tensor(data.y_train, dtype=torch.float32))
    loss.backward()
    optimizer.step()

    metrics = trainer.train_unit(0)
    assert metrics["federated/clients"] == 12
    assert metrics["dp/clip_fraction"] == 0.0
    # The round's average training loss is the loss at the start, where every client begins.
    assert metrics["train/loss"] == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(flat(trainer.model), flat(reference), rtol=1e-5, atol=1e-6)


def test_clipping_scales_large_updates_to_the_bound_and_leaves_small_ones():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(4, 50, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True)
    norms = torch.tensor([7.3, 2.0001, 0.4, 0.0])
    updates = direction * norms.unsqueeze(1)
    clipped, measured = clip_updates(updates, max_grad_norm=2.0)
    torch.testing.assert_close(measured, norms)
    torch.testing.assert_close(clipped.norm(dim=1), torch.tensor([2.0, 2.0, 0.4, 0.0]))
    assert torch.equal(clipped[2:], updates[2:])  # untouched, bit for bit
    # Clipping scales; it never turns an update.
    torch.testing.assert_close(clipped[:2] / 2.0, direction[:2])

    result = dp_fedavg_aggregate(updates, max_grad_norm=2.0, noise_multiplier=0.0,
                                 expected_clients=8.0)
    torch.testing.assert_close(result.update, clipped.sum(0) / 8.0)
    assert result.clients == 4
    assert result.clip_fraction == 0.5
    assert result.update_norm == pytest.approx(float(norms.mean()))


def test_group_clip_diagnostics_weigh_clients_by_their_examples_of_each_group():
    # Three clients: (minority, majority) examples (2, 0), (1, 3), (0, 5); norms 3, 1, 0.5; S = 2.
    norms = torch.tensor([3.0, 1.0, 0.5])
    held = torch.tensor([[2, 0], [1, 3], [0, 5]])
    metrics = group_clip_diagnostics(norms, held, max_grad_norm=2.0)
    # Only client 0 is clipped: it holds 2 of the 3 minority examples and none of the 8 majority.
    assert metrics["dp/clip_fraction/group=minority"] == pytest.approx(2 / 3)
    assert metrics["dp/clip_fraction/group=majority"] == 0.0
    assert metrics["dp/update_norm/group=minority"] == pytest.approx((2 * 3.0 + 1 * 1.0) / 3)
    assert metrics["dp/update_norm/group=majority"] == pytest.approx((3 * 1.0 + 5 * 0.5) / 8)
    # A group with no example among the round's clients has no value, not 0.
    only_majority = group_clip_diagnostics(norms[2:], held[2:], max_grad_norm=2.0)
    assert only_majority["dp/clip_fraction/group=minority"] is None
    assert only_majority["dp/update_norm/group=minority"] is None
    assert only_majority["dp/clip_fraction/group=majority"] == 0.0


@pytest.mark.parametrize(("bound", "expected"), [(1e6, 0.0), (1e-9, 1.0)])
def test_trainer_logs_per_group_clip_fractions_of_the_client_updates(bound, expected):
    trainer = make_trainer(synthetic_bundle(minority_share=0.3), client_sample_rate=1.0,
                           max_grad_norm=bound, partition="by_group")
    metrics = trainer.train_unit(0)
    for group in ("minority", "majority"):
        assert metrics[f"dp/clip_fraction/group={group}"] == expected
        assert metrics[f"dp/update_norm/group={group}"] > 0
    assert metrics["dp/clip_fraction"] == expected


def test_per_group_update_norms_follow_who_holds_the_minority():
    # by_group puts the minority on few clients of its own; make the minority's labels the
    # opposite of the rule the majority follows, so the minority's clients move further from a
    # global model that fits the majority. Their updates are then larger and clipped more often.
    data = synthetic_bundle(n=480, minority_share=0.2, seed=3)
    y = data.y_train.copy()
    y[data.minority_train] = 1 - y[data.minority_train]
    data = DataBundle(data.x_train, y, data.minority_train, data.x_test, data.y_test,
                      data.minority_test, data.input_shape)
    trainer = make_trainer(data, num_clients=24, client_sample_rate=1.0, partition="by_group",
                           noise_multiplier=0.0, max_grad_norm=1e6, rounds=30, client_lr=0.5)
    for unit in range(30):
        metrics = trainer.train_unit(unit)
    minority, majority = (metrics[f"dp/update_norm/group={g}"] for g in ("minority", "majority"))
    assert minority > 1.5 * majority
    # With S between the two, the minority's examples sit in clipped updates far more often.
    trainer.mechanism.max_grad_norm = (minority + majority) / 2
    metrics = trainer.train_unit(30)
    assert (metrics["dp/clip_fraction/group=minority"]
            > metrics["dp/clip_fraction/group=majority"] + 0.3)


@pytest.mark.parametrize("clients", [0, 5])
def test_noise_on_the_average_has_std_sigma_s_over_expected_clients(clients):
    sigma, bound, expected = 1.3, 0.7, 12.5
    d, draws = 20_000, 10
    updates = torch.zeros(clients, d, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    noise = torch.cat([
        dp_fedavg_aggregate(updates, max_grad_norm=bound, noise_multiplier=sigma,
                            expected_clients=expected, generator=generator).update
        for _ in range(draws)])
    n = noise.numel()
    target = (sigma * bound / expected) ** 2
    # (n − 1)·s² / σ² ~ χ²(n − 1) for Gaussian noise of variance σ²: a 99.9 % two-sided interval.
    statistic = (n - 1) * float(noise.var()) / target
    low, high = stats.chi2.ppf([0.0005, 0.9995], df=n - 1)
    assert low < statistic < high
    # Centred: |mean| within 4 standard errors (the noise must not bias the average).
    assert abs(float(noise.mean())) < 4 * math.sqrt(target / n)


def test_noise_is_calibrated_to_the_sum_not_to_who_took_part():
    # The fixed denominator: the noise std on the average depends on q·N only, so one user's
    # presence changes neither the scale of the noise nor the divisor.
    bound, expected = 1.0, 4.0
    few = dp_fedavg_aggregate(torch.ones(1, 3), max_grad_norm=bound, noise_multiplier=0.0,
                              expected_clients=expected)
    many = dp_fedavg_aggregate(torch.ones(8, 3), max_grad_norm=bound, noise_multiplier=0.0,
                               expected_clients=expected)
    # Each row has norm √3 > 1, so each contributes the unit vector / √3 ... divided by 4.
    torch.testing.assert_close(few.update, torch.full((3,), 1 / math.sqrt(3) / 4))
    torch.testing.assert_close(many.update, 8 * few.update)


# --------------------------------------------------------------------------------------------------
# Batched clients against the per-client loop


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_vectorized_local_training_equals_the_loop_for_unequal_clients(device):
    data = synthetic_bundle(n=120, d=5)
    torch.manual_seed(3)
    model = MLP(5, [16, 8]).to(device)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Sizes 1 .. 29: one step per epoch for some, eight for others; last batches partial.
    sizes = [1, 3, 7, 12, 20, 29]
    bounds = np.cumsum([0] + sizes)
    table, client_sizes = client_table([np.arange(a, b) for a, b in itertools.pairwise(bounds)])
    orders = draw_local_orders(table, client_sizes, local_epochs=3,
                               generator=torch.Generator().manual_seed(0)).to(device)
    x = torch.as_tensor(data.x_train, device=device)
    y = torch.as_tensor(data.y_train, dtype=torch.float32, device=device)
    args = (model, global_params, x, y, orders)
    loop, loop_loss, loop_examples = local_updates_loop(*args, lr=0.2, batch_size=4)
    for chunk in (None, 4):
        batched, loss, examples = local_updates_vectorized(*args, lr=0.2, batch_size=4,
                                                           chunk_size=chunk)
        torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
        assert loss == pytest.approx(loop_loss, rel=1e-5)
        assert examples == loop_examples == 3 * sum(sizes)
    # The loop really trained every client (no update is zero) and the global state is intact.
    assert (loop.norm(dim=1) > 0).all()
    assert all(torch.equal(p, global_params[n]) for n, p in model.named_parameters())


def test_local_orders_shuffle_each_client_within_its_own_data_and_pad_its_steps():
    clients = [np.array([3, 8, 9]), np.arange(10, 21), np.array([0])]
    table, sizes = client_table(clients)
    orders = draw_local_orders(table, sizes, local_epochs=2,
                               generator=torch.Generator().manual_seed(0))
    for k, indices in enumerate(clients):
        for epoch in range(2):
            real = orders.index[k, epoch, :len(indices)]
            assert sorted(real.tolist()) == indices.tolist()  # a permutation of its own examples
    assert not torch.equal(orders.index[1, 0, :11], orders.index[1, 1, :11])  # reshuffled per epoch
    index, mask = pad_orders(orders, batch_size=4)
    # ceil(11 / 4) = 3 steps per epoch, 2 epochs; a client's steps are ceil(n_k / 4) per epoch.
    assert index.shape == mask.shape == (3, 6, 4)
    steps_taken = mask.any(dim=2)
    assert steps_taken.sum(dim=1).tolist() == [2 * 1, 2 * 3, 2 * 1]
    assert mask.sum(dim=(1, 2)).tolist() == [2 * 3, 2 * 11, 2 * 1]
    for k, indices in enumerate(clients):  # the real entries, in order, are the epochs' orders
        assert index[k][mask[k]].tolist() == orders.index[k, :, :len(indices)].reshape(-1).tolist()


def test_vectorized_and_loop_trainers_reach_the_same_global_model():
    data = synthetic_bundle(n=250)  # 12 clients of 20 or 21 examples
    batched = make_trainer(data, vectorized=True, server_momentum=0.5, local_epochs=2, batch_size=6)
    looped = make_trainer(data, vectorized=False, server_momentum=0.5, local_epochs=2, batch_size=6)
    for unit in range(4):
        a, b = batched.train_unit(unit), looped.train_unit(unit)
        assert a["federated/clients"] == b["federated/clients"]
        assert a["dp/clip_fraction"] == b["dp/clip_fraction"]
    torch.testing.assert_close(flat(batched.model), flat(looped.model), rtol=1e-4, atol=1e-5)
    assert not torch.equal(flat(batched.model), flat(make_trainer(data).model))  # it trained


def test_trainer_is_reproducible_for_its_seed():
    data = synthetic_bundle()
    first, second, other = make_trainer(data), make_trainer(data), make_trainer(data, seed=1)
    for unit in range(2):
        first.train_unit(unit), second.train_unit(unit), other.train_unit(unit)
    assert torch.equal(flat(first.model), flat(second.model))
    assert not torch.allclose(flat(first.model), flat(other.model))


# --------------------------------------------------------------------------------------------------
# Accounting and sampling


def test_epsilon_is_the_rdp_accountant_stepped_once_per_round():
    data = synthetic_bundle()
    trainer = make_trainer(data, num_clients=12, client_sample_rate=0.25, noise_multiplier=1.1,
                           rounds=6)
    reference = RDPAccountant()
    for unit in range(6):
        trainer.train_unit(unit)
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
        metrics = trainer.privacy_metrics()
        assert metrics["privacy/steps"] == unit + 1
        expected = reference.get_epsilon(delta=1e-5)
        assert metrics["privacy/epsilon"] == pytest.approx(expected, rel=1e-9)
    assert metrics["privacy/sample_rate"] == 0.25
    assert metrics["privacy/noise_multiplier"] == 1.1
    assert metrics["privacy/delta"] == 1e-5


def test_epsilon_with_the_prv_accountant():
    trainer = make_trainer(synthetic_bundle(), client_sample_rate=0.25, noise_multiplier=1.1,
                           accountant="prv")
    for unit in range(3):
        trainer.train_unit(unit)
    reference = PRVAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
    assert trainer.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)


@pytest.mark.parametrize("rounds,rate", [(100, 0.05), (400, 0.02)])
def test_target_epsilon_is_reached_at_or_just_below_the_target(rounds, rate):
    trainer = make_trainer(synthetic_bundle(), noise_multiplier=None, target_epsilon=3.0,
                           rounds=rounds, client_sample_rate=rate)
    reference = RDPAccountant()
    for _ in range(rounds):
        reference.step(noise_multiplier=trainer.noise_multiplier, sample_rate=rate)
    epsilon = reference.get_epsilon(delta=1e-5)
    # Opacus' search stops within its tolerance (0.01) below the target.
    assert 3.0 - 0.02 <= epsilon <= 3.0


def test_zero_noise_reports_infinite_epsilon():
    trainer = make_trainer(synthetic_bundle(), noise_multiplier=0.0)
    assert trainer.privacy_metrics()["privacy/epsilon"] == 0.0  # nothing released yet
    trainer.train_unit(0)
    assert trainer.privacy_metrics()["privacy/epsilon"] == math.inf


def test_empty_rounds_are_rounds_and_still_release_noise():
    trainer = make_trainer(synthetic_bundle(), num_clients=4, client_sample_rate=0.05, rounds=10)
    rows = []
    for unit in range(10):
        before = flat(trainer.model)
        rows.append(trainer.train_unit(unit))
        if rows[-1]["federated/clients"] == 0:
            assert rows[-1]["dp/clip_fraction"] is None and rows[-1]["train/loss"] is None
            assert rows[-1]["dp/clip_fraction/group=minority"] is None
            assert rows[-1]["dp/update_norm/group=majority"] is None
            assert not torch.equal(flat(trainer.model), before)  # the noise is still applied
    assert any(row["federated/clients"] == 0 for row in rows)  # P(empty round) = 0.95⁴ ≈ 0.81
    assert trainer.privacy_metrics()["privacy/steps"] == 10


def test_clients_join_independently_with_probability_q():
    trainer = make_trainer(synthetic_bundle(), num_clients=12, client_sample_rate=0.3)
    draws = 3000
    joined = np.zeros(12)
    sizes = []
    for _ in range(draws):
        chosen = trainer.sample_clients()
        joined[chosen] += 1
        sizes.append(len(chosen))
    # Round size ~ Binomial(12, 0.3): mean 3.6, variance 2.52; 5 standard errors of each estimate.
    assert abs(np.mean(sizes) - 3.6) < 5 * math.sqrt(2.52 / draws)
    assert abs(np.var(sizes) - 2.52) < 0.3
    assert np.all(np.abs(joined / draws - 0.3) < 5 * math.sqrt(0.21 / draws))


# --------------------------------------------------------------------------------------------------
# Partitions


def partition_data(n=1000, minority_share=0.13, positive_rate=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(n) < positive_rate).astype(np.int64), rng.random(n) < minority_share


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "by_group"])
def test_every_example_is_assigned_exactly_once(scheme):
    labels, minority = partition_data(n=1003)
    parts = partition_clients(labels, minority, num_clients=40, scheme=scheme, seed=0,
                              dirichlet_alpha=0.3)
    assert len(parts) == 40
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1003))
    counts = partition_counts(parts, labels, minority)
    assert sum(row["size"] for row in counts) == 1003
    assert sum(row["minority"] for row in counts) == minority.sum()
    assert sum(row["positive"] for row in counts) == labels.sum()
    assert sorted(row["size"] for row in counts) == [25] * 37 + [26] * 3
    again = partition_clients(labels, minority, num_clients=40, scheme=scheme, seed=0,
                              dirichlet_alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_clients(labels, minority, num_clients=40, scheme=scheme, seed=1,
                              dirichlet_alpha=0.3)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_by_group_packs_the_minority_on_the_fewest_clients():
    labels, minority = partition_data(n=1000, minority_share=0.13)
    n_min = int(minority.sum())
    parts = partition_clients(labels, minority, num_clients=50, scheme="by_group", seed=0)
    summary = partition_summary(partition_counts(parts, labels, minority))
    assert summary["clients_with_minority"] == math.ceil(n_min / 20)
    iid_parts = partition_clients(labels, minority, num_clients=50, scheme="iid", seed=0)
    iid = partition_summary(partition_counts(iid_parts, labels, minority))
    assert iid["clients_with_minority"] > 40  # spread over nearly every client otherwise
    # Every minority-holding client but the last is minority only.
    shares = sorted((minority[p].mean() for p in parts), reverse=True)
    assert shares[: n_min // 20] == [1.0] * (n_min // 20)


def test_dirichlet_skews_labels_more_at_smaller_alpha():
    labels, minority = partition_data(n=3000, positive_rate=0.3)

    def skew(alpha):
        parts = partition_clients(labels, minority, num_clients=100, scheme="dirichlet", seed=0,
                                  dirichlet_alpha=alpha)
        return np.mean([abs(labels[p].mean() - labels.mean()) for p in parts])

    iid = partition_clients(labels, minority, num_clients=100, scheme="iid", seed=0)
    iid_skew = np.mean([abs(labels[p].mean() - labels.mean()) for p in iid])
    assert skew(0.05) > skew(1.0) > skew(100.0)
    assert skew(0.05) > 0.3  # nearly one label per client
    assert skew(100.0) < 2 * iid_skew  # large α is close to iid


# --------------------------------------------------------------------------------------------------
# Wiring and end to end


def test_builder_is_registered_and_refuses_fixed_size_sampling():
    assert TRAINERS.get("dpfedavg") is build_federated_trainer
    config = validated_config({
        "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "poisson_sampling": False},
        "federated": {"num_clients": 10}, "training": {"batch_size": 8}})
    with pytest.raises(ConfigError, match="poisson_sampling"):
        build_federated_trainer(config, MLP(6, [4]), synthetic_bundle(), "cpu")


@pytest.mark.slow
def test_params_file_runs_end_to_end(tmp_path):
    overlay = ["federated.rounds=3", "federated.eval_every=2", "federated.num_clients=200",
               "evaluation.bootstrap_resamples=20", "logging.wandb.mode=disabled",
               "logging.progress=never", f"output_dir={tmp_path}", "name=fed_smoke"]
    command = [sys.executable, "running.py", "--params", "utils/params_adult_fedavg.yaml"]
    for item in overlay:
        command += ["--set", item]
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "fed_smoke"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "predictions.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["privacy/steps"] for row in rows] == [1, 2, 3]
    assert "test/accuracy" in rows[1] and "test/accuracy" not in rows[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "dpfedavg"
    assert 0 < summary["privacy/epsilon"] < 3.0  # 3 of the 100 planned rounds
    assert summary["trainer/info"]["num_clients"] == 200
    for group in ("minority", "majority"):
        assert 0 <= summary[f"dp/clip_fraction/group={group}"] <= 1
        assert summary[f"dp/update_norm/group={group}"] > 0


def test_the_server_mechanism_resolves_accounts_and_resumes_as_one_engine():
    """privacy.dpfedavg.DPFedAvg: σ from the one resolver over the planned rounds, one accountant
    entry per run of rounds (ε and ε parts as the DP-SGD engines compute them), and a restored
    state that continues the same sampling and noise draws."""
    privacy = PrivacyConfig(mode="dpfedavg", target_epsilon=3.0, max_grad_norm=0.5)

    def mechanism():
        return DPFedAvg.from_config(privacy, num_clients=12, sample_rate=0.25, rounds=10, seed=3)

    server = mechanism()
    assert server.noise_multiplier == resolve_noise_multiplier(
        noise_multiplier=None, target_epsilon=3.0, delta=1e-5, sample_rate=0.25, steps=10,
        accountant="rdp")
    assert server.expected_clients == 3.0
    updates = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        server.sample_clients()
        server.aggregate(updates)
    assert server.steps == server.rounds_done == 4
    expected = epsilon_of_history([(server.noise_multiplier, 0.25, 4)], delta=1e-5,
                                  accountant="rdp")
    assert server.epsilon(1e-5) == expected
    assert server.epsilon_parts(1e-5) == {"training": expected}
    resumed = mechanism()
    resumed.load_state_dict(server.state_dict())
    assert resumed.rounds_done == 4 and resumed.epsilon(1e-5) == expected
    assert np.array_equal(resumed.sample_clients(), server.sample_clients())
    torch.testing.assert_close(resumed.aggregate(updates).result.update,
                               server.aggregate(updates).result.update, rtol=0, atol=0)
