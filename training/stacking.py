"""Many small runs trained as one batched computation (``running.py --stack K``).

A grid's small runs (an MLP on Adult trains a step in about a millisecond) leave the hardware idle:
most of a step is Python and kernel-launch overhead, paid once per run per step. Stacking K runs
that differ only in :data:`STACKED_KEYS` (seed, minority share, noise multiplier or target ε, and
the clipping bound) pays it once per step for all K: the K models' weights are stacked into
(K, out, in) tensors and every layer is one batched matrix product (``torch.baddbmm``).

Each run stays the run it would have been alone (:func:`training.experiment.open_run` builds it as
usual, with its own data, initialization, streams and run directory):

- its batches come from its own Poisson sampler (its ``batch_sampling`` stream), its noise from its
  own ``dp_noise`` stream, one flat draw per step in its parameters' order, exactly the draws of the
  sequential run; the K batches differ in size, so they are padded to the largest and a mask takes
  the padding out of every sum (the padded rows have zero loss, hence zero δ, norm and weight);
- DP-SGD is the fast engine's (:mod:`privacy.fast_dpsgd`): each example's whole gradient norm from
  its layers' a and δ (for a linear layer ‖δᵢ‖·‖aᵢ‖, plus ‖δᵢ‖ for the bias), clipped to its own
  run's C, the clipped sum as one batched product, noise σC of its own run, divided by its own
  expected batch size, and the step recorded with its own accountant;
- the optimizer is one instance over the stacked tensors; Adam and SGD act element by element, so
  this is K optimizers with the same settings. After every epoch the weights and the optimizer state
  are written back into each run's own model and optimizer, so evaluation, logging, checkpoints,
  model selection and summary.json are each run's as before, and an interrupted stack resumes run
  by run.

The result equals K sequential runs to float rounding (batched and single matrix products sum in
different orders); tests/test_stacking.py checks models, metrics and ε run by run. What can be
stacked: centralized training, non-private or DP-SGD on the fast engine with flat clipping, the
``mlp`` model (ReLU or tanh) on tabular data (no batch transform) or the ``cnn`` and ``resnet18`` image
models (:class:`ImageStackedTrainer`: the same contract by ``torch.func``, equal to the lone run
to float tolerance), and a repair method that only prepares the data or post-processes
decisions (``none``, ``reweighing``, ``oversample``, ``fairsmote``, ``roc``). Anything else runs on
its own, as without ``--stack``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn import functional as F

from dataset.base import gather_rows
from models.cnn import SmallCNN
from models.mlp import MLP
from models.resnet import ResNet18
from privacy.fast_dpsgd import FastPrivateTraining
from training import checkpoint
from training.centralized import CentralizedTrainer
from training.federated import FederatedTrainer, LocalOrders, flatten, train_client_chunk
from training.mlp_pass import mlp_activation, mlp_pass
from training.optim import build_optimizer
from utils.config import ExperimentConfig
from utils.fairness import GROUPS
from utils.progress import progress

# The models that stack: the MLP by its written-out step (StackedTrainer), the image models by
# torch.func over stacked parameters (ImageStackedTrainer).
STACKED_MODELS = ("mlp", "cnn", "resnet18")
# The keys in which the runs of one stack may differ; every other key must be equal.
STACKED_KEYS = ("seed", "data.minority_share", "privacy.noise_multiplier",
                "privacy.target_epsilon", "privacy.max_grad_norm")


class NotStackable(Exception):
    """Why a run (or a set of runs) cannot be trained in a stack."""


def why_not_stackable(config: ExperimentConfig) -> str | None:
    """What in ``config`` keeps it out of a stack, or None (the runtime checks come later)."""
    privacy = config.privacy
    if privacy.mode == "dpfedavg":  # FederatedStack; its runtime checks in federated_signature
        if getattr(privacy, "individual_accounting", False):
            return "privacy.individual_accounting"
        if config.data.name == "celeba":
            return "data.name 'celeba' under privacy.mode 'dpfedavg' (DP-FedAvg stacks tabular runs)"
        return None
    if privacy.mode not in ("none", "dpsgd"):
        return f"privacy.mode {privacy.mode!r} (stacking trains centralized and DP-FedAvg runs)"
    if privacy.mode == "dpsgd" and privacy.engine != "fast":
        return f"privacy.engine {privacy.engine!r} (stacking computes DP-SGD as the fast engine)"
    if getattr(privacy, "individual_accounting", False):
        return "privacy.individual_accounting"
    if privacy.mode == "dpsgd" and privacy.clipping != "flat":
        return f"privacy.clipping {privacy.clipping!r} (stacking clips flat)"
    if config.model.name not in STACKED_MODELS:
        return (f"model.name {config.model.name!r} (stacking trains "
                f"{', '.join(STACKED_MODELS)})")
    speed = [key for key, default in (("pad_batches", False), ("compile", False),
                                      ("precision", "fp32"))
             if getattr(config.training, key) != default]
    if speed:  # the stacked step is its own code, none of these options'
        return f"training.{speed[0]} (the stacked trainer runs its own fp32 eager step)"
    if config.model.channels_last:
        return "model.channels_last (the stacked trainer runs its own fp32 eager step)"
    if config.training.batches != "shuffled":
        return f"training.batches {config.training.batches!r} (stacking draws shuffled or Poisson batches)"
    return None


def stack_key(config: ExperimentConfig) -> str | None:
    """Runs with equal keys may be stacked; None for a run that cannot be (:func:`why_not_stackable`)."""
    if why_not_stackable(config) is not None:
        return None
    settings = config.to_dict()
    settings.pop("name", None)
    for dotted in STACKED_KEYS:
        *parents, last = dotted.split(".")
        section = settings
        for part in parents:
            section = section[part]
        section.pop(last, None)
    return yaml.safe_dump(settings, sort_keys=True)


def plan_stacks(configs: list[ExperimentConfig], size: int) -> list[list[int]]:
    """The indices of ``configs`` in stacks of at most ``size`` equal-keyed runs, in order of each
    stack's first run; a run that cannot be stacked is a stack of one."""
    plan: list[list[int]] = []
    open_stacks: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        key = stack_key(config)
        if key is None or size <= 1:
            plan.append([index])
            continue
        stack = open_stacks.get(key)
        if stack is None or len(stack) >= size:
            stack = open_stacks[key] = []
            plan.append(stack)
        stack.append(index)
    return plan


class StackedTrainer:
    """K centralized trainers of equal shape trained together, one epoch at a time.

    Args:
        members: the runs' own trainers (built and, when resuming, restored), all of the same
            mode, model shape and steps per epoch (:func:`runtime_signature`).
    """

    def __init__(self, members: list[CentralizedTrainer]):
        self._stack_members(members)
        # The training sets side by side, padded to the largest, as one table gathered once per
        # step: run k's example i is row k·N + i (a run's rows are never mixed with another's),
        # its columns the features, label, example weight, group (1 = majority) and the
        # features' squared norm (the first layer's ‖a‖², fixed, so computed once).
        x = [member.x.reshape(len(member.x), -1) for member in members]
        columns = [torch.cat([features, member.y.unsqueeze(1).to(features.dtype),
                              member.weights.unsqueeze(1).to(features.dtype),
                              (~member.minority).unsqueeze(1).to(features.dtype),
                              features.pow(2).sum(1, keepdim=True)], dim=1)
                   for features, member in zip(x, members)]
        self.features = x[0].shape[1]
        self.activation = mlp_activation(members[0].base_model())  # the same in every member
        self.rows_per_run = max(len(table) for table in columns)
        self.table = _padded(columns).reshape(len(members) * self.rows_per_run, -1)
        self.offsets = (torch.arange(len(members), device=self.device) * self.rows_per_run
                        ).unsqueeze(1)

    def _stack_members(self, members: list[CentralizedTrainer]) -> None:
        """What every stack holds: the members, their parameters stacked along a first axis of
        K, one optimizer over the stacked tensors (with resumed members' state), and under DP-SGD
        each member's bound C and expected batch size qN."""
        signatures = {runtime_signature(member) for member in members}
        if len(signatures) != 1:
            raise NotStackable("the runs differ in mode, model shape or steps per epoch")
        self.members = members
        for member in members:  # the record says how the run was trained: in the stack, not
            # by its lone trainer's step (trainer/info.dp_step, .per_example_conv)
            member.info["stacked_runs"] = len(members)
            member.info.pop("dp_step", None)
            member.info.pop("per_example_conv", None)
        self.private = members[0].private is not None
        self.device = members[0].device
        # Each member's parameters in its model's order: (weight, bias) of each linear layer.
        self.member_params = [list(member.base_model().parameters()) for member in members]
        self.params = [torch.stack([params[i].detach() for params in self.member_params])
                       for i in range(len(self.member_params[0]))]
        self.optimizer = build_optimizer(members[0].config.training, self.params)
        self._stack_optimizer_states()
        if self.private:
            engines = [member.private for member in members]
            self.bounds = torch.tensor([e.max_grad_norm for e in engines], device=self.device)
            self.expected = torch.tensor([float(e.expected_batch_size) for e in engines],
                                         device=self.device)

    def own_random_state(self, k: int) -> contextlib.AbstractContextManager:
        """Member ``k``'s process-wide random states in force (the MLP's stacked step draws
        nothing from them: nothing to swap)."""
        return contextlib.nullcontext()

    # --- one epoch -------------------------------------------------------------------------

    def train_unit(self, unit: int) -> list[dict[str, float | None]]:
        """Train every member one epoch; each member's metrics, as its own trainer reports them."""
        members, k = self.members, len(self.members)
        started = time.perf_counter()
        loss_sum = torch.zeros(k, device=self.device)
        seen = torch.zeros(k, device=self.device)
        norm_sum = torch.zeros(k * 2, device=self.device)  # (run, group) flattened
        clipped = torch.zeros(k * 2, device=self.device)
        counts = torch.zeros(k * 2, device=self.device)
        rows = torch.arange(k, device=self.device).unsqueeze(1)
        loaders = [iter(member.loader) for member in members]
        config = members[0].config
        for _ in progress(range(len(members[0].loader)), desc=f"epoch {unit + 1} ({k} stacked)",
                          leave=False, mode=config.logging.progress):
            means, norms, grads, majority, mask, sizes = self._step_gradients(
                [next(loader)[0].to(self.device) for loader in loaders])
            if self.private:  # per (run, group) sums; a padded row adds 0 (norm 0, mask 0)
                groups, real = (rows * 2 + majority).flatten(), mask.flatten().float()
                norm_sum.index_add_(0, groups, norms.flatten())
                beyond = (norms > self.bounds.unsqueeze(1)).flatten().float() * real
                clipped.index_add_(0, groups, beyond)
                counts.index_add_(0, groups, real)
                self._add_noise(grads)
            for param, grad in zip(self.params, grads):
                param.grad = grad
            self.optimizer.step()
            loss_sum += means * sizes
            seen += sizes
        for loader in loaders:  # end each epoch's iterator as a lone run's for loop does: a
            # shuffling sampler draws from the run's generator once more when it is exhausted
            if next(loader, None) is not None:
                raise NotStackable("a run's loader has more batches than its length")
        elapsed = time.perf_counter() - started
        self._write_back()
        return self._unit_metrics(elapsed, loss_sum, seen, norm_sum, clipped, counts)

    def _step_gradients(self, batches: list[torch.Tensor]):
        """One step's :meth:`gradients` of the members' index ``batches``, padded side by side:
        (mean losses, norms, gradients, groups, the mask of real rows, batch sizes)."""
        k = len(batches)
        sizes = torch.tensor([len(b) for b in batches], device=self.device)
        index = nn.utils.rnn.pad_sequence(batches, batch_first=True) if sizes.max() > 0 else \
            torch.zeros(k, 0, dtype=torch.long, device=self.device)
        mask = torch.arange(index.shape[1], device=self.device) < sizes.unsqueeze(1)
        means, norms, grads, majority = self.gradients(index, sizes, mask)
        return means, norms, grads, majority, mask, sizes

    def gradients(self, index: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor):
        """One step of every run on its (padded) batch ``index`` (K, n) of ``sizes`` examples.

        Returns each run's mean loss (K,), each example's whole gradient norm (K, n; None without
        privacy), each run's gradient per parameter before noise (the clipped sum under DP-SGD,
        the mean loss's gradient otherwise) and each example's group (K, n; 1 = majority).

        The pass is written out (:func:`training.mlp_pass.mlp_pass`, batched over the runs):
        example i's own gradient in layer l is δᵢaᵢᵀ (and δᵢ for the bias), so its squared norm is
        Σ_l ‖δᵢ‖²(‖aᵢ‖² + 1). Padded rows have weight 0, hence δ = 0: they add nothing anywhere.
        """
        k, n = index.shape
        batch = self.table.index_select(0, (index + self.offsets).reshape(-1)).view(k, n, -1)
        features = self.features
        y, weights = batch[..., features], batch[..., features + 1] * mask
        majority, input_squares = batch[..., features + 2].long(), batch[..., features + 3]
        logits, inputs, deltas = mlp_pass(self.params, batch[..., :features], y, weights,
                                          self.activation)
        per_example = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weights
        count = sizes.clamp(min=1).to(logits.dtype)
        means = per_example.sum(1) / count
        if not self.private:  # the mean loss's gradient: the sums over each run's batch / n
            grads = self._sums(inputs, deltas)
            return means, None, [g / count.view(-1, *[1] * (g.ndim - 1)) for g in grads], majority
        squares = [input_squares] + [(h * h).sum(2) for h in inputs[1:]]
        norms = sum((delta * delta).sum(2) * (square + 1)
                    for delta, square in zip(deltas, squares)).sqrt()
        factors = (self.bounds.unsqueeze(1) / (norms + 1e-6)).clamp(max=1.0) * mask
        return means, norms, self._sums(inputs, deltas, factors), majority

    @staticmethod
    def _sums(inputs, deltas, factors: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Σᵢ cᵢδᵢaᵢᵀ and Σᵢ cᵢδᵢ per layer for every run (cᵢ = 1 without ``factors``); cᵢ
        scales the narrower of δ and a, and the bias's sum is the product cᵀδ."""
        grads = []
        for a, delta in zip(inputs, deltas):
            if factors is None:
                grads += [torch.bmm(delta.transpose(1, 2), a), delta.sum(1)]
                continue
            c = factors.unsqueeze(2)
            weight = (torch.bmm((delta * c).transpose(1, 2), a) if delta.shape[2] <= a.shape[2]
                      else torch.bmm(delta.transpose(1, 2), a * c))
            grads += [weight, torch.bmm(factors.unsqueeze(1), delta).squeeze(1)]
        return grads

    def _add_noise(self, grads: list[torch.Tensor]) -> None:
        """Each run's own noise, drawn as its engine draws it (one flat vector in its parameters'
        order), added to its clipped sums, divided by its expected batch size; each run's step is
        recorded with its own accountant."""
        draws = []
        for member in self.members:
            draws.append(member.private.draw_noise())  # the draw the run's own engine would make
            member.private.account_step()
        noise = torch.stack(draws)
        start = 0
        for i, grad in enumerate(grads):
            size = grad[0].numel()
            scale = self.expected.view(-1, *[1] * (grad.ndim - 1))
            grads[i] = (grad + noise[:, start:start + size].view_as(grad)) / scale
            start += size

    # --- the members' own state ------------------------------------------------------------

    def _write_back(self) -> None:
        """Copy the stacked weights and optimizer state into each member's model and optimizer."""
        with torch.no_grad():
            for k, params in enumerate(self.member_params):
                for param, stacked in zip(params, self.params):
                    param.copy_(stacked[k])
        for k, member in enumerate(self.members):
            optimizer = _torch_optimizer(member)
            for param, stacked in zip(self.member_params[k], self.params):
                state = self.optimizer.state.get(stacked)
                if state:
                    optimizer.state[param] = {
                        key: (value[k].clone() if _per_run(value, stacked) else
                              value.clone() if torch.is_tensor(value) else value)
                        for key, value in state.items()}

    def _stack_optimizer_states(self) -> None:
        """A resumed member's optimizer state (restored from its checkpoint) into the stack's."""
        optimizers = [_torch_optimizer(member) for member in self.members]
        for i, stacked in enumerate(self.params):
            states = [optimizer.state.get(params[i]) for optimizer, params
                      in zip(optimizers, self.member_params)]
            if not any(states):
                continue
            if not all(states):
                raise NotStackable("some runs resume with optimizer state and some without")
            merged = {}
            for key, value in states[0].items():
                if torch.is_tensor(value) and value.shape == self.member_params[0][i].shape \
                        and value.ndim > 0:
                    merged[key] = torch.stack([state[key] for state in states])
                else:
                    merged[key] = value.clone() if torch.is_tensor(value) else value
            self.optimizer.state[stacked] = merged

    def _unit_metrics(self, elapsed, loss_sum, seen, norm_sum, clipped, counts):
        metrics = []
        loss_sum, seen = loss_sum.tolist(), seen.tolist()
        norm_sum, clipped, counts = norm_sum.tolist(), clipped.tolist(), counts.tolist()
        for k, member in enumerate(self.members):
            member.train_seconds += elapsed  # the stack's time: every member trained all of it
            member.train_samples += int(seen[k])
            row: dict[str, float | None] = {
                "train/loss": loss_sum[k] / seen[k] if seen[k] else None}
            if self.private:
                for g, group in enumerate(GROUPS):
                    n = counts[2 * k + g]
                    row[f"dp/grad_norm/group={group}"] = norm_sum[2 * k + g] / n if n else None
                    row[f"dp/clip_fraction/group={group}"] = clipped[2 * k + g] / n if n else None
            metrics.append(row)
        return metrics


class ImageStackedTrainer(StackedTrainer):
    """K centralized runs of an image model (``cnn``, ``resnet18``) trained together by
    ``torch.func``: the members' parameters stacked along a first axis of K, the model's own forward
    run on each member's parameters by :func:`torch.func.functional_call`, batched over the
    members by :func:`torch.func.vmap`.

    Each member's step is its lone run's (the stack's guarantee is :class:`StackedTrainer`'s):

    - its batch from its own sampler; its images gathered and put through the data set's training
      transform (CelebA's random flips) with *its own* process-wide random states in force
      (:meth:`own_random_state`: each member's states as its lone run would have them, captured
      when it was opened and carried from step to step), so each run flips the images it would
      flip alone; the K batches are padded to the largest with zero images of weight 0;
    - without privacy, the gradient of its mean weighted loss over its own rows;
    - under DP-SGD, each example's own gradient by ``vmap(grad)`` over the examples (batched over
      the members too), in chunks of at most :attr:`chunk_floats` gradient entries; its whole
      norm, its factor min(1, C/(‖gᵢ‖ + 1e-6)) at its own run's C, the clipped sum Σ cᵢgᵢ; then its
      run's own noise draw (``draw_noise``), division by its qN and accountant step
      (``account_step``), as the MLP's. A padded row's loss has weight 0, so its gradient, norm
      and factor are exactly 0.

    The lone fast engine computes the same clipped sums by book-keeping (ghost norms on small
    maps, unfolded inputs on large ones, :mod:`privacy.fast_dpsgd`); the stacked path forms each
    per-example gradient instead. Both are exact, so a stacked run equals its lone run to float
    tolerance, not bit for bit (summary, predictions and ε are checked run by run in
    tests/test_stacking.py); its record says so (``trainer/info.stacked_step``).
    """

    # The most per-example gradient entries (K × chunk × parameters) formed at once.
    chunk_floats = 1 << 26

    def __init__(self, members: list[CentralizedTrainer], rng_states: list | None = None):
        self._stack_members(members)
        for member in members:
            member.info["stacked_step"] = STACKED_STEP_RECORD
        # Member 0's model as the function; its own parameters are replaced on every call.
        self.template = members[0].base_model()
        self.names = [name for name, _ in self.template.named_parameters()]
        self.rng_states = (list(rng_states) if rng_states is not None
                           else [checkpoint.rng_state() for _ in members])
        self.input_shape = tuple(members[0].x.shape[1:])
        parameters = sum(p[0].numel() for p in self.params)
        self.chunk = max(1, self.chunk_floats // (len(members) * parameters))

    @contextlib.contextmanager
    def own_random_state(self, k: int):
        """Member ``k``'s process-wide random states in force (what its data transform and its
        checkpoint read), carried on to its next use."""
        checkpoint.set_rng_state(self.rng_states[k])
        try:
            yield
        finally:
            self.rng_states[k] = checkpoint.rng_state()

    def _step_gradients(self, batches: list[torch.Tensor]):
        """:meth:`StackedTrainer._step_gradients` of image batches: gathered, transformed and
        padded by :meth:`_batch`, per-example gradients by :meth:`gradients`."""
        x, y, weights, mask, majority = self._batch(batches)
        sizes = mask.sum(1)
        means, norms, grads = self.gradients(x, y, weights, mask)
        return means, norms, grads, majority, mask, sizes

    def _batch(self, indices: list[torch.Tensor]):
        """The members' batches side by side, (K, n, ...) padded with zero rows of weight 0: the
        inputs (transformed as each lone run transforms them), labels, weights, the mask of real
        rows and each row's group (1 = majority)."""
        inputs = []
        for k, (member, index) in enumerate(zip(self.members, indices)):
            x = gather_rows(member.x, index)
            if member.transform is not None:
                with self.own_random_state(k):
                    x = member.transform(x, True)
            inputs.append(x.to(torch.float32))
        width = max(len(index) for index in indices)
        x = torch.zeros(len(indices), width, *inputs[0].shape[1:], device=self.device)
        y, weights = torch.zeros(2, len(indices), width, device=self.device)
        majority = torch.zeros(len(indices), width, dtype=torch.long, device=self.device)
        for k, (member, index) in enumerate(zip(self.members, indices)):
            n = len(index)
            x[k, :n], y[k, :n] = inputs[k], member.y[index]
            weights[k, :n], majority[k, :n] = member.weights[index], (~member.minority[index]).long()
        mask = torch.arange(width, device=self.device) < torch.tensor(
            [len(index) for index in indices], device=self.device).unsqueeze(1)
        return x, y, weights, mask, majority

    def gradients(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                  mask: torch.Tensor):
        """One step of every member on its padded batch: each member's mean loss (K,), each
        example's whole gradient norm (K, n; None without privacy) and each member's gradient per
        parameter before noise (the clipped sum under DP-SGD, the mean loss's gradient
        otherwise), as (K, ...) tensors in the parameters' order."""
        params = dict(zip(self.names, self.params))
        count = mask.sum(1).clamp(min=1).to(torch.float32)
        with self._hooks_off():
            if not self.private:
                grads, means = torch.func.vmap(torch.func.grad(self._mean_loss, has_aux=True))(
                    params, x, y, weights, mask)
                return means, None, [grads[name] for name in self.names]
            per_example = torch.func.vmap(torch.func.grad(self._example_loss, has_aux=True),
                                          in_dims=(None, 0, 0, 0))
            stacked = torch.func.vmap(per_example)
            k, n = mask.shape
            sums = [torch.zeros_like(p) for p in self.params]
            norms = torch.zeros(k, n, device=self.device)
            losses = torch.zeros(k, n, device=self.device)
            for start in range(0, n, self.chunk):
                end = min(n, start + self.chunk)
                grads, loss = stacked(params, x[:, start:end], y[:, start:end],
                                      weights[:, start:end])
                squares = sum(grads[name].flatten(2).pow(2).sum(2) for name in self.names)
                chunk_norms = squares.sqrt()
                factors = ((self.bounds.unsqueeze(1) / (chunk_norms + 1e-6)).clamp(max=1.0)
                           * mask[:, start:end])
                for total, name in zip(sums, self.names):
                    total += torch.einsum("kn,kn...->k...", factors, grads[name])
                norms[:, start:end] = chunk_norms * mask[:, start:end]
                losses[:, start:end] = loss
        means = torch.where(mask, losses, 0.0).sum(1) / count
        return means, norms, sums

    def _mean_loss(self, params, x, y, weights, mask):
        """One member's mean weighted loss over its real rows (and the same as the aux value)."""
        logits = torch.func.functional_call(self.template, params, (x,)).reshape(-1)
        per_example = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weights
        mean = torch.where(mask, per_example, 0.0).sum() / mask.sum().clamp(min=1)
        return mean, mean.detach()

    def _example_loss(self, params, x, y, weight):
        """One example's weighted loss (and the same as the aux value)."""
        logit = torch.func.functional_call(self.template, params, (x.unsqueeze(0),)).reshape(())
        loss = F.binary_cross_entropy_with_logits(logit, y) * weight
        return loss, loss.detach()

    def _hooks_off(self) -> contextlib.AbstractContextManager:
        """Member 0's engine records nothing while its model serves as the function."""
        member = self.members[0]
        return member.private.hooks_off() if member.private is not None else contextlib.nullcontext()


class FederatedStack:
    """K DP-FedAvg runs (:class:`training.federated.FederatedTrainer`) trained together, one round
    at a time: every member's chosen clients train side by side in one ``vmap`` over clients.

    Each member keeps everything of its own: its partition into clients, its client sampling and
    local shuffles (:meth:`FederatedTrainer.round_orders`, its own streams), its global model and
    server momentum, its server mechanism (:class:`privacy.dpfedavg.DPFedAvg`: clipping at its own
    S, its own noise stream and σ, its accountant; :meth:`FederatedTrainer.finish_round`). Only the
    clients' local SGD is shared: the round's clients of all members are laid side by side, each
    starting from its own member's global model and gathering its examples from its own member's
    training set (the members' sets concatenated, each client's indices offset to its member's
    block), in :func:`training.federated.train_client_chunk`'s chunks. A client's local training is the
    same computation as in its lone run (vmap keeps clients apart), so a stacked run equals its
    lone run to float tolerance (the batched products round in other orders; its training loss
    is summed per client, then over the clients). Tabular data only: an image transform's random
    flips are drawn for a whole chunk at once from torch's global generator.
    """

    def __init__(self, members: list):
        signatures = {runtime_signature(member) for member in members}
        if len(signatures) != 1:
            raise NotStackable("the runs differ in mode, model shape or rounds")
        self.members = members
        for member in members:
            member.info["stacked_runs"] = len(members)
        self.device = members[0].device
        self.offsets = [0]
        for member in members[:-1]:
            self.offsets.append(self.offsets[-1] + len(member.y))
        self.x = torch.cat([member.x for member in members])
        self.y = torch.cat([member.y for member in members])
        self.weights = (None if all(member.example_weights is None for member in members) else
                        torch.cat([member.example_weights if member.example_weights is not None
                                   else torch.ones_like(member.y) for member in members]))

    def own_random_state(self, k: int) -> contextlib.AbstractContextManager:
        """Nothing to swap: a tabular round draws nothing from the process-wide generators."""
        return contextlib.nullcontext()

    def train_unit(self, unit: int) -> list[dict[str, float | None]]:
        """One round of every member; each member's metrics, as its own trainer reports them."""
        members = self.members
        started = time.perf_counter()
        rounds = [member.round_orders() for member in members]
        counts = [len(orders) for _, orders in rounds]
        width = max((orders.index.shape[2] for _, orders in rounds), default=0)
        index = torch.cat([F.pad(orders.index, (0, width - orders.index.shape[2])) + offset
                           for (_, orders), offset in zip(rounds, self.offsets)])
        orders = LocalOrders(index, torch.cat([orders.sizes for _, orders in rounds]))
        starts = torch.cat([flatten(member.global_params).unsqueeze(0).expand(count, -1)
                            for member, count in zip(members, counts)])
        first = members[0]
        updates, losses, examples = [], [], []
        for start in range(0, len(orders), first.client_chunk_size):
            end = start + first.client_chunk_size
            chunk = train_client_chunk(first.model, first.global_params, self.x, self.y, orders[start:end],
                                 lr=first.federated.client_lr, batch_size=first.batch_size,
                                 transform=None, example_weights=self.weights,
                                 starts=starts[start:end])
            for part, out in zip(chunk, (updates, losses, examples)):
                out.append(part)
        if updates:
            updates, losses, examples = (torch.cat(parts) for parts in (updates, losses, examples))
        metrics, begin = [], 0
        for member, (rows, _), count in zip(members, rounds, counts):
            if count and len(updates):
                own = updates[begin:begin + count]
                loss_sum = float(losses[begin:begin + count].sum())
                seen = int(examples[begin:begin + count].sum())
            else:
                own = torch.zeros(0, sum(p.numel() for p in member.global_params.values()),
                                  device=self.device)
                loss_sum, seen = 0.0, 0
            metrics.append(member.finish_round(rows, own, loss_sum, seen, started))
            begin += count
        return metrics


STACKED_STEP_RECORD = ("torch.func per-example gradients; equal to the lone run to float "
                       "tolerance, not bit for bit")
IMAGE_MODELS = (SmallCNN, ResNet18)


def build_stack(members: list, rng_states: list | None = None):
    """The stacked trainer of ``members``: DP-FedAvg's rounds, or for centralized runs the MLP's
    written-out step or torch.func's for an image model."""
    if isinstance(members[0], FederatedTrainer):
        return FederatedStack(members)
    if isinstance(members[0].base_model(), MLP):
        return StackedTrainer(members)
    return ImageStackedTrainer(members, rng_states)


def runtime_signature(trainer) -> tuple:
    """What must be equal for built trainers to share a stack; raises :class:`NotStackable` for
    one that cannot be stacked at all."""
    if isinstance(trainer, FederatedTrainer):
        return federated_signature(trainer)
    if not isinstance(trainer, CentralizedTrainer):
        raise NotStackable(f"{type(trainer).__name__} is not centralized training")
    if trainer.private is not None and not isinstance(trainer.private, FastPrivateTraining):
        raise NotStackable("DP-SGD on an engine other than 'fast'")
    if trainer.private is not None and trainer.private.clipping.name != "flat":
        raise NotStackable(f"privacy.clipping {trainer.private.clipping.name!r} (stacking clips "
                           f"flat)")
    if changes := trainer.method.training_changes() + (["public data"] if trainer.method.reads_public else []):
        raise NotStackable(f"fairness.method {trainer.method.name!r} changes the training step "
                           f"({', '.join(changes)})")
    if len(trainer.phases) != 1:
        raise NotStackable("the training has several phases")
    model = trainer.base_model()
    if isinstance(model, IMAGE_MODELS):
        # No operation across examples (GroupNorm, not BatchNorm): padding rows and the other
        # members' rows cannot change a member's forward pass.
        if any(isinstance(module, nn.modules.batchnorm._NormBase) for module in model.modules()):
            raise NotStackable("the model normalizes across examples (batch norm)")
        kind = type(model).__name__
    else:
        if trainer.transform is not None:
            raise NotStackable("the data set has a batch transform (images) but the model is "
                               "not an image model")
        activation = mlp_activation(model)
        if activation is None:
            raise NotStackable("the model is not an MLP of biased linear layers with ReLU or tanh "
                               "between, nor the registry's cnn or resnet18")
        kind = f"mlp ({activation.__name__})"
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    return (kind, trainer.private is not None, shapes, len(trainer.loader), str(trainer.device),
            trainer.x.dtype, tuple(trainer.x.shape[1:]))


def federated_signature(trainer) -> tuple:
    """:func:`runtime_signature` of a DP-FedAvg trainer."""
    if not trainer.vectorized:
        raise NotStackable("DP-FedAvg's clients train one after another (vectorized off)")
    if trainer.transform is not None:
        raise NotStackable("DP-FedAvg on images (the random flips are drawn for a whole chunk of "
                           "clients at once)")
    if trainer.method.trains_in_clients:
        raise NotStackable(f"fairness.method {trainer.method.name!r} trains in the clients")
    if trainer.individual is not None:
        raise NotStackable("privacy.individual_accounting")
    shapes = tuple(tuple(p.shape) for p in trainer.model.parameters())
    return ("dpfedavg", shapes, trainer.units, trainer.eval_every, trainer.batch_size,
            trainer.federated.client_lr, trainer.federated.local_epochs,
            trainer.client_chunk_size, str(trainer.device), trainer.x.dtype,
            tuple(trainer.x.shape[1:]))


def _padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Equal-length rows of a (K, N_max, ...) tensor, each run's own, zero past its end."""
    return nn.utils.rnn.pad_sequence(tensors, batch_first=True)


def _per_run(value: Any, stacked: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.ndim > 0 and value.shape == stacked.shape


def _torch_optimizer(trainer) -> torch.optim.Optimizer:
    """The member's own torch optimizer (inside the fast engine's wrapper under DP-SGD)."""
    return getattr(trainer.optimizer, "original", trainer.optimizer)


def train_together(sessions: list, rng_states: list | None = None) -> list[Any]:
    """Train open runs (:class:`training.experiment.RunSession`, all at the same first unit) to
    the end and finish them; runs that turn out not to share a stack train one after the other.
    Each entry is the run's summary or the exception that stopped it (a stack that fails stops
    every run in it; each is closed as a failed run is). ``rng_states``: each session's
    process-wide random states as it was opened (:func:`training.checkpoint.rng_state`; the image
    stack carries each member's own)."""
    states = {id(session): state for session, state in zip(sessions, rng_states or [])}
    groups: dict[tuple, list] = defaultdict(list)
    for session in sessions:
        try:
            groups[runtime_signature(session.trainer)].append(session)
        except NotStackable as reason:
            print(f"note: {session.config.name} trains on its own: {reason}", file=sys.stderr)
            groups[("alone", id(session))].append(session)
    outcomes: dict[int, Any] = {}
    for group in groups.values():
        if len(group) > 1 and _slower_stacked(group[0]):
            print(IMAGE_STACK_ON_CPU.format(runs=len(group), model=group[0].config.model.name),
                  file=sys.stderr)
        try:
            summaries = _train_group(group, [states.get(id(session)) for session in group])
        except Exception as error:  # noqa: BLE001 - the group's failure is each of its runs'
            summaries = [error] * len(group)
        outcomes.update({id(session): summary for session, summary in zip(group, summaries)})
    return [outcomes[id(session)] for session in sessions]


# Measured on the 2-core CPU (docs/results/speed.md, 2026-12-06): K = 4 stacked image runs
# train at 0.13-0.75x the throughput of the same runs one by one, so the user hears it.
IMAGE_STACK_ON_CPU = (
    "note: {runs} {model} runs stacked on a CPU: image stacks measured slower than the same runs "
    "one by one on a CPU (0.13-0.75x, docs/results/speed.md); --stack pays on a CPU for MLP and "
    "DP-FedAvg runs. The runs are the same either way.")


def _slower_stacked(session) -> bool:
    """Whether a stack of ``session``'s kind is known to train slower than its runs alone."""
    return (session.config.model.name != "mlp" and session.config.privacy.mode != "dpfedavg"
            and torch.device(session.trainer.device).type == "cpu")


def _train_group(group: list, rng_states: list) -> list[dict[str, Any]]:
    with contextlib.ExitStack() as on_error:
        for session in group:
            on_error.enter_context(session.closing_on_error())
        first, units = group[0].first_unit, group[0].trainer.units
        if len(group) == 1:
            if rng_states[0] is not None and group[0].trainer.transform is not None:
                # its random flips from its states as it was opened (others were opened since)
                checkpoint.set_rng_state(rng_states[0])
            return [group[0].train_to_end()]
        stack = build_stack([session.trainer for session in group],
                            None if None in rng_states else rng_states)
        for unit in progress(range(first, units), desc=f"{len(group)} stacked runs",
                             mode=group[0].config.logging.progress):
            for k, (session, metrics) in enumerate(zip(group, stack.train_unit(unit))):
                with stack.own_random_state(k):  # its checkpoint saves its own states
                    session.record_unit(unit, metrics)
        return [session.finish() for session in group]


def run_stacked(configs: list[ExperimentConfig], *, overwrite: bool = False) -> list[Any]:
    """Run ``configs`` as :func:`training.experiment.run` would, trained in stacks: each entry is
    the run's summary (``skipped`` when it was complete) or the exception that stopped it."""
    from training.experiment import open_run

    outcomes: list[Any] = [None] * len(configs)
    by_first_unit: dict[int, list[int]] = defaultdict(list)
    sessions, rng_states = {}, {}
    for index, config in enumerate(configs):
        try:
            opened = open_run(config, overwrite=overwrite, concurrent=True)
        except Exception as error:  # noqa: BLE001 - one run's failure is its own (as in a grid)
            outcomes[index] = error
            continue
        if isinstance(opened, dict):
            outcomes[index] = opened
        else:
            sessions[index] = opened
            # Its process-wide random states where its lone run would start training (CelebA's
            # random flips draw from them): the image stack carries each member's own.
            rng_states[index] = checkpoint.rng_state()
            by_first_unit[opened.first_unit].append(index)
    for indices in by_first_unit.values():
        for index, outcome in zip(indices, train_together([sessions[i] for i in indices],
                                                          [rng_states[i] for i in indices])):
            outcomes[index] = outcome
    return outcomes
