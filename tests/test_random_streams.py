"""Every source of a run's randomness is its own stream: the DP noise reveals nothing of the batches.

The audit that asked for this found that DP-SGD's noise and its Poisson batches came from two torch
generators seeded with the same number: the noise of one step was the sampler's uniform stream at
a fixed offset, so the noise was tiny exactly at the coordinates lined up with a later batch's
members, and the first batch could be read off the initial weights. The accountant assumes that
which examples are sampled is independent of the noise; these tests look for any such alignment in
a real run, at every offset, with a Bonferroni-corrected binomial bound, so a pass means no offset
of the recorded streams explains the batches better than chance.

The scan: for a recorded stream of values v (noise in units of σC, or initial weights mapped to
their uniform draw) and a 0/1 membership mask m of one step's batch over the N examples, count the
members whose aligned value is "suspicious" (|noise| < 0.2, or a uniform draw below q) at every
offset k: c_k = Σ_i m_i · s_{k+i}. Under independence c_k ~ Binomial(members, p0); the flaw gives
counts near the number of members at the aligned offset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal, stats

from training.experiment import build_components
from training.validation import validated_config
from utils.seeding import DATA_STREAMS, STREAMS, RunStreams, stream_seed, torch_generator

FAMILY_WISE_ERROR = 1e-6


def assert_no_alignment(suspicious: np.ndarray, p0: float, masks: list[np.ndarray], what: str):
    """No offset of ``suspicious`` lines up with any mask beyond a Bonferroni binomial bound."""
    suspicious = suspicious.astype(np.float64)
    tests = sum(max(len(suspicious) - len(mask) + 1, 0) for mask in masks)
    assert tests > 0, "the recorded stream is shorter than one mask: nothing was tested"
    worst = 0.0
    for step, mask in enumerate(masks):
        members = int(mask.sum())
        if members == 0:
            continue
        # Correlation by FFT: every offset at once (rounded: the counts are integers).
        counts = np.rint(signal.correlate(suspicious, mask.astype(np.float64), mode="valid",
                                          method="fft"))
        bound = stats.binom.isf(FAMILY_WISE_ERROR / tests, members, p0)
        worst = max(worst, counts.max() / members)
        assert counts.max() <= bound, (
            f"{what}: at offset {int(counts.argmax())} {int(counts.max())} of step {step}'s "
            f"{members} batch members line up with suspicious values (chance bound {bound:.0f}): "
            f"the two streams are not independent")
    # Sanity of the statistic: under independence the share is near p0, never near 1.
    assert worst < 0.5


def dpsgd_config(engine="opacus", **privacy):
    """The streams' test run; the Opacus engine by default, whose optimizer the recording wraps."""
    return validated_config({
        "seed": 0,
        # 5,000 examples at q = 0.1: about 500 members a step, so that an alignment stands far
        # above chance; 1,024 hidden units: a noise block longer than the example count.
        "data": {"name": "synthetic", "minority_share": 0.3, "train_size": 5000},
        "model": {"name": "mlp", "hidden": [1024]},
        "training": {"epochs": 2, "batch_size": 500, "optimizer": "sgd", "lr": 0.1},
        "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                    "engine": engine, **privacy},
        "logging": {"progress": "never"},
    })


class RecordingLoader:
    """The trainer's own batch loader, recording each step's batch as a membership mask."""

    def __init__(self, loader, num_examples: int):
        self.loader, self.num_examples, self.masks = loader, num_examples, []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            mask = np.zeros(self.num_examples, dtype=bool)
            mask[batch[0].numpy()] = True
            self.masks.append(mask)
            yield batch


def record_dpsgd_run(config):
    """Train ``config`` for its epochs; return the initial weights, the noise stream and the masks."""
    _, model, trainer = build_components(config, torch.device("cpu"))
    initial = [p.detach().clone() for p in trainer.base_model().parameters()]
    recording = RecordingLoader(trainer.loader, len(trainer.y))
    trainer.loader = recording
    optimizer = trainer.optimizer
    noise: list[torch.Tensor] = []
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    add_noise = optimizer.add_noise

    def recording_add_noise():
        add_noise()
        for p in optimizer.params:
            noise.append(((p.grad - p.summed_grad) / std).reshape(-1).detach().clone())

    optimizer.add_noise = recording_add_noise
    for unit in range(trainer.units):
        trainer.train_unit(unit)
    return initial, torch.cat(noise).numpy(), recording.masks


@pytest.mark.parametrize("secure_rng", [False, True])
def test_dpsgd_noise_and_batches_are_independent_streams(secure_rng):
    config = dpsgd_config(secure_rng=secure_rng)
    initial, noise, masks = record_dpsgd_run(config)
    assert len(masks) == 20 and len(noise) == 20 * sum(p.numel() for p in initial)
    # The noise is N(0, 1) in units of σC; P(|z| < 0.2) under that law.
    p_small = stats.norm.cdf(0.2) - stats.norm.cdf(-0.2)
    assert_no_alignment(np.abs(noise) < 0.2, p_small, masks, "DP-SGD noise vs batches")
    # The first layer's weights are uniform on (-b, b) at initialization: map them back to the
    # uniform draw; a batch member lined up with a draw below q is what the flaw produced.
    first = initial[0].reshape(-1).numpy()
    bound = float(np.abs(first).max())
    q = 0.1
    uniform = (first / bound + 1) / 2
    assert_no_alignment(uniform < q, q, masks, "initial weights vs batches")


def test_dpsgd_trainer_generators_are_distinct_streams():
    """The trainer's sampler and noise generators and torch's global one (initialization, then
    augmentation) are different objects seeded from different streams of the run's root."""
    config = dpsgd_config()
    _, _, trainer = build_components(config, torch.device("cpu"))
    sampler, noise = trainer.generator, trainer.private.noise_generator
    assert sampler is not noise
    seeds = {sampler.initial_seed(), noise.initial_seed(), torch.initial_seed()}
    streams = RunStreams(config)
    assert seeds == {streams.torch_seed("batch_sampling"), streams.torch_seed("dp_noise"),
                     streams.torch_seed("augmentation")}
    assert len(seeds) == 3
    # The Poisson loader Opacus built samples from the batch_sampling generator, not the global one.
    assert trainer.loader.batch_sampler.generator is sampler


def test_the_fast_engine_draws_batches_and_noise_from_their_own_streams():
    """The fast engine samples with the trainer's batch_sampling generator and draws its noise, one
    flat block per step, from the dp_noise generator: those blocks (regenerated from the stream's
    seed) are not aligned with the batches it trained, nor with the initial weights."""
    config = dpsgd_config(engine="fast")
    _, _, trainer = build_components(config, torch.device("cpu"))
    sampler, noise_generator = trainer.generator, trainer.private.noise_generator
    assert sampler is not noise_generator
    streams = RunStreams(config)
    assert {sampler.initial_seed(), noise_generator.initial_seed()} == {
        streams.torch_seed("batch_sampling"), streams.torch_seed("dp_noise")}
    assert trainer.loader.generator is sampler  # its Poisson loader
    initial = [p.detach().clone() for p in trainer.base_model().parameters()]
    recording = RecordingLoader(trainer.loader, len(trainer.y))
    trainer.loader = recording
    for unit in range(trainer.units):
        trainer.train_unit(unit)
    total = sum(p.numel() for p in initial)
    replay = torch.Generator().manual_seed(streams.torch_seed("dp_noise"))
    noise = torch.cat([torch.normal(0.0, 1.0, size=(total,), generator=replay)
                       for _ in recording.masks]).numpy()
    assert len(recording.masks) == 20
    # The engine drew exactly these blocks from its generator, and nothing else.
    assert torch.equal(noise_generator.get_state(), replay.get_state())
    p_small = stats.norm.cdf(0.2) - stats.norm.cdf(-0.2)
    assert_no_alignment(np.abs(noise) < 0.2, p_small, recording.masks, "fast noise vs batches")
    first = initial[0].reshape(-1).numpy()
    uniform = (first / float(np.abs(first).max()) + 1) / 2
    assert_no_alignment(uniform < 0.1, 0.1, recording.masks, "initial weights vs fast batches")


def test_streams_are_distinct_and_stable():
    seeds = {purpose: stream_seed(7, purpose) for purpose in STREAMS}
    assert len(set(seeds.values())) == len(STREAMS)
    # Same seed and purpose give the same stream; another seed gives another.
    assert stream_seed(7, "dp_noise") == seeds["dp_noise"] != stream_seed(8, "dp_noise")
    a = torch.rand(5, generator=torch_generator(7, "dp_noise"))
    b = torch.rand(5, generator=torch_generator(7, "dp_noise"))
    c = torch.rand(5, generator=torch_generator(7, "batch_sampling"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(KeyError):
        stream_seed(7, "no such purpose")
    # A run's streams: its data streams from the seed alone, every other from the run's key.
    streams = RunStreams(dpsgd_config())
    assert streams.key != streams.seed
    for purpose in STREAMS:
        assert streams.root(purpose) == (0 if purpose in DATA_STREAMS else streams.key), purpose
    with pytest.raises(KeyError):
        streams.root("no such purpose")


def fedavg_config(**privacy):
    return validated_config({
        "seed": 0,
        "data": {"name": "synthetic", "minority_share": 0.2, "train_size": 2000},
        "model": {"name": "mlp", "hidden": [256]},
        "training": {"batch_size": 10},
        "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.1, **privacy},
        "federated": {"num_clients": 1000, "client_sample_rate": 0.1, "rounds": 12,
                      "eval_every": 12},
        "logging": {"progress": "never"},
    })


@pytest.mark.parametrize("secure_rng", [False, True])
def test_dpfedavg_noise_and_client_sampling_are_independent_streams(secure_rng, monkeypatch):
    import privacy.dpfedavg as dpfedavg
    from privacy.dpfedavg import clip_updates, dp_fedavg_aggregate

    config = fedavg_config(secure_rng=secure_rng)
    _, _, trainer = build_components(config, torch.device("cpu"))
    noise, masks = [], []
    sample_clients = trainer.sample_clients

    def recording_sample_clients():
        chosen = sample_clients()
        mask = np.zeros(len(trainer.clients), dtype=bool)
        mask[chosen] = True
        masks.append(mask)
        return chosen

    def recording_aggregate(updates, **kwargs):
        result = dp_fedavg_aggregate(updates, **kwargs)
        clipped, _ = clip_updates(updates, kwargs["max_grad_norm"])
        std = kwargs["noise_multiplier"] * kwargs["max_grad_norm"]
        noise.append(((result.update * kwargs["expected_clients"] - clipped.sum(0)) / std).numpy())
        return result

    trainer.sample_clients = recording_sample_clients
    monkeypatch.setattr(dpfedavg, "dp_fedavg_aggregate", recording_aggregate)
    for unit in range(trainer.units):
        trainer.train_unit(unit)
    stream = np.concatenate(noise)
    assert len(masks) == 12 and len(stream) == 12 * sum(
        p.numel() for p in trainer.model.parameters())
    # The noise is N(0, 1) in units of σS (a float32 rounding of it).
    assert abs(stream.std() - 1) < 0.02
    p_small = stats.norm.cdf(0.2) - stats.norm.cdf(-0.2)
    assert_no_alignment(np.abs(stream) < 0.2, p_small, masks, "DP-FedAvg noise vs clients")
