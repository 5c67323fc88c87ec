"""Zero-shot mode end to end: real data, cached image and text features, prompt comparison."""

from __future__ import annotations

import json

import pytest

from fmeval.config import RunConfig
from fmeval.errors import ConfigError, PromptBankError
from fmeval.data.synthetic import write_synthetic
from fmeval.runner import execute


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


def _cfg(root, mode="zeroshot", **kw):
    base = {"model": "clip-vit-b32", "dataset": "pneumoniamnist", "data_root": str(root), "tiny": True,
            "pretrained": False, "n_boot": 100, "zeroshot.prompts": "pneumonia"}
    base.update(kw)
    return RunConfig(mode=mode, model="x", dataset="x").with_values(base)


def run_zeroshot(cfg):
    return execute(cfg, write=cfg.reports_dir is not None)


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
    run_zeroshot(_cfg(pneumonia_root, **{"zeroshot.style": "medical"}, reports_dir=str(tmp_path / "r")))
    assert counting["image"] == 0 and counting["text"] > 0  # a new style only costs its prompts


def test_prompt_compare_one_row_per_style_chosen_on_val(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 40))
    res = execute(_cfg(tmp_path, "prompts-compare", reports_dir=str(tmp_path / "r")))
    from fmeval.prompts import resolve_bank

    bank = resolve_bank("pneumonia", "pneumoniamnist")
    rows = res.extras["comparison"]
    assert [r["style"] for r in rows] == bank.styles and res.extras["comparison_split"] == "val"
    assert all(0 <= r["auc"] <= 1 and 0 <= r["balanced_acc"] <= 1 for r in rows)
    best = max(rows, key=lambda r: r["auc"])  # on validation
    assert res.selection["style"] == best["style"]
    assert res.val.metrics["auc"].value == pytest.approx(best["auc"])
    out = tmp_path / "r" / res.run_id
    md = (out / "report.md").read_text()
    assert all(s in md for s in bank.styles) and "Prompt styles (val split)" in md
    assert (out / "prompt_styles.png").stat().st_size > 1000
    # the one reporter wrote it: results.json + the runs index
    assert (out / "results.json").exists() and res.run_id in (tmp_path / "r" / "runs.csv").read_text()


def test_prompt_compare_test_all_has_paired_cis(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 40))
    res = execute(_cfg(tmp_path, "prompts-compare", **{"zeroshot.test_all": True}), write=False)
    rows = {r["style"]: r for r in res.extras["comparison"]}
    chosen = rows[res.selection["style"]]
    assert chosen["delta_auc_vs_selected"] == 0.0
    for r in rows.values():
        lo, hi = r["delta_auc_ci"]
        assert lo <= r["delta_auc_vs_selected"] <= hi or r is chosen


def test_prompt_compare_per_template_adds_rows(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 20))
    res = execute(_cfg(tmp_path, "prompts-compare", **{"zeroshot.styles": ["templates"],
                                                        "zeroshot.per_template": True}), write=False)
    rows = res.extras["comparison"]
    assert rows[0]["style"] == "templates"
    assert len(rows) > 2 and all(r["style"].startswith("templates#") for r in rows[1:])


def test_bank_for_wrong_dataset_fails_before_model_loads(tmp_path, monkeypatch):
    write_synthetic(tmp_path, "pneumoniamnist", 28)
    import fmeval.pipeline

    def boom(*a, **k):
        raise AssertionError("model must not be loaded for an invalid bank")

    monkeypatch.setattr(fmeval.pipeline, "build_adapter", boom)
    with pytest.raises(PromptBankError, match="pathmnist"):
        run_zeroshot(_cfg(tmp_path, **{"zeroshot.prompts": "pathmnist"}))
    with pytest.raises(PromptBankError, match="unknown prompt style"):
        run_zeroshot(_cfg(tmp_path, **{"zeroshot.style": "no-such-style"}))


def test_linprobe_initialised_from_zeroshot(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(60, 30, 30))
    res = execute(_cfg(tmp_path, "linprobe", **{"linprobe.init": "zeroshot", "linprobe.feature_norm": "l2"},
                       reports_dir=str(tmp_path / "r")))
    assert res.config["linprobe"]["init"] == "zeroshot" and len(res.extras["prompt_bank_hash"]) == 64
    assert res.test.metrics["auc"].value == res.test.metrics["auc"].value  # finite


def test_zeroshot_init_needs_l2_features_so_one_thing_changes_at_a_time():
    with pytest.raises(ConfigError, match="feature-norm l2"):
        RunConfig(mode="linprobe", model="x", dataset="x").with_values({"linprobe.init": "zeroshot"})


def test_unchanged_zeroshot_head_competes_on_validation():
    """With an initial head no epoch improves on (lr ~ 0), the probe returns it unchanged (epoch 0)."""
    import torch

    from fmeval.probes.linear import ProbeConfig, train_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=1)
    w = torch.randn(2, 8, generator=g) * 10
    y = (x @ w.T).argmax(1)
    probe = train_linear_probe(x[:100], y[:100], x[100:], y[100:], n_outputs=2, multilabel=False,
                               config=ProbeConfig(lrs=(1e-9,), weight_decays=(0.0,), epochs=3, patience=1),
                               init_weight=w, standardize=False)
    assert probe.best_epoch == 0
    torch.testing.assert_close(probe.weight, w.T)


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
    run_zeroshot(_cfg(tmp_path, model="medclip", **{"zeroshot.style": "templates"}, reports_dir=str(tmp_path / "r")))
    from fmeval.prompts import resolve_bank

    per_class = resolve_bank("pneumonia", "pneumoniamnist").prompts("templates")
    assert batches == per_class


def test_prompt_compare_test_all_deltas_from_separate_zeroshot_runs_and_sklearn(tmp_path):
    """Issue 22 item 12: each style's test AUC and its delta to the chosen style (style minus chosen), and the
    paired CI, recomputed from separate zero-shot runs of each style with scikit-learn and a resampling loop."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 20, 40))
    res = execute(_cfg(tmp_path, "prompts-compare", **{"zeroshot.test_all": True}), write=False)
    rows = {r["style"]: r for r in res.extras["comparison"]}
    y = None
    test_scores = {}
    for style in rows:
        one = execute(_cfg(tmp_path, "zeroshot", **{"zeroshot.style": style}), write=False)
        test_scores[style] = one.test_scores[:, 1]
        from fmeval.data import load_dataset

        y = load_dataset("pneumoniamnist", 28, tmp_path, md5="off").labels("test")[:, 0]
    auc = {s: roc_auc_score(y, v) for s, v in test_scores.items()}
    chosen = res.selection["style"]
    idx = np.random.default_rng(res.seed).integers(0, y.size, size=(100, y.size))
    for style, row in rows.items():
        assert row["auc"] == pytest.approx(auc[style], abs=1e-12)
        assert row["delta_auc_vs_selected"] == pytest.approx(auc[style] - auc[chosen], abs=1e-12)
        diffs = [roc_auc_score(y[i], test_scores[style][i]) - roc_auc_score(y[i], test_scores[chosen][i])
                 for i in idx if 0 < y[i].sum() < y.size]
        assert row["delta_auc_ci"] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])), abs=1e-9)
    assert len({round(v, 9) for v in auc.values()}) > 1  # the styles really differ (a delta is not always 0)
