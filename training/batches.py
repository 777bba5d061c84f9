"""How each training step's examples are drawn (``training.batches``), by name.

A builder takes the training set's size, group flags and labels, the batch size, the steps an
epoch takes (``training.steps_per_epoch``; None: one pass, ceil(N / batch_size) steps) and the run's
``batch_sampling`` generator, and returns a loader: ``len()`` steps an epoch, each yielding
``(indices,)``. Every draw comes from that one generator, so a checkpoint that saves its state
resumes the same batches.

| name             | each step                                                    | RUNNER's released code        |
| ---------------- | ------------------------------------------------------------ | ----------------------------- |
| ``shuffled``     | the next batch of a shuffled pass (a new pass when one ends) | not used                      |
| ``group_balanced`` | batch_size / 2 examples from each group                    | every method, dp target       |
| ``cell_balanced``  | batch_size / 4 from each group x label cell                | GapReg and RUNNER, eo target  |
| ``uniform``      | batch_size examples from the whole training set              | Vanilla, eo target            |

The last three draw uniformly without replacement within a step and independently across steps
(the released code calls ``np.random.choice(..., replace=False)`` once per step and cell), so a
small cell is seen many times an epoch. Under DP-SGD only ``shuffled`` trains: the engine then
replaces the loader's batches by Poisson samples at q = 1 / (batches of one pass), the sampling the
accountant assumes; the config refuses the others under privacy (:data:`utils.config.BATCHES_NOT_PRIVATE`).
"""

from __future__ import annotations

import torch

from privacy.dpsgd import index_loader
from utils.errors import ConfigError
from utils.registry import Registry

# Its names are the valid values of training.batches (the config asks this registry; utils.config).
BATCHES: Registry = Registry("batch composition", "training.batches")

# A cell too small for its share of a batch (tests import it).
CELL_TOO_SMALL = (
    "training.batches: {batches!r} takes {share} examples a step from each of its {cells} cells, "
    "but the smallest cell of the training set holds {smallest}. Set training.batch_size between "
    "{cells} and {largest}, or another training.batches.")


def steps_per_epoch(num_examples: int, batch_size: int, steps: int | None) -> int:
    """``steps``, or one pass's ceil(N / batch_size) when it is None."""
    return -(-num_examples // batch_size) if steps is None else steps


class CellDraws:
    """Every step, ``batch_size / len(cells)`` examples from each cell, uniformly without
    replacement within the step and independently across steps; ``steps`` steps an epoch."""

    def __init__(self, cells: list[torch.Tensor], batch_size: int, steps: int,
                 generator: torch.Generator):
        self.cells, self.generator, self.steps = cells, generator, steps
        self.share = batch_size // len(cells)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield (torch.cat([cell[torch.randperm(len(cell), generator=self.generator)[:self.share]]
                              for cell in self.cells]),)


def _cell_draws(name: str, masks: list[torch.Tensor], batch_size: int, steps: int | None,
                generator: torch.Generator) -> CellDraws:
    cells = [mask.nonzero().flatten() for mask in masks]
    share = batch_size // len(cells)
    smallest = min(len(cell) for cell in cells)
    if share < 1 or smallest < share:
        raise ConfigError(CELL_TOO_SMALL.format(batches=name, share=share, cells=len(cells),
                                                smallest=smallest, largest=smallest * len(cells)))
    return CellDraws(cells, batch_size, steps_per_epoch(len(masks[0]), batch_size, steps), generator)


@BATCHES.register("shuffled")
def shuffled(*, minority: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int | None,
             generator: torch.Generator):
    """Shuffled passes (:class:`privacy.dpsgd.IndexLoader`); Poisson batches under DP-SGD."""
    return index_loader(len(minority), batch_size, generator, steps=steps)


@BATCHES.register("group_balanced")
def group_balanced(*, minority: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   steps: int | None, generator: torch.Generator) -> CellDraws:
    """As many examples from the minority as from the majority every step."""
    return _cell_draws("group_balanced", [minority, ~minority], batch_size, steps, generator)


@BATCHES.register("cell_balanced")
def cell_balanced(*, minority: torch.Tensor, labels: torch.Tensor, batch_size: int,
                  steps: int | None, generator: torch.Generator) -> CellDraws:
    """As many examples from each group x label cell every step."""
    masks = [minority & labels, minority & ~labels, ~minority & labels, ~minority & ~labels]
    return _cell_draws("cell_balanced", masks, batch_size, steps, generator)


@BATCHES.register("uniform")
def uniform(*, minority: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int | None,
            generator: torch.Generator) -> CellDraws:
    """``batch_size`` examples of the whole training set every step, the natural mix."""
    return _cell_draws("uniform", [torch.ones_like(minority)], batch_size, steps, generator)


def build_batches(name: str, *, minority: torch.Tensor, labels: torch.Tensor, batch_size: int,
                  steps: int | None, generator: torch.Generator):
    """The loader of composition ``name`` over a training set of group flags ``minority`` and 0/1
    ``labels`` (bool tensors on the CPU)."""
    return BATCHES.get(name)(minority=minority.bool(), labels=labels.bool(), batch_size=batch_size,
                             steps=steps, generator=generator)
