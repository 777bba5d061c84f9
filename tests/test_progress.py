"""utils.progress: the bar never changes what it wraps (a run's batches stay its sampler's)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from utils.progress import progress


def shuffled_batches(wrap=None, epochs: int = 3) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.arange(20)), batch_size=6, shuffle=True,
                        generator=generator)
    return [batch[0].tolist() for _ in range(epochs)
            for batch in (wrap(loader) if wrap else loader)]


@pytest.mark.parametrize("mode", ["never", "always"])
def test_a_wrapped_loader_draws_the_batches_of_the_plain_loader(mode, capsys):
    # tqdm.auto's bar made a second DataLoader iterator, one more draw from the loader's
    # generator per epoch: the batch order of a run depended on the progress bar.
    wrapped = shuffled_batches(lambda loader: progress(loader, desc="epoch", mode=mode))
    assert wrapped == shuffled_batches()
    assert ("epoch" in capsys.readouterr().err) == (mode == "always")
