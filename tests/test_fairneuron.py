"""FairNeuron (``fairness.method: fairneuron``) and the repair methods' training phases.

- the vectorized path analysis equals a per-example loop written from the docstring's rule, on a
  tiny MLP, for several γ; biased examples are those of rare paths, counted by hand;
- the layers traced: the MLP's hidden-fed layers, the CNN's head;
- in the retraining, dropout changes the training forward of the biased examples only, and never
  the evaluation;
- a run trains two phases, selects its model from the second one only, reports the share of
  biased examples, ends with another model than Vanilla's, and resumed in its second phase ends
  exactly as an uninterrupted run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models import build_model
from tests.test_repair import run_cli
from tests.test_resume import read_jsonl, reference_and_interrupted, without_time
from training import checkpoint
from training import experiment as experiment_module
from training.repair.base import TrainingSet
from training.repair.fairneuron import (
    FairNeuron,
    FairNeuronSettings,
    biased_examples,
    linear_chain,
    path_edges,
)
from utils.config import ModelConfig
from utils.sink import read_predictions


def loop_paths(inputs, layers, gamma):
    """The path rule, one example and one neuron at a time: the set of kept (layer, out, in)."""
    paths = []
    for b in range(len(inputs[0])):
        kept = set()
        last = layers[-1]
        z = float((inputs[-1][b] @ last.weight[0] + last.bias[0]).detach())
        traced = {0: (1.0 if z >= 0 else -1.0, z)}  # neuron -> (sign, value)
        for i in range(len(layers) - 1, -1, -1):
            reached = set()
            for j, (sign, value) in traced.items():
                contributions = [(sign * float((layers[i].weight[j, k] * inputs[i][b, k]).detach()), k)
                                 for k in range(layers[i].in_features)]
                total = 0.0
                for c, k in sorted(contributions, reverse=True):
                    if c <= 0 or total >= gamma * sign * value:
                        break
                    kept.add((i, j, k))
                    reached.add(k)
                    total += c
            if i > 0:
                traced = {k: (1.0, float(inputs[i][b, k])) for k in reached}
        paths.append(kept)
    return paths


def as_sets(edges, layers):
    sizes = [layer.out_features * layer.in_features for layer in layers]
    sets = []
    for row in edges:
        kept, offset = set(), 0
        for i, (layer, size) in enumerate(zip(layers, sizes)):
            for flat in row[offset:offset + size].nonzero().flatten().tolist():
                kept.add((i, flat // layer.in_features, flat % layer.in_features))
            offset += size
        sets.append(kept)
    return sets


def tiny_mlp_inputs(seed=0, batch=30):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="mlp", hidden=[7, 6, 5]), (4,))
    recorded = []
    layers = linear_chain(model)
    handles = [layer.register_forward_pre_hook(lambda m, args: recorded.append(args[0]))
               for layer in layers]
    with torch.no_grad():
        model(torch.randn(batch, 4))
    for handle in handles:
        handle.remove()
    return model, layers, recorded


@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_path_edges_equal_the_per_example_loop(gamma):
    model, layers, inputs = tiny_mlp_inputs()
    assert [(layer.in_features, layer.out_features) for layer in layers] == [(7, 6), (6, 5), (5, 1)]
    with torch.no_grad():
        got = as_sets(path_edges(inputs, layers, gamma), layers)
    expected = loop_paths(inputs, layers, gamma)
    assert got == expected
    assert any(len(path) > 1 for path in got)  # the rule keeps more than one edge somewhere


def test_biased_examples_are_those_of_rare_paths():
    signatures = [b"a"] * 6 + [b"b"] * 3 + [b"c"] + [b"d"] * 2
    # theta 0.4: bound max(0.4 * 6, 1) = 2.4, so the paths seen 1 or 2 times.
    assert biased_examples(signatures, 0.4).tolist() == [False] * 9 + [True] * 3
    # theta 1e-3: bound 1, so only the path seen once.
    assert biased_examples(signatures, 1e-3).tolist() == [False] * 9 + [True] + [False] * 2


def test_traced_layers_of_each_model():
    mlp = build_model(ModelConfig(name="mlp", hidden=[8, 8]), (5,))
    assert [layer.in_features for layer in linear_chain(mlp)] == [8, 8]  # not the input layer
    cnn = build_model(ModelConfig(name="cnn", width=8), (3, 32, 32))
    assert linear_chain(cnn) == [cnn.head]
    assert linear_chain(build_model(ModelConfig(name="mlp", hidden=[]), (5,))) == []


def test_dropout_changes_the_training_forward_of_biased_examples_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[32, 32]), (6,))
    method = FairNeuron(FairNeuronSettings(dropout=0.5, theta=1.0), target="dp",
                        rng=np.random.default_rng(0))
    method.attach(model)
    x = torch.randn(40, 6)
    data = TrainingSet(x=x, y=(x[:, 0] > 0).float(), minority=x[:, 1] > 0.5,
                       weights=torch.ones(40), transform=None, batch_size=16)
    method.start_phase(1, method.phases(3)[1], model, data)
    # theta 1: every path at most as common as the commonest is rare, so all are biased; mark
    # half of them unbiased by hand to see both kinds in one batch.
    assert method.biased.all()
    method.biased[::2] = False
    model.eval()
    with torch.no_grad():
        reference = model(x)
    model.train()
    method.before_forward(torch.arange(40))
    with torch.no_grad():
        trained = model(x)
    unbiased = ~method.biased
    torch.testing.assert_close(trained[unbiased], reference[unbiased])
    assert (trained[method.biased] != reference[method.biased]).all()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)  # evaluation never drops


def test_fairneuron_run_trains_two_phases_and_selects_from_the_second(tmp_path):
    common = ["training.epochs=2", "data.val_fraction=0.2", "training.select=best_val_gap"]
    assert run_cli(tmp_path, "name=plain", *common) == 0
    assert run_cli(tmp_path, "name=fn", "fairness.method=fairneuron", "fairness.fairneuron.theta=1",
                   "fairness.fairneuron.retrain_epochs=3", *common) == 0
    run_dir = tmp_path / "out" / "fn"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["train/phase"] for row in rows] == [1, 1, 2, 2, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    # The first retraining epoch is left out like any first epoch: units 4 or 5 (1-based).
    assert summary["select/unit"] in (4, 5)
    info = summary["trainer/info"]
    assert 0 < info["fairneuron/biased_fraction"] <= 1
    assert info["fairneuron/distinct_paths"] >= 1
    plain = read_predictions(tmp_path / "out" / "plain" / "predictions.csv")
    repaired = read_predictions(run_dir / "predictions.csv")
    assert not np.allclose(plain["y_score"], repaired["y_score"])


def test_fairneuron_resumed_in_its_second_phase_ends_as_if_uninterrupted(tmp_path, monkeypatch):
    raw = {"name": "fn", "seed": 2, "device": "cpu",
           "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 800},
           "model": {"name": "mlp", "hidden": [16, 16]},
           "training": {"epochs": 2, "batch_size": 100},
           "fairness": {"method": "fairneuron", "mode": "dp",
                        "fairneuron": {"theta": 0.5, "dropout": 0.3, "retrain_epochs": 3}},
           "evaluation": {"bootstrap_resamples": 20},
           "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}, "progress": "never"}}
    # Stopped after unit 4: the run resumes from unit 3's checkpoint, inside the retraining,
    # with the biased examples and the dropout stream restored, not recomputed.
    reference, config, run_dir = reference_and_interrupted(raw, tmp_path, monkeypatch, after=4)
    assert checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt").step == 3
    resumed = experiment_module.run(config)
    assert without_time(resumed) == without_time(reference)
    assert resumed["trainer/info"]["fairneuron/biased_fraction"] > 0


def test_fairneuron_needs_fully_connected_layers():
    from utils.errors import ConfigError

    method = FairNeuron(FairNeuronSettings(), target="dp", rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="fairneuron.*no fully connected layer"):
        method.attach(nn.Sequential(nn.Conv2d(3, 4, 3)))
