"""The adapter registry and the timm encoders (tiny random builds, local weights)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fmeval.adapters import ADAPTERS, create_adapter
from fmeval.errors import ModelError

TIMM_MODELS = ["vit-b16", "vit-s16", "dino-vitb16", "dinov2-vits14", "dinov2-vitb14", "sam-vitb",
               "resnet18", "resnet50", "densenet121", "resnet18-medmnist", "resnet50-medmnist"]


def test_registry_lists_required_families():
    families = {e.tags.get("family") for e in ADAPTERS}
    assert {"vit", "dino", "dinov2", "sam", "cnn"} <= families


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_tiny_build_encodes_deterministically(name):
    a = create_adapter(name, tiny=True, seed=3)
    s = a.preprocess.input_size
    x = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        f1 = a.encode_image(x)
        f2 = create_adapter(name, tiny=True, seed=3).encode_image(x)
        f3 = create_adapter(name, tiny=True, seed=4).encode_image(x)
    assert f1.shape == (4, a.feature_dim) and torch.isfinite(f1).all()
    assert torch.equal(f1, f2) and not torch.equal(f1, f3)
    assert a.weights_id.startswith("random:") and "seed3" in a.weights_id
    assert a.lora_targets


def test_pinned_tags_and_own_normalisation():
    vit = create_adapter("vit-b16", tiny=True)
    dino = create_adapter("dino-vitb16", tiny=True)
    assert "augreg2_in21k_ft_in1k" in vit.weights_id and ".dino" in dino.weights_id
    assert vit.preprocess.mean == (0.5, 0.5, 0.5)  # augreg ViTs use 0.5, not ImageNet stats
    assert dino.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_input_size_override():
    a = create_adapter("sam-vitb", tiny=True, input_size=64)
    assert a.preprocess.input_size == 64
    assert a.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, a.feature_dim)


def test_unknown_model_suggests():
    with pytest.raises(ModelError, match="Did you mean: vit-b16"):
        create_adapter("vit-b61")


def test_pretrained_offline_fails_with_one_clear_line():
    with pytest.raises(ModelError, match="--weights PATH") as err:
        create_adapter("dino-vitb16")
    assert "\n" not in str(err.value)


def test_local_weights_roundtrip_and_mismatch(tmp_path):
    src = create_adapter("vit-b16", tiny=True, seed=7)
    sd = {f"{k}": v for k, v in src.model.state_dict().items()}
    sd["head.weight"] = torch.zeros(10, src.feature_dim)  # a classifier head is ignored explicitly
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    loaded = create_adapter("vit-b16", tiny=True, seed=0, weights=path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.encode_image(x), loaded.encode_image(x))
    assert loaded.weights_id.startswith("file:") and loaded.load_report.clean

    bad = dict(sd)
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    bad["extra.key"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="1 unexpected: extra.key; 1 shape mismatch"):
        create_adapter("vit-b16", tiny=True, weights=tmp_path / "bad.pth")
    lenient = create_adapter("vit-b16", tiny=True, weights=tmp_path / "bad.pth", strict=False)
    assert lenient.load_report.unexpected == ["extra.key"]


def test_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_adapter("vit-b16", tiny=True, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        create_adapter("vit-b16", tiny=True, weights=tmp_path / "junk.pth")


def test_medmnist_reference_resnet_has_the_small_stem_and_no_pretrained_weights():
    a = create_adapter("resnet18-medmnist")  # no hub weights exist: always from scratch
    assert a.weights_id == "random:resnet18-medmnist-3x3stem-torchinit:full:seed0"
    conv1 = a.model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(a.model.maxpool, torch.nn.Identity)
    assert a.preprocess.input_size == 28 and a.preprocess.mean == (0.5, 0.5, 0.5)
    assert 11.0e6 < sum(p.numel() for p in a.parameters()) < 11.3e6  # ResNet-18 without its fc
