"""Point metrics (scikit-learn / ``medmnist.Evaluator`` rules), per-class statistics, collapse check.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

from fmeval.metrics.calibration import reliability_bins
from fmeval.metrics.core import (
    BINARY, COLLAPSE_FRACTION, MULTICLASS, ECE_BINS, METRICS, MULTILABEL, ORDINAL, _note, _quiet_sklearn,
    _divide, predict_labels, validate_inputs,
)


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
