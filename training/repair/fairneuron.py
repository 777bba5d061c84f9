"""``fairneuron`` (Gao et al., "FairNeuron: Improving Deep Neural Network Fairness with Adversary
Games on Selective Neurons", ICSE 2022): find the examples whose decision takes a rare path through
the network, and retrain with dropout on those examples only.

Two phases (:meth:`FairNeuron.phases`):

1. ``train``: ordinary training for ``training.epochs``.
2. ``retrain``: first the **path analysis** of every training example on the trained model. A
   neuron's value is the sum of its incoming contributions w_jk · a_k (and its bias); starting from
   the output neuron, each traced neuron keeps its largest contributions, in decreasing order, until
   they reach ``gamma`` of its value, and the neurons they come from are traced in turn, layer by
   layer back through the fully connected layers. An example's path is the set of kept edges. Paths
   are counted over the training set; an example whose path occurs at most max(``theta`` × the most
   common path's count, 1) times is **biased** (its decision rests on a rare, example-specific
   route). Then the model is retrained (from its initial weights, as the released code trains a
   new network, unless ``fresh_model: false``) for ``retrain_epochs``, with dropout of rate
   ``dropout`` on the hidden inputs of the traced layers for the biased examples only: their
   rare routes are broken up, while the other examples train as before.

Differences from the released code, on purpose: the contributions are those of the activations
after the ReLU (the released code multiplies the weights by the values before it), a logit below 0
is traced towards its own sign (the contributions that pushed the decision to 0), only positive
contributions extend a path, and biased and other examples share batches (dropout is applied per
example) instead of alternating loaders. The fully connected layers are every ``nn.Linear`` of the
model's chain that ends at the output (the MLP's hidden and output layers; the CNN's and ResNet's
head, whose inputs are the pooled channels); a Linear fed by the raw input is not traced, as in the
released code.

Refuses DP: the path analysis reads every training example's activations unclipped, and whether an
example is biased depends on how many other examples share its path, a statistic of the whole
training set that no per-example clipping bounds.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dataset.base import gather_rows
from training.repair import METHODS
from training.repair.base import Phase, RepairMethod, TrainingSet
from utils.config import check

READS_EVERY_RECORD = ("its path analysis reads every training example's activations unclipped, and "
                      "an example's dropout depends on how many others share its path, a statistic "
                      "of the training set that per-example clipping does not bound.")
NO_LINEAR_CHAIN = ("fairness.method 'fairneuron' found no fully connected layer to trace in model "
                   "{model}: it needs an nn.Linear output layer fed by hidden activations. Use "
                   "model.name mlp with model.hidden set, cnn, or resnet18.")


@dataclass(frozen=True, kw_only=True)
class FairNeuronSettings:
    """``fairness.fairneuron``.

    Attributes:
        theta: a path occurring at most max(theta × the commonest path's count, 1) times marks its
            examples biased; in (0, 1] (RUNNER's README: searched over [1e-4, 1] on a log scale).
        gamma: the share of a neuron's value its kept contributions must reach, in (0, 1]
            (searched over [0.5, 1]).
        dropout: the dropout rate applied to the biased examples in the retraining, in [0, 1).
        retrain_epochs: epochs of the retraining phase; null: ``training.epochs``.
        fresh_model: retrain from the model's initial weights with a new optimizer (as the
            released code does) rather than continue from the trained model.
    """

    theta: float = 1e-3
    gamma: float = 0.9
    dropout: float = 0.1
    retrain_epochs: int | None = None
    fresh_model: bool = True

    def validate(self) -> None:
        check(0 < self.theta <= 1, "fairness.fairneuron.theta", self.theta, "a number in (0, 1]")
        check(0 < self.gamma <= 1, "fairness.fairneuron.gamma", self.gamma, "a number in (0, 1]")
        check(0 <= self.dropout < 1, "fairness.fairneuron.dropout", self.dropout,
               "a rate in [0, 1)")
        check(self.retrain_epochs is None or self.retrain_epochs > 0,
               "fairness.fairneuron.retrain_epochs", self.retrain_epochs,
               "a positive integer, or null for training.epochs")


def linear_chain(model: nn.Module) -> list[nn.Linear]:
    """The fully connected layers whose paths are traced: the longest run of ``nn.Linear`` modules,
    in registration order, that ends at the model's last Linear and whose widths connect (each
    one's outputs are the next one's inputs), without a first layer fed by the raw input."""
    modules = list(model.modules())
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if not linears:
        return []
    chain = [linears[-1]]
    for layer in reversed(linears[:-1]):
        if layer.out_features != chain[0].in_features:
            break
        chain.insert(0, layer)
    parametrized = [m for m in modules if isinstance(m, (nn.Linear, nn.Conv2d))]
    if parametrized[0] is chain[0]:  # fed by the raw input: not a path between neurons
        chain = chain[1:]
    return chain


def path_edges(inputs: list[torch.Tensor], layers: list[nn.Linear], gamma: float) -> torch.Tensor:
    """Each example's path as one flat bool tensor of kept edges, shape (B, Σ out × in).

    ``inputs[i]`` is the input of ``layers[i]`` for the batch (B, in_i), so ``inputs[i + 1]`` is
    the activation of ``layers[i]``'s neurons. Tracing starts at the last layer's output neuron,
    oriented by the sign of its value so that the contributions towards the decision are the
    positive ones; a traced neuron keeps its positive contributions in decreasing order while the
    sum of those already kept is below ``gamma`` × its (oriented) value.
    """
    batch = len(inputs[-1])
    last = layers[-1]
    value = inputs[-1] @ last.weight.T + last.bias  # (B, out)
    sign = torch.where(value >= 0, 1.0, -1.0)
    active = torch.ones_like(value, dtype=torch.bool)
    edges = []
    for i in range(len(layers) - 1, -1, -1):
        layer, a = layers[i], inputs[i]
        if i < len(layers) - 1:
            value = a_next = inputs[i + 1]  # the traced neurons' values (after the ReLU)
            sign = torch.ones_like(a_next)
        # Only the traced (example, neuron) pairs are sorted: (P, in) contributions each.
        example, neuron = active.nonzero(as_tuple=True)
        contributions = sign[example, neuron, None] * layer.weight[neuron] * a[example]
        ordered, order = contributions.sort(dim=1, descending=True)
        before = ordered.cumsum(1) - ordered
        bound = gamma * (sign * value)[example, neuron, None]
        kept = torch.zeros_like(ordered, dtype=torch.bool).scatter(
            1, order, (ordered > 0) & (before < bound))
        keep = torch.zeros(batch, layer.out_features, layer.in_features, dtype=torch.bool,
                           device=a.device)
        keep[example, neuron] = kept
        edges.append(keep.reshape(batch, -1))
        active = keep.any(dim=1)  # the input neurons reached become the next layer's traced ones
    return torch.cat(edges[::-1], dim=1)


def path_signatures(edges: torch.Tensor) -> list[bytes]:
    """A 16-byte digest of each row of ``edges`` (the kept-edge set), so that equal paths compare
    equal without holding every path's bits."""
    packed = np.packbits(edges.cpu().numpy(), axis=1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in packed]


def biased_examples(signatures: list[bytes], theta: float) -> np.ndarray:
    """True for the examples whose path occurs at most max(theta × the top count, 1) times."""
    counts = Counter(signatures)
    bound = max(theta * max(counts.values()), 1)
    return np.array([counts[signature] <= bound for signature in signatures], dtype=bool)


@METHODS.register("fairneuron")
class FairNeuron(RepairMethod):
    """Schedule: train, path analysis, retrain with dropout on the examples of rare paths."""

    Settings = FairNeuronSettings
    refuses = {"dpsgd": READS_EVERY_RECORD, "dpfedavg": READS_EVERY_RECORD}

    def __init__(self, settings: FairNeuronSettings, **kwargs):
        super().__init__(settings, **kwargs)
        self.biased: torch.Tensor | None = None  # over the training set, once the analysis ran
        self._batch_biased: torch.Tensor | None = None
        self._recorded: list[torch.Tensor] | None = None
        self._dropout_generator: torch.Generator | None = None
        self.facts: dict[str, Any] = {}

    def phases(self, epochs: int) -> list[Phase]:
        retrain = self.settings.retrain_epochs or epochs
        return [Phase("train", epochs),
                Phase("retrain", retrain, fresh_model=self.settings.fresh_model)]

    def attach(self, model: nn.Module) -> None:
        self._layers = linear_chain(model)
        if not self._layers:
            from utils.errors import ConfigError

            raise ConfigError(NO_LINEAR_CHAIN.format(model=type(model).__name__))
        device = self._layers[-1].weight.device
        # Dropout's own stream, split from the method's (utils.seeding "repair").
        self._dropout_generator = torch.Generator(device=device).manual_seed(
            int(self.rng.integers(2**62)))
        for index, layer in enumerate(self._layers):
            layer.register_forward_pre_hook(self._hook(index))

    def _hook(self, index: int):
        def hook(module, args):
            (x,) = args
            if self._recorded is not None:
                self._recorded.append(x.detach().flatten(1))
            if not module.training or self._batch_biased is None or self.settings.dropout == 0:
                return None
            keep = 1 - self.settings.dropout
            mask = (torch.rand(x.shape, generator=self._dropout_generator, device=x.device)
                    < keep).to(x.dtype) / keep
            rows = self._batch_biased.reshape(-1, *([1] * (x.ndim - 1)))
            return (torch.where(rows, x * mask, x),)
        return hook

    def start_phase(self, index: int, phase: Phase, model: nn.Module, data: TrainingSet) -> None:
        """The path analysis of every training example on the model the first phase trained."""
        was_training = model.training
        model.eval()
        signatures: list[bytes] = []
        # The (examples, out, in) contributions of a chunk stay within 2**24 numbers.
        widest = max(layer.in_features * layer.out_features for layer in self._layers)
        chunk = max(1, min(data.batch_size, 2**24 // widest))
        with torch.no_grad():
            for start in range(0, len(data.y), chunk):
                rows = torch.arange(start, min(start + chunk, len(data.y)), device=data.y.device)
                x = gather_rows(data.x, rows)
                if data.transform is not None:
                    x = data.transform(x, False)
                self._recorded = []
                model(x)
                inputs, self._recorded = self._recorded, None
                signatures += path_signatures(path_edges(inputs, self._layers, self.settings.gamma))
        model.train(was_training)
        biased = biased_examples(signatures, self.settings.theta)
        self.biased = torch.as_tensor(biased, device=data.y.device)
        minority = data.minority.cpu().numpy()
        self.facts = {
            "fairneuron/biased_fraction": float(biased.mean()),
            "fairneuron/biased_fraction/group=minority": float(biased[minority].mean())
            if minority.any() else None,
            "fairneuron/biased_fraction/group=majority": float(biased[~minority].mean())
            if (~minority).any() else None,
            "fairneuron/distinct_paths": len(set(signatures)),
        }

    def info(self) -> dict[str, Any]:
        return dict(self.facts)

    def before_forward(self, indices: torch.Tensor) -> None:
        self._batch_biased = None if self.biased is None else self.biased[indices]

    def state_dict(self) -> dict[str, Any]:
        return {"biased": self.biased, "facts": dict(self.facts),
                "dropout_generator": self._dropout_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        biased = state["biased"]  # None while the first phase trains
        self.biased = None if biased is None else biased.to(self._layers[-1].weight.device)
        self.facts = dict(state["facts"])
        self._dropout_generator.set_state(state["dropout_generator"])
