"""Metrics agree with scikit-learn and medmnist; bootstrap, baseline and warnings behave."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn import metrics as skm

from fmeval import metrics as M
from fmeval.errors import FmevalError

TASKS = [(M.BINARY, 2), (M.MULTICLASS, 6), (M.ORDINAL, 5), (M.MULTILABEL, 7)]


def make_data(task: str, n: int, c: int, seed: int = 0, signal: float = 1.0, ties: bool = False):
    """Informative but imperfect probabilities; ``ties`` rounds scores so AUC must handle equal scores."""
    rng = np.random.default_rng(seed)
    if task == M.MULTILABEL:
        y = (rng.random((n, c)) < np.linspace(0.1, 0.5, c)).astype(np.int64)
        s = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, c)))))
    else:
        y = rng.integers(0, c, n)
        logits = rng.normal(size=(n, c))
        logits[np.arange(n), y] += signal
        s = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties and task == M.MULTILABEL:
        s = np.round(s, 1)
    elif ties:  # few distinct rows, so many samples share a score exactly
        palette = rng.dirichlet(np.ones(c), size=2 * c)
        row = np.where(rng.random(n) < 0.6, 2 * y + rng.integers(0, 2, n), rng.integers(0, 2 * c, n))
        palette[np.arange(2 * c), np.arange(2 * c) // 2] += 1.0  # rows 2k, 2k+1 favour class k
        s = (palette / palette.sum(axis=1, keepdims=True))[row]
    return y, s


def hard_pred(task: str, s: np.ndarray) -> np.ndarray:
    if task == M.BINARY:
        return (s[:, 1] > 0.5).astype(int)
    if task == M.MULTILABEL:
        return (s > 0.5).astype(int)
    return s.argmax(axis=1)


def per_label_mean(fn, y, p) -> float:
    return float(np.mean([fn(y[:, j], p[:, j]) for j in range(y.shape[1])]))


def sklearn_reference(task: str, name: str, y: np.ndarray, s: np.ndarray) -> float:
    """What each metric must equal, written directly against scikit-learn."""
    p = hard_pred(task, s)
    ml = task == M.MULTILABEL
    if name == "acc":
        return per_label_mean(skm.accuracy_score, y, p) if ml else skm.accuracy_score(y, p)
    if name == "auc":
        if task == M.BINARY:
            return skm.roc_auc_score(y, s[:, 1])
        if ml:
            return skm.roc_auc_score(y, s, average="macro")
        return skm.roc_auc_score(y, s, multi_class="ovr", average="macro")
    if name == "balanced_acc":
        return per_label_mean(skm.balanced_accuracy_score, y, p) if ml else skm.balanced_accuracy_score(y, p)
    if name == "f1_macro":
        return skm.f1_score(y, p, average="macro", zero_division=0.0)
    if name == "kappa":
        if ml:
            return per_label_mean(skm.cohen_kappa_score, y, p)
        return skm.cohen_kappa_score(y, p, weights="quadratic" if task == M.ORDINAL else None)
    if name == "nll":
        if ml:
            return per_label_mean(lambda a, b: skm.log_loss(a, b, labels=[0, 1]), y, s)
        return skm.log_loss(y, s)
    if name == "ece":
        return naive_ece(task, y, s)
    raise AssertionError(name)


def naive_ece(task: str, y: np.ndarray, s: np.ndarray, bins: int = 15) -> float:
    """Textbook ECE (Guo et al. 2017) with explicit bin loops, as an independent check."""
    if task == M.MULTILABEL:
        p = s.ravel()
        pred = p > 0.5
        conf = np.where(pred, p, 1 - p)
        correct = pred == y.ravel().astype(bool)
    elif task == M.BINARY:
        pred = s[:, 1] > 0.5
        conf = np.where(pred, s[:, 1], 1 - s[:, 1])
        correct = pred == y.astype(bool)
    else:
        conf, correct = s.max(axis=1), s.argmax(axis=1) == y
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


# ---------------------------------------------------------------------------
# Agreement with scikit-learn and medmnist
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("task,c", TASKS)
@pytest.mark.parametrize("name", ["acc", "auc", "balanced_acc", "f1_macro", "kappa", "nll", "ece"])
def test_metric_equals_sklearn(task, c, name):
    y, s = make_data(task, 500, c, seed=1)
    got = M.METRICS.get(name)(task, y, s)
    assert got == pytest.approx(sklearn_reference(task, name, y, s), abs=1e-10)


@pytest.mark.parametrize("task,c", TASKS)
def test_acc_auc_match_medmnist_evaluator(task, c):
    y, s = make_data(task, 400, c, seed=2)
    y_med = y if task == M.MULTILABEL else y[:, None]  # medmnist stores labels as [N, 1]
    assert M.acc(task, y_med, s) == pytest.approx(getACC(y_med, s, task), abs=1e-12)
    assert M.auc(task, y_med, s) == pytest.approx(getAUC(y_med, s, task), abs=1e-12)


def test_binary_threshold_is_strict_like_medmnist():
    y = np.array([0, 1, 1])
    s = np.array([[0.5, 0.5], [0.4, 0.6], [0.5, 0.5]])
    assert M.predict_labels(M.BINARY, s).tolist() == [0, 1, 0]
    assert M.acc(M.BINARY, y, s) == pytest.approx(getACC(y, s, M.BINARY))


def test_quadratic_kappa_for_ordinal_differs_from_unweighted():
    # Same number of errors, but near misses (off by one grade) vs. far misses.
    y = np.repeat(np.arange(5), 20)
    near = np.clip(y + (np.arange(100) % 3 == 0), 0, 4)
    probs = np.eye(5)[near] * 0.9 + 0.02
    ordinal = M.kappa(M.ORDINAL, y, probs)
    nominal = M.kappa(M.MULTICLASS, y, probs)
    assert ordinal == pytest.approx(skm.cohen_kappa_score(y, near, weights="quadratic"))
    assert nominal == pytest.approx(skm.cohen_kappa_score(y, near))
    assert ordinal > nominal + 0.1  # near misses are cheap only under quadratic weights


def test_quadratic_kappa_uses_grade_distance_when_a_grade_is_missing():
    # Grades 1 and 3 never occur; sklearn's default labels would call 0->2 a 1-step error.
    y = np.array([0, 0, 2, 2, 4, 4])
    pred = np.array([0, 2, 2, 4, 4, 0])
    probs = np.eye(5)[pred]
    expected = skm.cohen_kappa_score(y, pred, labels=np.arange(5), weights="quadratic")
    assert M.kappa(M.ORDINAL, y, probs) == pytest.approx(expected)


def test_auc_skips_absent_class_with_warning():
    y, s = make_data(M.MULTICLASS, 300, 4, seed=3)
    keep = y != 2
    y, s = y[keep], s[keep]
    with pytest.warns(M.MetricWarning, match="3/4 classes"):
        value = M.auc(M.MULTICLASS, y, s)
    present = [skm.roc_auc_score(y == c, s[:, c]) for c in (0, 1, 3)]
    assert value == pytest.approx(np.mean(present))

    with pytest.warns(M.MetricWarning, match="single class"):
        assert math.isnan(M.auc(M.BINARY, np.zeros(10, int), np.tile([0.3, 0.7], (10, 1))))


def test_ece_hand_example():
    # Two bins used: conf 0.9 (2 of 2 right) and conf 0.6 (1 of 2 right).
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    # |1 - 0.9| * 2/4 + |0.5 - 0.6| * 2/4 = 0.1
    assert M.ece(M.BINARY, y, s) == pytest.approx(0.1)


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("task,c", TASKS)
@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_bootstrap_equals_plain_metrics_on_same_resamples(task, c, ties):
    y, s = make_data(task, 120, c, seed=4, ties=ties)
    y, s = M.validate_inputs(task, y, s)
    names = M.METRICS.names()
    boot = M.bootstrap(task, y, s, names, n_boot=8, seed=7)
    weights = np.concatenate(list(M.bootstrap_weights(len(y), 8, 7)))
    for b, w in enumerate(weights.astype(int)):
        idx = np.repeat(np.arange(len(y)), w)
        for name in names:
            with warnings.catch_warnings():  # a resample may drop a class; the plain metric warns
                warnings.simplefilter("ignore")
                expected = M.METRICS.get(name)(task, y[idx], s[idx])
            got = boot[name][b]
            if math.isnan(expected):
                assert math.isnan(got), (name, b)
            else:
                assert got == pytest.approx(expected, abs=1e-9), (name, b)


@pytest.mark.parametrize("task,c", [(M.MULTICLASS, 3), (M.MULTILABEL, 3)])
def test_bootstrap_skips_classes_missing_from_a_resample(task, c):
    # One sample of a rare class: about a third of the resamples lose it entirely.
    y, s = make_data(task, 30, c, seed=13)
    if task == M.MULTILABEL:
        y[:, 2] = 0
        y[0, 2] = 1
    else:
        y[y == 2] = 1
        y[0] = 2
    y, s = M.validate_inputs(task, y, s)
    boot = M.bootstrap(task, y, s, ["auc", "balanced_acc", "f1_macro", "kappa"], n_boot=40, seed=3)
    weights = np.concatenate(list(M.bootstrap_weights(len(y), 40, 3))).astype(int)
    assert (weights[:, 0] == 0).sum() >= 5  # the rare sample really is missing from some resamples
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(len(y)), w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in boot:
                expected = M.METRICS.get(name)(task, y[idx], s[idx])
                assert boot[name][b] == pytest.approx(expected, abs=1e-9, nan_ok=True), (name, b)


def test_ci_contains_point_estimate_and_is_deterministic():
    y, s = make_data(M.MULTICLASS, 624, 4, seed=5)
    a = M.compute_metrics(M.MULTICLASS, y, s, class_names=list("abcd"), n_boot=300, seed=11)
    b = M.compute_metrics(M.MULTICLASS, y, s, class_names=list("abcd"), n_boot=300, seed=11)
    c = M.compute_metrics(M.MULTICLASS, y, s, class_names=list("abcd"), n_boot=300, seed=12)
    for name, mv in a.metrics.items():
        if name != "ece":  # ECE is biased upwards under resampling; its CI may sit above the point
            assert mv.ci_low <= mv.value <= mv.ci_high, name
        assert mv.ci_low < mv.ci_high
        assert mv.n_boot == 300
        assert (mv.ci_low, mv.ci_high) == (b.metrics[name].ci_low, b.metrics[name].ci_high)
    assert a.metrics["auc"].ci_low != c.metrics["auc"].ci_low


def test_ci_narrows_with_more_samples():
    small = make_data(M.BINARY, 300, 2, seed=6)
    large = make_data(M.BINARY, 3000, 2, seed=6)
    w_small = M.compute_metrics(M.BINARY, *small, class_names=["a", "b"], n_boot=300)
    w_large = M.compute_metrics(M.BINARY, *large, class_names=["a", "b"], n_boot=300)
    for name in ("acc", "auc", "balanced_acc"):
        width = lambda r: r.metrics[name].ci_high - r.metrics[name].ci_low  # noqa: E731
        assert width(w_large) < 0.6 * width(w_small), name


def test_n_boot_zero_disables_cis():
    y, s = make_data(M.BINARY, 100, 2)
    rep = M.compute_metrics(M.BINARY, y, s, class_names=["a", "b"], n_boot=0)
    assert all(math.isnan(mv.ci_low) and math.isnan(mv.ci_high) for mv in rep.metrics.values())
    assert rep.metrics["acc"].value == pytest.approx(M.acc(M.BINARY, y, s))


def test_bootstrap_on_a_pneumonia_sized_test_set_uses_every_resample():
    y, s = make_data(M.MULTICLASS, 624, 9, seed=8)
    rep = M.compute_metrics(M.MULTICLASS, y, s, class_names=list("abcdefghi"), n_boot=1000)
    assert all(mv.n_boot == 1000 for mv in rep.metrics.values())


def test_metric_without_batched_twin_still_gets_a_ci(monkeypatch):
    monkeypatch.setattr(M.METRICS, "_entries", dict(M.METRICS._entries))
    M.METRICS.add("mcc", lambda task, y, s: skm.matthews_corrcoef(y, M.predict_labels(task, s)), better="higher")
    y, s = make_data(M.BINARY, 200, 2)
    rep = M.compute_metrics(M.BINARY, y, s, class_names=["a", "b"], n_boot=50, metrics=["acc", "mcc"])
    assert set(rep.metrics) == {"acc", "mcc"}
    mv = rep.metrics["mcc"]
    assert mv.ci_low <= mv.value <= mv.ci_high and mv.n_boot == 50


# ---------------------------------------------------------------------------
# Baseline, per-class, warnings
# ---------------------------------------------------------------------------
def pneumonia_like(good: bool, seed: int = 0):
    """624 test images, 390 pneumonia (label 1), as in PneumoniaMNIST's test split."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(234, int), np.ones(390, int)]
    p = np.clip(0.15 + 0.7 * y + rng.normal(0, 0.15, 624), 0.01, 0.99) if good else np.full(624, 0.8)
    return y, np.stack([1 - p, p], axis=1)


def test_majority_baseline_on_pneumonia_like_split():
    y, s = pneumonia_like(good=True)
    rep = M.compute_metrics(M.BINARY, y, s, class_names=["normal", "pneumonia"], n_boot=100)
    assert rep.baseline["acc"] == pytest.approx(390 / 624) == pytest.approx(0.625)
    assert rep.baseline["auc"] == pytest.approx(0.5)
    assert rep.baseline["balanced_acc"] == pytest.approx(0.5)
    assert rep.baseline["kappa"] == pytest.approx(0.0)
    assert rep.baseline["ece"] == pytest.approx(0.0)
    # A training prior with the other majority flips the baseline's prediction.
    train = np.r_[np.zeros(700, int), np.ones(300, int)]
    rep2 = M.compute_metrics(M.BINARY, y, s, class_names=["n", "p"], n_boot=0, prior=train)
    assert rep2.baseline["acc"] == pytest.approx(234 / 624)


def test_majority_scores_helper():
    train = np.array([0, 1, 1, 2, 1])
    sc = M.majority_scores(M.MULTICLASS, train, 3, n_classes=4)
    assert sc.shape == (3, 4) and np.allclose(sc[0], [0.2, 0.6, 0.2, 0.0])
    assert np.allclose(M.majority_scores(M.BINARY, np.array([0.3, 0.7]), 2), [[0.3, 0.7]] * 2)
    ml = M.majority_scores(M.MULTILABEL, np.array([[1, 0], [1, 0], [0, 1]]), 2)
    assert M.predict_labels(M.MULTILABEL, ml).tolist() == [[1, 0], [1, 0]]


def test_multilabel_baseline_predicts_each_labels_majority():
    y, s = make_data(M.MULTILABEL, 400, 5, seed=9)
    rep = M.compute_metrics(M.MULTILABEL, y, s, class_names=list("abcde"), n_boot=0)
    majority_rate = np.maximum(y.mean(axis=0), 1 - y.mean(axis=0)).mean()
    assert rep.baseline["acc"] == pytest.approx(majority_rate)
    assert rep.baseline["auc"] == pytest.approx(0.5)


def test_collapse_warning_fires_for_constant_predictions_only():
    y, s = pneumonia_like(good=False)
    bad = M.compute_metrics(M.BINARY, y, s, class_names=["normal", "pneumonia"], n_boot=50)
    assert any("collapsed to the majority class 'pneumonia'" in w for w in bad.warnings)
    assert bad.metrics["acc"].value == pytest.approx(0.625)

    y, s = pneumonia_like(good=True)
    good = M.compute_metrics(M.BINARY, y, s, class_names=["normal", "pneumonia"], n_boot=50)
    assert not any("collapsed" in w for w in good.warnings)
    assert good.metrics["acc"].value > 0.9

    yl, sl = make_data(M.MULTILABEL, 300, 4, seed=10)
    ml = M.compute_metrics(M.MULTILABEL, yl, np.full_like(sl, 0.1), class_names=list("abcd"), n_boot=0)
    assert any("collapsed" in w and "no label" in w for w in ml.warnings)


def test_per_class_and_confusion():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    s = np.eye(3)[pred] * 0.8 + 0.2 / 3
    rep = M.compute_metrics(M.MULTICLASS, y, s, class_names={"0": "a", "1": "b", "2": "c"}, n_boot=0)
    assert rep.confusion == skm.confusion_matrix(y, pred).tolist()
    a = rep.per_class["a"]
    assert (a["sensitivity"], a["specificity"], a["precision"], a["support"]) == (0.5, 0.75, 0.5, 2)
    assert rep.per_class["b"]["precision"] == pytest.approx(2 / 3)
    assert rep.class_names == ["a", "b", "c"]


def test_multilabel_per_label_sensitivity_and_positive_rate():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.1], [0.1, 0.8], [0.6, 0.3]])
    rep = M.compute_metrics(M.MULTILABEL, y, s, class_names=["x", "y"], n_boot=0)
    assert rep.confusion is None
    x = rep.per_class["x"]
    assert (x["sensitivity"], x["specificity"], x["prevalence"], x["pred_rate"]) == (0.5, 0.5, 0.5, 0.5)
    assert x["auc"] == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]))


def test_report_to_dict_is_strict_json_and_round_trips():
    y, s = make_data(M.MULTICLASS, 200, 3)
    s[:, 2] = 0.0  # class 2 never predicted: precision undefined (NaN) in per_class
    s /= s.sum(axis=1, keepdims=True)
    rep = M.compute_metrics(M.MULTICLASS, y, s, class_names=list("abc"), n_boot=20)
    text = json.dumps(rep.to_dict(), allow_nan=False)
    back = M.MetricsReport.from_dict(json.loads(text))
    assert back.to_dict() == rep.to_dict()
    assert math.isnan(back.per_class["c"]["precision"])


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,y,s,match",
    [
        (M.BINARY, [0, 1], [[0.5, np.nan], [0.5, 0.5]], "NaN"),
        (M.BINARY, [0, 1], [[0.5, np.inf], [0.5, 0.5]], "Inf"),
        (M.BINARY, [0, 1], [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], "2 columns"),
        (M.MULTICLASS, [0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "samples"),
        (M.MULTICLASS, [0, 3], [[0.5, 0.5], [0.5, 0.5]], r"\[0, 1\]"),
        (M.MULTICLASS, [0, 1], [[2.0, -1.0], [0.3, 0.7]], "logits"),
        (M.MULTICLASS, [0, 1], [[0.9, 0.9], [0.3, 0.7]], "sum to 1"),
        (M.MULTILABEL, [[0, 1], [1, 2]], [[0.1, 0.2], [0.3, 0.4]], r"\[0, 1\]"),
        (M.MULTILABEL, [0, 1], [[0.1, 0.2], [0.3, 0.4]], "2-D"),
        (M.MULTILABEL, [[0, 1, 1], [1, 0, 0]], [[0.1, 0.2], [0.3, 0.4]], "same shape"),
        (M.MULTICLASS, [0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "integer"),
        ("multiclass", [0, 1], [[0.5, 0.5], [0.5, 0.5]], "unknown task"),
    ],
)
def test_bad_inputs_raise_fmeval_error(task, y, s, match):
    with pytest.raises(FmevalError, match=match):
        M.compute_metrics(task, np.asarray(y), np.asarray(s, dtype=float), class_names=["a", "b"], n_boot=0)


def test_class_names_must_match_columns_and_labels_may_be_n_by_1():
    y, s = make_data(M.MULTICLASS, 50, 3)
    with pytest.raises(FmevalError, match="3 columns but there are 2 class names"):
        M.compute_metrics(M.MULTICLASS, y, s, class_names=["a", "b"], n_boot=0)
    rep = M.compute_metrics(M.MULTICLASS, y[:, None].astype(np.uint8), s, class_names=list("abc"), n_boot=0)
    assert rep.n == 50


def test_unknown_metric_name_suggests():
    with pytest.raises(FmevalError, match="Did you mean: auc"):
        M.METRICS.get("acu")


def test_float32_rounding_just_above_one_is_accepted():
    from fmeval.metrics import compute_metrics

    s = np.array([[0.0, 1.0000001], [1.0000001, 0.0], [0.3, 0.7]], dtype=np.float32)
    rep = compute_metrics("binary-class", np.array([1, 0, 1]), s, class_names=["a", "b"], n_boot=0)
    assert rep.metrics["acc"].value == 1.0 and np.isfinite(rep.metrics["nll"].value)
