"""Prediction files: exact round trip, and one clear line for every kind of bad file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fmeval.data.info import BINARY, MULTICLASS, MULTILABEL
from fmeval.errors import DataError
from fmeval.predictions import PredictionsError, load_predictions, read_predictions, write_predictions

NAMES = ("normal", "pneumonia")
CLASSES3 = ("cat, large", "dog", "bird")  # a comma inside a name must survive quoting


def _softmax(n: int, c: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, c)) * 3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(dtype)


def _read(path, task=BINARY, n=3, names=NAMES):
    return read_predictions(path, task=task, n_expected=n, class_names=names)


def _bad(tmp_path, text: str, match: str, *, task=BINARY, n=3, names=NAMES, raw: bytes | None = None):
    path = tmp_path / "p.csv"
    path.write_bytes(raw if raw is not None else text.encode())
    with pytest.raises(PredictionsError, match=match) as exc:
        _read(path, task, n, names)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, DataError)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_reproduces_scores_bit_for_bit(tmp_path, dtype):
    scores = _softmax(500, 3, dtype=dtype)
    scores[0] = [1e-300 if dtype == np.float64 else 1e-30, 0.5, 0.5]  # extremes keep their bits too
    path = tmp_path / "preds.csv"
    digest = write_predictions(path, scores, CLASSES3)
    p = load_predictions(path, task=MULTICLASS, n_expected=500, class_names=CLASSES3)
    assert p.scores.dtype == np.float64
    np.testing.assert_array_equal(p.scores, scores.astype(np.float64))  # exact, not approx
    np.testing.assert_array_equal(p.indices, np.arange(500))
    assert p.sha256 == digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p.columns == CLASSES3
    assert path.read_text().splitlines()[0] == 'index,"cat, large",dog,bird'


def test_headerless_medmnist_evaluator_file_is_read(tmp_path):
    """``medmnist.Evaluator.evaluate(save_folder=...)`` writes pandas' headerless CSV."""
    import pandas as pd

    scores = _softmax(4, 2, seed=3)
    path = tmp_path / "pneumoniamnist_test_[AUC]0.5_[ACC]0.5@0.csv"
    pd.DataFrame(scores).to_csv(path, header=None)
    idx, got = _read(path, n=4)
    np.testing.assert_array_equal(idx, np.arange(4))
    np.testing.assert_array_equal(got, scores)


def test_write_without_header_round_trips(tmp_path):
    scores = _softmax(6, 2, seed=4)
    path = tmp_path / "p.csv"
    write_predictions(path, scores, NAMES, header=False)
    assert path.read_text().splitlines()[0].startswith("0,")
    np.testing.assert_array_equal(_read(path, n=6)[1], scores)


def test_columns_by_index_or_name_in_any_order_and_rows_in_any_order(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,1,0\n2,0.25,0.75\n0,0.9,0.1\n1,0.5,0.5\n")
    idx, s = _read(path)
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_array_equal(s, [[0.1, 0.9], [0.5, 0.5], [0.75, 0.25]])
    path.write_text("Index,PNEUMONIA,Normal\n0,0.2,0.8\n1,0.3,0.7\n2,1,0\n")
    np.testing.assert_array_equal(_read(path)[1], [[0.8, 0.2], [0.7, 0.3], [0.0, 1.0]])


def test_spreadsheet_export_with_bom_crlf_blank_lines_and_spaces_is_accepted(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffindex,normal,pneumonia\r\n0, 0.9 ,0.1\r\n1,0.2,0.8\r\n2,0.5,0.5\r\n\r\n".encode())
    idx, s = _read(path)
    np.testing.assert_array_equal(s[:, 1], [0.1, 0.8, 0.5])


def test_multilabel_needs_no_row_sum_but_one_probability_per_label(tmp_path):
    labels = ("a", "b", "c")
    scores = np.array([[0.9, 0.8, 0.7], [0.0, 0.0, 0.0]])
    path = tmp_path / "p.csv"
    write_predictions(path, scores, labels)
    np.testing.assert_array_equal(read_predictions(path, task=MULTILABEL, n_expected=2, class_names=labels)[1], scores)
    _bad(tmp_path, "index,a,b\n0,0.1,0.2\n1,0.3,0.4\n", r"expected 3 probability columns \(a, b, c\).*found 2",
         task=MULTILABEL, n=2, names=labels)


def test_every_bad_file_gets_one_line(tmp_path):
    ok_head = "index,normal,pneumonia\n"
    cases = [
        ("", r"is empty"),
        ("\n\n  \n", r"is empty"),
        (ok_head, r"has a header but no rows"),
        (ok_head + "0,0.9,0.1\n1,0.2,0.8\n", r"2 rows, expected 3 .*missing index\(es\) 2"),
        (ok_head + "0,0.9,0.1\n1,0.2,0.8\n2,0.5,0.5\n3,0.5,0.5\n", r"index 3 is outside the test split \(0..2\)"),
        (ok_head + "0,0.9,0.1\n1,0.2,0.8\n1,0.5,0.5\n", r"duplicate index\(es\) 1"),
        (ok_head + "0,0.9,0.1\n1,1.2,-0.2\n2,0.5,0.5\n", r"line 3: probability 1\.2 outside \[0, 1\].*logits"),
        (ok_head + "0,0.9,0.1\n1,0.2,0.7\n2,0.5,0.5\n", r"line 3: the probabilities of index 1 sum to 0\.9, not 1"),
        (ok_head + "0,0.9,0.1\n1,nan,0.8\n2,0.5,0.5\n", r"line 3: NaN probability \(index 1, column 1\)"),
        (ok_head + "0,0.9,0.1\n1,0.2,inf\n2,0.5,0.5\n", r"probability inf outside \[0, 1\]"),
        (ok_head + "0,0.9,0.1\n1,high,0.8\n2,0.5,0.5\n", r"line 3: non-numeric cell 'high' in probability column 1"),
        (ok_head + "0,0.9,0.1\n1,,0.8\n2,0.5,0.5\n", r"line 3: an empty cell in probability column 1"),
        (ok_head + "0,0.9,0.1\n1.0,0.2,0.8\n2,0.5,0.5\n", r"line 3: index '1\.0' is not an integer"),
        (ok_head + "0,0.9,0.1\n1,0.2\n2,0.5,0.5\n", r"line 3: 2 cells, expected 3"),
        ("index,normal,pneumonia,other\n0,0.9,0.1,0\n", r"expected 2 probability columns \(normal, pneumonia\).*found 3"),
        ("index,normal\n0,1\n", r"expected 2 probability columns.*found 1"),
        ("index,normal,covid\n0,0.9,0.1\n", r"unknown column\(s\) 'covid'; name the columns by class"),
        ("index,normal,1\n0,0.9,0.1\n", r"a mix of class names and indices"),
        ("index,normal,NORMAL\n0,0.9,0.1\n", r"column\(s\) 'NORMAL', 'normal' appear more than once"),
        ("index,0,5\n0,0.9,0.1\n", r"unknown column\(s\) '5'"),
        ("normal,pneumonia\n0.9,0.1\n", r"first column must be the sample index"),
        ("0,0.9\n1,0.2,0.8\n2,0.5\n", r"line 2: 3 cells, expected 2"),  # one-column binary (issue 22): every row alike
        ('index,normal,pneumonia\n0,"0.9,0.1\n', r"not a valid CSV file|cells, expected"),
    ]
    for text, match in cases:
        _bad(tmp_path, text, match)
    _bad(tmp_path, "", r"not UTF-8 text", raw=b"\xff\xfe\x00i\x00n")


def test_sum_tolerance_accepts_rounded_files(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("index,a,b,c\n0,0.3333,0.3333,0.3333\n")  # sums to 0.9999
    np.testing.assert_allclose(read_predictions(path, task=MULTICLASS, n_expected=1, class_names=("a", "b", "c"))[1].sum(), 0.9999)


def test_missing_file_and_bad_writer_input(tmp_path):
    with pytest.raises(PredictionsError, match="cannot read predictions file"):
        _read(tmp_path / "nope.csv")
    with pytest.raises(PredictionsError, match=r"scores must be \[N, 2\]"):
        write_predictions(tmp_path / "x.csv", np.zeros((3, 3)), NAMES)
    with pytest.raises(PredictionsError, match="NaN or infinity"):
        write_predictions(tmp_path / "x.csv", np.full((2, 2), np.nan), NAMES)
    assert not (tmp_path / "x.csv").exists()
