"""Centralized training, non-private (``privacy.mode: none``) and DP-SGD (``dpsgd``).

One loop serves both modes; under DP-SGD the model, optimizer and batch sampler are the ones Opacus
wrapped, and the loop additionally reads each example's gradient norm to log, per group, how hard
clipping bites. That is the mechanism behind DP-SGD's disparate impact (Bagdasaryan et al.,
"Differential Privacy Has Disparate Impact on Model Accuracy", NeurIPS 2019): minority examples
have larger gradients, are clipped more, and their signal drowns in the noise.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dataset.base import DataBundle, gather_rows, place_inputs
from privacy import ENGINES
from privacy.accounting import epsilon_of_history
from privacy.fast_dpsgd import FastPrivateTraining
from privacy.individual import (
    IndividualPrivacy,
    SensitivityLedger,
    individual_epsilons,
    summarize,
)
from privacy.releases import Release
from training import TRAINERS
from training.base import (
    HISTORY_KEY,
    POISSON_VIOLATED_WARNING,
    delta_warning,
    guarantee_facts,
    no_privacy_metrics,
)
from training.batches import build_batches
from training.mlp_pass import mlp_activation, mlp_pass
from training.optim import build_optimizer
from training.repair.base import Batch, LossTerms, RepairMethod, TrainingSet
from training.repair.vanilla import Vanilla
from utils.config import ExperimentConfig
from utils.errors import ConfigError, warn_user
from utils.fairness import GROUPS
from utils.progress import progress
from utils.seeding import RunStreams

BF16_UNSUPPORTED = ("training.precision: bf16, but {device} has no bfloat16 support. Use "
                    "training.precision: fp32 on this device.")


# trainer/info.dp_step of a DP-SGD run: how each step's per-example records were made.
WRITTEN_OUT = "written out (MLP, training.mlp_pass)"
ENGINE_PASS = "forward and backward through the engine's hooks"


class CentralizedTrainer:
    """Epochs of minibatch training on data held on the device.

    Attributes:
        model: the module to evaluate (Opacus' wrapper under DP; its forward is the model's).
        units: epochs.
        eval_every: 1: the test set is scored after every epoch.
        private: the Opacus objects under DP-SGD, else None.
    """

    eval_every = 1

    def __init__(self, config: ExperimentConfig, model: nn.Module, data: DataBundle,
                 device: torch.device, method: RepairMethod | None = None):
        self.config = config
        self.device = device
        self.method = method if method is not None else Vanilla(None, target="dp", rng=None)
        # The whole training set moves to the device once (if it fits); batches are gathered there
        # by index.
        self.x = place_inputs(data.x_train, device, what="training inputs")
        self.y = torch.as_tensor(data.y_train, device=device, dtype=torch.float32)
        self.minority = torch.as_tensor(data.minority_train, device=device, dtype=torch.bool)
        self.weights = (torch.ones(len(self.y), device=device) if data.weights_train is None
                        else torch.as_tensor(data.weights_train, device=device, dtype=torch.float32))
        self.transform = data.transform
        num_examples = len(self.y)
        if config.training.batch_size > num_examples:
            raise ConfigError(
                f"training.batch_size: got {config.training.batch_size}; expected at most the "
                f"training set's {num_examples} examples. Lower it or raise data.train_size."
            )
        # The batch order's own stream (Opacus' Poisson sampler inherits it from this loader), and
        # under DP-SGD the noise's own, on the device where it is added: never torch's global
        # generator, which initialized the model (utils.seeding). Both are part of the trainer's
        # state, so that a resumed run draws the same batches and the same noise. Both are keyed
        # by the run's identity, so no two points of a grid share them.
        streams = RunStreams(config)
        self.generator = streams.torch("batch_sampling")
        # training.batches (anything but shuffled is non-private only: ExperimentConfig.validate)
        # and training.steps_per_epoch; under DP-SGD the engine turns shuffled into Poisson batches.
        loader = build_batches(config.training.batches, minority=self.minority.cpu(),
                               labels=self.y.cpu() > 0.5, batch_size=config.training.batch_size,
                               steps=config.training.steps_per_epoch, generator=self.generator)
        # The repair method's phases (one by default); a phase that starts afresh reloads these
        # initial weights, the init stream's draw, so every phase starts from the same model.
        self.phases = self.method.phases(config.training.epochs)
        self.units = sum(phase.epochs for phase in self.phases)
        self.first_selectable_unit = self.units - self.phases[-1].epochs
        if len(self.phases) > 1 and config.privacy.private:
            raise ConfigError(f"fairness.method {config.fairness.method!r} trains in phases, which "
                              f"only privacy.mode: none supports.")
        self._initial_weights = {key: value.detach().clone()
                                 for key, value in model.state_dict().items()}
        model = model.to(device)
        # training.precision and model.channels_last (the GPU path; utils.config documents them).
        self.channels_last = config.model.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.bf16 = config.training.precision == "bf16"
        if self.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(BF16_UNSUPPORTED.format(device=torch.cuda.get_device_name(device)))
        optimizer = build_optimizer(config.training, model.parameters())
        self.private = None
        self.warnings: list[str] = []  # for summary.json (see training.base.Trainer)
        self.delta_too_large = False
        if config.privacy.mode == "dpsgd":
            if not config.privacy.poisson_sampling:
                warn_user(POISSON_VIOLATED_WARNING, self.warnings)
            if (message := delta_warning(config.privacy.delta, num_examples, "training example")):
                warn_user(message, self.warnings)
                self.delta_too_large = True
            noise = (None if config.privacy.secure_rng
                     else streams.torch("dp_noise", device))
            # The method's releases of private statistics (noisy counts) were made while it
            # prepared the data; they are composed with the steps, and under target_epsilon the
            # steps' σ is chosen for what the releases left of the budget.
            engine = ENGINES.get(config.privacy.engine)
            # A clipping rule's noisy counts (privacy.clipping) have their own stream.
            clipping = (None if config.privacy.secure_rng
                        else streams.torch("dp_clipping"))
            self.private = engine(model, optimizer, loader, config.privacy, self.units,
                                  noise_generator=noise, releases=self.method.releases(),
                                  clipping_generator=clipping)
            model, optimizer, loader = (self.private.module, self.private.optimizer,
                                        self.private.index_loader)
            if config.training.pad_batches:  # static shapes (privacy.fast_dpsgd's docstring)
                self.private.use_static_shapes(config.training.physical_batch_size,
                                               compiled=config.training.compile)
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.padded = config.training.pad_batches
        # training.compile: the training forward (the evaluation's stays eager).
        self.train_forward = torch.compile(model) if config.training.compile else model
        # privacy.individual_accounting: every example's clipped norm from a whole-set pass every
        # individual_every epochs (privacy.individual), and the time those passes take.
        self.individual: SensitivityLedger | None = None
        self.individual_seconds = 0.0
        if config.privacy.accounts_individuals:
            self.individual = SensitivityLedger(config.privacy.max_grad_norm)
        # The hidden activations a repair method's loss reads (RUNNER's neurons), recorded while
        # training by forward hooks on the model's own layers, so the models stay plain modules.
        self._activations: dict[str, torch.Tensor] = {}
        if self.method.wants_activations:
            for name, module in self.method.hidden_layers(self.base_model()).items():
                module.register_forward_hook(self._recorder(name))
        self.method.attach(self.base_model())
        self.train_seconds = 0.0
        self.train_samples = 0
        self.info: dict[str, Any] = {}
        # An MLP's DP-SGD step on the fast engine, written out (training.mlp_pass): its records
        # go to the engine without forward hooks, autograd graph or backward pass.
        self._activation = mlp_activation(self.base_model())
        self.written_out = self._writes_out_pass()
        self._mlp_params = list(self.base_model().parameters()) if self.written_out else []
        if self.private is not None:
            self.info["dp_step"] = WRITTEN_OUT if self.written_out else ENGINE_PASS
            if isinstance(self.private, FastPrivateTraining):
                kernel = self.private.per_example_conv_kernel()
                if kernel is not None:
                    self.info["per_example_conv"] = kernel
        self.client_counts = None  # not federated

    def _writes_out_pass(self) -> bool:
        """Whether each DP-SGD step's pass is written out (:mod:`training.mlp_pass`) rather than
        run through the model and autograd: the fast engine, unpadded, eager and in fp32, on the
        registry's MLP (ReLU or tanh) of tabular data, under a method that trains as Vanilla does (its loss is the
        weighted cross-entropy, and nothing else hooks the model). The same step either way, to
        float rounding (tests/test_mlp_pass.py)."""
        training = self.config.training
        return (isinstance(self.private, FastPrivateTraining) and not self.padded
                and not self.bf16 and not training.compile and self.transform is None
                and self.x.ndim == 2
                and not self.method.training_changes() and not self.method.reads_public
                and self._activation is not None
                and all(p.dtype == self.x.dtype for p in self.base_model().parameters())
                and not self.private.hooked_by_others())

    def _written_out_step(self, x: torch.Tensor, y: torch.Tensor,
                          indices: torch.Tensor) -> LossTerms:
        """The forward and backward pass of a written-out step (:meth:`_writes_out_pass`): each
        layer's input and δ of the batch's summed weighted loss handed to the engine, which then
        clips, noises and accounts as after ``loss.backward()``; Vanilla's loss terms, for the
        logged loss."""
        weights = self.weights[indices]
        logits, inputs, deltas = mlp_pass(self._mlp_params, x, y, weights, self._activation)
        self.private.record_pass(inputs, deltas)
        return LossTerms(F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weights)

    @contextmanager
    def _public_pass(self):
        """The plain model in evaluation mode with Opacus' per-example hooks off, for a repair
        method's computations on the public validation split (:meth:`RepairMethod.before_step`):
        nothing of it may enter the step's per-example gradients."""
        model = self.base_model()
        hooks_off = self.private.hooks_off() if self.private is not None else nullcontext()
        model.eval()
        try:
            with hooks_off:
                yield model
        finally:
            model.train()

    def _recorder(self, name: str):
        def record(module, inputs, output):
            if module.training:
                self._activations[name] = output
        return record

    def _phase_at(self, unit: int) -> tuple[int, int]:
        """(phase index, the unit its first epoch is) of 0-based ``unit``."""
        start = 0
        for index, phase in enumerate(self.phases):
            if unit < start + phase.epochs:
                return index, start
            start += phase.epochs
        raise IndexError(f"unit {unit} is past the last phase")

    def _start_phase(self, index: int) -> None:
        phase = self.phases[index]
        model = self.base_model()
        self.method.start_phase(index, phase, model, TrainingSet(
            x=self.x, y=self.y, minority=self.minority, weights=self.weights,
            transform=self.transform, batch_size=self.config.training.eval_batch_size))
        if phase.fresh_model:
            model.load_state_dict(self._initial_weights)
            self.optimizer = build_optimizer(self.config.training, model.parameters())
        self.info.update(self.method.info())

    def train_unit(self, unit: int) -> dict[str, float | None]:
        phase, start = self._phase_at(unit)
        if phase > 0 and unit == start:
            self._start_phase(phase)
        with warnings.catch_warnings():
            # Opacus' hooks fire on the first layer although inputs need no gradient; harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self.individual is not None and unit % (self.config.privacy.individual_every or 1) == 0:
                self._record_whole_set_norms()
            metrics = self._train_epoch(unit)
        if len(self.phases) > 1:
            metrics["train/phase"] = phase + 1
        return metrics

    def _train_epoch(self, unit: int) -> dict[str, float | None]:
        self.model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        coupled_sum, coupled_steps = torch.zeros((), device=self.device), 0
        seen = 0
        # Per-group sums for the DP diagnostics, kept on the device to avoid a sync per batch.
        norm_sum = torch.zeros(2, device=self.device)
        clipped = torch.zeros(2, device=self.device)
        counts = torch.zeros(2, device=self.device)
        bound = self.config.privacy.max_grad_norm
        # A clipping rule other than flat (privacy.clipping): its bounds in force, step by step.
        rule_steps = RuleDiagnostics() if (self.private is not None
                                           and self.config.privacy.clipping != "flat") else None
        for (indices,) in progress(self.loader, desc=f"epoch {unit + 1}/{self.units}", leave=False,
                                   mode=self.config.logging.progress):
            indices = indices.to(self.device)
            if self.padded:
                loss_sum += self._padded_step(indices, norm_sum, clipped, counts)
                seen += len(indices)
                continue
            x = gather_rows(self.x, indices)
            if self.transform is not None:
                x = self.transform(x, True)
            y = self.y[indices]
            self.optimizer.zero_grad(set_to_none=True)
            if self.private is not None:  # a rule may clip by group (DPSGD-F)
                self.private.batch_groups(self.minority[indices])
            if self.written_out:
                terms = self._written_out_step(x, y, indices)
            else:
                self._activations.clear()
                if self.method.reads_public:
                    with self._public_pass() as model:
                        self.method.before_step(model)
                self.method.before_forward(indices)
                with self._precision():
                    logits = self.train_forward(self._layout(x)).reshape(-1).float()
                batch = Batch(logits=logits, targets=y, minority=self.minority[indices],
                              weights=self.weights[indices], activations=self._activations,
                              losses=F.binary_cross_entropy_with_logits(logits, y,
                                                                        reduction="none"))
                terms = self.method.loss(batch, self.base_model())
                terms.total().backward()
            loss = terms.per_example.detach().mean() if len(indices) else None
            if terms.coupled is not None:
                coupled_sum += terms.coupled.detach()
                coupled_steps += 1
            if self.private is not None and len(indices) > 0:
                norms = self.private.per_example_norms()
                group = (~self.minority[indices]).long()  # 0 = minority, 1 = majority (GROUPS order)
                norm_sum.index_add_(0, group, norms.detach())
                limit = (self.private.clip_step().limits(self.minority[indices])
                         if rule_steps is not None else bound)
                clipped.index_add_(0, group, (norms > limit).float())
                counts.index_add_(0, group, torch.ones_like(norms))
            self.optimizer.step()
            if rule_steps is not None:
                rule_steps.add(self.private.last_clip_step)
            if loss is not None:  # an empty Poisson batch has no mean loss and adds nothing
                loss_sum += loss * len(indices)
                seen += len(indices)
        self.train_seconds += time.perf_counter() - started
        self.train_samples += seen
        metrics: dict[str, float | None] = {"train/loss": float(loss_sum) / seen if seen else None}
        if coupled_steps:  # the repair method's term that couples examples (its mean over steps)
            metrics["train/repair_term"] = float(coupled_sum) / coupled_steps
        if self.private is not None:
            counts_cpu = counts.cpu().tolist()
            for i, group in enumerate(GROUPS):
                n = counts_cpu[i]
                metrics[f"dp/grad_norm/group={group}"] = float(norm_sum[i]) / n if n else None
                metrics[f"dp/clip_fraction/group={group}"] = float(clipped[i]) / n if n else None
        if rule_steps is not None:
            metrics.update(rule_steps.metrics())
        return metrics

    def _precision(self):
        """bf16 autocast on the run's device under ``training.precision: bf16``."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Image batches in channels-last memory under ``model.channels_last``."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _padded_step(self, indices: torch.Tensor, norm_sum: torch.Tensor, clipped: torch.Tensor,
                     counts: torch.Tensor) -> torch.Tensor:
        """One DP-SGD step on a Poisson batch as padded physical batches of fixed size
        (``training.pad_batches``; the soundness argument is privacy.fast_dpsgd's): each is
        forwarded, its masked loss back-propagated and its clipped sum accumulated; then one noise
        draw, one optimizer step, one accountant step. Adds the per-group diagnostics (padding
        rows count nowhere) and returns the batch's summed loss. The config lets only methods that
        train as Vanilla does reach here."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        # The logical batch is gathered and transformed as unpadded (the same random flips), and
        # its rows are then laid out in physical batches; an empty batch's padding is row 0 of the
        # training set in the transform's evaluation form (it draws nothing; masked out anyway).
        if len(indices):
            logical = gather_rows(self.x, indices)
            if self.transform is not None:
                logical = self.transform(logical, True)
        else:
            logical = gather_rows(self.x, indices.new_zeros(1))
            if self.transform is not None:
                logical = self.transform(logical, False)
        positions = torch.arange(len(indices), device=self.device)
        for local, mask in self.private.physical_batches(positions):
            rows = indices[local] if len(indices) else local  # padding: a real row, masked
            x = logical[local]
            y = self.y[rows]
            self.private.set_padding(mask)
            with self._precision():
                logits = self.train_forward(self._layout(x)).reshape(-1).float()
            losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            terms = self.method.loss(Batch(logits=logits, targets=y, minority=self.minority[rows],
                                           weights=self.weights[rows], activations={},
                                           losses=losses), self.base_model())
            self.private.padded_loss(terms.per_example).backward()
            norms = self.private.accumulate().detach()  # 0 on padding rows
            group = (~self.minority[rows]).long()  # 0 = minority, 1 = majority (GROUPS order)
            norm_sum.index_add_(0, group, norms)
            clipped.index_add_(0, group, ((norms > self.config.privacy.max_grad_norm) & mask).float())
            counts.index_add_(0, group, mask.float())
            total += torch.where(mask, terms.per_example.detach(), 0.0).sum()
        self.optimizer.step()
        return total

    def _record_whole_set_norms(self) -> None:
        """Every training example's gradient norm at the current model, into the ledger."""
        started = time.perf_counter()
        self.individual.record(self.private.steps, self.whole_set_norms().cpu().numpy())
        self.individual_seconds += time.perf_counter() - started

    def whole_set_norms(self) -> torch.Tensor:
        """Each training example's gradient norm before clipping, at the current parameters.

        One batched pass (``training.eval_batch_size`` examples a batch) through the DP engine's
        own per-example norms, of the per-example loss DP-SGD clips (the weighted cross-entropy;
        the config refuses methods that change the training step, :meth:`RepairMethod.training_changes`).
        It trains nothing: no optimizer step, no noise, no accountant step, the engine's records
        and the parameters' gradients dropped (zero_grad) after each batch; and it draws nothing:
        the inputs' device transform runs in its evaluation form (no random flips).
        """
        self.model.train()  # both engines record per-example gradients in training mode only
        norms = []
        batch = self.config.training.eval_batch_size
        for start in range(0, len(self.y), batch):
            indices = torch.arange(start, min(start + batch, len(self.y)), device=self.device)
            x = gather_rows(self.x, indices)
            if self.transform is not None:
                x = self.transform(x, False)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(x).reshape(-1)
            losses = F.binary_cross_entropy_with_logits(logits, self.y[indices], reduction="none")
            (losses * self.weights[indices]).mean().backward()
            norms.append(self.private.per_example_norms().detach())
            self.optimizer.zero_grad(set_to_none=True)
        return torch.cat(norms)

    def individual_privacy(self) -> IndividualPrivacy | None:
        """Each training example's individual ε over the run (privacy.individual), or None when
        ``privacy.individual_accounting`` is off."""
        if self.individual is None:
            return None
        started = time.perf_counter()
        steps, delta = self.private.steps, self.config.privacy.delta
        epsilon = individual_epsilons(
            self.individual.windows(steps), noise_multiplier=self.private.noise_multiplier,
            sample_rate=self.private.sample_rate, delta=delta,
            releases=[release.history() for release in self.private.releases])
        # The bound they are compared with: the run's composition under RDP, the accountant they
        # are computed with (privacy/epsilon itself under privacy.accountant: rdp).
        worst_case = epsilon_of_history(self.private.history(), delta=delta, accountant="rdp")
        return summarize(epsilon, self.individual.mean_clipped_norms(steps),
                         minority=self.minority.cpu().numpy(), labels=self.y.cpu().numpy(),
                         worst_case=worst_case,
                         seconds=self.individual_seconds + time.perf_counter() - started)

    @property
    def privacy_facts(self) -> dict[str, Any]:
        """What the run's guarantee rests on, for summary.json (:func:`training.base.guarantee_facts`),
        and under DP-SGD its whole composition (``privacy/history``: the (σ, q, steps) entries of
        its steps and releases), which the report composes across runs."""
        facts = guarantee_facts(self.config.privacy, poisson=self.config.privacy.poisson_sampling)
        if self.delta_too_large:  # delta_warning: (ε, δ) at δ ≥ 1/n is no meaningful guarantee
            facts["privacy/private"] = False
        if self.private is not None:
            facts[HISTORY_KEY] = [list(entry) for entry in self.private.history()]
        return facts

    def privacy_metrics(self) -> dict[str, float | None]:
        if self.private is None:
            return no_privacy_metrics()
        delta = self.config.privacy.delta
        metrics = {
            "privacy/epsilon": self.private.epsilon(delta),
            "privacy/delta": delta,
            "privacy/noise_multiplier": self.private.noise_multiplier,
            "privacy/sample_rate": self.private.sample_rate,
            "privacy/steps": self.private.steps,
        }
        if self.private.releases or self.private.step_releases:  # each part's cost alone
            metrics.update({f"privacy/epsilon_parts/{name}": value
                            for name, value in self.private.epsilon_parts(delta).items()})
        return metrics

    def base_model(self) -> nn.Module:
        """The unwrapped model (for saving weights)."""
        return getattr(self.model, "_module", self.model)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs at an epoch boundary (see :mod:`training.checkpoint`).

        Under DP-SGD this includes the accountant's history, (σ, q, steps) triples: ε after the
        resume must count the steps taken before it, or the run would report less privacy loss
        than it incurred.
        """
        return {
            "model": self.base_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "noise_generator": (self.private.noise_generator.get_state()
                                if self.private is not None
                                and self.private.noise_generator is not None else None),
            "accountant_history": (self.private.accountant_state()
                                   if self.private is not None else None),
            "releases": ([dataclasses.asdict(release) for release in self.private.releases]
                         if self.private is not None else []),
            # The clipping rule's bound and release generator (privacy.clipping).
            "clipping": self.private.clipping.state_dict() if self.private is not None else None,
            "method": self.method.state_dict(),
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            "individual": (self.individual.state_dict() if self.individual is not None else None),
            "individual_seconds": self.individual_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into this freshly built trainer of the same config."""
        self.base_model().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.private is not None:
            if state["accountant_history"] is None:
                raise ValueError("the checkpoint holds no privacy accountant history")
            if self.private.noise_generator is not None:
                if state.get("noise_generator") is None:
                    raise ValueError("the checkpoint holds no noise generator state")
                self.private.noise_generator.set_state(state["noise_generator"])
            self.private.load_accountant_state(state["accountant_history"])
            self.private.clipping.load_state_dict(state.get("clipping") or {})
            if self.config.privacy.secure_rng:
                # The releases before the interruption were drawn from the OS and cannot be
                # replayed: this build drew its own, so both are spent and both are composed.
                self.private.releases[:0] = [Release(**entry) for entry in state.get("releases", [])]
        self.method.load_state_dict(state.get("method") or {})
        self.info.update(self.method.info())
        self.train_samples = int(state["train_samples"])
        self.train_seconds = float(state["train_seconds"])
        if self.individual is not None:
            if state.get("individual") is None:
                raise ValueError("the checkpoint holds no individual accounting passes")
            self.individual.load_state_dict(state["individual"])
            self.individual_seconds = float(state.get("individual_seconds", 0.0))


class RuleDiagnostics:
    """A clipping rule's bounds over an epoch's steps (``privacy.clipping`` other than flat): per
    group the bound in force (``dp/clip_bound/group=…``), the sum's sensitivity
    (``dp/noise_bound``) and the rule's extras (Z: ``dp/clip_threshold``), each the mean over the
    epoch's steps, empty batches included (the bound is in force at every step). The bounds come
    from the rule's noisy releases, but the means are logged with the other ``dp/`` diagnostics."""

    def __init__(self):
        self.steps = 0
        self.sums: dict[str, float] = {}

    def add(self, step) -> None:
        values = {**{f"dp/clip_bound/group={group}": bound
                     for group, bound in zip(GROUPS, step.bounds)},
                  "dp/noise_bound": step.sensitivity,
                  **{f"dp/{name}": value for name, value in step.extras.items()}}
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.steps += 1

    def metrics(self) -> dict[str, float]:
        return {key: total / self.steps for key, total in self.sums.items()} if self.steps else {}


@TRAINERS.register("none")
@TRAINERS.register("dpsgd")
def build_centralized(config, model, data, device, *, method=None) -> CentralizedTrainer:
    return CentralizedTrainer(config, model, data, device, method)
