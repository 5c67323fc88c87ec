"""User-facing errors.

Everything a user can get wrong (unknown model, bad npz, mismatched prompt bank,
...) raises :class:`FmevalError`. The CLI turns these into one red line and a
non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class FmevalError(Exception):
    """An error caused by input or environment, explained in one sentence."""


class DataError(FmevalError):
    """A dataset file is missing, corrupt or does not match its metadata."""


class ModelError(FmevalError):
    """A model is unknown, or its weights cannot be loaded."""


class ConfigError(FmevalError):
    """Options that contradict each other or the dataset."""


class PromptBankError(FmevalError):
    """A prompt bank is malformed or does not match the dataset."""


class WeightsError(ModelError):
    """Weights cannot be downloaded, verified or found in the weights cache."""


def unknown_choice(kind: str, value: Any, known: Iterable[str]) -> str:
    """``unknown <kind> 'x'. Did you mean: y? Known: a, b.`` (the Registry's wording)."""
    known = list(known)
    close = difflib.get_close_matches(str(value).lower(), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {kind} {value!r}.{hint} Known: {', '.join(known)}."


def check_choice(value: Any, known: Iterable[str], flag: str, kind: str) -> None:
    """Raise ``--flag: unknown <kind> ...`` unless ``value`` is one of ``known``."""
    known = tuple(known)
    if value not in known:
        raise ConfigError(f"{flag}: {unknown_choice(kind, value, known)}")
