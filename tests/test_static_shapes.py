"""Static shapes under Poisson sampling (``training.pad_batches``): the fast engine's padded physical
batches give the unpadded update, padding never contributes, an empty batch is noise only and
still accounted, overflow splits without dropping anyone, and the compiled clipping equals eager.
Also the GPU path's CPU-testable options: bf16 autocast keeps every clipped norm within the bound,
channels_last equals contiguous.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from torch.nn import functional as F

from models import MODELS
from privacy import dpsgd, fast_dpsgd
from tests.test_fast_dpsgd import one_step, privacy_config, problem


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def padded_step(model, x, y, rows, capacity, *, noise=0.0, bound=0.5, seed=1, fill=0,
                compiled=False, autocast=None):
    """One padded private step with lr 1 (the batch is ``rows``, q = 1 as in one_step): the
    parameter change, the sampled rows' norms, every physical batch's norms and the engine."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = dpsgd.index_loader(len(x), len(x), shuffle=False)
    private = fast_dpsgd.make_private(model, optimizer, loader, privacy_config(noise, bound),
                                      epochs=1, noise_generator=torch.Generator().manual_seed(seed))
    private.use_static_shapes(capacity, compiled=compiled)
    before = flat_parameters(model)
    private.optimizer.zero_grad(set_to_none=True)
    sampled, physical = [], []
    for indices, mask in fast_dpsgd.physical_batches(rows, capacity, fill=fill):
        assert len(indices) == capacity
        private.set_padding(mask)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            logits = private.module(x[indices]).reshape(-1)
            losses = F.binary_cross_entropy_with_logits(logits.float(), y[indices],
                                                        reduction="none")
        private.padded_loss(losses).backward()
        norms = private.accumulate()
        physical.append(norms)
        sampled.append(norms[mask])
    private.optimizer.step()
    return flat_parameters(model) - before, torch.cat(sampled).detach(), physical, private


ROWS = torch.tensor([0, 2, 3, 5, 8, 13, 21, 22])  # a sampled batch: 8 of 24


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("capacity", [12, 3])  # one padded physical batch; an overflow into three
def test_a_padded_batch_gives_the_unpadded_update_with_the_same_noise(name, capacity):
    x, y, model = problem(name)
    model.train()
    plain, plain_norms = one_step(fast_dpsgd.make_private, copy.deepcopy(model), x, y, ROWS,
                                  noise=1.0)
    padded, norms, physical, private = padded_step(copy.deepcopy(model), x, y, ROWS, capacity,
                                                   noise=1.0)
    assert len(physical) == -(-len(ROWS) // capacity)
    torch.testing.assert_close(norms, plain_norms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)
    assert (plain_norms > 0.5).any()  # clipping was active
    assert private.steps == 1  # one accountant step for the logical batch, however it was split


@pytest.mark.parametrize("name", list(MODELS))
def test_padding_rows_never_contribute_whatever_their_values(name):
    x, y, model = problem(name)
    model.train()
    # The padding rows hold an input 10⁴ times the data's scale: were any of it to leak into the
    # sum (a norm, a factor, a gradient), the update would be far off.
    huge = 1e4 * torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the label the model gets wrong: a gradient as large as it can be
        wrong = (model(huge).reshape(-1) < 0).float()
    x_big, y_big = torch.cat([x, huge]), torch.cat([y, wrong])
    plain, _ = one_step(fast_dpsgd.make_private, copy.deepcopy(model), x, y, ROWS)
    padded, _, physical, _ = padded_step(copy.deepcopy(model), x_big, y_big, ROWS, 16,
                                         fill=len(x))
    # one_step divides by N = 24, padded_step by len(x_big) = 25 (q = 1 in both)
    torch.testing.assert_close(padded * len(x_big) / len(x), plain, rtol=1e-4, atol=1e-5)
    assert torch.all(physical[0][len(ROWS):] == 0)
    # And the huge row does contribute when it is sampled (the test's padding would show).
    leaked, _, _, _ = padded_step(copy.deepcopy(model), x_big, y_big, torch.cat(
        [ROWS, torch.tensor([len(x)])]), 16, fill=len(x))
    assert not torch.allclose(leaked * len(x_big) / len(x), plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_an_empty_padded_batch_is_noise_only_and_the_accountant_steps(name):
    x, y, model = problem(name)
    empty = torch.zeros(0, dtype=torch.int64)
    noise_only, _ = one_step(fast_dpsgd.make_private, copy.deepcopy(model), x, y, empty, noise=1.0)
    padded, norms, physical, private = padded_step(copy.deepcopy(model), x, y, empty, 8, noise=1.0)
    assert len(norms) == 0 and len(physical) == 1 and torch.all(physical[0] == 0)
    torch.testing.assert_close(padded, noise_only, rtol=0, atol=0)
    assert torch.count_nonzero(padded) == len(padded)
    assert private.steps == 1 and private.accountant.history == [(1.0, 1.0, 1)]
    silent, _, _, _ = padded_step(copy.deepcopy(model), x, y, empty, 8, noise=0.0)
    assert torch.count_nonzero(silent) == 0


@pytest.mark.parametrize("count, capacity, pieces", [(0, 4, 1), (1, 4, 1), (4, 4, 1), (5, 4, 2),
                                                      (9, 4, 3), (17, 1, 17)])
def test_overflow_splits_into_physical_batches_and_drops_no_one(count, capacity, pieces):
    indices = torch.randperm(50, generator=torch.Generator().manual_seed(count))[:count]
    batches = fast_dpsgd.physical_batches(indices, capacity, fill=49)
    assert len(batches) == pieces
    assert all(len(rows) == capacity and len(mask) == capacity for rows, mask in batches)
    sampled = torch.cat([rows[mask] for rows, mask in batches])
    assert torch.equal(sampled, indices)  # each sampled index once, in order
    padding = torch.cat([rows[~mask] for rows, mask in batches])
    assert len(padding) == pieces * capacity - count and torch.all(padding == 49)


def test_the_default_capacity_is_the_expected_batch_plus_four_deviations():
    # qN = 256 of N = 25,600 (q = 0.01): sd = √(256·0.99) = 15.9; 256 + 63.7 → 320 (a multiple of 8)
    assert fast_dpsgd.physical_capacity(256, 0.01) == 320
    assert fast_dpsgd.physical_capacity(32, 32 / 24000) == 56  # the paper's CelebA batch
    assert fast_dpsgd.physical_capacity(0.5, 0.5) == 8
    # A Poisson batch of 256 expected exceeds 320 with probability under 1e-4
    from scipy import stats
    assert stats.binom(25600, 0.01).sf(320) < 1e-4


def test_padding_refuses_a_clipping_rule_that_reads_the_whole_batch():
    x, y, model = problem("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = privacy_config().__class__(mode="dpsgd", noise_multiplier=1.0, max_grad_norm=0.5,
                                        clipping="dpsgd_f")
    private = fast_dpsgd.make_private(model, optimizer, dpsgd.index_loader(24, 8), config,
                                      epochs=1, noise_generator=torch.Generator(),
                                      clipping_generator=torch.Generator())
    with pytest.raises(Exception) as error:
        private.use_static_shapes(8)
    assert str(error.value) == fast_dpsgd.PADDING_NEEDS_FLAT.format(rule="dpsgd_f")


@pytest.mark.slow  # torch.compile on the CPU: tens of seconds per model
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_compiled_padded_clipping_equals_eager(name):
    x, y, model = problem(name)
    model.train()
    eager, eager_norms, _, _ = padded_step(copy.deepcopy(model), x, y, ROWS, 12, noise=1.0)
    compiled, norms, _, _ = padded_step(copy.deepcopy(model), x, y, ROWS, 12, noise=1.0,
                                        compiled=True)
    torch.testing.assert_close(norms, eager_norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
