"""fmeval score / fmeval predict: any model's predictions as a run; exact round trip of fmeval's own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fmeval.data.synthetic import write_synthetic
from helpers import run

N_TEST = 40


@pytest.fixture()
def data(tmp_path) -> Path:
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(60, 30, N_TEST))
    return tmp_path / "data"


def _runs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/results.json"))]


def _metrics(r: dict) -> dict:
    return {k: (v["value"], v["ci_low"], v["ci_high"]) for k, v in r["test"]["metrics"].items()}


def test_predict_then_score_reproduces_the_run_exactly(capsys, tmp_path, data):
    reports = tmp_path / "reports"
    args = ("--dataset", "pneumoniamnist", "--data-root", str(data), "--reports-dir", str(reports))
    code, _, err = run(capsys, "linprobe", "--model", "resnet18", "--tiny", "--epochs", "5", "--seed", "3",
                       "--bootstrap", "200", *args)
    assert code == 0, err
    (orig,) = _runs(reports)
    out_csv = tmp_path / "mine.csv"
    code, out, err = run(capsys, "predict", "--run", str(reports / orig["run_id"]),
                         "--out", str(out_csv))
    assert code == 0, err
    assert "--seed 3 --bootstrap 200" in out  # the score command that reproduces the run
    assert out_csv.read_bytes() == (reports / orig["run_id"] / "predictions.csv").read_bytes()
    code, out, err = run(capsys, "score", str(out_csv), *args, "--seed", "3", "--bootstrap", "200")
    assert code == 0, err
    scored = next(r for r in _runs(reports) if r["mode"] == "score")
    assert _metrics(scored) == _metrics(orig)  # values and CIs, exactly
    assert scored["test"]["baseline"] == orig["test"]["baseline"]  # majority baseline from the train labels
    sha = hashlib.sha256(out_csv.read_bytes()).hexdigest()
    assert scored["provenance"]["predictions"]["predictions_sha256"] == sha
    assert scored["model"]["name"] == "external:mine" and scored["model"]["weights_id"] == f"external:sha256:{sha}"
    # the leaderboard lists it as an external model, ranked with the others
    assert run(capsys, "report", "--reports-dir", str(reports), "--all")[0] == 0
    import csv

    rows = list(csv.DictReader((reports / "leaderboard.csv").open()))
    ext = next(r for r in rows if r["mode"] == "score")
    assert ext["model"] == "external:mine" and ext["weights"] == "external" and ext["comparable"] == "True"
    assert "external:mine" in (reports / "leaderboard.md").read_text()


def test_predict_from_a_fine_tuned_adapter_round_trips(capsys, tmp_path, data):
    reports = tmp_path / "reports"
    args = ("--dataset", "pneumoniamnist", "--data-root", str(data), "--reports-dir", str(reports),
            "--bootstrap", "50")
    assert run(capsys, "finetune", "--full", "--model", "resnet18", "--tiny", "--epochs", "1", *args)[0] == 0
    (ft,) = _runs(reports)
    out_csv = tmp_path / "ft.csv"
    code, _, err = run(capsys, "predict", "--adapter", ft["extras"]["training"]["adapter_path"],
                       "--out", str(out_csv), "--no-header")
    assert code == 0, err
    assert out_csv.read_text().splitlines()[0].startswith("0,")  # medmnist Evaluator layout
    assert run(capsys, "score", str(out_csv), *args)[0] == 0
    scored = next(r for r in _runs(reports) if r["mode"] == "score")
    assert _metrics(scored) == _metrics(ft)


def _valid_rows() -> list[str]:
    p = np.random.default_rng(0).random(N_TEST)
    return [f"{i},{1 - v!r},{v!r}" for i, v in enumerate(p.tolist())]


HEAD = "index,normal,pneumonia"


def _bad_files() -> list[tuple[str, bytes, str]]:
    rows = _valid_rows()

    def text(lines: list[str]) -> bytes:
        return ("\n".join(lines) + "\n").encode()

    dup = rows[:-1] + [rows[0]]
    return [
        ("too few rows", text([HEAD, *rows[:-1]]), "39 rows, expected 40"),
        ("too many rows", text([HEAD, *rows, "40,0.5,0.5"]), "index 40 is outside the test split"),
        ("duplicate index", text([HEAD, *dup]), "duplicate index(es) 0"),
        ("missing index", text([HEAD, *rows[:5], *rows[6:]]), "missing index(es) 5"),
        ("non-integer index", text([HEAD, *rows[:5], "5.5,0.5,0.5", *rows[6:]]), "index '5.5' is not an integer"),
        ("index past int64", text([HEAD, *rows[:5], "99999999999999999999,0.5,0.5", *rows[6:]]),
         "index 99999999999999999999 is outside the test split"),
        ("index below int64", text([HEAD, *rows[:5], "-99999999999999999999,0.5,0.5", *rows[6:]]),
         "index -99999999999999999999 is outside the test split"),
        ("outside [0, 1]", text([HEAD, *rows[:3], "3,1.5,-0.5", *rows[4:]]), "probability 1.5 outside [0, 1]"),
        ("row sum", text([HEAD, *rows[:3], "3,0.5,0.4", *rows[4:]]), "sum to 0.9, not 1"),
        ("NaN", text([HEAD, *rows[:3], "3,nan,0.5", *rows[4:]]), "NaN probability (index 3, column 1)"),
        ("column count", text([HEAD + ",other", *[r + ",0" for r in rows]]), "expected 2 probability columns"),
        ("short row", text([HEAD, *rows[:3], "3,0.5", *rows[4:]]), "2 cells, expected 3"),
        ("unknown class", text(["index,normal,covid", *rows]), "unknown column(s) 'covid'"),
        ("empty", b"", "is empty"),
        ("not text", b"\xff\xfe\x00i\x00n", "is not UTF-8 text"),
    ]


@pytest.mark.parametrize("name,content,message", _bad_files(), ids=[c[0] for c in _bad_files()])
def test_every_bad_predictions_file_is_one_line_and_writes_nothing(capsys, tmp_path, data, name, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "score", str(path), "--dataset", "pneumoniamnist", "--data-root", str(data),
                         "--reports-dir", str(reports))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not reports.exists() and out == ""


def test_score_and_predict_usage_errors(capsys, tmp_path, data):
    reports = tmp_path / "reports"
    code, _, err = run(capsys, "score", str(tmp_path / "nope.csv"), "--dataset", "pneumoniamnist",
                       "--data-root", str(data), "--reports-dir", str(reports))
    assert code == 2 and "cannot read predictions file" in err and not reports.exists()
    code, _, err = run(capsys, "score", str(tmp_path / "x.csv"), "--dataset", "pneumoniamnist", "--split", "train")
    assert code == 2 and "--split must be test or val" in err
    code, _, err = run(capsys, "predict", "--out", str(tmp_path / "o.csv"))
    assert code == 2 and "exactly one of --run" in err
    code, _, err = run(capsys, "predict", "--run", str(tmp_path), "--out", str(tmp_path / "o.csv"))
    assert code == 2 and "is not a run folder" in err and not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_round_trip_on_real_pneumoniamnist(capsys, tmp_path, pneumonia_root):
    reports = tmp_path / "reports"
    args = ("--dataset", "pneumoniamnist", "--data-root", str(pneumonia_root), "--reports-dir", str(reports))
    assert run(capsys, "knn", "--model", "resnet18", "--tiny", "--k", "11", *args)[0] == 0
    (orig,) = _runs(reports)
    out_csv = tmp_path / "knn.csv"
    assert run(capsys, "predict", "--run", str(reports / orig["run_id"]), "--out", str(out_csv))[0] == 0
    assert len(out_csv.read_text().splitlines()) == 625  # header + the 624 test images
    assert run(capsys, "score", str(out_csv), *args)[0] == 0
    scored = next(r for r in _runs(reports) if r["mode"] == "score")
    assert _metrics(scored) == _metrics(orig) and scored["test"]["n"] == 624
