"""The points of a grid draw their own batches and noise (utils.seeding: run streams keyed by the
run's identity); the paired design shares them only when asked for.

The audit that asked for this found that runs of one seed differing only in σ (or in the minority
share, at a fixed training-set size) drew the same Poisson index sets and the same N(0, 1) noise,
scaled by their own σ: from two released models of one step the private clipped gradient sum was
solved for. These tests train two grid points of one seed and check, for points that differ in σ
and in share: that their index sets and noise vectors look independent (every pair of steps, every
offset of the noise, with Bonferroni-corrected bounds); that the one-step recovery of the clipped
sum fails; and, as a control, that it succeeds under ``privacy.paired_streams: true``, where a
per-example loop's clipped sum is recovered to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal, stats
from torch.nn import functional as F

from models import build_model
from training.experiment import build_components
from training.validation import validated_config
from utils.seeding import PAIRED_STREAMS_WARNING, identity_settings, run_identity, run_key

FAMILY_WISE_ERROR = 1e-6
N, BATCH, LR, BOUND = 2000, 200, 0.1, 1.0  # q = 0.1: about 200 members a step


def grid_point(*, share=0.3, noise=1.0, seed=0, paired=False, **top):
    return validated_config({
        "seed": seed, **top,
        "data": {"name": "synthetic", "minority_share": share, "train_size": N},
        "model": {"name": "mlp", "hidden": [256]},
        "training": {"epochs": 1, "batch_size": BATCH, "optimizer": "sgd", "lr": LR},
        "privacy": {"mode": "dpsgd", "noise_multiplier": noise, "max_grad_norm": BOUND,
                    "paired_streams": paired},
        "logging": {"progress": "never"},
    })


class Recorded:
    """One run's first ``steps`` steps: its initial and final weights, batches and noise blocks."""

    def __init__(self, config, steps: int):
        data, _, trainer = build_components(config, torch.device("cpu"))
        self.config, self.data, self.trainer = config, data, trainer
        self.initial = [p.detach().clone() for p in trainer.base_model().parameters()]
        self.batches: list[np.ndarray] = []
        seed = trainer.private.noise_generator.initial_seed()
        loader = trainer.loader

        class FirstSteps:
            def __len__(inner):
                return steps

            def __iter__(inner):
                for step, batch in enumerate(loader):
                    if step == steps:
                        return
                    self.batches.append(batch[0].numpy().copy())
                    yield batch

        trainer.loader = FirstSteps()
        trainer.train_unit(0)
        self.final = [p.detach().clone() for p in trainer.base_model().parameters()]
        # The fast engine draws one flat N(0, σ²C²) block per step from its noise generator
        # (tests/test_random_streams.py checks it draws exactly these); in units of σC.
        total = sum(p.numel() for p in self.initial)
        replay = torch.Generator().manual_seed(seed)
        self.noise = np.concatenate([torch.normal(0.0, 1.0, size=(total,), generator=replay).numpy()
                                     for _ in range(steps)])
        assert torch.equal(replay.get_state(), trainer.private.noise_generator.get_state())

    def masks(self) -> list[np.ndarray]:
        out = []
        for batch in self.batches:
            mask = np.zeros(N, dtype=bool)
            mask[batch] = True
            out.append(mask)
        return out

    def step(self) -> torch.Tensor:
        """θ0 − θ1 of a one-step run, flattened: lr (S + σC z) / (qN)."""
        return torch.cat([(a - b).reshape(-1) for a, b in zip(self.initial, self.final)])

    def clipped_sum(self) -> torch.Tensor:
        """Σ of the first batch's clipped per-example gradients at the initial weights, by a loop."""
        model = build_model(self.config.model, self.data.input_shape)  # plain, no engine hooks
        with torch.no_grad():
            for p, value in zip(model.parameters(), self.initial):
                p.copy_(value)
        total = None
        x = torch.as_tensor(self.data.x_train)
        y = torch.as_tensor(self.data.y_train, dtype=torch.float32)
        for i in self.batches[0]:
            model.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x[i:i + 1]).reshape(-1), y[i:i + 1])
            loss.backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
            g = g * min(1.0, BOUND / (float(g.norm()) + 1e-6))
            total = g if total is None else total + g
        return total


def assert_batches_independent(a: Recorded, b: Recorded):
    """Every pair of steps shares no more members than two independent Poisson samples would."""
    q = BATCH / N
    pairs = len(a.batches) * len(b.batches)
    bound = stats.binom.isf(FAMILY_WISE_ERROR / pairs, N, q * q)
    overlaps = np.array([[int((m & n).sum()) for n in b.masks()] for m in a.masks()])
    assert overlaps.max() <= bound, (overlaps, bound)
    # The statistic can see the flaw: a batch shares all its ~qN members with itself.
    assert min(len(batch) for batch in a.batches) > 3 * bound


def max_correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """The largest |correlation| of ``y``'s first half against ``x`` at every offset, each in
    units of its standard deviation under independence (about N(0, 1) then)."""
    x, y = x - x.mean(), y - y.mean()
    window = len(y) // 2
    corr = signal.correlate(x, y[:window], mode="valid", method="fft")
    corr /= np.sqrt((x**2).mean() * (y[:window] ** 2).sum())
    return float(np.abs(corr).max()), len(corr)


def assert_noise_independent(a: Recorded, b: Recorded):
    """No offset of one run's standardized noise correlates with the other's beyond chance."""
    worst, tests = max_correlation(a.noise, b.noise)
    bound = stats.norm.isf(FAMILY_WISE_ERROR / 2 / tests)
    assert worst <= bound, worst
    # The statistic can see the flaw: a stream against itself stands far above the bound.
    assert max_correlation(a.noise, a.noise)[0] > 10 * bound


def recover(a: Recorded, b: Recorded) -> torch.Tensor:
    """The audit's attack: with Δk = lr (S + σk C z) / (qN) and one z, (σb Δa − σa Δb) / (σb − σa)
    is lr S / (qN), the clipped sum without its noise."""
    sa, sb = a.config.privacy.noise_multiplier, b.config.privacy.noise_multiplier
    return (sb * a.step().double() - sa * b.step().double()) / (sb - sa)


def expected_scale(run: Recorded) -> float:
    return LR / run.trainer.private.expected_batch_size


@pytest.fixture(scope="module")
def sigma_pair():
    return Recorded(grid_point(noise=1.0), 10), Recorded(grid_point(noise=0.5), 10)


def test_points_differing_in_sigma_draw_independent_batches_and_noise(sigma_pair):
    a, b = sigma_pair
    assert a.config.seed == b.config.seed
    assert_batches_independent(a, b)
    assert_noise_independent(a, b)
    # Nor do they start from the same weights.
    assert not torch.equal(a.initial[0], b.initial[0])


def test_points_differing_in_share_draw_independent_batches_and_noise():
    a, b = Recorded(grid_point(share=0.3), 10), Recorded(grid_point(share=0.05), 10)
    assert a.trainer.private.sample_rate == b.trainer.private.sample_rate
    assert_batches_independent(a, b)
    assert_noise_independent(a, b)


def test_the_one_step_recovery_of_the_clipped_sum_fails():
    a, b = Recorded(grid_point(noise=1.0), 1), Recorded(grid_point(noise=0.5), 1)
    recovered = recover(a, b)
    for run in (a, b):
        truth = expected_scale(run) * run.clipped_sum()
        assert float((recovered - truth).norm() / truth.norm()) > 0.5


def test_paired_streams_share_everything_and_the_recovery_succeeds():
    """The control: with the paired design the attack works, so the test above can fail."""
    a = Recorded(grid_point(noise=1.0, paired=True), 1)
    b = Recorded(grid_point(noise=0.5, paired=True), 1)
    assert np.array_equal(a.batches[0], b.batches[0])
    assert np.array_equal(a.noise, b.noise)
    truth = expected_scale(a) * a.clipped_sum()
    error = float((recover(a, b) - truth).norm() / truth.norm())
    assert error < 1e-3, error
    assert PAIRED_STREAMS_WARNING in a.trainer.warnings


def test_the_same_point_run_twice_is_identical():
    a = Recorded(grid_point(), 3)
    b = Recorded(grid_point(name="elsewhere", output_dir="/tmp/other", device="cpu"), 3)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches, b.batches))
    assert all(torch.equal(x, y) for x, y in zip(a.final, b.final))


def test_the_identity_holds_what_is_trained_and_nothing_else():
    base = grid_point()
    same = [grid_point(name="other"), grid_point(output_dir="elsewhere"), grid_point(device="cpu"),
            validated_config({**base.to_dict(), "logging": {"tensorboard": False},
                                 "training": {**base.to_dict()["training"], "select": "last",
                                              "eval_batch_size": 17},
                                 "evaluation": {"bootstrap_resamples": 3}})]
    for config in same:
        assert run_identity(config) == run_identity(base)
    different = [grid_point(noise=0.5), grid_point(share=0.05),
                 validated_config({**base.to_dict(), "model": {"name": "mlp", "hidden": [128]}})]
    for config in different:
        assert run_identity(config) != run_identity(base)
    assert run_key(grid_point(seed=1)) != run_key(base)
    # A method that only post-processes the scores trains Vanilla's model, on Vanilla's streams.
    def method(name, **settings):
        return validated_config({**base.to_dict(), "fairness": {"method": name, "mode": "dp", **settings}})
    assert run_identity(method("roc", roc={"theta": 0.7})) == run_identity(method("none"))
    assert run_identity(method("reweighing")) != run_identity(method("none"))
    assert run_identity(method("gapreg", gapreg={"lam": 0.5})) != run_identity(method("gapreg"))
    assert run_identity(method("gapreg", gapreg={"lam": 1.0})) == run_identity(method("gapreg"))
    # Keys at their default are left out, so a key the tool gains later changes no identity.
    assert "privacy.paired_streams" not in identity_settings(base)
    assert "data.minority_share" in identity_settings(base)
    # The paired design leaves the noise level out, and only it.
    assert run_identity(grid_point(noise=1.0, paired=True)) == run_identity(
        grid_point(noise=0.5, paired=True))
    assert run_identity(grid_point(share=0.3, paired=True)) != run_identity(
        grid_point(share=0.05, paired=True))
