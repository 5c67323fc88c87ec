"""Issue 22 item 9: a robustness run reports MedMNIST-C's balanced error and relative balanced error
normalised to AlexNet beside the drop, and says what the AlexNet reference is (it is not run here).
Expected values are computed here from the medmnistc package's AlexNet table by hand."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from fmeval.config import RunConfig


@pytest.fixture
def baselines():
    try:
        from medmnistc.utils.baselines import BASELINES
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"medmnistc is not installed in CI ({exc}); run scripts/install-robustness.sh")
        pytest.skip(f"medmnistc not installed ({exc}); run scripts/install-robustness.sh")
    return BASELINES


def _record(dataset: str, size: int, severities=(1, 2, 3, 4, 5)):
    from fmeval.modes.robustness import robustness_record

    cfg = RunConfig(mode="robustness", model="x", dataset=dataset, size=size).with_values(
        {"robustness.severities": list(severities)})
    clean = {"auc": 0.95, "balanced_acc": 0.9}
    table = {c: {s: {"auc": 0.9 - 0.01 * s - k * 0.05, "balanced_acc": 0.85 - 0.02 * s - k * 0.1}
                 for s in severities} for k, c in enumerate(("pixelate", "gaussian_noise"))}
    return robustness_record(clean, table, cfg=cfg, head="knn", cache={"hit": 0, "miss": 0}), table


def test_balanced_error_and_relative_balanced_error_vs_alexnet_are_recorded(baselines):
    rec, table = _record("pneumoniamnist", 224)
    e = rec["medmnistc_errors"]
    base = baselines["pneumoniamnist"]
    for c in table:
        err = np.mean([1 - v["balanced_acc"] for v in table[c].values()])
        assert e["be"][c] == pytest.approx(err / base["raw_scores"][c], rel=1e-12)
        assert e["rbe"][c] == pytest.approx((err - 0.1) / (base["raw_scores"][c] - base["clean_score"]), rel=1e-12)
    assert e["mean_be"] == pytest.approx(np.mean(list(e["be"].values())))
    assert "AlexNet was not run here" in e["reference"] and e["caveats"] == []


def test_report_shows_be_and_rbe_beside_the_drop_and_names_the_reference(baselines):
    from fmeval.report.robustness import _markdown

    rec, _ = _record("pneumoniamnist", 28, severities=(1, 5))
    md = "\n".join(_markdown(rec, SimpleNamespace(dataset={"size": 28})))
    e = rec["medmnistc_errors"]
    assert "MedMNIST-C balanced error vs AlexNet" in md and "| corruption | bACC rel. drop | BE | rBE |" in md
    assert f"| pixelate | {100 * rec['summary']['balanced_acc']['relative_drop_per_corruption']['pixelate']:+.1f}% | "\
           f"{e['be']['pixelate']:.3f} | {e['rbe']['pixelate']:.3f} |" in md
    assert "AlexNet was not run here" in md
    assert "severities 1-5; this run used 1,5" in md and "224 px, this run at 28 px" in md


def test_a_dataset_without_an_alexnet_reference_says_so(baselines):
    from fmeval.modes.robustness import medmnistc_comparison
    from fmeval.report.robustness import _markdown

    rec, table = _record("pneumoniamnist", 224)
    cfg = RunConfig(mode="robustness", model="x", dataset="mydata", size=224)
    rec["medmnistc_errors"] = medmnistc_comparison(cfg, {"balanced_acc": 0.9}, table)
    assert "no AlexNet baseline for 'mydata'" in rec["medmnistc_errors"]["unavailable"]
    assert "balanced error vs AlexNet: not available" in "\n".join(_markdown(rec, SimpleNamespace(dataset={"size": 224})))
