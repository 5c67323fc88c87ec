"""Metrics for MedMNIST-style classification, with bootstrap CIs and a baseline.

Every evaluation mode (zero-shot, kNN, linear probe, fine-tuning) ends in the
same call, :func:`compute_metrics`, so that numbers from different modes are
computed by one piece of code and can be compared on a leaderboard.

Design notes
------------
* ``acc`` and ``auc`` follow ``medmnist.evaluator.getACC/getAUC`` exactly (the
  published baselines use them), including the strict ``> 0.5`` threshold on the
  *last* column for binary tasks. The only deliberate difference: a class or
  label absent from ``y_true`` is skipped with a warning instead of crashing
  (sklearn raises) or silently producing NaN.
* Point estimates call scikit-learn. The bootstrap cannot: 1000 resamples x a
  dozen sklearn calls each costs seconds to minutes. Instead each resample is
  represented by its *count vector* ``w`` (how often each test sample was drawn)
  and every metric is written as a function of weighted sums over samples,
  which vectorises over a block of resamples at once. A resample with counts
  ``w`` is exactly the weighted data set ``sample_weight=w``, so the batched
  formulas are tested against sklearn with ``sample_weight``.
* Metrics registered by other code without a batched twin still get CIs, via a
  (slow) per-resample loop over the plain function.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from threadpoolctl import threadpool_limits

from fmeval.errors import FmevalError
from fmeval.registry import Registry

BINARY = "binary-class"
MULTICLASS = "multi-class"
MULTILABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (BINARY, MULTICLASS, MULTILABEL, ORDINAL)

THRESHOLD = 0.5  # MedMNIST's decision threshold for binary and multi-label scores
ECE_BINS = 15
COLLAPSE_FRACTION = 0.99
ROW_SUM_ATOL = 1e-2  # loose enough for fp16 softmax, tight enough to catch logits
# Elements of the [resamples x samples] weight block processed at once: bounds the
# bootstrap's memory to a few tens of MB whatever the test-set size.
BOOT_BLOCK_ELEMS = 1 << 19

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


def confidence_and_correct(task: str, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability given to the predicted label, and whether it was right.

    Flattened over labels for multi-label (each label is a binary decision).
    Binary uses the thresholded positive column, like ACC, so the reliability
    diagram describes the very predictions ACC scores.
    """
    pred = predict_labels(task, s)
    if task == BINARY:
        p = s[:, -1]
        return np.where(pred == 1, p, 1.0 - p), pred == y
    if task == MULTILABEL:
        return np.where(pred == 1, s, 1.0 - s), pred == y
    return s[np.arange(len(s)), pred], pred == y


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins, right-closed: (k/n, (k+1)/n]; confidence 0 lands in bin 0."""
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(task: str, y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin count, mean confidence and accuracy (the data of a reliability diagram)."""
    y, s = validate_inputs(task, y_true, scores)
    conf, correct = confidence_and_correct(task, y, s)
    conf, correct = conf.ravel(), correct.ravel().astype(np.float64)
    b = _bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [_nan_to_none(v) for v in mean_conf],
        "accuracy": [_nan_to_none(v) for v in acc],
    }


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


def _per_class_auc(task: str, y: np.ndarray, s: np.ndarray) -> list[float]:
    """One AUC per class (one-vs-rest) or per label; NaN where undefined."""
    if task == BINARY:
        cols = [(y, s[:, -1])]
    elif task == MULTILABEL:
        cols = [(y[:, j], s[:, j]) for j in range(s.shape[1])]
    else:
        cols = [((y == c).astype(np.int64), s[:, c]) for c in range(s.shape[1])]
    out = []
    for t, p in cols:
        n_pos = int(t.sum())
        out.append(float(skm.roc_auc_score(t, p)) if 0 < n_pos < t.size else math.nan)
    return out


def _label_mean(score_fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, pred: np.ndarray) -> float:
    """Multi-label: a single-label score averaged over the label columns."""
    return float(np.mean([score_fn(y[:, j], pred[:, j]) for j in range(y.shape[1])]))


@METRICS.register("acc", "accuracy (MedMNIST rule: last column > 0.5 / argmax / mean per-label)", better="higher")
def acc(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    pred = predict_labels(task, s)
    if task == MULTILABEL:
        return _label_mean(skm.accuracy_score, y, pred)
    return float(skm.accuracy_score(y, pred))


@METRICS.register("auc", "ROC AUC (binary: last column; else mean one-vs-rest / per-label)", better="higher")
def auc(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    per = np.array(_per_class_auc(task, y, s))
    missing = np.flatnonzero(np.isnan(per))
    if missing.size == per.size:
        _note("auc undefined: y_true contains a single class")
        return math.nan
    if missing.size:
        what = "labels" if task == MULTILABEL else "classes"
        _note(
            f"auc averaged over {per.size - missing.size}/{per.size} {what}; "
            f"{what} {missing.tolist()} have no positive or no negative sample"
        )
    return float(np.nanmean(per))


@METRICS.register("balanced_acc", "mean recall over classes present (multi-label: mean over labels)", better="higher")
def balanced_acc(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    pred = predict_labels(task, s)
    with _quiet_sklearn():
        if task == MULTILABEL:
            return _label_mean(skm.balanced_accuracy_score, y, pred)
        return float(skm.balanced_accuracy_score(y, pred))


@METRICS.register("f1_macro", "macro F1 over classes (multi-label: over labels at 0.5)", better="higher")
def f1_macro(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    return float(skm.f1_score(y, predict_labels(task, s), average="macro", zero_division=0.0))


def _kappa_weights(task: str) -> str | None:
    """Ordinal grades: a 0-vs-4 confusion must cost more than 0-vs-1."""
    return "quadratic" if task == ORDINAL else None


@METRICS.register("kappa", "Cohen's kappa (quadratic-weighted for ordinal; multi-label: mean per label)", better="higher")
def kappa(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    pred = predict_labels(task, s)
    with _quiet_sklearn():
        if task == MULTILABEL:
            per = [skm.cohen_kappa_score(y[:, j], pred[:, j], labels=[0, 1]) for j in range(y.shape[1])]
            per = np.array(per, dtype=np.float64)
            value = float(np.nanmean(per)) if np.isfinite(per).any() else math.nan
        else:
            labels = np.arange(s.shape[1])  # true grade distances for the quadratic weights
            value = float(skm.cohen_kappa_score(y, pred, labels=labels, weights=_kappa_weights(task)))
    if math.isnan(value):
        _note("kappa undefined: labels and predictions are both a single class")
    return value


@METRICS.register("ece", f"expected calibration error, {ECE_BINS} equal-width confidence bins", better="lower")
def ece(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    bins = reliability_bins(task, y_true, scores)
    count = np.array(bins["count"], dtype=np.float64)
    conf = np.nan_to_num(np.array(bins["confidence"], dtype=np.float64))
    accu = np.nan_to_num(np.array(bins["accuracy"], dtype=np.float64))
    return float(np.sum(count * np.abs(accu - conf)) / count.sum())


@METRICS.register("nll", "negative log-likelihood (log-loss; multi-label: mean per-label BCE)", better="lower")
def nll(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    y, s = validate_inputs(task, y_true, scores)
    with _quiet_sklearn():
        if task == MULTILABEL:
            return float(np.mean([skm.log_loss(y[:, j], s[:, j], labels=[0, 1]) for j in range(y.shape[1])]))
        return float(skm.log_loss(y, s, labels=np.arange(s.shape[1])))


# ---------------------------------------------------------------------------
# Vectorised bootstrap
# ---------------------------------------------------------------------------
def _group_layout(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, group starts, group keys) so that reduceat sums samples sharing a key."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return order, starts, k[starts]


@dataclass(frozen=True)
class _AucLayout:
    """Sample-order facts for one AUC problem that every resample reuses."""

    pos_idx: np.ndarray  # positives
    neg_order: np.ndarray  # negatives sorted by score
    n_lt: np.ndarray  # per positive: number of negatives scoring strictly lower
    n_le: np.ndarray  # ... scoring lower or equal
    has_ties: bool

    @classmethod
    def build(cls, truth: np.ndarray, score: np.ndarray) -> "_AucLayout":
        pos_idx = np.flatnonzero(truth == 1)
        neg_idx = np.flatnonzero(truth == 0)
        neg_order = neg_idx[np.argsort(score[neg_idx], kind="stable")]
        neg_sorted, pos_scores = score[neg_order], score[pos_idx]
        n_lt = np.searchsorted(neg_sorted, pos_scores, side="left")
        n_le = np.searchsorted(neg_sorted, pos_scores, side="right")
        return cls(pos_idx, neg_order, n_lt, n_le, bool(np.any(n_lt != n_le)))


class _Prepared:
    """Validated inputs plus per-sample quantities shared by every resample."""

    def __init__(self, task: str, y: np.ndarray, s: np.ndarray) -> None:
        self.task, self.y, self.s = task, y, s
        self.n = y.shape[0]
        self.n_classes = s.shape[1]
        self.pred = predict_labels(task, s)

    @cached_property
    def confusion_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _group_layout(self.y * self.n_classes + self.pred)

    @cached_property
    def binary_columns(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(truth, positive score) per AUC problem, as in ``_per_class_auc``."""
        if self.task == BINARY:
            return [(self.y, self.s[:, -1])]
        if self.task == MULTILABEL:
            return [(self.y[:, j], self.s[:, j]) for j in range(self.n_classes)]
        return [((self.y == c).astype(np.int64), self.s[:, c]) for c in range(self.n_classes)]

    @cached_property
    def auc_layouts(self) -> list["_AucLayout"]:
        return [_AucLayout.build(t, p) for t, p in self.binary_columns]

    @cached_property
    def label_indicators(self) -> dict[str, np.ndarray]:
        """Multi-label [N, L] indicators of tp/fp/fn/tn, summed per resample by a matmul."""
        y, p = self.y.astype(bool), self.pred.astype(bool)
        return {k: v.astype(np.float64) for k, v in {"tp": y & p, "fp": ~y & p, "fn": y & ~p, "tn": ~y & ~p}.items()}

    @cached_property
    def calibration_stats(self) -> np.ndarray:
        """Per sample and bin: [count | sum of confidence | sum correct], shape [N, 3*bins]."""
        conf, correct = confidence_and_correct(self.task, self.y, self.s)
        conf = conf.reshape(self.n, -1)
        correct = correct.reshape(self.n, -1).astype(np.float64)
        b = _bin_index(conf, ECE_BINS)
        onehot = np.zeros((self.n, conf.shape[1], ECE_BINS))
        np.put_along_axis(onehot, b[..., None], 1.0, axis=2)
        return np.concatenate(
            [onehot.sum(1), (onehot * conf[..., None]).sum(1), (onehot * correct[..., None]).sum(1)], axis=1
        )

    @cached_property
    def sample_nll(self) -> np.ndarray:
        eps = np.finfo(np.float64).eps
        if self.task == MULTILABEL:
            p = np.clip(self.s, eps, 1 - eps)
            return -(self.y * np.log(p) + (1 - self.y) * np.log1p(-p)).mean(axis=1)
        return -np.log(np.clip(self.s[np.arange(self.n), self.y], eps, 1 - eps))


class _Block:
    """A block of resamples, each as a count vector over the test samples."""

    def __init__(self, prep: _Prepared, weights: np.ndarray) -> None:
        self.prep, self.w = prep, weights
        self.total = weights.sum(axis=1)

    @cached_property
    def w_int(self) -> np.ndarray:
        """Counts as integers: the AUC sums are then exact."""
        return self.w.astype(np.int64)

    @cached_property
    def confusion(self) -> np.ndarray:
        """[B, C, C] weighted confusion matrices (rows = truth)."""
        c = self.prep.n_classes
        order, starts, keys = self.prep.confusion_layout
        out = np.zeros((self.w.shape[0], c * c))
        out[:, keys] = np.add.reduceat(np.take(self.w, order, axis=1), starts, axis=1)
        return out.reshape(-1, c, c)

    @cached_property
    def label_counts(self) -> dict[str, np.ndarray]:
        """Multi-label: per resample and label, weighted tp/fp/fn/tn [B, L]."""
        return {k: self.w @ v for k, v in self.prep.label_indicators.items()}


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row mean ignoring NaN; NaN (resample skipped) when a row has no finite value."""
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(finite, values, 0.0).sum(axis=1) / n, np.nan)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


@batched("acc")
def _acc_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    if prep.task == MULTILABEL:
        lc = blk.label_counts
        return ((lc["tp"] + lc["tn"]) / blk.total[:, None]).mean(axis=1)
    return np.trace(blk.confusion, axis1=1, axis2=2) / blk.total


@batched("balanced_acc")
def _balanced_acc_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    if prep.task == MULTILABEL:
        lc = blk.label_counts
        sens = _divide(lc["tp"], lc["tp"] + lc["fn"])
        spec = _divide(lc["tn"], lc["tn"] + lc["fp"])
        per_label = _nanmean_rows(np.stack([sens, spec], axis=2).reshape(-1, 2)).reshape(sens.shape)
        return per_label.mean(axis=1)
    cm = blk.confusion
    return _nanmean_rows(_divide(np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2)))


@batched("f1_macro")
def _f1_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    if prep.task == MULTILABEL:
        lc = blk.label_counts
        denom = 2 * lc["tp"] + lc["fp"] + lc["fn"]
        return np.nan_to_num(_divide(2 * lc["tp"], denom)).mean(axis=1)
    cm = blk.confusion
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    f1 = _divide(2 * tp, support + predicted)  # NaN exactly for classes sklearn leaves out
    return _nanmean_rows(f1)


def _kappa_from_confusion(cm: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = cm.sum(axis=(1, 2))
    expected = cm.sum(axis=2)[:, :, None] * cm.sum(axis=1)[:, None, :] / np.where(total > 0, total, 1)[:, None, None]
    num = (weights * cm).sum(axis=(1, 2))
    den = (weights * expected).sum(axis=(1, 2))
    return 1.0 - _divide(num, den)


@batched("kappa")
def _kappa_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    if prep.task == MULTILABEL:
        lc = blk.label_counts
        cm = np.stack([lc["tn"], lc["fp"], lc["fn"], lc["tp"]], axis=2).reshape(-1, 2, 2)
        per_label = _kappa_from_confusion(cm, 1.0 - np.eye(2)).reshape(lc["tp"].shape)
        return _nanmean_rows(per_label)
    idx = np.arange(prep.n_classes)
    w = (idx[:, None] - idx[None, :]) ** 2.0 if _kappa_weights(prep.task) == "quadratic" else 1.0 - np.eye(prep.n_classes)
    return _kappa_from_confusion(blk.confusion, w)


@batched("auc")
def _auc_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    """Weighted Mann-Whitney U in exact integer arithmetic, per resample.

    AUC = sum over positives of w_pos * (negative weight with a lower score + half
    the negative weight with an equal score) / (W_pos * W_neg). Negatives are
    pre-sorted once, so per resample this is one cumsum over the negatives and
    two gathers at each positive's precomputed rank (strictly-below / at-or-below),
    with no sort and no Python loop over samples.
    """
    per = []
    for layout in prep.auc_layouts:
        per.append(_auc_one(blk.w_int, layout))
    return _nanmean_rows(np.stack(per, axis=1))


def _auc_one(w: np.ndarray, layout: "_AucLayout") -> np.ndarray:
    b = w.shape[0]
    cum = np.zeros((b, layout.neg_order.size + 1), dtype=np.int64)
    np.cumsum(np.take(w, layout.neg_order, axis=1), axis=1, out=cum[:, 1:])
    wp = np.take(w, layout.pos_idx, axis=1)
    below = np.take(cum, layout.n_lt, axis=1)
    if layout.has_ties:
        twice = below + np.take(cum, layout.n_le, axis=1)
    else:
        twice = 2 * below
    num = np.einsum("bp,bp->b", wp, twice)
    return _divide(num.astype(np.float64), 2.0 * wp.sum(axis=1) * cum[:, -1])


@batched("ece")
def _ece_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    sums = blk.w @ prep.calibration_stats
    count, conf, correct = np.split(sums, 3, axis=1)
    return np.abs(correct - conf).sum(axis=1) / count.sum(axis=1)


@batched("nll")
def _nll_batch(prep: _Prepared, blk: _Block) -> np.ndarray:
    return (blk.w @ prep.sample_nll) / blk.total


def _loop_batch(fn: MetricFn) -> BatchFn:
    """Per-resample fallback for metrics registered without a vectorised twin."""

    def run(prep: _Prepared, blk: _Block) -> np.ndarray:
        out = np.full(blk.w.shape[0], np.nan)
        for b, counts in enumerate(blk.w.astype(np.int64)):
            idx = np.repeat(np.arange(prep.n), counts)
            try:
                out[b] = fn(prep.task, prep.y[idx], prep.s[idx])
            except (ValueError, FmevalError):
                pass
        return out

    return run


def bootstrap_weights(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of resample count vectors [B, n] (float), same stream for every metric.

    Indices for a whole block are drawn in one call and turned into counts with
    one bincount; blocks keep memory bounded for 47k-sample test sets. The block
    size depends only on ``n`` so results are reproducible for a given seed.
    """
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, BOOT_BLOCK_ELEMS // n))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        idx += (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def bootstrap(
    task: str, y: np.ndarray, s: np.ndarray, names: Sequence[str], *, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """Metric values on ``n_boot`` resamples (NaN where undefined), for validated inputs."""
    prep = _Prepared(task, y, s)
    fns = {name: _BATCHED.get(name) or _loop_batch(METRICS.get(name)) for name in names}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    # The matmuls here are thin and memory-bound: extra BLAS threads only spin, and
    # on a busy machine (data loaders, other runs) they made the bootstrap 5-10x slower.
    with _collect_notes(), _quiet_sklearn(), threadpool_limits(limits=1, user_api="blas"):
        for w in bootstrap_weights(prep.n, n_boot, seed):
            blk = _Block(prep, w)
            for name, fn in fns.items():
                parts[name].append(np.asarray(fn(prep, blk), dtype=np.float64))
    return {name: np.concatenate(v) if v else np.empty(0) for name, v in parts.items()}


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float, int]:
    """Percentile interval over the defined resamples; (nan, nan, k) if fewer than 2."""
    ok = values[np.isfinite(values)]
    if ok.size < 2:
        return math.nan, math.nan, int(ok.size)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(ok.size)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _nan_to_none(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


@dataclass
class MetricValue:
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_boot: int = 0  # resamples on which the metric was defined

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _nan_to_none(self.value),
            "ci_low": _nan_to_none(self.ci_low),
            "ci_high": _nan_to_none(self.ci_high),
            "n_boot": self.n_boot,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetricValue":
        return cls(
            _none_to_nan(d.get("value")),
            _none_to_nan(d.get("ci_low")),
            _none_to_nan(d.get("ci_high")),
            int(d.get("n_boot", 0)),
        )


@dataclass
class MetricsReport:
    """Everything a report shows about one split. JSON-safe via ``to_dict`` (NaN -> null)."""

    task: str
    n: int
    class_names: list[str]
    metrics: dict[str, MetricValue]
    baseline: dict[str, float]
    per_class: dict[str, dict[str, Any]]
    confusion: list[list[int]] | None
    warnings: list[str] = field(default_factory=list)
    reliability: dict[str, list] = field(default_factory=dict)
    n_boot: int = 0
    ci: float = 0.95
    seed: int = 0

    def value(self, name: str) -> float:
        m = self.metrics.get(name)
        return m.value if m is not None else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n": self.n,
            "class_names": list(self.class_names),
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "baseline": {k: _nan_to_none(v) for k, v in self.baseline.items()},
            "per_class": {c: {k: _nan_to_none(v) for k, v in d.items()} for c, d in self.per_class.items()},
            "confusion": self.confusion,
            "warnings": list(self.warnings),
            "reliability": self.reliability,
            "n_boot": self.n_boot,
            "ci": self.ci,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetricsReport":
        return cls(
            task=d["task"],
            n=int(d["n"]),
            class_names=list(d["class_names"]),
            metrics={k: MetricValue.from_dict(v) for k, v in d["metrics"].items()},
            baseline={k: _none_to_nan(v) for k, v in d.get("baseline", {}).items()},
            per_class={
                c: {k: (math.nan if v is None else v) for k, v in row.items()} for c, row in d.get("per_class", {}).items()
            },
            confusion=d.get("confusion"),
            warnings=list(d.get("warnings", [])),
            reliability=dict(d.get("reliability", {})),
            n_boot=int(d.get("n_boot", 0)),
            ci=float(d.get("ci", 0.95)),
            seed=int(d.get("seed", 0)),
        )


def _class_name_list(class_names: Sequence[str] | Mapping[Any, str]) -> list[str]:
    """Accept a list or medmnist's ``INFO[flag]["label"]`` mapping {"0": name, ...}."""
    if isinstance(class_names, Mapping):
        return [str(class_names[k]) for k in sorted(class_names, key=lambda k: int(k))]
    return [str(c) for c in class_names]


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def per_class_stats(task: str, y: np.ndarray, s: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Sensitivity (recall), specificity, precision, F1, AUC, support, prevalence and
    predicted rate per class (one-vs-rest) or per label. Accuracy hides a model
    that never predicts a rare class; this table does not."""
    pred = predict_labels(task, s)
    if task == MULTILABEL:
        yt, pt = y.astype(bool), pred.astype(bool)
    else:
        classes = np.arange(s.shape[1])
        yt, pt = y[:, None] == classes, pred[:, None] == classes
    tp, fp = (yt & pt).sum(0), (~yt & pt).sum(0)
    fn, tn = (yt & ~pt).sum(0), (~yt & ~pt).sum(0)
    rates = _rates(tp, fp, fn, tn)
    aucs = _per_class_auc(MULTILABEL if task == MULTILABEL else MULTICLASS, y, s)
    n = len(y)
    out = {}
    for j, name in enumerate(names):
        row = {k: float(v[j]) for k, v in rates.items()}
        row.update(
            auc=aucs[j], support=int(tp[j] + fn[j]), predicted=int(tp[j] + fp[j]),
            prevalence=float((tp[j] + fn[j]) / n), pred_rate=float((tp[j] + fp[j]) / n),
        )
        out[name] = row
    return out


def collapse_warning(task: str, y: np.ndarray, pred: np.ndarray, names: Sequence[str],
                     threshold: float = COLLAPSE_FRACTION) -> str | None:
    """Flag a model whose hard predictions are (nearly) constant.

    Such a model can still score a high accuracy on imbalanced data (e.g. 0.947
    on ChestMNIST, 0.625 on PneumoniaMNIST), which is exactly when a reader is
    fooled; the warning names the class it collapsed to.
    """
    n = len(pred)
    if task == MULTILABEL:
        rows, counts = np.unique(pred, axis=0, return_counts=True)
        top = int(np.argmax(counts))
        frac = counts[top] / n
        if frac < threshold:
            return None
        on = [names[j] for j in np.flatnonzero(rows[top])]
        label_set = ", ".join(on) if on else "no label"
        return f"predictions collapsed: {frac:.1%} of {n} samples get the same label set ({label_set})"
    counts = np.bincount(pred, minlength=len(names))
    top = int(np.argmax(counts))
    frac = counts[top] / n
    if frac < threshold:
        return None
    majority = int(np.argmax(np.bincount(y, minlength=len(names))))
    kind = "the majority class" if top == majority else "a single class"
    return f"predictions collapsed to {kind} {names[top]!r}: {frac:.1%} of {n} samples predicted as it"


def compute_metrics(
    task: str,
    y_true: Any,
    scores: Any,
    *,
    class_names: Sequence[str] | Mapping[Any, str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    prior: Any = None,
    metrics: Sequence[str] | None = None,
) -> MetricsReport:
    """All registered metrics with percentile-bootstrap CIs, a majority baseline,
    per-class statistics and sanity warnings, for one evaluated split.

    ``prior``: class probabilities (or training labels) for the majority
    baseline; by default the label distribution of ``y_true`` itself, which
    makes the baseline ACC the majority rate of the evaluated split.
    ``n_boot=0`` disables CIs. Bootstrap cost grows as n_boot x N (x classes
    for AUC) with memory bounded by ``BOOT_BLOCK_ELEMS``: measured on a busy
    2-core box, ~0.05 s for 1000 x 624 (binary), ~0.9 s for 1000 x 7,180
    (9 classes), ~5 s for 1000 x 47,280 (8 classes) or 22,433 x 14 labels. For
    sweeps over the big sets, lower ``n_boot`` (e.g. 200; the CI endpoints get
    noisier, not narrower).

    A resample in which a class/label is absent averages AUC over the classes it
    has (as the point estimate does); a resample where a metric is undefined is
    dropped for that metric and the count is kept in ``MetricValue.n_boot``.
    ECE is biased upwards under resampling, so its CI can sit above the point.
    """
    names = _class_name_list(class_names)
    y, s = validate_inputs(task, y_true, scores, n_classes=len(names))
    if not 0.0 < ci < 1.0:
        raise MetricInputError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise MetricInputError(f"n_boot must be >= 0, got {n_boot}")
    wanted = [METRICS.entry(m).name for m in metrics] if metrics is not None else METRICS.names()

    with _collect_notes() as notes:
        values = {m: METRICS.get(m)(task, y, s) for m in wanted}
    boot = bootstrap(task, y, s, wanted, n_boot=n_boot, seed=seed) if n_boot else {}
    report_metrics = {}
    for m in wanted:
        lo, hi, k = percentile_ci(boot[m], ci) if n_boot else (math.nan, math.nan, 0)
        report_metrics[m] = MetricValue(values[m], lo, hi, k)
        if n_boot and k < n_boot and math.isfinite(values[m]):
            notes.append(f"{m}: CI from {k}/{n_boot} resamples (undefined on the others)")

    base_scores = majority_scores(task, y if prior is None else prior, len(y), n_classes=len(names))
    with _collect_notes():
        baseline = {m: METRICS.get(m)(task, y, base_scores) for m in wanted}

    pred = predict_labels(task, s)
    collapsed = collapse_warning(task, y, pred, names)
    if collapsed:
        notes.insert(0, collapsed)
    if "acc" in values and values["acc"] <= baseline["acc"]:
        notes.append(f"acc {values['acc']:.4f} does not beat the majority-class baseline {baseline['acc']:.4f}")

    confusion = None
    if task != MULTILABEL:
        confusion = skm.confusion_matrix(y, pred, labels=np.arange(len(names))).tolist()
    return MetricsReport(
        task=task, n=int(len(y)), class_names=names, metrics=report_metrics, baseline=baseline,
        per_class=per_class_stats(task, y, s, names), confusion=confusion, warnings=notes,
        reliability=reliability_bins(task, y, s), n_boot=n_boot, ci=ci, seed=seed,
    )


def paired_difference(
    task: str, y_true: Any, scores_a: Any, scores_b: Any, metric: str = "auc", *,
    n_boot: int = 1000, seed: int = 0, ci: float = 0.95, n_classes: int | None = None,
) -> dict[str, float]:
    """``metric(a) - metric(b)`` on the same test set, with a paired bootstrap CI.

    Both score sets are evaluated on the *same* resamples (the resample stream
    depends only on the sample count and the seed), so the interval reflects
    the difference between the two models, not the noise of the test set
    each would show alone. ``p_boot`` is the fraction of resamples where the
    sign of the difference flips (a rough two-sided bootstrap p-value).
    """
    name = METRICS.entry(metric).name
    ya, sa = validate_inputs(task, y_true, scores_a, n_classes=n_classes)
    _, sb = validate_inputs(task, y_true, scores_b, n_classes=n_classes)
    with _collect_notes():
        diff = METRICS.get(name)(task, ya, sa) - METRICS.get(name)(task, ya, sb)
    if not n_boot:
        return {"diff": float(diff), "ci_low": math.nan, "ci_high": math.nan, "p_boot": math.nan, "n_boot": 0}
    da = bootstrap(task, ya, sa, [name], n_boot=n_boot, seed=seed)[name]
    db = bootstrap(task, ya, sb, [name], n_boot=n_boot, seed=seed)[name]
    d = da - db
    lo, hi, k = percentile_ci(d, ci)
    ok = d[np.isfinite(d)]
    flips = float(np.mean(np.sign(ok) != np.sign(diff))) if ok.size and diff != 0 else math.nan
    return {"diff": float(diff), "ci_low": lo, "ci_high": hi, "p_boot": min(1.0, 2 * flips), "n_boot": k}
