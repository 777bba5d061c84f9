"""One experiment from config to run directory: ``run(config) -> summary``.

The straight path every mode shares: seed -> data -> model -> trainer -> (train a unit, score the
test set, log) x units -> bootstrap intervals, predictions.csv, summary.json. The CLI
(``running.py``), the tests and the notebook all call :func:`run`.

Run-directory contract (docs/run_directory.md): ``summary.json`` is written last and atomically; its presence means
the run is complete, and running the same config again returns it without training. A directory
without it is an interrupted run: it continues from its last checkpoint when its config.yaml is this
config (apart from provenance) and a checkpoint is usable (:mod:`training.checkpoint`), and is
started afresh otherwise. A resumed run ends with the same summary as an uninterrupted one (exactly
on the CPU; ``time/`` keys aside), and its ε counts every step before and after the interruption.

What the tool may do at the run path (:mod:`utils.rundir`): a directory is this tool's run directory
only if it holds the marker file ``.dp-fairness-run`` (a small JSON object naming the tool), which
is written first thing whenever a run directory is made, before config.yaml. A missing directory is
made and marked; an empty one is adopted (marked and used); a marked one is resumed, returned as
complete, or, for a fresh start (``--overwrite``, or an interrupted run that cannot resume),
cleared of the tool's own entries only (config.yaml, metrics.jsonl, summary.json, predictions.csv,
clients.csv, preprocessing.json, tb/, wandb/, checkpoints/), leaving anything else in it alone.
Anything else at the run path (a folder without the marker that is not empty, a file, a symbolic
link) is an input error naming the path, and is never written to or removed, ``--overwrite`` or
not; the one exception is reading: a valid summary.json in an unmarked folder whose config.yaml is
this config (a complete run of a version before the marker) is returned as complete. Inside a
marked directory every path a resume or a fresh start writes is checked first (no link, the right
kind of entry: :func:`utils.rundir.check_run_entries`), and the directory is locked for this
process (:class:`utils.rundir.RunLock`) until the run ends. Nothing outside ``{output_dir}/{name}`` is written or
removed, apart from making the missing folders of output_dir. summary.json counts only when it is
an object with every key a complete run writes; a broken one (cut short, empty, ``{}``) makes the
run an interrupted one, with a warning naming the file. Configs are compared without provenance
and without ``output_dir``, so a folder of runs moved elsewhere resumes and skips as before.
"""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from dataset import build_dataset
from dataset.preprocessing import FITTED, FITTED_UNDER_PRIVACY, without_fitted_parameters
from models import build_model
from training import build_trainer, checkpoint
from training.base import PUBLIC_DATA_KEY, public_data_facts
from training.evaluation import TestSetEvaluator
from training.repair import build_method
from training.selection import ModelSelector
from training.validation import validate
from utils import fairness, rundir
from utils.config import PROVENANCE_KEY, RETIRED_KEYS, ExperimentConfig
from utils.errors import UserInputError, warn_user
from utils.legacy import historic_flat
from utils.progress import progress
from utils.seeding import PAIRED_STREAMS_WARNING, RunStreams, resolve_device, run_identity
from utils.sink import (
    CLIENTS_FILE,
    CONFIG_FILE,
    NON_PRIVATE_LIST_KEY,
    PREDICTIONS_FILE,
    PREPROCESSING_FILE,
    SUMMARY_FILE,
    MetricsSink,
    is_non_private_statistic,
    replace_file,
    resolve_wandb_mode,
    without_non_private_statistics,
    write_json_atomic,
    write_predictions,
    write_rows,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The final model decides one class for every test example (tests import it).
CONSTANT_CLASSIFIER = (
    "the final model (unit {unit} of {units}) predicts {label} for every test example: a constant "
    "classifier, whose gaps are 0 or undefined by construction and say nothing about fairness "
    "(test/constant_prediction: true in summary.json).")
PACKAGES = ("torch", "torchvision", "opacus", "numpy", "scikit-learn", "pandas", "wandb",
            "tensorboard", "pyyaml")


def run_directory(config: ExperimentConfig) -> Path:
    return Path(config.output_dir) / config.name


def completed_summary(config: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this config, or None when it has not finished (no
    summary.json, or one that is not a complete run's: :func:`utils.rundir.read_summary`)."""
    return rundir.read_summary(run_directory(config) / SUMMARY_FILE)[0]


def changed_keys(run_dir: Path, config: ExperimentConfig) -> list[str]:
    """Dotted keys whose value in ``run_dir``'s config.yaml differs from ``config`` (provenance and
    the run's location, :data:`utils.rundir.LOCATION_KEYS`, aside)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return []
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        stored = None
    if not isinstance(stored, dict):
        return [f"{CONFIG_FILE} (unreadable)"]

    def flat(mapping: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in mapping.items():
            if key == PROVENANCE_KEY or (not prefix and key in rundir.LOCATION_KEYS):
                continue
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    # Moved keys compare under their old names (data.celeba.split as data.split): a config.yaml
    # written before the move holds them there, and holds them all.
    old, new = historic_flat(flat(stored)), historic_flat(flat(config.to_dict()))
    if "seed" in old and old["seed"] is None and withholds_seed(config):
        del old["seed"], new["seed"]  # withheld from config.yaml: nothing to compare it with
    # A config.yaml from before data.preprocessing existed was preprocessed as "fitted" is now;
    # under privacy that is not what the default (auto: public) does.
    if "data.preprocessing" not in old and old.get("privacy.mode", "none") != "none":
        old["data.preprocessing"] = "fitted"
    # A key the stored config lacks because the tool gained it later is no change while this
    # config leaves it at its default (the run trained with that behaviour); nor is a key the tool
    # has since retired, stored at the value that meant today's default.
    defaults = flat(ExperimentConfig().to_dict())
    retired = {key: default for key, (_, default) in RETIRED_KEYS.items()}
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key)
                  and not (key not in old and key in defaults and new.get(key) == defaults[key])
                  and not (key not in new and key in retired and old[key] == retired[key]))


SEED_WITHHELD = "<withheld>"  # in provenance's command, for --set seed=N under private_stats: false


def withholds_seed(config: ExperimentConfig) -> bool:
    """``logging.private_stats: false`` leaves the seed out of every record of the run: it replays a
    reproducible run's sampling and noise and names the resampled training rows (docs/privacy.md,
    *What ε does not cover*). Resuming does not need it from the records: the params file (or
    ``--set``) gives it again, and the checkpoints, private files removed when the run completes,
    record it to refuse another seed's (training.checkpoint.run_record)."""
    return not config.logging.private_stats


def records_config(config: ExperimentConfig) -> dict[str, Any]:
    """The config as the run's records hold it (config.yaml, wandb's run config): the resolved
    config, with ``seed: null`` when :func:`withholds_seed`."""
    resolved = config.to_dict()
    if withholds_seed(config):
        resolved["seed"] = None
    return resolved


def recorded_argv(config: ExperimentConfig | None) -> list[str]:
    """The command line as the records hold it: a ``--set seed=...`` masked when the config
    withholds its seed (config.yaml's provenance, and wandb, which records ``sys.argv`` itself)."""
    words = list(sys.argv)
    if config is not None and withholds_seed(config):
        words = [re.sub(r"^((?:--set=)?\s*seed\s*=).*$", rf"\g<1>{SEED_WITHHELD}", word, flags=re.S)
                 for word in words]
    return words


def provenance(config: ExperimentConfig | None = None) -> dict[str, Any]:
    """Package versions and the project's git commit, so a result can be traced to its code."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=PROJECT_ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty,
            "command": " ".join(recorded_argv(config)), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def build_components(config: ExperimentConfig, device: torch.device):
    """The data, model and trainer of ``config``, each drawing from its own random stream.

    The repair method's pre-processing (``training.repair``) makes the training set first.
    The resampler draws from its own streams; torch's global generator is pointed at the ``init``
    stream for the model's initialization and at ``augmentation`` right after (dropout, flips);
    the trainer makes its sampling and noise generators from their streams (utils.seeding).
    Returns ``(data, model, trainer)``.
    """
    method = build_method(config)
    data = method.prepare(build_dataset(config))  # the repair method's pre-processing
    streams = RunStreams(config)
    streams.seed_global("init")
    model = build_model(config.model, data.input_shape)
    streams.seed_global("augmentation")
    trainer = build_trainer(config, model, data, device, method=method)
    if config.privacy.private and config.privacy.paired_streams:
        warn_user(PAIRED_STREAMS_WARNING, trainer.warnings)
    if config.privacy.private and fitted_preprocessing(data):
        warn_user(FITTED_UNDER_PRIVACY.format(mode=config.privacy.mode), trainer.warnings)
    return data, model, trainer


def run(config: ExperimentConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate one experiment; return its summary (also written to summary.json).

    A run whose directory already holds summary.json is returned as it is unless ``overwrite``.
    An interrupted run of the same config continues from its last usable checkpoint
    (:func:`training.checkpoint.find_resumable`); ``overwrite`` always starts afresh.
    Input errors (:class:`UserInputError`) leave no run directory behind (a resumed one stays as
    it was); the run path is checked (:mod:`utils.rundir`) before anything is built or written.
    """
    session = open_run(config, overwrite=overwrite)
    if isinstance(session, dict):  # already complete
        return session
    with session.closing_on_error():
        return session.train_to_end()


def open_run(config: ExperimentConfig, *, overwrite: bool = False,
             concurrent: bool = False) -> RunSession | dict[str, Any]:
    """Everything of :func:`run` before the first unit trains: the finished run's summary (with
    ``skipped``) when there is one, else a :class:`RunSession` whose trainer is built, resumed
    when it can be, and whose run directory and sink are open. :mod:`training.stacking` opens
    several and trains their trainers together (``concurrent``: other runs' sinks are open at the
    same time, so wandb keeps one run per sink). The config is checked whole first
    (:func:`training.validation.validate`: configs built in code too)."""
    config = validate(config)
    run_dir = run_directory(config)
    claim = rundir.claim_run(run_dir, config.output_dir, overwrite=overwrite,
                             changed_keys=lambda: changed_keys(run_dir, config),
                             earlier_version=lambda done: _earlier_version_run(run_dir, config, done))
    if claim.finished is not None:
        return {**claim.finished, "skipped": True}
    try:
        return _open_locked(config, run_dir, claim.state, claim.lock, overwrite=overwrite,
                            concurrent=concurrent)
    except BaseException:
        if claim.lock is not None:
            claim.lock.release()
        raise


def _earlier_version_run(run_dir: Path, config: ExperimentConfig, summary: dict[str, Any]) -> bool:
    """Whether an unmarked folder holding a complete summary.json is a finished run of this
    config made by a version of the tool from before the marker: its config.yaml is a regular
    file holding this config (:func:`changed_keys` finds no difference) and the summary names this
    run. Another program's summary.json with the same keys is not (it is refused as not ours)."""
    return (rundir.entry_kind(run_dir / CONFIG_FILE) == "file" and not changed_keys(run_dir, config)
            and summary.get("name") == config.name)


def _open_locked(config: ExperimentConfig, run_dir: Path, state: str, lock, *, overwrite: bool,
                 concurrent: bool) -> RunSession:
    """:func:`open_run` once the run path is checked (and, when marked, locked)."""
    started = time.perf_counter()

    # Everything that can fail on the user's input happens before the run directory exists.
    device = resolve_device(config.device)
    data, _, trainer = build_components(config, device)
    # The model as initialized (or loaded from model.weights), to tell at the end whether training
    # changed it at all (MODEL_UNCHANGED).
    initial_state = {key: value.detach().clone()
                     for key, value in trainer.base_model().state_dict().items()}
    evaluator = TestSetEvaluator(data, device, config.training.eval_batch_size, config.evaluation)
    # The validation set (data.val_fraction): the same metrics, val/-prefixed, in the same row.
    val_evaluator = (TestSetEvaluator(data, device, config.training.eval_batch_size,
                                      config.evaluation, split="val")
                     if data.has_validation else None)
    selector = ModelSelector(config, units=trainer.units, eval_every=trainer.eval_every,
                             has_validation=data.has_validation,
                             first_unit=trainer.first_selectable_unit)

    resume_point = (None if overwrite or state != rundir.MARKED
                    else checkpoint.find_resumable(run_dir, config, trainer, selector))
    made = None  # the folders a fresh start made: what an input error removes again
    if resume_point is None:
        made, lock = _fresh_run_directory(run_dir, config, state, lock)
    else:  # time/wall_s adds this process's time to the interrupted run's
        started -= resume_point.wall_s
    first_unit = 0 if resume_point is None else resume_point.step
    try:
        sink = MetricsSink(run_dir, run_name=config.name, config=records_config(config),
                           tensorboard=config.logging.tensorboard,
                           wandb_mode=resolve_wandb_mode(config.logging.wandb.mode),
                           wandb_project=config.logging.wandb.project,
                           wandb_entity=config.logging.wandb.entity,
                           wandb_group=config.logging.wandb.group,
                           resume_step=None if resume_point is None else first_unit,
                           wandb_concurrent=concurrent,
                           wandb_argv=recorded_argv(config) if withholds_seed(config) else None)
    except BaseException:
        lock.release()
        raise
    return RunSession(config=config, run_dir=run_dir, device=device, data=data, trainer=trainer,
                      evaluator=evaluator, val_evaluator=val_evaluator, selector=selector,
                      sink=sink, started=started, first_unit=first_unit, made=made,
                      adopted_empty=state == rundir.EMPTY, lock=lock, initial_state=initial_state)


@dataclass
class RunSession:
    """One open run: built, its run directory made (or resumed) and its sink open, trained unit by
    unit by whoever holds it (:func:`run`, or :mod:`training.stacking` for several at once)."""

    config: ExperimentConfig
    run_dir: Path
    device: torch.device
    data: Any
    trainer: Any
    evaluator: TestSetEvaluator
    val_evaluator: TestSetEvaluator | None
    selector: ModelSelector
    sink: MetricsSink
    started: float
    first_unit: int
    made: list[Path] | None
    adopted_empty: bool
    lock: rundir.RunLock | None = None
    initial_state: dict[str, torch.Tensor] | None = None
    row: dict[str, Any] = field(default_factory=dict)
    y_score: Any = None
    y_pred: Any = None

    def train_to_end(self) -> dict[str, Any]:
        """Train the remaining units with the run's own trainer, then :meth:`finish`."""
        trainer = self.trainer
        for unit in progress(range(self.first_unit, trainer.units), desc=self.config.name,
                             mode=self.config.logging.progress):
            self.record_unit(unit, trainer.train_unit(unit))
        return self.finish()

    def record_unit(self, unit: int, train_metrics: dict[str, Any]) -> None:
        """After the trainer trained ``unit``: score the test (and validation) set when due, log the
        row, and save a checkpoint where the test set was just scored."""
        config, trainer = self.config, self.trainer
        train_counts = {f"data/train_count/group={g}": n
                        for g, n in self.data.train_count_by_group.items()}
        row = {**train_counts, **train_metrics}
        evaluated = (unit + 1) % trainer.eval_every == 0 or unit + 1 == trainer.units
        if evaluated:
            self.y_score = self.evaluator.scores(trainer.model)
            self.y_pred = trainer.method.postprocess(self.y_score, self.evaluator.minority,
                                                     config.evaluation.threshold)
            row.update(self.evaluator.metrics(self.y_score, self.y_pred))
            if self.val_evaluator is not None:
                val_score = self.val_evaluator.scores(trainer.model)
                row.update(self.val_evaluator.metrics(val_score, trainer.method.postprocess(
                    val_score, self.val_evaluator.minority, config.evaluation.threshold)))
            self.selector.observe(unit, row, self.y_score, self.y_pred, trainer)
        row.update(trainer.privacy_metrics())
        row["time/wall_s"] = time.perf_counter() - self.started
        row["time/train_samples_per_s"] = (trainer.train_samples / trainer.train_seconds
                                           if trainer.train_seconds > 0 else None)
        self.sink.log(unit + 1, row if config.logging.private_stats
                      else without_non_private_statistics(row))
        self.row = row
        # A checkpoint where the test set was just scored (every epoch; every eval_every rounds),
        # so a resumed run restarts from a logged, evaluated state. None after the last unit: its
        # results go straight into summary.json, and a kill before that reruns the last stretch.
        if evaluated and unit + 1 < trainer.units:
            checkpoint.save_checkpoint(self.run_dir, step=unit + 1,
                                       wall_s=time.perf_counter() - self.started,
                                       trainer=trainer, selection=self.selector.state_dict(),
                                       config=config)

    @contextlib.contextmanager
    def closing_on_error(self):
        """Close the sink when training fails; an input error removes what a fresh start made."""
        try:
            yield
        except BaseException as error:
            self.abort(error)
            raise

    def abort(self, error: BaseException) -> None:
        try:
            with contextlib.suppress(OSError):  # a full disk fails the close too: report the first
                self.sink.close(None)
            if isinstance(error, UserInputError) and self.made is not None:
                rundir.discard_fresh_run(self.run_dir, self.made, keep_directory=self.adopted_empty)
        finally:
            if self.lock is not None:
                self.lock.release()

    def finish(self) -> dict[str, Any]:
        """The final model: intervals, predictions and the summary, in that order (summary last)."""
        summary = _write_results(self)
        self.sink.close(summary)
        if self.lock is not None:
            self.lock.release()
        return summary


def _fresh_run_directory(run_dir: Path, config: ExperimentConfig, state: str,
                         lock: rundir.RunLock | None) -> tuple[list[Path], rundir.RunLock]:
    """A marked run directory, locked, holding config.yaml alone of the tool's files; return the
    folders made for it and the lock. A missing directory is made, an empty one adopted, a marked
    one (--overwrite, an interrupted run that cannot resume) cleared of the tool's entries
    (:func:`utils.rundir.start_fresh`)."""
    made, lock = rundir.start_fresh(run_dir, config.output_dir, expected=state, lock=lock)
    try:
        resolved = {**records_config(config), PROVENANCE_KEY: provenance(config)}
        replace_file(run_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False).encode())
    except BaseException:
        lock.release()
        raise
    return made, lock


MODEL_UNCHANGED = ("the model's parameters after training are exactly those it started from: "
                   "this run learned nothing, and its metrics are those of the initial model. "
                   "Typical causes: an update that overflows float32 (privacy.max_grad_norm or "
                   "training.weight_decay far too large, so Adam divides by infinity), or "
                   "training.lr 0. Fix the setting and run again with --overwrite.")


def _unchanged(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> bool:
    return initial.keys() == final.keys() and all(
        torch.equal(initial[key], final[key].detach().to(initial[key].device)) for key in initial)


def _write_results(session: RunSession) -> dict[str, Any]:
    """The end of a run: the selected model's intervals, predictions.csv, model_final.pt and
    summary.json (last, atomically); the resume points are removed."""
    config, data, trainer, evaluator = session.config, session.data, session.trainer, session.evaluator
    run_dir, device, started = session.run_dir, session.device, session.started
    row, y_score, y_pred = session.row, session.y_score, session.y_pred
    # training.select: the chosen unit's model (into the trainer), test scores and decisions and
    # test/ and val/ metrics are the final ones (training.selection); with "last", the last unit's.
    row, y_score, y_pred = session.selector.finish(row, y_score, y_pred, trainer)
    # The final model: intervals, predictions and the summary, in that order (summary last).
    intervals = evaluator.intervals(y_score, y_pred, seed=RunStreams(config).sequence("bootstrap"))
    small_groups = fairness.small_group_warnings(
        {g: row[f"test/count/group={g}"] for g in fairness.GROUPS})
    for message in small_groups:
        print(f"warning: {message}", file=sys.stderr)
    # The trainer's own warnings were printed when it was built; the record keeps them all.
    warnings = [*trainer.warnings, *small_groups]
    if row.get(f"test/{fairness.CONSTANT_PREDICTION}"):
        decisions = y_pred if y_pred is not None else fairness.predictions(
            y_score, config.evaluation.threshold)
        warn_user(CONSTANT_CLASSIFIER.format(unit=row["select/unit"], units=trainer.units,
                                             label=int(decisions[0])), warnings)
    base_model = trainer.base_model()
    if session.initial_state is not None and _unchanged(session.initial_state,
                                                        base_model.state_dict()):
        warn_user(MODEL_UNCHANGED, warnings)
    facts = dict(trainer.privacy_facts)
    if row["privacy/epsilon"] == float("inf"):  # no noise: nothing is private
        facts["privacy/private"] = False
    # Which streams the run drew from (utils.seeding): runs of equal identity and seed share them.
    facts["streams/identity"] = run_identity(config)
    facts["privacy/paired_streams"] = config.privacy.private and config.privacy.paired_streams
    if config.privacy.private and fitted_preprocessing(data):  # statistics of private rows
        facts["privacy/private"] = False
    # Everything read without noise and charged nothing (training.base.public_data_facts).
    facts[PUBLIC_DATA_KEY] = public_data_facts(config, has_validation=data.has_validation,
                                               preprocessing=data.preprocessing,
                                               method=trainer.method)
    # The decisions every metric was computed from (the repair method's post-processing, by
    # default utils.fairness.predictions), so the file and the metrics cannot disagree.
    write_predictions(run_dir / PREDICTIONS_FILE, evaluator.y_true, y_score, y_pred,
                      evaluator.minority)
    if data.preprocessing is not None:  # the feature transform and its sources
        write_json_atomic(run_dir / PREPROCESSING_FILE, data.preprocessing if config.logging.private_stats
                          else without_fitted_parameters(data.preprocessing))
    client_counts = trainer.client_counts
    if client_counts and config.logging.private_stats:  # federated: who holds which group
        write_rows(run_dir / CLIENTS_FILE, client_counts)
    individual = trainer.individual_privacy()  # privacy.individual_accounting (non-private)
    if individual is not None:
        if config.logging.private_stats:
            individual.write(run_dir)
        row = {**row, **individual.metrics}
    checkpoint_dir = run_dir / checkpoint.CHECKPOINT_DIR
    checkpoint_dir.mkdir(exist_ok=True)
    replace_file(checkpoint_dir / "model_final.pt", checkpoint.serialized(base_model.state_dict()))
    summary = {
        **row, **intervals,
        "time/wall_s": time.perf_counter() - started,
        "name": config.name, "seed": None if withholds_seed(config) else config.seed,
        "mode": config.privacy.mode,
        "device": str(device), "units": trainer.units, "warnings": warnings,
        "data/info": data.info, "trainer/info": trainer.info,
        **facts,
    }
    if config.logging.private_stats:
        summary[NON_PRIVATE_LIST_KEY] = sorted(key for key in summary
                                               if is_non_private_statistic(key))
    else:
        summary = without_non_private_statistics(summary)
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    # The run is complete, so the resume points are of no further use; model_final.pt stays.
    for name in (checkpoint.LAST, checkpoint.PREVIOUS):
        (checkpoint_dir / name).unlink(missing_ok=True)
    return summary


def fitted_preprocessing(data) -> bool:
    """Whether some feature transform's parameters were fitted on the data (preprocessing.json)."""
    return data.preprocessing is not None and data.preprocessing["source"] == FITTED
