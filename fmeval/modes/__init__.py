"""Evaluation modes, each one registered :class:`~fmeval.modes.base.Mode` in MODES.

Importing this package registers every built-in mode; the runner and the
study planner only ever look modes up by name.
"""

from fmeval.modes.base import MODES, Mode, register_mode  # noqa: F401

from fmeval.modes import knn, linprobe, zeroshot, prompt_compare, finetune, robustness, score  # noqa: F401,E402
from fmeval.modes import multidomain  # noqa: F401,E402  (issue 24)
