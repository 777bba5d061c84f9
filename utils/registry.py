"""Name-to-builder registries (in the manner of timm's and Opacus' registries).

A registry maps a config name (``model.name: mlp``) to the function that builds it, so adding a
model, data set, trainer or fairness method is one decorated function and never another branch of
an if-chain.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from utils.errors import ConfigError

T = TypeVar("T", bound=Callable)

# The error of a name no entry is filed under (tests import it): the dotted config key, the closest
# name (``hint``, empty when none is close) and every valid name, sorted.
UNKNOWN_NAME = "{key}: unknown {kind} {name!r}.{hint} Valid values: {valid}."
CLOSE_MATCH = " Did you mean {close!r}?"


class Registry(Generic[T]):
    """A named collection of builders, and the one owner of its names.

    The config checks a name by asking the registry that builds it (``utils.config``), so the valid
    values of ``config_key`` are exactly the registered names and no other list of them exists.

    Attributes:
        kind: what the entries are, for error messages ("model", "dataset", ...).
        config_key: the dotted config key whose value selects an entry ("model.name").
    """

    def __init__(self, kind: str, config_key: str):
        self.kind = kind
        self.config_key = config_key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files ``fn`` under ``name``; registering a name twice is an error."""

        def add(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return add

    def get(self, name: str) -> T:
        """The builder filed under ``name``; an unknown name lists the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value, such as a YAML list
            raise self.unknown(name) from None

    def unknown(self, name: object) -> ConfigError:
        """The error of ``name`` not being registered (:data:`UNKNOWN_NAME`)."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        return ConfigError(UNKNOWN_NAME.format(
            key=self.config_key, kind=self.kind, name=name,
            hint=CLOSE_MATCH.format(close=close[0]) if close else "",
            valid=", ".join(self.names())))

    def names(self) -> list[str]:
        """The registered names, sorted: the valid values of ``config_key``."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
