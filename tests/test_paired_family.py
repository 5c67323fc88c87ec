"""Issue 22 item 8: a study's paired comparisons pool training seeds (seeds and test images resampled
together) and carry a Holm correction over the study's family of comparisons. Expectations are computed
here independently: Holm by hand and by a loop written from the definition, point differences with
scikit-learn. Each test failed on the per-seed, uncorrected code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmeval.metrics import holm, paired_difference
from fmeval.studies.cells import pool_entries
from fmeval.studies.paired import Pair, compare_pairs, paired_table
from fmeval.studies.samples import RunScores

N = 400


def _holm_reference(p):
    """Holm (1979) from the definition: reject H_(1..i) while p_(i) <= alpha / (m - i + 1); the
    adjusted p of H_(i) is the smallest alpha at which it is rejected."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def test_holm_by_hand_and_against_the_definition():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.5]) == [1.0, 1.0]  # capped at 1
    got = holm([0.01, math.nan, 0.02])  # an undefined p is not a member of the family
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=int(rng.integers(1, 12))).tolist()
        assert holm(p) == pytest.approx(_holm_reference(p))


def _scores(y, sep, rng):
    """Binary scores [N, 2] whose positive column separates the classes by ``sep`` (noise sd 1)."""
    pos = 1 / (1 + np.exp(-(sep * y + rng.normal(size=y.size))))
    return np.stack([1 - pos, pos], 1)


def _study(separations: dict[str, list[float]]):
    """Rows and scores of one kNN cell: model -> one separation per training seed."""
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=N) < 0.4).astype(np.int64)
    rows, scores = [], {}
    for model, seps in separations.items():
        for seed, sep in enumerate(seps):
            s = _scores(y, sep, rng)
            rid = f"{model}-{seed}"
            scores[rid] = RunScores(np.arange(N), s, y)
            rows.append({"dataset": "pneumoniamnist", "size": 28, "limit": "", "model": model, "mode": "knn",
                         "style": "", "variant": "v", "seed": seed, "run_id": rid, "task": "binary-class",
                         "auc": roc_auc_score(y, s[:, 1])})
    return pool_entries(rows), (lambda row: scores[row["run_id"]]), y, scores


def test_pairs_pool_seeds_with_means_from_sklearn_and_holm_over_the_family():
    entries, scores_of, y, scores = _study({"a": [2.5, 2.4], "b": [1.0, 1.1], "c": [0.2, 0.3]})
    pairs, notes = compare_pairs(entries, scores_of, metric="auc", n_boot=200)
    assert not notes and len(pairs) == 3  # one pair per two contenders, not one per seed
    auc = {m: np.mean([roc_auc_score(y, scores[f"{m}-{s}"].scores[:, 1]) for s in (0, 1)]) for m in "abc"}
    for p in pairs:
        assert p.seeds == "0,1" and p.a_run.count(";") == 1
        assert p.diff == pytest.approx(auc[p.a[0]] - auc[p.b[0]], abs=1e-12) and p.diff > 0
        assert p.correction == "Holm"
    assert [p.p_adj for p in pairs] == pytest.approx(_holm_reference([p.p_boot for p in pairs]))
    md = paired_table(pairs, "auc").to_markdown(2)
    assert "p (Holm)" in md and "Holm's step-down correction over the 3 comparisons" in " ".join(md.split())


def test_seed_to_seed_variance_widens_the_interval():
    """A's two seeds straddle B's: each seed alone 'wins' or 'loses' clearly, the pooled verdict does not."""
    entries, scores_of, y, scores = _study({"a": [3.5, 1.2], "b": [2.0, 2.0]})
    (pair,), _ = compare_pairs(entries, scores_of, metric="auc", n_boot=300)
    assert pair.ci_low < 0 < pair.ci_high and pair.verdict == "no clear difference"
    per_seed = [paired_difference("binary-class", y, scores[f"a-{s}"].scores, scores[f"b-{s}"].scores, "auc",
                                  n_boot=300, seed=s) for s in (0, 1)]
    assert all(d["ci_low"] > 0 or d["ci_high"] < 0 for d in per_seed)  # each seed alone looks decisive
    assert pair.ci_high - pair.ci_low > max(d["ci_high"] - d["ci_low"] for d in per_seed)


def test_one_seed_pairs_are_the_plain_paired_bootstrap():
    entries, scores_of, y, scores = _study({"a": [2.0], "b": [1.0]})
    (pair,), _ = compare_pairs(entries, scores_of, metric="auc", n_boot=200)
    d = paired_difference("binary-class", y, scores["a-0"].scores, scores["b-0"].scores, "auc", n_boot=200, seed=0)
    assert (pair.diff, pair.ci_low, pair.ci_high, pair.p_boot) == pytest.approx(
        (d["diff"], d["ci_low"], d["ci_high"], d["p_boot"]))
    assert pair.p_adj == pytest.approx(pair.p_boot)  # a family of one


def test_verdict_needs_the_corrected_p_value():
    kw = dict(dataset="d", size=28, limit=0, mode="knn", style="", seeds="0", a="x", b="y", metric="auc",
              a_value=0.9, b_value=0.8, diff=0.1, ci_low=0.01, ci_high=0.2, p_boot=0.02, correction="Holm",
              n_boot=1000, n_test=100, a_run="r1", b_run="r2")
    assert Pair(**kw, p_adj=0.04).verdict == "x beats y"
    assert Pair(**kw, p_adj=0.06).verdict == "no clear difference"  # the raw CI alone would have said 'beats'
    assert Pair(**{**kw, "metric": "ece", "ci_low": -0.2, "ci_high": -0.01}, p_adj=0.01).significant  # lower is better
