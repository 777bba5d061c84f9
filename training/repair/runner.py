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

Under DP-SGD (sound, the per-example form): the batch's selection and gaps couple examples, so at
every step the selection (steps 1-2) and the sign of each selected neuron's gap (and of the output
gap, eo) are computed from the current model on the public validation split
(``fairness.public_examples`` of it, DP-SGD's per-example hooks off), and each gap between batch
means becomes a sum of per-example terms with the group shares from the noisy counts
(:func:`training.repair.base.per_example_gap`, :mod:`privacy.releases`, accounted in ε), as for
gapreg. Example i's term reads only example i's activations and these public or released
quantities, and is added to its loss before DP-SGD clips its gradient: the clipping bounds its
whole contribution. Under DP-FedAvg (sound, in the clients): each client selects and repairs on its
own local batches, reading only its own data; its whole update is clipped and noised at the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.repair import METHODS
from training.repair.base import (
    Batch,
    LossTerms,
    PublicGapForm,
    RepairMethod,
    cell_mean_matrix,
    gap_of_means,
    pair_signs,
    per_example_gap,
)
from utils.config import check

NO_NEURONS = ("fairness.method 'runner' found no hidden neurons in model {model}: it needs a ReLU "
              "after a Linear or Conv2d layer. Use model.name mlp or cnn.")


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """``fairness.runner``.

    Attributes:
        lam: λ, the weight of the neuron-gap term (RUNNER's README: 0.3 for dp, 1.0 for eo on Adult).
        neuron_ratio: the share of each hidden layer's neurons repaired, in (0, 1] (RUNNER's README's k
            table: Adult dp 0.5, eo 0.05; COMPAS, Credit, LSAC 0.05; CelebA 0.05-0.5).
    """

    lam: float = 0.3
    neuron_ratio: float = 0.5

    def validate(self) -> None:
        check(self.lam >= 0, "fairness.runner.lam", self.lam, "a number >= 0")
        check(0 < self.neuron_ratio <= 1, "fairness.runner.neuron_ratio", self.neuron_ratio,
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
class Runner(PublicGapForm, RepairMethod):
    """In-processing: the gaps of the most unfairness-important neurons added to the loss."""

    Settings = RunnerSettings
    wants_activations = True
    trains_in_clients = True
    public_reads = "the neuron selection and the sign of each gap"

    def prepare(self, data):
        if self.uses_public_form:
            self._prepare_public_form(data)
        return data

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

    def before_step(self, model: nn.Module) -> None:
        """The selection and the signs of the selected neurons' gaps (and of the output gap), from
        the model on the public examples (the per-example form under DP-SGD)."""
        public = self.public_split(next(model.parameters()).device)
        activations: dict[str, torch.Tensor] = {}
        handles = [relu.register_forward_hook(
            lambda module, inputs, output, name=name: activations.__setitem__(name, output))
            for name, _, relu in self._layers]
        try:
            logits = model(public.inputs()).reshape(-1)
        finally:
            for handle in handles:
                handle.remove()
        view = Batch(logits=logits, targets=public.y, minority=public.minority,
                     weights=torch.ones_like(public.y), losses=torch.zeros_like(public.y),
                     activations=activations)
        _, self._chosen = self.selection(view)
        with torch.no_grad():
            self._output_signs = pair_signs(torch.sigmoid(logits.detach()), public.minority,
                                            public.y, self.target)
            self._neuron_signs = {
                name: pair_signs(_neuron_values(activations[name])[:, index], public.minority,
                                 public.y, self.target)
                for name, index in self._chosen.items()}

    def _per_example_loss(self, batch: Batch) -> LossTerms:
        """The DP-SGD form: every gap a sum of per-example terms, nothing coupled."""
        terms = (per_example_gap(torch.sigmoid(batch.logits), batch.minority, batch.targets,
                                 self.target, self._output_signs, self._inverse_shares)
                 if self.target == "eo" else torch.zeros_like(batch.losses))
        for name, index in self._chosen.items():
            terms = terms + per_example_gap(
                _neuron_values(batch.activations[name])[:, index], batch.minority, batch.targets,
                self.target, self._neuron_signs[name], self._inverse_shares)
        return LossTerms(batch.losses * batch.weights + self.settings.lam * terms)

    def loss(self, batch: Batch, model: nn.Module) -> LossTerms:
        if self.uses_public_form:
            return self._per_example_loss(batch)
        # The groups' averaging rows, made once and shared by the output and every layer.
        cells = cell_mean_matrix(batch.minority, batch.targets, self.target)
        fair, chosen = self.selection(batch, cells)
        repair = fair if self.target == "eo" else fair.new_zeros(())
        for name, index in chosen.items():
            activation = _neuron_values(batch.activations[name])
            if len(cells) == 0:
                continue
            # Every neuron's group means in one product, then the selected neurons' gaps: the
            # selection indexes a (pairs, neurons) matrix, not the (batch, neurons) activations.
            means = cells.to(activation.dtype) @ activation
            gaps = (means[0::2] - means[1::2]).abs()
            repair = repair + gaps[:, index].mean(dim=1).sum()
        return LossTerms(batch.losses * batch.weights, self.settings.lam * repair)


def _neuron_values(activation: torch.Tensor) -> torch.Tensor:
    """(B, neurons): a conv channel's value is its mean over space."""
    return activation.flatten(2).mean(2) if activation.ndim > 2 else activation
