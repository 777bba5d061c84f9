"""A ReLU MLP's training pass written out, without autograd: the forward pass, the weighted binary
cross-entropy's δ and the backward pass, each layer's input and δ kept for DP-SGD's clipping.

An MLP's backward pass is short enough to write by hand, and on the CPU autograd's graph, its
engine and a hook per layer cost more than the arithmetic at Adult's sizes (issue 30: the fast
engine at batch 256 spent a third of its step there). Two trainers use it:

- a lone DP-SGD run of a ReLU MLP on the fast engine (:class:`training.centralized.CentralizedTrainer`,
  ``dp_step: written out``): it hands the records to the engine
  (:meth:`privacy.fast_dpsgd.FastPrivateTraining.record_pass`), which clips, noises and accounts
  the step exactly as after ``loss.backward()``;
- K stacked runs (:class:`training.stacking.StackedTrainer`): the same pass batched over a first
  axis of K, one ``torch.baddbmm`` per layer.

The δ at the logit of example i's weighted loss wᵢ·BCE(zᵢ, yᵢ) is wᵢ(σ(zᵢ) − yᵢ); through a linear
layer and a ReLU, δ_{l-1} = (δ_l W_l) ⊙ [a_l > 0] (ReLU's backward as autograd runs it,
``threshold_backward`` at the layer's input). These are the δ of the *summed* weighted loss, so each
example's own gradient in layer l is δᵢaᵢᵀ (and δᵢ for the bias); a row of weight 0 (padding) has
δ = 0 at every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from models.mlp import MLP


def is_relu_mlp(model: nn.Module) -> bool:
    """Whether ``model`` is the registry's MLP of biased Linear layers with ReLU between: the model
    whose forward pass :func:`relu_mlp_pass` writes out (``net`` on the flattened input)."""
    if type(model) is not MLP:
        return False
    layers = list(model.net)
    return len(layers) % 2 == 1 and all(
        type(layer) is nn.ReLU if i % 2 else
        type(layer) is nn.Linear and layer.bias is not None
        for i, layer in enumerate(layers))


def relu_mlp_pass(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor],
                                                  list[torch.Tensor]]:
    """The pass of a ReLU MLP with parameters ``params`` (weight, bias of each layer, in order) on
    inputs ``x`` (n, features) with targets ``y`` and loss weights ``weights`` (n,): its logits (n,),
    each layer's input and each layer's δ of the summed weighted loss (n, out).

    Stacked: ``params`` with a first axis of K runs and ``x`` (K, n, features), ``y`` and
    ``weights`` (K, n); everything returned then has the first axis K too.
    """
    stacked = x.ndim == 3
    layers = len(params) // 2
    a, inputs = x, []
    for layer in range(layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        inputs.append(a)
        z = (torch.baddbmm(bias.unsqueeze(1), a, weight.transpose(1, 2)) if stacked
             else torch.addmm(bias, a, weight.t()))
        a = torch.relu(z) if layer + 1 < layers else z
    logits = a.squeeze(-1)
    deltas = [((torch.sigmoid(logits) - y) * weights).unsqueeze(-1)]
    for layer in range(layers - 1, 0, -1):  # ReLU's backward as one op (no mask tensor)
        weight = params[2 * layer]
        back = torch.bmm(deltas[0], weight) if stacked else deltas[0].mm(weight)
        deltas.insert(0, torch.ops.aten.threshold_backward(back, inputs[layer], 0))
    return logits, inputs, deltas
