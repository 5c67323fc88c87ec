"""Predictions files: column order taken from the header with more than two classes (by name and by index,
expectations permuted here by hand), and the one-column binary file ``medmnist.Evaluator`` accepts
(issue 22 items 11 and 12)."""

from __future__ import annotations

import numpy as np
import pytest

from fmeval.predictions import PredictionsError, load_predictions, read_run_predictions
from fmeval.tasks import BINARY, MULTICLASS

CLASSES4 = ("a", "b", "c", "d")


def _probs(n: int, c: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, c)) * 2
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(repr(float(v)) if i else str(int(v)) for i, v in enumerate(r)) for r in rows]) + "\n")


@pytest.mark.parametrize("names", [["c", "a", "d", "b"], ["2", "0", "3", "1"], ["D", "c", "B", "a"]])
def test_header_order_with_four_classes(tmp_path, names):
    probs = _probs(6, 4)
    perm = [CLASSES4.index(n.lower()) if not n.isdigit() else int(n) for n in names]
    file_cols = probs[:, perm]  # column j of the file holds class perm[j]
    order = [5, 3, 0, 1, 4, 2]  # rows out of order too
    _write(tmp_path / "p.csv", ["index", *names], [[i, *file_cols[i]] for i in order])
    p = load_predictions(tmp_path / "p.csv", task=MULTICLASS, n_expected=6, class_names=CLASSES4)
    np.testing.assert_array_equal(p.indices, np.arange(6))
    np.testing.assert_allclose(p.scores, probs, rtol=0, atol=0)


def test_run_predictions_follow_their_header_with_three_classes(tmp_path):
    probs = _probs(5, 3, seed=1)
    _write(tmp_path / "predictions.csv", ["index", "z", "x", "y"],
           [[i, probs[i, 2], probs[i, 0], probs[i, 1]] for i in (4, 0, 2, 1, 3)])
    idx, scores = read_run_predictions(tmp_path / "predictions.csv", ["x", "y", "z"])
    np.testing.assert_array_equal(idx, np.arange(5))
    np.testing.assert_array_equal(scores, probs)


@pytest.mark.parametrize("header", [None, ["index", "pneumonia"], ["", "1"]])
def test_one_column_binary_file_is_the_positive_class(tmp_path, header):
    p1 = np.array([0.1, 0.8, 0.55, 0.3])
    path = tmp_path / "p.csv"
    rows = [[i, p1[i]] for i in range(4)]
    if header is None:
        path.write_text("\n".join(",".join(repr(float(v)) if i else str(int(v)) for i, v in enumerate(r)) for r in rows) + "\n")
    else:
        _write(path, header, rows)
    p = load_predictions(path, task=BINARY, n_expected=4, class_names=["normal", "pneumonia"])
    np.testing.assert_allclose(p.scores, np.stack([1 - p1, p1], 1))


def test_one_column_binary_scores_like_medmnist_evaluator(tmp_path):
    """medmnist's getAUC/getACC on the one column equal fmeval's metrics on the file."""
    from medmnist.evaluator import getACC, getAUC

    from fmeval.metrics import compute_metrics

    rng = np.random.default_rng(2)
    y = (rng.random(50) < 0.4).astype(int)
    p1 = np.clip(0.3 * y + rng.random(50) * 0.7, 0, 1)
    path = tmp_path / "p.csv"
    path.write_text("\n".join(f"{i},{float(v)!r}" for i, v in enumerate(p1)) + "\n")
    p = load_predictions(path, task=BINARY, n_expected=50, class_names=["neg", "pos"])
    rep = compute_metrics(BINARY, y[:, None], p.scores, class_names=["neg", "pos"], n_boot=0, seed=0)
    assert rep.metrics["auc"].value == pytest.approx(getAUC(y[:, None], p1[:, None], BINARY), abs=1e-12)
    assert rep.metrics["acc"].value == pytest.approx(getACC(y[:, None], p1[:, None], BINARY), abs=1e-12)


def test_one_column_is_refused_where_it_is_ambiguous(tmp_path):
    path = tmp_path / "p.csv"
    _write(path, ["index", "normal"], [[0, 0.2], [1, 0.7]])  # the NEGATIVE class's column: refused, not flipped
    with pytest.raises(PredictionsError, match="expected 2 probability columns"):
        load_predictions(path, task=BINARY, n_expected=2, class_names=["normal", "pneumonia"])
    path.write_text("0,0.2\n1,0.7\n")
    with pytest.raises(PredictionsError, match="expected 4"):  # multi-class needs every column
        load_predictions(path, task=MULTICLASS, n_expected=2, class_names=["a", "b", "c"])


def test_cli_scores_a_one_column_binary_file_like_its_two_column_twin(capsys, tmp_path):
    """`fmeval score` on the headerless one-column file (medmnist.Evaluator's binary form) gives exactly
    the metrics of the same probabilities written as two columns."""
    import json

    from fmeval.data.synthetic import write_synthetic
    from helpers import run

    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(30, 10, 40))
    p1 = np.random.default_rng(5).random(40)
    (tmp_path / "one.csv").write_text("".join(f"{i},{float(v)!r}\n" for i, v in enumerate(p1)))
    (tmp_path / "two.csv").write_text("".join(f"{i},{float(1 - v)!r},{float(v)!r}\n" for i, v in enumerate(p1)))
    got = {}
    for name in ("one", "two"):
        reports = tmp_path / f"r-{name}"
        code, _, err = run(capsys, "score", str(tmp_path / f"{name}.csv"), "--dataset", "pneumoniamnist",
                           "--data-root", str(tmp_path / "data"), "--reports-dir", str(reports), "--bootstrap", "50")
        assert code == 0, err
        (res,) = [json.loads(p.read_text()) for p in reports.glob("*/results.json")]
        got[name] = {k: v["value"] for k, v in res["test"]["metrics"].items()}
    assert got["one"] == pytest.approx(got["two"], abs=1e-12)
