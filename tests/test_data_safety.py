"""Data safety: the tool writes and removes only inside ``{output_dir}/{name}``, and only what it wrote.

Every case runs the real command line in this process (``running.main``) on a tiny Adult run and
compares a snapshot of the whole temporary tree before and after: a sentinel file beside
``output_dir`` and a user's folder of files inside it (``thesis_data``) must survive every case, an
input error must exit 2 with one ``error: ...`` line (no traceback) and change nothing at all, and a
run may change its own run directory only. The messages checked are the modules' constants.

wandb is tested for real: offline runs, and a ``wandb.init`` that fails for real, online against a
closed loopback port (``WANDB_BASE_URL=http://127.0.0.1:9``, with wandb's own ``WANDB_INIT_TIMEOUT``
at 2 s so that it fails in about 2 s instead of 90), and every mode at once by pointing wandb at a
service socket that does not exist (``WANDB_SERVICE``), as when wandb's service process dies.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import running
from grids.figures import FIGURES
from grids.release import REPORT_RELEASE_CSV
from grids.report import REPORT_CSV, REPORT_FILE_NOT_OURS, REPORT_LEDGER, REPORT_MD
from grids.runs import IGNORED_STATUS, SKIPPED_RUN
from grids.sweep import STATUS_FILE, STATUS_NOT_OURS
from tests.conftest import cli_args
from tests.test_end_to_end import read_jsonl
from tests.test_legacy import FIXTURE as LEGACY_FIXTURE
from tests.test_resume import Interrupt, interrupt_after
from tests.test_sweep import BASE as GRID_BASE
from tests.test_sweep import SWEEP, write_params
from training import checkpoint
from utils import rundir, sink
from utils.config import NAME_EXPECTED, NUL_IN_STRING, SEED_EXPECTED, SEED_MAX

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "utils" / "params_adult.yaml"
NAME = "adult_dpsgd_eps3"  # the name in params_adult.yaml
# A tiny Adult run: 500 training examples, one epoch of DP-SGD, no bootstrap, no loggers.
TINY = ("training.epochs=1", "data.train_size=500", "evaluation.bootstrap_resamples=0",
        "logging.wandb.mode=disabled", "logging.tensorboard=false", "logging.progress=never",
        "device=cpu")
WANDB_VARIABLES = ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY", "WANDB_BASE_URL",
                   "WANDB_INIT_TIMEOUT", "WANDB_SERVICE")


# --------------------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class World:
    """The temporary tree of one test: ``root/sentinel.txt`` beside ``root/out`` (output_dir), and
    the user's folder ``root/out/thesis_data`` with files in it."""

    root: Path
    out: Path
    user: Path

    def run_dir(self, name: str = NAME) -> Path:
        return self.out / name


def cli(out: Path, *overrides: str, extra: tuple[str, ...] = (), params: Path = PARAMS) -> list[str]:
    return cli_args(params, *TINY, *overrides, output_dir=out, extra=extra)


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed) with its kind, mode and content."""
    state: dict[str, tuple] = {}

    def visit(path: Path) -> None:
        if any(path == s or s in path.parents for s in skip):
            return
        rel = str(path.relative_to(root))
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            state[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            state[rel] = ("dir", stat.S_IMODE(info.st_mode))
            for child in sorted(path.iterdir()):
                visit(child)
        elif not stat.S_ISREG(info.st_mode):  # a FIFO: reading it would block
            state[rel] = ("special", stat.S_IFMT(info.st_mode))
        else:
            state[rel] = ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns,
                          hashlib.sha256(path.read_bytes()).hexdigest())

    visit(root)
    return state


def fits(line: str, template: str, **known) -> bool:
    """Whether ``line`` is ``template`` with the ``known`` fields filled in (any text elsewhere)."""
    pattern = ""
    for literal, field, _spec, conversion in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if field is None:
            continue
        if field in known:
            value = known[field]
            pattern += re.escape(repr(value) if conversion == "r" else str(value))
        else:
            pattern += ".+"
    return re.fullmatch(pattern, line) is not None


def lines(text: str, prefix: str) -> list[str]:
    """The lines of ``text`` that start with ``prefix``, less the tiny run's own constant-classifier
    warning (its DP model may end predicting one class; that is not what these tests check)."""
    return [line for line in text.splitlines()
            if line.startswith(prefix) and "constant classifier" not in line]


def assert_one_error(capsys, code: int, message: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    # The tiny run's own warning (its model may end as a constant classifier) may come first.
    told = [line for line in err.splitlines() if "constant classifier" not in line]
    assert told == [f"error: {message}"], err
    assert "Traceback" not in err


def interrupted_run(out: Path, *overrides: str) -> Path:
    """A real 2-epoch run stopped after epoch 2 was logged: checkpoints/last.pt is after unit 1."""
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupt):
            running.main(cli(out, "training.epochs=2", *overrides))
    run_dir = out / NAME
    assert checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt").step == 1
    assert not (run_dir / "summary.json").exists()
    return run_dir


def complete_summary(run_dir: Path) -> dict:
    summary, problem = rundir.read_summary(run_dir / "summary.json")
    assert problem is None and summary is not None
    return summary


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    root = tmp_path / "world"
    out = root / "out"
    user = out / "thesis_data"
    (user / "chapters").mkdir(parents=True)
    (user / "notes.txt").write_text("three years of work\n")
    (user / "chapters" / "one.tex").write_text("\\chapter{One}\n")
    (root / "sentinel.txt").write_text("beside output_dir\n")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for variable in WANDB_VARIABLES:
        if variable != "WANDB_SERVICE":  # wandb's own link to its running service: left as it is
            monkeypatch.delenv(variable, raising=False)
    # Never a real server (tests/conftest.py): wandb may have cached these at its first set-up.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    monkeypatch.chdir(tmp_path)  # anything relative lands in the temporary tree
    return World(root, out, user)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[int, Path]:
    """Two complete tiny runs, seeds 0 and 1, to copy from."""
    base = tmp_path_factory.mktemp("finished")
    runs = {}
    for seed in (0, 1):
        assert running.main(cli(base / f"seed{seed}", f"seed={seed}")) == 0
        runs[seed] = base / f"seed{seed}" / NAME
    return runs


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """An interrupted run to copy from (last.pt after unit 1 of 2)."""
    return interrupted_run(tmp_path_factory.mktemp("interrupted") / "out")


# --------------------------------------------------------------------------------------------------
# 1. Names, seeds and output_dir: refused by the config check, before anything is written


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "a\0b", "x" * 300, ""],
                         ids=["dotdot", "dot", "slash", "dotdot-slash", "nul", "300-chars", "empty"])
def test_a_name_that_is_not_one_plain_path_component_is_refused(world, capsys, name):
    before = snapshot(world.root)
    code = running.main(cli(world.out, f"name={json.dumps(name)}"))
    # A NUL is refused for every string key, before the name's own check.
    expected = (f"name: {NUL_IN_STRING}" if "\0" in name
                else f"name: got {name!r}; expected {NAME_EXPECTED}.")
    assert_one_error(capsys, code, expected)
    assert snapshot(world.root) == before


def test_a_grid_named_dotdot_is_refused(world, capsys):
    params = write_params(world.root, {**GRID_BASE, "name": "..", "output_dir": str(world.out),
                                       "sweep": SWEEP})
    before = snapshot(world.root)
    code = running.main(["--params", str(params)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: grid point (")
    assert err.rstrip("\n").endswith(f"name: got '..'; expected {NAME_EXPECTED}.")
    assert snapshot(world.root) == before


def test_a_grid_whose_output_dir_is_a_file_is_refused(world, capsys):
    blocker = world.root / "results.txt"
    blocker.write_text("not a folder\n")
    params = write_params(world.root, {**GRID_BASE, "output_dir": str(blocker), "sweep": SWEEP})
    before = snapshot(world.root)
    code = running.main(["--params", str(params)])
    assert_one_error(capsys, code, rundir.OUTPUT_DIR_NOT_A_DIRECTORY.format(output=str(blocker),
                                                                            blocker=blocker))
    assert snapshot(world.root) == before


def test_a_legacy_file_named_dotdotdot_yaml_gets_a_plain_name(world, capsys):
    params = world.root / "...yaml"  # its stem is "..": the run would have been output_dir/..
    params.write_text(LEGACY_FIXTURE.read_text())
    before = snapshot(world.root)
    code = running.main(["--params", str(params), "--set", f"output_dir={world.out}", "--dry-run"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(world.out / "__")
    assert snapshot(world.root) == before


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 1099511627776])
def test_a_seed_outside_32_bits_is_refused(world, capsys, seed):
    before = snapshot(world.root)
    code = running.main(cli(world.out, f"seed={seed}"))
    assert_one_error(capsys, code, f"seed: got {seed}; expected {SEED_EXPECTED}.")
    assert snapshot(world.root) == before
    assert running.main(cli(world.out, f"seed={SEED_MAX}", extra=("--dry-run",))) == 0


def test_output_dir_with_a_nul_is_refused(world, capsys):
    before = snapshot(world.root)
    output = f"{world.out}\0x"
    code = running.main(cli(world.out, f"output_dir={json.dumps(output)}"))
    assert_one_error(capsys, code, f"output_dir: {NUL_IN_STRING}")
    assert snapshot(world.root) == before


@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "under-a-file"])
def test_output_dir_that_is_or_lies_under_a_file_is_refused(world, capsys, under):
    blocker = world.root / "results.txt"
    blocker.write_text("not a folder\n")
    output = blocker / "runs" if under else blocker
    before = snapshot(world.root)
    code = running.main(cli(output))
    assert_one_error(capsys, code, rundir.OUTPUT_DIR_NOT_A_DIRECTORY.format(output=str(output),
                                                                            blocker=blocker))
    assert snapshot(world.root) == before


def test_output_dir_that_cannot_be_created_leaves_nothing_behind(world, capsys):
    # Root passes every permission check, so this one fails for another real reason: a folder
    # name over the file system's 255-byte limit, two levels below folders that do not exist yet.
    too_long = world.root / "new" / ("y" * 300)
    output = too_long / "runs"
    before = snapshot(world.root)
    code = running.main(cli(output))
    assert_one_error(capsys, code, rundir.CANNOT_CREATE.format(
        output=str(output), path=too_long, reason=os.strerror(errno.ENAMETOOLONG)))
    assert snapshot(world.root) == before  # "new", made on the way, was removed again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway; the "
                    "cannot-be-created case covers the failure path")
def test_output_dir_that_is_not_writable_is_refused(world, capsys):
    locked = world.root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = snapshot(world.root)
        code = running.main(cli(locked / "runs"))
        assert_one_error(capsys, code, rundir.OUTPUT_DIR_NOT_WRITABLE.format(
            output=str(locked / "runs"), where=locked))
        assert snapshot(world.root) == before
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------------------------------
# The run path: only the tool's marked directories are written to or removed


def _make_run_path(world: World, kind: str) -> tuple[str, str]:
    """Put something that is not the tool's at a run path; return (name, message template)."""
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("precious\n")
    if kind == "user-folder":
        return "thesis_data", rundir.NOT_OURS
    if kind == "file":
        (world.out / "afile").write_text("a file, not a folder\n")
        return "afile", rundir.RUN_PATH_IS_FILE
    if kind == "link-to-folder":
        (world.out / "linked").symlink_to(elsewhere, target_is_directory=True)
        return "linked", rundir.RUN_PATH_IS_LINK
    if kind == "link-to-file":
        (world.out / "linked").symlink_to(elsewhere / "data.csv")
        return "linked", rundir.RUN_PATH_IS_LINK
    if kind == "broken-link":
        (world.out / "linked").symlink_to(world.root / "nowhere")
        return "linked", rundir.RUN_PATH_IS_LINK
    if kind == "broken-summary-no-marker":  # a folder of someone else's with a summary.json
        (world.out / "other").mkdir()
        (world.out / "other" / "summary.json").write_text("{}")
        return "other", rundir.NOT_OURS
    raise AssertionError(kind)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("kind", ["user-folder", "file", "link-to-folder", "link-to-file",
                                  "broken-link", "broken-summary-no-marker"])
def test_what_is_not_the_tools_is_never_touched(world, capsys, kind, overwrite):
    name, template = _make_run_path(world, kind)
    before = snapshot(world.root)
    code = running.main(cli(world.out, f"name={name}", extra=("--overwrite",) if overwrite else ()))
    assert_one_error(capsys, code, template.format(path=world.out / name, marker=rundir.MARKER_FILE))
    assert snapshot(world.root) == before


def test_an_empty_folder_is_adopted(world, capsys):
    empty = world.out / "prepared"
    empty.mkdir()
    before = snapshot(world.root, skip=(empty,))
    assert running.main(cli(world.out, "name=prepared")) == 0
    assert rundir.is_marked(empty) and complete_summary(empty)["name"] == "prepared"
    assert snapshot(world.root, skip=(empty,)) == before


def test_overwrite_removes_only_the_tools_own_files(world, finished, capsys):
    run_dir = world.run_dir()
    shutil.copytree(finished[0], run_dir)
    (run_dir / "my_notes.md").write_text("why this run matters\n")
    before = snapshot(world.root, skip=(run_dir,))
    old = complete_summary(run_dir)["time/wall_s"]
    assert running.main(cli(world.out, extra=("--overwrite",))) == 0
    assert complete_summary(run_dir)["time/wall_s"] != old  # trained again
    assert (run_dir / "my_notes.md").read_text() == "why this run matters\n"
    assert snapshot(world.root, skip=(run_dir,)) == before


# --------------------------------------------------------------------------------------------------
# 2. summary.json is checked before it is trusted


@pytest.mark.parametrize("content", [b'{"name": "adult_dp', b"", b"{}", b"[1, 2]", b'"done"',
                                     b"\xff\xfe\x00"],
                         ids=["cut-short", "empty", "empty-object", "list", "string", "binary"])
def test_a_broken_summary_makes_an_interrupted_run_that_is_trained_again(world, finished, capsys,
                                                                         content):
    run_dir = world.run_dir()
    shutil.copytree(finished[0], run_dir)
    (run_dir / "summary.json").write_bytes(content)
    before = snapshot(world.root, skip=(run_dir,))
    code = running.main(cli(world.out))
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = lines(err, "warning: ")
    assert len(warnings) == 1 and "Traceback" not in err
    assert fits(warnings[0], "warning: " + rundir.SUMMARY_BROKEN, path=run_dir / "summary.json")
    summary = complete_summary(run_dir)
    assert summary["name"] == NAME and [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1]
    assert snapshot(world.root, skip=(run_dir,)) == before


def test_a_complete_run_is_skipped_and_left_as_it_is(world, finished, capsys):
    run_dir = world.run_dir()
    shutil.copytree(finished[0], run_dir)
    before = snapshot(world.root)
    assert running.main(cli(world.out)) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.out and captured.err == ""  # moved: no "different config"
    assert snapshot(world.root) == before


# --------------------------------------------------------------------------------------------------
# A folder of runs moved elsewhere resumes (it used to be "a different config" and was deleted)


def test_a_moved_folder_of_runs_resumes_and_then_skips(world, capsys):
    run_dir = interrupted_run(world.out)
    kept_row = read_jsonl(run_dir / "metrics.jsonl")[0]
    moved = world.root / "moved"
    os.rename(world.out, moved)
    capsys.readouterr()
    before = snapshot(world.root, skip=(moved / NAME,))
    assert running.main(cli(moved, "training.epochs=2")) == 0
    err = capsys.readouterr().err
    assert f"resuming {moved / NAME} from last.pt after unit 1" in err
    # No warning but the tiny run's own (its model may end as a constant classifier).
    assert not [line for line in err.splitlines()
                if line.startswith("warning") and "constant classifier" not in line]
    rows = read_jsonl(moved / NAME / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and rows[0] == kept_row  # epoch 1 was kept
    assert complete_summary(moved / NAME)["privacy/steps"] is not None
    assert snapshot(world.root, skip=(moved / NAME,)) == before

    again = world.root / "moved_again"
    os.rename(moved, again)
    before = snapshot(world.root)
    assert running.main(cli(again, "training.epochs=2")) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.out and captured.err == ""
    assert snapshot(world.root) == before


# --------------------------------------------------------------------------------------------------
# 3. --report over files it cannot use


@pytest.mark.parametrize(("where", "content"), [
    ("summary.json", b'{"test/accuracy": 0.'), ("summary.json", b"[]"), ("summary.json", b"{}"),
    ("config.yaml", b"data: [unclosed\n"), ("config.yaml", b"- a\n- list\n"),
    ("config.yaml", b"\xff\xfe"),
    (STATUS_FILE, b'{"points": [{"lab'), (STATUS_FILE, b"[]"), (STATUS_FILE, b'{"points": [1]}'),
], ids=["summary-cut", "summary-list", "summary-empty", "config-bad-yaml", "config-list",
        "config-binary", "status-cut", "status-list", "status-bad-points"])
def test_report_skips_what_it_cannot_read_and_reports_the_rest(world, finished, capsys, where,
                                                                content):
    runs = world.out / "grid"
    for seed, source in finished.items():
        shutil.copytree(source, runs / f"seed={seed}")
    if where == STATUS_FILE:
        broken = runs / STATUS_FILE
        template = IGNORED_STATUS
    else:
        shutil.copytree(finished[0], runs / "broken")  # a third copy of seed 0: if read, seeds 0 0 1
        broken = runs / "broken" / where
        template = SKIPPED_RUN
    broken.write_bytes(content)
    outputs = tuple(runs / name for name in (REPORT_MD, REPORT_CSV, REPORT_RELEASE_CSV, *FIGURES,
                                             REPORT_LEDGER))
    before = snapshot(world.root, skip=outputs)
    code = running.main(["--report", str(runs)])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = lines(err, "warning: ")
    assert len(warnings) == 1 and "Traceback" not in err
    assert fits(warnings[0], "warning: " + template, path=broken)
    with (runs / REPORT_CSV).open() as handle:
        (row,) = csv.DictReader(handle)  # one point
    assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
    assert snapshot(world.root, skip=outputs) == before


@pytest.mark.parametrize("name", [REPORT_MD, REPORT_CSV, REPORT_RELEASE_CSV, *FIGURES])
def test_report_never_overwrites_a_file_it_did_not_write(world, finished, capsys, name):
    runs = world.out / "grid"
    for seed, source in finished.items():
        shutil.copytree(source, runs / f"seed={seed}")
    (runs / name).write_bytes(b"the user's own file\n")
    before = snapshot(world.root)
    code = running.main(["--report", str(runs)])
    assert_one_error(capsys, code, REPORT_FILE_NOT_OURS.format(path=runs / name, ledger=REPORT_LEDGER))
    assert snapshot(world.root) == before
    # Its own earlier report is overwritten: a second report over a first one works.
    (runs / name).unlink()
    assert running.main(["--report", str(runs)]) == 0
    first = (runs / REPORT_CSV).read_bytes()
    capsys.readouterr()
    assert running.main(["--report", str(runs)]) == 0
    assert (runs / REPORT_CSV).read_bytes() == first


def test_a_grid_folder_whose_status_file_is_not_the_tools_is_refused(world, capsys):
    grid_dir = world.out / GRID_BASE["name"]
    grid_dir.mkdir(parents=True)
    (grid_dir / STATUS_FILE).write_text('{"my": "notes"}\n')
    params = write_params(world.root, {**GRID_BASE, "output_dir": str(world.out), "sweep": SWEEP})
    before = snapshot(world.root)
    code = running.main(["--params", str(params)])
    assert_one_error(capsys, code, STATUS_NOT_OURS.format(path=grid_dir / STATUS_FILE))
    assert snapshot(world.root) == before


# --------------------------------------------------------------------------------------------------
# 4. A checkpoint after a unit this run does not have


@pytest.mark.parametrize("step", [2, 7, 0, -3])
def test_a_checkpoint_step_outside_the_run_starts_afresh(world, interrupted, capsys, step):
    run_dir = world.run_dir()
    shutil.copytree(interrupted, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, map_location="cpu", weights_only=True)
    torch.save({**payload, "step": step}, last)
    before = snapshot(world.root, skip=(run_dir,))
    code = running.main(cli(world.out, "training.epochs=2"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "resuming" not in err
    assert ("warning: checkpoint not usable, "
            + checkpoint.STEP_OUT_OF_RANGE.format(path=last, step=step, units=2, last=1)) in err
    assert f"warning: no usable checkpoint in {run_dir / 'checkpoints'}" in err
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    complete_summary(run_dir)
    assert snapshot(world.root, skip=(run_dir,)) == before


# --------------------------------------------------------------------------------------------------
# 5. wandb: the environment's choice is honoured, and a wandb that cannot start never stops a run


@pytest.fixture
def wandb_env(world, monkeypatch) -> World:
    """A configured API key, and a wandb server address that is a closed loopback port, so that
    any attempt to go online fails at once instead of reaching a server; init gives up after 2 s."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    return world


def wandb_runs(run_dir: Path) -> tuple[list[str], list[str]]:
    """(offline, online) run folders wandb made in the run directory."""
    folders = [path.name for path in (run_dir / "wandb").glob("*run-*")]
    return ([f for f in folders if f.startswith("offline-run-")],
            [f for f in folders if f.startswith("run-")])


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "online"),
    ({"WANDB_MODE": "offline"}, "offline"),
    ({"WANDB_MODE": "dryrun"}, "offline"),
    ({"WANDB_MODE": "Disabled"}, "disabled"),
    ({"WANDB_DISABLED": "true", "WANDB_MODE": "online"}, "disabled"),
    ({"WANDB_DISABLED": "1"}, "disabled"),
    ({"WANDB_MODE": "bogus"}, "online"),  # not a mode: the key decides
])
def test_wandb_auto_resolves_from_the_environment(wandb_env, monkeypatch, env, expected):
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert sink.resolve_wandb_mode("auto") == expected
    assert sink.resolve_wandb_mode("offline") == "offline"  # an explicit mode is the user's


@pytest.mark.parametrize(("env", "expected"), [
    ({"WANDB_MODE": "offline"}, "offline"),
    ({"WANDB_MODE": "dryrun"}, "offline"),
    ({"WANDB_DISABLED": "true"}, "disabled"),
])
def test_wandb_auto_honours_the_environment_in_a_real_run(wandb_env, monkeypatch, capsys, env,
                                                          expected):
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    world = wandb_env
    before = snapshot(world.root, skip=(world.run_dir(),))
    started = time.perf_counter()
    code = running.main(cli(world.out, "logging.wandb.mode=auto"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert not lines(err, "warning: wandb") and "Traceback" not in err
    assert time.perf_counter() - started < 60  # it used to hang ~90 s online, then fail
    offline, online = wandb_runs(world.run_dir())
    assert online == []
    assert len(offline) == (1 if expected == "offline" else 0)
    complete_summary(world.run_dir())
    assert snapshot(world.root, skip=(world.run_dir(),)) == before


@pytest.mark.parametrize("mode", ["online", "auto"])
def test_wandb_that_cannot_go_online_falls_back_to_offline_and_the_run_completes(wandb_env, capsys,
                                                                                  mode):
    world = wandb_env
    before = snapshot(world.root, skip=(world.run_dir(),))
    started = time.perf_counter()
    code = running.main(cli(world.out, f"logging.wandb.mode={mode}"))
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = lines(err, "warning: ")
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert fits(warnings[0], "warning: " + sink.WANDB_START_FAILED,
                outcome=sink.WANDB_FALLBACK_TO.format(mode="offline"))
    assert "127.0.0.1:9" in warnings[0]  # wandb's own reason, on the one line
    assert seconds < 30, f"the failing wandb.init took {seconds:.1f} s"
    offline, _ = wandb_runs(world.run_dir())
    assert len(offline) == 1
    assert complete_summary(world.run_dir())["name"] == NAME
    assert snapshot(world.root, skip=(world.run_dir(),)) == before


@pytest.fixture
def dead_wandb_service(tmp_path):
    """Point wandb at a service socket that does not exist, so that every wandb.init fails (as when
    wandb's service process has died); afterwards wandb starts a service of its own again."""
    import wandb

    wandb.teardown()
    os.environ["WANDB_SERVICE"] = f"3-{os.getpid()}-unix-{tmp_path / 'no-such-wandb.sock'}"
    yield
    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)


def test_wandb_that_cannot_start_at_all_is_turned_off_and_the_run_completes(wandb_env,
                                                                            dead_wandb_service,
                                                                            capsys):
    world = wandb_env
    before = snapshot(world.root, skip=(world.run_dir(),))
    code = running.main(cli(world.out, "logging.wandb.mode=online"))
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = lines(err, "warning: ")
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert fits(warnings[0], "warning: " + sink.WANDB_START_FAILED, outcome=sink.WANDB_OFF)
    assert "online mode: " in warnings[0] and "offline mode: " in warnings[0]
    # wandb may have made a run folder before it failed, but it holds no wandb record.
    assert not list((world.run_dir() / "wandb").glob("*/*.wandb"))
    assert complete_summary(world.run_dir())["name"] == NAME
    assert snapshot(world.root, skip=(world.run_dir(),)) == before


# --------------------------------------------------------------------------------------------------
# 6. Hostile input, round three (issue 26): links and wrong kinds of entries on resume, locks,
#    interrupts, full disks, another run's checkpoint, another program's summary.json


def _user_file(world: World) -> Path:
    return world.user / "notes.txt"


@pytest.mark.parametrize("kind", ["model_final-link", "last-link", "checkpoints-link", "tb-link",
                                  "link-inside-tb", "metrics-link", "summary-tmp-link"])
def test_resume_never_writes_through_a_link(world, interrupted, capsys, kind):
    """Issue 26: an interrupted run whose checkpoints/model_final.pt (or checkpoints/, tb/, a file
    inside tb/, metrics.jsonl, a temporary name) is a symbolic link to a user's file or folder:
    resuming used to write through it; now every path below the run directory is checked on
    resume as on a fresh start, and nothing is written."""
    run_dir = world.run_dir()
    shutil.copytree(interrupted, run_dir)
    (run_dir / "tb").mkdir(exist_ok=True)
    link = {"model_final-link": run_dir / "checkpoints" / "model_final.pt",
            "last-link": run_dir / "checkpoints" / "last.pt",
            "checkpoints-link": run_dir / "checkpoints",
            "tb-link": run_dir / "tb",
            "link-inside-tb": run_dir / "tb" / "events.out.tfevents.0",
            "metrics-link": run_dir / "metrics.jsonl",
            "summary-tmp-link": run_dir / "summary.json.tmp"}[kind]
    if kind in ("checkpoints-link", "tb-link"):
        shutil.move(link, world.user / link.name)  # the user's folder now holds the real one
        link.symlink_to(world.user / link.name, target_is_directory=True)
    else:
        if os.path.lexists(link):
            link.unlink()
        link.symlink_to(_user_file(world))
    before = snapshot(world.root)
    code = running.main(cli(world.out, "training.epochs=2"))
    assert_one_error(capsys, code, rundir.LINK_IN_RUN_DIR.format(path=link))
    assert snapshot(world.root) == before
    assert running.main(cli(world.out, "training.epochs=2", extra=("--overwrite",))) == 2  # nor --overwrite
    assert snapshot(world.root) == before


@pytest.mark.parametrize(("entry", "make", "kind", "expected"), [
    ("checkpoints/last.pt", "folder", "folder", "file"),
    ("checkpoints/previous.pt", "folder", "folder", "file"),
    ("tb", "file", "file", "folder"),
    ("checkpoints", "file", "file", "folder"),
    ("summary.json", "folder", "folder", "file"),
    ("config.yaml", "fifo", "special file", "file"),
], ids=["last.pt-a-folder", "previous.pt-a-folder", "tb-a-file", "checkpoints-a-file",
        "summary-a-folder", "config-a-fifo"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
def test_a_wrong_kind_of_entry_is_one_clean_error(world, interrupted, capsys, entry, make, kind,
                                                  expected, overwrite):
    """Issue 26: last.pt replaced by a directory failed every rerun with NotADirectoryError; tb/
    a file gave a traceback. Each is now one error naming the path, before anything is written or
    removed, on a resume and under --overwrite alike."""
    run_dir = world.run_dir()
    shutil.copytree(interrupted, run_dir)
    path = run_dir / entry
    if path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if make == "folder":
        (path / "mine").mkdir(parents=True)
    elif make == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("a user's file\n")
    before = snapshot(world.root)
    code = running.main(cli(world.out, "training.epochs=2",
                            extra=("--overwrite",) if overwrite else ()))
    assert_one_error(capsys, code, rundir.ENTRY_WRONG_KIND.format(path=path, kind=kind,
                                                                  expected=expected))
    assert snapshot(world.root) == before


@pytest.mark.parametrize("how", ["not-writable", pytest.param("fails-half-way", marks=pytest.mark.slow)])
def test_overwrite_of_an_undeletable_tb_removes_nothing_first(world, finished, capsys, monkeypatch,
                                                              how):
    """Issue 26: a read-only or undeletable tb/ under --overwrite gave a traceback after the
    finished run had already been cleared. Root ignores permissions, so the fault is simulated:
    os.access says tb/ is not writable (what a read-only folder or file system says), or the
    removal itself fails half-way (what root meets on an immutable file). Either way: one error
    line, and the finished run is still whole (the check comes first), or at worst no longer
    claims to be complete (summary.json is removed first)."""
    run_dir = world.run_dir()
    shutil.copytree(finished[0], run_dir)
    (run_dir / "tb" / "sub").mkdir(parents=True)
    (run_dir / "tb" / "sub" / "events").write_text("x")
    blocked = run_dir / "tb" / "sub"
    if how == "not-writable":
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            False if Path(path) == blocked and mode & os.W_OK else real_access(path, mode, **kw)))
        before = snapshot(world.root)
        code = running.main(cli(world.out, extra=("--overwrite",)))
        assert_one_error(capsys, code, rundir.CANNOT_CLEAR.format(
            path=run_dir / "tb", reason=f"{blocked} is not writable"))
        assert snapshot(world.root) == before
        return
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path) == run_dir / "tb":
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(blocked / "events"))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    code = running.main(cli(world.out, extra=("--overwrite",)))
    assert_one_error(capsys, code, rundir.CANNOT_CLEAR.format(path=blocked / "events",
                                                              reason=os.strerror(errno.EPERM)))
    assert not (run_dir / "summary.json").exists()  # the half-cleared run is not "complete"
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert running.main(cli(world.out)) == 0  # once the fault is gone, it trains again
    complete_summary(run_dir)


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the flock on ``path`` (a marker file) until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(path)!r}, os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\ntime.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("state", ["interrupted", "finished-overwrite"])
def test_a_second_process_on_the_same_run_directory_is_refused(world, interrupted, finished,
                                                               capsys, state):
    """Issue 26: two processes on one config had no lock; one died with FileNotFoundError and both
    trained the same units. Now a second process gets one line (exit 2) and touches nothing."""
    run_dir = world.run_dir()
    shutil.copytree(interrupted if state == "interrupted" else finished[0], run_dir)
    holder = _hold_lock(run_dir / rundir.MARKER_FILE)
    try:
        before = snapshot(world.root)
        code = running.main(cli(world.out, "training.epochs=2" if state == "interrupted" else
                                "training.epochs=1",
                                extra=("--overwrite",) if state != "interrupted" else ()))
        assert_one_error(capsys, code, rundir.RUN_LOCKED.format(path=run_dir,
                                                                marker=rundir.MARKER_FILE))
        assert snapshot(world.root) == before
    finally:
        holder.kill()
        holder.wait()
    rundir.lock_run(run_dir).release()  # the lock died with its holder


def test_a_run_directory_made_meanwhile_by_another_process_is_not_cleared(world, capsys,
                                                                          monkeypatch):
    """Issue 26: two processes starting the same new run: the second finds, after loading its
    data, that the first has made and marked the directory, and stops instead of clearing it."""
    run_dir = world.run_dir()
    from training import experiment

    real = experiment.build_components

    def build_while_another_process_starts(config, device):
        built = real(config, device)
        run_dir.mkdir()
        rundir.write_marker(run_dir)
        (run_dir / "config.yaml").write_text("the other process's\n")
        return built

    monkeypatch.setattr(experiment, "build_components", build_while_another_process_starts)
    code = running.main(cli(world.out))
    assert_one_error(capsys, code, rundir.RUN_LOCKED.format(path=run_dir, marker=rundir.MARKER_FILE))
    assert (run_dir / "config.yaml").read_text() == "the other process's\n"


def test_ctrl_c_during_training_exits_130_with_one_line_and_resumes(world, capsys, monkeypatch):
    """Issue 26: Ctrl-C printed a 50-line KeyboardInterrupt traceback. Now: exit 130, one line
    saying how to continue, and the same command resumes from the last checkpoint."""
    from training import experiment
    from utils.errors import INTERRUPTED

    original = experiment.MetricsSink.log

    def log(self, step, metrics):
        original(self, step, metrics)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment.MetricsSink, "log", log)
    before = snapshot(world.root, skip=(world.run_dir(),))
    code = running.main(cli(world.out, "training.epochs=3"))
    err = capsys.readouterr().err
    assert code == 130
    assert err.splitlines() == [f"interrupted: {INTERRUPTED}"]
    monkeypatch.setattr(experiment.MetricsSink, "log", original)
    assert running.main(cli(world.out, "training.epochs=3")) == 0
    assert f"resuming {world.run_dir()} from last.pt after unit 1" in capsys.readouterr().err
    assert [row["step"] for row in read_jsonl(world.run_dir() / "metrics.jsonl")] == [1, 2, 3]
    assert snapshot(world.root, skip=(world.run_dir(),)) == before


def test_ctrl_c_before_the_run_directory_exists_leaves_nothing(world, capsys, monkeypatch):
    from training import experiment
    from utils.errors import INTERRUPTED

    def interrupted_while_loading(config, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "build_components", interrupted_while_loading)
    before = snapshot(world.root)
    code = running.main(cli(world.out))
    assert code == 130 and capsys.readouterr().err.splitlines() == [f"interrupted: {INTERRUPTED}"]
    assert snapshot(world.root) == before


def _fail_writes_to(monkeypatch, name: str, error_number: int) -> None:
    """os.write fails with ``error_number`` (ENOSPC: a full disk) for the file called ``name``:
    what the kernel answers when the disk fills, without needing a tmpfs or root."""
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
            raise OSError(error_number, os.strerror(error_number))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the open file")
@pytest.mark.parametrize("name", [".last.pt.tmp", *(pytest.param(name, marks=pytest.mark.slow) for name in (
    "summary.json.tmp", "predictions.csv.tmp", "model_final.pt.tmp"))])
def test_a_full_disk_is_one_clean_error_and_leaves_no_temporary_file(world, capsys, monkeypatch,
                                                                      name):
    """Issue 26: a full disk gave a traceback (torch's `enforce fail`, ENOSPC) and left
    .last.pt.tmp behind. Now: one line naming the file and the fix, exit 2, no temporary file, and
    the same command afterwards completes the run (resuming where a checkpoint was saved)."""
    from utils.errors import WRITE_FAILED

    _fail_writes_to(monkeypatch, name, errno.ENOSPC)
    run_dir = world.run_dir()
    code = running.main(cli(world.out, "training.epochs=2"))
    folder = run_dir / "checkpoints" if name.endswith(".pt.tmp") else run_dir
    assert_one_error(capsys, code, WRITE_FAILED.format(
        path=folder / name, reason=os.strerror(errno.ENOSPC),
        fix="The disk is full: free space (or set output_dir on another disk)."))
    assert not list(run_dir.rglob("*.tmp"))
    assert not (run_dir / "summary.json").exists()
    monkeypatch.undo()
    assert running.main(cli(world.out, "training.epochs=2")) == 0
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    complete_summary(run_dir)


def test_a_file_size_limit_is_one_clean_error(world, capsys):
    """Issue 26: `ulimit -f` gave a traceback (EFBIG). A real limit, set in this process (Python
    ignores SIGXFSZ, so the write fails with EFBIG): config.yaml and metrics.jsonl fit under it,
    the checkpoint does not."""
    import resource

    from utils.errors import WRITE_FAILED

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        code = running.main(cli(world.out, "training.epochs=2"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    checkpoints = world.run_dir() / "checkpoints"
    assert_one_error(capsys, code, WRITE_FAILED.format(
        path=checkpoints / ".last.pt.tmp", reason=os.strerror(errno.EFBIG),
        fix="A file size limit stops the write (ulimit -f): raise it."))
    assert not list(world.run_dir().rglob("*.tmp"))


@pytest.mark.slow
def test_a_checkpoint_of_another_seed_is_refused(world, interrupted, capsys, tmp_path):
    """Issue 26: last.pt and previous.pt replaced by an interrupted seed-1 run's of the same
    config resumed ("after unit 3") and gave a summary labelled seed 0 that was seed 1's training.
    Each checkpoint now records its run (config and seed) and is refused for another; the run
    starts afresh and ends as the uninterrupted seed-0 run does."""
    other = interrupted_run(tmp_path / "seed1", "seed=1")
    run_dir = world.run_dir()
    shutil.copytree(interrupted, run_dir)  # seed 0, interrupted after unit 1
    for name in ("last.pt", "previous.pt"):
        shutil.copy(other / "checkpoints" / "last.pt", run_dir / "checkpoints" / name)
    assert running.main(cli(world.out, "training.epochs=2")) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err
    for name in ("last.pt", "previous.pt"):
        assert ("warning: checkpoint not usable, " + checkpoint.OTHER_RUN.format(
            path=run_dir / "checkpoints" / name, keys="seed")) in err
    assert running.main(cli(tmp_path / "plain", "training.epochs=2")) == 0
    ours, plain = complete_summary(run_dir), complete_summary(tmp_path / "plain" / NAME)
    assert {k: v for k, v in ours.items() if not k.startswith("time/")} == \
        {k: v for k, v in plain.items() if not k.startswith("time/")}


@pytest.mark.slow
def test_a_checkpoint_without_a_run_record_is_not_resumed(world, interrupted, capsys):
    run_dir = world.run_dir()
    shutil.copytree(interrupted, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, map_location="cpu", weights_only=True)
    del payload["run"]
    torch.save(payload, last)
    assert running.main(cli(world.out, "training.epochs=2")) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err and f"{last} is incomplete (missing keys)" in err


def test_another_programs_summary_in_an_unmarked_folder_is_not_a_result(world, capsys):
    """Issue 26: an unmarked folder holding another program's summary.json with the six required
    keys was printed as this config's result (exit 0). It is now refused as not the tool's."""
    folder = world.out / NAME
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(
        {key: 0 for key in rundir.SUMMARY_REQUIRED_KEYS} | {"name": NAME}))
    before = snapshot(world.root)
    code = running.main(cli(world.out))
    assert_one_error(capsys, code, rundir.NOT_OURS.format(path=folder, marker=rundir.MARKER_FILE))
    assert snapshot(world.root) == before


def test_a_finished_run_from_before_the_marker_is_still_returned(world, finished, capsys):
    run_dir = world.run_dir()
    shutil.copytree(finished[0], run_dir)
    (run_dir / rundir.MARKER_FILE).unlink()
    before = snapshot(world.root)
    assert running.main(cli(world.out)) == 0
    assert "already complete" in capsys.readouterr().out
    assert snapshot(world.root) == before
    # Its config.yaml is that run's: another seed under the same name is not returned as it.
    code = running.main(cli(world.out, "seed=1"))
    assert_one_error(capsys, code, rundir.NOT_OURS.format(path=run_dir, marker=rundir.MARKER_FILE))


# The report: never over a file it did not write, whole files after an interrupt, one line when the
# folder cannot be written


def _report_world(world: World, finished: dict[int, Path]) -> Path:
    runs = world.out / "grid"
    for seed, source in finished.items():
        shutil.copytree(source, runs / f"seed={seed}")
    return runs


@pytest.mark.parametrize("case", ["users-report-with-the-title", *(
    pytest.param(case, marks=pytest.mark.slow)
    for case in ("figure-replaced-after-a-report", "csv-edited-after-a-report"))])
def test_report_never_overwrites_a_file_whose_content_it_did_not_write(world, finished, capsys,
                                                                        case):
    """Issue 26: --report overwrote a user's own report.md whose first line happened to be
    `# Report: …`, and a gaps.png the user replaced after an earlier report. The report now
    records the SHA-256 of every file it writes and overwrites only those exact contents."""
    from grids.report import REPORT_TITLE

    runs = _report_world(world, finished)
    if case == "users-report-with-the-title":
        target = runs / REPORT_MD
        target.write_text(f"{REPORT_TITLE}my own notes\n\nthree years of work\n")
    else:
        assert running.main(["--report", str(runs)]) == 0
        capsys.readouterr()
        target = runs / ("gaps.png" if case == "figure-replaced-after-a-report" else REPORT_CSV)
        target.write_bytes(target.read_bytes() + b"the user's change\n")
    before = snapshot(world.root)
    code = running.main(["--report", str(runs)])
    assert_one_error(capsys, code, REPORT_FILE_NOT_OURS.format(path=target, ledger=REPORT_LEDGER))
    assert snapshot(world.root) == before


@pytest.mark.parametrize("stop_at", [2, *(pytest.param(n, marks=pytest.mark.slow) for n in (1, 5))])
def test_ctrl_c_during_report_leaves_whole_files_and_the_next_report_works(world, finished, capsys,
                                                                          monkeypatch, stop_at):
    """Issue 26: Ctrl-C during --report left report.csv without report.md, and the next --report
    refused it as "not written by an earlier report" until deleted by hand. Now: exit 130 with one
    line, no staging folder left, every file whole, and the next report overwrites them."""
    from utils.errors import INTERRUPTED_REPORT

    runs = _report_world(world, finished)
    assert running.main(["--report", str(runs)]) == 0  # an earlier report: files to replace
    capsys.readouterr()
    real_replace = os.replace
    placed = []

    def replace(source, target, *args, **kwargs):
        if Path(source).parent.name.startswith(".report-"):
            placed.append(Path(target).name)
            if len(placed) == stop_at:
                raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code = running.main(["--report", str(runs)])
    assert code == 130
    assert capsys.readouterr().err.splitlines() == [f"interrupted: {INTERRUPTED_REPORT}"]
    assert not [path for path in runs.iterdir() if path.name.startswith(".report-")]
    monkeypatch.setattr(os, "replace", real_replace)
    assert running.main(["--report", str(runs)]) == 0, capsys.readouterr().err


def test_report_on_a_folder_that_cannot_be_written_is_one_line(world, finished, capsys,
                                                               monkeypatch):
    """Issue 26: --report on a read-only grid directory gave a PermissionError traceback. Root
    writes anyway, so the fault is simulated twice: os.access says the folder is read-only (the
    check before anything is drawn), and the staging folder's mkdir fails with EACCES (a fault the
    check cannot see: one line naming the folder)."""
    import tempfile

    from grids.report import REPORT_NOT_WRITABLE
    from utils.errors import WRITE_FAILED

    runs = _report_world(world, finished)
    before = snapshot(world.root)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if Path(path) == runs and mode & os.W_OK else real_access(path, mode, **kw)))
    code = running.main(["--report", str(runs)])
    assert_one_error(capsys, code, REPORT_NOT_WRITABLE.format(path=runs))
    monkeypatch.setattr(os, "access", real_access)

    def mkdtemp(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    code = running.main(["--report", str(runs)])
    assert_one_error(capsys, code, WRITE_FAILED.format(
        path=runs, reason=os.strerror(errno.EACCES),
        fix="Permission denied: fix the permissions or set another output_dir."))
    assert snapshot(world.root) == before


# Grids: their directory is the tool's only with its marker, and one process runs a grid at a time


def _grid_params(world: World, **extra) -> Path:
    return write_params(world.root, {**GRID_BASE, "output_dir": str(world.out), "sweep": SWEEP,
                                     **extra})


def test_a_grid_named_like_a_users_folder_is_refused(world, capsys):
    """Issue 26: a grid whose name matched a user's existing unmarked folder got grid_status.json
    written into it. The folder is now refused, and nothing is written into it."""
    from grids.sweep import GRID_MARKER, GRID_NOT_OURS

    params = _grid_params(world, name="thesis_data")
    before = snapshot(world.root)
    code = running.main(["--params", str(params)])
    assert_one_error(capsys, code, GRID_NOT_OURS.format(path=world.user, marker=GRID_MARKER))
    assert snapshot(world.root) == before


def test_a_grid_directory_that_is_a_link_is_refused(world, capsys):
    from grids.sweep import GRID_PATH_IS_LINK

    (world.out / GRID_BASE["name"]).symlink_to(world.user, target_is_directory=True)
    params = _grid_params(world)
    before = snapshot(world.root)
    code = running.main(["--params", str(params)])
    assert_one_error(capsys, code, GRID_PATH_IS_LINK.format(path=world.out / GRID_BASE["name"]))
    assert snapshot(world.root) == before


def test_a_second_process_on_the_same_grid_is_refused(world, capsys):
    """Issue 26: two processes on one grid trained the same points into the same files; the second
    is now refused with one line while the first holds the grid's lock."""
    from grids.sweep import GRID_MARKER

    grid_dir = world.out / GRID_BASE["name"]
    grid_dir.mkdir()
    rundir.write_marker(grid_dir, GRID_MARKER)
    holder = _hold_lock(grid_dir / GRID_MARKER)
    params = _grid_params(world)
    try:
        before = snapshot(world.root)
        code = running.main(["--params", str(params)])
        assert_one_error(capsys, code, rundir.RUN_LOCKED.format(path=grid_dir, marker=GRID_MARKER))
        assert snapshot(world.root) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_grid_from_before_the_grid_marker_is_adopted(world, capsys):
    """A grid directory an earlier version made (its status file, no marker) is still the tool's:
    it is marked and continued."""
    from grids.sweep import GRID_MARKER

    grid_dir = world.out / GRID_BASE["name"]
    grid_dir.mkdir()
    (grid_dir / STATUS_FILE).write_text(json.dumps({"grid": "tiny", "points": [],
                                                    "updated_at": "then"}))
    params = _grid_params(world, sweep={"seed": [0]})
    assert running.main(["--params", str(params)]) == 0
    assert rundir.is_marked(grid_dir, GRID_MARKER) and (grid_dir / "seed=0" / "summary.json").is_file()


@pytest.mark.parametrize(("sweep", "what", "count"), [
    ({"seed": list(range(1000)), "training.lr": [0.001 * (i + 1) for i in range(1000)]},
     "combinations", 1_000_000),
    ({"seed": list(range(101)), "training.lr": [0.001 * (i + 1) for i in range(100)]},
     "runs", 10_100),
], ids=["a-million-points", "just-over-the-run-cap"])
def test_an_unbounded_sweep_is_refused_at_once(world, capsys, sweep, what, count):
    """Issue 26: a sweep of 10^6 points ran --dry-run for minutes with memory climbing (20,000
    points: 30 s). A grid is now capped (MAX_GRID_COMBINATIONS, MAX_GRID_POINTS) and refused in
    well under a second, before any point's config is built."""
    from grids.sweep import GRID_TOO_LARGE, MAX_GRID_COMBINATIONS, MAX_GRID_POINTS

    params = _grid_params(world, sweep=sweep)
    before = snapshot(world.root)
    started = time.perf_counter()
    code = running.main(["--params", str(params), "--dry-run"])
    seconds = time.perf_counter() - started
    limit = MAX_GRID_COMBINATIONS if what == "combinations" else MAX_GRID_POINTS
    spelled = f"{len(sweep['training.lr'])} training.lr x {len(sweep['seed'])} seed"
    assert_one_error(capsys, code, GRID_TOO_LARGE.format(count=count, what=what, spelled=spelled,
                                                         limit=limit))
    assert snapshot(world.root) == before
    assert seconds < 5, seconds


# logging.private_stats: false leaves the seed out of every record; a run still resumes


SECRET_SEED = 918273645  # distinctive: found as bytes anywhere it is written


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes()]


def test_private_stats_false_leaves_the_seed_out_of_every_record(world, capsys, monkeypatch):
    """Issue 26: logging.private_stats: false left the seed in config.yaml, summary.json and the
    wandb run, although the README (now docs/privacy.md) lists the seed among what it leaves out (anyone with the seed
    can replay a reproducible run's sampling and noise). Now no file of the run directory, wandb's
    offline record and TensorBoard's events included, holds it; the command line in provenance has
    it masked; and running the command again finds the run complete."""
    import yaml

    from training.experiment import SEED_WITHHELD

    argv = cli(world.out, "logging.private_stats=false", f"seed={SECRET_SEED}",
               "logging.wandb.mode=offline", "logging.tensorboard=true")
    monkeypatch.setattr(sys, "argv", ["running.py", *argv])
    assert running.main(argv) == 0, capsys.readouterr().err
    run_dir = world.run_dir()
    assert _files_holding(run_dir, str(SECRET_SEED).encode()) == []
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] is None
    assert f"seed={SEED_WITHHELD}" in config["provenance"]["command"]
    assert complete_summary(run_dir)["seed"] is None
    # wandb's offline record (its binary .wandb file, searched above) holds the run's config,
    # the seed key included, but not its value; nor the command line it records from sys.argv.
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's service process may still be writing the record after wandb.finish returns (seen
    # on a loaded machine: only the file's header there); wait for the config to land in it.
    deadline = time.monotonic() + 60
    while b"seed" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"seed" in record.read_bytes() and SEED_WITHHELD.encode() in record.read_bytes()
    assert _files_holding(run_dir, str(SECRET_SEED).encode()) == []
    assert list((run_dir / "tb").iterdir())  # TensorBoard wrote, and it was searched
    capsys.readouterr()
    assert running.main(argv) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.out and "warning" not in captured.err


@pytest.mark.slow
def test_private_stats_false_resumes_from_its_checkpoint_and_refuses_another_seed(world, capsys):
    """Resuming does not need the seed from config.yaml: the params file gives it again, and the
    checkpoint (a private file, removed when the run completes) records it, so another seed's
    command does not continue this run."""
    run_dir = interrupted_run(world.out, "logging.private_stats=false", f"seed={SECRET_SEED}")
    assert str(SECRET_SEED).encode() not in (run_dir / "config.yaml").read_bytes()
    copy = world.root / "copy"
    shutil.copytree(world.out, copy)
    capsys.readouterr()
    assert running.main(cli(world.out, "training.epochs=2", "logging.private_stats=false",
                            f"seed={SECRET_SEED}")) == 0
    assert f"resuming {run_dir} from last.pt after unit 1" in capsys.readouterr().err
    assert _files_holding(run_dir, str(SECRET_SEED).encode()) == []  # the checkpoints are gone
    assert running.main(cli(copy, "training.epochs=2", "logging.private_stats=false",
                            f"seed={SECRET_SEED + 1}")) == 0
    err = capsys.readouterr().err
    assert "resuming" not in err
    assert checkpoint.OTHER_RUN.format(path=copy / NAME / "checkpoints" / "last.pt", keys="seed") in err


def test_a_grid_sweeping_seeds_under_private_stats_false_warns_that_names_spell_them(world,
                                                                                     capsys):
    from grids.sweep import SEED_IN_POINT_NAMES

    params = _grid_params(world, logging={"private_stats": False, "wandb": {"mode": "disabled"},
                                          "tensorboard": False, "progress": "never"})
    assert running.main(["--params", str(params), "--dry-run"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"warning: {SEED_IN_POINT_NAMES}"]


@pytest.mark.slow
def test_ctrl_c_during_a_grid_exits_130_and_the_grid_continues(world, capsys, monkeypatch):
    """Issue 26 (Ctrl-C anywhere): a grid interrupted in its second point exits 130 with one line,
    records the point as interrupted, releases its lock, and the same command finishes the grid."""
    from grids.sweep import read_status
    from training import experiment
    from utils.errors import INTERRUPTED

    params = _grid_params(world, sweep={"seed": [0, 1]})
    original = experiment.MetricsSink.log
    calls = []

    def log(self, step, metrics):
        calls.append(step)
        if len(calls) == 3:  # the second point's first epoch (tiny grid: 2 epochs a point)
            raise KeyboardInterrupt
        original(self, step, metrics)

    monkeypatch.setattr(experiment.MetricsSink, "log", log)
    code = running.main(["--params", str(params)])
    captured = capsys.readouterr()
    assert code == 130 and captured.err.splitlines() == [f"interrupted: {INTERRUPTED}"]
    grid_dir = world.out / GRID_BASE["name"]
    assert [entry["status"] for entry in read_status(grid_dir)["points"]] == ["done", "interrupted"]
    monkeypatch.setattr(experiment.MetricsSink, "log", original)
    assert running.main(["--params", str(params)]) == 0
    assert [entry["status"] for entry in read_status(grid_dir)["points"]] == ["skipped", "done"]


@pytest.mark.slow
def test_wandbs_own_links_do_not_stop_a_resume_and_none_is_written_through(world, capsys):
    """wandb keeps links of its own in wandb/ (latest-run, debug.log, a log in its cache folder):
    a resume accepts them, and even a link there swapped for one to a user's file is not written
    through (wandb replaces its links; the tool writes nothing in wandb/)."""
    run_dir = interrupted_run(world.out, "logging.wandb.mode=offline")
    assert [p.name for p in (run_dir / "wandb").iterdir() if p.is_symlink()]  # wandb made some
    link = run_dir / "wandb" / "debug.log"
    link.unlink()
    link.symlink_to(_user_file(world))
    before = snapshot(world.root, skip=(run_dir,))
    capsys.readouterr()
    assert running.main(cli(world.out, "training.epochs=2", "logging.wandb.mode=offline")) == 0
    assert f"resuming {run_dir} from last.pt after unit 1" in capsys.readouterr().err
    assert snapshot(world.root, skip=(run_dir,)) == before  # the user's file is as it was
    complete_summary(run_dir)
