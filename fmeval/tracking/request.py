"""Which trackers a run reports to: ``--track``, a study's ``track:``, or the user's setting.

Precedence, highest first: the command line (``--track``, held for the command
in a context variable by :func:`requested`), a study file's ``track:``, then
``FMEVAL_TRACK`` and ``track`` in ``fmeval.toml`` / ``[tool.fmeval]``. The
default is none. ``none`` switches off a setting from below. Tracking is never
part of a run's config: it changes where its numbers are mirrored, not what is
computed, so a tracked run hashes and reports exactly as an untracked one.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable, Iterator

from fmeval.errors import ConfigError
from fmeval.tracking.base import TRACKERS

OFF = "none"


@dataclass(frozen=True)
class TrackRequest:
    """Trackers to use, the study (group) a run belongs to, and the folder of local stores.

    ``root`` None: ``<reports folder>/tracking``.
    """

    names: tuple[str, ...] = ()
    group: str | None = None
    root: str | None = None

    def __bool__(self) -> bool:
        return bool(self.names)


def parse_names(value: str | Iterable[str] | None, what: str = "--track") -> tuple[str, ...] | None:
    """``"mlflow,tensorboard"`` or ``["mlflow", "wandb"]`` -> checked, de-duplicated names.

    None: nothing said (a lower setting applies); ``()``: tracking off (``none``).
    Unknown names and missing packages are one line each (exit 2), before any work.
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name or name == OFF:
            continue
        if name not in TRACKERS:
            raise ConfigError(f"{what}: unknown tracker {raw.strip()!r}; known: {', '.join(TRACKERS.names())} "
                              f"(or {OFF}).")
        TRACKERS.get(name).check_installed()
        if name not in names:
            names.append(name)
    return tuple(names)


_REQUESTED: ContextVar[tuple[str, ...] | None] = ContextVar("fmeval_track_requested", default=None)


@contextlib.contextmanager
def requested(value: str | Iterable[str] | None) -> Iterator[None]:
    """The command line's ``--track`` for every run the command executes."""
    token = _REQUESTED.set(parse_names(value))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def user_setting() -> tuple[str, ...] | None:
    """``FMEVAL_TRACK`` or ``track`` in the settings file (None: not set)."""
    from fmeval.settings import resolve

    value, source = resolve("track")
    return None if source == "built-in" else parse_names(value, f"track ({source})")


def resolve_request(names: str | Iterable[str] | None = None, *, group: str | None = None,
                    root: str | None = None) -> TrackRequest:
    """The trackers of a run: ``--track`` > ``names`` (a study's ``track:``) > the user's setting."""
    chosen = _REQUESTED.get()
    if chosen is None:
        chosen = parse_names(names, "track")
    if chosen is None:
        chosen = user_setting()
    return TrackRequest(tuple(chosen or ()), group, root)
