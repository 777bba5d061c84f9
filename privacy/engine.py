"""The one interface of a DP-SGD engine, and the accounting every private mechanism shares.

A DP-SGD engine is a ``make_private`` function of ``privacy.ENGINES`` (:data:`Wrap`): it wraps the
model, optimizer and index loader and hands back a :class:`PrivateEngine`, the only thing a trainer
reads. Both engines implement it: :mod:`privacy.dpsgd` (Opacus, the reference) and
:mod:`privacy.fast_dpsgd` (this project's book-keeping engine); tests/test_engine.py checks every
member on both. DP-FedAvg's server mechanism (:class:`privacy.dpfedavg.DPFedAvg`) shares the
accounting half (:class:`Accounted`): the same history, ε and ε parts.

:class:`Accounted` is the one implementation of ε and of ε per part, so that the engines cannot
drift apart: each mechanism says only what it recorded (:meth:`Accounted.step_history`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from privacy.accounting import epsilon_of_history


class Accounted:
    """ε and ε parts of a mechanism made of sampled-Gaussian steps and one-off releases.

    A subclass provides: :meth:`step_history` (the (σ_eff, q, steps) entries its steps recorded),
    :attr:`accountant_name` ("rdp" or "prv"), :attr:`noise_multiplier` σ and :attr:`sample_rate` q
    of its steps, :attr:`steps`, :attr:`step_releases` (the clipping rule's per-step releases, each
    with a ``name`` and ``noise_multiplier``) and :attr:`releases` (one-off releases,
    :class:`privacy.releases.Release`).
    """

    def step_history(self) -> list[tuple[float, float, int]]:
        raise NotImplementedError

    def history(self) -> list[tuple[float, float, int]]:
        """The whole composition: every step recorded (restored history included), then every
        one-off release."""
        return [*self.step_history(), *(release.history() for release in self.releases)]

    def epsilon(self, delta: float) -> float:
        """ε of the run so far: the steps and the releases in one accountant."""
        return epsilon_of_history(self.history(), delta=delta, accountant=self.accountant_name)

    def epsilon_parts(self, delta: float) -> dict[str, float]:
        """Each part's ε alone at ``delta``: ``training`` (the steps' noisy sums at σ), each of the
        clipping rule's per-step releases at its own σⱼ over the same steps, each one-off release
        by name. Composition is sub-additive, so the parts sum to at least :meth:`epsilon`.

        Without per-step releases ``training`` is the recorded history itself (a restored history
        included, whatever σ it was recorded at)."""
        mechanism = self.accountant_name
        if self.step_releases:
            q, steps = self.sample_rate, self.steps
            parts = {"training": epsilon_of_history([(self.noise_multiplier, q, steps)],
                                                    delta=delta, accountant=mechanism)}
            for release in self.step_releases:
                parts[release.name] = epsilon_of_history([(release.noise_multiplier, q, steps)],
                                                         delta=delta, accountant=mechanism)
        else:
            parts = {"training": epsilon_of_history(self.step_history(), delta=delta,
                                                    accountant=mechanism)}
        for release in self.releases:
            parts[release.name] = epsilon_of_history([release.history()], delta=delta,
                                                     accountant=mechanism)
        return parts


class AccountedSteps(Accounted):
    """:class:`Accounted` for an engine that records its steps with an Opacus accountant
    (``self.accountant``): both DP-SGD engines."""

    accountant: Any

    @property
    def accountant_name(self) -> str:
        return self.accountant.mechanism()

    def step_history(self) -> list[tuple[float, float, int]]:
        return self.accountant.history

    @property
    def steps(self) -> int:
        return int(sum(num_steps for _, _, num_steps in self.accountant.history))

    def accountant_state(self) -> list[tuple[float, float, int]]:
        """The accountant's history, (σ, q, steps) entries, as a checkpoint saves it."""
        return list(self.accountant.history)

    def load_accountant_state(self, history: Sequence[Sequence[float]]) -> None:
        """Restore :meth:`accountant_state`'s output: ε after a resume counts the steps before it."""
        self.accountant.history = [tuple(entry) for entry in history]

    def account_step(self) -> None:
        """Record one step of this engine with its accountant, at the noise multiplier it accounts
        per step (σ, or σ_eff of the sum and the clipping rule's releases)."""
        self.accountant.step(noise_multiplier=self.accounted_noise_multiplier,
                             sample_rate=self.sample_rate)


@runtime_checkable
class PrivateEngine(Protocol):
    """What a DP-SGD engine's ``make_private`` hands back; trainers read nothing else.

    Attributes:
        module: the model to train (wrapped for per-example gradients where the engine needs it).
        optimizer: the trainer's optimizer, each step privatized (clip, noise, accountant step).
        index_loader: yields ``(indices,)`` batches of training indices (Poisson when configured).
        sample_rate: q, the inclusion probability of one example in one step.
        noise_multiplier: σ of the noise on the clipped sum (resolved by
            :func:`privacy.accounting.resolve_noise_multiplier`).
        accounted_noise_multiplier: what the accountant records per step: σ, or σ_eff of the sum
            and the clipping rule's per-step releases.
        max_grad_norm: the clipping bound C.
        expected_batch_size: qN, the denominator of the noisy mean.
        noise_generator: the seeded generator of the noise (saved in checkpoints), or None under
            ``secure_rng``.
        accountant: the Opacus accountant recording the steps.
        steps: steps recorded so far (restored ones included).
        releases: the run's one-off releases (:mod:`privacy.releases`), composed into ε.
        step_releases: the clipping rule's per-step releases.
        clipping: the clipping rule (:mod:`privacy.clipping`); its state goes into checkpoints.
    """

    module: torch.nn.Module
    optimizer: Any
    index_loader: Any
    sample_rate: float
    noise_generator: torch.Generator | None
    releases: list
    clipping: Any

    @property
    def noise_multiplier(self) -> float: ...

    @property
    def accounted_noise_multiplier(self) -> float: ...

    @property
    def max_grad_norm(self) -> float: ...

    @property
    def expected_batch_size(self) -> float: ...

    @property
    def accountant(self) -> Any: ...

    @property
    def steps(self) -> int: ...

    @property
    def step_releases(self) -> Sequence[Any]: ...

    def draw_noise(self) -> torch.Tensor:
        """One step's noise N(0, σ²C²) for every parameter, one flat vector in the parameters'
        order, from the engine's own noise stream (the draw its optimizer step makes)."""

    def account_step(self) -> None:
        """Record one step with the accountant (what the optimizer's step records)."""

    def per_example_norms(self) -> torch.Tensor:
        """Each example's whole gradient norm before clipping, of the last backward pass."""

    def batch_groups(self, minority: torch.Tensor) -> None:
        """The group flags of the batch about to be forwarded (for a rule that clips by group)."""

    def hooks_off(self) -> contextlib.AbstractContextManager:
        """Record nothing while a repair method computes on public data."""

    def accountant_state(self) -> list[tuple[float, float, int]]:
        """The accountant's history, as a checkpoint saves it."""

    def load_accountant_state(self, history: Sequence[Sequence[float]]) -> None:
        """Restore :meth:`accountant_state`'s output."""

    def history(self) -> list[tuple[float, float, int]]:
        """The whole composition: the steps, then the one-off releases."""

    def epsilon(self, delta: float) -> float:
        """ε of the run so far."""

    def epsilon_parts(self, delta: float) -> dict[str, float]:
        """Each part's ε alone."""


class Wrap(Protocol):
    """A DP-SGD engine of ``privacy.ENGINES``: wraps model, optimizer and index loader."""

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                 config: Any, epochs: int, noise_generator: torch.Generator | None = None,
                 releases: Sequence[Any] = (),
                 clipping_generator: torch.Generator | None = None) -> PrivateEngine: ...
