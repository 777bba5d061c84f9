"""Fairness repair methods: each hook against a hand or brute-force computation, and every
registered method through the command line (a new method is tested by being registered).

- reweighing's weights equal P(A)·P(Y) / P(A, Y) counted by hand, and make group and label
  independent in the weighted set;
- oversample's cells all reach the largest cell's size and keep every original example;
- gapreg's term equals the gap of group means computed by hand (dp and eo);
- roc changes exactly the decisions in the critical region, and predictions.csv holds them;
- runner's neuron importance equals a per-weight finite-difference computation on a tiny MLP,
  its selected count follows the ratio (at least one), and it finds conv channels in the CNN;
- every method runs end to end; every refused (method, privacy mode) exits 2 with its reason and
  writes nothing; the method's settings are strict config keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from models import build_model
from tests.conftest import main_on_yaml
from training.repair import METHODS, build_method
from training.repair.base import Batch, group_gap
from training.repair.fairsmote import NEEDS_TABULAR
from training.repair.oversample import oversample_indices
from training.repair.reweighing import reweighing_weights
from training.repair.roc import reject_option
from training.repair.runner import (
    Runner,
    RunnerSettings,
    neuron_importance,
    neuron_layers,
    selected_count,
)
from training.validation import load_validated, validated_config
from utils import fairness
from utils.config import ModelConfig
from utils.errors import ConfigError
from utils.sink import read_predictions

ROOT = Path(__file__).resolve().parent.parent


def test_reweighing_weights_by_hand():
    # Cells (minority, label): (T,1) x1, (T,0) x3, (F,1) x4, (F,0) x2; n = 10.
    minority = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    w = reweighing_weights(y, minority)
    p_a, p_y = {True: 0.4, False: 0.6}, {1: 0.5, 0: 0.5}
    cell = {(True, 1): 0.1, (True, 0): 0.3, (False, 1): 0.4, (False, 0): 0.2}
    expected = [p_a[bool(a)] * p_y[int(t)] / cell[(bool(a), int(t))] for a, t in zip(minority, y)]
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    # In the weighted set P_w(A, Y) = P(A) P(Y): group and label are independent.
    for a, t in cell:
        mask = (minority == a) & (y == t)
        assert w[mask].sum() / w.sum() == pytest.approx(p_a[a] * p_y[t])


def test_oversample_equalizes_cells_and_keeps_every_example():
    rng = np.random.default_rng(0)
    minority = rng.random(500) < 0.1
    y = (rng.random(500) < np.where(minority, 0.2, 0.6)).astype(int)
    index = oversample_indices(y, minority, np.random.default_rng(1))
    sizes = {(a, t): int(((minority[index] == a) & (y[index] == t)).sum())
             for a in (True, False) for t in (0, 1)}
    largest = max(int(((minority == a) & (y == t)).sum()) for a in (True, False) for t in (0, 1))
    assert set(sizes.values()) == {largest}
    assert set(range(500)) <= set(index.tolist())


@pytest.mark.parametrize("target", ["dp", "eo"])
def test_gap_term_by_hand(target):
    scores = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.7, 0.1])
    minority = torch.tensor([True, True, True, False, False, False])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    got = float(group_gap(scores, minority, y, target))
    if target == "dp":
        expected = abs((0.9 + 0.2 + 0.6) / 3 - (0.4 + 0.7 + 0.1) / 3)
    else:
        expected = abs((0.9 + 0.6) / 2 - 0.4) + abs(0.2 - (0.7 + 0.1) / 2)
    assert got == pytest.approx(expected)


def test_roc_flips_exactly_the_critical_region():
    scores = np.array([0.05, 0.45, 0.55, 0.58, 0.62, 0.95, 0.41, 0.59, 0.39])
    unprivileged = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    plain = fairness.predictions(scores, 0.5)
    out = reject_option(scores, unprivileged, plain, theta=0.6, favourable=1)
    critical = np.maximum(scores, 1 - scores) <= 0.6
    np.testing.assert_array_equal(out[~critical], plain[~critical])
    np.testing.assert_array_equal(out[critical], unprivileged[critical].astype(int))
    # With 0 favourable (recidivism), the critical unprivileged get 0 and the privileged 1.
    flipped = reject_option(scores, unprivileged, plain, theta=0.6, favourable=0)
    np.testing.assert_array_equal(flipped[critical], (~unprivileged[critical]).astype(int))


def tiny_mlp_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    minority = torch.arange(12) < 5
    y = (torch.arange(12) % 2).double()
    return model, x, minority, y


def test_runner_importance_equals_finite_differences():
    model, x, minority, y = tiny_mlp_batch()
    weight = model[0].weight

    def fair_loss() -> torch.Tensor:
        return group_gap(torch.sigmoid(model(x).reshape(-1)), minority, y, "dp")

    grad = torch.autograd.grad(fair_loss(), weight)[0]
    got = neuron_importance(weight, grad)
    # Brute force: ∂L/∂W_ij by central differences, one weight at a time.
    step = 1e-6
    numeric = torch.zeros_like(weight)
    with torch.no_grad():
        for i in range(weight.shape[0]):
            for j in range(weight.shape[1]):
                weight[i, j] += step
                up = fair_loss()
                weight[i, j] -= 2 * step
                down = fair_loss()
                weight[i, j] += step
                numeric[i, j] = (up - down) / (2 * step)
    expected = ((weight.detach() * numeric) ** 2).sum(1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("neurons, ratio, expected", [(200, 0.5, 100), (200, 0.05, 10),
                                                      (10, 0.05, 1), (7, 1.0, 7), (3, 0.34, 1)])
def test_runner_selected_count(neurons, ratio, expected):
    assert selected_count(neurons, ratio) == expected


def test_runner_selects_the_most_important_neurons_of_each_layer():
    model, x, minority, y = tiny_mlp_batch(1)
    method = Runner(RunnerSettings(lam=1.0, neuron_ratio=0.5), target="dp", rng=None)
    layers = method.hidden_layers(model)
    assert list(layers) == ["1"]  # the ReLU after the first Linear; the output layer is no neuron
    logits = model(x).reshape(-1)
    batch = Batch(logits=logits, targets=y, minority=minority, weights=torch.ones(12),
                  losses=torch.zeros(12), activations={})
    fair, chosen = method.selection(batch)
    grad = torch.autograd.grad(fair, model[0].weight, retain_graph=True)[0]
    importance = neuron_importance(model[0].weight, grad)
    assert set(chosen["1"].tolist()) == set(importance.topk(2).indices.tolist())


@pytest.mark.parametrize("target", ["dp", "eo"])
def test_runner_repair_term_by_hand(target):
    # λ × (the output gap, eo only, + each selected neuron's |mean over one group − mean over the
    # other|, averaged over the selected neurons), counted group by group with masks.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                          nn.Linear(5, 1)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    minority, y = torch.arange(16) < 6, (torch.arange(16) % 3 == 0).double()
    method = Runner(RunnerSettings(lam=0.7, neuron_ratio=0.4), target=target, rng=None)
    activations = {}
    for name, module in method.hidden_layers(model).items():
        module.register_forward_hook(lambda m, i, o, name=name: activations.__setitem__(name, o))
    logits = model(x).reshape(-1)
    batch = Batch(logits=logits, targets=y, minority=minority, weights=torch.ones(16),
                  losses=torch.zeros(16), activations=activations)
    _, chosen = method.selection(batch)
    terms = method.loss(batch, model)
    cells = [torch.ones(16, dtype=torch.bool)] if target == "dp" else [y == 0, y == 1]

    def gap(values):  # values (B, k): Σ over cells of the mean over columns of |Δ group means|
        return sum((values[minority & c].mean(0) - values[~minority & c].mean(0)).abs().mean()
                   for c in cells)

    expected = gap(torch.sigmoid(logits)[:, None]) if target == "eo" else 0.0
    for name, index in chosen.items():
        assert len(index) == max(1, int(0.4 * activations[name].shape[1]))
        expected = expected + gap(activations[name][:, index])
    torch.testing.assert_close(terms.coupled, 0.7 * expected)


def test_runner_finds_conv_channels_in_the_cnn():
    model = build_model(ModelConfig(name="cnn", width=8), (3, 32, 32))
    layers = neuron_layers(model)
    assert layers and all(isinstance(layer, nn.Conv2d) for _, layer, _ in layers)
    assert [layer.out_channels for _, layer, _ in layers] == [8, 16, 32, 32]  # its four blocks


# --------------------------------------------------------------------------------------------------
# Every registered method through the command line


TINY = """\
name: repair
device: cpu
data: {name: synthetic, minority_share: 0.2, train_size: 1200}
model: {name: mlp, hidden: [16, 16]}
training: {epochs: 2, batch_size: 200}
evaluation: {bootstrap_resamples: 20}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


def run_cli(tmp_path: Path, *overrides: str) -> int:
    return main_on_yaml(tmp_path, TINY, *overrides)


@pytest.mark.parametrize("target", ["dp", "eo"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_end_to_end(tmp_path, method, target):
    assert run_cli(tmp_path, f"fairness.method={method}", f"fairness.mode={target}") == 0
    run_dir = tmp_path / "out" / "repair"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.4 < summary["test/accuracy"] <= 1
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["fairness"]["method"] == method and stored["fairness"]["mode"] == target
    # The metrics are those of predictions.csv's decisions (post-processed for roc).
    table = read_predictions(run_dir / "predictions.csv")
    recomputed = fairness.compute_metrics(table["y_true"], table["y_score"], table["minority"],
                                          y_pred=table["y_pred"])
    assert summary["test/accuracy"] == recomputed["accuracy"]
    assert summary["test/dp_gap"] == recomputed["dp_gap"]


def test_roc_changes_decisions_and_lowers_the_selection_gap(tmp_path):
    assert run_cli(tmp_path, "name=plain") == 0
    assert run_cli(tmp_path, "name=roc", "fairness.method=roc", "fairness.roc.theta=0.7") == 0
    plain = json.loads((tmp_path / "out" / "plain" / "summary.json").read_text())
    roc = json.loads((tmp_path / "out" / "roc" / "summary.json").read_text())
    # Same model (ROC does not touch training), other decisions.
    assert roc["test/average_precision"] == plain["test/average_precision"]
    assert roc["test/selection_rate/group=minority"] > plain["test/selection_rate/group=minority"]


def test_gapreg_lowers_the_gap_it_penalizes(tmp_path):
    assert run_cli(tmp_path, "name=plain", "training.epochs=4") == 0
    assert run_cli(tmp_path, "name=gapreg", "training.epochs=4", "fairness.method=gapreg",
                   "fairness.gapreg.lam=5") == 0
    plain = json.loads((tmp_path / "out" / "plain" / "summary.json").read_text())
    gapreg = json.loads((tmp_path / "out" / "gapreg" / "summary.json").read_text())
    assert gapreg["test/dp_gap"] < plain["test/dp_gap"]
    assert "train/repair_term" in gapreg


REFUSED = [(name, mode) for name in METHODS for mode in ("dpsgd", "dpfedavg")
           if METHODS.get(name).refuses.get(mode)]


@pytest.mark.parametrize("method, mode", REFUSED)
def test_refused_privacy_modes_exit_2_with_the_reason_and_write_nothing(tmp_path, capsys, method,
                                                                        mode):
    code = run_cli(tmp_path, f"fairness.method={method}", f"privacy.mode={mode}",
                   "privacy.noise_multiplier=1.0")
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == f"error: {METHODS.get(method).refusal(method, mode)}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", [name for name in METHODS
                                    if not METHODS.get(name).refuses.get("dpsgd")])
def test_sound_methods_run_under_dpsgd(tmp_path, method):
    # The public forms read the validation split (tests/test_repair_under_dp.py checks them).
    assert run_cli(tmp_path, f"fairness.method={method}", "privacy.mode=dpsgd",
                   "privacy.noise_multiplier=1.0", "data.val_fraction=0.1",
                   "data.validation_public=true") == 0


def test_method_settings_are_strict_config_keys(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(TINY)
    config = load_validated(params, ["fairness.method=runner", "fairness.runner.neuron_ratio=0.05",
                                  "fairness.runner.lam=1.0", "fairness.mode=eo"])
    assert config.fairness.settings == RunnerSettings(lam=1.0, neuron_ratio=0.05)
    assert config.to_dict()["fairness"] == {"method": "runner", "mode": "eo",
                                            "public_examples": 2000,
                                            "runner": {"lam": 1.0, "neuron_ratio": 0.05}}
    # The resolved dict builds the same config again (config.yaml round trip).
    assert validated_config(config.to_dict()) == config
    method = build_method(config)
    assert isinstance(method, Runner) and method.target == "eo"
    with pytest.raises(ConfigError, match=r"fairness\.runner\.neuron_ratio.*share in \(0, 1\]"):
        load_validated(params, ["fairness.method=runner", "fairness.runner.neuron_ratio=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'fairness\.runner\.lamda'.*"
                                          r"Did you mean 'fairness\.runner\.lam'"):
        load_validated(params, ["fairness.runner.lamda=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'fairness\.runer'.*"
                                          r"Did you mean 'fairness\.runner'"):
        load_validated(params, ["fairness.runer.lam=1"])
    with pytest.raises(ConfigError, match=r"fairness\.method: unknown fairness method 'runer'"):
        load_validated(params, ["fairness.method=runer"])
    with pytest.raises(ConfigError, match=r"fairness\.mode"):
        load_validated(params, ["fairness.mode=eodds"])


def test_adversarial_trains_its_adversary_and_changes_the_model(tmp_path):
    from training.experiment import build_components

    params = tmp_path / "params.yaml"
    params.write_text(TINY)
    models = {}
    for lam in (0.0, 2.0):
        config = load_validated(params, ["fairness.method=adversarial",
                                      f"fairness.adversarial.lam={lam}",
                                      "fairness.adversarial.adversary_lr=0.01"])
        _, _, trainer = build_components(config, torch.device("cpu"))
        trainer.train_unit(0)
        adversary = trainer.method.adversary
        first = [p.detach().clone() for p in adversary.parameters()]
        trainer.train_unit(1)
        assert any(not torch.equal(a, b) for a, b in zip(first, adversary.parameters()))
        models[lam] = torch.cat([p.detach().reshape(-1) for p in trainer.base_model().parameters()])
    # Same seed, same batches: only the adversarial term differs.
    assert not torch.allclose(models[0.0], models[2.0])


def test_fairsmote_synthesis_equalizes_cells_with_valid_rows():
    from training.repair.fairsmote import one_hot_blocks, synthesize

    rng = np.random.default_rng(0)
    n = 400
    minority = rng.random(n) < 0.15
    y = (rng.random(n) < np.where(minority, 0.3, 0.6)).astype(np.int64)
    colour = rng.integers(3, size=n)
    x = np.column_stack([rng.normal(size=(n, 2)), np.eye(3)[colour],
                         minority.astype(float)]).astype(np.float32)
    names = ["a", "b", "colour=r", "colour=g", "colour=b", "group=minority"]
    blocks = one_hot_blocks(names)
    assert blocks == {"colour": [2, 3, 4], "group": [5]}
    big_x, big_y, big_minority, synthetic = synthesize(x, y, minority, blocks, 5,
                                                       np.random.default_rng(1))
    np.testing.assert_array_equal(big_x[:n], x)  # the real rows come first, unchanged
    sizes = {(a, t): int(((big_minority == a) & (big_y == t)).sum())
             for a in (True, False) for t in (0, 1)}
    assert len(set(sizes.values())) == 1 and synthetic.sum() == len(big_y) - n
    made = big_x[synthetic]
    assert np.all(made[:, 2:5].sum(1) == 1) and set(np.unique(made[:, 2:5])) <= {0.0, 1.0}
    np.testing.assert_array_equal(made[:, 5], big_minority[synthetic])  # the group flag kept
    for col in (0, 1):  # interpolated: inside the range of the real values
        assert x[:, col].min() <= made[:, col].min() and made[:, col].max() <= x[:, col].max()


def test_fairsmote_situation_testing_drops_what_the_group_decides():
    from training.repair.fairsmote import situation_test

    rng = np.random.default_rng(2)
    n = 600
    minority = rng.random(n) < 0.5
    noise = rng.normal(size=(n, 1))
    group_col = minority.astype(float).reshape(-1, 1)
    x = np.hstack([noise, group_col])
    # The label is the group: switching the group switches every prediction.
    assert not situation_test(x, minority.astype(int), minority, [1], 0).any()
    # The label ignores the group: switching it changes (almost) nothing.
    y = (noise[:, 0] > 0).astype(int)
    assert situation_test(x, y, minority, [1], 0).mean() > 0.97


SHIPPED_TABULAR = {
    "adult": ["data.target=income"],
    "compas": ["data.target=two_year_recid", "fairness.roc.favourable_label=0"],
    "german": ["data.target=bad_credit", "data.protected=age", "data.minority_value=young",
               "fairness.roc.favourable_label=0", "data.train_size=300"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dataset", list(SHIPPED_TABULAR))
def test_every_method_on_every_shipped_tabular_data_set(tmp_path, dataset, method):
    overrides = [f"data.name={dataset}", "data.minority_share=0.2", "data.train_size=600",
                 "training.epochs=1", "training.batch_size=100", "model.hidden=[16]",
                 *SHIPPED_TABULAR[dataset], f"fairness.method={method}"]
    assert run_cli(tmp_path, *overrides) == 0
    run_dir = tmp_path / "out" / "repair"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= summary["test/accuracy"] <= 1 and summary["data/info"]["feature_names"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["name"] == dataset
    if method == "fairsmote":
        assert summary["data/info"]["fairsmote/synthetic"] > 0


def test_fairsmote_refuses_data_without_named_features():
    from dataset.base import DataBundle
    from training.repair.fairsmote import NEEDS_TABULAR, FairSmote, FairSmoteSettings

    images = np.zeros((4, 3, 8, 8), np.uint8)
    data = DataBundle(x_train=images, y_train=np.array([0, 1, 0, 1]),
                      minority_train=np.array([1, 0, 0, 0], bool), x_test=images,
                      y_test=np.zeros(4, int), minority_test=np.zeros(4, bool),
                      input_shape=(3, 8, 8))
    method = FairSmote(FairSmoteSettings(), target="dp", rng=np.random.default_rng(0))
    with pytest.raises(ConfigError) as error:
        method.prepare(data)
    assert str(error.value) == NEEDS_TABULAR


# Methods that refuse image inputs, with the error they give (exit 2); every other method must run.
IMAGE_REFUSALS = {"fairsmote": NEEDS_TABULAR}


@pytest.fixture(scope="module")
def fake_celeba_root(tmp_path_factory):
    from tests.celeba_fake import make_fake_celeba

    root = tmp_path_factory.mktemp("celeba")
    make_fake_celeba(root, n_images=300, seed=0)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_the_fake_celeba(tmp_path, capsys, fake_celeba_root, method):
    overrides = ["data.name=celeba", f"data.root={fake_celeba_root}", "data.target=Wavy_Hair",
                 "data.protected=Male", "data.minority_value=1", "data.minority_share=null",
                 "data.train_size=80", "data.celeba.test_size=40", "data.celeba.image_size=64",
                 f"data.celeba.cache_dir={tmp_path / 'cache'}", "model.name=cnn", "model.width=8",
                 "training.epochs=1", "training.batch_size=16", f"fairness.method={method}"]
    code = run_cli(tmp_path, *overrides)
    if method in IMAGE_REFUSALS:
        assert code == 2
        assert capsys.readouterr().err.strip() == f"error: {IMAGE_REFUSALS[method]}"
        assert not (tmp_path / "out" / "repair").exists()
        return
    assert code == 0
    summary = json.loads((tmp_path / "out" / "repair" / "summary.json").read_text())
    assert 0 <= summary["test/accuracy"] <= 1
    assert yaml.safe_load((tmp_path / "out" / "repair" / "config.yaml").read_text())["data"][
        "target"] == "Wavy_Hair"
