"""A grid's combined release (grids/release.py): per training pool, the ε of releasing every model
trained on it, against Google's dp_accounting composing the same runs; what voids it; and the
report's section and CSV from a real grid."""

from __future__ import annotations

import csv
import json

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

import running
from grids.release import (
    NO_GUARANTEE,
    NO_HISTORY,
    NOT_PRIVATE,
    REPORT_RELEASE_CSV,
    SHARED_STREAMS,
    describe_public_data,
    release_pools,
)
from privacy.individual import ORDERS

DELTA = 1e-5


def google_epsilon(histories: list[list[tuple[float, float, int]]], delta: float = DELTA) -> float:
    """dp_accounting's RDP composition of every entry of every history (q = 1: a Gaussian)."""
    accountant = RdpAccountant(orders=list(ORDERS))
    for history in histories:
        for sigma, q, steps in history:
            event = dp_accounting.GaussianDpEvent(sigma)
            accountant.compose(event if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, event),
                               steps)
    return accountant.get_epsilon(delta)


def run(history, *, mode="dpsgd", private=True, seed=0, identity="a", paired=False, name="adult",
        root=None, epsilon=1.0, delta=DELTA):
    settings = {"data.name": name, "data.root": root, "privacy.mode": mode}
    summary = {"seed": seed, "privacy/epsilon": epsilon if mode != "none" else None,
               "privacy/delta": delta if mode != "none" else None,
               "privacy/private": private if mode != "none" else False,
               "privacy/history": history if mode != "none" else None,
               "privacy/paired_streams": paired, "streams/identity": identity,
               "privacy/public_data": {"test_split": {"read_by": ["test/ metrics"]},
                                       "validation_split": None,
                                       "preprocessing": {"source": "public"}}}
    return settings, summary


@pytest.mark.parametrize("histories, tolerance", [
    # Three runs of the paper grid's σ 1.35 at different shares, one with a count release.
    ([[(1.35, 1 / 79, 395)], [(1.35, 1 / 79, 395)], [(1.35, 1 / 79, 395), (10.0, 1.0, 1)]], 1e-5),
    # Its three noise levels: at ε near 8, Opacus' and dp_accounting's RDP of the subsampled
    # Gaussian at fractional orders differ by up to 0.1 % (one run at σ 0.6 alone: 7.645 and 7.652).
    ([[(1.35, 1 / 79, 395)], [(0.83, 1 / 79, 395)], [(0.6, 1 / 79, 395), (10.0, 1.0, 1)]], 2e-3),
])
def test_the_combined_epsilon_is_dp_accountings_composition_of_the_runs(histories, tolerance):
    pools = release_pools([run(h, seed=i, identity=str(i)) for i, h in enumerate(histories)])
    (pool,) = pools
    assert len(pool.covered) == 3 and not pool.uncovered
    assert pool.combined_epsilon() == pytest.approx(google_epsilon(histories), rel=tolerance)
    # More than any run alone, less than the sum of their ε (RDP composes sub-additively).
    from privacy.accounting import epsilon_of_history

    alone = [epsilon_of_history(h, delta=DELTA, accountant="rdp") for h in histories]
    assert max(alone) < pool.combined_epsilon() < sum(alone)


def test_pools_are_the_data_sets_files_and_what_voids_a_release():
    history = [(1.0, 0.01, 100)]
    runs = [run(history, identity="1"), run(history, identity="2", seed=1),
            run(None, mode="none"),
            run(history, private=False, identity="3"),  # fitted preprocessing, say
            run(history, paired=True, identity="p"), run(history, paired=True, identity="p"),
            run(history, paired=True, identity="q"),  # paired, but sharing with no other run
            run(None, identity="old"),  # a run from before privacy/history
            run(history, name="compas"), run(history, name="adult", root="/data/adult")]
    pools = {(pool.name, pool.root): pool for pool in release_pools(runs)}
    assert set(pools) == {("adult", None), ("compas", None), ("adult", "/data/adult")}
    shipped = pools[("adult", None)]
    assert len(shipped.covered) == 3
    assert sorted(reason for _, reason in shipped.uncovered) == sorted(
        [NOT_PRIVATE, NO_GUARANTEE, NO_HISTORY, SHARED_STREAMS, SHARED_STREAMS])
    assert shipped.combined_epsilon() == pytest.approx(google_epsilon([history] * 3), rel=1e-3)
    # A grid without a private run has no release to describe.
    assert release_pools([run(None, mode="none")]) == []


def test_the_public_data_line_names_a_declared_validation_split():
    facts = {"test_split": {"read_by": ["test/ metrics"]},
             "validation_split": {"declared": True, "read_by": ["val/ metrics", "training.select: best_val_gap"]},
             "preprocessing": {"source": "public"}, "pretrained_weights": None}
    line = describe_public_data(facts)
    assert "validation split (declared public; read by val/ metrics, training.select: best_val_gap)" in line
    assert "preprocessing: public" in line
    assert describe_public_data(None).startswith("not recorded")


GRID = """
name: tiny_grid
output_dir: OUT
sweep:
  seed: [0, 1]
zip:
  privacy.mode: [none, dpsgd, dpsgd]
  privacy.noise_multiplier: [null, 1.0, 2.0]
data: {name: synthetic, minority_share: 0.3, train_size: 500}
model: {name: mlp, hidden: [8]}
training: {epochs: 2, batch_size: 50}
evaluation: {bootstrap_resamples: 10}
logging: {tensorboard: false, wandb: {mode: disabled}, progress: never}
"""


@pytest.mark.slow
def test_a_grids_report_gives_the_combined_release(tmp_path):
    params = tmp_path / "grid.yaml"
    params.write_text(GRID.replace("OUT", str(tmp_path / "runs")))
    assert running.main(["--params", str(params)]) == 0
    grid = tmp_path / "runs" / "tiny_grid"
    assert running.main(["--report", str(grid)]) == 0
    with (grid / REPORT_RELEASE_CSV).open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["data.name"] == "synthetic" and row["runs"] == "6" and row["runs_with_guarantee"] == "4"
    assert row["runs_without_guarantee"] == f"2 {NOT_PRIVATE}"
    histories = []
    for directory in grid.iterdir():
        summary_path = directory / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if summary["mode"] == "dpsgd":
                histories.append([tuple(entry) for entry in summary["privacy/history"]])
                assert summary["privacy/history"] == [[summary["privacy/noise_multiplier"],
                                                       summary["privacy/sample_rate"], 20]]
    assert len(histories) == 4
    assert float(row["combined_epsilon"]) == pytest.approx(google_epsilon(histories), rel=1e-3)
    report = (grid / "report.md").read_text()
    assert "## What ε covers" in report and "no ε: 2 non-private" in report
