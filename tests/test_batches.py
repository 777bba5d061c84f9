"""``training.batches`` and ``training.steps_per_epoch``: how each step's examples are drawn, and
how many steps an epoch is (RUNNER's released code: 100 freshly drawn batches an "epoch").

- each composition draws what it says, counted per group / cell over many batches, from the run's
  own ``batch_sampling`` stream (the same seed draws the same batches, another seed others);
- ``steps_per_epoch`` gives epochs x steps optimizer steps, and under DP-SGD as many accountant
  steps at the one-pass sample rate, ε equal to Google's dp_accounting for that many steps, and a
  target ε met for that many (both engines, Opacus' and the fast one);
- the refusals (any composition but shuffled under privacy, steps_per_epoch under DP-FedAvg, the
  retired ``training.balanced_batches``, a cell too small) are exit-2 errors naming the key.
"""

from __future__ import annotations

import json

import dp_accounting
import numpy as np
import pytest
import torch

from privacy.accounting import noise_for_epsilon
from tests.test_repair import run_cli
from training.batches import BATCHES, CELL_TOO_SMALL, build_batches
from training.experiment import build_components
from training.validation import BATCHES_NOT_PRIVATE, STEPS_PER_EPOCH_NOT_FEDERATED, validated_config
from utils.config import BALANCED_BATCHES_REPLACED
from utils.errors import ConfigError
from utils.seeding import torch_generator

N = 1000


def training_set(seed: int = 0):
    """Group flags (20 % minority) and labels (30 % positive, independent of the group)."""
    rng = np.random.default_rng(seed)
    return (torch.as_tensor(rng.random(N) < 0.2), torch.as_tensor(rng.random(N) < 0.3))


def draw(name: str, *, batch_size=80, steps=None, seed=0):
    minority, labels = training_set()
    loader = build_batches(name, minority=minority, labels=labels, batch_size=batch_size,
                           steps=steps, generator=torch_generator(seed, "batch_sampling"))
    return minority, labels, loader, [indices for (indices,) in loader]


@pytest.mark.parametrize("name, cells", [
    ("group_balanced", lambda m, y: [m, ~m]),
    ("cell_balanced", lambda m, y: [m & y, m & ~y, ~m & y, ~m & ~y]),
    ("uniform", lambda m, y: [torch.ones_like(m)]),
])
def test_each_draw_composition_takes_its_share_from_each_cell_every_step(name, cells):
    minority, labels, loader, batches = draw(name, steps=400)
    masks = cells(minority, labels)
    assert len(batches) == len(loader) == 400
    seen = torch.zeros(N)
    for indices in batches:
        assert len(set(indices.tolist())) == len(indices) == 80  # without replacement in a step
        for mask in masks:
            assert int(mask[indices].sum()) == 80 // len(masks)
        seen[indices] += 1
    # Uniform within each cell: over 400 steps every member of a cell is drawn about equally often
    # (each draw of the cell's share is a uniform subset), tested by a chi-square over the cell.
    from scipy import stats
    for mask in masks:
        counts = seen[mask].numpy()
        assert stats.chisquare(counts).pvalue > 1e-3
    if name == "uniform":  # the natural mix: groups and labels at their shares in expectation
        share = float(minority[torch.cat(batches)].float().mean())
        assert abs(share - float(minority.float().mean())) < 0.01


def test_shuffled_batches_are_passes_and_steps_cut_fresh_passes():
    minority, _, loader, batches = draw("shuffled")
    assert len(batches) == len(loader) == -(-N // 80)  # one pass: ceil(N / batch), the last short
    assert sorted(torch.cat(batches).tolist()) == list(range(N))
    _, _, loader, batches = draw("shuffled", steps=30)  # 2 passes of 13 batches, then 4 of a third
    assert len(batches) == len(loader) == 30
    for first in (0, 13):
        assert sorted(torch.cat(batches[first:first + 13]).tolist()) == list(range(N))
    assert len(set(torch.cat(batches[26:]).tolist())) == 4 * 80


@pytest.mark.parametrize("name", list(BATCHES))
def test_batches_come_from_the_runs_own_stream(name):
    # The same seed's stream draws the same batches; another seed's, others; and nothing else
    # (torch's global generator) is touched.
    state = torch.random.get_rng_state()
    first = draw(name, steps=5)[3]
    assert torch.equal(state, torch.random.get_rng_state())
    again, other = draw(name, steps=5)[3], draw(name, steps=5, seed=1)[3]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_a_cell_too_small_for_its_share_names_the_sizes():
    minority, labels = training_set()
    with pytest.raises(ConfigError) as error:
        build_batches("cell_balanced", minority=minority, labels=labels, batch_size=800,
                      steps=None, generator=torch.Generator())
    smallest = int((minority & labels).sum())
    assert str(error.value) == CELL_TOO_SMALL.format(batches="cell_balanced", share=200, cells=4,
                                                     smallest=smallest, largest=4 * smallest)


# --------------------------------------------------------------------------------------------------
# steps_per_epoch through the trainers


def config(**sections):
    raw = {"data": {"name": "synthetic", "minority_share": 0.2, "train_size": 1000},
           "model": {"name": "mlp", "hidden": [16]},
           "training": {"epochs": 3, "batch_size": 100, "optimizer": "sgd", "lr": 0.1,
                        "steps_per_epoch": 7},
           "logging": {"progress": "never"}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validated_config(raw)


def count_steps(trainer) -> list[int]:
    """Train every unit, counting the optimizer's steps in each."""
    steps = []
    for unit in range(trainer.units):
        before = count_steps.calls
        trainer.train_unit(unit)
        steps.append(count_steps.calls - before)
    return steps


@pytest.mark.parametrize("batches", list(BATCHES))
def test_every_non_private_epoch_is_steps_per_epoch_steps(batches, monkeypatch):
    trainer = build_components(config(training={"batches": batches}), torch.device("cpu"))[2]
    count_steps.calls = 0
    original = trainer.optimizer.step

    def counted(*args, **kwargs):
        count_steps.calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", counted)
    assert count_steps(trainer) == [7, 7, 7]
    assert trainer.train_samples > 0


@pytest.mark.parametrize("engine", ["fast", "opacus"])
@pytest.mark.parametrize("secure_rng", [False, True])
def test_dpsgd_counts_steps_not_passes_and_epsilon_is_that_of_the_steps(engine, secure_rng):
    trainer = build_components(config(privacy={"mode": "dpsgd", "noise_multiplier": 1.1,
                                               "engine": engine, "secure_rng": secure_rng}),
                               torch.device("cpu"))[2]
    sizes = []
    for unit in range(trainer.units):
        sizes += [len(indices) for (indices,) in trainer.loader] if unit == 0 else []
        trainer.train_unit(unit)
    metrics = trainer.privacy_metrics()
    # q is one pass's (1 / ceil(N / batch)), whatever the epoch's length; the accountant counts
    # 3 x 7 steps (a pass would be 10), and ε is theirs by an independent accountant.
    assert metrics["privacy/sample_rate"] == pytest.approx(0.1)
    assert metrics["privacy/steps"] == 21
    google = dp_accounting.rdp.RdpAccountant()
    google.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1)), 21)
    assert metrics["privacy/epsilon"] == pytest.approx(google.get_epsilon(1e-5), rel=1e-3)
    assert len(sizes) == 7 and 40 < np.mean(sizes) < 160  # Poisson batches of expected size 100


@pytest.mark.parametrize("engine", ["fast", "opacus"])
def test_a_target_epsilon_is_met_for_epochs_times_steps(engine):
    trainer = build_components(config(privacy={"mode": "dpsgd", "target_epsilon": 2.0,
                                               "noise_multiplier": None, "engine": engine}),
                               torch.device("cpu"))[2]
    for unit in range(trainer.units):
        trainer.train_unit(unit)
    metrics = trainer.privacy_metrics()
    assert metrics["privacy/steps"] == 21
    assert 1.9 <= metrics["privacy/epsilon"] <= 2.0
    sigma = noise_for_epsilon(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=21,
                              accountant="rdp")
    assert metrics["privacy/noise_multiplier"] == pytest.approx(sigma, rel=1e-3)


def test_a_run_with_steps_per_epoch_writes_them_into_its_record(tmp_path):
    assert run_cli(tmp_path, "training.steps_per_epoch=4", "training.batches=group_balanced") == 0
    summary = json.loads((tmp_path / "out" / "repair" / "summary.json").read_text())
    lines = (tmp_path / "out" / "repair" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["units"] == 2
    config_text = (tmp_path / "out" / "repair" / "config.yaml").read_text()
    assert "steps_per_epoch: 4" in config_text and "batches: group_balanced" in config_text


# --------------------------------------------------------------------------------------------------
# Refusals through the command line


@pytest.mark.parametrize("batches", [name for name in BATCHES if name != "shuffled"])
@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_draw_compositions_refuse_privacy(tmp_path, capsys, batches, mode):
    code = run_cli(tmp_path, f"training.batches={batches}", f"privacy.mode={mode}",
                   "privacy.noise_multiplier=1.0")
    assert code == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {BATCHES_NOT_PRIVATE.format(batches=batches, mode=mode)}"
    assert not (tmp_path / "out").exists()


def test_dpfedavg_refuses_steps_per_epoch(tmp_path, capsys):
    code = run_cli(tmp_path, "training.steps_per_epoch=10", "privacy.mode=dpfedavg",
                   "privacy.noise_multiplier=1.0")
    assert code == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {STEPS_PER_EPOCH_NOT_FEDERATED.format(steps=10)}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override", ["training.balanced_batches=true",
                                      "training.balanced_batches=false"])
def test_the_retired_balanced_batches_key_says_what_replaced_it(tmp_path, capsys, override):
    assert run_cli(tmp_path, override) == 2
    assert capsys.readouterr().err.strip() == f"error: {BALANCED_BATCHES_REPLACED}"


def test_a_cell_too_small_is_an_exit_2_error_before_any_file(tmp_path, capsys):
    code = run_cli(tmp_path, "training.batches=cell_balanced", "training.batch_size=1200",
                   "data.train_size=1200")
    err = capsys.readouterr().err
    assert code == 2 and "training.batches: 'cell_balanced'" in err and "smallest cell" in err
    assert not (tmp_path / "out" / "repair").exists()


@pytest.mark.parametrize("steps", [0, -3, 1.5])
def test_steps_per_epoch_must_be_a_positive_integer(tmp_path, capsys, steps):
    assert run_cli(tmp_path, f"training.steps_per_epoch={steps}") == 2
    assert "training.steps_per_epoch" in capsys.readouterr().err


@pytest.mark.parametrize("batches", list(BATCHES))
def test_a_run_interrupted_mid_way_resumes_the_same_batches(tmp_path, monkeypatch, batches):
    """The draws of every composition, with fixed-length epochs, continue after a resume exactly
    where the uninterrupted run drew them (the batch-sampling generator is in the checkpoint)."""
    from tests.test_repair_resume import BASE
    from tests.test_resume import reference_and_interrupted, without_time

    raw = {**BASE, "name": f"resume_{batches}",
           "training": {**BASE["training"], "batches": batches, "steps_per_epoch": 6,
                        "select": "best_val_eodds_gap"},
           "fairness": {"method": "none", "mode": "eo"}}
    reference, config, run_dir = reference_and_interrupted(raw, tmp_path, monkeypatch, after=3)
    from training import experiment as experiment_module

    assert without_time(experiment_module.run(config)) == without_time(reference)
