"""Issue 22 item 8 (leaderboard half): a multi-seed entry's 95% CI is a bootstrap of the mean over seeds
that resamples the seeds and the test images together, not the mean of the per-seed CI bounds.
Expectations are computed here with a plain loop over resamples and scikit-learn's roc_auc_score."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmeval.metrics.comparisons import mean_over_seeds_ci
from fmeval.studies.cells import pool


def _scores(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = signal * (2 * y - 1) + rng.normal(size=y.size)
    p1 = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p1, p1], 1)


def _loop_ci(y, runs, seed, n_boot):
    """Second implementation: the documented streams, one resample at a time, sklearn's AUC."""
    n, k = y.size, len(runs)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # one block (n * n_boot is small)
    pick = np.random.default_rng([seed, 1]).integers(0, k, size=(n_boot, k))
    vals = []
    for b in range(n_boot):
        yb = y[idx[b]]
        if yb.min() == yb.max():
            continue
        vals.append(np.mean([roc_auc_score(yb, runs[j][idx[b], 1]) for j in pick[b]]))
    return tuple(np.quantile(vals, [0.025, 0.975]))


def test_pool_never_averages_per_seed_bounds():
    p = pool([0.70, 0.80, 0.90], [0.69, 0.79, 0.89], [0.71, 0.81, 0.91])
    assert p.mean == pytest.approx(0.80) and p.n == 3
    assert math.isnan(p.ci_low) and math.isnan(p.ci_high)  # filled in by resample_pooled_cis, never 0.79-0.81
    one = pool([0.70], [0.65], [0.75])
    assert (one.ci_low, one.ci_high) == (0.65, 0.75)  # one seed: that run's own bootstrap CI


def test_mean_over_seeds_ci_equals_a_loop_with_sklearn():
    y = (np.random.default_rng(3).random(60) < 0.4).astype(int)
    runs = [_scores(y, s, 10 + i) for i, s in enumerate((0.5, 1.0, 1.5))]
    got = mean_over_seeds_ci("binary-class", y, runs, ["auc"], n_boot=200, seed=7)["auc"]
    assert got == pytest.approx(_loop_ci(y, runs, 7, 200), abs=1e-9)


def test_one_seed_is_that_runs_percentile_bootstrap():
    from fmeval.metrics import compute_metrics

    y = (np.random.default_rng(4).random(80) < 0.5).astype(int)
    s = _scores(y, 1.0, 1)
    got = mean_over_seeds_ci("binary-class", y, [s], ["auc", "acc"], n_boot=300, seed=5)
    rep = compute_metrics("binary-class", y, s, class_names=["a", "b"], n_boot=300, seed=5)
    for m in ("auc", "acc"):
        assert got[m] == pytest.approx((rep.metrics[m].ci_low, rep.metrics[m].ci_high), abs=1e-12)


def test_seed_spread_widens_the_interval_beyond_the_mean_of_bounds():
    """Seeds at AUC ~0.70 / 0.80 / 0.90 on 3,000 images: each run's own CI is about +-0.02, so the
    mean of bounds is a narrow band around 0.80; resampling the seeds covers the spread."""
    y = (np.random.default_rng(0).random(3000) < 0.5).astype(int)
    runs = [_scores(y, s, i) for i, s in enumerate((0.37, 0.6, 0.92))]
    aucs = [roc_auc_score(y, r[:, 1]) for r in runs]
    assert aucs[0] < 0.74 and aucs[2] > 0.86
    lo, hi = mean_over_seeds_ci("binary-class", y, runs, ["auc"], n_boot=400, seed=1)["auc"]
    assert lo < np.mean(aucs) - 0.05 and hi > np.mean(aucs) + 0.03
    assert lo >= min(aucs) - 0.03 and hi <= max(aucs) + 0.03
