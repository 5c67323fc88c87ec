"""Few-shot episodes: pure, seeded, shared across models/modes, with a documented multi-label rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmeval.data.episodes import (
    NO_FINDING,
    indices_digest,
    make_episode,
    make_episodes,
    sample_episode,
    sample_validation,
    shortfall_warnings,
)
from fmeval.data.info import BINARY, MULTICLASS, MULTILABEL
from fmeval.errors import ConfigError, DataError

def _multiclass_labels(n: int = 600, k: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, size=(n, 1)).astype(np.uint8)


def _multilabel_labels(n: int = 800, n_labels: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = np.array([0.30, 0.15, 0.08, 0.04, 0.02, 0.01])[:n_labels]
    return (rng.random((n, n_labels)) < rates).astype(np.uint8)


def test_same_arguments_give_the_same_indices_and_they_are_sorted_unique():
    y = _multiclass_labels()
    a = sample_episode(y, MULTICLASS, 4, draw=2, seed=7)
    b = sample_episode(y.copy(), MULTICLASS, 4, draw=2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) > 0)
    # Independent of any global random state a mode might have touched.
    np.random.seed(123)
    np.testing.assert_array_equal(sample_episode(y, MULTICLASS, 4, draw=2, seed=7), a)


def test_indices_are_pinned_across_processes_and_sessions():
    """Golden indices computed once in another process: a report's episode must be
    reproducible by any later run (no hash seed, no global RNG, no platform word size)."""
    y = np.random.default_rng(0).integers(0, 5, size=(600, 1)).astype(np.uint8)
    idx = sample_episode(y, MULTICLASS, 3, draw=1, seed=11)
    assert idx.tolist() == [10, 25, 63, 78, 105, 123, 156, 198, 298, 320, 363, 393, 512, 531, 563]
    assert indices_digest(idx) == "def555e0f591c29dfa4284418242a8b4ce35de419721495a84ae08a12091d3b2"
    z = (np.random.default_rng(0).random((800, 6)) < [0.30, 0.15, 0.08, 0.04, 0.02, 0.01]).astype(np.uint8)
    assert sample_episode(z, MULTILABEL, 2, draw=0, seed=3).tolist() == [
        1, 32, 93, 238, 244, 267, 274, 305, 419, 515, 620, 710]


def test_draws_and_seeds_differ_and_validation_is_a_separate_stream():
    y = _multiclass_labels()
    eps = {(d, s): sample_episode(y, MULTICLASS, 4, d, s) for d in range(4) for s in (0, 1)}
    digests = {indices_digest(v) for v in eps.values()}
    assert len(digests) == len(eps)
    # Same labels used as "validation": the val stream must not replay the train stream.
    assert not np.array_equal(sample_validation(y, MULTICLASS, 4, 0, 0), eps[(0, 0)])


def test_exactly_k_per_class_and_episodes_nested_in_k():
    y = _multiclass_labels()
    prev = None
    for k in (1, 2, 4, 8, 16):
        idx = sample_episode(y, MULTICLASS, k, draw=3, seed=5)
        np.testing.assert_array_equal(np.bincount(y[idx, 0], minlength=5), [k] * 5)
        if prev is not None:
            assert set(prev) <= set(idx)
        prev = idx


def test_k_larger_than_a_class_takes_all_of_it_and_is_recorded():
    y = np.array([0] * 50 + [1] * 3, dtype=np.uint8)[:, None]
    ep = make_episode(y, BINARY, 8, draw=0, seed=0, class_names=("normal", "pneumonia"))
    assert ep.counts == {"normal": 8, "pneumonia": 3}
    assert ep.short == ("pneumonia",)
    assert set(np.flatnonzero(y[:, 0] == 1)) <= set(ep.indices)
    warn = shortfall_warnings([ep, ep])
    assert len(warn) == 1 and "pneumonia" in warn[0] and "8-shot" in warn[0]


def test_class_absent_from_training_is_recorded_with_zero():
    y = np.array([0, 0, 2, 2, 2], dtype=np.uint8)
    ep = make_episode(y, MULTICLASS, 1, 0, 0, class_names=("a", "b", "c"))
    assert ep.counts == {"a": 1, "b": 0, "c": 1}
    assert ep.short == ("b",)


def test_multilabel_rule_at_least_k_positives_per_label_plus_k_negatives():
    y = _multilabel_labels()
    names = [f"l{i}" for i in range(y.shape[1])]
    for k in (1, 4, 8):
        ep = make_episode(y, MULTILABEL, k, draw=1, seed=3, class_names=names)
        sel = y[ep.indices].astype(bool)
        pool = y.sum(axis=0)
        for j, name in enumerate(names):
            assert ep.counts[name] == sel[:, j].sum() >= min(k, pool[j])
        assert ep.counts[NO_FINDING] == (~sel.any(axis=1)).sum() == k
        # Greedy, shared images count: never more images than labels*K + K.
        assert ep.size <= k * (len(names) + 1)
        # The rarest label (fewest positives) gets exactly min(K, pool) positives:
        # it is filled first, from its own positives only.
        rarest = int(np.argmin(pool))
        assert sel[:, rarest].sum() == min(k, pool[rarest])


def test_multilabel_label_with_too_few_positives_is_short():
    y = np.zeros((40, 3), dtype=np.uint8)
    y[:10, 0] = 1
    y[10:12, 1] = 1  # only two positives
    y[12:20, 2] = 1
    ep = make_episode(y, MULTILABEL, 4, 0, 9, class_names=("a", "b", "c"))
    assert ep.counts == {"a": 4, "b": 2, "c": 4, NO_FINDING: 4}
    assert ep.short == ("b",)


def test_multilabel_shared_positives_count_toward_each_label():
    # Every positive of the rare label is also positive for the common one:
    # the common label needs no extra images beyond the K already chosen.
    y = np.zeros((30, 2), dtype=np.uint8)
    y[:5, 0] = 1
    y[:5, 1] = 1
    y[5:20, 1] = 1
    idx = sample_episode(y, MULTILABEL, 3, 0, 0)
    sel = y[idx]
    assert sel[:, 0].sum() == 3 and sel[:, 1].sum() == 3 and (sel.sum(axis=1) == 0).sum() == 3
    assert idx.size == 6


def test_record_is_json_ready_with_digest():
    y = _multiclass_labels()
    ep = make_episode(y, MULTICLASS, 2, 0, 1, class_names=list("abcde"))
    d = json.loads(json.dumps(ep.to_dict()))
    assert d["n"] == 10 and d["indices"] == ep.indices.tolist() and len(d["sha256"]) == 64
    assert "indices" not in ep.to_dict(include_indices=False)


def test_make_episodes_sweep_order_and_argument_errors():
    y = _multiclass_labels()
    eps = make_episodes(y, MULTICLASS, [4, 1], draws=2, seed=0, class_names=list("abcde"))
    assert [(e.shots, e.draw) for e in eps] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    np.testing.assert_array_equal(eps[2].indices, sample_episode(y, MULTICLASS, 4, 0, 0))
    with pytest.raises(ConfigError, match="--shots"):
        sample_episode(y, MULTICLASS, 0, 0, 0)
    with pytest.raises(ConfigError, match="--seed"):
        sample_episode(y, MULTICLASS, 1, 0, -1)
    with pytest.raises(ConfigError, match="--draws"):
        make_episodes(y, MULTICLASS, [1], draws=0, seed=0, class_names=list("abcde"))
    with pytest.raises(ConfigError, match="twice"):
        make_episodes(y, MULTICLASS, [1, 1], draws=1, seed=0, class_names=list("abcde"))
    with pytest.raises(DataError, match="multi-label"):
        sample_episode(y, MULTILABEL, 1, 0, 0)
    with pytest.raises(DataError, match=r"\[N\] or \[N, 1\]"):
        sample_episode(np.zeros((5, 3), dtype=np.uint8), MULTICLASS, 1, 0, 0)
