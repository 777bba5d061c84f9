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
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import running
from tests.test_end_to_end import read_jsonl
from tests.test_legacy import FIXTURE as LEGACY_FIXTURE
from tests.test_resume import Interrupt, interrupt_after
from tests.test_sweep import BASE as GRID_BASE
from tests.test_sweep import SWEEP, write_params
from training import checkpoint
from utils import rundir, sink
from utils.config import NAME_EXPECTED, NUL_IN_STRING, SEED_EXPECTED, SEED_MAX
from utils.release import REPORT_RELEASE_CSV
from utils.report import (
    FIGURES,
    IGNORED_STATUS,
    REPORT_CSV,
    REPORT_FILE_NOT_OURS,
    REPORT_MD,
    SKIPPED_RUN,
)
from utils.sweep import STATUS_FILE, STATUS_NOT_OURS

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
    argv = ["--params", str(params), "--set", f"output_dir={out}"]
    for override in (*TINY, *overrides):
        argv += ["--set", override]
    return [*argv, *extra]


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
    return [line for line in text.splitlines() if line.startswith(prefix)]


def assert_one_error(capsys, code: int, message: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines() == [f"error: {message}"], err
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
    assert f"resuming {moved / NAME} from last.pt after unit 1" in err and "warning" not in err
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
    outputs = tuple(runs / name for name in (REPORT_MD, REPORT_CSV, REPORT_RELEASE_CSV, *FIGURES))
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
    assert_one_error(capsys, code, REPORT_FILE_NOT_OURS.format(path=runs / name))
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
