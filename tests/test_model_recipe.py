"""Issue 22 item 7: without --protocol, MedCLIP's zero-shot runs use MedCLIP's own recipe (black 224
canvas, mean of logits), recorded as the run's recipe; other models keep CLIP's defaults and their hash."""

from __future__ import annotations

import json

import pytest

from fmeval.config import RunConfig
from fmeval.config.run import MODE_SECTIONS
from fmeval.runner import make_config
from helpers import only_report, run

ARGS = {"dataset": "pneumoniamnist"}


@pytest.mark.parametrize("mode", ["zeroshot", "prompts-compare"])
def test_medclip_defaults_to_its_own_zero_shot_recipe(mode):
    cfg = make_config(mode, {**ARGS, "model": "medclip"})
    assert (cfg.geometry, cfg.canvas, cfg.pad_fill, cfg.input_size) == ("pad", 224, "zero", 224)
    assert cfg.zeroshot.ensemble == "mean-logit" and cfg.recipe == "medclip-zeroshot"
    assert cfg.protocol is None and cfg.deviations == ()


def test_explicit_choices_and_other_models_are_untouched():
    cfg = make_config("zeroshot", {**ARGS, "model": "medclip", "zeroshot.ensemble": "mean-embedding"})
    assert cfg.zeroshot.ensemble == "mean-embedding" and cfg.geometry == "pad"
    clip = make_config("zeroshot", {**ARGS, "model": "clip-vit-b32"})
    assert clip.recipe is None and clip.geometry == "resize" and clip.zeroshot.ensemble == "mean-embedding"
    plain = RunConfig(mode="zeroshot", model="clip-vit-b32", dataset="pneumoniamnist")
    assert clip.digest(MODE_SECTIONS["zeroshot"]) == plain.digest(MODE_SECTIONS["zeroshot"])  # hash unchanged
    knn = make_config("knn", {**ARGS, "model": "medclip"})  # the recipe is a zero-shot one
    assert knn.recipe is None and knn.geometry == "resize"
    under = make_config("zeroshot", {**ARGS, "model": "medclip", "protocol": "medclip-zeroshot"})
    assert under.recipe is None and under.protocol == "medclip-zeroshot" and under.deviations == ()


@pytest.mark.slow
def test_cli_medclip_zeroshot_without_protocol_records_its_recipe(capsys, tmp_path, pneumonia_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "r"
    code, out, err = run(capsys, "zeroshot", "--model", "medclip", "--tiny", "--dataset", "pneumoniamnist",
                         "--data-root", str(pneumonia_root), "--limit", "32", "--bootstrap", "10",
                         "--reports-dir", str(reports))
    assert code == 0, err
    res = only_report(reports)
    assert res["config"]["recipe"] == "medclip-zeroshot" and res["protocol"] is None
    assert res["transform"]["geometry"] == "pad" and res["transform"]["pad_fill"] == "zero"
    assert res["config"]["zeroshot"]["ensemble"] == "mean-logit"
    md = (reports / res["run_id"] / "report.md").read_text()
    assert "the model's own recipe `medclip-zeroshot`" in md, json.dumps(res["config"])[:300]
