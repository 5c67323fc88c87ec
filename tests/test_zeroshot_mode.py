"""Zero-shot mode end to end: real data, cached image and text features, prompt comparison."""

from __future__ import annotations

import json

import pytest

from fmeval.errors import PromptBankError
from fmeval.modes.linprobe import LinprobeConfig, run_linprobe
from fmeval.modes.prompt_compare import CompareConfig, run_prompt_compare
from fmeval.modes.zeroshot import ZeroshotConfig, run_zeroshot
from fmeval.data.synthetic import write_synthetic


@pytest.fixture
def counting(monkeypatch):
    from fmeval.adapters.openclip import OpenClipAdapter

    calls = {"image": 0, "text": 0}
    enc_i, enc_t = OpenClipAdapter.encode_image, OpenClipAdapter.encode_text

    def image(self, x):
        calls["image"] += 1
        return enc_i(self, x)

    def text(self, t):
        calls["text"] += 1
        return enc_t(self, t)

    monkeypatch.setattr(OpenClipAdapter, "encode_image", image)
    monkeypatch.setattr(OpenClipAdapter, "encode_text", text)
    return calls


def _cfg(root, cls=ZeroshotConfig, **kw):
    base = dict(model="clip-vit-b32", dataset="pneumoniamnist", data_root=str(root), tiny=True,
                n_boot=100, prompts="pneumonia")
    base.update(kw)
    return cls(**base)


@pytest.mark.slow
def test_zeroshot_real_pneumonia_reuses_cached_features(pneumonia_root, tmp_path, counting):
    first = run_zeroshot(_cfg(pneumonia_root, reports_dir=str(tmp_path / "r")))
    assert counting["image"] > 0 and counting["text"] > 0
    m = first.test.metrics
    assert first.dataset["n_test"] == 624
    for name in ("acc", "auc", "balanced_acc", "f1_macro", "kappa", "ece"):
        assert m[name].ci_low <= m[name].value <= m[name].ci_high
    assert first.test.baseline["acc"] == pytest.approx(0.625)
    assert len(first.extras["prompt_bank_hash"]) == 64 and first.extras["style"] == "templates"
    saved = json.loads((tmp_path / "r" / first.run_id / "results.json").read_text())
    assert saved["extras"]["prompt_bank_hash"] == first.extras["prompt_bank_hash"]

    counting["image"] = counting["text"] = 0
    second = run_zeroshot(_cfg(pneumonia_root, reports_dir=str(tmp_path / "r")))
    assert counting == {"image": 0, "text": 0}  # image AND text embeddings came from the cache
    assert all(second.extras["cache_hits"].values())
    assert second.test.metrics["auc"].value == first.test.metrics["auc"].value

    counting["text"] = 0
    run_zeroshot(_cfg(pneumonia_root, style="medical", reports_dir=str(tmp_path / "r")))
    assert counting["image"] == 0 and counting["text"] > 0  # a new style only costs its prompts


def test_prompt_compare_one_row_per_style(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 40))
    cmp = run_prompt_compare(_cfg(tmp_path, CompareConfig, reports_dir=str(tmp_path / "r")))
    from fmeval.prompts import resolve_bank

    bank = resolve_bank("pneumonia", "pneumoniamnist")
    assert [r["style"] for r in cmp.rows] == bank.styles
    assert all(0 <= r["auc"] <= 1 and 0 <= r["balanced_acc"] <= 1 for r in cmp.rows)
    aucs = [r["auc"] for r in cmp.rows]
    assert cmp.spread("auc") == pytest.approx(max(aucs) - min(aucs))
    out = tmp_path / "r" / cmp.run_id
    md = (out / "prompts_compare.md").read_text()
    assert all(f"| {s} |" in md for s in bank.styles) and "majority class" in md
    assert (out / "prompts_compare.png").stat().st_size > 1000
    assert (out / "prompts_compare.csv").read_text().count("\n") == len(bank.styles) + 1


def test_prompt_compare_per_template_adds_rows(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 20))
    cmp = run_prompt_compare(_cfg(tmp_path, CompareConfig, styles=("templates",), per_template=True,
                                  reports_dir=str(tmp_path / "r")))
    assert cmp.rows[0]["style"] == "templates"
    assert len(cmp.rows) > 2 and all(r["style"].startswith("templates#") for r in cmp.rows[1:])


def test_bank_for_wrong_dataset_fails_before_model_loads(tmp_path, monkeypatch):
    write_synthetic(tmp_path, "pneumoniamnist", 28)
    import fmeval.pipeline

    def boom(*a, **k):
        raise AssertionError("model must not be loaded for an invalid bank")

    monkeypatch.setattr(fmeval.pipeline, "build_adapter", boom)
    with pytest.raises(PromptBankError, match="pathmnist"):
        run_zeroshot(_cfg(tmp_path, prompts="pathmnist"))
    with pytest.raises(PromptBankError, match="unknown prompt style"):
        run_zeroshot(_cfg(tmp_path, style="no-such-style"))


def test_linprobe_initialised_from_zeroshot(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(60, 30, 30))
    res = run_linprobe(_cfg(tmp_path, LinprobeConfig, init="zeroshot", reports_dir=str(tmp_path / "r")))
    assert res.extras["init"] == "zeroshot" and len(res.extras["prompt_bank_hash"]) == 64
    assert res.test.metrics["auc"].value == res.test.metrics["auc"].value  # finite


def test_medclip_prompts_are_encoded_per_class(tmp_path, monkeypatch):
    """MedCLIP pools over padding: each class's prompts must be one batch."""
    from fmeval.adapters.medclip import MedClipAdapter

    batches = []
    orig = MedClipAdapter.encode_text

    def spy(self, texts):
        batches.append(list(texts))
        return orig(self, texts)

    monkeypatch.setattr(MedClipAdapter, "encode_text", spy)
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(20, 10, 10))
    run_zeroshot(_cfg(tmp_path, model="medclip", style="templates", reports_dir=str(tmp_path / "r")))
    from fmeval.prompts import resolve_bank

    per_class = resolve_bank("pneumonia", "pneumoniamnist").prompts("templates")
    assert batches == per_class
