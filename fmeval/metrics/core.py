"""The ground of the metrics: task rules, input validation, the metric registry.

Every metric takes ``(task, y_true, scores)`` validated here once, and every
prediction rule (MedMNIST's ``> 0.5`` on the last column for binary tasks, argmax
otherwise) lives here, so point metrics, the bootstrap and calibration agree.
"""

from __future__ import annotations

import contextlib
import math
import contextvars
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from fmeval.errors import FmevalError
from fmeval.registry import Registry
from fmeval.tasks import BINARY, MULTICLASS, MULTILABEL, ORDINAL, TASKS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from fmeval.metrics.resampling import _Block, _Prepared

THRESHOLD = 0.5  # MedMNIST's decision threshold for binary and multi-label scores
ECE_BINS = 15
COLLAPSE_FRACTION = 0.99
ROW_SUM_ATOL = 1e-2  # loose enough for fp16 softmax, tight enough to catch logits

MetricFn = Callable[[str, np.ndarray, np.ndarray], float]
BatchFn = Callable[["_Prepared", "_Block"], np.ndarray]


class MetricInputError(FmevalError):
    """Labels or scores handed to the metrics are malformed."""


class MetricWarning(UserWarning):
    """A metric was computed on less than the full input (e.g. a class skipped)."""


METRICS: Registry[MetricFn] = Registry("metric", MetricInputError)
_BATCHED: dict[str, BatchFn] = {}

# ---------------------------------------------------------------------------
# Warnings: metric functions keep the plain ``fn(task, y, scores) -> float``
# signature, so notes travel through a context variable (thread-safe, unlike
# ``warnings.catch_warnings``) and fall back to ``warnings.warn`` outside
# compute_metrics.
# ---------------------------------------------------------------------------
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fmeval_metric_notes", default=None)


def _note(message: str) -> None:
    sink = _NOTES.get()
    if sink is None:
        warnings.warn(message, MetricWarning, stacklevel=3)
    elif message not in sink:
        sink.append(message)


@contextlib.contextmanager
def _collect_notes() -> Iterator[list[str]]:
    sink: list[str] = []
    token = _NOTES.set(sink)
    try:
        yield sink
    finally:
        _NOTES.reset(token)


@contextlib.contextmanager
def _quiet_sklearn() -> Iterator[None]:
    """We report undefined metrics ourselves, with class names; sklearn's generic text is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message=".*do not sum to one.*")
        warnings.filterwarnings("ignore", message=".*contains classes not in y_true.*")
        yield


# ---------------------------------------------------------------------------
# Validation and prediction rules
# ---------------------------------------------------------------------------
def check_task(task: str) -> str:
    if task not in TASKS:
        raise MetricInputError(f"unknown task {task!r}; expected one of {', '.join(map(repr, TASKS))}")
    return task


def _as_int_labels(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise MetricInputError(f"y_true must be numeric class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
            raise MetricInputError("y_true must hold integer class indices (found non-integer or NaN values)")
    return y.astype(np.int64)


def _as_scores(task: str, s: np.ndarray) -> np.ndarray:
    if s.dtype.kind not in "fiub":
        raise MetricInputError(f"scores must be a float array, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if task == BINARY and (s.ndim == 1 or (s.ndim == 2 and s.shape[1] == 1)):
        # A bare positive-class probability, as medmnist also accepts.
        p = s.reshape(-1)
        s = np.stack([1.0 - p, p], axis=1)
    if s.ndim != 2:
        raise MetricInputError(f"scores must be 2-D [N, C], got shape {s.shape}")
    return s


def _check_probabilities(task: str, s: np.ndarray) -> None:
    bad = ~np.isfinite(s)
    if bad.any():
        n_nan, n_inf = int(np.isnan(s).sum()), int(np.isinf(s).sum())
        raise MetricInputError(f"scores contain {n_nan} NaN and {n_inf} Inf values (in {int(bad.any(axis=1).sum())} rows)")
    lo, hi = float(s.min()), float(s.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise MetricInputError(
            f"scores must be probabilities in [0, 1], got range [{lo:.4g}, {hi:.4g}]; apply softmax/sigmoid to logits first"
        )
    if task != MULTILABEL:
        sums = s.sum(axis=1)
        if np.abs(sums - 1.0).max() > ROW_SUM_ATOL:
            raise MetricInputError(
                f"{task} scores must be softmax probabilities whose rows sum to 1, got row sums in "
                f"[{sums.min():.4g}, {sums.max():.4g}]"
            )


def validate_inputs(
    task: str, y_true: Any, scores: Any, *, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y, scores)`` as int64 / float64 arrays in the canonical shapes, or raise.

    Canonical: y [N] (single-label) or [N, L] (multi-label); scores [N, C] with
    C=2 for binary. Everything downstream assumes these, so all checks live here.
    """
    check_task(task)
    y = np.asarray(y_true)
    s = _as_scores(task, np.asarray(scores))
    if task == MULTILABEL:
        if y.ndim != 2:
            raise MetricInputError(f"multi-label y_true must be 2-D [N, L], got shape {y.shape}")
        if y.shape != s.shape:
            raise MetricInputError(f"multi-label y_true {y.shape} and scores {s.shape} must have the same shape")
    else:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise MetricInputError(f"{task} y_true must be 1-D [N] (or [N, 1]), got shape {y.shape}")
        if task == BINARY and s.shape[1] != 2:
            raise MetricInputError(f"binary scores must have 2 columns (positive = last), got shape {s.shape}")
        if s.shape[1] < 2:
            raise MetricInputError(f"{task} scores need at least 2 columns, got shape {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise MetricInputError(f"y_true has {y.shape[0]} samples but scores has {s.shape[0]}")
    if y.shape[0] == 0:
        raise MetricInputError("cannot compute metrics on an empty set")
    if n_classes is not None and s.shape[1] != n_classes:
        raise MetricInputError(f"scores have {s.shape[1]} columns but there are {n_classes} class names")
    _check_probabilities(task, s)
    # float32 rounding leaves probabilities a few ulps outside [0, 1]
    # (checked above to within 1e-6); sklearn's log-loss refuses those.
    s = np.clip(s, 0.0, 1.0)
    y = _as_int_labels(y)
    hi = 1 if task == MULTILABEL else s.shape[1] - 1
    if y.min() < 0 or y.max() > hi:
        raise MetricInputError(f"y_true values must lie in [0, {hi}], got range [{y.min()}, {y.max()}]")
    return y, s


def predict_labels(task: str, scores: Any) -> np.ndarray:
    """Hard predictions by MedMNIST's rule: binary ``p_last > 0.5``, multi-label
    ``p > 0.5`` per label, otherwise argmax. One rule for every mode, so a
    zero-shot and a fine-tuned model are thresholded identically."""
    check_task(task)
    s = _as_scores(task, np.asarray(scores))
    if task == BINARY:
        return (s[:, -1] > THRESHOLD).astype(np.int64)
    if task == MULTILABEL:
        return (s > THRESHOLD).astype(np.int64)
    return np.argmax(s, axis=1).astype(np.int64)


def class_prior(task: str, labels: Any, n_classes: int | None = None) -> np.ndarray:
    """Class frequencies (single-label) or per-label positive rates (multi-label)."""
    y = np.asarray(labels)
    if task == MULTILABEL:
        if y.ndim != 2:
            raise MetricInputError(f"multi-label labels must be 2-D [N, L], got shape {y.shape}")
        return _as_int_labels(y).mean(axis=0).astype(np.float64)
    y = _as_int_labels(y.reshape(-1))
    if y.size == 0 or y.min() < 0:
        raise MetricInputError("labels for a class prior must be non-empty, non-negative class indices")
    # bincount grows to the largest label by itself; minlength adds absent top classes.
    return np.bincount(y, minlength=max(n_classes or 0, 2)).astype(np.float64) / y.size


def majority_scores(task: str, labels_or_prior: Any, n: int, *, n_classes: int | None = None) -> np.ndarray:
    """Constant scores of the majority-class predictor, shape [n, C].

    Pass integer labels (typically the *training* labels) or a float prior. The
    rows are the prior itself, so thresholding/argmax picks the majority class
    (each label's majority for multi-label), AUC is exactly 0.5 and calibration
    and log-loss are those of an honest "know nothing but the base rate" model.
    """
    check_task(task)
    arr = np.asarray(labels_or_prior)
    prior = arr.astype(np.float64) if arr.dtype.kind == "f" else class_prior(task, arr)
    if prior.ndim != 1:
        raise MetricInputError(f"a prior must be 1-D, got shape {prior.shape}")
    if n_classes is not None and prior.size > n_classes:
        raise MetricInputError(f"prior has {prior.size} entries but there are {n_classes} classes")
    if n_classes is not None and prior.size < n_classes:  # top classes absent from the labels
        prior = np.pad(prior, (0, n_classes - prior.size))
    if task != MULTILABEL and not math.isclose(prior.sum(), 1.0, abs_tol=1e-6):
        raise MetricInputError(f"class prior must sum to 1, got {prior.sum():.6g}")
    return np.tile(prior, (n, 1))


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------
def batched(name: str) -> Callable[[BatchFn], BatchFn]:
    """Attach a vectorised bootstrap twin to a registered metric."""

    def deco(fn: BatchFn) -> BatchFn:
        _BATCHED[name.lower()] = fn
        return fn

    return deco


def higher_is_better(name: str) -> bool:
    return METRICS.entry(name).tags.get("better", "higher") == "higher"


def rank_order(metric: str, value: Any, tiebreak: Any) -> tuple:
    """The one ranking rule (leaderboards and study tables): defined values first, best
    first in the metric's own direction (a loss-like metric ascending), then ``tiebreak``."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    sign = -1.0 if higher_is_better(metric) else 1.0
    return (0 if ok else 1, sign * value if ok else 0.0, tiebreak)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row mean ignoring NaN; NaN (resample skipped) when a row has no finite value."""
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(finite, values, 0.0).sum(axis=1) / n, np.nan)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)

def _nan_to_none(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)
