"""The vectorised bootstrap: every resample as a count vector, every metric as weighted sums.

A resample with counts ``w`` is exactly the weighted data set ``sample_weight=w``,
so a block of resamples is scored at once; the batched formulas are tested against
scikit-learn with ``sample_weight``. Metrics without a batched twin fall back to a
per-resample loop over the plain function.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
from dataclasses import dataclass
from functools import cached_property

from threadpoolctl import threadpool_limits

from fmeval.errors import FmevalError
from fmeval.metrics.calibration import _bin_index, confidence_and_correct
from fmeval.metrics.core import (
    _BATCHED, BINARY, ECE_BINS, METRICS, MULTILABEL, BatchFn, MetricFn, _collect_notes, _quiet_sklearn,
    _divide, _nanmean_rows, batched, predict_labels, validate_inputs,
)
from fmeval.metrics.point import _kappa_weights


# Elements of the [resamples x samples] weight block processed at once: bounds the
# bootstrap's memory to a few tens of MB whatever the test-set size.
BOOT_BLOCK_ELEMS = 1 << 19


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
