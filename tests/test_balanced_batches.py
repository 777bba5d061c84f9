"""``training.balanced_batches``: RUNNER's released code trains on batches with as many examples
from each group (dp) or each group × label cell (eo).

- every batch holds batch_size // cells examples of each cell, none twice, and an epoch has
  ceil(N / batch_size) of them;
- a run trains with them under both targets; a cell too small for its share, and any private mode,
  are exit-2 errors that name the key and leave nothing behind.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_repair import run_cli
from training.centralized import BalancedBatches
from training.experiment import build_components
from utils.config import BALANCED_BATCHES_NOT_PRIVATE, load_config


def test_every_batch_takes_the_same_number_from_each_cell():
    cells = [torch.arange(0, 30), torch.arange(30, 300), torch.arange(300, 1000)]
    batches = BalancedBatches(cells, batch_size=90, generator=torch.Generator().manual_seed(0))
    drawn = list(batches)
    assert len(drawn) == len(batches) == -(-1000 // 90)
    for (indices,) in drawn:
        assert len(set(indices.tolist())) == len(indices) == 90
        for cell in cells:
            assert int(torch.isin(indices, cell).sum()) == 30
    # The small cell is seen far more than once per epoch: 12 steps x 30 of its 30 examples.
    first = torch.cat([indices for (indices,) in drawn])
    assert int(torch.isin(first, cells[0]).sum()) == 30 * len(batches)


@pytest.mark.parametrize("target", ["dp", "eo"])
def test_runs_train_on_balanced_batches(tmp_path, target):
    assert run_cli(tmp_path, "training.balanced_batches=true", f"fairness.mode={target}",
                   "training.batch_size=40") == 0
    summary = json.loads((tmp_path / "out" / "repair" / "summary.json").read_text())
    assert 0.4 < summary["test/accuracy"] <= 1
    # The trainer's batches: the cells of the target, ceil(N / 40) steps of 40 per epoch.
    config = load_config(tmp_path / "params.yaml", [
        "training.balanced_batches=true", f"fairness.mode={target}", "training.batch_size=40"])
    data, _, trainer = build_components(config, torch.device("cpu"))
    assert isinstance(trainer.loader, BalancedBatches) and len(trainer.loader.cells) == (
        2 if target == "dp" else 4)
    trainer.train_unit(0)
    assert trainer.train_samples == 40 * -(-len(data.y_train) // 40)


def test_a_cell_too_small_for_its_share_is_an_exit_2_error(tmp_path, capsys):
    code = run_cli(tmp_path, "training.balanced_batches=true", "fairness.mode=eo",
                   "training.batch_size=1200", "data.train_size=1200")
    err = capsys.readouterr().err
    assert code == 2 and "training.balanced_batches" in err and "smallest cell holds" in err
    assert not (tmp_path / "out" / "repair").exists()


@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_balanced_batches_refuse_privacy(tmp_path, capsys, mode):
    code = run_cli(tmp_path, "training.balanced_batches=true", f"privacy.mode={mode}",
                   "privacy.noise_multiplier=1.0")
    assert code == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {BALANCED_BATCHES_NOT_PRIVATE.format(mode=mode)}"
    assert not (tmp_path / "out").exists()
