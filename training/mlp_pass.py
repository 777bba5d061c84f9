"""An MLP's training pass written out, without autograd: the forward pass, the weighted binary
cross-entropy's δ and the backward pass, each layer's input and δ kept for DP-SGD's clipping.

An MLP's backward pass is short enough to write by hand, and on the CPU autograd's graph, its
engine and a hook per layer cost more than the arithmetic at Adult's sizes (issue 30: the fast
engine at batch 256 spent a third of its step there). Two trainers use it:

- a lone DP-SGD run of an MLP (ReLU or tanh) on the fast engine
  (:class:`training.centralized.CentralizedTrainer`, ``dp_step: written out``): it hands the
  records to the engine
  (:meth:`privacy.fast_dpsgd.FastPrivateTraining.record_pass`), which clips, noises and accounts
  the step exactly as after ``loss.backward()``;
- K stacked runs (:class:`training.stacking.StackedTrainer`): the same pass batched over a first
  axis of K, one ``torch.baddbmm`` per layer.

The δ at the logit of example i's weighted loss wᵢ·BCE(zᵢ, yᵢ) is wᵢ(σ(zᵢ) − yᵢ); through a linear
layer and its activation, δ_{l-1} = (δ_l W_l) ⊙ f'(·), f' from the activation's output a_l (the
next layer's input): [a_l > 0] for ReLU, 1 − a_l² for tanh, with the kernels autograd itself runs
(:data:`privacy.fast_dpsgd.ACTIVATION_BACKWARD`). These are the δ of the *summed* weighted loss, so each
example's own gradient in layer l is δᵢaᵢᵀ (and δᵢ for the bias); a row of weight 0 (padding) has
δ = 0 at every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from models.mlp import MLP
from privacy.fast_dpsgd import ACTIVATION_BACKWARD

# The activation's forward, for each activation the pass writes out (its backward:
# privacy.fast_dpsgd.ACTIVATION_BACKWARD, the one the engine's Linear chains use).
ACTIVATION_FORWARD = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh}


def mlp_activation(model: nn.Module) -> type[nn.Module] | None:
    """The activation (``nn.ReLU`` or ``nn.Tanh``) of ``model`` if it is the registry's MLP of
    biased Linear layers with that activation between: the model whose forward pass
    :func:`mlp_pass` writes out (``net`` on the flattened input); else None."""
    if type(model) is not MLP:
        return None
    layers = list(model.net)
    between = {type(layer) for layer in layers[1::2]}
    if (len(layers) % 2 == 0 or len(between) > 1
            or not all(type(layer) is nn.Linear and layer.bias is not None
                       for layer in layers[::2])):
        return None
    activation = next(iter(between), nn.ReLU)  # one Linear layer alone: nothing between
    return activation if activation in ACTIVATION_FORWARD else None


def mlp_pass(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
             activation: type[nn.Module] = nn.ReLU
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The pass of an MLP with parameters ``params`` (weight, bias of each layer, in order) and
    ``activation`` between its layers, on inputs ``x`` (n, features) with targets ``y`` and loss
    weights ``weights`` (n,): its logits (n,), each layer's input and each layer's δ of the
    summed weighted loss (n, out).

    Stacked: ``params`` with a first axis of K runs and ``x`` (K, n, features), ``y`` and
    ``weights`` (K, n); everything returned then has the first axis K too. Computed without
    autograd, whether or not ``params`` require gradients.
    """
    with torch.no_grad():
        return _pass(params, x, y, weights, activation)


def _pass(params, x, y, weights, activation):
    stacked = x.ndim == 3
    forward, backward = ACTIVATION_FORWARD[activation], ACTIVATION_BACKWARD[activation]
    layers = len(params) // 2
    a, inputs = x, []
    for layer in range(layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        inputs.append(a)
        z = (torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2)) if stacked
             else torch.addmm(bias, a, weight.t()))
        a = forward(z) if layer + 1 < layers else z
    logits = a.squeeze(-1)
    deltas = [((torch.sigmoid(logits) - y) * weights).unsqueeze(-1)]
    for layer in range(layers - 1, 0, -1):  # the activation's backward as one op (no mask)
        weight = params[2 * layer]
        back = torch.bmm(deltas[0], weight) if stacked else deltas[0].mm(weight)
        deltas.insert(0, backward(back, inputs[layer]))
    return logits, inputs, deltas
