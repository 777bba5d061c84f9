"""The README and docs/ against the code: every config key is documented, every example command runs.

The rule the docs follow for keys: a key is documented when a page of ``docs/`` writes its full
dotted path in backticks, alone or with a value (```privacy.max_grad_norm```,
```privacy.mode: none```, ```data.root=/x```; a top-level key bare, ```seed```). The keys are the
schema's: the dataclasses of ``utils/config.py`` walked from ``ExperimentConfig``, with the
per-method sections ``fairness.<method>.*`` and the clipping rules' ``privacy.<rule>.*`` taken from
their registries. ``docs/configuration.md`` lists every key with its default, and names no key the
schema does not have.

Every ``python running.py ...`` command in the README and docs/ (in a code block or a code span) is
run in this process with ``--dry-run`` and its runs under a temporary ``output_dir``: it must check
its config and exit 0 without writing anything. A ``--report`` command has no dry run (it writes a
report); its arguments must parse.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

import running
from dataset import DATASETS
from privacy.clipping import RULES
from training.repair import METHODS
from training.validation import load_validated
from utils.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# Fields that hold the chosen data set's, method's or rule's settings; in YAML those are sections
# named after each registered entry (data.<name>.*, fairness.<method>.*, privacy.<rule>.*), not
# keys of their own. A data set without settings of its own declares no Settings class.
SETTINGS_HOLDERS = {"data.settings": ("data", DATASETS),
                    "fairness.settings": ("fairness", METHODS),
                    "privacy.clipping_settings": ("privacy", RULES)}


def _fields(cls: type, prefix: str):
    """(dotted key, field) of every leaf field of dataclass ``cls``, nested sections walked."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.metadata.get("yaml", True):  # derived by the validation step, not a key
            continue
        key = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _fields(hints[field.name], key + ".")
        elif key in SETTINGS_HOLDERS:
            section, registry = SETTINGS_HOLDERS[key]
            for name in registry:
                if (settings := getattr(registry.get(name), "Settings", None)) is not None:
                    yield from _fields(settings, f"{section}.{name}.")
        else:
            yield key, field


def schema_keys() -> dict[str, dataclasses.Field]:
    return dict(_fields(ExperimentConfig, ""))


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in sorted(DOCS.rglob("*.md")))


def test_the_schema_walk_reaches_every_section():
    keys = schema_keys()
    assert len(keys) > 100
    for key in ("seed", "data.minority_share", "data.celeba.image_size", "data.adult.protocol",
                "privacy.max_grad_norm", "logging.wandb.mode",
                "fairness.runner.lam", "fairness.roc.theta", "privacy.global_adapt.z",
                "privacy.bounded_adaptive.upper"):
        assert key in keys, key
    assert not set(keys) & set(SETTINGS_HOLDERS)


def test_every_config_key_is_documented_in_docs():
    text = docs_text()
    missing = [key for key in schema_keys()
               if not re.search(r"`" + re.escape(key) + r"(?:`|[:=][^`\n]*`)", text)]
    assert not missing, f"config keys written nowhere in docs/ as `key`: {missing}"


def reference_rows() -> list[tuple[str, str]]:
    """(key, default) of every row of docs/configuration.md's key tables."""
    rows = []
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([\w.]+)` \| `([^`]*)` \|", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def test_the_key_reference_lists_exactly_the_schema_with_its_defaults():
    keys = schema_keys()
    rows = reference_rows()
    listed = [key for key, _ in rows]
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert set(listed) == set(keys), (f"not in the schema: {sorted(set(listed) - set(keys))}; "
                                      f"not listed: {sorted(set(keys) - set(listed))}")
    for key, shown in rows:
        default = default_of(keys[key])
        parsed = yaml.safe_load(shown)
        if isinstance(default, float) and isinstance(parsed, (str, int)):
            parsed = float(parsed)  # PyYAML reads 1e-05 as a string
        if isinstance(default, str):
            parsed = shown
        assert parsed == default, (key, shown, default)


def example_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after ``python running.py``) of every example command in README.md and docs/."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = str(page.relative_to(ROOT))
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
        lines = [line for block in blocks for line in block.splitlines()]
        spans = [span.replace("\n", " ")
                 for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"^```.*?^```", "", text,
                                                                     flags=re.S | re.M))]
        for command in [*lines, *spans]:
            command = command.strip()
            if not command.startswith("python running.py"):
                continue
            argv = shlex.split(command, comments=True)[2:]
            found.append((name, argv))
    return found


EXAMPLES = example_commands()


def test_the_pages_hold_example_commands():
    pages = {page for page, _ in EXAMPLES}
    assert "README.md" in pages and "docs/grids_and_reports.md" in pages
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("page, argv", EXAMPLES, ids=[f"{p}:{' '.join(a)}" for p, a in EXAMPLES])
def test_every_example_command_parses(page, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the commands name their files relative to the repository
    assert argv, f"{page}: a bare `python running.py`"
    if "--report" in argv:
        args = running.parse_args(argv)
        assert args.report and args.params is None
        return
    out = tmp_path / "out"
    status = running.main([*argv, "--set", f"output_dir={out}", "--dry-run"])
    captured = capsys.readouterr()
    assert status == 0, f"{page}: python running.py {' '.join(argv)}\n{captured.err}"
    assert str(out) in captured.out  # it listed its run directories
    assert not out.exists()  # and wrote nothing


YAML_EXAMPLES = [(str(page.relative_to(ROOT)), block) for page in PAGES
                 for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"),
                                         re.S | re.M)]


@pytest.mark.parametrize("page, block", YAML_EXAMPLES, ids=[p for p, _ in YAML_EXAMPLES])
def test_every_yaml_example_is_a_valid_config(page, block, tmp_path):
    assert YAML_EXAMPLES and page
    path = tmp_path / "example.yaml"
    path.write_text(block, encoding="utf-8")
    load_validated(path)  # a config error would fail the test with its message


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"#+ (.*)", line):
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists() or (anchor and anchor not in heading_anchors(resolved)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_stays_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300  # the reference lives in docs/ (issue 27)
    linked = {(ROOT / target).resolve() for target in re.findall(r"\]\(([^)#\s]+)", readme)}
    unlinked = [str(page.relative_to(ROOT)) for page in DOCS.rglob("*.md")
                if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
