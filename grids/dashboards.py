"""A grid where researchers look: its report in wandb and TensorBoard, beside its runs.

Every run sends its own records as it trains (:class:`utils.sink.MetricsSink`): wandb gets its
config as dotted keys, its tags and its final metrics as the run's summary; TensorBoard gets its
curves and an HParams session. This module adds the grid's records, written after the report
(``python running.py --report DIR``, and the end of a grid run when wandb is on):

* **wandb**: one *report run* in the grid's group (``job_type: report``) holding every report CSV
  (report.csv, report_methods.csv, report_gap_closed.csv) as a ``wandb.Table`` under ``tables/``,
  every figure as an image under ``figures/``, and report.md as HTML (``report/markdown``, figures
  inlined). Its id is derived from the project and the group (:func:`report_run_id`), so a rerun of
  the report updates that run instead of adding another: online it resumes it; offline each report
  is a new folder in ``DIR/wandb`` holding the same id, which ``wandb sync`` sends to that one run.
  Each report is logged at the step of its time in milliseconds, so a later report comes after an
  earlier one whichever order they are synced in, and the run's panels show the newest.
* **TensorBoard**: the grid-level log directory ``DIR/tb``. :data:`HPARAMS_EVENTS` holds the HParams
  *experiment*: the hyperparameters the dashboard shows (the grid's swept keys, or report.csv's
  setting columns, and the seed when runs differ in it; each with its short name and the domain of
  the runs' values) and the metrics (:data:`utils.sink.FINAL_METRICS` under ``final/``, named as in
  report.md). Without it TensorBoard would show every config key and every scalar tag of every
  run. :data:`REPORT_EVENTS` holds the report's figures as images and report.md as text. Both files
  are rewritten whole (a new file renamed over the old), never appended to.

Which wandb and TensorBoard settings apply is read from the runs' own config.yaml files: the
``logging.wandb`` settings most runs share (resolved as a run resolves them, so ``auto`` is offline
without an API key and ``disabled`` logs nothing), and TensorBoard when any run wrote it. Nothing
here stops a report or a grid: a wandb that cannot start, or a folder that cannot be written, is one
warning line. Nothing is written through a link: a ``DIR/wandb`` or ``DIR/tb`` that is a link or not
a folder is left alone, with a warning.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import csv
import hashlib
import html
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from grids.figures import FIGURES
from grids.report import REPORT_CSV, REPORT_MD
from grids.runs import METRICS
from grids.sweep import short_names
from utils.config import PROVENANCE_KEY
from utils.errors import UserInputError, warn_user
from utils.sink import (
    CONFIG_FILE,
    FINAL_METRICS,
    FINAL_PREFIX,
    TENSORBOARD_DIR,
    flatten,
    is_non_private_statistic,
    resolve_wandb_mode,
    run_hparams,
    start_wandb,
)

WANDB_DIR = "wandb"
WANDB_DATA_DIR = "WANDB_DATA_DIR"  # wandb's environment variable for its data directory
HPARAMS_EVENTS = "events.out.tfevents.hparams"
REPORT_EVENTS = "events.out.tfevents.report"
# Event files are written under a new name TensorBoard never reads (no "tfevents" in it), then
# renamed into place.
PARTIAL_PREFIX = ".dashboards-"

REPORT_RUN_NAME = "report: {group}"
REPORT_TAG = "report"
TABLES, FIGURES_PREFIX, MARKDOWN_KEY = "tables/", "figures/", "report/markdown"
POINTS_KEY = "report/points"
SEED_KEY = "seed"
# report.csv's columns after the setting columns start here.
FIRST_NON_SETTING_COLUMN = "n_seeds"

NOT_OURS = ("{path} is a link or not a folder; the {what} is not written there (the tool never "
            "writes through a link). Move it away to get it.")
PUBLISH_FAILED = "the {what} could not be written ({error}); the report's files are complete."
GRID_REPORT_FAILED = ("the grid's report could not be written for wandb ({error}); "
                      "run python running.py --report {directory} once that is fixed.")


def publish_grid(directory: str | Path, keys: Sequence[str]) -> list[str]:
    """The end of a grid run (``running.py``): with wandb on for its runs, write the report
    (:func:`grids.report.write_report`) and publish it (:func:`publish_report`); otherwise, with
    TensorBoard on, write the HParams experiment of the grid's swept ``keys``. Returns the lines to
    print; a report that cannot be written is a warning (the grid's own outcome stands)."""
    directory = Path(directory)
    configs = run_configs(directory)
    if not configs:
        return []
    if wandb_settings(configs)[0] != "disabled":
        from grids.report import write_report

        try:
            written = write_report(directory)
        except UserInputError as error:
            warn_user(GRID_REPORT_FAILED.format(error=error, directory=directory))
            return []
        return [f"wrote {path}" for path in written] + publish_report(directory, written)
    if any(config.get("logging.tensorboard") for config in configs):
        path = _guarded("TensorBoard HParams experiment",
                        lambda: write_hparams_experiment(directory / TENSORBOARD_DIR, keys, configs))
        return [f"wrote {path}"] if path else []
    return []


def publish_report(directory: str | Path, written: Sequence[Path]) -> list[str]:
    """Publish a report just written into ``directory`` (``written``: the files
    :func:`grids.report.write_report` returned) to TensorBoard's grid-level log directory and to
    the wandb report run, as the runs' settings ask (module docstring). Returns the lines to print."""
    directory = Path(directory)
    configs = run_configs(directory)
    if not configs:
        return []
    lines = []
    if any(config.get("logging.tensorboard") for config in configs):
        logdir = directory / TENSORBOARD_DIR
        keys = report_keys(written)
        for what, write in (
                ("TensorBoard HParams experiment", lambda: write_hparams_experiment(logdir, keys, configs)),
                ("TensorBoard report", lambda: write_report_events(logdir, written))):
            if path := _guarded(what, write):
                lines.append(f"wrote {path}")
    if line := log_report_run(directory, written, configs):
        lines.append(line)
    return lines


def run_configs(directory: Path) -> list[dict[str, Any]]:
    """The flat configs of the run directories in ``directory`` (subfolders holding config.yaml),
    those that cannot be read left out (the report names them)."""
    configs = []
    for path in sorted(directory.glob(f"*/{CONFIG_FILE}")):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(raw, dict):
            raw.pop(PROVENANCE_KEY, None)
            configs.append(flatten(raw))
    return configs


def wandb_settings(configs: Iterable[Mapping[str, Any]]) -> tuple[str, str, str | None, str | None]:
    """``(mode, project, entity, group)`` of the report run: the ``logging.wandb`` settings most
    runs share, the mode resolved as a run resolves it (:func:`utils.sink.resolve_wandb_mode`)."""
    counts = collections.Counter(
        (config.get("logging.wandb.mode", "auto"), config.get("logging.wandb.project", "dp-fairness"),
         config.get("logging.wandb.entity"), config.get("logging.wandb.group")) for config in configs)
    (mode, project, entity, group), _ = counts.most_common(1)[0]
    return resolve_wandb_mode(str(mode)), str(project), entity, group


def report_run_id(project: str, group: str) -> str:
    """The report run's wandb id: the same for every report of one group in one project."""
    digest = hashlib.sha256(f"{project}\0{group}".encode()).hexdigest()
    return f"report-{digest[:16]}"


def report_keys(written: Iterable[Path]) -> list[str]:
    """report.csv's setting columns (the keys in which its points differ): the HParams columns."""
    for path in written:
        if path.name == REPORT_CSV:
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            return header[:header.index(FIRST_NON_SETTING_COLUMN)] \
                if FIRST_NON_SETTING_COLUMN in header else []
    return []


# --------------------------------------------------------------------------------------------------
# TensorBoard


def write_hparams_experiment(logdir: Path, keys: Sequence[str],
                             configs: Sequence[Mapping[str, Any]]) -> Path:
    """The HParams experiment of a grid, :data:`HPARAMS_EVENTS` in ``logdir``: ``keys`` (and the
    seed, where the runs have several) as hyperparameters, each with its short name
    (:func:`grids.sweep.short_names`) and the domain of the runs' values (numbers: their range;
    text and flags: the values seen; a mix of kinds: none), and the final metrics the runs record
    (the statistics ``logging.private_stats: false`` withholds are left out when no run records
    them)."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    sessions = [run_hparams(config) for config in configs]
    names = [key for key in keys if key != SEED_KEY]
    if len({session.get(SEED_KEY) for session in sessions} - {None}) > 1:
        names.append(SEED_KEY)
    short = short_names(names)
    hparams = [hp.HParam(name, _domain([session[name] for session in sessions if name in session]),
                         display_name=short[name], description=name) for name in names]
    private_stats = any(config.get("logging.private_stats", True) for config in configs)
    metrics = [hp.Metric(FINAL_PREFIX + key, display_name=METRICS.get(key, key), description=key)
               for key in FINAL_METRICS if private_stats or not is_non_private_statistic(key)]
    return _write_events(logdir / HPARAMS_EVENTS, [hp.hparams_config_pb(
        hparams=hparams, metrics=metrics, time_created_secs=time.time())])


def _domain(values: list[Any]):
    """The HParams domain of one hyperparameter's values (of :func:`utils.sink.hparam_value`)."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    distinct = sorted(set(values), key=repr)
    if distinct and all(isinstance(value, bool) for value in distinct):
        return hp.Discrete(distinct)
    if distinct and all(isinstance(value, (int, float)) and not isinstance(value, bool)
                        for value in distinct):
        return hp.RealInterval(float(min(distinct)), float(max(distinct)))
    if distinct and all(isinstance(value, str) for value in distinct):
        return hp.Discrete(distinct)
    return None


def write_report_events(logdir: Path, written: Iterable[Path]) -> Path:
    """The report in TensorBoard, :data:`REPORT_EVENTS` in ``logdir``: every figure as an image
    (``report/<figure>``, Images dashboard) and report.md as text (``report/report.md``, Text
    dashboard, which renders its tables)."""
    from PIL import Image
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import summary_v2 as text_summary

    summaries = []
    for path in written:
        if path.suffix == ".png":
            data = path.read_bytes()
            with Image.open(path) as image:
                width, height = image.size
                channels = len(image.getbands())
            summaries.append(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=f"report/{path.stem}", image=summary_pb2.Summary.Image(
                    height=height, width=width, colorspace=channels, encoded_image_string=data))]))
        elif path.name == REPORT_MD:
            summaries.append(text_summary.text_pb(f"report/{REPORT_MD}", path.read_text()))
    return _write_events(logdir / REPORT_EVENTS, summaries)


def _write_events(path: Path, summaries: Iterable[Any]) -> Path:
    """An event file holding ``summaries`` at step 0, written beside ``path`` and renamed over it
    (the folder is made when missing; a link in its place is refused)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = path.parent
    if os.path.lexists(logdir) and (logdir.is_symlink() or not logdir.is_dir()):
        raise UserInputError(NOT_OURS.format(path=logdir, what="TensorBoard log"))
    logdir.mkdir(exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=logdir)  # new: never a link
    partial = Path(name)
    os.fchmod(descriptor, 0o644)  # readable like the run's own event files (mkstemp makes 0600)
    now = time.time()
    try:
        with os.fdopen(descriptor, "wb") as handle:
            writer = RecordWriter(handle)
            writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            for summary in summaries:
                writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary).SerializeToString())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _guarded(what: str, write) -> Path | None:
    """``write()``, or None with one warning line when it fails on the file system."""
    try:
        return write()
    except (OSError, UserInputError) as error:
        warn_user(PUBLISH_FAILED.format(what=what, error=error))
        return None


# --------------------------------------------------------------------------------------------------
# wandb


def log_report_run(directory: Path, written: Sequence[Path],
                   configs: Sequence[Mapping[str, Any]]) -> str | None:
    """Log the report to its wandb report run (module docstring); the line to print, or None when
    wandb is off for the runs or could not start (one warning)."""
    mode, project, entity, group = wandb_settings(configs)
    if mode == "disabled":
        return None
    wandb_dir = directory / WANDB_DIR
    if os.path.lexists(wandb_dir) and (wandb_dir.is_symlink() or not wandb_dir.is_dir()):
        warn_user(NOT_OURS.format(path=wandb_dir, what="wandb report run"))
        return None
    group = group or directory.resolve().name
    run_id = report_run_id(project, group)
    run, mode = start_wandb(
        mode, reinit="finish_previous", project=project, entity=entity, group=group,
        name=REPORT_RUN_NAME.format(group=group), id=run_id, resume="allow", job_type="report",
        tags=[REPORT_TAG], config={"report.keys": report_keys(written)}, dir=str(directory))
    if run is None:
        return None
    try:
        import wandb

        with _staging_in(wandb_dir):
            _log_report(wandb, run, written)
        run.finish()
    except Exception as error:  # noqa: BLE001 - wandb must never stop a report
        warn_user(PUBLISH_FAILED.format(what="wandb report run", error=f"{type(error).__name__}: {error}"))
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass
        return None
    where = f"{mode} run {run_id} in group {group}"
    return (f"logged the report to wandb ({where}; sync: wandb sync {directory / WANDB_DIR}/offline-run-*-{run_id})"
            if mode == "offline" else f"logged the report to wandb ({where})")


def _log_report(wandb: Any, run: Any, written: Sequence[Path]) -> None:
    """The report's tables, figures and markdown as one step of ``run``, and its size."""
    media: dict[str, Any] = {}
    points = 0
    for path in written:
        if path.suffix == ".csv":
            columns, rows = read_table(path)
            media[TABLES + path.stem] = wandb.Table(columns=columns, data=rows, allow_mixed_types=True)
            points = len(rows) if path.name == REPORT_CSV else points
        elif path.suffix == ".png":
            media[FIGURES_PREFIX + path.stem] = wandb.Image(str(path), caption=FIGURES.get(path.name))
        elif path.name == REPORT_MD:
            media[MARKDOWN_KEY] = wandb.Html(markdown_html(path))
    # The step is the report's time: a later report comes after an earlier one, synced in any order.
    run.log(media, step=time.time_ns() // 1_000_000)
    run.summary[POINTS_KEY] = points


@contextlib.contextmanager
def _staging_in(wandb_dir: Path):
    """wandb keeps a copy of each logged table in its data directory until it is uploaded (for an
    offline run: until ``wandb sync``). Unless the user chose that directory (``WANDB_DATA_DIR``),
    it is the report's wandb folder while the report logs, so nothing lands outside the grid's
    directory."""
    if WANDB_DATA_DIR in os.environ:
        yield
        return
    os.environ[WANDB_DATA_DIR] = str(wandb_dir.resolve())
    try:
        yield
    finally:
        os.environ.pop(WANDB_DATA_DIR, None)


def read_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A report CSV as a table: its header, and its rows with numbers as numbers (so the table
    sorts them), empty cells as None and anything else as text."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader, [])
        return columns, [[_cell(text) for text in row] for row in reader]


def _cell(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


_IMAGE = re.compile(r'<img([^>]*?)src="([^"/]+\.png)"')


def markdown_html(path: Path) -> str:
    """report.md as one HTML page: its tables as tables, its figures (files beside it) inlined,
    so that it reads whole in wandb's HTML panel. Without the ``markdown`` package (TensorBoard
    brings it), the text as it is, preformatted."""
    text = path.read_text()
    try:
        import markdown
    except ImportError:
        return f"<pre>{html.escape(text)}</pre>"
    page = markdown.markdown(text, extensions=["tables"])

    def inline(match: re.Match) -> str:
        figure = path.parent / match.group(2)
        if not figure.is_file() or figure.is_symlink():
            return match.group(0)
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        return f'<img{match.group(1)}style="max-width:100%" src="data:image/png;base64,{data}"'

    return _IMAGE.sub(inline, page)
