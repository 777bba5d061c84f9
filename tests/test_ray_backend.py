"""``--backend ray`` (grids.sweep.ray_executor): a grid run as Ray tasks on a local Ray instance
writes the same run directories as the in-process backend, and reports a failing point the same way.

Ray starts once for the module (a few seconds) with this machine's CPUs and no GPU; the executor
then uses that instance and leaves it running, as it does whenever Ray is already initialised.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

import running
from grids.sweep import GRID_MARKER, STATUS_FILE, load_grid
from tests.test_sweep import BASE

# Two shares x two seeds; share 0.9 of 3,000 is more minority examples than the synthetic pool holds,
# so its points fail inside run() (a UserInputError) while the share 0.2 points train.
RAW = {**BASE, "training": {**BASE["training"], "epochs": 1},
       "sweep": {"data.minority_share": [0.2, 0.9], "seed": [0, 1]}}
# Keys that differ between two runs of the same config by nature, not by backend.
VOLATILE_PREFIXES = ("time/", "device")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_cli(tmp_path, name, *backend):
    """Write the grid with output_dir ``tmp_path/name`` (relative to ``tmp_path``) and run it."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**RAW, "output_dir": name}, sort_keys=False))
    status = running.main(["--params", str(path), *backend])
    return status, load_grid(path)


def comparable(summary: dict) -> dict:
    return {key: value for key, value in summary.items() if not key.startswith(VOLATILE_PREFIXES)}


def assert_same_results(a: dict, b: dict) -> None:
    """Equal summaries, numbers to float rounding: a Ray worker computes with one thread, the
    in-process run with the machine's, and a matrix product summed in another order can move a
    score in its last bits (seen: average precision 0.6131998862 against 0.6132003789)."""
    assert a.keys() == b.keys()
    for key in a:
        numbers = all(isinstance(v, float) or (isinstance(v, list) and v and all(
            isinstance(x, float) for x in v)) for v in (a[key], b[key]))
        if numbers:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key
        else:
            assert a[key] == b[key], key


@pytest.mark.slow  # starts Ray and trains a grid twice (the default tier keeps the missing-Ray error)
def test_ray_backend_writes_what_the_in_process_backend_writes(local_ray, tmp_path, monkeypatch,
                                                               capsys):
    # A relative output_dir: the driver resolves it, so workers write where the driver would.
    monkeypatch.chdir(tmp_path)
    local_status, local = run_cli(tmp_path, "local")
    ray_status, remote = run_cli(tmp_path, "ray", "--backend", "ray", "--gpus-per-run", "0")
    assert local_status == ray_status == 1  # the share 0.9 points failed, the others finished
    err = capsys.readouterr().err

    local_dirs = sorted(p.name for p in (tmp_path / "local" / "tiny").iterdir())
    assert local_dirs == sorted(p.name for p in (tmp_path / "ray" / "tiny").iterdir())
    assert local_dirs == [GRID_MARKER, STATUS_FILE, "share=0.2,seed=0", "share=0.2,seed=1"]
    for name in local_dirs[2:]:
        here, there = tmp_path / "local" / "tiny" / name, tmp_path / "ray" / "tiny" / name
        assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in there.iterdir())
        summaries = [json.loads((d / "summary.json").read_text()) for d in (here, there)]
        assert_same_results(comparable(summaries[0]), comparable(summaries[1]))

    for grid in (local, remote):
        status = json.loads((grid.directory / STATUS_FILE).read_text())
        assert status["counts"] == {"done": 2, "failed": 2}
        for entry in status["points"]:
            if entry["values"]["data.minority_share"] == 0.9:
                assert entry["status"] == "failed" and "2700 minority examples" in entry["error"]
                assert f"error: grid point {entry['label']}: data.minority_share: 0.9" in err
    assert err.count("error: grid point") == 4  # two failing points per backend, one line each


def test_missing_ray_is_an_input_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**RAW, "output_dir": str(tmp_path / "runs")}, sort_keys=False))
    assert running.main(["--params", str(path), "--backend", "ray"]) == 2
    assert capsys.readouterr().err == (
        "error: --backend ray needs Ray: pip install -r requirements-ray.txt\n")
    assert not (tmp_path / "runs").exists()
