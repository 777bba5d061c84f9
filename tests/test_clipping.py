"""The clipping rules (``privacy.clipping``) against the papers' pseudocode, and their privacy.

- every rule, step after step, gives the factors and the noise-free update of a per-example loop
  written from its paper's algorithm (Xu et al. 2021; Esipova et al. 2023; Andrew et al. 2021;
  Zhao et al. 2025; Bu et al. 2023), its releases drawn in the documented order;
- the noise on the sum has standard deviation σ·S, S the step's sensitivity (KS tests; DPSGD-F's
  S is its largest group bound, not C0);
- the sensitivity: no example's scaled gradient is longer than S, on adversarial norms (huge,
  exactly at C or Z, an empty group, an empty batch), and removing one example from a batch
  changes the noise-free sum by that example's scaled gradient alone, at most S;
- flat is the engine as it was before the rules, bit for bit;
- ε of a run with a rule's releases equals dp_accounting's RDP of the same Poisson-sampled
  composition of Gaussians (the joint mechanism), its parts are logged, and a target ε is met with
  the releases included; under DP-FedAvg too;
- the refusals go through ``running.main``, parametrized over the registry, and write nothing;
- a resumed run ends identical (the rule's bound and generator are in the checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import dp_accounting
import pytest
import torch
import yaml
from dp_accounting.rdp import RdpAccountant
from scipy import stats
from torch.nn import functional as F

import running
from models import build_model
from privacy import clipping as clipping_module
from privacy.accounting import effective_noise_multiplier, epsilon_of_history, noise_for_epsilon
from privacy.clipping import (
    NEEDS_FAST_ENGINE,
    NEEDS_PRIVACY,
    NO_INDIVIDUAL_ACCOUNTING,
    RULES,
    AdaptiveSettings,
    AutomaticSettings,
    BoundedAdaptiveSettings,
    DpsgdFSettings,
    GlobalAdaptSettings,
    GlobalSettings,
)
from privacy.fast_dpsgd import FastDPOptimizer, FastEngine
from privacy.noise import SecureRandom
from tests.conftest import main_on_yaml, straight_and_resumed
from training.stacking import why_not_stackable
from training.validation import validated_config
from utils.config import ModelConfig

C = 0.8  # privacy.max_grad_norm of the unit tests; the batch's norms straddle it
N, EXPECTED = 24, 20.0  # examples, and the expected batch size the rules divide by
SETTINGS = {
    "flat": None,
    "dpsgd_f": DpsgdFSettings(counts_noise_multiplier=1.5),
    "global": GlobalSettings(z=1.6),
    "global_adapt": GlobalAdaptSettings(z=1.2, bits_noise_multiplier=1.5, lr_z=0.3, threshold=0.9),
    "adaptive": AdaptiveSettings(target_quantile=0.5, lr=0.5, count_noise_std=1.5),
    "bounded_adaptive": BoundedAdaptiveSettings(target_quantile=0.5, lr=0.5, count_noise_std=1.5,
                                                lower=0.7, upper=1.1),
    "automatic": AutomaticSettings(gamma=0.05),
}
WITH_RELEASES = [name for name in RULES
                 if RULES.get(name)(None, max_grad_norm=1.0, expected_batch_size=1.0).step_releases()]
OTHERS = [name for name in RULES if name != "flat"]


# --- The papers' algorithms, one example at a time ---------------------------------------------

def reference_step(name, settings, norms, minority, state, normal):
    """One step of rule ``name`` written from its paper's pseudocode, in plain floats: each
    example's factor, the sum's sensitivity, and the state of the next step. ``normal(k)`` draws
    a release's k N(0, 1) values, as the rule documents its draws."""
    s, n = settings, len(norms)
    if name == "flat":
        return [min(1.0, C / (g + 1e-6)) for g in norms], C, state
    if name == "dpsgd_f":  # Xu et al., Alg. 1: per group, above / not above C0, noised, C_k
        sigma = s.counts_noise_multiplier
        above = [sum(1 for g, k in zip(norms, minority) if k == group and g > C)
                 for group in (True, False)]
        below = [sum(1 for g, k in zip(norms, minority) if k == group and g <= C)
                 for group in (True, False)]
        z = normal(4)  # minority above, minority not, majority above, majority not
        noisy_above = [max(0.0, above[0] + sigma * z[0]), max(0.0, above[1] + sigma * z[2])]
        noisy_below = [max(0.0, below[0] + sigma * z[1]), max(0.0, below[1] + sigma * z[3])]
        sizes = [a + b for a, b in zip(noisy_above, noisy_below)]
        ratio = sum(noisy_above) / sum(sizes) if sum(noisy_above) > 0 else 0.0
        bound = {group: C * (1 + (a / size) / ratio) if a > 0 else C
                 for group, a, size in zip((True, False), noisy_above, sizes)}
        return [min(1.0, bound[k] / (g + 1e-6)) for g, k in zip(norms, minority)], \
            max(bound.values()), state
    if name == "global":  # Esipova et al.: scale by C/Z below Z, discard above
        return [C / s.z if g <= s.z else 0.0 for g in norms], C, state
    if name == "global_adapt":  # Esipova et al.: scale below Z, clip above, Z from noisy bits
        z = state["z"]
        factors = [C / z if g <= z else min(1.0, C / (g + 1e-6)) for g in norms]
        bits = sum(1 for g in norms if g > s.threshold * z)
        noisy = (bits + s.bits_noise_multiplier * normal(1)[0]) / EXPECTED
        return factors, C, {"z": z * math.exp(-s.lr_z + noisy)}
    if name in ("adaptive", "bounded_adaptive"):  # Andrew et al., Alg. 1 (centred bits)
        bound = state["bound"]
        factors = [min(1.0, bound / (g + 1e-6)) for g in norms]
        unclipped = sum(1 for g in norms if g <= bound) - n / 2 + s.count_noise_std * normal(1)[0]
        share = unclipped / EXPECTED + 0.5
        new = bound * math.exp(-s.lr * (share - s.target_quantile))
        if name == "bounded_adaptive":  # Zhao et al.: kept within the bounds
            new = min(s.upper, max(s.lower, new))
        return factors, bound, {"bound": new}
    if name == "automatic":  # Bu et al., AUTO-S
        return [C / (g + s.gamma) for g in norms], C, state
    raise KeyError(name)


def initial_state(name, settings):
    if name == "global_adapt":
        return {"z": settings.z}
    if name == "adaptive":
        return {"bound": C}
    if name == "bounded_adaptive":
        return {"bound": min(settings.upper, max(settings.lower, C))}
    return {}


def test_every_rule_has_a_reference_and_unit_settings():
    assert set(SETTINGS) == set(RULES)
    for name in RULES:  # the reference knows every registered rule
        reference_step(name, SETTINGS[name], [1.0], [True], initial_state(name, SETTINGS[name]),
                       lambda k: [0.0] * k)


# --- The engine, step by step ----------------------------------------------------------------

def problem(seed=0):
    """24 examples whose gradient norms straddle C and Z; the minority's (the first 8) longer."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 12, generator=generator)
    y = (torch.rand(N, generator=generator) < 0.5).float()
    minority = torch.arange(N) < 8
    x[minority] *= 3.0
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="mlp", hidden=[16, 8]), (12,))
    model.train()
    return x, y, minority, model


def make_rule(name, settings=None, seed=5, source=None):
    return RULES.get(name)(settings if settings is not None else SETTINGS[name], max_grad_norm=C,
                           expected_batch_size=EXPECTED,
                           source=source if source is not None else torch.Generator().manual_seed(seed))


def make_engine(model, rule, sigma=0.0, noise_seed=9):
    engine = FastEngine(model, max_grad_norm=C, noise_multiplier=sigma, sample_rate=0.5,
                        expected_batch_size=EXPECTED, accountant="rdp",
                        noise_generator=torch.Generator().manual_seed(noise_seed), secure=None,
                        rule=rule)
    return engine, FastDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), engine)


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def engine_step(engine, optimizer, model, x, y, minority, rows):
    """One private step on x[rows] with lr 1: the update (−(Σ cᵢgᵢ + noise) / expected batch)."""
    before = flat_parameters(model)
    optimizer.zero_grad(set_to_none=True)
    engine.batch_groups(minority[rows])
    logits = model(x[rows]).reshape(-1)
    F.binary_cross_entropy_with_logits(logits, y[rows], reduction="none").mean().backward()
    optimizer.step()
    return flat_parameters(model) - before


def per_example_gradients(model, x, y, rows):
    grads = []
    for i in rows.tolist():
        model.zero_grad()
        F.binary_cross_entropy_with_logits(model(x[i:i + 1]).reshape(-1), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    return torch.stack(grads) if grads else torch.zeros(0, sum(p.numel() for p in model.parameters()),
                                                        dtype=torch.float64)


BATCHES = [torch.tensor([0, 1, 2, 5, 8, 9, 12, 13, 20, 23]), torch.tensor([3, 4, 6, 10, 11, 15]),
           torch.tensor([], dtype=torch.int64), torch.tensor([7, 14, 16, 17, 18, 19, 21, 22])]


@pytest.mark.parametrize("name", list(RULES))
def test_each_rule_steps_as_its_papers_per_example_loop(name):
    x, y, minority, model = problem()
    reference_model = copy.deepcopy(model)
    engine, optimizer = make_engine(model, make_rule(name, seed=5))
    generator = torch.Generator().manual_seed(5)  # the rule's source, seeded alike

    def normal(k):
        return torch.randn(k, generator=generator, dtype=torch.float64).tolist()
    state = initial_state(name, SETTINGS[name])
    touched = False
    for rows in BATCHES:
        grads = per_example_gradients(reference_model, x, y, rows)
        norms = grads.norm(dim=1).tolist()
        factors, sensitivity, state = reference_step(name, SETTINGS[name], norms,
                                                     minority[rows].tolist(), state, normal)
        expected = -(torch.tensor(factors, dtype=torch.float64) @ grads) / EXPECTED \
            if len(rows) else torch.zeros(grads.shape[1], dtype=torch.float64)
        update = engine_step(engine, optimizer, model, x, y, minority, rows)
        step = engine.last_step
        torch.testing.assert_close(step.factors.double(), torch.tensor(factors, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-6)
        assert step.sensitivity == pytest.approx(sensitivity, rel=1e-5)
        torch.testing.assert_close(update.double(), expected, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # the reference follows the engine's model
            for p, q in zip(reference_model.parameters(), model.parameters()):
                p.copy_(q)
        touched |= any(f != 1.0 for f in factors)
    assert touched  # the rule acted on these norms
    assert {k: pytest.approx(v) for k, v in state.items()} == {
        k: getattr(engine.rule, k) for k in state}  # the rule's state followed the paper's


def noise_of_one_step(name, sigma, rows):
    """The noise of one step (σ > 0) on a fixed batch, as the twin step without noise (the same
    rule state and release draws) leaves it, in units of the sum; and the step."""
    x, y, minority, model = problem()
    quiet_engine, quiet = make_engine(copy.deepcopy(model), make_rule(name, seed=5))
    loud_engine, loud = make_engine(model, make_rule(name, seed=5), sigma=sigma)
    base = engine_step(quiet_engine, quiet, quiet_engine.model, x, y, minority, rows)
    noisy = engine_step(loud_engine, loud, model, x, y, minority, rows)
    assert loud_engine.last_step.sensitivity == quiet_engine.last_step.sensitivity
    return -(noisy - base).double().numpy() * EXPECTED, loud_engine.last_step


@pytest.mark.parametrize("name", list(RULES))
def test_the_noise_on_the_sum_is_sigma_times_the_steps_sensitivity(name):
    sigma = 2.0
    noise, step = noise_of_one_step(name, sigma, torch.arange(N))
    assert len(noise) > 300
    assert stats.kstest(noise / (sigma * step.sensitivity), "norm").pvalue > 1e-3
    if name == "dpsgd_f":  # the largest group bound, well above C0: σ·C0 would be rejected
        assert step.sensitivity == max(step.bounds) and step.sensitivity > 1.3 * C
        assert stats.kstest(noise / (sigma * C), "norm").pvalue < 1e-6


# --- Sensitivity ------------------------------------------------------------------------------

ADVERSARIAL = torch.tensor([0.0, 1e-30, C, C * (1 + 1e-7), C * (1 - 1e-7), 1.2, 1.2 * (1 + 1e-7),
                            1.6, 1.6 * (1 + 1e-7), 0.5, 1e6, 1e30])


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("groups", ["mixed", "no minority", "no majority", "empty batch"])
@pytest.mark.parametrize("state", [None, "low", "high"])
def test_no_example_is_longer_than_the_sensitivity(name, groups, state):
    rule = make_rule(name)
    if state is not None and hasattr(rule, "z"):  # Z below C as well as far above it
        rule.z = 0.3 if state == "low" else 40.0
    if state is not None and hasattr(rule, "bound"):
        rule.bound = 0.05 if state == "low" else 30.0
    norms = ADVERSARIAL.clone()
    minority = {"mixed": torch.arange(len(norms)) % 2 == 0,
                "no minority": torch.zeros(len(norms), dtype=torch.bool),
                "no majority": torch.ones(len(norms), dtype=torch.bool),
                "empty batch": torch.zeros(len(norms), dtype=torch.bool)}[groups]
    if groups == "empty batch":
        norms, minority = norms[:0], minority[:0]
    for _ in range(3):  # the rule's state moves between the steps
        step = rule.clip(norms, minority)
        lengths = step.factors.double() * norms.double()
        assert torch.all(lengths <= step.sensitivity * (1 + 1e-6))
        assert torch.all(step.factors >= 0)
        # An example of either group, present in the batch or not, is covered: every group's
        # bound is at most S (DPSGD-F's noise takes the largest, absent groups included).
        if name == "dpsgd_f":
            assert step.sensitivity == max(step.bounds)
        assert math.isfinite(step.sensitivity) and step.sensitivity > 0


@pytest.mark.parametrize("name", list(RULES))
def test_removing_one_example_changes_the_sum_by_its_own_scaled_gradient(name, monkeypatch):
    x, y, minority, model = problem()
    x[3] *= 1e4  # an extreme example: its gradient norm is huge
    rows = torch.arange(N)
    # Condition on the step's release (the bounds are post-processing of it): both batches see
    # the same released values, so the difference is the sum's sensitivity alone.
    released = {}

    def fixed(self, values, std):
        return released.setdefault(len(values), [float(v) + 1.0 for v in values])

    monkeypatch.setattr(clipping_module.ClippingRule, "release", fixed)
    whole_engine, whole = make_engine(copy.deepcopy(model), make_rule(name))
    full = engine_step(whole_engine, whole, whole_engine.model, x, y, minority, rows)
    sensitivity = whole_engine.last_step.sensitivity
    for removed in (3, 0, 17):
        engine, optimizer = make_engine(copy.deepcopy(model), make_rule(name))
        kept = rows[rows != removed]
        without = engine_step(engine, optimizer, engine.model, x, y, minority, kept)
        assert engine.last_step.sensitivity == sensitivity
        difference = -(full - without).double() * EXPECTED
        own = per_example_gradients(copy.deepcopy(model), x, y, torch.tensor([removed]))[0]
        factor = float(whole_engine.last_step.factors[removed])
        assert float(difference.norm()) <= sensitivity * (1 + 1e-4)
        torch.testing.assert_close(difference, factor * own, rtol=1e-3,
                                   atol=1e-5 * max(1.0, float(own.norm()) * factor))


# --- Flat is the engine as it was ------------------------------------------------------------

def pre_registry_privatize(engine):
    """The fast engine's step before the clipping rules existed (its operations, in its order:
    the factors' formula written out, one flat noise draw, each parameter's clipped sum
    accumulated onto its slice as the engine's forms do, one division by qN)."""
    grads, norms, batch = engine._per_example()
    weights = (engine.max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * batch
    std = engine.noise_multiplier * engine.max_grad_norm
    total = sum(p.numel() for p in engine.params)
    flat = torch.normal(0.0, std, size=(total,), generator=engine.noise_generator)
    start = 0
    for p in engine.params:
        piece = flat[start:start + p.numel()]
        if p in grads:
            grads[p].add_clipped_sum(piece, weights)
        p.grad = piece.view_as(p)
        start += p.numel()
    flat.div_(engine.expected_batch_size)
    for recorder in engine.recorders:
        recorder.clear()
    engine._current = None
    engine.accountant.step(noise_multiplier=engine.noise_multiplier, sample_rate=engine.sample_rate)


def test_flat_is_bit_identical_to_the_engine_before_the_rules(monkeypatch):
    x, y, minority, model = problem()
    runs = []
    for legacy in (False, True):
        twin = copy.deepcopy(model)
        engine = FastEngine(twin, max_grad_norm=C, noise_multiplier=1.3, sample_rate=0.25,
                            expected_batch_size=6.0, accountant="rdp",
                            noise_generator=torch.Generator().manual_seed(3), secure=None)
        optimizer = FastDPOptimizer(torch.optim.Adam(twin.parameters(), lr=0.01), engine)
        if legacy:
            monkeypatch.setattr(engine, "privatize", lambda engine=engine: pre_registry_privatize(engine))
        for rows in BATCHES * 3:
            engine_step(engine, optimizer, twin, x, y, minority, rows)
        runs.append((flat_parameters(twin), list(engine.accountant.history)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


# --- Runs: accounting, diagnostics, refusals, resume ---------------------------------------------

TINY = """\
name: rule
device: cpu
data: {name: synthetic, minority_share: 0.2, train_size: 1200, val_fraction: 0.1,
       validation_public: true}
model: {name: mlp, hidden: [16, 16]}
training: {epochs: 2, batch_size: 200}
privacy: {mode: dpsgd, noise_multiplier: 1.0, counts_noise_multiplier: 4.0, max_grad_norm: 0.5}
evaluation: {bootstrap_resamples: 20}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


def run_cli(tmp_path: Path, *overrides: str) -> int:
    return main_on_yaml(tmp_path, TINY, *overrides)


def summary(tmp_path: Path, name: str = "rule") -> dict:
    return json.loads((tmp_path / "out" / name / "summary.json").read_text())


def google_joint_epsilon(sigma, release_multipliers, q, steps, delta, one_off=()):
    """dp_accounting's RDP ε of ``steps`` Poisson-sampled steps, each the composition of the
    sum's Gaussian and the releases' on the same sample, then the one-off releases."""
    accountant = RdpAccountant()
    inner = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(sigma),
                                           *(dp_accounting.GaussianDpEvent(s)
                                             for s in release_multipliers)])
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, inner), steps)
    for s in one_off:
        accountant.compose(dp_accounting.GaussianDpEvent(s))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("name", WITH_RELEASES)
def test_epsilon_composes_the_rules_releases_as_dp_accounting_does(tmp_path, name):
    assert run_cli(tmp_path, f"privacy.clipping={name}") == 0
    result = summary(tmp_path)
    sigma, q, steps, delta = (result["privacy/noise_multiplier"], result["privacy/sample_rate"],
                              result["privacy/steps"], result["privacy/delta"])
    config = validated_config(yaml.safe_load((tmp_path / "out/rule/config.yaml").read_text()))
    examples = sum(result[f"data/train_count/group={g}"] for g in ("minority", "majority"))
    rule = RULES.get(name)(config.privacy.clipping_settings, max_grad_norm=0.5,
                           expected_batch_size=int(examples * q))
    multipliers = [release.noise_multiplier for release in rule.step_releases()]
    google = google_joint_epsilon(sigma, multipliers, q, steps, delta)
    assert result["privacy/epsilon"] == pytest.approx(google, rel=2e-3)
    # The parts, each alone over the same steps.
    assert result["privacy/epsilon_parts/training"] == pytest.approx(
        epsilon_of_history([(sigma, q, steps)], delta=delta, accountant="rdp"), rel=1e-9)
    for release in rule.step_releases():
        assert result[f"privacy/epsilon_parts/{release.name}"] == pytest.approx(
            epsilon_of_history([(release.noise_multiplier, q, steps)], delta=delta,
                               accountant="rdp"), rel=1e-9)


def test_under_prv_the_joint_step_is_accounted_as_dp_accountings_pld(tmp_path):
    assert run_cli(tmp_path, "privacy.clipping=global_adapt", "privacy.accountant=prv") == 0
    result = summary(tmp_path)
    sigma, q, steps = (result["privacy/noise_multiplier"], result["privacy/sample_rate"],
                       result["privacy/steps"])
    joint = effective_noise_multiplier(sigma, [10.0])
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(joint)),
                       steps)
    assert result["privacy/epsilon"] == pytest.approx(accountant.get_epsilon(result["privacy/delta"]),
                                                      rel=2e-2)


@pytest.mark.parametrize("name", [n for n in RULES if n not in WITH_RELEASES])
def test_a_rule_without_releases_spends_what_flat_spends(tmp_path, name):
    assert run_cli(tmp_path, f"privacy.clipping={name}", f"name={name}") == 0
    assert run_cli(tmp_path, "name=flat") == 0
    rule, flat = summary(tmp_path, name), summary(tmp_path, "flat")
    assert rule["privacy/epsilon"] == flat["privacy/epsilon"]
    assert not any(key.startswith("privacy/epsilon_parts") for key in rule)


@pytest.mark.parametrize("name", WITH_RELEASES)
def test_a_target_epsilon_is_met_with_the_releases_included(tmp_path, name):
    assert run_cli(tmp_path, f"privacy.clipping={name}", "privacy.noise_multiplier=null",
                   "privacy.target_epsilon=2.0") == 0
    rule = summary(tmp_path)
    assert 1.98 <= rule["privacy/epsilon"] <= 2.0
    flat_sigma = noise_for_epsilon(target_epsilon=2.0, delta=rule["privacy/delta"],
                                   sample_rate=rule["privacy/sample_rate"],
                                   steps=rule["privacy/steps"], accountant="rdp")
    assert rule["privacy/noise_multiplier"] > flat_sigma  # the releases took their share


def test_a_release_that_spends_the_budget_is_an_error(tmp_path, capsys):
    code = run_cli(tmp_path, "privacy.clipping=dpsgd_f", "privacy.noise_multiplier=null",
                   "privacy.target_epsilon=1.0", "privacy.dpsgd_f.counts_noise_multiplier=0.3")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "privacy.target_epsilon 1" in err[0] and "privacy.dpsgd_f.counts_noise_multiplier" in err[0]
    assert not (tmp_path / "out" / "rule").exists()


def test_the_effective_noise_multiplier():
    assert effective_noise_multiplier(1.3) == 1.3  # flat: σ itself, not a round trip
    assert effective_noise_multiplier(1.0, [10.0]) == pytest.approx((1 + 0.01) ** -0.5)
    assert effective_noise_multiplier(0.0, [10.0]) == 0.0
    assert effective_noise_multiplier(math.inf, [3.0, 4.0]) == pytest.approx(2.4)


@pytest.mark.parametrize("name", OTHERS)
def test_a_rule_logs_its_bounds_and_the_accuracy_parity_gap(tmp_path, name):
    assert run_cli(tmp_path, f"privacy.clipping={name}") == 0
    result = summary(tmp_path)
    bounds = [result[f"dp/clip_bound/group={g}"] for g in ("minority", "majority")]
    assert all(b > 0 for b in bounds) and result["dp/noise_bound"] > 0
    if name == "dpsgd_f":  # the noise uses the largest bound of each step
        assert all(result["dp/noise_bound"] >= b - 1e-12 for b in bounds)
        assert all(b >= 0.5 for b in bounds)  # C_k >= C0
    if name in ("global", "global_adapt"):
        assert result["dp/clip_threshold"] == bounds[0]
    accuracies = [result[f"test/accuracy/group={g}"] for g in ("minority", "majority")]
    assert result["test/accuracy_gap"] == pytest.approx(abs(accuracies[0] - accuracies[1]))
    for group in ("minority", "majority"):
        assert 0 <= result[f"dp/clip_fraction/group={group}"] <= 1


def test_flat_logs_no_rule_diagnostics(tmp_path):
    assert run_cli(tmp_path) == 0
    assert not any(key.startswith(("dp/clip_bound", "dp/noise_bound")) for key in summary(tmp_path))


REFUSALS = {
    "non-private": (["privacy.mode=none"], NEEDS_PRIVACY),
    "opacus": (["privacy.engine=opacus"], NEEDS_FAST_ENGINE),
    "individual accounting": (["privacy.individual_accounting=true"], NO_INDIVIDUAL_ACCOUNTING),
}


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("name", OTHERS)
def test_combinations_a_rule_cannot_run_are_refused_before_any_file(tmp_path, capsys, name, case,
                                                                    dry_run):
    overrides, message = REFUSALS[case]
    params = tmp_path / "params.yaml"
    params.write_text(TINY)
    argv = ["--params", str(params), "--set", f"output_dir={tmp_path / 'out'}", "--set",
            f"privacy.clipping={name}", *(item for o in overrides for item in ("--set", o))]
    code = running.main(argv + (["--dry-run"] if dry_run else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == "error: " + message.format(rule=name)
    assert not (tmp_path / "out").exists()


FEDAVG = ("privacy.mode=dpfedavg", "federated.num_clients=40", "federated.rounds=3",
          "federated.eval_every=3", "federated.client_sample_rate=0.5")


@pytest.mark.parametrize("name", [n for n in OTHERS if "dpfedavg" in RULES.get(n).refuses])
def test_dp_fedavg_refuses_the_rules_made_for_per_example_gradients(tmp_path, capsys, name):
    code = run_cli(tmp_path, f"privacy.clipping={name}", *FEDAVG)
    err = capsys.readouterr().err
    assert code == 2
    assert f"privacy.clipping {name!r} refuses privacy.mode 'dpfedavg'" in err
    assert RULES.get(name).refuses["dpfedavg"] in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in OTHERS if "dpfedavg" not in RULES.get(n).refuses])
def test_dp_fedavg_clips_updates_adaptively_and_accounts_as_dp_accounting(tmp_path, name):
    assert run_cli(tmp_path, f"privacy.clipping={name}", *FEDAVG,
                   f"privacy.{name}.count_noise_std=2.0") == 0
    result = summary(tmp_path)
    sigma, q, rounds = (result["privacy/noise_multiplier"], result["privacy/sample_rate"],
                        result["privacy/steps"])
    assert result["privacy/epsilon"] == pytest.approx(
        google_joint_epsilon(sigma, [4.0], q, rounds, result["privacy/delta"]), rel=2e-3)
    assert "privacy/epsilon_parts/clipping_quantile" in result
    assert result["dp/clip_bound/group=minority"] == result["dp/noise_bound"] > 0


def test_the_rules_compose_with_a_repair_methods_release(tmp_path):
    assert run_cli(tmp_path, "privacy.clipping=dpsgd_f", "fairness.method=reweighing") == 0
    result = summary(tmp_path)
    sigma, q, steps, delta = (result["privacy/noise_multiplier"], result["privacy/sample_rate"],
                              result["privacy/steps"], result["privacy/delta"])
    joint = effective_noise_multiplier(sigma, [10.0])
    assert result["privacy/epsilon"] == pytest.approx(epsilon_of_history(
        [(joint, q, steps), (4.0, 1.0, 1)], delta=delta, accountant="rdp"), rel=1e-9)
    assert result["privacy/epsilon"] == pytest.approx(
        google_joint_epsilon(sigma, [10.0], q, steps, delta, one_off=[4.0]), rel=2e-3)
    assert {"privacy/epsilon_parts/counts", "privacy/epsilon_parts/clipping_counts"} <= set(result)


SOUND_METHODS = ["none", "reweighing", "gapreg", "runner", "adversarial", "roc"]


@pytest.mark.slow
@pytest.mark.parametrize("method", SOUND_METHODS)
@pytest.mark.parametrize("name", ["dpsgd_f", "global_adapt", "bounded_adaptive"])
def test_every_sound_repair_method_trains_under_a_rule(tmp_path, name, method):
    assert run_cli(tmp_path, f"privacy.clipping={name}", f"fairness.method={method}") == 0
    result = summary(tmp_path)
    assert result["privacy/private"] is True and math.isfinite(result["privacy/epsilon"])


def test_a_secure_run_draws_the_releases_from_the_os(tmp_path, monkeypatch):
    drawn = []
    original = SecureRandom.standard_normal

    def counted(self, n):
        drawn.append(n)
        return original(self, n)

    monkeypatch.setattr(SecureRandom, "standard_normal", counted)
    assert run_cli(tmp_path, "privacy.clipping=dpsgd_f", "privacy.secure_rng=true") == 0
    assert summary(tmp_path)["privacy/secure_rng"] is True
    assert drawn.count(4) >= summary(tmp_path)["privacy/steps"]  # four counts every step


def test_a_rules_settings_are_strict_and_only_the_chosen_ones_are_resolved():
    base = {"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "clipping": "global_adapt",
                        "global_adapt": {"z": 20}, "dpsgd_f": {"counts_noise_multiplier": 3}}}
    config = validated_config(base)
    assert config.privacy.clipping_settings == GlobalAdaptSettings(z=20.0)
    resolved = config.to_dict()["privacy"]
    assert resolved["global_adapt"] == dataclasses.asdict(GlobalAdaptSettings(z=20.0))
    assert "dpsgd_f" not in resolved and "clipping_settings" not in resolved
    assert validated_config(config.to_dict()) == config
    # Defaults are written out, so config.yaml says what ran.
    plain = validated_config({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0,
                                             "clipping": "dpsgd_f"}})
    assert plain.to_dict()["privacy"]["dpsgd_f"] == {"counts_noise_multiplier": 10.0}
    from utils.errors import ConfigError
    with pytest.raises(ConfigError, match=r"unknown config key 'privacy.global_adapt.zz'"):
        validated_config({"privacy": {"global_adapt": {"zz": 1}}})
    with pytest.raises(ConfigError, match=r"privacy.dpsgd_f.counts_noise_multiplier: got 0"):
        validated_config({"privacy": {"dpsgd_f": {"counts_noise_multiplier": 0}}})
    with pytest.raises(ConfigError, match=r"Did you mean 'privacy.global'"):
        validated_config({"privacy": {"globl": {}}})


def test_a_rule_trains_alone_under_stack_and_fair_dps_tanh_mlp_stacks():
    base = {"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0}}
    assert why_not_stackable(validated_config(base)) is None
    rule = validated_config({"privacy": {**base["privacy"], "clipping": "global"}})
    assert "privacy.clipping 'global'" in why_not_stackable(rule)
    # The stack writes out the tanh MLP's pass as the ReLU MLP's (training.mlp_pass;
    # tests/test_stacking.py checks such runs against the same runs one by one).
    tanh = validated_config({**base, "model": {"activation": "tanh"}})
    assert why_not_stackable(tanh) is None


@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
@pytest.mark.parametrize("name", [n for n in WITH_RELEASES])
def test_a_resumed_run_with_a_rule_ends_identical(name, mode):
    if mode == "dpfedavg" and "dpfedavg" in RULES.get(name).refuses:
        pytest.skip(f"{name} refuses DP-FedAvg")
    raw = yaml.safe_load(TINY)
    raw["privacy"].update(clipping=name, mode=mode)
    raw["federated"] = {"num_clients": 40, "rounds": 3, "eval_every": 1, "client_sample_rate": 0.5}
    config = validated_config(raw)
    straight, resumed = straight_and_resumed(config, units=3 if mode == "dpfedavg" else 2)
    for a, b in zip(straight.base_model().parameters(), resumed.base_model().parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rules = [trainer.mechanism.clipping if mode == "dpfedavg" else trainer.private.clipping
             for trainer in (straight, resumed)]
    assert rules[0].state_dict().keys() == rules[1].state_dict().keys()
    for key in ("z", "bound"):
        if hasattr(rules[0], key):
            assert getattr(rules[0], key) == getattr(rules[1], key)


@pytest.mark.gpu
@pytest.mark.parametrize("name", OTHERS)
def test_on_cuda_each_rule_steps_as_on_the_cpu(name):
    """The rule's factors and the noise-free update on CUDA equal the CPU's (the releases are
    drawn on the CPU from the same generator either way)."""
    updates = {}
    for device in ("cpu", "cuda"):
        x, y, minority, model = problem()
        x, y, minority, model = x.to(device), y.to(device), minority.to(device), model.to(device)
        engine, optimizer = make_engine(model, make_rule(name, seed=5))
        engine.noise_generator = torch.Generator(device=device).manual_seed(9)
        updates[device] = [engine_step(engine, optimizer, model, x, y, minority,
                                       rows.to(device)).cpu() for rows in BATCHES]
    for cpu, cuda in zip(updates["cpu"], updates["cuda"]):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-6)
