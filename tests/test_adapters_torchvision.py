"""torchvision ImageNet encoders: pinned weights, tiny/random builds, checkpoints, LoRA."""

from __future__ import annotations

import socket
import time

import pytest
import torch

import fmeval.adapters.torchvision_models as tvm
from fmeval.adapters import ADAPTERS, create_adapter
from fmeval.errors import ConfigError, ModelError
from fmeval.training.lora import LoraSettings, apply_lora, count_parameters, load_lora, save_lora
from helpers import checkpoint_roundtrip, encode, image_batch, run

SPECS = {s.name: s for s in tvm.SPECS}
NAMES = list(SPECS)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torchvision cache and a network whose DNS fails, as on this machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_registered_names_pin_the_protocol_weights():
    from torchvision.models import get_model_weights

    assert NAMES == ["tv-resnet18", "tv-resnet50", "tv-densenet121", "tv-efficientnetv2-s", "tv-vit-b16",
                     "tv-alexnet"]
    expected = {"tv-resnet18": "IMAGENET1K_V1", "tv-resnet50": "IMAGENET1K_V2",
                "tv-densenet121": "IMAGENET1K_V1", "tv-efficientnetv2-s": "IMAGENET1K_V1",
                "tv-vit-b16": "IMAGENET1K_V1", "tv-alexnet": "IMAGENET1K_V1"}
    for name, spec in SPECS.items():
        assert spec.weights == expected[name]
        meta = get_model_weights(spec.arch)[spec.weights].meta
        # the protocol's top-1 must be what torchvision says these weights reach
        assert round(meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100, 3) == spec.top1
        entry = ADAPTERS.entry(name)
        assert entry.tags["weights"] == f"torchvision:{spec.arch}.{spec.weights}"
        assert entry.tags["family"] == ("vit" if name == "tv-vit-b16" else "cnn")


@pytest.mark.parametrize("name", NAMES)
def test_tiny_build_is_seeded_and_encodes(name):
    a = create_adapter(name, tiny=True, seed=3)
    x = image_batch(a, 4)
    f1 = encode(a, x)
    b = create_adapter(name, tiny=True, seed=3)
    c = create_adapter(name, tiny=True, seed=4)
    assert f1.shape == (4, a.feature_dim) and torch.isfinite(f1).all()
    assert a.weights_id == b.weights_id == f"random:torchvision.{SPECS[name].arch}:tiny:seed3"
    assert torch.equal(f1, encode(b, x)) and not torch.equal(f1, encode(c, x))
    assert a.family == SPECS[name].family and a.lora_targets
    # the ImageNet classifier is gone: no module maps to 1000 outputs
    assert not any(getattr(m, "out_features", 0) == 1000 for m in a.modules())
    assert a.preprocess.input_size == SPECS[name].tiny_input == (64 if name == "tv-alexnet" else 32)
    assert a.preprocess.interpolation == "bilinear"
    assert a.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize("name", NAMES)
def test_full_size_random_build_is_the_torchvision_architecture(name):
    """Parameter count = torchvision's published count minus the 1000-class layer."""
    from torchvision.models import get_model_weights

    spec = SPECS[name]
    a = create_adapter(name, pretrained=False)
    w = get_model_weights(spec.arch)[spec.weights]
    dims = {"tv-resnet18": 512, "tv-resnet50": 2048, "tv-densenet121": 1024,
            "tv-efficientnetv2-s": 1280, "tv-vit-b16": 768, "tv-alexnet": 4096}
    assert a.feature_dim == dims[name]
    _, total = count_parameters(a)
    assert total == w.meta["num_params"] - (a.feature_dim * 1000 + 1000)
    assert a.weights_id == f"random:torchvision.{spec.arch}:full:seed0"
    assert a.preprocess.input_size == w.transforms().crop_size[0]  # 384 for EfficientNetV2-S


def test_input_size_only_where_the_architecture_allows_it(offline_hub):
    cnn = create_adapter("tv-efficientnetv2-s", tiny=True, input_size=64)
    assert cnn.preprocess.input_size == 64 and encode(cnn, image_batch(cnn)).shape == (2, cnn.feature_dim)
    vit = create_adapter("tv-vit-b16", tiny=True, input_size=48)
    assert vit.weights_id.endswith("tiny@48:seed0") and encode(vit, image_batch(vit)).shape == (2, 32)
    with pytest.raises(ConfigError, match="fix the input at 224 px") as err:
        create_adapter("tv-vit-b16", input_size=128)  # refused before any download
    assert "\n" not in str(err.value) and not offline_hub.exists()
    with pytest.raises(ConfigError, match="divisible by 16"):
        create_adapter("tv-vit-b16", tiny=True, input_size=40)
    with pytest.raises(ConfigError, match=">= 29"):
        create_adapter("tv-densenet121", tiny=True, input_size=28)


@pytest.mark.parametrize("name", NAMES)
def test_local_checkpoint_roundtrip_ignores_the_classifier(name, tmp_path):
    checkpoint_roundtrip(name, SPECS[name].head, tmp_path)  # an ImageNet head is dropped


def test_local_checkpoint_strict_and_lenient(tmp_path):
    sd = dict(create_adapter("tv-resnet18", tiny=True).model.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    sd["extra.key"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="1 unexpected: extra.key; 1 shape mismatch") as err:
        create_adapter("tv-resnet18", tiny=True, weights=tmp_path / "bad.pth")
    assert "\n" not in str(err.value)
    lenient = create_adapter("tv-resnet18", tiny=True, weights=tmp_path / "bad.pth", strict=False)
    assert lenient.load_report.unexpected == ["extra.key"] and len(lenient.load_report.shape_mismatch) == 1


def test_densenet_checkpoint_with_released_key_names(tmp_path):
    """torchvision's DenseNet files say ``norm.1`` where the module has ``norm1``."""
    src = create_adapter("tv-densenet121", tiny=True, seed=5)
    old = {}
    for k, v in src.model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # saved before BatchNorm had the counter
        for part in ("norm1", "norm2", "conv1", "conv2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[k] = v
    assert any(".norm.1." in k for k in old)
    torch.save(old, tmp_path / "densenet121-old.pth")
    loaded = create_adapter("tv-densenet121", tiny=True, weights=tmp_path / "densenet121-old.pth")
    assert torch.equal(encode(src, image_batch(src)), encode(loaded, image_batch(src)))


@pytest.mark.parametrize("name", NAMES)
def test_lora_injects_live_layers(name, tmp_path):
    a = create_adapter(name, tiny=True)
    x = image_batch(a)
    before = encode(a, x)
    _, total_before = count_parameters(a)
    apply_lora(a, LoraSettings(r=4, alpha=8.0, dropout=0.0))
    trainable, total = count_parameters(a)
    lora = {n: p for n, p in a.named_parameters() if "lora_" in n}
    assert trainable == sum(p.numel() for p in lora.values()) == total - total_before > 0
    assert torch.allclose(encode(a, x), before, atol=1e-6)  # lora_B starts at zero
    with torch.no_grad():
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    changed = encode(a, x)
    assert not torch.allclose(changed, before, atol=1e-4)  # every target is on the forward path
    save_lora(a, LoraSettings(r=4, alpha=8.0, dropout=0.0), tmp_path / "lora")
    fresh = create_adapter(name, tiny=True)
    load_lora(fresh, tmp_path / "lora")
    assert torch.equal(encode(fresh, x), changed)


def test_lora_on_vit_out_proj_alone_would_be_dead():
    """Why the ViT targets the MLP: MultiheadAttention never calls out_proj.forward."""
    from peft import LoraConfig, inject_adapter_in_model

    a = create_adapter("tv-vit-b16", tiny=True)
    x = image_batch(a)
    before = encode(a, x)
    inject_adapter_in_model(LoraConfig(target_modules=["out_proj"], r=4), a.model)
    with torch.no_grad():
        for n, p in a.model.named_parameters():
            if "lora_B" in n:
                p.fill_(1.0)
    assert torch.equal(encode(a, x), before)


def test_pretrained_offline_is_one_line_and_immediate(offline_hub):
    for name in ("tv-resnet50", "tv-vit-b16"):
        t0 = time.perf_counter()
        with pytest.raises(ModelError, match="--weights PATH") as err:
            create_adapter(name)
        elapsed = time.perf_counter() - t0
        msg = str(err.value)
        assert "\n" not in msg and SPECS[name].weights in msg and str(offline_hub) in msg
        assert elapsed < 1.0, f"{name} took {elapsed:.1f}s to fail offline"  # no model built first
    assert "resnet50-11ad3fa6.pth" in str(err.value) or "vit_b_16-" in str(err.value)
    assert not any(offline_hub.glob("*.pth"))  # no partial file left behind


def test_download_socket_waits_are_bounded():
    """A host that accepts the connection but never answers fails within the timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        t0 = time.perf_counter()
        with pytest.raises(OSError, match="timed out"):
            tvm.ensure_cached(f"http://127.0.0.1:{srv.getsockname()[1]}/m-12345678.pth", timeout_s=0.3)
        assert time.perf_counter() - t0 < 3.0
        assert socket.getdefaulttimeout() is None  # restored
    finally:
        srv.close()


def test_pretrained_loads_from_torchvision_cache(tmp_path, monkeypatch):
    """The get_model(weights=...) path, offline: a file already in $TORCH_HOME's cache."""
    from torchvision.models import get_model, get_model_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = get_model_weights("resnet18")["IMAGENET1K_V1"]
    cached = tvm.hub_cache_file(w.url)
    assert cached.parent == tmp_path / "torch" / "hub" / "checkpoints"
    torch.manual_seed(11)
    ref = get_model("resnet18", weights=None).eval()
    cached.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), cached)
    a = create_adapter("tv-resnet18")
    assert a.weights_id == "torchvision:resnet18.IMAGENET1K_V1"
    x = torch.randn(2, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    assert torch.equal(encode(a, x), encode(ref, x))

    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load the cached torchvision:resnet18.IMAGENET1K_V1 weights") as err:
        create_adapter("tv-resnet18")
    assert "\n" not in str(err.value)


def test_ls_models_lists_them(capsys):
    code, out, _ = run(capsys, "ls", "models")
    assert code == 0
    for name in NAMES:
        assert name in out
