"""Clipping rules (``privacy.clipping``): how each step bounds an example's (or a client's) share.

DP-SGD's disparate impact comes from its clipping: an example whose gradient is long is shrunk to
the bound C, and a minority's examples are long more often (Bagdasaryan et al. 2019). The field's
answers change the clipping rule and keep the rest of DP-SGD. A rule here turns the step's
per-example gradient norms (and, where the algorithm uses them, the examples' group labels) into

- each example's factor cᵢ, so that the step's sum is Σᵢ cᵢgᵢ;
- the step's sensitivity S, a bound on ‖cᵢgᵢ‖ for every example the batch could hold: the noise on
  the sum is N(0, σ²S²) with σ = ``privacy.noise_multiplier``;
- the step's extra releases (noisy counts of the norms), from which it sets its bounds.

Nothing else of the step changes: the engine (:mod:`privacy.fast_dpsgd`) still computes the norms
by book-keeping and the clipped sum from its factors, divides by the expected batch size, and DP-
FedAvg's server (:mod:`training.federated`) clips client updates at the rule's bound. That is the
shape of a future ``PrivateEngine`` Protocol: norms in; factors, noise scale and releases out.

| rule | factor cᵢ | S | extra release each step |
| --- | --- | --- | --- |
| flat | min(1, C/‖gᵢ‖) | C | none |
| dpsgd_f | min(1, C_k/‖gᵢ‖), C_k of i's group | max_k C_k | (group × above C0) counts |
| global | C/Z if ‖gᵢ‖ ≤ Z, else 0 | C | none |
| global_adapt | C/Z if ‖gᵢ‖ ≤ Z, else min(1, C/‖gᵢ‖) | C | count of ‖gᵢ‖ > τZ |
| adaptive | min(1, C_t/‖gᵢ‖) | C_t | count of ‖gᵢ‖ ≤ C_t |
| bounded_adaptive | as adaptive, C_t kept in [lower, upper] | C_t | as adaptive |
| automatic | C/(‖gᵢ‖ + γ) | C | none |

Accounting. A rule's release and the step's noisy sum read the same Poisson sample, so they are
one mechanism, not two: conditioned on the released counts (which fix the bounds, and so S and
the noise scale), the sum is a Gaussian mechanism of sensitivity S with noise σS. Rescaling each
block by its noise turns the pair into one Gaussian vector whose shift under adding or removing
one example has norm at most √(1/σ² + Σⱼ 1/σⱼ²), with σⱼ a release's noise standard deviation over
its sensitivity (the rotation that aligns the sum's shift may depend on the released counts, and
a bijection shared by both hypotheses changes no divergence). So each step is one sampled
Gaussian mechanism with the *effective* noise multiplier

    σ_eff = (σ⁻² + Σⱼ σⱼ⁻²)^(-1/2)              (privacy.accounting.effective_noise_multiplier)

which is what the accountant records (Andrew et al. 2021, Thm. 1, for the adaptive rule; the same
argument for every rule). Accounting the release and the sum as two separately sampled mechanisms,
as the public code of DPSGD-F and DPSGD-Global-Adapt does, can understate ε, since the two see one
sample (in fair-dp's Adult setting, σ 1 and σ₁ 10 over 1,500 steps at q = 1/75, RDP gives 3.88
jointly and 3.85 composed separately).
dp_accounting's RDP accountant models a Poisson-sampled composition of Gaussians the same way and
agrees (tests/test_clipping.py). ``privacy/epsilon_parts/training`` and
``privacy/epsilon_parts/clipping_*`` give each part alone, the sum at σ and each release at σⱼ,
over the run's steps.

Every release divides by the *expected* batch size qN (the expected number of clients under
DP-FedAvg), never by the realized one, which is not released (the public code of Global-Adapt and
of the adaptive rules divides by the realized batch). Release draws come from the run's
``dp_clipping`` stream (a CPU generator; their state is in the checkpoints) or, under
``privacy.secure_rng``, from the operating system (:class:`privacy.noise.SecureRandom`), in the
order each rule's docstring gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from privacy.accounting import effective_noise_multiplier
from privacy.noise import SecureRandom
from utils.errors import ConfigError
from utils.registry import Registry

RULES: Registry = Registry("clipping rule", "privacy.clipping")

# Refusals, checked by the config before any file is written (tests import the message parts).
NEEDS_PRIVACY = ("privacy.clipping {rule!r} needs a private privacy.mode (a non-private run clips "
                 "nothing). Set privacy.clipping: flat under privacy.mode: none; in a grid, zip "
                 "privacy.clipping with privacy.mode.")
NEEDS_FAST_ENGINE = ("privacy.clipping {rule!r} needs privacy.engine: fast: the rule acts on the "
                     "fast engine's per-example norms, and Opacus' optimizer clips flat. Set "
                     "privacy.engine: fast, or privacy.clipping: flat.")
NO_INDIVIDUAL_ACCOUNTING = (
    "privacy.individual_accounting does not support privacy.clipping {rule!r}: the individual "
    "accounting takes an example's sensitivity as min(its norm, privacy.max_grad_norm), flat "
    "clipping's, while this rule's factors and bound change from step to step. Set "
    "privacy.individual_accounting: false, or privacy.clipping: flat.")
REFUSES_MODE = ("privacy.clipping {rule!r} refuses privacy.mode {mode!r}: {reason} Under {mode} "
                "use privacy.clipping one of: {supported}.")


@dataclass(frozen=True, kw_only=True)
class NoSettings:
    """A rule without settings of its own."""

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class StepRelease:
    """A release a rule makes at every step, on the step's sample.

    Attributes:
        name: ``privacy/epsilon_parts/<name>``.
        noise_multiplier: the noise's standard deviation over the statistic's L2 sensitivity.
        key: the config key that sets its noise, for messages.
    """

    name: str
    noise_multiplier: float
    key: str


@dataclass(frozen=True)
class ClipStep:
    """One step's clipping, as a rule hands it to the engine and the diagnostics.

    Attributes:
        factors: cᵢ of each example of the batch, shape (B,), on the norms' device.
        sensitivity: S, a bound on ‖cᵢgᵢ‖ for any example; the sum's noise is σ·S.
        bounds: the norm above which an example of the (minority, majority) group is clipped (or
            discarded) at this step: ``dp/clip_bound/group=…``.
        extras: further values the rule reports for the step, ``dp/<name>`` (means over an epoch).
    """

    factors: torch.Tensor
    sensitivity: float
    bounds: tuple[float, float]
    extras: dict[str, float] = field(default_factory=dict)

    def limits(self, minority: torch.Tensor) -> torch.Tensor | float:
        """Each example's bound (its group's), to compare its norm with."""
        low, high = self.bounds
        if low == high:
            return low
        return torch.where(minority, torch.tensor(low, device=minority.device),
                           torch.tensor(high, device=minority.device))


class ClippingRule:
    """Flat clipping's interface; every rule is a subclass registered in :data:`RULES`.

    Args:
        settings: the rule's own settings (``privacy.<name>``), an instance of ``Settings``.
        max_grad_norm: ``privacy.max_grad_norm``, C (each rule says what it is to it).
        expected_batch_size: qN (DP-SGD) or the expected clients per round (DP-FedAvg), the
            denominator of every noisy fraction.
        source: where the releases' noise comes from: a seeded CPU ``torch.Generator`` (the
            ``dp_clipping`` stream) or :class:`privacy.noise.SecureRandom`; None only for a rule
            without releases.

    Attributes:
        Settings: the frozen settings dataclass of ``privacy.<name>``.
        uses_groups: whether :meth:`clip` reads the group labels.
        refuses: privacy mode -> why the rule refuses it.
    """

    name: ClassVar[str] = "flat"
    Settings: ClassVar[type] = NoSettings
    uses_groups: ClassVar[bool] = False
    refuses: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: Any, *, max_grad_norm: float, expected_batch_size: float,
                 source: torch.Generator | SecureRandom | None = None):
        self.settings = settings if settings is not None else self.Settings()
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = float(expected_batch_size)
        self.source = source

    def step_releases(self) -> list[StepRelease]:
        """The releases every step makes (each composed into σ_eff)."""
        return []

    def accounted_noise_multiplier(self, sigma: float) -> float:
        """The noise multiplier the accountant records for a step whose sum has noise multiplier
        ``sigma``: σ_eff of the sum and this rule's releases (σ itself for a rule without)."""
        return effective_noise_multiplier(sigma, [r.noise_multiplier for r in self.step_releases()])

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        """This step's factors, sensitivity and bounds from the norms (and groups) of its batch;
        draws the step's releases and moves the rule's state to the next step. Call it once per
        step, also for an empty batch: under Poisson sampling that is a step like any other."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The rule's state between steps (its bound, its generator) for a checkpoint."""
        state: dict[str, Any] = {}
        if isinstance(self.source, torch.Generator):
            state["generator"] = self.source.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a rule that releases nothing has nothing to restore
        (a checkpoint from before the rules existed holds no state for flat clipping)."""
        if isinstance(self.source, torch.Generator):
            if "generator" in state:
                self.source.set_state(state["generator"])
            elif self.step_releases():
                raise ValueError(f"the checkpoint holds no state of privacy.clipping {self.name!r}")

    def release(self, values: list[float], std: float) -> list[float]:
        """The Gaussian mechanism on ``values``: each plus an N(0, std²) draw, in order, from the
        rule's source (the one place a rule's noise is drawn)."""
        return [value + std * z for value, z in zip(values, self._normal(len(values)))]

    def _normal(self, count: int) -> list[float]:
        """``count`` N(0, 1) draws from the rule's source, as Python floats (float64)."""
        if isinstance(self.source, SecureRandom):
            return [float(value) for value in self.source.standard_normal(count)]
        if self.source is None:
            raise ValueError(f"privacy.clipping {self.name!r} releases noisy counts and needs a "
                             f"noise source")
        return torch.randn(count, generator=self.source, dtype=torch.float64).tolist()

    @classmethod
    def refusal(cls, privacy) -> str | None:
        """The config's error when this rule cannot run with ``privacy`` (a PrivacyConfig), else
        None: the rule needs a private mode it supports, the fast engine under DP-SGD, and no
        individual accounting (which assumes flat clipping)."""
        if cls.name == "flat":
            return None
        if not privacy.private:
            return NEEDS_PRIVACY.format(rule=cls.name)
        if privacy.mode in cls.refuses:
            supported = ", ".join(name for name in RULES
                                  if privacy.mode not in RULES.get(name).refuses)
            return REFUSES_MODE.format(rule=cls.name, mode=privacy.mode,
                                       reason=cls.refuses[privacy.mode], supported=supported)
        if privacy.mode == "dpsgd" and privacy.engine != "fast":
            return NEEDS_FAST_ENGINE.format(rule=cls.name)
        if privacy.individual_accounting:
            return NO_INDIVIDUAL_ACCOUNTING.format(rule=cls.name)
        return None


def _dp_sgd_only(author: str) -> dict[str, str]:
    return {"dpfedavg": (f"{author} define it for the per-example gradients of DP-SGD; a client's "
                         f"update is not an example's gradient, and the rule's guarantee and "
                         f"benefit are not shown for it.")}


@RULES.register("flat")
class Flat(ClippingRule):
    """DP-SGD's own clipping (Abadi et al. 2016): cᵢ = min(1, C / (‖gᵢ‖ + 10⁻⁶)), Opacus' form.

    Sensitivity: ‖cᵢgᵢ‖ = C·‖gᵢ‖/(‖gᵢ‖ + 10⁻⁶) < C. No release. The default, and exactly the engine
    as it was before the rules existed (the same operations in the same order).
    """

    name = "flat"

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        return ClipStep(factors, self.max_grad_norm, (self.max_grad_norm, self.max_grad_norm))


@dataclass(frozen=True, kw_only=True)
class DpsgdFSettings:
    """``privacy.dpsgd_f``: DPSGD-F (Xu, Du, Wu, KDD 2021).

    Attributes:
        counts_noise_multiplier: σ₁, the standard deviation of the Gaussian noise on each of the
            step's (group × above C0) counts; the counts' L2 sensitivity is 1, so it is also their
            noise multiplier. fair-dp's Adult setting uses 10.
    """

    counts_noise_multiplier: float = 10.0

    def validate(self) -> None:
        if not self.counts_noise_multiplier > 0:
            raise ConfigError(f"privacy.dpsgd_f.counts_noise_multiplier: got "
                              f"{self.counts_noise_multiplier!r}; expected a positive number.")


@RULES.register("dpsgd_f")
class DpsgdF(ClippingRule):
    """DPSGD-F: a clipping bound per group, raised for the groups that clipping hits hardest.

    Each step, with C0 = ``privacy.max_grad_norm``, the rule counts per group k the batch's
    examples whose gradient norm exceeds C0 (m_k) and those that do not (o_k), releases the four
    counts (minority above, minority not, majority above, majority not; drawn in that order) with
    N(0, σ₁²) each, clamps each noisy count at 0, and sets

        b_k = m̃_k + õ_k,  m = Σ_k m̃_k,  b = Σ_k b_k,
        C_k = C0 · (1 + (m̃_k / b_k) / (m / b))        (C_k = C0 when m̃_k = 0)

    a group's bound grows with its clipped fraction relative to the batch's. Example i of group k
    gets cᵢ = min(1, C_k / (‖gᵢ‖ + 10⁻⁶)), and the noise on the sum is σ · max_k C_k.

    Sensitivity and releases. The counts form a histogram: adding or removing an example changes
    exactly one of the four cells by one, so their L2 sensitivity is 1 and σ₁ is their noise
    multiplier. The bounds are computed from the noisy counts alone (post-processing), for both
    groups, present in the batch or not, so the sum's sensitivity given the release is
    max_k C_k, and the noise uses that largest bound (the condition the guarantee needs: the
    noise of a group's own bound would not cover an example of another group). The step is
    accounted as one mechanism with σ_eff = (σ⁻² + σ₁⁻²)^(-1/2) (module docstring).

    The group label is treated as private: it is part of the example, so the adjacent data set
    that removes an example removes its group too. It enters the step only through the released
    histogram (which cell the example falls in) and through which bound clips it, and both are
    covered: the histogram's sensitivity is 1 whatever the example's group, and the sum's
    sensitivity max_k C_k covers an example of either group.

    Where the paper and the public code (layer6ai-labs/fair-dp) differ, this follows the paper:
    the code divides a group's clipped fraction by the unweighted mean of the groups' fractions
    (with balanced groups, as in its Adult setting, the two nearly agree; at a small minority share
    they do not), floors the noisy counts to integers, gives a group with no noisy example the
    ratio 1, and accounts the counts as a separately sampled mechanism (which can understate ε).
    """

    name = "dpsgd_f"
    Settings = DpsgdFSettings
    uses_groups = True
    refuses = {"dpfedavg": (
        "DPSGD-F sets a clipping bound per group from counts of examples whose gradient exceeds "
        "C0 (Xu et al. define it for DP-SGD); a client's update mixes its examples' groups, so "
        "there is no group of an update to clip by.")}

    def step_releases(self) -> list[StepRelease]:
        return [StepRelease("clipping_counts", self.settings.counts_noise_multiplier,
                            "privacy.dpsgd_f.counts_noise_multiplier")]

    def group_bounds(self, noisy: list[float]) -> tuple[float, float]:
        """(C_minority, C_majority) from the released counts (m̃, õ of the minority, then of the
        majority), clamped at 0; post-processing of the release."""
        above = [max(noisy[0], 0.0), max(noisy[2], 0.0)]
        below = [max(noisy[1], 0.0), max(noisy[3], 0.0)]
        sizes = [a + b for a, b in zip(above, below)]
        overall = sum(above) / sum(sizes) if sum(above) > 0 else 0.0
        return tuple(self.max_grad_norm * (1.0 + (a / n) / overall) if a > 0 else self.max_grad_norm
                     for a, n in zip(above, sizes))

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        if minority is None:
            raise ValueError("DPSGD-F needs each example's group (the trainer's batch_groups)")
        above = norms > self.max_grad_norm
        counts = torch.stack([(above & minority).sum(), (~above & minority).sum(),
                              (above & ~minority).sum(), (~above & ~minority).sum()]).tolist()
        bounds = self.group_bounds(self.release(counts, self.settings.counts_noise_multiplier))
        limits = torch.where(minority, torch.tensor(bounds[0], device=norms.device, dtype=norms.dtype),
                             torch.tensor(bounds[1], device=norms.device, dtype=norms.dtype))
        factors = (limits / (norms + 1e-6)).clamp(max=1.0)
        return ClipStep(factors, max(bounds), bounds)


@dataclass(frozen=True, kw_only=True)
class GlobalSettings:
    """``privacy.global``: DPSGD-Global (Esipova et al., ICLR 2023).

    Attributes:
        z: Z, the strict upper bound: a gradient of norm at most Z is scaled by C/Z, a longer one
            is discarded. fair-dp's Adult setting uses 50 (with C = 0.5 and lr 0.2).
    """

    z: float = 50.0

    def validate(self) -> None:
        if not self.z > 0:
            raise ConfigError(f"privacy.global.z: got {self.z!r}; expected a positive number.")


@RULES.register("global")
class Global(ClippingRule):
    """DPSGD-Global: every kept gradient is scaled by the same C/Z, which keeps them aligned.

    cᵢ = C/Z when ‖gᵢ‖ ≤ Z, else 0 (the example is discarded), with C = ``privacy.max_grad_norm``
    and Z = ``privacy.global.z``. Sensitivity: a kept example has ‖cᵢgᵢ‖ = C‖gᵢ‖/Z ≤ C (C exactly at
    ‖gᵢ‖ = Z), a discarded one 0, so S = C and the noise is σC, as in DP-SGD. No release.
    """

    name = "global"
    Settings = GlobalSettings
    refuses = _dp_sgd_only("Esipova et al.")

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        z = self.settings.z
        factors = torch.where(norms <= z, self.max_grad_norm / z, 0.0).to(norms.dtype)
        return ClipStep(factors, self.max_grad_norm, (z, z), {"clip_threshold": z})


@dataclass(frozen=True, kw_only=True)
class GlobalAdaptSettings:
    """``privacy.global_adapt``: DPSGD-Global-Adapt (Esipova et al., ICLR 2023).

    Attributes:
        z: Z₀, the initial upper bound (fair-dp's Adult setting: 50).
        bits_noise_multiplier: σ_b, the noise standard deviation on the count of examples above
            τZ (sensitivity 1; fair-dp: 10).
        lr_z: η_Z of the update Z ← Z · exp(−η_Z + b̃) (fair-dp's Adult setting: 0.1).
        threshold: τ, the examples counted are those with ‖gᵢ‖ > τZ (fair-dp: 1).
    """

    z: float = 50.0
    bits_noise_multiplier: float = 10.0
    lr_z: float = 0.1
    threshold: float = 1.0

    def validate(self) -> None:
        for key in ("z", "bits_noise_multiplier", "threshold"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"privacy.global_adapt.{key}: got {getattr(self, key)!r}; "
                                  f"expected a positive number.")
        if not self.lr_z >= 0:
            raise ConfigError(f"privacy.global_adapt.lr_z: got {self.lr_z!r}; expected a number "
                              f">= 0.")


@RULES.register("global_adapt")
class GlobalAdapt(ClippingRule):
    """DPSGD-Global-Adapt: Global's scaling below Z, clipping to C above it, Z adapted each step.

    At step t with bound Z_t: cᵢ = C/Z_t when ‖gᵢ‖ ≤ Z_t, else min(1, C / (‖gᵢ‖ + 10⁻⁶)) (clipped
    to C instead of Global's discarding). The rule releases the count of the batch's examples with
    ‖gᵢ‖ > τZ_t plus N(0, σ_b²) (one draw), divides it by the expected batch size qN (b̃), and sets
    Z_{t+1} = Z_t · exp(−η_Z + b̃): Z shrinks by e^(−η_Z) while almost no gradient exceeds it and
    grows when more than a share η_Z does.

    Sensitivity: below Z, ‖cᵢgᵢ‖ = C‖gᵢ‖/Z ≤ C; above, ≤ C: S = C, noise σC. The count has
    sensitivity 1, so σ_b is its noise multiplier; the step is accounted with
    σ_eff = (σ⁻² + σ_b⁻²)^(-1/2). Z_{t+1} is computed from the release alone (post-processing).

    The Z update is the public code's (layer6ai-labs/fair-dp, ``_update_Z``), which the paper's
    algorithm states the same way as far as we can check without its text at hand. Differences
    from that code, following the paper: the noisy count is divided by the expected batch size,
    not by the realized one (which the code divides by without releasing it); and when Z falls
    below C a gradient shorter than Z is scaled by C/Z (> 1), as the paper writes, where the code
    caps the factor at 1. The release is accounted jointly with the sum (module docstring); the
    code accounts it as a separately sampled mechanism.
    """

    name = "global_adapt"
    Settings = GlobalAdaptSettings
    refuses = _dp_sgd_only("Esipova et al.")

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.z = float(self.settings.z)

    def step_releases(self) -> list[StepRelease]:
        return [StepRelease("clipping_bits", self.settings.bits_noise_multiplier,
                            "privacy.global_adapt.bits_noise_multiplier")]

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        z, bound, s = self.z, self.max_grad_norm, self.settings
        clipped = (bound / (norms + 1e-6)).clamp(max=1.0)
        factors = torch.where(norms <= z, torch.full_like(norms, bound / z), clipped)
        above = float((norms > s.threshold * z).sum())
        (noisy,) = self.release([above], s.bits_noise_multiplier)
        self.z = z * math.exp(-s.lr_z + noisy / self.expected_batch_size)
        return ClipStep(factors, bound, (z, z), {"clip_threshold": z})

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "z": self.z}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.z = float(state["z"])


@dataclass(frozen=True, kw_only=True)
class AdaptiveSettings:
    """``privacy.adaptive``: adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

    Attributes:
        target_quantile: γ, the share of norms the bound should sit above (Andrew et al.: 0.5).
        lr: η_C of the geometric update C ← C · exp(−η_C (b̃ − γ)) (Andrew et al.: 0.2).
        count_noise_std: σ_b, the noise standard deviation on the count of unclipped norms; null
            is Andrew et al.'s choice, the expected batch size (clients per round) over 20.
    """

    target_quantile: float = 0.5
    lr: float = 0.2
    count_noise_std: float | None = None

    def validate(self, section: str = "privacy.adaptive") -> None:
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"{section}.target_quantile: got {self.target_quantile!r}; "
                              f"expected a number strictly between 0 and 1.")
        if not self.lr > 0:
            raise ConfigError(f"{section}.lr: got {self.lr!r}; expected a positive number.")
        if self.count_noise_std is not None and not self.count_noise_std > 0:
            raise ConfigError(f"{section}.count_noise_std: got {self.count_noise_std!r}; expected "
                              f"a positive number, or null (expected batch size / 20).")


@RULES.register("adaptive")
class Adaptive(ClippingRule):
    """Adaptive clipping: the bound follows a privately estimated quantile of the norms.

    The bound starts at C_0 = ``privacy.max_grad_norm``. At step (round) t: cᵢ = min(1, C_t /
    (‖gᵢ‖ + 10⁻⁶)) (a client's update is clipped at C_t by the server under DP-FedAvg); the rule
    releases Σᵢ (bᵢ − ½) + N(0, σ_b²) with bᵢ = 1[‖gᵢ‖ ≤ C_t] (one draw), estimates the unclipped
    share as b̃ = release / m + ½ with m the expected batch size (clients per round), and sets
    C_{t+1} = C_t · exp(−η_C (b̃ − γ)) (Andrew et al.'s geometric update).

    Sensitivity: S = C_t, the noise σC_t. Centring the bits (bᵢ − ½) halves the count's
    sensitivity to ½ under adding or removing one example, so σ_b is a noise multiplier of 2σ_b
    and the step is accounted with σ_eff = (σ⁻² + (2σ_b)⁻²)^(-1/2) (Andrew et al., Thm. 1). Here
    ``privacy.noise_multiplier`` is the sum's σ and σ_eff follows; Andrew et al. and Opacus'
    ``AdaClipDPOptimizer`` instead fix σ_eff and derive the sum's (larger) σ. A target ε solves for
    the sum's σ with the release included, so both parametrizations reach the same ε.
    """

    name = "adaptive"
    Settings = AdaptiveSettings

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.bound = self.max_grad_norm

    @property
    def count_noise_std(self) -> float:
        std = self.settings.count_noise_std
        return std if std is not None else self.expected_batch_size / 20

    def step_releases(self) -> list[StepRelease]:
        return [StepRelease("clipping_quantile", 2 * self.count_noise_std,
                            f"privacy.{self.name}.count_noise_std")]

    def next_bound(self, bound: float, unclipped_share: float) -> float:
        s = self.settings
        return bound * math.exp(-s.lr * (unclipped_share - s.target_quantile))

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        bound = self.bound
        factors = (bound / (norms + 1e-6)).clamp(max=1.0)
        centred = float((norms <= bound).sum()) - len(norms) / 2
        (noisy,) = self.release([centred], self.count_noise_std)
        self.bound = self.next_bound(bound, noisy / self.expected_batch_size + 0.5)
        return ClipStep(factors, bound, (bound, bound))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bound": self.bound}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bound = float(state["bound"])


@dataclass(frozen=True, kw_only=True)
class BoundedAdaptiveSettings(AdaptiveSettings):
    """``privacy.bounded_adaptive``: bounded adaptive clipping (Zhao, Rehn, Heikkilä, Tajeddine,
    Honkela, 2025); the keys of ``privacy.adaptive`` and:

    Attributes:
        lower: the bound never falls below it; null is ``privacy.max_grad_norm``, the constant
            bound it is compared with (adaptivity can then only raise the bound).
        upper: the bound never rises above it; null for no upper bound.
    """

    lower: float | None = None
    upper: float | None = None

    def validate(self, section: str = "privacy.bounded_adaptive") -> None:
        super().validate(section)
        for key in ("lower", "upper"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{section}.{key}: got {value!r}; expected a positive number, "
                                  f"or null.")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ConfigError(f"{section}.lower: got {self.lower!r}, above {section}.upper "
                              f"{self.upper!r}; expected lower <= upper.")


@RULES.register("bounded_adaptive")
class BoundedAdaptive(Adaptive):
    """Bounded adaptive clipping: adaptive clipping whose bound is kept within [lower, upper].

    Unbounded adaptive clipping lets the bound shrink to the majority's quantile, which clips the
    minority's longer gradients harder; a lower bound stops that (Zhao et al. 2025). The update is
    :class:`Adaptive`'s followed by C_{t+1} ← min(upper, max(lower, C_{t+1})), post-processing of
    the release, so the sensitivity and the accounting are the adaptive rule's. The bound starts at
    ``privacy.max_grad_norm`` (raised to ``lower`` if it lies below it).

    The public code (TrustworthyMLHelsinki/adaptive-clipping-fairness) divides each clipped
    gradient by the bound ("normalized clipping", noise σ instead of σC_t: the same update at a
    learning rate divided by C_t) and may count norms below a multiple of the bound
    (``count_threshold``); this follows Andrew et al.'s unnormalized form with the bound itself,
    like the adaptive rule it is compared with.
    """

    name = "bounded_adaptive"
    Settings = BoundedAdaptiveSettings

    def __init__(self, settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.bound = self.keep_within(self.bound)

    @property
    def lower(self) -> float:
        return self.settings.lower if self.settings.lower is not None else self.max_grad_norm

    def keep_within(self, bound: float) -> float:
        upper = self.settings.upper if self.settings.upper is not None else math.inf
        return min(upper, max(self.lower, bound))

    def next_bound(self, bound: float, unclipped_share: float) -> float:
        return self.keep_within(super().next_bound(bound, unclipped_share))


@dataclass(frozen=True, kw_only=True)
class AutomaticSettings:
    """``privacy.automatic``: automatic clipping (Bu, Wang, Zha, Karypis, NeurIPS 2023).

    Attributes:
        gamma: γ, the stability constant of AUTO-S (Bu et al.: 0.01).
    """

    gamma: float = 0.01

    def validate(self) -> None:
        if not self.gamma > 0:
            raise ConfigError(f"privacy.automatic.gamma: got {self.gamma!r}; expected a positive "
                              f"number.")


@RULES.register("automatic")
class Automatic(ClippingRule):
    """Automatic clipping (AUTO-S): every gradient normalized, cᵢ = C / (‖gᵢ‖ + γ).

    Sensitivity: ‖cᵢgᵢ‖ = C‖gᵢ‖/(‖gᵢ‖ + γ) < C, so S = C and the noise is σC. No release. Bu et al.
    write the rule with C = 1, since C only rescales the learning rate; here C =
    ``privacy.max_grad_norm`` multiplies the normalized gradient and the noise alike, so that a
    learning rate tuned for flat clipping at C stays of the right size.
    """

    name = "automatic"
    Settings = AutomaticSettings
    refuses = _dp_sgd_only("Bu et al.")

    def clip(self, norms: torch.Tensor, minority: torch.Tensor | None = None) -> ClipStep:
        bound = self.max_grad_norm
        return ClipStep(bound / (norms + self.settings.gamma), bound, (bound, bound))


def build_rule(privacy, *, expected_batch_size: float,
               source: torch.Generator | SecureRandom | None) -> ClippingRule:
    """The rule ``privacy.clipping`` names (a PrivacyConfig), with its settings."""
    cls = RULES.get(privacy.clipping)
    return cls(privacy.clipping_settings, max_grad_norm=privacy.max_grad_norm,
               expected_batch_size=expected_batch_size, source=source)
