"""``runner`` (Li et al., "RUNNER: Responsible UNfair NEuron Repair for Enhancing Deep Neural
Network Fairness", ICSE 2024): repair the neurons that carry the unfairness.

At every step, with L_fair the gap of the soft outputs between the groups (gapreg's term: dp, or
summed within each label for eo):

1. each hidden neuron's importance to L_fair is the first-order Taylor term over its incoming
   weights, I_i = Σ_j (W_ij · ∂L_fair/∂W_ij)² (a conv channel's incoming weights are its kernel);
2. in each hidden layer the top ``neuron_ratio`` share of neurons (at least one) is selected;
3. λ × the gap of the selected neurons' batch-mean activations between the groups (dp), or between
   the groups within each label plus the output gap L_fair itself (eo), is added to the loss.

The importance costs one extra backward pass of L_fair onto the incoming weights
(``torch.autograd.grad`` with the graph kept for the training loss), not a copy of the model per
step as in the released code. A neuron is the output of a ReLU that follows a Linear or Conv2d layer
(a conv channel, averaged over space, for the CNN), found by walking the model's modules, so the
models stay plain ``nn.Module`` classes; the activations come from forward hooks the trainer
registers (:meth:`RepairMethod.hidden_layers`).

Refuses DP: the gap terms are means over the batch's groups, which couple examples, and the neuron
selection reads the batch; neither is bounded by per-example clipping (the repair-under-privacy
issue is to build the decomposed form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.repair import METHODS
from training.repair.base import Batch, LossTerms, RepairMethod, cell_mean_matrix, gap_of_means
from utils.config import _check

COUPLES_EXAMPLES = ("its neuron gaps and the neuron selection are computed over the batch's "
                    "groups, which couples examples, so per-example clipping does not bound one "
                    "example's influence.")
NO_NEURONS = ("fairness.method 'runner' found no hidden neurons in model {model}: it needs a ReLU "
              "after a Linear or Conv2d layer. Use model.name mlp or cnn.")


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """``fairness.runner``.

    Attributes:
        lam: λ, the weight of the neuron-gap term (RUNNER's README: 0.3 for dp, 1.0 for eo on Adult).
        neuron_ratio: the share of each hidden layer's neurons repaired, in (0, 1] (the README's k
            table: Adult dp 0.5, eo 0.05; COMPAS, Credit, LSAC 0.05; CelebA 0.05-0.5).
    """

    lam: float = 0.3
    neuron_ratio: float = 0.5

    def validate(self) -> None:
        _check(self.lam >= 0, "fairness.runner.lam", self.lam, "a number >= 0")
        _check(0 < self.neuron_ratio <= 1, "fairness.runner.neuron_ratio", self.neuron_ratio,
               "a share in (0, 1]")


def neuron_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, incoming-weights layer, ReLU)`` for every hidden layer of neurons, in order: each
    ReLU module paired with the last Linear or Conv2d registered before it."""
    layers, last = [], None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = module
        elif isinstance(module, nn.ReLU) and last is not None:
            layers.append((name, last, module))
            last = None  # a second ReLU without a new layer in between is not a new neuron layer
    return layers


def selected_count(neurons: int, ratio: float) -> int:
    """How many of a layer's ``neurons`` are repaired: the ``ratio`` share, rounded down, at least 1."""
    return max(1, int(ratio * neurons))


def neuron_importance(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """I_i = Σ_j (W_ij · ∂L/∂W_ij)² over each output neuron's incoming weights (first axis)."""
    if grad is None:  # L_fair does not depend on the layer (e.g. a constant batch)
        return weight.new_zeros(weight.shape[0])
    return (weight.detach() * grad).pow(2).flatten(1).sum(1)


@METHODS.register("runner")
class Runner(RepairMethod):
    """In-processing: the gaps of the most unfairness-important neurons added to the loss."""

    Settings = RunnerSettings
    refuses = {"dpsgd": COUPLES_EXAMPLES, "dpfedavg": COUPLES_EXAMPLES}
    wants_activations = True

    def hidden_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = neuron_layers(model)
        if not layers:
            from utils.errors import ConfigError

            raise ConfigError(NO_NEURONS.format(model=type(model).__name__))
        self._layers = layers
        return {name: relu for name, _, relu in layers}

    def selection(self, batch: Batch, cells: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_fair of the batch and, per hidden layer, the indices of its selected neurons."""
        if cells is None:
            cells = cell_mean_matrix(batch.minority, batch.targets, self.target)
        fair = gap_of_means(cells, torch.sigmoid(batch.logits))
        weights = [layer.weight for _, layer, _ in self._layers]
        grads = (torch.autograd.grad(fair, weights, retain_graph=True, allow_unused=True)
                 if fair.requires_grad else [None] * len(weights))
        chosen = {}
        for (name, _, _), weight, grad in zip(self._layers, weights, grads):
            importance = neuron_importance(weight, grad)
            k = selected_count(len(importance), self.settings.neuron_ratio)
            chosen[name] = importance.topk(k).indices
        return fair, chosen

    def loss(self, batch: Batch, model: nn.Module) -> LossTerms:
        # The groups' averaging rows, made once and shared by the output and every layer.
        cells = cell_mean_matrix(batch.minority, batch.targets, self.target)
        fair, chosen = self.selection(batch, cells)
        repair = fair if self.target == "eo" else fair.new_zeros(())
        for name, index in chosen.items():
            activation = batch.activations[name]
            if activation.ndim > 2:  # conv channels: a channel's mean over space is its value
                activation = activation.flatten(2).mean(2)
            if len(cells) == 0:
                continue
            # Every neuron's group means in one product, then the selected neurons' gaps: the
            # selection indexes a (pairs, neurons) matrix, not the (batch, neurons) activations.
            means = cells.to(activation.dtype) @ activation
            gaps = (means[0::2] - means[1::2]).abs()
            repair = repair + gaps[:, index].mean(dim=1).sum()
        return LossTerms(batch.losses * batch.weights, self.settings.lam * repair)
