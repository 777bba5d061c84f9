"""``--stack K``: K runs trained as one batched computation are, run by run, the K runs alone.

Real Adult data, real runs through :func:`training.experiment.run` and the CLI; the stacked step is
also checked against a per-example loop of the plain model and shown to ignore its padding.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from privacy import native_kernels
from training import checkpoint as experiment_checkpoint
from training import experiment as experiment_module
from training.experiment import open_run, run
from training.stacking import (
    IMAGE_STACK_ON_CPU,
    STACKED_KEYS,
    STACKED_STEP_RECORD,
    ImageStackedTrainer,
    NotStackable,
    StackedTrainer,
    build_stack,
    plan_stacks,
    run_stacked,
    runtime_signature,
    stack_key,
    why_not_stackable,
)
from training.validation import validated_config
from utils.sink import read_predictions

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "data": {"name": "adult", "train_size": 2000},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 3, "batch_size": 100, "optimizer": "adam", "lr": 1e-3},
    "evaluation": {"bootstrap_resamples": 50},
    "logging": {"progress": "never", "tensorboard": False, "wandb": {"mode": "disabled"}},
}
# Three runs of one stack: each differs from the others in seed, share, σ and clipping bound.
POINTS = [
    {"seed": 0, "data": {"minority_share": 0.1},
     "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}},
    {"seed": 1, "data": {"minority_share": 0.3},
     "privacy": {"mode": "dpsgd", "noise_multiplier": 0.7, "max_grad_norm": 0.5}},
    {"seed": 2, "data": {"minority_share": 0.05},
     "privacy": {"mode": "dpsgd", "noise_multiplier": 1.3, "max_grad_norm": 2.0}},
]
NON_PRIVATE = [{"seed": seed, "data": {"minority_share": share}} for seed, share in
               ((0, 0.1), (1, 0.3), (2, 0.05))]


def merged(base: dict, extra: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


# Non-private runs with a short last batch (2,000 = 13 × 150 + 50): shuffled fixed-size batches.
NON_PRIVATE_SHORT_LAST = [merged(point, {"training": {"batch_size": 150}}) for point in NON_PRIVATE]


def configs(points: list[dict], output: Path, base: dict = BASE, **extra) -> list:
    """The runs ``run0``, ``run1``, ... of ``points`` over ``base``, written under ``output``."""
    return [validated_config(merged(merged(base, point), {"name": f"run{i}",
                                                             "output_dir": str(output), **extra}))
            for i, point in enumerate(points)]


def comparable(summary: dict) -> dict:
    """A summary without what may differ between a stacked and a lone run: timings, the record of
    the stacking, and whether it was skipped."""
    return {key: value for key, value in summary.items()
            if not key.startswith("time/") and key not in ("trainer/info", "skipped")}


def assert_same_run(alone: dict, stacked: dict, alone_dir: Path, stacked_dir: Path) -> None:
    a, b = comparable(alone), comparable(stacked)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        else:
            assert b[key] == a[key], key
    # ε, steps and σ are exactly the lone run's: the same accountant saw the same steps.
    for key in ("privacy/epsilon", "privacy/steps", "privacy/noise_multiplier"):
        assert stacked[key] == alone[key]
    weights_alone = torch.load(alone_dir / "checkpoints" / "model_final.pt")
    weights_stacked = torch.load(stacked_dir / "checkpoints" / "model_final.pt")
    for name, tensor in weights_alone.items():
        torch.testing.assert_close(weights_stacked[name], tensor, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(read_predictions(stacked_dir / "predictions.csv")["y_pred"],
                                  read_predictions(alone_dir / "predictions.csv")["y_pred"])


# training.steps_per_epoch: 7 Poisson steps an epoch (a pass would be 20); 17 shuffled batches an
# epoch, which runs past the end of a pass (its short last batch) into a fresh one.
STEPS = [(POINTS, 7), (NON_PRIVATE_SHORT_LAST, 17)]


@pytest.mark.parametrize("points", [POINTS, NON_PRIVATE_SHORT_LAST,
                                    *[[merged(point, {"training": {"steps_per_epoch": steps}})
                                       for point in points] for points, steps in STEPS],
                                    [merged(point, {"model": {"activation": "tanh"}})
                                     for point in POINTS]],  # fair-dp's MLP
                         ids=["dpsgd", "none", "dpsgd-steps_per_epoch", "none-steps_per_epoch",
                              "dpsgd-tanh"])
def test_stacked_runs_equal_the_same_runs_trained_one_by_one(tmp_path, points):
    alone = [run(config) for config in configs(points, tmp_path / "alone")]
    stacked = run_stacked(configs(points, tmp_path / "stacked"))
    for i, (one, together) in enumerate(zip(alone, stacked)):
        assert isinstance(together, dict), together
        assert together["trainer/info"]["stacked_runs"] == len(points)
        assert "dp_step" not in together["trainer/info"]  # the lone trainer's step: not run
        assert_same_run(one, together, tmp_path / "alone" / f"run{i}",
                        tmp_path / "stacked" / f"run{i}")
        # Every epoch's row too (the same metrics.jsonl keys and values, timings aside).
        rows = [[json.loads(line) for line in (tmp_path / d / f"run{i}" / "metrics.jsonl")
                 .read_text().splitlines()] for d in ("alone", "stacked")]
        assert [comparable(row).keys() for row in rows[0]] == \
            [comparable(row).keys() for row in rows[1]]
        for row_alone, row_stacked in zip(*rows):
            assert row_stacked.get("train/loss") == pytest.approx(row_alone.get("train/loss"),
                                                                  rel=1e-5)


def open_members(tmp_path, points=POINTS, **extra):
    sessions = [open_run(config) for config in configs(points, tmp_path, **extra)]
    return sessions, StackedTrainer([session.trainer for session in sessions])


def per_example_clipped_sum(trainer, indices: torch.Tensor, bound: float) -> list[torch.Tensor]:
    """DP-SGD's clipped sum by a loop: each example's own gradient of its loss through the plain
    model, clipped to ``bound`` as one vector, summed."""
    model = trainer.base_model()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in indices.tolist():
        with trainer.private.hooks_off():  # the plain model, its parameters tracked by autograd
            logit = model(trainer.x[i:i + 1]).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, trainer.y[i:i + 1])
            grads = torch.autograd.grad(loss * trainer.weights[i], params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, bound / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return total


def stacked_step(stack: StackedTrainer, batches: list[torch.Tensor], pad_to: int | None = None):
    """The stack's clipped sums (noise aside) for ``batches``, padded to ``pad_to`` rows."""
    sizes = torch.tensor([len(b) for b in batches])
    width = max(pad_to or 0, int(sizes.max()))
    index = torch.zeros(len(batches), width, dtype=torch.long)
    for k, batch in enumerate(batches):
        index[k, :len(batch)] = batch
    mask = torch.arange(width) < sizes.unsqueeze(1)
    _, norms, grads, _ = stack.gradients(index, sizes, mask)
    return norms, grads


def test_the_stacked_clipped_sum_is_the_per_example_loop_of_every_run(tmp_path):
    sessions, stack = open_members(tmp_path)
    generator = torch.Generator().manual_seed(5)
    batches = [torch.randperm(len(s.trainer.y), generator=generator)[:n]
               for s, n in zip(sessions, (37, 81, 5))]
    norms, grads = stacked_step(stack, batches)
    for k, session in enumerate(sessions):
        bound = POINTS[k]["privacy"]["max_grad_norm"]
        expected = per_example_clipped_sum(session.trainer, batches[k], bound)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got[k], want, rtol=1e-4, atol=1e-6)
        assert (norms[k, len(batches[k]):] == 0).all()  # the padding's norms
    for session in sessions:
        session.sink.close(None)


def test_padding_never_contributes_even_where_it_points_at_real_examples(tmp_path):
    sessions, stack = open_members(tmp_path)
    batches = [torch.arange(10, 30), torch.arange(50, 53), torch.tensor([], dtype=torch.long)]
    # Padded rows gather example 0 of each run: a real example, which must not count.
    tight_norms, tight = stacked_step(stack, batches)
    wide_norms, wide = stacked_step(stack, batches, pad_to=64)
    for got, want in zip(wide, tight):
        # Float rounding only (a wider padding sums in another order); a padded row that counted
        # would move the sum by a whole clipped gradient, of order 1.
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(wide_norms[:, :tight_norms.shape[1]], tight_norms)
    assert (wide_norms[:, tight_norms.shape[1]:] == 0).all()
    assert all((g[2] == 0).all() for g in wide)  # the empty batch: nothing before the noise
    for session in sessions:
        session.sink.close(None)


def interrupt_and_resume(runs, tmp_path: Path, monkeypatch) -> tuple[list, list, list]:
    """``runs(output)``'s stack straight through, then killed after run1's epoch 2 and resumed:
    (straight summaries, resumed summaries, the (run, epoch) pairs the resumed stack logged).
    run0 saved its epoch-2 checkpoint before run1 stopped, run1 and run2 have epoch 1's, so the
    resumed runs restart from different epochs (run0 alone, run1 and run2 stacked)."""
    straight = run_stacked(runs(tmp_path / "straight"))
    original = experiment_module.MetricsSink.log

    def log(self, step, metrics):  # the second run's logger fails after epoch 2: a kill
        original(self, step, metrics)
        if step == 2 and self.run_dir.name == "run1":
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(experiment_module.MetricsSink, "log", log)
        with pytest.raises(KeyboardInterrupt):
            run_stacked(runs(tmp_path / "resumed"))
    logged = []

    def record(self, step, metrics):
        logged.append((self.run_dir.name, step))
        original(self, step, metrics)

    with monkeypatch.context() as patch:
        patch.setattr(experiment_module.MetricsSink, "log", record)
        resumed = run_stacked(runs(tmp_path / "resumed"))
    for summary in resumed:
        assert isinstance(summary, dict) and not summary.get("skipped")
    for i in range(len(resumed)):
        steps = [json.loads(line)["step"] for line in
                 (tmp_path / "resumed" / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]
    return straight, resumed, logged


def test_an_interrupted_stack_resumes_run_by_run_to_the_uninterrupted_result(tmp_path,
                                                                             monkeypatch):
    straight, resumed, _ = interrupt_and_resume(lambda output: configs(POINTS, output), tmp_path,
                                                monkeypatch)
    for i, (one, two) in enumerate(zip(straight, resumed)):
        assert_same_run(one, two, tmp_path / "straight" / f"run{i}",
                        tmp_path / "resumed" / f"run{i}")


def test_plan_stacks_groups_points_that_differ_only_in_the_stacked_keys(tmp_path):
    runs = configs(POINTS + NON_PRIVATE, tmp_path)
    fedavg = validated_config(merged(BASE, {"privacy": {"mode": "dpfedavg",
                                                           "noise_multiplier": 1.0}}))
    opacus = validated_config(merged(BASE, {"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0,
                                                           "engine": "opacus"}}))
    wider = validated_config(merged(BASE, {"model": {"name": "mlp", "hidden": [32]},
                                              "privacy": {"mode": "dpsgd",
                                                          "noise_multiplier": 1.0}}))
    plan = plan_stacks([*runs, fedavg, opacus, wider], size=2)
    # DP-SGD runs (0-2) and non-private runs (3-5) stack among themselves, never together.
    assert plan == [[0, 1], [2], [3, 4], [5], [6], [7], [8]]
    assert plan_stacks(runs, size=8) == [[0, 1, 2], [3, 4, 5]]
    assert stack_key(opacus) is None
    assert stack_key(fedavg) is not None  # DP-FedAvg points stack among themselves
    assert len({stack_key(c) for c in runs[:3]}) == 1
    assert set(STACKED_KEYS) >= {"seed", "data.minority_share", "privacy.noise_multiplier"}


@pytest.mark.parametrize("base, method, changes", [
    (POINTS[0], "gapreg", "loss, before_step, public data"),  # DP-SGD: its gaps from public data
    (NON_PRIVATE[0], "runner", "loss, before_step, hidden_layers, hidden activations"),
    (NON_PRIVATE[0], "fairneuron", "phases, start_phase, attach, before_forward"),  # refuses DP-SGD
])
def test_a_method_that_changes_the_training_step_trains_alone(tmp_path, base, method, changes):
    # Only methods that train as Vanilla does may share the stack's written-out step.
    point = merged(base, {"data": {"val_fraction": 0.1, "validation_public": True}, "fairness": {"method": method}})
    [session] = [open_run(config) for config in configs([point], tmp_path)]
    with pytest.raises(NotStackable, match=rf"fairness.method '{method}' changes the training step "
                                           rf"\({changes}\)"):
        runtime_signature(session.trainer)
    session.sink.close(None)
    [plain] = [open_run(config) for config in configs([base], tmp_path / "plain")]
    assert runtime_signature(plain.trainer)  # the same run without the method stacks
    plain.sink.close(None)


GRID = {
    "name": "stacked_grid", "seed": 0,
    **{key: value for key, value in BASE.items() if key != "logging"},
    "training": {**BASE["training"], "epochs": 2},
    "logging": {"progress": "never", "tensorboard": True, "wandb": {"mode": "offline"}},
    "sweep": {"data.minority_share": [0.1, 0.3], "seed": [0, 1]},
    "zip": {"privacy.mode": ["none", "dpsgd", "dpfedavg"],
            "privacy.noise_multiplier": [None, 1.0, 1.0]},
}


@pytest.mark.slow  # end to end, tens of seconds on a 2-core CPU (the default tier keeps the stacked-against-lone runs)
def test_the_cli_stacks_a_grid_and_every_point_keeps_its_own_run_directory(tmp_path):
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump({**GRID, "output_dir": str(tmp_path / "runs"),
                                      "federated": {"num_clients": 20, "rounds": 2,
                                                    "eval_every": 1}}))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "offline",
           "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "running.py"), "--params", str(params),
                           "--stack", "8"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    status = json.loads((tmp_path / "runs" / "stacked_grid" / "grid_status.json").read_text())
    assert [p["status"] for p in status["points"]] == ["done"] * 12
    for point in status["points"]:
        summary = json.loads((Path(point["run_dir"]) / "summary.json").read_text())
        stacked = summary["trainer/info"].get("stacked_runs")
        # The 4 DP-SGD points share one stack, the 4 non-private ones another, the 4 DP-FedAvg
        # points a third.
        assert stacked == 4
        run_dir = Path(point["run_dir"])
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
        # Its own wandb run (offline): one run folder per point, none shared.
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    # Run again: every point is complete, nothing trains.
    again = subprocess.run([sys.executable, str(ROOT / "running.py"), "--params", str(params),
                            "--stack", "8"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") == 12


@pytest.mark.parametrize("argv, message", [
    (["--stack", "0"], "--stack: got 0"),
    (["--stack", "2", "--backend", "ray"], "not with --backend ray"),
])
def test_bad_stack_arguments_exit_2(tmp_path, argv, message):
    params = tmp_path / "grid.yaml"
    params.write_text(yaml.safe_dump({**GRID, "output_dir": str(tmp_path / "runs")}))
    done = subprocess.run([sys.executable, str(ROOT / "running.py"), "--params", str(params),
                           *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr


def test_stack_of_a_single_experiment_is_an_input_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "running.py"), "--params",
                           str(ROOT / "utils" / "params_adult.yaml"), "--stack", "4",
                           "--set", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "is one experiment, not a grid" in done.stderr
    assert not any(tmp_path.iterdir())


# --- image models (cnn, resnet18) on a fake CelebA: ImageStackedTrainer ----------------------

FAKE_CELEBA = "stacking_celeba"  # data.root, relative to the session's base temporary folder


@pytest.fixture(scope="module")
def fake_celeba_files(tmp_path_factory):
    from tests.celeba_fake import make_fake_celeba

    base = tmp_path_factory.getbasetemp()
    if not (base / FAKE_CELEBA).exists():
        make_fake_celeba(base / FAKE_CELEBA, n_images=300, seed=0)
    return base


@pytest.fixture
def fake_celeba(fake_celeba_files, monkeypatch):
    """The fake CelebA as the same relative ``data.root`` in every session (the test runs in the
    session's base temporary folder). ``data.root`` is part of a run's identity, so an absolute
    path, which changes from session to session, gave every session other initializations,
    batches and noise: the image runs' end-to-end comparisons, where training carries float
    rounding (and a ReLU pre-activation that rounding puts on the other side of 0 in one
    computation and not the other) into the scores, then failed in some sessions and not in
    others (the non-private ResNet's stacked against lone scores: up to 0.04 in 2 of 30 draws).
    With one root every session trains the same draws, so a comparison passes or fails alike
    everywhere."""
    monkeypatch.chdir(fake_celeba_files)
    return Path(FAKE_CELEBA)


def image_configs(points: list[dict], output: Path, root: Path, model: str, image_size: int,
                  **training) -> list:
    """Runs of ``model`` (width 4) on the fake CelebA: 120 training images, random flips on."""
    base = {"data": {"name": "celeba", "root": str(root), "target": "Smiling", "protected": "Male",
                     "minority_value": "1", "minority_share": None, "train_size": 120,
                     "celeba": {"test_size": 40, "image_size": image_size,
                                "cache_dir": str(output.parent / "cache")}},
            "model": {"name": model, "width": 4},
            # SGD, not Adam: a convolution before a GroupNorm has gradient directions that are 0
            # but for rounding (the norm cancels them), and Adam's first steps move each
            # coordinate by about lr whatever its gradient's size, so two exact computations
            # that round differently would part by lr there; SGD keeps rounding at rounding.
            "training": {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.01,
                         **training},
            "evaluation": {"bootstrap_resamples": 20},
            "logging": BASE["logging"]}
    return configs(points, output, base)


IMAGE_POINTS = [{"seed": 0, "privacy": {"mode": "dpsgd", "noise_multiplier": 1.0,
                                        "max_grad_norm": 1.0}},
                {"seed": 1, "privacy": {"mode": "dpsgd", "noise_multiplier": 0.7,
                                        "max_grad_norm": 0.5}}]
IMAGE_NON_PRIVATE = [{"seed": 0}, {"seed": 1}]


# The test set's metrics of a tiny net trained a few steps: its scores sit near each other and
# near the threshold, so rounding in the scores (compared themselves, at the tolerance) can reorder
# examples or move one across the threshold, which moves these metrics by 1/40. They are checked
# through the scores and the decisions clear of the threshold (assert_same_image_run).
RANKING = re.compile(r"^(test|val)/")


def assert_same_image_run(alone: dict, stacked: dict, alone_dir: Path, stacked_dir: Path,
                          rtol: float) -> None:
    """:func:`assert_same_run` at the image stack's tolerance: its per-example gradients are
    formed by torch.func where the lone fast engine books them (ghost norms, unfolded inputs), so
    the two agree to float rounding, which training carries on (ImageStackedTrainer)."""
    a, b = comparable(alone), comparable(stacked)
    assert a.keys() == b.keys()
    for key in a:
        if RANKING.search(key):  # checked through y_score below (see RANKING)
            continue
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=rtol, abs=rtol), key
        elif key == "data/info":  # the image cache: built by the first run, read by the rest
            assert ({k: v for k, v in b[key].items() if not k.startswith("cache/")}
                    == {k: v for k, v in a[key].items() if not k.startswith("cache/")})
        elif key != "test/intervals":
            assert b[key] == a[key], key
    for key in ("privacy/epsilon", "privacy/steps", "privacy/noise_multiplier"):
        assert stacked[key] == alone[key]
    weights_alone = torch.load(alone_dir / "checkpoints" / "model_final.pt")
    weights_stacked = torch.load(stacked_dir / "checkpoints" / "model_final.pt")
    for name, tensor in weights_alone.items():
        torch.testing.assert_close(weights_stacked[name], tensor, rtol=rtol, atol=rtol)
    ours, theirs = (read_predictions(d / "predictions.csv") for d in (stacked_dir, alone_dir))
    np.testing.assert_allclose(ours["y_score"], theirs["y_score"], rtol=rtol, atol=rtol)
    clear = np.abs(np.asarray(theirs["y_score"]) - 0.5) > 2 * rtol  # of the threshold
    np.testing.assert_array_equal(np.asarray(ours["y_pred"])[clear],
                                  np.asarray(theirs["y_pred"])[clear])


def check_image_stack(tmp_path, root, points, model, image_size, rtol, **training):
    alone = [run(config) for config in image_configs(points, tmp_path / "alone", root, model,
                                                     image_size, **training)]
    stacked = run_stacked(image_configs(points, tmp_path / "stacked", root, model, image_size,
                                        **training))
    for i, (one, together) in enumerate(zip(alone, stacked)):
        assert isinstance(together, dict), together
        assert together["trainer/info"]["stacked_runs"] == len(points)
        assert together["trainer/info"]["stacked_step"] == STACKED_STEP_RECORD
        assert "dp_step" not in together["trainer/info"]  # the lone trainer's step: not run
        assert "per_example_conv" not in together["trainer/info"]
        if one["trainer/info"].get("dp_step"):  # a lone DP-SGD image run: its kernel recorded
            assert one["trainer/info"]["per_example_conv"] == native_kernels.status()
        assert_same_image_run(one, together, tmp_path / "alone" / f"run{i}",
                              tmp_path / "stacked" / f"run{i}", rtol)


@pytest.mark.parametrize("points", [IMAGE_POINTS, IMAGE_NON_PRIVATE], ids=["dpsgd", "none"])
def test_stacked_cnn_runs_equal_the_same_runs_trained_one_by_one(tmp_path, fake_celeba, points,
                                                                  capsys):
    # 32 px, random flips: each member flips the images its lone run flips. 1e-2: rounding that
    # differs (the per-example route; the thread count) can flip a ReLU or max-pool choice of a
    # width-4 network, and the diagnostics then differ by up to 3e-3 for some draws (they
    # change with tmp_path, part of the run's identity); the step itself is held at 1e-4
    # against a float64 loop (below).
    check_image_stack(tmp_path, fake_celeba, points, "cnn", 32, rtol=1e-2)
    # On a CPU the user hears that an image stack is slower than its runs alone.
    assert IMAGE_STACK_ON_CPU.format(runs=2, model="cnn") in capsys.readouterr().err


@pytest.mark.slow  # nine image runs' epochs: about 30 s on a 2-core CPU
def test_an_interrupted_image_stack_resumes_run_by_run_to_the_uninterrupted_result(
        tmp_path, fake_celeba, monkeypatch):
    points = [*IMAGE_POINTS, {"seed": 2, "privacy": {"mode": "dpsgd", "noise_multiplier": 1.2,
                                                      "max_grad_norm": 1.0}}]

    def image_runs(output):
        return image_configs(points, output, fake_celeba, "cnn", 32, epochs=3)

    # run0 resumes alone (the lone engine), run1 and run2 as a stack of two, each from its
    # checkpoint (parameters, optimizer, accountant, its own sampling, flip and noise streams).
    straight, resumed, logged = interrupt_and_resume(image_runs, tmp_path, monkeypatch)
    # each run trained only the epochs after its checkpoint
    assert sorted(logged) == [("run0", 3), ("run1", 2), ("run1", 3), ("run2", 2), ("run2", 3)]
    for i, (one, two) in enumerate(zip(straight, resumed)):
        # run0's last epoch ran on the lone engine: the image stack's rounding (see
        # test_stacked_cnn_runs_equal_the_same_runs_trained_one_by_one)
        assert_same_image_run(one, two, tmp_path / "straight" / f"run{i}",
                              tmp_path / "resumed" / f"run{i}", rtol=1e-2)


@pytest.mark.slow  # a ResNet-18 at 64 px, four runs: tens of seconds on a 2-core CPU
@pytest.mark.parametrize("points", [IMAGE_POINTS, IMAGE_NON_PRIVATE], ids=["dpsgd", "none"])
def test_stacked_resnet18_runs_equal_the_same_runs_trained_one_by_one(tmp_path, fake_celeba,
                                                                      points):
    # One epoch of 3 steps: a width-4 ResNet's GroupNorm of 2 channels is ill-conditioned enough
    # that float rounding (the lone engine's own, against a float64 loop, is 1e-4 in the norms)
    # grows with every step; 64 px keeps its last maps 2×2.
    # Two steps at 1e-2: this width-4 ResNet is ill-conditioned (GroupNorms of 2 channels): the
    # lone fast engine's fp32 clipped sums differ from a float64 per-example loop by about 1e-3
    # (the stack's by 1e-5; measured with image_per_example_clipped_sum on one batch), and
    # every further step carries rounding into the scores (three steps: up to 3e-2 for some
    # draws; the draws change with tmp_path, part of the run's identity); the step itself is
    # held at 1e-4 against the float64 loop
    # (test_the_image_stacks_clipped_sum_is_the_per_example_loop_of_every_run).
    check_image_stack(tmp_path, fake_celeba, points, "resnet18", 64, rtol=1e-2, epochs=1,
                      steps_per_epoch=2)


def image_per_example_clipped_sum(trainer, x, y, weights, bound):
    """DP-SGD's clipped sum by a loop in float64: each example's own gradient through a float64
    copy of the plain model, clipped to ``bound``, summed; and the norms."""
    model = copy.deepcopy(trainer.base_model()).double()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    total, norms = [torch.zeros_like(p) for p in params], []
    with trainer.private.hooks_off():
        for i in range(len(x)):
            logit = model(x[i:i + 1].double()).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[i:i + 1].double())
            grads = torch.autograd.grad(loss * weights[i].double(), params)
            norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            norms.append(norm)
            total = [t + min(1.0, bound / (norm + 1e-6)) * g for t, g in zip(total, grads)]
    return total, torch.tensor(norms, dtype=torch.float64)


def in_float64(stack: ImageStackedTrainer) -> ImageStackedTrainer:
    """The stack computing in float64 (its stacked parameters as float64 copies), for tests of
    its function against a float64 reference.

    In float32 two exact computations of a ReLU network part wherever rounding puts a
    pre-activation on the other side of 0: that unit's whole contribution flips, far beyond
    rounding. The fake CelebA's runs change with tmp_path (``data.root`` is part of a run's
    identity), and about 1 in 20 draws has such a unit; in float64 practically none does, so the
    comparison is exact to float64 rounding whatever the draw."""
    stack.params = [p.double() for p in stack.params]
    return stack


@pytest.mark.parametrize("model, image_size", [
    ("cnn", 32), pytest.param("resnet18", 64, marks=pytest.mark.slow)])  # ResNet: 15 s
def test_the_image_stacks_clipped_sum_is_the_per_example_loop_of_every_run(
        tmp_path, fake_celeba, model, image_size):
    sessions = [open_run(config) for config in image_configs(
        IMAGE_POINTS, tmp_path / "runs", fake_celeba, model, image_size)]
    stack = build_stack([session.trainer for session in sessions])
    assert isinstance(stack, ImageStackedTrainer)
    stack = in_float64(stack)  # against the float64 loop, exactly (see in_float64)
    stack.chunk = 3  # several chunks, the last one short
    generator = torch.Generator().manual_seed(5)
    sizes = (11, 4)
    width = 13  # padded past the largest batch
    x = torch.zeros(2, width, 3, image_size, image_size, dtype=torch.float64)
    y, weights = torch.zeros(2, 2, width, dtype=torch.float64)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for k, (session, n) in enumerate(zip(sessions, sizes)):
        trainer = session.trainer
        index = torch.randperm(len(trainer.y), generator=generator)[:n]
        x[k, :n] = trainer.transform(trainer.x[index], False)
        x[k, n:] = x[k, 0]  # padding that holds a real image: it must not count
        y[k, :n], weights[k, :n], mask[k, :n] = trainer.y[index], trainer.weights[index], True
    _, norms, grads = stack.gradients(x, y, weights, mask)
    for k, (session, n) in enumerate(zip(sessions, sizes)):
        bound = IMAGE_POINTS[k]["privacy"]["max_grad_norm"]
        want, want_norms = image_per_example_clipped_sum(session.trainer, x[k, :n], y[k, :n],
                                                         weights[k, :n], bound)
        torch.testing.assert_close(norms[k, :n].double(), want_norms, rtol=1e-6, atol=1e-9)
        assert (norms[k, n:] == 0).all()
        for got, expected in zip(grads, want):
            torch.testing.assert_close(got[k], expected, rtol=1e-10, atol=1e-12)
    for session in sessions:
        session.sink.close(None)


def test_members_of_an_image_stack_draw_their_own_batches_flips_and_noise(tmp_path, fake_celeba):
    # Two runs that differ in the seed alone: their batches, random flips and noise differ, and
    # each is the draw its lone run makes (the runs equal their lone runs: the tests above).
    points = [{"seed": 0, "privacy": IMAGE_POINTS[0]["privacy"]},
              {"seed": 1, "privacy": IMAGE_POINTS[0]["privacy"]}]
    sessions = [open_run(config) for config in image_configs(points, tmp_path / "runs",
                                                             fake_celeba, "cnn", 32)]
    trainers = [session.trainer for session in sessions]
    states = [experiment_checkpoint.rng_state() for _ in trainers]
    states[1] = {**states[1], "torch": torch.manual_seed(99).get_state()}
    stack = build_stack(trainers, states)
    batches = [next(iter(trainer.loader))[0] for trainer in trainers]
    assert not torch.equal(batches[0], batches[1])
    index = torch.arange(8)
    flips = []
    for k, trainer in enumerate(trainers):
        with stack.own_random_state(k):
            flips.append(trainer.transform(trainer.x[index], True))
    assert not torch.equal(flips[0], flips[1])
    draws = [trainer.private.draw_noise() for trainer in trainers]
    assert not torch.equal(draws[0], draws[1])
    for session in sessions:
        session.sink.close(None)


@pytest.mark.parametrize("override, reason", [
    ({"model": {"name": "resnet18", "channels_last": True}}, "model.channels_last"),
    ({"training": {"precision": "bf16"}}, "training.precision"),
    ({"privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0}}, "data.name 'celeba' under privacy.mode 'dpfedavg'"),
    ({"privacy": {"mode": "dpsgd", "noise_multiplier": 1.0, "engine": "opacus"}},
     "privacy.engine 'opacus'"),
])
def test_why_not_stackable_names_what_keeps_an_image_run_alone(tmp_path, fake_celeba, override,
                                                               reason):
    [plain] = image_configs([{}], tmp_path, fake_celeba, "resnet18", 32)
    assert why_not_stackable(plain) is None and stack_key(plain) is not None
    [config] = image_configs([override], tmp_path, fake_celeba, "resnet18", 32)
    assert why_not_stackable(config).startswith(reason)
    assert stack_key(config) is None


# --- DP-FedAvg points: FederatedStack ---------------------------------------------------------

FEDAVG_BASE = {
    "data": {"name": "adult", "train_size": 2000},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"batch_size": 16},
    "federated": {"num_clients": 50, "rounds": 4, "eval_every": 2, "client_sample_rate": 0.2},
    "evaluation": {"bootstrap_resamples": 20},
    "logging": BASE["logging"],
}
# Seeds, shares, σ and bounds S all differ; S = 0.03 clips most updates (their norms are about
# 0.05), 2.0 none.
FEDAVG_POINTS = [
    {"seed": 0, "data": {"minority_share": 0.1},
     "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.0, "max_grad_norm": 0.03}},
    {"seed": 1, "data": {"minority_share": 0.3},
     "privacy": {"mode": "dpfedavg", "noise_multiplier": 0.7, "max_grad_norm": 0.5}},
    {"seed": 2, "data": {"minority_share": 0.05},
     "privacy": {"mode": "dpfedavg", "noise_multiplier": 1.3, "max_grad_norm": 2.0}},
]


def fedavg_configs(points: list[dict], output: Path) -> list:
    return configs(points, output, FEDAVG_BASE)


def test_stacked_dpfedavg_runs_equal_the_same_runs_trained_one_by_one(tmp_path):
    alone = [run(config) for config in fedavg_configs(FEDAVG_POINTS, tmp_path / "alone")]
    stacked = run_stacked(fedavg_configs(FEDAVG_POINTS, tmp_path / "stacked"))
    clipped = []
    for i, (one, together) in enumerate(zip(alone, stacked)):
        assert isinstance(together, dict), together
        assert together["trainer/info"]["stacked_runs"] == len(FEDAVG_POINTS)
        assert_same_run(one, together, tmp_path / "alone" / f"run{i}",
                        tmp_path / "stacked" / f"run{i}")
        rows = [[json.loads(line) for line in (tmp_path / d / f"run{i}" / "metrics.jsonl")
                 .read_text().splitlines()] for d in ("alone", "stacked")]
        for row_alone, row_stacked in zip(*rows):  # every round's, clients and clipping too
            assert row_stacked["federated/clients"] == row_alone["federated/clients"]
            assert row_stacked["dp/clip_fraction"] == row_alone["dp/clip_fraction"]
            assert row_stacked["train/loss"] == pytest.approx(row_alone["train/loss"], rel=1e-5)
        clipped.append(one["dp/clip_fraction"])
    assert clipped[0] > 0 and clipped[2] == 0  # the bounds differ, and bite differently


def test_members_of_a_dpfedavg_stack_draw_their_own_clients_and_noise(tmp_path):
    points = [merged(FEDAVG_POINTS[0], {"seed": seed}) for seed in (0, 1)]
    sessions = [open_run(config) for config in fedavg_configs(points, tmp_path)]
    trainers = [session.trainer for session in sessions]
    assert runtime_signature(trainers[0]) == runtime_signature(trainers[1])
    chosen = [trainer.round_orders()[0] for trainer in trainers]
    assert not torch.equal(chosen[0], chosen[1])
    noise = [trainer.mechanism.noise_generator.initial_seed() for trainer in trainers]
    assert noise[0] != noise[1]
    for session in sessions:
        session.sink.close(None)


def test_the_image_stacks_non_private_gradient_is_the_plain_models(tmp_path, fake_celeba):
    # In float64 (see in_float64): the stacked function against the plain model, exactly.
    sessions = [open_run(config) for config in image_configs(
        IMAGE_NON_PRIVATE, tmp_path / "runs", fake_celeba, "cnn", 32)]
    stack = in_float64(build_stack([session.trainer for session in sessions]))
    width, sizes = 12, (9, 5)
    x = torch.zeros(2, width, 3, 32, 32, dtype=torch.float64)
    y, weights = torch.zeros(2, 2, width, dtype=torch.float64)
    mask = torch.zeros(2, width, dtype=torch.bool)
    expected = []
    for k, (session, n) in enumerate(zip(sessions, sizes)):
        trainer = session.trainer
        index = torch.arange(n) * 3 + k
        x[k, :n] = trainer.transform(trainer.x[index], False)
        x[k, n:] = x[k, 0]  # padding that holds a real image: it must not count
        y[k, :n], weights[k, :n], mask[k, :n] = trainer.y[index], trainer.weights[index], True
        model = copy.deepcopy(trainer.base_model()).double()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            model(x[k, :n]).reshape(-1), y[k, :n], reduction="none") * weights[k, :n]
        expected.append((losses.mean().item(),
                         torch.autograd.grad(losses.mean(), list(model.parameters()))))
    means, norms, grads = stack.gradients(x, y, weights, mask)
    assert norms is None
    for k, (mean, want) in enumerate(expected):
        assert float(means[k]) == pytest.approx(mean, rel=1e-12)
        for got, ref in zip(grads, want):
            torch.testing.assert_close(got[k], ref, rtol=1e-10, atol=1e-12)
    for session in sessions:
        session.sink.close(None)
