"""The DP mitigation studies in configs/: fair-dp's Adult setting with every clipping rule, the grids
crossing share x privacy level x rule on Adult and CelebA, and the Adult study end to end under the
smoke overlay (every rule), reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import running
from grids.sweep import load_grid
from privacy.clipping import RULES
from tests.test_configs import deep_merge

ROOT = Path(__file__).resolve().parent.parent


def configs_of(name: str):
    return [point.config for point in load_grid(ROOT / "configs" / f"{name}.yaml").points]


def rule_of(config) -> str:
    return "non-private" if config.privacy.mode == "none" else config.privacy.clipping


def test_the_adult_study_is_fair_dps_adult_setting_with_every_rule():
    configs = configs_of("dp_mitigation_adult")
    assert {rule_of(c) for c in configs} == {"non-private", *RULES}
    assert {c.data.minority_share for c in configs} == {0.5, 0.1, 0.01}  # 0.5: balanced groups
    assert {c.seed for c in configs} == set(range(5))
    for config in configs:
        assert (config.model.hidden, config.model.activation) == ([256, 256], "tanh")
        assert (config.training.batch_size, config.training.epochs) == (256, 20)
        assert config.training.optimizer == "sgd"
        assert config.data.protected == "sex" and config.data.minority_value == "Female"
        if config.privacy.private:
            assert (config.privacy.noise_multiplier, config.privacy.max_grad_norm) == (1.0, 0.5)
            assert config.privacy.delta == 1e-6
        settings = config.privacy.clipping_settings
        if config.privacy.clipping == "dpsgd_f":
            assert settings.counts_noise_multiplier == 10.0
        if config.privacy.clipping in ("global", "global_adapt"):
            assert settings.z == 50.0 and config.training.lr == 0.2
        if config.privacy.clipping == "global_adapt":
            assert (settings.bits_noise_multiplier, settings.lr_z, settings.threshold) == (10.0, 0.1, 1.0)
        if config.privacy.clipping in ("dpsgd_f", "adaptive", "bounded_adaptive", "automatic"):
            assert config.training.lr == 0.01
    # DP-SGD and its non-private twin at both learning rates, so that every rule has its baseline.
    assert {(rule_of(c), c.training.lr) for c in configs if c.privacy.clipping == "flat"} == {
        (rule, lr) for rule in ("non-private", "flat") for lr in (0.01, 0.2)}


@pytest.mark.parametrize(("name", "levels"), [
    pytest.param("dp_mitigation_grid_adult", {("target_epsilon", value) for value in (1.0, 3.0, 8.0)},
                 marks=pytest.mark.slow),  # 520 points to check
    ("dp_mitigation_celeba", {("noise_multiplier", value) for value in (1.5, 0.7)})])
def test_the_crossing_grids_run_every_rule_at_every_privacy_level_and_share(name, levels):
    configs = configs_of(name)
    private = [c for c in configs if c.privacy.private]
    found = {(rule_of(c), key, getattr(c.privacy, key), c.data.minority_share)
             for c in private for key, _ in levels}
    shares = {c.data.minority_share for c in configs}
    assert {(rule, key, value, share) for rule in RULES for key, value in levels
            for share in shares} <= found
    assert {c.privacy.clipping for c in configs if not c.privacy.private} == {"flat"}
    assert len(shares) >= 3
    # Every rule's learning rate has DP-SGD and the non-private twin beside it.
    for rule_lr in {c.training.lr for c in private}:
        assert {rule_of(c) for c in configs if c.training.lr == rule_lr
                and c.privacy.clipping == "flat"} == {"non-private", "flat"}


@pytest.mark.slow
def test_the_adult_study_runs_every_rule_end_to_end_under_the_smoke_overlay(tmp_path):
    raw = deep_merge(yaml.safe_load((ROOT / "configs" / "dp_mitigation_adult.yaml").read_text()),
                     yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()))
    raw["sweep"] = {"data.minority_share": [0.1], "seed": [0]}
    raw.update(output_dir=str(tmp_path / "runs"), device="cpu")
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert running.main(["--params", str(params)]) == 0
    runs = tmp_path / "runs" / raw["name"]
    summaries = {}
    for path in runs.glob("*/summary.json"):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        summaries[(config["privacy"]["mode"], config["privacy"]["clipping"],
                   config["training"]["lr"])] = json.loads(path.read_text())
    assert {clipping for _, clipping, _ in summaries} == set(RULES)
    for (mode, clipping, _), summary in summaries.items():
        assert 0 <= summary["test/accuracy"] <= 1
        if mode == "dpsgd":
            # One of the study's 20 epochs: less than the 3.9 the whole study spends.
            assert summary["privacy/private"] is True and 0 < summary["privacy/epsilon"] < 3.9
        if clipping != "flat":
            assert summary["dp/clip_bound/group=minority"] > 0
    assert running.main(["--report", str(runs)]) == 0
    markdown = (runs / "report.md").read_text()
    assert "## DP mitigations: clipping rules" in markdown and "### DP's added gap removed" in markdown
    assert (runs / "mitigation_share.png").is_file() and (runs / "mitigation_epsilon.png").is_file()
