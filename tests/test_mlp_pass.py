"""The MLP's pass written out (training.mlp_pass) and the DP-SGD step that uses it: its δ are
autograd's, the engine's step from its records is the step through the hooks (flat clipping and a
rule that clips by group, an empty batch), a run trained with it is the run trained through the
hooks, and every run it does not fit keeps the hooks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from models import build_model
from privacy import dpsgd, fast_dpsgd
from tests.test_static_shapes import trained as trained_from
from training.centralized import ENGINE_PASS, WRITTEN_OUT, CentralizedTrainer
from training.mlp_pass import mlp_activation, mlp_pass
from utils.config import ModelConfig, PrivacyConfig


def mlp(hidden=(16, 8), activation="relu", features=12, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="mlp", hidden=list(hidden), activation=activation),
                       (features,))


def batch(n=24, features=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (torch.rand(n, generator=generator) < 0.5).float()
    weights = torch.rand(n, generator=generator) * 2  # reweighing's loss weights
    return x, y, weights


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("hidden", [(16,), (16, 8), (5, 7, 3)])
def test_the_written_out_pass_is_autograds(hidden, activation):
    model = mlp(hidden, activation)
    x, y, weights = batch()
    params = list(model.parameters())
    logits, inputs, deltas = mlp_pass(params, x, y, weights, mlp_activation(model))
    # Autograd's: each Linear's input and the gradient of the summed weighted loss at its output.
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    seen_inputs, outputs = [], []

    def keep(module, args, out):
        seen_inputs.append(args[0])
        outputs.append(out)
        out.retain_grad()

    handles = [layer.register_forward_hook(keep) for layer in layers]
    reference = model(x)
    (F.binary_cross_entropy_with_logits(reference, y, reduction="none") * weights).sum().backward()
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(logits, reference.detach(), rtol=0, atol=0)
    for a, delta, want_a, out in zip(inputs, deltas, seen_inputs, outputs):
        torch.testing.assert_close(a, want_a.detach(), rtol=0, atol=0)
        torch.testing.assert_close(delta, out.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_stacked_pass_is_each_runs_own(activation):
    models = [mlp(activation=activation, seed=s) for s in (0, 1, 2)]
    batches = [batch(seed=s) for s in (3, 4, 5)]
    params = [torch.stack([p.detach() for p in ps]) for ps in
              zip(*[list(m.parameters()) for m in models])]
    function = mlp_activation(models[0])
    stacked = mlp_pass(params, *[torch.stack(parts) for parts in zip(*batches)], function)
    for k, (model, (x, y, weights)) in enumerate(zip(models, batches)):
        lone = mlp_pass([p.detach() for p in model.parameters()], x, y, weights, function)
        torch.testing.assert_close(stacked[0][k], lone[0], rtol=1e-6, atol=1e-7)
        for got, want in zip(stacked[1] + stacked[2], lone[1] + lone[2]):
            torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-6)


def test_only_the_registrys_mlp_is_written_out():
    assert mlp_activation(mlp()) is torch.nn.ReLU
    assert mlp_activation(mlp(activation="tanh")) is torch.nn.Tanh
    mixed = mlp()
    mixed.net[3] = torch.nn.Tanh()
    assert mlp_activation(mixed) is None
    other = mlp()
    other.net[1] = torch.nn.GELU()
    assert mlp_activation(other) is None
    no_bias = mlp()
    no_bias.net[0] = torch.nn.Linear(12, 16, bias=False)
    assert mlp_activation(no_bias) is None
    assert mlp_activation(build_model(ModelConfig(name="cnn", width=4), (3, 32, 32))) is None


def engine_step(route, model, x, y, weights, rows, clipping="flat", noise=1.0, minority=None):
    """One DP-SGD step of the fast engine on x[rows] (lr 1, q = 1), through the hooks or from the
    written-out pass: the parameter change, the norms and the clipping step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = dpsgd.index_loader(len(x), len(x), shuffle=False)
    config = PrivacyConfig(mode="dpsgd", noise_multiplier=noise, max_grad_norm=0.5,
                           clipping=clipping)
    private = fast_dpsgd.make_private(model, optimizer, loader, config, epochs=1,
                                      noise_generator=torch.Generator().manual_seed(7),
                                      clipping_generator=torch.Generator().manual_seed(8))
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    private.optimizer.zero_grad(set_to_none=True)
    if minority is not None:
        private.batch_groups(minority[rows])
    if route == "hooks":
        logits = private.module(x[rows]).reshape(-1)
        losses = F.binary_cross_entropy_with_logits(logits, y[rows], reduction="none")
        (losses * weights[rows]).mean().backward()
    else:
        _, inputs, deltas = mlp_pass(list(model.parameters()), x[rows], y[rows],
                                     weights[rows], mlp_activation(model))
        private.record_pass(inputs, deltas)
    norms = private.per_example_norms().detach().clone()
    step = private.clip_step()
    private.optimizer.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return after - before, norms, step, private


@pytest.mark.parametrize("clipping, activation", [("flat", "relu"), ("dpsgd_f", "relu"),
                                                  ("flat", "tanh")])
@pytest.mark.parametrize("rows", [torch.arange(24), torch.tensor([1, 4, 5, 9, 17]),
                                  torch.tensor([], dtype=torch.long)])
def test_the_engines_step_from_the_written_out_pass_is_its_step_through_the_hooks(
        clipping, activation, rows):
    x, y, weights = batch()
    minority = torch.arange(24) % 3 == 0
    model = mlp(activation=activation)
    hooks = engine_step("hooks", copy.deepcopy(model), x, y, weights, rows, clipping,
                        minority=minority)
    written = engine_step("written", copy.deepcopy(model), x, y, weights, rows, clipping,
                          minority=minority)
    torch.testing.assert_close(written[1], hooks[1], rtol=1e-5, atol=1e-6)  # norms
    torch.testing.assert_close(written[2].factors, hooks[2].factors, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(written[0], hooks[0], rtol=1e-5, atol=1e-6)  # the update
    assert written[3].history() == hooks[3].history()  # the same accountant steps
    if len(rows) == len(x):
        assert (hooks[1] > 0.5).any() and (hooks[1] < 0.5).any()  # clipping bit, not everywhere


def test_without_noise_the_written_out_update_is_the_clipped_sum_over_the_expected_batch():
    # Noise would hide a wrong sum; this one is checked against a per-example loop.
    x, y, weights = batch()
    model = mlp()
    update, norms, _, _ = engine_step("written", copy.deepcopy(model), x, y, weights,
                                      torch.arange(24), noise=0.0)
    total = None
    for i in range(24):
        copy_ = copy.deepcopy(model)
        loss = F.binary_cross_entropy_with_logits(copy_(x[i:i + 1]), y[i:i + 1]) * weights[i]
        grads = torch.autograd.grad(loss, list(copy_.parameters()))
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.testing.assert_close(norms[i], flat.norm(), rtol=1e-5, atol=1e-7)
        clipped = flat * min(1.0, 0.5 / (float(flat.norm()) + 1e-6))
        total = clipped if total is None else total + clipped
    torch.testing.assert_close(update, -total / 24, rtol=1e-5, atol=1e-7)


TINY = """\
name: base
seed: 3
device: cpu
data: {name: synthetic, minority_share: 0.2, train_size: 1200}
model: {name: mlp, hidden: [16, 8]}
training: {epochs: 2, batch_size: 100}
fairness: {method: reweighing}
privacy: {mode: dpsgd, noise_multiplier: 1.0, engine: fast}
evaluation: {bootstrap_resamples: 0}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


def trained(overrides: dict, monkeypatch=None, hooks=False):
    """The trainer of TINY with ``overrides`` after its epochs and its metrics; ``hooks``: the
    written-out pass turned off, so the same run goes through the engine's hooks."""
    if not hooks:
        return trained_from(overrides, TINY)
    monkeypatch.setattr(CentralizedTrainer, "_writes_out_pass", lambda self: False)
    try:
        return trained_from(overrides, TINY)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("overrides", [{"privacy.clipping": "flat"},
                                       {"privacy.clipping": "dpsgd_f"},
                                       {"model.activation": "tanh"}])  # fair-dp's MLP
def test_a_written_out_run_trains_the_hooks_runs_model(monkeypatch, overrides):
    """The same batches, noise and loss weights (reweighing's), so the same model to float
    rounding, the same per-group diagnostics, accountant steps and ε; the record says which."""
    written, metrics = trained(overrides)
    hooked, reference_metrics = trained(overrides, monkeypatch, hooks=True)
    assert written.written_out and not hooked.written_out
    assert written.info["dp_step"] == WRITTEN_OUT and hooked.info["dp_step"] == ENGINE_PASS
    assert written.weights.unique().numel() > 1  # reweighing's weights reached the loss
    for a, b in zip(written.base_model().parameters(), hooked.base_model().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert written.private.history() == hooked.private.history()
    for mine, reference in zip(metrics, reference_metrics):
        assert set(mine) == set(reference)
        for key, value in reference.items():  # loss, per-group norms and clip fractions
            assert mine[key] == pytest.approx(value, rel=1e-4), key


@pytest.mark.parametrize("overrides", [
    {"fairness.method": "runner", "data.val_fraction": 0.1,  # a loss on hidden activations
     "data.validation_public": True},
    {"training.pad_batches": True},
    {"privacy.engine": "opacus"},
])
def test_runs_the_written_out_pass_does_not_fit_keep_the_hooks(overrides):
    trainer, _ = trained({"training.epochs": 1, **overrides})
    assert not trainer.written_out
    assert trainer.info["dp_step"] == ENGINE_PASS
    if "privacy.engine" in overrides:
        assert not isinstance(trainer.private, fast_dpsgd.FastPrivateTraining)


def test_a_hook_of_someone_elses_on_the_model_keeps_the_hooks():
    model = mlp()
    loader = dpsgd.index_loader(24, 24, shuffle=False)
    private = fast_dpsgd.make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader,
                                      PrivacyConfig(mode="dpsgd", noise_multiplier=1.0,
                                                    max_grad_norm=0.5), epochs=1,
                                      noise_generator=torch.Generator().manual_seed(7))
    assert not private.hooked_by_others()
    handle = model.net[1].register_forward_hook(lambda module, args, out: None)
    assert private.hooked_by_others()
    handle.remove()
    assert not private.hooked_by_others()


def test_non_private_runs_record_no_dp_step():
    trainer, _ = trained({"training.epochs": 1, "privacy.mode": "none"})
    assert not trainer.written_out and "dp_step" not in trainer.info
