"""A tiny typed registry with decorator registration.

Adapters, evaluation modes and metrics all register themselves by name so that
the CLI and the runners never branch on names (no if/elif ladders): adding an
encoder is one decorated function in one module.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterator, TypeVar

from fmeval.errors import FmevalError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> object mapping whose lookup errors suggest the closest names."""

    def __init__(self, kind: str, error: type[FmevalError] = FmevalError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "", **tags: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, description, **tags)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "", **tags: str) -> None:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[key] = Entry(key, obj, description, dict(tags))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name.lower()]
        except KeyError:
            close = difflib.get_close_matches(name.lower(), self._entries, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise self._error(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}."
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)
