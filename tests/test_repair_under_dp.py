"""Repair methods under DP-SGD: the sound forms keep the guarantee the run reports.

- the per-example form of a gap is, in expectation, the gap it replaces;
- with noise 0 and a huge bound a DP-SGD step of every sound method equals the non-private step of
  the same loss, and Opacus' per-example gradients equal a per-example loop's, regularizer included;
- removing one (extreme) example changes no other example's gradient, and its own clipped gradient
  is at most C: the sum's sensitivity is C;
- the noisy counts have the configured noise (KS tests, seeded and secure);
- ε with the count release equals the accountant composed by hand and Google's dp_accounting, its
  parts are logged, and target_epsilon leaves room for the release;
- a method that needs the public validation split, or a budget the release alone spends, is an
  exit-2 error that writes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
import yaml
from dp_accounting.rdp import RdpAccountant
from scipy import stats
from torch import nn
from torch.nn import functional as F

from dataset.base import DataBundle
from privacy import ENGINES, dpsgd
from privacy.accounting import epsilon_of_history
from privacy.releases import CELLS, PrivateStatistics, cell_counts
from tests.conftest import main_on_yaml
from training.repair import METHODS
from training.repair.base import (
    Batch,
    cell_mean_matrix,
    gap_of_means,
    pair_inverse_shares,
    pair_signs,
    per_example_gap,
)
from training.repair.reweighing import reweighing_weights, weights_from_counts
from utils.config import PrivacyConfig

# Every method sound under DP-SGD, from the registry: a method that stops refusing is tested here.
SOUND = [name for name in METHODS if not METHODS.get(name).refuses.get("dpsgd")]


def tabular(n=96, d=6, seed=0, val=48):
    generator = np.random.default_rng(seed)
    x = generator.normal(size=(n + val, d)).astype(np.float32)
    minority = generator.random(n + val) < 0.3
    y = ((x[:, 0] + 0.8 * minority + 0.3 * generator.normal(size=n + val)) > 0).astype(np.int64)
    return DataBundle(x_train=x[:n], y_train=y[:n], minority_train=minority[:n],
                      x_test=x[n:], y_test=y[n:], minority_test=minority[n:], input_shape=(d,),
                      x_val=x[n:], y_val=y[n:], minority_val=minority[n:])


def dp_method(name, target, data):
    cls = METHODS.get(name)
    method = cls(cls.Settings(), target=target, rng=np.random.default_rng(0), name=name,
                 privacy_mode="dpsgd", public_examples=None,
                 statistics=PrivateStatistics(counts_noise_multiplier=2.0, seed=0))
    return method, method.prepare(data)


def network(d=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


class Step:
    """One step of ``method`` on the whole of ``data``'s training set, private or not."""

    def __init__(self, method, data, model):
        self.method, self.model = method, model
        self.x = torch.as_tensor(data.x_train)
        self.y = torch.as_tensor(data.y_train, dtype=torch.float32)
        self.minority = torch.as_tensor(data.minority_train)
        self.weights = (torch.ones(len(self.y)) if data.weights_train is None
                        else torch.as_tensor(data.weights_train))
        self.activations = {}
        if method.wants_activations:
            for name, module in method.hidden_layers(model).items():
                module.register_forward_hook(
                    lambda m, i, o, name=name: self.activations.__setitem__(name, o)
                    if m.training else None)

    def public(self, private=None):
        if not self.method.reads_public:
            return
        self.model.eval()
        with private.hooks_off() if private is not None else contextlib.nullcontext():
            self.method.before_step(self.model)
        self.model.train()

    def loss(self, forward, rows):
        logits = forward(self.x[rows]).reshape(-1)
        y = self.y[rows]
        batch = Batch(logits=logits, targets=y, minority=self.minority[rows],
                      weights=self.weights[rows], activations=self.activations,
                      losses=F.binary_cross_entropy_with_logits(logits, y, reduction="none"))
        return self.method.loss(batch, self.model).total()

    def private(self, bound, rows=None, engine="opacus"):
        """(parameter change of one noise-free DP-SGD step with lr 1, per-example gradients, the
        engine's per-example norms)."""
        rows = torch.arange(len(self.y)) if rows is None else rows
        before = flat(self.model)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        loader = dpsgd.index_loader(len(rows), len(rows), shuffle=False)
        # The batch is given, not sampled: the loader's sampling is not used.
        config = PrivacyConfig(mode="dpsgd", noise_multiplier=0.0, max_grad_norm=bound,
                               poisson_sampling=False)
        private = ENGINES.get(engine)(self.model, optimizer, loader, config, epochs=1,
                                      noise_generator=torch.Generator().manual_seed(1))
        self.public(private)
        private.optimizer.zero_grad()
        self.loss(private.module, rows).backward()
        per_example = (torch.cat([p.grad_sample.reshape(len(rows), -1)
                                  for p in private.module.parameters()], dim=1).detach()
                       if engine == "opacus" else None)
        norms = private.per_example_norms().detach()
        private.optimizer.step()
        return flat(self.model) - before, per_example, norms


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("target", ["dp", "eo"])
def test_the_per_example_gap_is_the_gap_in_expectation(target):
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(500, 7, generator=generator)
    minority = torch.rand(500, generator=generator) < 0.2
    targets = (torch.rand(500, generator=generator) < 0.4).float()
    shares = cell_counts(targets.numpy(), minority.numpy()) / 500  # exact shares
    signs = pair_signs(values, minority, targets, target)
    inverse = torch.as_tensor(pair_inverse_shares(shares, target), dtype=torch.float32)
    terms = per_example_gap(values, minority, targets, target, signs, inverse)
    assert terms.shape == (500,)
    # The mean over the whole set, with the true signs and shares, is the batch gap itself.
    expected = gap_of_means(cell_mean_matrix(minority, targets, target), values)
    assert torch.allclose(terms.mean(), expected, atol=1e-5)
    # Each term reads only its own example: changing example 0 changes term 0 alone.
    changed = values.clone()
    changed[0] += 5
    moved = per_example_gap(changed, minority, targets, target, signs, inverse) != terms
    assert moved.tolist() == [True] + [False] * 499


@pytest.mark.parametrize("target", ["dp", "eo"])
@pytest.mark.parametrize("name", SOUND)
def test_zero_noise_huge_bound_equals_the_non_private_step_and_a_per_example_loop(name, target):
    data = tabular()
    method, prepared = dp_method(name, target, data)
    private = Step(method, prepared, network())
    update, per_example, norms = private.private(bound=1e6)
    fast_method, prepared = dp_method(name, target, data)
    fast_update, _, fast_norms = Step(fast_method, prepared, network()).private(bound=1e6,
                                                                                engine="fast")
    torch.testing.assert_close(fast_update, update, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast_norms, norms, rtol=1e-4, atol=1e-6)

    reference_method, prepared = dp_method(name, target, data)
    reference = Step(reference_method, prepared, network())
    reference.public()
    optimizer = torch.optim.SGD(reference.model.parameters(), lr=1.0)
    before = flat(reference.model)
    reference.loss(reference.model, torch.arange(len(reference.y))).backward()
    optimizer.step()
    assert torch.allclose(update, flat(reference.model) - before, atol=1e-5)

    # Opacus' per-example gradients are each example's own gradient, regularizer included.
    loop_method, prepared = dp_method(name, target, data)
    loop = Step(loop_method, prepared, network())
    loop.public()
    for i in range(0, len(loop.y), 17):
        loop.model.zero_grad()
        loop.loss(loop.model, torch.tensor([i])).backward()
        own = torch.cat([p.grad.reshape(-1) for p in loop.model.parameters()])
        assert torch.allclose(per_example[i], own, atol=1e-5), i


@pytest.mark.parametrize("target", ["dp", "eo"])
@pytest.mark.parametrize("name", SOUND)
def test_one_extreme_example_moves_the_clipped_sum_by_at_most_the_bound(name, target):
    data = tabular()
    x = data.x_train.copy()
    x[0] *= 100.0  # an extreme minority example
    minority = data.minority_train.copy()
    minority[0] = True
    data = dataclasses.replace(data, x_train=x, minority_train=minority)
    bound = 0.05
    grads = {}
    for key, rows in (("with", torch.arange(len(x))), ("without", torch.arange(1, len(x)))):
        method, prepared = dp_method(name, target, data)
        _, grads[key], _ = Step(method, prepared, network()).private(bound=bound, rows=rows)
    # The others' gradients do not depend on example 0 (no coupling through the batch) ...
    assert torch.allclose(grads["with"][1:], grads["without"], atol=1e-6)
    # ... so the clipped sums differ by example 0's clipped gradient alone, at most C.
    def clipped_sum(g):
        return (g * (bound / g.norm(dim=1, keepdim=True)).clamp(max=1.0)).sum(0)
    assert grads["with"][0].norm() > bound  # it was clipped
    assert (clipped_sum(grads["with"]) - clipped_sum(grads["without"])).norm() <= bound * 1.0001


def test_reweighing_under_dp_uses_the_noisy_counts():
    data = tabular(n=400)
    method, prepared = dp_method("reweighing", "dp", data)
    noisy = np.maximum(method.statistics.noisy_cell_counts(data.y_train, data.minority_train), 1)
    assert np.allclose(prepared.weights_train,
                       weights_from_counts(noisy, data.y_train, data.minority_train))
    assert not np.allclose(prepared.weights_train,
                           reweighing_weights(data.y_train, data.minority_train))
    assert [r.name for r in method.releases()] == ["counts"]  # released once, however often read
    method.statistics.cell_shares(data.y_train, data.minority_train)
    assert len(method.releases()) == 1


@pytest.mark.parametrize("secure", [False, True])
def test_the_noisy_counts_have_the_configured_noise(secure):
    y = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 1])
    minority = np.array([1, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    exact = cell_counts(y, minority)
    # (minority, 0), (minority, 1), (majority, 0), (majority, 1), counted by hand.
    assert CELLS == ((True, 0), (True, 1), (False, 0), (False, 1))
    assert exact.tolist() == [2, 1, 3, 4]
    sigma = 3.0
    noise = np.concatenate([
        PrivateStatistics(counts_noise_multiplier=sigma, seed=seed, secure=secure)
        .noisy_cell_counts(y, minority) - exact for seed in range(1500)])
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-3
    # A seeded release is its seed's (a resumed run redraws the same one); a secure one is not.
    def release(seed):
        return PrivateStatistics(counts_noise_multiplier=sigma, seed=seed,
                                 secure=secure).noisy_cell_counts(y, minority)
    assert np.array_equal(release(7), release(7)) is not secure
    assert not np.array_equal(release(7), release(8))


TINY = """\
name: dprepair
device: cpu
data: {name: synthetic, minority_share: 0.2, train_size: 1200, val_fraction: 0.1, validation_public: true}
model: {name: mlp, hidden: [16, 16]}
training: {epochs: 2, batch_size: 200}
privacy: {mode: dpsgd, noise_multiplier: 1.0, counts_noise_multiplier: 4.0}
evaluation: {bootstrap_resamples: 20}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


def run_cli(tmp_path: Path, *overrides: str) -> int:
    return main_on_yaml(tmp_path, TINY, *overrides)


def summary(tmp_path: Path, name: str = "dprepair") -> dict:
    return json.loads((tmp_path / "out" / name / "summary.json").read_text())


def test_epsilon_composes_the_count_release_with_the_steps(tmp_path):
    assert run_cli(tmp_path, "fairness.method=reweighing") == 0
    result = summary(tmp_path)
    sigma, q, steps = (result["privacy/noise_multiplier"], result["privacy/sample_rate"],
                       result["privacy/steps"])
    delta = result["privacy/delta"]
    by_hand = epsilon_of_history([(sigma, q, steps), (4.0, 1.0, 1)], delta=delta,
                                 accountant="rdp")
    assert result["privacy/epsilon"] == pytest.approx(by_hand, rel=1e-9)
    # Google's dp_accounting, an independent RDP implementation, composes the same two mechanisms.
    google = RdpAccountant()
    google.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                   steps)
    google.compose(dp_accounting.GaussianDpEvent(4.0))
    assert result["privacy/epsilon"] == pytest.approx(google.get_epsilon(delta), rel=1e-3)
    # The parts: each alone, and their composition below their sum.
    training = epsilon_of_history([(sigma, q, steps)], delta=delta, accountant="rdp")
    counts = epsilon_of_history([(4.0, 1.0, 1)], delta=delta, accountant="rdp")
    assert result["privacy/epsilon_parts/training"] == pytest.approx(training, rel=1e-9)
    assert result["privacy/epsilon_parts/counts"] == pytest.approx(counts, rel=1e-9)
    assert training < result["privacy/epsilon"] < training + counts
    # A method without releases logs no parts.
    assert run_cli(tmp_path, "name=plain") == 0
    assert not any(key.startswith("privacy/epsilon_parts") for key in summary(tmp_path, "plain"))


def test_target_epsilon_leaves_room_for_the_release(tmp_path):
    common = ("privacy.noise_multiplier=null", "privacy.target_epsilon=2.0")
    assert run_cli(tmp_path, "name=plain", *common) == 0
    assert run_cli(tmp_path, "name=reweighed", "fairness.method=reweighing", *common) == 0
    plain, reweighed = summary(tmp_path, "plain"), summary(tmp_path, "reweighed")
    assert 1.98 <= reweighed["privacy/epsilon"] <= 2.0
    assert reweighed["privacy/noise_multiplier"] > plain["privacy/noise_multiplier"]


def test_a_release_that_spends_the_budget_is_an_error(tmp_path, capsys):
    code = run_cli(tmp_path, "fairness.method=reweighing", "privacy.noise_multiplier=null",
                   "privacy.target_epsilon=0.5", "privacy.counts_noise_multiplier=1.0")
    err = capsys.readouterr().err
    assert code == 2
    assert "privacy.target_epsilon 0.5" in err and "privacy.counts_noise_multiplier" in err
    assert not (tmp_path / "out" / "dprepair" / "summary.json").exists()


@pytest.mark.parametrize("name", [n for n in SOUND if n not in ("none", "roc", "reweighing")])
def test_a_public_form_without_a_validation_split_is_an_error(tmp_path, capsys, name):
    code = run_cli(tmp_path, f"fairness.method={name}", "data.val_fraction=0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: fairness.method {name!r} under privacy.mode 'dpsgd'")
    assert "data.val_fraction" in err[0]
    assert not (tmp_path / "out" / "dprepair" / "summary.json").exists()


@pytest.mark.parametrize("name", SOUND)
def test_every_sound_method_trains_under_dpsgd_and_changes_the_model(tmp_path, name):
    assert run_cli(tmp_path, f"fairness.method={name}", "fairness.mode=eo") == 0
    result = summary(tmp_path)
    assert result["privacy/private"] is True and np.isfinite(result["privacy/epsilon"])
    assert 0.4 < result["test/accuracy"] <= 1
    releases = name in ("reweighing", "gapreg", "runner")
    assert ("privacy/epsilon_parts/counts" in result) == releases


def test_the_dp_form_is_not_the_batch_form():
    """The decomposed loss differs from the batch-gap loss (signs and shares are fixed, public and
    released quantities), and the non-private run keeps the batch form."""
    data = tabular(n=200)
    method, prepared = dp_method("gapreg", "dp", data)
    plain_cls = METHODS.get("gapreg")
    plain = plain_cls(plain_cls.Settings(), target="dp", rng=np.random.default_rng(0))
    model = network()
    step = Step(method, prepared, model)
    step.public()
    rows = torch.arange(200)
    dp_loss = step.loss(model, rows)
    batch_step = Step(plain, plain.prepare(data), copy.deepcopy(model))
    assert plain.reads_public is False and method.reads_public is True
    assert not torch.isclose(dp_loss, batch_step.loss(batch_step.model, rows))


def test_the_coupling_check_catches_the_batch_form():
    """The batch-gap form, fed to Opacus, fails the check above: removing the extreme example moves
    the other examples' gradients (the reason it refuses without its per-example form)."""
    data = tabular()
    x, minority = data.x_train.copy(), data.minority_train.copy()
    x[0], minority[0] = x[0] * 100.0, True
    data = dataclasses.replace(data, x_train=x, minority_train=minority)
    grads = {}
    for key, rows in (("with", torch.arange(len(x))), ("without", torch.arange(1, len(x)))):
        cls = METHODS.get("gapreg")
        method = cls(cls.Settings(), target="dp", rng=np.random.default_rng(0))
        _, grads[key], _ = Step(method, method.prepare(data), network()).private(bound=0.05,
                                                                                 rows=rows)
    assert not torch.allclose(grads["with"][1:], grads["without"], atol=1e-6)


# --- DP-FedAvg: the methods that train inside the clients --------------------------------------

IN_CLIENTS = [name for name in METHODS if not METHODS.get(name).refuses.get("dpfedavg")
              and (METHODS.get(name).trains_in_clients or name == "reweighing")]


def fedavg_method(name, target):
    cls = METHODS.get(name)
    return cls(cls.Settings(), target=target, rng=np.random.default_rng(0), name=name,
               privacy_mode="dpfedavg")


def client_updates(name, target, x, y, minority, clients):
    """Each client's local update under ``name`` (3 local epochs, batches of 8), by the loop."""
    from training.federated import client_table, draw_local_orders, local_updates_loop

    method = fedavg_method(name, target)
    model = network(x.shape[1])
    weights = np.ones(len(y), dtype=np.float32)
    for indices in clients:
        own = method.client_weights(y[indices].numpy(), minority[indices].numpy())
        weights[indices] = 1 if own is None else own
    table, sizes = client_table(clients)
    orders = draw_local_orders(table, sizes, 3, generator=torch.Generator().manual_seed(0))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    updates, _, _ = local_updates_loop(
        model, params, x, y, orders, lr=0.2, batch_size=8, weights=torch.as_tensor(weights),
        minority=minority, method=method if method.trains_in_clients else None)
    return updates


@pytest.mark.parametrize("target", ["dp", "eo"])
@pytest.mark.parametrize("name", IN_CLIENTS)
def test_a_client_update_reads_only_its_own_data(name, target):
    """User-level sensitivity: making one client's data extreme changes that client's update only,
    and the server's clipping bounds it by S whatever the method computed."""
    from privacy.dpfedavg import dp_fedavg_aggregate

    data = tabular(n=96)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train, dtype=torch.float32)
    minority = torch.as_tensor(data.minority_train)
    clients = [np.arange(0, 32), np.arange(32, 64), np.arange(64, 96)]
    before = client_updates(name, target, x, y, minority, clients)
    extreme_x, extreme_minority = x.clone(), minority.clone()
    extreme_x[32:40] *= 50.0
    extreme_minority[32:48] = ~extreme_minority[32:48]
    after = client_updates(name, target, extreme_x, y, extreme_minority, clients)
    assert torch.allclose(before[[0, 2]], after[[0, 2]], atol=1e-6)
    assert not torch.allclose(before[1], after[1])
    bound = 0.01

    def clipped_sum(updates):
        return dp_fedavg_aggregate(updates, max_grad_norm=bound, noise_multiplier=0.0,
                                   expected_clients=1.0).update
    # Adding or removing the client moves the sum by at most S; changing its data, by 2S.
    assert (clipped_sum(after) - clipped_sum(after[[0, 2]])).norm() <= bound * 1.0001
    assert (clipped_sum(before) - clipped_sum(after)).norm() <= 2 * bound * 1.0001


def test_vectorized_clients_apply_the_weights_as_the_loop_does():
    from training.federated import (
        client_table,
        draw_local_orders,
        local_updates_loop,
        local_updates_vectorized,
    )

    data = tabular(n=90)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train, dtype=torch.float32)
    weights = torch.as_tensor(np.random.default_rng(0).uniform(0.2, 3.0, 90), dtype=torch.float32)
    table, sizes = client_table([np.arange(0, 10), np.arange(10, 47), np.arange(47, 90)])
    orders = draw_local_orders(table, sizes, 2, generator=torch.Generator().manual_seed(0))
    model = network()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop, _, _ = local_updates_loop(model, params, x, y, orders, lr=0.2, batch_size=8,
                                    weights=weights)
    batched, _, _ = local_updates_vectorized(model, params, x, y, orders, lr=0.2, batch_size=8,
                                             weights=weights)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)
    plain, _, _ = local_updates_loop(model, params, x, y, orders, lr=0.2, batch_size=8)
    assert not torch.allclose(plain, loop)


FEDERATED = ["privacy.mode=dpfedavg", "federated.num_clients=20", "federated.rounds=6",
             "federated.eval_every=3", "training.batch_size=16"]


@pytest.mark.parametrize("name", [n for n in METHODS if not METHODS.get(n).refuses.get("dpfedavg")])
def test_every_method_sound_under_dpfedavg_trains_end_to_end(tmp_path, name):
    assert run_cli(tmp_path, f"fairness.method={name}", "fairness.mode=eo", *FEDERATED) == 0
    result = summary(tmp_path)
    assert result["privacy/private"] is True and np.isfinite(result["privacy/epsilon"])
    assert not any(key.startswith("privacy/epsilon_parts") for key in result)  # no release


@pytest.mark.parametrize("secure", [False, True])
def test_a_resumed_run_counts_every_release_it_drew(tmp_path, secure):
    """A seeded run redraws the same release on resume (one release); a secure_rng run cannot, so
    the release before the interruption and the new one are both composed into ε."""
    from training.experiment import build_components
    from training.validation import validated_config

    raw = yaml.safe_load(TINY)
    raw["fairness"] = {"method": "reweighing"}
    raw["privacy"]["secure_rng"] = secure
    config = validated_config(raw)
    _, _, first = build_components(config, torch.device("cpu"))
    state = first.state_dict()
    _, _, resumed = build_components(config, torch.device("cpu"))
    resumed.load_state_dict(state)
    assert [r.name for r in resumed.private.releases] == ["counts"] * (2 if secure else 1)
    assert resumed.privacy_metrics()["privacy/epsilon"] == pytest.approx(epsilon_of_history(
        [*resumed.private.accountant.history, *[(4.0, 1.0, 1)] * (2 if secure else 1)],
        delta=config.privacy.delta, accountant="rdp"))
