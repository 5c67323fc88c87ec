"""fmeval robustness: the clean-trained head on MedMNIST-C corrupted test images, cached apart from clean."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmeval.data.synthetic import write_synthetic
from helpers import ROBUSTNESS_INSTALL, require_extra, run


def _need_medmnistc() -> None:
    require_extra("medmnistc.corruptions.registry", "robustness", ROBUSTNESS_INSTALL)


@pytest.fixture()
def data(tmp_path) -> Path:
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(60, 30, 40))
    return tmp_path / "data"


def _reports(root: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["mode"]: json.loads(p.read_text()) for p in root.glob("*/results.json")}


TINY = ("--model", "resnet18", "--tiny", "--dataset", "pneumoniamnist", "--bootstrap", "20")


def test_robustness_reuses_the_clean_head_and_reports_every_corruption_and_severity(capsys, tmp_path, data):
    _need_medmnistc()
    reports = tmp_path / "reports"
    args = (*TINY, "--data-root", str(data), "--reports-dir", str(reports), "--epochs", "5")
    assert run(capsys, "linprobe", *args)[0] == 0
    code, out, err = run(capsys, "robustness", *args, "--head", "linprobe",
                         "--corruptions", "gaussian_noise,contrast_down", "--severities", "1,5")
    assert code == 0, err
    clean, rob = _reports(reports)["linprobe"], _reports(reports)["robustness"]
    # the head is trained and selected exactly as the clean run: same selection, same clean test metrics
    assert rob["selection"] == clean["selection"] and rob["test"]["metrics"] == clean["test"]["metrics"]
    r = rob["extras"]["robustness"]
    assert r["corruptions"] == ["gaussian_noise", "contrast_down"] and r["severities"] == [1, 5]
    assert set(r["table"]["gaussian_noise"]) == {"1", "5"} and r["cache"] == {"hit": 0, "miss": 4}
    auc = r["summary"]["auc"]
    cells = [r["table"][c][s]["auc"] for c in r["corruptions"] for s in ("1", "5")]
    assert auc["clean"] == clean["test"]["metrics"]["auc"]["value"]
    assert auc["mean_corrupted"] == pytest.approx(np.mean(cells))
    assert auc["relative_drop"] == pytest.approx((auc["clean"] - np.mean(cells)) / auc["clean"])
    assert r["table"]["contrast_down"]["5"]["auc"] != auc["clean"]  # corruptions change the scores
    run_dir = Path(next(p for p in reports.glob("*robustness*")))
    md = (run_dir / "report.md").read_text()
    assert "## Robustness under MedMNIST-C corruptions" in md and "| gaussian_noise |" in md
    assert (run_dir / "robustness_auc.png").stat().st_size > 1000 and "under MedMNIST-C corruptions" in out


def _entries(cache_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in cache_dir.glob("image/*/*.json")]


def test_corrupted_features_never_meet_the_clean_cache_entry(capsys, tmp_path, data, monkeypatch):
    _need_medmnistc()
    from fmeval.cache import FeatureCache
    from fmeval.config import RunConfig
    from fmeval.pipeline import feature_key, prepare_frozen

    reports = tmp_path / "reports"
    args = (*TINY, "--data-root", str(data), "--reports-dir", str(reports))
    rob = ("robustness", *args, "--head", "knn", "--corruptions", "gaussian_blur", "--severities", "3")
    # robustness first, in an empty cache: the clean splits and the corrupted test split are stored apart
    assert run(capsys, *rob)[0] == 0
    assert _reports(reports)["robustness"]["extras"]["robustness"]["cache"] == {"hit": 0, "miss": 1}
    keys = [e["key"] for e in _entries(Path(os.environ["FMEVAL_CACHE_DIR"]))]
    test_keys = [k for k in keys if k["split"] == "test"]
    assert len(keys) == 4 and len(test_keys) == 2
    (corrupted,) = [k for k in test_keys if "corruption" in k]
    (clean_key,) = [k for k in test_keys if "corruption" not in k]
    assert corrupted["corruption"]["corruption"] == "gaussian_blur" and corrupted["corruption"]["severity"] == 3
    assert {k: v for k, v in corrupted.items() if k != "corruption"} == clean_key  # only the corruption differs
    # the clean run then hits the clean entries, and they hold the clean features, not the corrupted ones
    assert run(capsys, "knn", *args)[0] == 0
    knn = _reports(reports)["knn"]
    assert all(knn["extras"]["cache_hits"].values())
    cfg = RunConfig(mode="knn", model="resnet18", dataset="pneumoniamnist", tiny=True, data_root=str(data))
    fz = prepare_frozen(cfg)
    fresh = prepare_frozen(dataclasses.replace(cfg, use_cache=False))
    assert torch.equal(fz.features["test"], fresh.features["test"])
    blurred, hit = FeatureCache().get_or_compute(
        "image", {**feature_key(fz.adapter, fz.data, "test", cfg, fz.transform, fz.precision),
                  "corruption": corrupted["corruption"]}, lambda: pytest.fail("should be cached"))
    assert hit and not torch.equal(blurred, fz.features["test"])
    # a second robustness run is served from the cache
    assert run(capsys, *rob)[0] == 0
    runs = [json.loads(p.read_text()) for p in reports.glob("*/results.json")]
    assert sorted(r["extras"]["robustness"]["cache"]["hit"] for r in runs if r["mode"] == "robustness") == [0, 1]


def test_robustness_of_a_fine_tuned_adapter(capsys, tmp_path, data):
    _need_medmnistc()
    reports = tmp_path / "reports"
    args = (*TINY, "--data-root", str(data), "--reports-dir", str(reports))
    assert run(capsys, "finetune", "--full", *args, "--epochs", "1")[0] == 0
    ft = _reports(reports)["finetune-full"]
    adapter = ft["extras"]["training"]["adapter_path"]
    code, _, err = run(capsys, "robustness", "--adapter", adapter, "--corruptions", "pixelate", "--severities", "2",
                       "--bootstrap", "20", "--reports-dir", str(reports))
    assert code == 0, err
    rob = _reports(reports)["robustness"]
    assert rob["test"]["metrics"] == ft["test"]["metrics"]  # clean: exactly the fine-tuned run's test metrics
    assert list(rob["extras"]["robustness"]["table"]) == ["pixelate"]
    assert rob["extras"]["robustness"]["head"] == "adapter (finetune-full)"
    code, _, err = run(capsys, "robustness", "--adapter", adapter, "--head", "knn")
    assert code == 2 and "drop --head" in err


def test_bad_robustness_input_is_one_line_before_any_work(capsys, tmp_path, data, monkeypatch):
    reports = tmp_path / "reports"
    args = ("robustness", *TINY, "--data-root", str(data), "--reports-dir", str(reports))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "medmnistc.corruptions.registry", None)  # as if not installed
        code, _, err = run(capsys, *args)
    assert code == 2 and "install-robustness.sh" in err and len(err.strip().splitlines()) == 1, err
    _need_medmnistc()
    for extra, msg in ((("--corruptions", "zoom_blur"), "not MedMNIST-C corruption(s) of pneumoniamnist"),
                       (("--severities", "0"), "--severities values must be >= 1"),
                       (("--severities", "6"), "--severities values must be <= 5"),
                       (("--head", "svm"), "unknown robustness head 'svm'")):
        code, _, err = run(capsys, *args, *extra)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not reports.exists() and not Path(os.environ["FMEVAL_CACHE_DIR"]).exists()
