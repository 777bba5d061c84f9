"""DP-FedAvg: federated averaging with user-level differential privacy (``privacy.mode: dpfedavg``).

The algorithm is McMahan et al., "Learning Differentially Private Recurrent Language Models"
(ICLR 2018), with Poisson client sampling and the fixed denominator:

    for each round t = 1..T:
        every client k joins independently with probability q        (Poisson: the accountant's
                                                                       sampled Gaussian assumes it)
        each chosen client: θ_k ← θ; local_epochs of SGD(client_lr) on its own data; Δ_k = θ_k − θ
        server: Δ̄ = (Σ_k clip_S(Δ_k) + N(0, σ²S²)) / (q·N)           (privacy.dpfedavg)
                v ← β·v + Δ̄;  θ ← θ + server_lr · v                   (β = server_momentum)

One round is one sampled-Gaussian step with (q, σ) at the level of a user, so ε after T rounds is
:func:`privacy.accounting.epsilon_after` with ``steps = T``; ``target_epsilon`` picks σ for the
planned ``federated.rounds`` as DP-SGD does for its steps.

Adaptive clipping (``privacy.clipping: adaptive`` or ``bounded_adaptive``, Andrew et al. 2021, made
for this setting; :mod:`privacy.clipping`): S is the rule's bound S_t of the round; after the round
the rule releases the noisy count of the round's clients whose update norm was at most S_t and
moves the bound toward the target quantile. The round and its release are one sampled Gaussian
mechanism at the effective noise multiplier, which the accountant records; a target ε solves for
σ with the release included. Local training needs no noise: only
what leaves the client (Δ_k) has to be private, and the server's clip-and-noise makes it so.

The clients chosen in a round are trained side by side (:func:`local_updates_vectorized`): their
parameters are stacked along a leading client axis and each local SGD step is one
``vmap(grad(functional_call))`` over that axis. Clients differ in size, so each client's batches are
padded to ``batch_size`` with masked examples (zero loss) and a client whose
``local_epochs · ceil(n_k / batch_size)`` steps are done keeps its parameters while the others
continue. :func:`local_updates_loop` trains the same clients one after another with ordinary
autograd; it is the reference the tests compare the batched path with, and the
``vectorized=False`` option of the trainer.

Each round also reports ``train/loss`` (the clients' mean local training loss), ``dp/clip_fraction``
and ``dp/update_norm`` (of the raw updates), their per-group forms (:func:`group_clip_diagnostics`)
and ``federated/clients``. These are computed from the clients' data without noise: diagnostics
for tuning S and the learning rates, and for seeing whom the clipping hits, like DP-SGD's training
loss and per-group clip fractions, and not covered by the reported ε.

Under ``privacy.individual_accounting`` every ``privacy.individual_every`` rounds the trainer also
computes every client's update norm at the current global model, in one pass over the whole
population with the same local training (:meth:`FederatedTrainer.population_update_norms`), and at
the end each client's individual user-level ε, which each of its examples carries
(:mod:`privacy.individual`, individual_privacy.csv). The pass draws from a stream of its own and
trains nothing, so the run's model is the one it would be without it.

The run loop (``running.py``) sees a :class:`training.base.Trainer` whose unit is a round: it calls
``train_unit`` ``federated.rounds`` times and evaluates ``trainer.model`` (the global model) every
``federated.eval_every`` rounds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dataset.base import BatchTransform, DataBundle, gather_rows, place_inputs
from privacy.accounting import epsilon_after
from privacy.dpfedavg import DPFedAvg
from privacy.individual import (
    IndividualPrivacy,
    SensitivityLedger,
    individual_epsilons,
    summarize,
)
from training import TRAINERS
from training.base import HISTORY_KEY, delta_warning
from training.partition import partition_clients, partition_counts, partition_summary
from training.repair.base import Batch, RepairMethod
from training.repair.vanilla import Vanilla
from utils.config import FederatedConfig, PrivacyConfig
from utils.errors import ConfigError, warn_user
from utils.fairness import GROUPS
from utils.seeding import RunStreams, stream_seed, torch_generator

# Rough memory budget of one batched chunk of clients, and how many times the size of a batch's
# inputs its activations are assumed to take (see :func:`default_chunk_size`).
_CHUNK_BUDGET_BYTES = 2 * 1024**3
_ACTIVATION_FACTOR = 64


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name, detached: the state clients train and send."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def flatten(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split the last axis of ``vector`` into views shaped like ``like`` (the inverse of
    :func:`flatten`); leading axes stay, so the rows of a (clients, d) matrix split into
    (clients, *shape) views, and writing to a view writes to the matrix."""
    out, start = {}, 0
    leading = vector.shape[:-1]
    for name, p in like.items():
        out[name] = vector[..., start:start + p.numel()].view(*leading, *p.shape)
        start += p.numel()
    return out


@dataclass(frozen=True)
class LocalOrders:
    """The example order of every chosen client in every local epoch of one round.

    Attributes:
        index: shape (clients, local_epochs, max client size); row ``[i, e]`` starts with client
            ``i``'s global example indices in the order epoch ``e`` visits them, followed by
            padding (index 0) up to the largest client's size.
        sizes: shape (clients,), each client's number of examples (the real part of each row).

    Batch ``j`` of client ``i``'s epoch ``e`` is ``index[i, e, j·B:(j+1)·B]`` cut at ``sizes[i]``.
    """

    index: torch.Tensor
    sizes: torch.Tensor

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, rows: slice) -> LocalOrders:
        return LocalOrders(self.index[rows], self.sizes[rows])

    def to(self, device: torch.device | str) -> LocalOrders:
        return LocalOrders(self.index.to(device), self.sizes.to(device))


def client_table(clients: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clients' example indices as one padded (clients, max size) table, and their sizes."""
    sizes = torch.tensor([len(c) for c in clients], dtype=torch.int64)
    table = torch.zeros(len(clients), int(sizes.max()) if len(clients) else 0, dtype=torch.int64)
    for k, indices in enumerate(clients):
        table[k, :len(indices)] = torch.as_tensor(indices)
    return table, sizes


def draw_local_orders(table: torch.Tensor, sizes: torch.Tensor, local_epochs: int,
                      generator: torch.Generator) -> LocalOrders:
    """Each chosen client's example order for each local epoch: a fresh shuffle of its own data.

    Args:
        table, sizes: the chosen clients' rows of :func:`client_table` (on the CPU).
        local_epochs: epochs per round.
        generator: the CPU generator of the shuffles.

    Every row gets independent uniform keys and is sorted by them, which is a uniformly random
    permutation of the client's examples drawn for all clients at once; padding gets the key 2,
    above every real key, so it stays at the end. Both the batched and the per-client
    implementation consume these orders, so for a given generator state they train every client on
    the same batches.
    """
    clients, width = table.shape
    keys = torch.rand(clients, local_epochs, width, generator=generator)
    padding = torch.arange(width) >= sizes.view(-1, 1, 1)
    perm = keys.masked_fill(padding, 2.0).argsort(dim=2)
    index = table.unsqueeze(1).expand(clients, local_epochs, width).gather(2, perm)
    return LocalOrders(index, sizes)


def _batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), targets, reduction="none")


def _no_updates(global_params: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, float, int]:
    return torch.zeros(0, sum(p.numel() for p in global_params.values()), device=device), 0.0, 0


def local_updates_loop(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    orders: LocalOrders,
    *,
    lr: float,
    batch_size: int,
    transform: BatchTransform | None = None,
    weights: torch.Tensor | None = None,
    minority: torch.Tensor | None = None,
    method: RepairMethod | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Train the clients one after another; the reference implementation.

    Args:
        model: the network (its architecture; its parameter values are not used).
        global_params: the global model's trainable parameters, where every client starts.
        x, y: the whole training set (y as float 0/1 targets, on the device that trains; x there too
            or in host memory, see :func:`dataset.base.place_inputs`).
        orders: the clients' visiting orders (:func:`draw_local_orders`).
        lr: the clients' SGD learning rate.
        batch_size: examples per local step; an epoch's last batch holds the remainder.
        transform: the data set's per-batch device transform, applied in training mode.
        weights: per-example loss weights over the training set (each client's own, e.g. local
            reweighing), or None for 1.
        minority: the group flags over the training set, for ``method``.
        method: a repair method whose loss each client trains with on its own batches
            (:attr:`RepairMethod.trains_in_clients`); None for the plain cross-entropy.

    Returns:
        ``(updates, loss_sum, examples)``: the flat updates Δ_k = θ_k − θ, shape (clients, d); the
        sum of the per-example training losses over all local steps; and the number of examples
        those steps processed.
    """
    if not len(orders):
        return _no_updates(global_params, y.device)
    local = copy.deepcopy(model).train()
    activations: dict[str, torch.Tensor] = {}
    handles = []
    if method is not None and method.wants_activations:
        for name, module in method.hidden_layers(local).items():
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: activations.__setitem__(name, o)))
    params = dict(local.named_parameters())
    updates, loss_sum, examples = [], 0.0, 0
    for epochs, size in zip(orders.index, orders.sizes.tolist()):
        with torch.no_grad():
            for name, value in global_params.items():
                params[name].copy_(value)
        for order in epochs:
            order = order[:size]
            for start in range(0, size, batch_size):
                batch = order[start:start + batch_size]
                inputs = gather_rows(x, batch)
                if transform is not None:
                    inputs = transform(inputs, True)
                logits = local(inputs).reshape(-1)
                losses = _batch_loss(logits, y[batch])
                weight = weights[batch] if weights is not None else torch.ones_like(losses)
                local.zero_grad(set_to_none=True)
                if method is None:
                    (losses * weight).mean().backward()
                else:  # the client's own batch, so the method reads only the client's data
                    method.loss(Batch(logits=logits, targets=y[batch], minority=minority[batch],
                                      weights=weight, losses=losses, activations=activations),
                                local).total().backward()
                with torch.no_grad():
                    for name in global_params:
                        params[name].sub_(lr * params[name].grad)
                loss_sum += float(losses.detach().sum())
                examples += len(batch)
        with torch.no_grad():
            updates.append(torch.cat([(params[n] - global_params[n]).reshape(-1)
                                      for n in global_params]))
    for handle in handles:
        handle.remove()
    return torch.stack(updates), loss_sum, examples


def pad_orders(orders: LocalOrders, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay the clients' batches out as one padded (clients, steps, batch_size) index tensor.

    Each epoch takes ``ceil(max size / B)`` steps, in which client i's ``ceil(n_i / B)`` batches
    come first (its last one padded) and are followed by all-padding steps, in which it does not
    move while larger clients go on; then the next epoch. Padding points at example 0 and is masked.

    Returns:
        ``(index, mask)``: global example indices and a bool mask of the real examples, both of
        shape (clients, local_epochs · ceil(max size / B), batch_size).
    """
    clients, epochs, width = orders.index.shape
    steps = math.ceil(width / batch_size)
    pad = steps * batch_size - width
    index = F.pad(orders.index, (0, pad)).view(clients, epochs * steps, batch_size)
    position = torch.arange(steps * batch_size, device=orders.sizes.device)
    mask = (position < orders.sizes.view(-1, 1)).view(clients, 1, steps * batch_size)
    mask = mask.expand(clients, epochs, steps * batch_size)
    mask = mask.reshape(clients, epochs * steps, batch_size)
    return index, mask


def local_updates_vectorized(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    orders: LocalOrders,
    *,
    lr: float,
    batch_size: int,
    transform: BatchTransform | None = None,
    chunk_size: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Train the clients side by side; the same arguments and results as :func:`local_updates_loop`.

    The clients' parameters are stacked on a leading axis and every local step is one call of
    ``vmap(grad(loss))`` over it (``torch.func``), on the padded batches of :func:`pad_orders`.
    Each client's loss is the mean over the *real* examples of its batch (padding is multiplied by
    0 and left out of the count), so its gradient is the one the loop computes; a step where a
    client has no real example is masked and leaves its parameters as they are.
    ``chunk_size`` bounds how many clients are stacked at once (memory); the results do not depend
    on it. ``weights`` are per-example loss weights over the training set, as in the loop.
    """
    if not len(orders):
        return _no_updates(global_params, y.device)
    chunk_size = chunk_size or len(orders)
    updates, loss_sum, examples = [], 0.0, 0
    for start in range(0, len(orders), chunk_size):
        chunk_updates, chunk_loss, chunk_examples = train_client_chunk(
            model, global_params, x, y, orders[start:start + chunk_size], lr=lr,
            batch_size=batch_size, transform=transform, example_weights=weights)
        updates.append(chunk_updates)
        loss_sum += chunk_loss
        examples += chunk_examples
    return (updates[0] if len(updates) == 1 else torch.cat(updates)), loss_sum, examples


def train_client_chunk(model, global_params, x, y, orders, *, lr, batch_size, transform,
                       example_weights=None, starts=None):
    """The clients of ``orders`` trained side by side (:func:`local_updates_vectorized`). With
    ``starts`` (clients, d), each client starts from its own row instead of ``global_params``
    (the stacked DP-FedAvg runs of :mod:`training.stacking`, whose clients belong to different
    runs), and the losses and examples come back per client: ``(updates, loss sums (clients,),
    examples (clients,))``."""
    index, mask = pad_orders(orders.to(y.device), batch_size)
    clients, steps, _ = index.shape
    weights_all = mask.to(y.dtype)
    loss_weights_all = (weights_all if example_weights is None
                        else weights_all * example_weights[index])

    def client_loss(params, inputs, targets, real, loss_weights):
        losses = _batch_loss(functional_call(model, params, (inputs,)), targets)
        # Mean over the real examples; a fully masked step has loss 0 and gradient 0.
        return ((losses * loss_weights).sum() / real.sum().clamp(min=1.0),
                (losses * real).sum().detach())

    # randomness="different": a model with dropout draws independent masks for each client, as
    # separate clients would.
    step_grads = vmap(grad(client_loss, has_aux=True), randomness="different")
    # Every client's parameters are views into one (clients, d) matrix: the steps update them in
    # place, and the matrix minus the global vector is the updates, with no copy at the end.
    if starts is None:
        start_vector = flatten(global_params)
        state = start_vector.unsqueeze(0).repeat(clients, 1)
    else:
        start_vector, state = starts, starts.clone()
    params = unflatten(state, global_params)
    loss_sum = torch.zeros((), device=y.device)
    client_losses = None if starts is None else torch.zeros(clients, device=y.device)
    model = model.train()
    for t in range(steps):
        batch = index[:, t]
        weights = weights_all[:, t]
        inputs = gather_rows(x, batch.reshape(-1))
        if transform is not None:
            inputs = transform(inputs, True)
        inputs = inputs.reshape(clients, batch_size, *inputs.shape[1:])
        grads, losses = step_grads(params, inputs, y[batch], weights, loss_weights_all[:, t])
        # A client with no example in this step takes no step (its gradient is 0 already; the
        # mask makes the intent explicit and keeps it true for any future update rule).
        step = weights.amax(dim=1) * -lr
        for name, value in params.items():
            value.addcmul_(step.view(-1, *[1] * (value.ndim - 1)), grads[name])
        if client_losses is None:
            loss_sum += losses.sum()
        else:
            client_losses += losses
    if client_losses is not None:
        return state.sub_(start_vector), client_losses, mask.sum((1, 2))
    return state.sub_(start_vector), float(loss_sum), int(mask.sum())


def group_clip_diagnostics(norms: torch.Tensor, group_examples: torch.Tensor,
                           max_grad_norm: float) -> dict[str, float | None]:
    """Per group, how much of its data sits in clipped client updates, and how large they were.

    Under user-level DP the server clips whole updates, not examples, so the DP-SGD diagnostic
    "share of the group's examples whose gradient was clipped" becomes the share of the group's
    examples, among this round's clients, held by a client whose update was clipped:

        clip_fraction_g = Σ_k n_kg · [‖Δ_k‖ > S] / Σ_k n_kg,   update_norm_g = Σ_k n_kg · ‖Δ_k‖ / Σ_k n_kg

    with n_kg the number of examples of group g on client k. The names are DP-SGD's
    (``dp/clip_fraction/group=…``) so reports draw both modes alike; the norm is
    ``dp/update_norm/group=…`` because it is an update's, not a gradient's. When each client holds
    both groups in proportion (``iid``) the groups' values coincide: clipping can only treat a
    minority differently where it is concentrated in some users (``by_group``, ``dirichlet``).

    Args:
        norms: the round's update norms before clipping, shape (clients,).
        group_examples: shape (clients, 2), each client's examples of each group in
            :data:`utils.fairness.GROUPS` order (minority, majority).
        max_grad_norm: the bound S.

    Returns:
        The four metrics; a group none of whose examples took part this round gets None.
    """
    weights = group_examples.to(norms.device, norms.dtype)
    held = weights.sum(dim=0)
    clipped = (weights * (norms > max_grad_norm).to(weights.dtype).unsqueeze(1)).sum(dim=0)
    norm_sum = (weights * norms.unsqueeze(1)).sum(dim=0)
    held, clipped, norm_sum = held.tolist(), clipped.tolist(), norm_sum.tolist()
    metrics: dict[str, float | None] = {}
    for i, group in enumerate(GROUPS):
        metrics[f"dp/clip_fraction/group={group}"] = clipped[i] / held[i] if held[i] else None
        metrics[f"dp/update_norm/group={group}"] = norm_sum[i] / held[i] if held[i] else None
    return metrics


def default_chunk_size(num_params: int, batch_size: int, input_numel: int) -> int:
    """How many clients to stack at once so that one batched step stays within about 2 GiB.

    Per client a step holds about four copies of the parameters (current, gradient, next, update)
    and the activations of its batch, taken here as ``_ACTIVATION_FACTOR`` times the size of the
    batch's inputs. This is a rough guard for the convolutional models, not a measurement; the
    MLP on Adult fits hundreds of clients.
    """
    per_client = 4 * (4 * num_params + _ACTIVATION_FACTOR * batch_size * input_numel)
    return max(1, _CHUNK_BUDGET_BYTES // per_client)


class FederatedTrainer:
    """DP-FedAvg over the clients of one training set; one :meth:`train_unit` is one round.

    The trainer is the federated loop (partition, local training, the server's momentum step,
    evaluation's bookkeeping); the server's mechanism (who takes part, clipping, noise, average,
    accounting) is :attr:`mechanism`, a :class:`privacy.dpfedavg.DPFedAvg`.

    Attributes:
        model: the global model (evaluated by the run loop).
        units: the number of rounds.
        eval_every: evaluate every this many rounds.
        federated: the config's ``federated`` section.
        mechanism: the server's mechanism; ``noise_multiplier`` (σ, given or chosen for
            ``target_epsilon`` over the planned rounds), ``sample_rate``, ``max_grad_norm`` and
            ``rounds_done`` are its.
        clients: per client, the sorted indices of its training examples.
        client_counts: per client ``{client, size, minority, majority, positive}``, for a file.
        info: summary of the partition and the mechanism, for the run's records.
        train_samples, train_seconds: local examples processed and time spent training so far.
        individual: under individual accounting (``individual_every`` given), the whole-population
            passes' clipped update norms, one per client (:class:`privacy.individual.SensitivityLedger`);
            else None. ``individual_seconds``: the time the passes took.
    """

    def __init__(self, model: nn.Module, data: DataBundle, device: torch.device | str, *,
                 federated: FederatedConfig, privacy: PrivacyConfig, batch_size: int,
                 seed: int = 0, method: RepairMethod | None = None, vectorized: bool = True,
                 client_chunk_size: int | None = None):
        """``federated`` and ``privacy`` are the config's sections (``privacy.mode`` itself is not
        read: the trainer is DP-FedAvg's); ``batch_size`` the clients' local batch
        (``training.batch_size``); ``seed`` the run's stream key (:class:`utils.seeding.RunStreams`);
        ``vectorized`` trains a round's clients side by side (else one after another, the
        reference); ``client_chunk_size`` bounds how many at once (None: :func:`default_chunk_size`).
        """
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.federated, self.delta = federated, privacy.delta
        self.units = federated.rounds
        self.eval_every = federated.eval_every
        self.first_selectable_unit = 0  # one phase: every evaluated round may be chosen
        self.batch_size = batch_size
        self.vectorized = vectorized
        self.transform: Callable | None = data.transform

        self.clients = partition_clients(data.y_train, data.minority_train,
                                         num_clients=federated.num_clients,
                                         scheme=federated.partition,
                                         seed=stream_seed(seed, "client_partition"),
                                         dirichlet_alpha=federated.dirichlet_alpha)
        self._client_table, self._client_sizes = client_table(self.clients)
        self.client_counts = partition_counts(self.clients, data.y_train, data.minority_train)
        # Each client's examples of each group (GROUPS order), for the per-group clip diagnostics.
        self._group_examples = torch.tensor(
            [[row[group] for group in GROUPS] for row in self.client_counts], dtype=torch.float32)
        # The server's mechanism: who takes part, clip, noise, average, accounting (σ resolved for
        # target_epsilon over the planned rounds, with an adaptive rule's releases).
        self.mechanism = DPFedAvg.from_config(privacy, num_clients=federated.num_clients,
                                              sample_rate=federated.client_sample_rate,
                                              rounds=federated.rounds, seed=seed,
                                              device=self.device)

        self.x = place_inputs(data.x_train, self.device, what="training inputs")
        self.y = torch.as_tensor(data.y_train).to(self.device, torch.float32)
        self.minority = torch.as_tensor(data.minority_train).to(self.device, torch.bool)
        # A repair method runs inside the clients, each on its own data only (its whole update is
        # clipped as one unit): its loss per local batch, its weights per client.
        self.method = method if method is not None else Vanilla(None, target="dp", rng=None)
        self.example_weights = self._client_weights(data)
        self.secure_rng = privacy.secure_rng
        # The clients' local shuffles: their own stream (not the guarantee's, so never the CSPRNG).
        self._shuffle_gen = torch_generator(seed, "client_shuffle")
        self.global_params = trainable_parameters(self.model)
        num_params = sum(p.numel() for p in self.global_params.values())
        self.client_chunk_size = client_chunk_size or default_chunk_size(
            num_params, batch_size, math.prod(data.input_shape))
        self._velocity = torch.zeros(num_params, device=self.device)
        # privacy.individual_accounting: every client's update norm from a whole-population pass
        # every individual_every rounds (privacy.individual; null: ⌈1/q⌉ rounds, an epoch's worth
        # of clients, each expected to train once). The pass's local orders and its augmentation
        # seed come from a stream of its own, so the training's sampling, shuffle, noise and
        # augmentation streams are exactly those of a run without it.
        self.individual: SensitivityLedger | None = None
        self.individual_every = ((privacy.individual_every
                                  or math.ceil(1 / federated.client_sample_rate))
                                 if privacy.accounts_individuals else None)
        self.individual_seconds = 0.0
        self._individual_gen: torch.Generator | None = None
        if self.individual_every is not None:
            if self.individual_every < 1:
                raise ValueError(f"individual_every must be a positive integer, got "
                                 f"{self.individual_every}")
            self.individual = SensitivityLedger(privacy.max_grad_norm)
            self._individual_gen = torch_generator(seed, "individual_orders")
        self.warnings: list[str] = []  # for summary.json (see training.base.Trainer)
        # User-level DP: n is the number of clients (training.base.delta_warning).
        self.delta_too_large = False
        if (message := delta_warning(privacy.delta, federated.num_clients, "client")):
            warn_user(message, self.warnings)
            self.delta_too_large = True
        # Local examples processed and seconds spent in train_unit, for time/train_samples_per_s.
        self.train_samples = 0
        self.train_seconds = 0.0
        mechanism = self.mechanism
        self.info: dict[str, Any] = {
            "partition": federated.partition,
            **partition_summary(self.client_counts),
            "expected_clients_per_round": mechanism.expected_clients,
            "model_parameters": num_params,
            "noise_std_of_average": (mechanism.noise_multiplier * mechanism.max_grad_norm
                                     / mechanism.expected_clients),
        }
        if mechanism.clipping is not None:  # the bound moves: the noise's scale is σ times S_t
            self.info["clipping"] = mechanism.clipping.name
            self.info["accounted_noise_multiplier"] = mechanism.accounted_noise_multiplier

    @property
    def noise_multiplier(self) -> float:
        """σ of the server's noise (:attr:`privacy.dpfedavg.DPFedAvg.noise_multiplier`)."""
        return self.mechanism.noise_multiplier

    @property
    def sample_rate(self) -> float:
        return self.mechanism.sample_rate

    @property
    def max_grad_norm(self) -> float:
        return self.mechanism.max_grad_norm

    @property
    def rounds_done(self) -> int:
        return self.mechanism.rounds_done

    def _client_weights(self, data: DataBundle) -> torch.Tensor | None:
        """Every training example's loss weight from its own client's data
        (:meth:`RepairMethod.client_weights`), or None when the method sets none."""
        weights = np.ones(len(data.y_train), dtype=np.float32)
        given = False
        for indices in self.clients:
            own = self.method.client_weights(data.y_train[indices], data.minority_train[indices])
            if own is not None:
                weights[indices] = own
                given = True
        return torch.as_tensor(weights, device=self.device) if given else None

    def sample_clients(self) -> np.ndarray:
        """This round's clients (:meth:`privacy.dpfedavg.DPFedAvg.sample_clients`)."""
        return self.mechanism.sample_clients()

    def _local_updates(self, orders: LocalOrders) -> tuple[torch.Tensor, float, int]:
        """The clients of ``orders`` trained from the global model, as a round trains them: side by
        side, or one after another with the method's loss when it trains in the clients."""
        if self.vectorized and not self.method.trains_in_clients:
            return local_updates_vectorized(
                self.model, self.global_params, self.x, self.y, orders, lr=self.federated.client_lr,
                batch_size=self.batch_size, transform=self.transform,
                chunk_size=self.client_chunk_size, weights=self.example_weights)
        # one client after another, each training with the method's loss
        return local_updates_loop(
            self.model, self.global_params, self.x, self.y, orders, lr=self.federated.client_lr,
            batch_size=self.batch_size, transform=self.transform,
            weights=self.example_weights, minority=self.minority,
            method=self.method if self.method.trains_in_clients else None)

    def train_unit(self, unit: int) -> dict[str, float | None]:
        """One round: sample, train locally, clip-and-noise, apply; returns the round's metrics.

        Under individual accounting a round whose index is a multiple of ``individual_every``
        first records every client's update norm at the current global model (outside
        ``train_seconds``)."""
        if self.individual is not None and unit % self.individual_every == 0:
            started = time.perf_counter()
            self.individual.record(self.rounds_done, self.population_update_norms().cpu().numpy())
            self.individual_seconds += time.perf_counter() - started
        started = time.perf_counter()
        rows, orders = self.round_orders()
        updates, loss_sum, examples = self._local_updates(orders)
        return self.finish_round(rows, updates, loss_sum, examples, started)

    def round_orders(self) -> tuple[torch.Tensor, LocalOrders]:
        """The first half of a round: this round's clients (their rows in the client table) and
        their local orders (their sampling and shuffle streams' draws)."""
        chosen = self.sample_clients()
        rows = torch.as_tensor(chosen, dtype=torch.int64)
        orders = draw_local_orders(self._client_table[rows], self._client_sizes[rows],
                                   self.federated.local_epochs, self._shuffle_gen).to(self.device)
        return rows, orders

    def finish_round(self, rows: torch.Tensor, updates: torch.Tensor, loss_sum: float,
                     examples: int, started: float) -> dict[str, float | None]:
        """The second half of a round, from the chosen clients' updates: the server's mechanism
        (clip, noise, average, accountant), the server step and the round's metrics."""
        server = self.mechanism.aggregate(updates)  # clip, noise, average; the round accounted
        result = server.result
        # Server step (server momentum as in McMahan et al. 2018 and Hsu et al. 2019's FedAvgM);
        # it only post-processes the private average, so it costs no privacy.
        self._velocity.mul_(self.federated.server_momentum).add_(result.update)
        step = unflatten(self._velocity, self.global_params)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in step:
                    p.add_(step[name], alpha=self.federated.server_lr)
        self.global_params = trainable_parameters(self.model)
        self.train_samples += examples
        self.train_seconds += time.perf_counter() - started
        return {
            "train/loss": loss_sum / examples if examples else None,
            "dp/clip_fraction": result.clip_fraction,
            "dp/update_norm": result.update_norm,
            **group_clip_diagnostics(result.norms, self._group_examples[rows], server.bound),
            **server.rule_metrics,
            "federated/clients": result.clients,
            "federated/local_examples": examples,
        }

    def population_update_norms(self) -> torch.Tensor:
        """Every client's update norm before clipping, ‖Δ_k‖, at the current global model.

        All clients are trained from the global model as a round trains its chosen ones
        (:meth:`_local_updates`: the same local SGD, loss, weights and, for a method that trains in
        the clients, the same per-client loop), ``client_chunk_size`` clients at a time, keeping
        only the norms. Each client's local orders are a fresh draw from the ``individual_orders``
        stream (its update is random through its shuffle; the norm is one draw of it, not the
        order the client would get in a round), and torch's global generator (dropout, random
        flips) is forked around the pass and seeded from the same stream, so the training's
        streams are not touched. It changes nothing: no server step, no noise, no accountant step.
        """
        generator = self._individual_gen
        if generator is None:
            raise RuntimeError("individual accounting is off (no individual_every)")
        orders = draw_local_orders(self._client_table, self._client_sizes,
                                   self.federated.local_epochs, generator)
        augmentation_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = ([self.device.index if self.device.index is not None
                    else torch.cuda.current_device()] if self.device.type == "cuda" else [])
        norms = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(augmentation_seed)
            for start in range(0, len(orders), self.client_chunk_size):
                chunk = orders[start:start + self.client_chunk_size].to(self.device)
                updates, _, _ = self._local_updates(chunk)
                norms.append(torch.linalg.vector_norm(updates, dim=1))
        return torch.cat(norms)

    def individual_privacy(self) -> IndividualPrivacy | None:
        """Each client's individual user-level ε over the run, carried by each of its examples
        (:mod:`privacy.individual`), or None when individual accounting is off.

        A client's round is the sampled Gaussian mechanism with rate q, noise σS and sensitivity
        min(‖Δ_k‖, S), its norms held from each whole-population pass to the next. The rows and the
        per-group summaries are over the examples (each with its client's ε and mean clipped
        norm): a group's figures weigh each client by its examples of that group, as
        :func:`group_clip_diagnostics` does. DP-FedAvg composes no other release, and the bound
        they are compared with (``…/worst_case``) is the run's RDP ε.
        """
        if self.individual is None:
            return None
        started = time.perf_counter()
        steps = self.rounds_done
        per_client = individual_epsilons(self.individual.windows(steps),
                                         noise_multiplier=self.noise_multiplier,
                                         sample_rate=self.sample_rate, delta=self.delta)
        worst_case = epsilon_after(noise_multiplier=self.noise_multiplier,
                                   sample_rate=self.sample_rate, steps=steps, delta=self.delta,
                                   accountant="rdp")
        client_of = np.empty(len(self.y), dtype=np.int64)
        for k, indices in enumerate(self.clients):
            client_of[indices] = k
        return summarize(per_client[client_of],
                         self.individual.mean_clipped_norms(steps)[client_of],
                         minority=self.minority.cpu().numpy(), labels=self.y.cpu().numpy(),
                         worst_case=worst_case, clients=client_of,
                         seconds=self.individual_seconds + time.perf_counter() - started)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs at a round boundary (see :mod:`training.checkpoint`).

        ``rounds_done`` is the accountant's state (one sampled-Gaussian step per round), so ε after
        a resume counts the rounds before it; the sampling, shuffle and noise generators continue
        where they stopped, so no client draw and no noise draw is repeated. The mechanism's keys
        are :meth:`privacy.dpfedavg.DPFedAvg.state_dict`'s.
        """
        mechanism = self.mechanism.state_dict()
        return {
            "model": self.model.state_dict(),
            "velocity": self._velocity,
            "sampling_rng": mechanism["sampling_rng"],
            "shuffle_gen": self._shuffle_gen.get_state(),
            "noise_gen": mechanism["noise_gen"],
            "rounds_done": mechanism["rounds_done"],
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            # Individual accounting: the passes so far and the pass stream's state.
            "individual": self.individual.state_dict() if self.individual is not None else None,
            "individual_gen": (self._individual_gen.get_state()
                               if self._individual_gen is not None else None),
            "individual_seconds": self.individual_seconds,
            "clipping": mechanism["clipping"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into this freshly built trainer of the same config."""
        self.model.load_state_dict(state["model"])
        self.mechanism.load_state_dict(state)
        self.global_params = trainable_parameters(self.model)
        self._velocity.copy_(state["velocity"])
        self._shuffle_gen.set_state(state["shuffle_gen"])
        self.train_samples = int(state["train_samples"])
        self.train_seconds = float(state["train_seconds"])
        if self.individual is not None:
            if state.get("individual") is None or state.get("individual_gen") is None:
                raise ValueError("the checkpoint holds no individual accounting passes")
            self.individual.load_state_dict(state["individual"])
            self._individual_gen.set_state(state["individual_gen"])
            self.individual_seconds = float(state.get("individual_seconds", 0.0))

    def base_model(self) -> nn.Module:
        """The global model (no privacy engine wraps it)."""
        return self.model

    def epsilon(self) -> float:
        """User-level ε after the rounds done so far (one sampled-Gaussian step per round)."""
        return self.mechanism.epsilon(self.delta)

    @property
    def privacy_facts(self) -> dict[str, Any]:
        """What the guarantee rests on (:func:`training.base.guarantee_facts`); clients always join
        by Poisson sampling."""
        return {"privacy/private": not self.delta_too_large, "privacy/secure_rng": self.secure_rng,
                "privacy/accounting_assumption": "poisson",
                # σ_eff under a clipping rule with per-round releases, as epsilon() accounts them.
                HISTORY_KEY: [list(entry) for entry in self.mechanism.history()]}

    def privacy_metrics(self) -> dict[str, float | None]:
        """User-level (ε, δ) so far, with σ, q and the rounds (``privacy/steps``) behind it; under
        an adaptive clipping rule also each part's ε alone (the rounds' sums at σ, the rule's
        releases at theirs)."""
        metrics = {
            "privacy/epsilon": self.epsilon(),
            "privacy/delta": self.delta,
            "privacy/noise_multiplier": self.noise_multiplier,
            "privacy/sample_rate": self.sample_rate,
            "privacy/steps": self.rounds_done,
        }
        if self.mechanism.step_releases:
            metrics.update({f"privacy/epsilon_parts/{name}": value
                            for name, value in self.mechanism.epsilon_parts(self.delta).items()})
        return metrics


# Message part of the warning for a client sample rate that expects fewer than one client a round.
FEW_CLIENTS_WARNING = "expected clients per round, fewer than one"


@TRAINERS.register("dpfedavg")
def build_federated_trainer(config, model: nn.Module, data: DataBundle, device, *,
                            method=None) -> FederatedTrainer:
    """The DP-FedAvg trainer of ``config`` (sections ``federated``, ``privacy``, ``training``).

    Local training is plain SGD with ``federated.client_lr`` on batches of ``training.batch_size``;
    ``training.optimizer``, ``training.lr`` and ``training.epochs`` belong to centralized training
    and are not used.
    """
    fed, priv = config.federated, config.privacy
    if not priv.poisson_sampling:
        raise ConfigError("privacy.poisson_sampling: false is not supported by privacy.mode "
                          "dpfedavg: clients always join by Poisson sampling, which the user-level "
                          "accounting assumes. Set privacy.poisson_sampling: true.")
    if fed.num_clients > len(data.y_train):
        raise ConfigError(f"federated.num_clients: got {fed.num_clients}, but the training set has "
                          f"only {len(data.y_train)} examples; use at most that many clients.")
    trainer = FederatedTrainer(model, data, device, federated=fed, privacy=priv,
                               batch_size=config.training.batch_size,
                               seed=RunStreams(config).key, method=method)
    # Legal but almost surely a mistake (1e-9 for 1e-1): most rounds would train no client, and the
    # run would report the near-initial model's accuracy as a result. Printed the project's way and
    # kept in the trainer's warnings, which summary.json's "warnings" lists.
    expected = fed.client_sample_rate * fed.num_clients
    if expected < 1:
        message = (f"federated.client_sample_rate {fed.client_sample_rate:g} with federated.num_clients "
                   f"{fed.num_clients} gives {expected:.3g} {FEW_CLIENTS_WARNING}, so most of the "
                   f"{fed.rounds} rounds train no client and the model stays near its initialization. "
                   f"Raise client_sample_rate to at least {1 / fed.num_clients:.3g} (1 / num_clients) "
                   f"or raise num_clients.")
        warn_user(message, trainer.warnings)
    return trainer
