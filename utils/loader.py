"""Params files and ``--set``: from a YAML file to the checked config (:mod:`utils.config`).

:func:`load_config` is the one entry point: it reads the file with the strict YAML loader
(:class:`ParamsLoader`: bounded size, depth and values, no duplicate keys, a clear line for every
fault), translates a file in the original code's flat format (:mod:`utils.legacy`), applies
``--set`` overrides to the raw mapping *before* it is checked, so they pass through exactly the same
checks as the file, and builds the config (:func:`utils.config.config_from_mapping`). The schema
does not import this module, and the legacy translation does not either: no cycle.
"""

from __future__ import annotations

import codecs
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from utils.config import (
    GRID_KEYS,
    ExperimentConfig,
    config_from_mapping,
    has_entry_sections,
    override_children,
    shown,
    unknown_key_error,
)
from utils.errors import ConfigError, file_problem
from utils.legacy import (
    MOVED_KEY_NOTE,
    MOVED_KEYS,
    is_legacy,
    moved_key,
    translate_legacy,
    translate_moved,
)

# Bounds on what a params file or a --set value may make the YAML loader build (ParamsLoader). A real
# params file is a few KB, nests 3 or 4 levels and holds a few hundred values; the bounds are far
# above that and far below what exhausts memory or Python's recursion limit.
MAX_PARAMS_BYTES = 1_000_000
MAX_YAML_DEPTH = 50
MAX_YAML_VALUES = 100_000
# Message parts the tests import (each message adds the file or --set, the place and the fix).
PARAMS_TOO_LARGE = f"is larger than {MAX_PARAMS_BYTES:,} bytes"
PARAMS_BINARY = "is a binary file (it contains NUL bytes), not YAML text"
PARAMS_NOT_UTF8 = "is not UTF-8 text"
PARAMS_EMPTY = "holds no settings (it is empty, or only comments or null)"
YAML_TOO_DEEP = f"nests more than {MAX_YAML_DEPTH} levels deep"
YAML_TOO_MANY_VALUES = f"expands to more than {MAX_YAML_VALUES:,} values"
YAML_ALIAS_CYCLE = "holds an alias inside the collection it refers to"
YAML_DUPLICATE_KEY = "duplicate key"


MAX_INTEGER_DIGITS = 1000
INTEGER_TOO_LONG = "an integer too long to be a setting"


class _Refused(yaml.YAMLError):
    """A YAML text ParamsLoader will not build: too deep, too large, a duplicate key.

    ``text`` says what is wrong and the fix; ``mark`` is where (a PyYAML mark, or None).
    """

    def __init__(self, text: str, mark: Any = None):
        super().__init__(text)
        self.text, self.mark = text, mark

    def where(self) -> str:
        return (f"line {self.mark.line + 1}, column {self.mark.column + 1}"
                if self.mark is not None else "")


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}"


class ParamsLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, with the limits a file written by someone else needs.

    * Nesting deeper than :data:`MAX_YAML_DEPTH` is refused while composing, before PyYAML's
      recursive composer (and later our own recursive code) hits Python's recursion limit.
    * Anchors and aliases stay allowed (``<<: *base`` is a common way to share settings), but the
      document they stand for is measured before anything is built: the node graph is walked once,
      shared nodes counted by multiplicity with memoization, so a "billion laughs" file (nine levels
      of nine aliases, 9^9 values) is refused in microseconds, and a tree of more than
      :data:`MAX_YAML_VALUES` values, or deeper than the depth bound through aliases, is refused.
      PyYAML itself builds such a file cheaply as shared lists; it is every later step (copying the
      mapping for overrides, checking every value) that expands it, to gigabytes.
    * A key given twice in one mapping is an error: YAML's last-one-wins would silently drop the
      first setting. Keys brought in by a merge (``<<``) may still be overridden, as YAML intends.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(f"the YAML {YAML_TOO_DEEP} (a params file needs 3 or 4). "
                               f"Flatten the structure", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first_seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            # The constructed key, so that `1` and `1.0` (one dict key) count as the same; a "="
            # key is a plain string that only flatten_mapping (at construction) would retag.
            key = ("=" if key_node.tag == "tag:yaml.org,2002:value"
                   else self.construct_object(key_node))
            try:
                first = first_seen.setdefault(key, key_node)
            except TypeError:  # unhashable: the constructor refuses it with its own message
                continue
            if first is not key_node:
                raise _Refused(f"{YAML_DUPLICATE_KEY} {key!r} (first at {_at(first.start_mark)}); "
                               f"YAML would silently keep only the last one. Keep one of them",
                               key_node.start_mark)
        return node

    def compose_document(self):
        node = super().compose_document()
        _measure(node)
        return node

    def construct_yaml_int(self, node):
        # Python refuses to read (and to print) integers of more than 4,300 digits; no setting
        # needs one, and PyYAML's ValueError would otherwise escape as a traceback.
        digits = sum(character.isdigit() for character in str(node.value))
        if digits > MAX_INTEGER_DIGITS:
            raise _Refused(f"{INTEGER_TOO_LONG} ({digits:,} digits; at most {MAX_INTEGER_DIGITS:,}). "
                           f"Give a setting's real value", node.start_mark)
        return super().construct_yaml_int(node)


ParamsLoader.add_constructor("tag:yaml.org,2002:int", ParamsLoader.construct_yaml_int)


def _measure(root: yaml.Node) -> None:
    """Refuse a composed document whose expansion (aliases written out) is too large or too deep."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values in its expansion, its height)
    open_nodes: set[int] = set()

    def walk(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key not in measured:
            if key in open_nodes:
                raise _Refused(f"the YAML {YAML_ALIAS_CYCLE}, so it would never end. Write the "
                               f"value out", node.start_mark)
            if level > MAX_YAML_DEPTH:
                raise _Refused(f"the YAML {YAML_TOO_DEEP} once its aliases are written out. "
                               f"Use fewer aliases of aliases", node.start_mark)
            open_nodes.add(key)
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            count, height = 1, 1
            for child in children:
                child_count, child_height = walk(child, level + 1)
                count += child_count
                height = max(height, child_height + 1)
                if count > MAX_YAML_VALUES:
                    raise _Refused(f"the YAML {YAML_TOO_MANY_VALUES} once its anchors and aliases are "
                                   f"written out (a params file holds a few hundred). Write the "
                                   f"values out instead of nesting aliases of aliases",
                                   node.start_mark)
            open_nodes.discard(key)
            measured[key] = (count, height)
        count, height = measured[key]
        if level + height - 1 > MAX_YAML_DEPTH:
            raise _Refused(f"the YAML {YAML_TOO_DEEP} once its aliases are written out. Use "
                           f"fewer aliases of aliases", node.start_mark)
        return count, height

    walk(root, 1)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` semantics under :class:`ParamsLoader`'s limits."""
    return yaml.load(text, Loader=ParamsLoader)  # a SafeLoader: it builds no Python objects


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a params file as UTF-8 YAML (``yaml.safe_load`` semantics, :class:`ParamsLoader`'s
    limits); every failure is a ConfigError naming the file. An empty file is refused too: it would
    silently run every default."""
    path = Path(path)
    name = repr(str(path))
    if (problem := file_problem(path)) is not None:  # before opening: a FIFO would block
        raise ConfigError(f"params file {name} {problem}. Pass an existing YAML file, "
                          f"e.g. --params utils/params_adult.yaml.")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PARAMS_BYTES + 1)  # never more, whatever the file's size
    except OSError as error:
        raise ConfigError(f"params file {name} cannot be read ({error.strerror or error}). "
                          f"Check its permissions, or pass another file.") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"params file {name} {PARAMS_TOO_LARGE} (params files are a few KB). "
                          f"Pass the experiment's YAML file.")
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):  # UTF-32 first: its little-endian mark begins with UTF-16's
            raise ConfigError(f"params file {name} {PARAMS_NOT_UTF8} (it is {encoding}). "
                              f"Save it as UTF-8.")
    if b"\0" in data:
        raise ConfigError(f"params file {name} {PARAMS_BINARY}. Pass the experiment's YAML file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"params file {name} {PARAMS_NOT_UTF8} (byte 0x{data[error.start]:02x} at "
                          f"offset {error.start}). Save it as UTF-8.") from None
    try:
        raw = _load_yaml(text)
    except _Refused as error:
        where = f", {error.where()}" if error.mark is not None else ""
        raise ConfigError(f"params file {name}{where}: {error.text}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"params file {name} is not valid YAML: {_yaml_problem(error)}. "
                          f"Fix the file's syntax there.") from None
    if raw is None:
        raise ConfigError(f"params file {name} {PARAMS_EMPTY}, so it would run every default. "
                          f"Write the experiment's settings, e.g. start from utils/params_adult.yaml "
                          f"(an explicit {{}} runs the defaults).")
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {name} must hold a mapping of config sections, "
                          f"not a {type(raw).__name__}.")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"privacy.noise_multiplier=1.1"`` -> (["privacy", "noise_multiplier"], 1.1); VALUE is YAML,
    read under the same limits as a params file (:class:`ParamsLoader`)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, "
                          f"e.g. --set privacy.noise_multiplier=1.1")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PARAMS_BYTES:
        raise ConfigError(f"--set {key}: the value {PARAMS_TOO_LARGE}; a setting is a few bytes. "
                          f"Shorten it.")
    try:
        parsed = _load_yaml(value) if value.strip() else None
    except _Refused as error:
        # The key, not the text: a refused value can be long.
        where = f" (at {error.where()} of the value)" if error.mark is not None else ""
        raise ConfigError(f"--set {key}: {error.text}{where}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {_yaml_problem(error)}. "
                          f"Quote strings with special characters.") from None
    return key.split("."), parsed


OVERRIDES_EXPECTED = 'a list of KEY=VALUE strings, e.g. ["training.epochs=2", "seed=1"]'


def override_list(value: Any, name: str = "OVERRIDES") -> list[str]:
    """``value`` as a list of ``--set`` strings (the notebook's ``OVERRIDES``): a list as it is; a
    single string, which papermill's ``-p OVERRIDES ...`` gives, as one override per line (a
    string iterated would be one ``--set`` per character). Anything else is refused."""
    if isinstance(value, str):
        value = [line.strip() for line in value.splitlines() if line.strip()]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and "=" in item for item in value):
        raise ConfigError(f"{name}: got {shown(value)}; expected {OVERRIDES_EXPECTED}.")
    return list(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``KEY=VALUE`` overrides to a raw mapping (a copy); unknown keys are refused."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        path = _current_spelling(path)
        cls: Any = ExperimentConfig
        node = merged
        for depth, part in enumerate(path):
            # Below a registered entry's sub-section (fairness.runner.lam) the keys are the entry's,
            # checked with the rest of it by the validation step (training.validation).
            children = override_children(cls) if cls is not _ENTRY_SECTION else {}
            last = depth == len(path) - 1
            if part in children:
                cls = children[part]
            elif cls is _ENTRY_SECTION or (has_entry_sections(cls) and not (
                    last and value is not None and not isinstance(value, dict))):
                # A sub-section, or a key inside one; a plain value given to a name the section
                # does not have cannot be a sub-section: a misspelt key, refused here.
                cls = _ENTRY_SECTION
            else:
                raise unknown_key_error(part, list(children), "".join(p + "." for p in path[:depth]))
            if last:
                node[part] = value
                break
            if cls is not _ENTRY_SECTION and not dataclasses.is_dataclass(cls):
                raise ConfigError(f"--set {text!r}: '{'.'.join(path[:depth + 1])}' is a value, "
                                  f"not a section.")
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
    return merged


# Where --set walks inside a settings sub-section named after a registered entry.
_ENTRY_SECTION = object()


def _current_spelling(path: list[str]) -> list[str]:
    """A ``--set`` key's parts with a moved key's old spelling (``data.image_size``, also as the
    start of a longer key) replaced by its current one (utils.legacy.MOVED_KEYS)."""
    for end in range(len(path), 0, -1):
        dotted = ".".join(path[:end])
        if dotted in MOVED_KEYS:
            return [*moved_key(dotted).split("."), *path[end:]]
    return path


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {key: _deep_copy(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(value) for value in raw]
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read ``path``, apply ``--set`` overrides, and return the config, each section's own keys
    checked (:func:`utils.config.config_from_mapping`; the registered names, settings
    sub-sections and rules across sections are :func:`training.validation.validate`'s, which
    :func:`training.validation.load_validated` adds).

    A file in the flat format of the original code (arXiv 2009.06389) is first translated to the
    nested format, which is printed to stderr once (``utils.legacy``); overrides then use nested keys.
    """
    raw = read_yaml(path)
    if GRID_KEYS & raw.keys():
        raise ConfigError(f"params file {str(path)!r} is a grid (it has a sweep: or zip: section), "
                          f"not one experiment. Run it with running.py, or load its points with "
                          f"grids.sweep.load_grid.")
    if is_legacy(raw):
        raw = translate_legacy(raw, source=path)
    raw, moved = translate_moved(raw)
    named = [".".join(parse_override(text)[0]) for text in overrides or []]
    for old in dict.fromkeys([*moved, *(key for key in named if key in MOVED_KEYS)]):
        print(f"note: {str(path)!r}: " + MOVED_KEY_NOTE.format(old=old, new=moved_key(old)),
              file=sys.stderr)
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_mapping(raw)
