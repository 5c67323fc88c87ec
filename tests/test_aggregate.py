"""Sweep aggregation (few-shot draws, corruptions) and their plots, on small synthetic inputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from fmeval.metrics.aggregate import (
    aggregate_draws,
    fewshot_summary,
    fewshot_table,
    medmnistc_errors,
    stat,
    summarize_robustness,
)
from fmeval.report.sweep_plots import plot_fewshot_curve, plot_robustness


def test_mean_and_sample_std_over_draws_keep_every_draw():
    agg = aggregate_draws([{"auc": 0.7, "acc": 0.6}, {"auc": 0.8, "acc": 0.7}, {"auc": 0.9}])
    assert agg["auc"].mean == pytest.approx(0.8)
    assert agg["auc"].std == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
    assert agg["auc"].values == (0.7, 0.8, 0.9)
    # A metric missing from a draw is NaN, not zero; it is kept in values and left out of n.
    assert agg["acc"].n == 2 and agg["acc"].mean == pytest.approx(0.65) and math.isnan(agg["acc"].values[2])
    assert agg["auc"].fmt(3) == "0.800 ± 0.100"


def test_single_draw_has_no_std_and_all_nan_has_no_mean():
    one = stat([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and one.fmt(2) == "0.50"
    none = stat([None, float("nan")])
    assert none.n == 0 and math.isnan(none.mean) and none.fmt() == "–"
    assert json.loads(json.dumps(none.to_dict())) == {"mean": None, "std": None, "n": 0, "values": [None, None]}


def test_fewshot_summary_sorts_k_and_table_formats_models():
    per_k = {4: [{"auc": 0.8}, {"auc": 0.9}], 1: [{"auc": 0.6}, {"auc": 0.7}]}
    s = fewshot_summary(per_k)
    assert list(s) == [1, 4]
    assert s[1]["auc"].mean == pytest.approx(0.65)
    header, rows = fewshot_table({"knn": s, "linear": {1: s[1]}}, "auc", digits=2)
    assert header == ["model", "K=1", "K=4"]
    assert rows == [["knn", "0.65 ± 0.07", "0.85 ± 0.07"], ["linear", "0.65 ± 0.07", "–"]]


def _robustness_input():
    clean = {"auc": 0.9, "ece": 0.05}
    corrupted = {
        "blur": {1: {"auc": 0.8, "ece": 0.10}, 2: {"auc": 0.6, "ece": 0.20}},
        "noise": {1: {"auc": 0.9, "ece": 0.05}, 2: {"auc": 0.7, "ece": float("nan")}},
    }
    return clean, corrupted


def test_robustness_means_and_drops():
    clean, corrupted = _robustness_input()
    r = summarize_robustness(clean, corrupted)
    auc = r["auc"]
    assert auc.higher_is_better
    assert auc.per_corruption == pytest.approx({"blur": 0.7, "noise": 0.8})
    assert auc.per_severity == pytest.approx({1: 0.85, 2: 0.65})
    assert auc.mean_corrupted == pytest.approx(0.75)
    assert auc.drop == pytest.approx(0.15)
    assert auc.relative_drop == pytest.approx(0.15 / 0.9)
    assert auc.relative_drop_per_corruption == pytest.approx({"blur": 0.2 / 0.9, "noise": 0.1 / 0.9})
    # Lower is better for ECE: the drop is the increase, still positive when worse; NaN is skipped.
    ece = r["ece"]
    assert not ece.higher_is_better
    assert ece.per_corruption == pytest.approx({"blur": 0.15, "noise": 0.05})
    assert ece.drop == pytest.approx(0.05) and ece.relative_drop == pytest.approx(1.0)
    d = json.loads(json.dumps(ece.to_dict()))
    assert d["corrupted"]["noise"]["2"] is None and d["per_corruption"]["blur"] == pytest.approx(0.15)


def test_robustness_metric_subset_and_custom_direction():
    clean, corrupted = _robustness_input()
    r = summarize_robustness(clean, corrupted, metrics=["ece"], higher_is_better=lambda m: True)
    assert list(r) == ["ece"] and r["ece"].drop == pytest.approx(-0.05)


def test_medmnistc_summary_equals_medmnistc_evaluator(tmp_path):
    try:
        from medmnistc.eval import Evaluator
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"medmnistc is not installed in CI ({exc}); run scripts/install-robustness.sh")
        pytest.skip(f"medmnistc not installed ({exc})")

    bal = {"pixelate": {s: 0.9 - 0.02 * s for s in range(1, 6)}, "gaussian_noise": {s: 0.85 - 0.03 * s for s in range(1, 6)}}
    ours = medmnistc_errors("pneumoniamnist", 0.91, bal)
    ev = Evaluator("pneumoniamnist", np.zeros((4, 1)), list(bal), str(tmp_path), "x", "binary-class")
    ev.clean_score = 1 - 0.91
    ev.corruption_errors = {c: [1 - v for v in per.values()] for c, per in bal.items()}
    ev.output_log = {}
    ev.populate_summary()
    assert ours["mean_be"] == pytest.approx(ev.output_log["metrics"]["be"], rel=1e-12)
    assert ours["mean_rbe"] == pytest.approx(ev.output_log["metrics"]["rbe"], rel=1e-12)
    assert ours["be"] == pytest.approx(ev.output_log["be_scores"], rel=1e-12)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_atomically_as_png(tmp_path):
    s = fewshot_summary({1: [{"auc": 0.6}, {"auc": 0.7}], 2: [{"auc": 0.7}, {"auc": 0.75}], 8: [{"auc": 0.9}]})
    out = plot_fewshot_curve({"knn": s, "linear": s}, "auc", tmp_path / "fewshot.png", reference={"majority": 0.5})
    assert out == tmp_path / "fewshot.png" and _is_png(out)
    clean, corrupted = _robustness_input()
    rob = plot_robustness(summarize_robustness(clean, corrupted)["auc"], tmp_path / "robust.png")
    assert _is_png(rob)
    many = {f"c{i}": {s: {"auc": 0.9 - 0.01 * i * s} for s in range(1, 6)} for i in range(13)}
    assert _is_png(plot_robustness(summarize_robustness(clean, many)["auc"], tmp_path / "many.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fewshot.png", "many.png", "robust.png"]  # no temp files
