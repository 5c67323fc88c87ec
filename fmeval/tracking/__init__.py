"""Experiment tracking: a run's training curves and final numbers, mirrored to W&B, MLflow or TensorBoard.

Off by default; ``--track wandb,mlflow,tensorboard`` (or a study's ``track:``,
or ``track`` in ``fmeval.toml``) turns it on. Each tracker is an optional
extra and works locally by default (W&B offline, an MLflow SQLite store,
TensorBoard event files, all under ``<reports>/tracking/``). fmeval's own
files stay the source of truth: a tracker is fed by the training loops' step
callbacks (:func:`step_callbacks`) and by the runner after the reporter wrote
the run (:func:`tracked_run`), and a tracker that fails is one warning line.

This package sits in the ground layer: it imports nothing of fmeval's model,
mode or report stack; the runner hands it plain dicts.
"""

from fmeval.tracking.base import TRACKERS, StepCallback, Tracker, TrackerContext, TrackerKind, register_tracker
from fmeval.tracking.fanout import FanOut, step_callbacks, tracked_run
from fmeval.tracking.flatten import final_metrics, flat_params, run_params
from fmeval.tracking.request import TrackRequest, parse_names, requested, resolve_request

import fmeval.tracking.backends  # noqa: E402,F401  (registers the trackers)

__all__ = [
    "TRACKERS", "StepCallback", "Tracker", "TrackerContext", "TrackerKind", "register_tracker", "FanOut",
    "step_callbacks", "tracked_run", "final_metrics", "flat_params", "run_params", "TrackRequest", "parse_names",
    "requested", "resolve_request",
]
