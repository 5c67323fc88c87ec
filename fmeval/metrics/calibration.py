"""Calibration: confidence of the predicted label and equal-width reliability bins (ECE's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmeval.metrics.core import BINARY, ECE_BINS, MULTILABEL, _nan_to_none, predict_labels, validate_inputs


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
