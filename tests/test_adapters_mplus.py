"""The MedMNIST+ encoders: pinned tags, tiny/full builds, pre-logits features, LoRA, checkpoints."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

import fmeval.adapters.timm_models as tm
from fmeval.adapters import ADAPTERS, MEDMNIST_PLUS_MODELS, create_adapter
from fmeval.errors import ConfigError, ModelError
from fmeval.training.lora import LoraSettings, apply_lora, load_lora, save_lora
from helpers import checkpoint_roundtrip, encode, image_batch, run

# fmeval name -> (pinned weights tag shown by `fmeval ls models`, pre-logits width at full size,
# and native input size (the pinned weights' own config; protocols override it)
NEW = {
    "vgg16": ("vgg16.tv_in1k", 4096, 224),
    "tv-alexnet": ("torchvision:alexnet.IMAGENET1K_V1", 4096, 224),
    "densenet121-ra": ("densenet121.ra_in1k", 1024, 224),
    "efficientnet-b4": ("efficientnet_b4.ra2_in1k", 1792, 320),
    "vit-b16-clip-ft": ("vit_base_patch16_clip_224.laion2b_ft_in12k_in1k", 768, 224),
    "eva02-b16-clip": ("eva02_base_patch16_clip_224.merged2b", 768, 224),
}
NAMES = list(NEW)
TIMM_NEW = [n for n in NAMES if n != "tv-alexnet"]
TIMM_SPECS = {s.name: s for s in tm.SPECS}
# The key of the 1000-class (EVA-02 CLIP: 512-d projection) layer in a released checkpoint.
HEAD = {"vgg16": "head.fc", "tv-alexnet": "classifier.6", "densenet121-ra": "classifier",
        "efficientnet-b4": "classifier", "vit-b16-clip-ft": "head", "eva02-b16-clip": "head"}


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Offline, with empty Hugging Face and torchvision caches and no DNS."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    return tmp_path / "hf"


def test_medmnist_plus_models_are_registered_in_the_papers_order():
    assert MEDMNIST_PLUS_MODELS == (
        "vgg16", "tv-alexnet", "resnet18", "densenet121-ra", "efficientnet-b4",
        "vit-b16", "vit-b16-clip-ft", "eva02-b16-clip", "dino-vitb16", "sam-vitb",
    )
    missing = [n for n in MEDMNIST_PLUS_MODELS if n not in ADAPTERS]
    assert not missing
    # the ones fmeval already had pin the tags MedMNIST+'s defaults resolved to
    assert ADAPTERS.entry("resnet18").tags["weights"] == "resnet18.a1_in1k"
    assert ADAPTERS.entry("vit-b16").tags["weights"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert ADAPTERS.entry("dino-vitb16").tags["weights"] == "vit_base_patch16_224.dino"
    assert ADAPTERS.entry("sam-vitb").tags["weights"] == "samvit_base_patch16.sa1b"
    # fmeval's older densenet121 is a different model (torchvision-ported weights)
    assert ADAPTERS.entry("densenet121").tags["weights"] != ADAPTERS.entry("densenet121-ra").tags["weights"]


@pytest.mark.parametrize("name", NAMES)
def test_pinned_tag_is_in_the_registry_and_the_weights_id(name, empty_hub):
    tag = NEW[name][0]
    entry = ADAPTERS.entry(name)
    assert entry.tags["weights"] == tag and entry.tags["text"] == "no"
    with pytest.raises(ModelError) as err:
        create_adapter(name)  # the pretrained path names the pinned tag
    assert tag.removeprefix("torchvision:").split(".")[-1] in str(err.value)


@pytest.mark.skipif(timm.__version__ != "1.0.31", reason="default tags drift between timm versions")
def test_pins_are_timms_default_tags_under_the_locked_timm():
    """What MedMNIST+'s unpinned ``create_model(<arch>, pretrained=True)`` loads here."""
    from torchvision.models import get_model_weights

    for name in TIMM_NEW:
        arch, _, tag = TIMM_SPECS[name].arch.partition(".")
        assert timm.models.get_pretrained_cfg(arch).tag == tag, name
    assert get_model_weights("alexnet").DEFAULT.name == "IMAGENET1K_V1"


def test_ls_models_lists_them_with_their_pinned_tags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # a table too narrow for the tags would elide them
    code, out, _ = run(capsys, "ls", "models")
    assert code == 0
    for name in MEDMNIST_PLUS_MODELS:
        assert name in out
    for tag, _, _ in NEW.values():
        assert tag in out


@pytest.mark.parametrize("name", NAMES)
def test_tiny_build_is_offline_seeded_and_the_same_class(name):
    a = create_adapter(name, tiny=True, seed=3)
    x = image_batch(a, 4)
    f1 = encode(a, x)
    assert f1.shape == (4, a.feature_dim) and torch.isfinite(f1).all()
    assert torch.equal(f1, encode(create_adapter(name, tiny=True, seed=3), x))
    assert not torch.equal(f1, encode(create_adapter(name, tiny=True, seed=4), x))
    assert a.weights_id.startswith("random:") and a.weights_id.endswith(":tiny:seed3")
    full = {"vgg16": "VGG", "tv-alexnet": "AlexNet", "densenet121-ra": "DenseNet",
            "efficientnet-b4": "EfficientNet", "vit-b16-clip-ft": "VisionTransformer",
            "eva02-b16-clip": "Eva"}
    assert type(a.model).__name__ == full[name]  # the library's own class, only smaller
    assert sum(p.numel() for p in a.parameters()) < 2_000_000


@pytest.mark.parametrize("name", TIMM_NEW)
def test_features_are_timms_pre_logits(name):
    """MedMNIST+ features: ``forward_head(forward_features(x), pre_logits=True)``."""
    a = create_adapter(name, tiny=True)
    x = image_batch(a)
    with torch.inference_mode():
        ref = a.model.forward_head(a.model.forward_features(x), pre_logits=True)
    assert torch.equal(encode(a, x), ref) and ref.shape[1] == a.feature_dim


def test_vgg_features_are_the_4096_wide_convmlp_not_the_conv_trunk():
    a = create_adapter("vgg16", tiny=True)
    assert a.model.num_features == 64 and a.feature_dim == 4096  # trunk 1/8 width, ConvMlp as timm fixes it
    assert [n for n, _ in a.model.features.named_children()] == [
        n for n, _ in timm.create_model("vgg16", pretrained=False, num_classes=0, device="meta")
        .features.named_children()]  # VGG-16's layer pattern: same indices
    assert (encode(a, image_batch(a)) >= 0).all()  # after the ConvMlp's last ReLU


def test_efficientnet_b4_tiny_is_b4s_block_layout():
    a = create_adapter("efficientnet-b4", tiny=True)
    full = timm.create_model("efficientnet_b4", pretrained=False, num_classes=0, device="meta")
    kinds = [[type(b).__name__ for b in stage] for stage in a.model.blocks]
    assert len(kinds) == len(full.blocks) == 7 and all(len(k) == 1 for k in kinds)
    assert [k[0] for k in kinds] == [type(stage[0]).__name__ for stage in full.blocks]


def test_alexnet_tiny_keeps_torchvisions_layout_and_features_are_penultimate():
    from torchvision.models.alexnet import AlexNet

    a = create_adapter("tv-alexnet", tiny=True, seed=2)
    with torch.device("meta"):
        ref = AlexNet()
    assert [type(m) for m in a.model.modules()] == [type(m) for m in ref.modules()][:-1] + [torch.nn.Identity]
    x = image_batch(a)
    with torch.inference_mode():
        m = a.model
        pen = m.classifier[:6](torch.flatten(m.avgpool(m.features(x)), 1))
    assert torch.equal(encode(a, x), pen) and pen.shape == (2, 512)
    assert a.preprocess.input_size == 64 and a.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(ConfigError, match=">= 63"):
        create_adapter("tv-alexnet", tiny=True, input_size=32)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_random_architecture(name):
    """Built on the meta device (no memory, no init) through the same --random-init path.

    Parameter counts are checked against torchvision's published counts of the
    same architectures, minus the 1000-class layer the adapter drops.
    """
    from torchvision.models import get_model_weights

    with torch.device("meta"):
        a = create_adapter(name, pretrained=False, device="meta")
        f = a(torch.empty(2, 3, a.preprocess.input_size, a.preprocess.input_size))
    _, dim, size = NEW[name]
    assert a.feature_dim == dim and f.shape == (2, dim) and a.preprocess.input_size == size
    assert a.weights_id.endswith(":full:seed0")
    total = sum(p.numel() for p in a.parameters())
    tv = {"vgg16": "vgg16", "tv-alexnet": "alexnet", "densenet121-ra": "densenet121",
          "efficientnet-b4": "efficientnet_b4", "vit-b16-clip-ft": "vit_b_16"}
    if name in tv:
        published = get_model_weights(tv[name]).IMAGENET1K_V1.meta["num_params"] - (dim * 1000 + 1000)
        # CLIP ViTs add a pre-norm LayerNorm (2 x 768) and drop the patch-embedding bias (768)
        assert total == published + (768 if name == "vit-b16-clip-ft" else 0)
    else:  # EVA-02 B: 12 blocks, 768 wide, SwiGLU MLP, separate q/k/v, rotary position embedding
        assert len(a.model.blocks) == 12 and a.model.embed_dim == 768
        assert a.model.rope is not None and hasattr(a.model.blocks[0].mlp, "fc1_g")
        assert a.model.blocks[0].attn.q_proj.in_features == 768


@pytest.mark.parametrize("name", NAMES)
def test_lora_wraps_every_declared_target_on_the_forward_path(name, tmp_path):
    from peft.tuners.lora import LoraLayer

    a = create_adapter(name, tiny=True)
    x = image_batch(a)
    before = encode(a, x)
    settings = LoraSettings(r=4, alpha=8.0, dropout=0.0)
    apply_lora(a, settings)
    wrapped = {n: m for n, m in a.backbone.named_modules() if isinstance(m, LoraLayer)}
    for target in a.lora_targets:  # every declared target matched at least one module
        assert any(n == target or n.endswith("." + target) for n in wrapped), target
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: called.add(n)) for n, m in wrapped.items()]
    assert torch.allclose(encode(a, x), before, atol=1e-6)  # lora_B starts at zero
    for h in hooks:
        h.remove()
    assert called == set(wrapped)  # no dead LoRA layer
    with torch.no_grad():
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    changed = encode(a, x)
    assert not torch.allclose(changed, before, atol=1e-4)
    save_lora(a, settings, tmp_path / "lora")
    fresh = create_adapter(name, tiny=True)
    load_lora(fresh, tmp_path / "lora")
    assert torch.equal(encode(fresh, x), changed)


@pytest.mark.parametrize("name", NAMES)
def test_local_checkpoint_roundtrip_is_strict(name, tmp_path):
    src, sd, loaded = checkpoint_roundtrip(name, HEAD[name], tmp_path)  # a released head is dropped

    key = next(k for k, v in sd.items() if v.ndim >= 2 and not k.startswith(HEAD[name]))
    bad = {**sd, key: torch.zeros(3, 3), "extra.key": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="1 unexpected: extra.key; 1 shape mismatch") as err:
        create_adapter(name, tiny=True, weights=tmp_path / "bad.pth")
    assert "\n" not in str(err.value) and "--no-strict" in str(err.value)


def test_vgg_reads_torchvisions_own_checkpoint_layout(tmp_path):
    """torchvision's vgg16 file names the head ``classifier.{0,3,6}`` as linears."""
    src = create_adapter("vgg16", tiny=True, seed=5)
    tv = {}
    for k, v in src.model.state_dict().items():
        for new, old in (("pre_logits.fc1.", "classifier.0."), ("pre_logits.fc2.", "classifier.3.")):
            if k.startswith(new):
                k, v = old + k[len(new):], (v.flatten(1) if v.ndim == 4 else v)
        tv[k] = v
    tv["classifier.6.weight"], tv["classifier.6.bias"] = torch.zeros(1000, 4096), torch.zeros(1000)
    assert tv["classifier.0.weight"].shape == (64, 64 * 7 * 7)
    torch.save(tv, tmp_path / "vgg16-tv.pth")
    loaded = create_adapter("vgg16", tiny=True, weights=tmp_path / "vgg16-tv.pth")
    assert loaded.load_report.clean and torch.equal(encode(loaded, image_batch(src)), encode(src, image_batch(src)))
    tv["classifier.3.weight"] = torch.zeros(4096, 63)  # a wrong size is still reported
    torch.save(tv, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="1 shape mismatch: pre_logits.fc2.weight"):
        create_adapter("vgg16", tiny=True, weights=tmp_path / "bad.pth")


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_offline_is_one_quick_line(name, empty_hub, monkeypatch):
    built: list[int] = []  # sizes of the linear layers initialised: a full model built first shows here
    original = torch.nn.Linear.reset_parameters

    def spy(self):
        built.append(self.weight.numel())
        return original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", spy)
    # CPU time of this process, not wall time: a loaded machine (a shared CI runner, a study
    # beside it) must not fail this; building the full model first would still cost seconds.
    t0 = time.process_time()
    with pytest.raises(ModelError, match="--weights PATH") as err:
        create_adapter(name)
    elapsed = time.process_time() - t0
    assert "\n" not in str(err.value) and name in str(err.value)
    assert elapsed < 1.0, f"{name} took {elapsed:.1f}s of CPU to fail offline"
    assert max(built, default=0) < 1_000_000, f"{name} built a full-size layer before failing"


def test_pretrained_loads_from_the_hugging_face_cache_offline(empty_hub):
    """The offline check lets a cached file through to timm's own hub loading."""
    ref = timm.create_model("densenet121.ra_in1k", pretrained=False)  # with its 1000-class head
    snap = empty_hub / "models--timm--densenet121.ra_in1k" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors"))
    a = create_adapter("densenet121-ra")
    assert a.weights_id == "timm:densenet121.ra_in1k" and a.preprocess.interpolation == "bicubic"
    x = torch.randn(2, 3, 64, 64)
    ref.eval().reset_classifier(0)
    assert torch.equal(encode(a, x), encode(ref, x))


def test_timm_offline_check_reports_the_cache_it_looked_in(empty_hub):
    with pytest.raises(ModelError) as err:
        create_adapter("eva02-b16-clip")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "timm/eva02_base_patch16_clip_224.merged2b" in msg
    assert str(empty_hub) in msg


def test_tiny_builders_keep_the_pinned_pretrained_config():
    """The private-builder paths still carry the tag's mean/std and classifier name."""
    for name, mean in (("vgg16", (0.485, 0.456, 0.406)), ("efficientnet-b4", (0.485, 0.456, 0.406)),
                       ("vit-b16-clip-ft", (0.48145466, 0.4578275, 0.40821073)),
                       ("eva02-b16-clip", (0.48145466, 0.4578275, 0.40821073))):
        a = create_adapter(name, tiny=True)
        assert a.model.pretrained_cfg["tag"] == TIMM_SPECS[name].arch.partition(".")[2]
        assert a.preprocess.mean == pytest.approx(mean)
