"""Smoke run of every shipped experiment: each ``utils/params_*.yaml`` and each single-run file in
``configs/`` runs end to end through :func:`training.experiment.run` with the tiny overlay
``configs/smoke.yaml`` (one epoch, few resamples, no wandb), plus a few per-data-set overrides that
shrink it (CelebA runs on a generated set of real JPEGs in CelebA's formats).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.celeba_fake import make_fake_celeba
from training.experiment import run
from training.validation import validated_config
from utils.loader import apply_overrides, read_yaml
from utils.sink import CONFIG_FILE, PREDICTIONS_FILE, SUMMARY_FILE

ROOT = Path(__file__).resolve().parent.parent
PARAMS = sorted(ROOT.glob("utils/params_*.yaml"))
SINGLE_RUN_CONFIGS = [p for p in sorted(ROOT.glob("configs/*.yaml"))
                      if p.name != "smoke.yaml" and "sweep" not in read_yaml(p) and "zip" not in read_yaml(p)]

# What shrinks each data set to seconds, beyond the generic overlay.
SHRINK = {
    "adult": [],
    "celeba": ["data.train_size=120", "data.celeba.test_size=40", "data.celeba.image_size=64", "model.name=cnn",
               "model.width=8", "training.batch_size=16"],
}
SHRINK_FEDERATED = ["federated.rounds=3", "federated.eval_every=2", "federated.num_clients=100"]


def deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def fake_celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    make_fake_celeba(root, n_images=400, seed=0)
    return root


def test_every_shipped_file_is_covered():
    assert {p.name for p in PARAMS} >= {"params_adult.yaml", "params_celeba.yaml",
                                         "params_adult_fedavg.yaml"}


# The ready experiments once more on a GPU (skipped without one): CelebA's images are then decoded
# by nvJPEG into a fresh cache, and DP-SGD and the batched DP-FedAvg clients run on CUDA.
ON_CUDA = [pytest.param(path, "cuda", marks=pytest.mark.gpu, id=f"{path.name}-cuda") for path in PARAMS]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "device"), [
    *[pytest.param(path, "cpu", id=path.name) for path in PARAMS + SINGLE_RUN_CONFIGS], *ON_CUDA])
def test_smoke(path, device, tmp_path, fake_celeba):
    raw = deep_merge(read_yaml(path), read_yaml(ROOT / "configs/smoke.yaml"))
    name = raw.get("data", {}).get("name", "adult")
    overrides = [*SHRINK.get(name, []), f"output_dir={tmp_path}", f"device={device}"]
    if name == "celeba":
        overrides += [f"data.root={fake_celeba}", f"data.celeba.cache_dir={tmp_path / 'cache'}"]
    if raw.get("privacy", {}).get("mode") == "dpfedavg":
        overrides += SHRINK_FEDERATED
    config = validated_config(apply_overrides(raw, overrides))
    summary = run(config)
    run_dir = tmp_path / config.name
    for file in (CONFIG_FILE, SUMMARY_FILE, PREDICTIONS_FILE, "metrics.jsonl"):
        assert (run_dir / file).is_file()
    assert summary["device"].startswith(device)
    assert 0.0 <= summary["test/accuracy"] <= 1.0
    if config.privacy.private:
        assert summary["privacy/epsilon"] > 0
    # The resolved config reproduces the run's config.
    assert validated_config(yaml.safe_load((run_dir / CONFIG_FILE).read_text())) == config
