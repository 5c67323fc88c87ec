"""Smaller reliability defects of issue 26: --shots above every class, study sizes checked at plan time."""

from __future__ import annotations

import yaml

from fmeval.data.synthetic import write_synthetic
from helpers import run


def test_shots_above_every_class_is_refused_in_one_line(capsys, tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(60, 30, 30))
    code, out, err = run(capsys, "linprobe", "--model", "vit-s16", "--tiny", "--data-root", str(tmp_path),
                         "--dataset", "pneumoniamnist", "--size", "28", "--shots", "100000",
                         "--reports-dir", str(tmp_path / "reports"))
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--shots 100000 is more than any class has" in lines[0], err
    assert not list((tmp_path / "reports").glob("*/results.json"))  # no run labelled K=100000


def test_shots_within_the_classes_still_run(capsys, tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(60, 30, 30))
    code, out, err = run(capsys, "knn", "--model", "vit-s16", "--tiny", "--data-root", str(tmp_path),
                         "--dataset", "pneumoniamnist", "--size", "28", "--shots", "4",
                         "--reports-dir", str(tmp_path / "reports"))
    assert code == 0, err


def test_study_plan_refuses_a_size_the_dataset_does_not_have(capsys, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "axes": {"models": ["vit-s16"], "datasets": ["pneumoniamnist"],
                                                          "sizes": [28, 100], "modes": ["knn"]}}))
    code, out, err = run(capsys, "study", "plan", str(path), "--reports-dir", str(tmp_path / "r"))
    assert code == 2, out + err
    assert "axes.sizes: size 100 is not available for pneumoniamnist" in " ".join(err.split())
