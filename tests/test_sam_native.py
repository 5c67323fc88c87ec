"""Issue 22 item 1: SAM is built at its native size and fed the requested input, so its pretrained
(1024 px) weights load into a 224 px run. Each test failed on the code that built SAM at the input size."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from fmeval.adapters import create_adapter
from helpers import only_report, run


def test_tiny_sam_checkpoint_of_its_native_size_loads_into_a_larger_input(tmp_path):
    src = create_adapter("sam-vitb", tiny=True, seed=7)  # native tiny size: 32 px, 8x8 tokens
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_adapter("sam-vitb", tiny=True, seed=0, weights=tmp_path / "w.safetensors", input_size=64)
    assert loaded.load_report.clean and loaded.preprocess.input_size == 64
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded(x), src(x))  # the same network at 64 px, not a 64 px build
        assert loaded(x).shape == (2, loaded.feature_dim)


@pytest.mark.slow
def test_real_sam_b_shapes_from_a_1024_build_load_into_the_medmnist_plus_224_run(capsys, tmp_path, pneumonia_root,
                                                                                   monkeypatch):
    """The state dict of samvit_base_patch16 at 1024 px (random values, the pretrained model's shapes)
    as the checkpoint of `fmeval knn --model sam-vitb --protocol medmnist-plus` (224 px canvas)."""
    model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0)
    sd = model.state_dict()
    assert sd["pos_embed"].shape == (1, 64, 64, 768) and sd["blocks.2.attn.rel_pos_h"].shape == (127, 64)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sam.safetensors"))
    del model, sd
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "knn", "--model", "sam-vitb", "--protocol", "medmnist-plus", "--weights",
                         str(tmp_path / "sam.safetensors"), "--dataset", "pneumoniamnist", "--data-root",
                         str(pneumonia_root), "--limit", "12", "--bootstrap", "10", "--batch-size", "12",
                         "--reports-dir", str(tmp_path / "r"))
    assert code == 0, err
    res = only_report(tmp_path / "r")
    assert res["transform"]["input_size"] == 224 and res["transform"]["geometry"] == "pad"
    assert res["model"]["weights_id"].startswith("file:") and res["protocol"]["name"] == "medmnist-plus"
    assert res["test"]["n"] == 12
