"""The command line: end-to-end runs on real data, one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmeval.data.synthetic import synthetic_arrays, write_synthetic
from helpers import only_report, run


REAL = ("--dataset", "pneumoniamnist", "--tiny", "--bootstrap", "200")


@pytest.mark.slow
def test_linprobe_and_knn_on_real_pneumoniamnist(capsys, pneumonia_root, tmp_path):
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "linprobe", "--model", "vit-b16", *REAL, "--data-root", str(pneumonia_root),
                         "--reports-dir", str(reports))
    assert code == 0, err
    res = only_report(reports)
    test = res["test"]
    assert res["dataset"]["n_test"] == 624 and res["mode"] == "linprobe"
    for m in ("acc", "auc", "balanced_acc", "f1_macro", "kappa", "ece"):
        v = test["metrics"][m]
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
    # a probe on even a random tiny ViT beats the majority class on real X-rays
    assert test["baseline"]["acc"] == pytest.approx(390 / 624)
    assert test["metrics"]["auc"]["value"] > 0.75
    assert test["metrics"]["balanced_acc"]["value"] > 0.6
    assert res["provenance"]["packages"]["torch"].startswith("2.14.1")
    assert res["model"]["weights_id"].startswith("random:vit_base_patch16_224")
    assert (reports / "runs.csv").read_text().count("\n") == 2
    assert "weights" in out or "report" in out

    code, out, err = run(capsys, "knn", "--model", "vit-b16", *REAL, "--data-root", str(pneumonia_root),
                         "--reports-dir", str(reports), "--k", "5,11,21")
    assert code == 0, err
    runs = [json.loads(p.read_text()) for p in reports.glob("*/results.json")]
    knn = next(r for r in runs if r["mode"] == "knn")
    assert all(knn["extras"]["cache_hits"].values())  # features reused from the linprobe run
    assert knn["selection"]["k"] in (5, 11, 21) and len(knn["extras"]["k_sweep"]) == 3
    assert set(knn["extras"]["k_sweep"][0]) == {"k", "val_auc"}  # per-k numbers on validation only
    assert knn["test"]["metrics"]["auc"]["value"] > 0.7

    code, out, err = run(capsys, "report", "--reports-dir", str(reports), "--all")
    assert code == 0 and (reports / "leaderboard.md").exists() and "knn" in out


def test_ls_models_and_datasets(capsys, tmp_path):
    code, out, _ = run(capsys, "ls", "models")
    assert code == 0 and "vit-b16" in out and "dinov2-vits14" in out and "sam-vitb" in out
    write_synthetic(tmp_path, "bloodmnist", 64)
    code, out, _ = run(capsys, "ls", "datasets", "--data-root", str(tmp_path))
    assert code == 0 and "bloodmnist" in out and "64" in out and "tissuemnist" in out


def test_features_then_cache_ls_and_clear(capsys, tmp_path):
    write_synthetic(tmp_path, "dermamnist", 28, n=(24, 8, 8))
    args = ("features", "--model", "resnet18", "--tiny", "--dataset", "dermamnist", "--data-root", str(tmp_path))
    code, out, _ = run(capsys, *args)
    assert code == 0 and out.count("extracted") == 3
    code, out, _ = run(capsys, *args)
    assert code == 0 and out.count("cached") == 3
    code, out, _ = run(capsys, "cache", "ls")
    assert code == 0 and "3 entries" in out
    code, out, _ = run(capsys, "cache", "clear", "--model", "resnet18", "--yes")
    assert code == 0 and "removed 3" in out


def _bad(tmp_path: Path, kind: str) -> tuple[str, ...]:
    base = ("linprobe", "--model", "vit-b16", "--tiny", "--data-root", str(tmp_path))
    if kind == "unknown model":
        write_synthetic(tmp_path, "pneumoniamnist")
        return ("linprobe", "--model", "vit-b17", "--dataset", "pneumoniamnist", "--data-root", str(tmp_path))
    if kind == "unknown dataset":
        return (*base, "--dataset", "pneumomnist")
    if kind == "missing npz":
        return (*base, "--dataset", "pathmnist")
    if kind == "corrupt npz":
        (tmp_path / "pathmnist.npz").write_bytes(b"\x00" * 100)
        return (*base, "--dataset", "pathmnist")
    if kind == "wrong label shape":
        arrays = synthetic_arrays("pneumoniamnist", 28, (8, 4, 4))
        arrays["val_labels"] = np.zeros((4, 2), np.uint8)
        np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
        return (*base, "--dataset", "pneumoniamnist")
    if kind == "size not available":
        return (*base, "--dataset", "pneumoniamnist", "--size", "100")
    if kind == "unknown geometry":
        write_synthetic(tmp_path, "pneumoniamnist")
        return (*base, "--dataset", "pneumoniamnist", "--geometry", "stretch")
    if kind == "bad k":
        write_synthetic(tmp_path, "pneumoniamnist")
        return ("knn", "--model", "vit-b16", "--tiny", "--data-root", str(tmp_path), "--dataset",
                "pneumoniamnist", "--k", "5,x")
    if kind == "text on vision-only model":
        write_synthetic(tmp_path, "pneumoniamnist")
        return ("zeroshot", "--model", "vit-b16", "--tiny", "--data-root", str(tmp_path), "--dataset",
                "pneumoniamnist")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,message", [
    ("unknown model", "unknown model 'vit-b17'"),
    ("unknown dataset", "unknown dataset 'pneumomnist'"),
    ("missing npz", "pathmnist.npz not found"),
    ("corrupt npz", "not an npz archive"),
    ("wrong label shape", "labels have shape (4, 2)"),
    ("size not available", "size 100 is not available"),
    ("unknown geometry", "unknown geometry 'stretch'"),
    ("bad k", "--k must be comma-separated integers"),
    ("text on vision-only model", "has no text encoder"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path, kind, message):
    code, out, err = run(capsys, *_bad(tmp_path, kind))
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("error:") and message in " ".join(lines)
    # one message, possibly soft-wrapped by the terminal width, never a stack
    assert all(not ln.startswith("  File ") for ln in lines)
