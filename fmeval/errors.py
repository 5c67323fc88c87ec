"""User-facing errors.

Everything a user can get wrong (unknown model, bad npz, mismatched prompt bank,
...) raises :class:`FmevalError`. The CLI turns these into one red line and a
non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
