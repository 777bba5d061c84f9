"""Where the inputs live (dataset.base.place_inputs / gather_rows): on the training device when
they fit, else in host memory with each batch copied over; training is the same either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.base import gather_rows, place_inputs
from tests.test_configs import ROOT, deep_merge
from training.experiment import run
from training.validation import validated_config
from utils.loader import apply_overrides, read_yaml


def test_on_the_cpu_inputs_are_not_copied():
    # A memory-mapped image cache must stay mapped, not be read into memory.
    array = np.arange(24, dtype=np.uint8).reshape(6, 4)
    tensor = place_inputs(array, "cpu", what="inputs")
    assert tensor.data_ptr() == array.ctypes.data
    indices = torch.tensor([4, 0, 4])
    assert torch.equal(gather_rows(tensor, indices), torch.as_tensor(array[[4, 0, 4]]))


@pytest.mark.gpu
def test_inputs_too_large_for_the_gpu_stay_on_the_host_and_batches_are_copied():
    array = np.random.default_rng(0).integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    with pytest.warns(UserWarning, match="stay in host memory"):
        host = place_inputs(array, "cuda", what="training inputs", share=0.0)
    assert host.device.type == "cpu"
    resident = place_inputs(array, "cuda", what="training inputs")
    assert resident.device.type == "cuda"
    indices = torch.tensor([5, 63, 0, 5], device="cuda")
    assert torch.equal(gather_rows(host, indices), gather_rows(resident, indices))
    assert gather_rows(host, indices).device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["dpsgd", "dpfedavg"])
def test_a_run_with_its_inputs_on_the_host_equals_one_with_them_on_the_gpu(tmp_path, monkeypatch, mode):
    raw = deep_merge(read_yaml(ROOT / "utils/params_adult.yaml"), read_yaml(ROOT / "configs/smoke.yaml"))
    overrides = [f"output_dir={tmp_path}", "device=cuda", f"privacy.mode={mode}",
                 "federated.rounds=3", "federated.num_clients=100", "evaluation.bootstrap_resamples=0"]
    summaries = {}
    for share in (0.5, 0.0):
        monkeypatch.setattr("dataset.base.DEVICE_DATA_SHARE", share)
        config = validated_config(apply_overrides(raw, [*overrides, f"name=share{share}"]))
        summaries[share] = run(config)
    assert summaries[0.0]["privacy/epsilon"] == summaries[0.5]["privacy/epsilon"]
    # Same seed, same batches, same noise; GPU kernels with atomics may still differ in the last bits.
    for key in ("test/accuracy", "test/eo_gap"):
        assert summaries[0.0][key] == pytest.approx(summaries[0.5][key], abs=0.005)
