"""MedViT adapter: architecture, checkpoint layout, loading rules, LoRA.

Everything runs offline on random weights; full-size models are only
constructed (plus one 28 px forward of MedViT-S).
"""

from __future__ import annotations

import argparse
import time
import warnings

import pytest
import torch

from fmeval.adapters import ADAPTERS, create_adapter
from fmeval.adapters.medvit import HEAD_KEYS, MedViTAdapter, build_medvit, count_parameters
from fmeval.errors import ModelError


def _images(size: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


@torch.no_grad()
def _features(adapter, x: torch.Tensor) -> torch.Tensor:
    return adapter.encode_image(x)


def _save_authors_layout(model_sd: dict, path, num_classes: int = 1000) -> None:
    """A checkpoint shaped like MedViT_*_im1k.pth: {"model": sd} with a proj_head and args."""
    width = model_sd["norm.weight"].shape[0]
    sd = dict(model_sd)
    sd["proj_head.0.weight"] = torch.randn(num_classes, width)
    sd["proj_head.0.bias"] = torch.randn(num_classes)
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="MedViT_small")}, path)


# -- registry and tiny forward ------------------------------------------------


def test_registered_names_and_family():
    for name in ("medvit-small", "medvit-base", "medvit-large"):
        entry = ADAPTERS.entry(name)
        assert entry.tags["family"] == "medvit"
    a = create_adapter("medvit-small", tiny=True)
    assert isinstance(a, MedViTAdapter) and a.family == "medvit"
    assert a.weights_id == "random:MedViT_small:tiny:seed0"
    assert a.preprocess.input_size == 28
    assert a.preprocess.mean == (0.485, 0.456, 0.406)
    assert a.preprocess.std == (0.229, 0.224, 0.225)
    assert not a.training


@pytest.mark.parametrize("size", [28, 32])
def test_tiny_forward_shape_finite_deterministic(size):
    a = create_adapter("medvit-small", tiny=True, seed=1)
    b = create_adapter("medvit-small", tiny=True, seed=1)
    c = create_adapter("medvit-small", tiny=True, seed=2)
    x = _images(size)
    fa, fb, fc = _features(a, x), _features(b, x), _features(c, x)
    assert fa.shape == (3, a.feature_dim)
    assert torch.isfinite(fa).all()
    assert torch.equal(fa, fb)  # same seed -> same weights -> same features
    assert not torch.allclose(fa, fc)  # the seed matters
    assert fa.std(dim=0).mean() > 0  # images are not all mapped to one vector
    assert a.weights_id == b.weights_id != c.weights_id


def test_tiny_model_is_tiny():
    a = create_adapter("medvit-small", tiny=True)
    assert count_parameters(a) < 200_000
    assert _features(a, _images(28, n=8)).shape == (8, a.feature_dim)


@pytest.mark.parametrize("size", [28, 64, 224, 16])
def test_input_size_override(size):
    a = create_adapter("medvit-base", tiny=True, input_size=size)
    assert a.preprocess.input_size == size
    assert a.weights_id.endswith(f"@{size}:seed0")
    f = _features(a, _images(size, n=2))
    assert f.shape == (2, a.feature_dim) and torch.isfinite(f).all()


def test_full_small_forward_at_28px():
    a = create_adapter("medvit-small", pretrained=False)
    assert a.feature_dim == 1024
    assert a.preprocess.input_size == 224
    assert a.weights_id == "random:MedViT_small:full:seed0"
    f = _features(a, _images(28, n=2))
    assert f.shape == (2, 1024) and torch.isfinite(f).all()


# -- architecture as released -------------------------------------------------

# Exact counts of the authors' MedViT.py (1000-class head included), checked
# against a transcription of their code: same keys, same shapes, same outputs.
AUTHORS_PARAMS = {"small": 32_161_440, "base": 45_430_972, "large": 58_700_504}


@pytest.mark.parametrize("variant", ["small", "base"])
def test_parameter_counts(variant):
    with torch.device("meta"):  # shapes only: no memory, no init, no forward
        n = count_parameters(build_medvit(variant, num_classes=1000))
        headless = count_parameters(build_medvit(variant, num_classes=0))
    assert n == AUTHORS_PARAMS[variant]
    assert n - headless == 1024 * 1000 + 1000
    if variant == "base":  # the ~45.0M quoted for MedViT-B
        assert abs(n / 1e6 - 45.0) / 45.0 < 0.02
    # NOTE: the ~23.1M quoted for "MedViT-S" does not match the released
    # MedViT_small (3-4-10-3, 32.2M); see the adapter report.


def test_state_dict_layout_matches_authors_code():
    """Key names and shapes of MedViT_small_im1k.pth as built by the authors' code."""
    with torch.device("meta"):
        model = build_medvit("small", num_classes=1000)
    sd = model.state_dict()
    assert len(sd) == 832
    expected = {
        "stem.0.conv.weight": (64, 3, 3, 3),
        "stem.3.norm.num_batches_tracked": (),
        "features.0.mhca.group_conv3x3.weight": (96, 32, 3, 3),
        "features.0.conv.conv.6.fc.0.weight": (3, 288),
        "features.3.patch_embed.conv.weight": (192, 96, 1, 1),
        "features.6.e_mhsa.q.weight": (192, 192),
        "features.6.e_mhsa.norm.running_var": (192,),
        "features.6.projection.conv.weight": (64, 192, 1, 1),
        "features.6.mhca.group_conv3x3.weight": (64, 32, 3, 3),
        "features.6.conv.conv.7.weight": (256, 512, 1, 1),
        "features.7.patch_embed.conv.weight": (384, 256, 1, 1),
        "features.11.e_mhsa.k.bias": (384,),
        "features.19.e_mhsa.proj.weight": (768, 768),
        "norm.weight": (1024,),
        "proj_head.0.weight": (1000, 1024),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "features.19.e_mhsa.norm.weight" not in sd  # sr_ratio 1 in stage 4: no reduction norm
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["ECB"] * 3 + ["ECB"] * 3 + ["LTB"] + (["ECB"] * 4 + ["LTB"]) * 2 + [
        "ECB", "ECB", "LTB"
    ]


# -- checkpoint loading -------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    src = create_adapter("medvit-small", tiny=True, seed=7)
    # Give BatchNorm non-trivial statistics so a missed buffer would show.
    with torch.no_grad():
        for name, buf in src.backbone.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "MedViT_small_im1k.pth"
    _save_authors_layout(src.backbone.state_dict(), path)

    loaded = create_adapter("medvit-small", tiny=True, weights=path)
    x = _images(28)
    assert torch.equal(_features(src, x), _features(loaded, x))
    assert loaded.weights_id.startswith("file:") and len(loaded.weights_id) == 5 + 16
    assert loaded.load_report is not None and loaded.load_report.clean
    assert not any(k.startswith("proj_head") for k in loaded.backbone.state_dict())
    assert set(HEAD_KEYS) == {"proj_head.0.weight", "proj_head.0.bias"}


def test_renamed_key_fails_strict_and_is_reported_non_strict(tmp_path):
    src = create_adapter("medvit-small", tiny=True, seed=3)
    sd = src.backbone.state_dict()
    sd["features.2.e_mhsa.q_proj.weight"] = sd.pop("features.2.e_mhsa.q.weight")
    path = tmp_path / "renamed.pth"
    _save_authors_layout(sd, path)

    with pytest.raises(ModelError) as err:
        create_adapter("medvit-small", tiny=True, weights=path)
    assert "features.2.e_mhsa.q.weight" in str(err.value)
    assert "proj_head" not in str(err.value)  # the head is ignored explicitly, never reported

    with pytest.warns(UserWarning, match="non-strictly"):
        a = create_adapter("medvit-small", tiny=True, weights=path, strict=False)
    rep = a.load_report
    assert rep.missing == ["features.2.e_mhsa.q.weight"]
    assert rep.unexpected == ["features.2.e_mhsa.q_proj.weight"]
    assert not rep.shape_mismatch
    # Everything that matched was loaded.
    assert torch.equal(a.backbone.features[2].e_mhsa.k.weight, src.backbone.features[2].e_mhsa.k.weight)
    assert not torch.equal(a.backbone.features[2].e_mhsa.q.weight, src.backbone.features[2].e_mhsa.q.weight)


def test_wrong_shape_checkpoint_is_rejected(tmp_path):
    sd = build_medvit("small", tiny=True, num_classes=0).state_dict()
    sd["features.0.mhca.projection.weight"] = torch.zeros(8, 16, 1, 1)
    path = tmp_path / "other_width.pth"
    _save_authors_layout(sd, path)
    with pytest.raises(ModelError, match="shape mismatch"):
        create_adapter("medvit-small", tiny=True, weights=path)
    with pytest.warns(UserWarning, match="shape mismatch"):
        a = create_adapter("medvit-small", tiny=True, weights=path, strict=False)
    assert a.load_report.shape_mismatch == [
        "features.0.mhca.projection.weight (8, 16, 1, 1)!=(16, 16, 1, 1)"
    ]


def test_pretrained_without_weights_is_a_quick_model_error():
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        create_adapter("medvit-small")  # pretrained=True by default, no --weights
    assert time.perf_counter() - t0 < 15  # no download attempt that hangs until a timeout
    msg = str(err.value)
    assert "--weights" in msg and "--random-init" in msg
    assert "MedViT_small_im1k.pth" in msg and "Omid-Nejati/MedViT" in msg


# -- LoRA ---------------------------------------------------------------------


def test_peft_lora_finds_targets_and_freezes_the_rest():
    from peft import LoraConfig, inject_adapter_in_model

    a = create_adapter("medvit-small", tiny=True)
    x = _images(28, n=2)
    before = _features(a, x)
    model = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=8, target_modules=list(a.lora_targets)), a.backbone
    )
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) >= 1
    suffixes = {t.split(".")[-1] for t in a.lora_targets}
    assert {"q", "k", "v", "proj", "projection"} <= {n.split(".")[-1] for n in wrapped} <= suffixes
    trainable = [n for n, p in a.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # LoRA B starts at zero: the wrapped model computes the same features.
    assert torch.allclose(_features(a, x), before, atol=1e-6)
    # And gradients reach the adapters (a plain sum would be constant through BatchNorm).
    a.train()
    a.encode_image(x).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in a.named_parameters() if "lora_B" in n)


def test_lora_targets_cover_full_model():
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):  # module structure only
        full = build_medvit("small", num_classes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inject_adapter_in_model(
            LoraConfig(r=2, target_modules=list(MedViTAdapter.lora_targets)), full
        )
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    # 20 blocks x (MHCA 1x1 + two LFFN 1x1) + 4 LTBs x (q, k, v, proj)
    assert len(wrapped) == 20 * 3 + 4 * 4
