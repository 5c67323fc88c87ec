"""Native 3D models: 2D-to-3D conversion, the registered 3D adapters, LoRA, a training sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmeval.adapters import ADAPTERS, create_adapter
from fmeval.adapters.conv3d import ACS_AXES, ACSConv3d, acs_split, convert_2d_to_3d
from fmeval.errors import ConfigError, ModelError

NAMES_3D = [e.name for e in ADAPTERS if e.tags.get("family") in ("cnn3d", "vit3d")]
GEOMS = [(3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (3, 2, 0, 1), (5, 2, 1, 1), (3, 1, 2, 2), (1, 2, 0, 1)]


def _embedded(acs: ACSConv3d, w2d: torch.Tensor) -> torch.Tensor:
    """Reference k^3 kernel: each group's 2D kernel in the central plane of its axis."""
    out, cin, k, _ = w2d.shape
    dense, c, start = torch.zeros(out, cin, k, k, k), k // 2, 0
    for axis, n in enumerate(acs.split):
        rows = slice(start, start + n)
        index = [rows, slice(None), slice(None), slice(None), slice(None)]
        index[2 + axis] = c
        dense[tuple(index)] = w2d[rows]
        start += n
    return dense


def test_acs_split_follows_acsconv():
    assert acs_split(64) == (22, 21, 21) and acs_split(65) == (22, 22, 21) and acs_split(3) == (1, 1, 1)
    assert acs_split(1) == (1, 0, 0)


def test_acs_groups_hold_the_2d_kernels():
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=True)
    acs = ACSConv3d.from_conv2d(conv)
    w, b = conv.weight.detach(), conv.bias.detach()
    assert acs.split == (3, 2, 2)
    assert acs.axial.weight.shape == (3, 5, 1, 3, 3) and acs.coronal.weight.shape == (2, 5, 3, 1, 3)
    assert acs.sagittal.weight.shape == (2, 5, 3, 3, 1)
    assert torch.equal(acs.axial.weight[:, :, 0], w[0:3])
    assert torch.equal(acs.coronal.weight[:, :, :, 0], w[3:5])
    assert torch.equal(acs.sagittal.weight[:, :, :, :, 0], w[5:7])
    assert torch.equal(torch.cat([acs.axial.bias, acs.coronal.bias, acs.sagittal.bias]), b)


@pytest.mark.parametrize("k,s,p,d", GEOMS)
@pytest.mark.parametrize("cout", [7, 20])  # below / above DENSE_BELOW: both forward paths
def test_acs_equals_a_3d_conv_with_the_2d_kernels_in_the_central_planes(k, s, p, d, cout):
    conv = nn.Conv2d(4, cout, k, s, p, d, bias=True)
    acs = ACSConv3d.from_conv2d(conv)
    x = torch.randn(2, 4, 9, 10, 11)
    ref = F.conv3d(x, _embedded(acs, conv.weight.detach()), conv.bias.detach(), s, p, d)
    fast = acs(x)
    assert fast.shape == ref.shape and torch.allclose(fast, ref, atol=1e-5)
    # the per-group path (taken once a group is wrapped, e.g. by LoRA) computes the same
    per_group = torch.cat([getattr(acs, a)(acs._centre_tap(x, 2 + i)) for i, a in enumerate(ACS_AXES)], 1)
    assert torch.allclose(per_group, ref, atol=1e-5)


def test_acs_depthwise_and_bad_groups():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    acs = ACSConv3d.from_conv2d(conv)
    x = torch.randn(1, 6, 5, 5, 5)
    w = conv.weight.detach()
    ref = F.conv3d(x, _embedded(acs, w), conv.bias.detach(), 1, 1, 1, groups=6)
    assert torch.allclose(acs(x), ref, atol=1e-5)
    with pytest.raises(ModelError, match="groups=1 or depthwise"):
        ACSConv3d.from_conv2d(nn.Conv2d(4, 8, 3, groups=2))


def test_2_5d_kernel_is_the_2d_kernel_on_every_slice():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    (new,) = convert_2d_to_3d(nn.Sequential(conv), "2.5d")
    assert isinstance(new, nn.Conv3d) and new.kernel_size == (1, 3, 3) and new.padding == (0, 1, 1)
    assert torch.equal(new.weight[:, :, 0], conv.weight)
    x = torch.randn(2, 3, 4, 8, 8)
    y = new(x)
    assert all(torch.allclose(y[:, :, z], conv(x[:, :, z]), atol=1e-5) for z in range(4))
    strided = convert_2d_to_3d(nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1)), "2.5d")[0]
    assert strided.stride == (2, 2, 2)  # acsconv passes the 2D stride to depth as well


def test_3d_conversion_inflates_the_2d_kernel_over_depth():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    (new,) = convert_2d_to_3d(nn.Sequential(conv), "3d")
    assert new.kernel_size == (3, 3, 3)
    assert all(torch.allclose(new.weight[:, :, t] * 3, conv.weight) for t in range(3))
    img = torch.randn(2, 3, 8, 8)
    vol = img.unsqueeze(2).expand(-1, -1, 6, -1, -1)  # constant along depth
    y = new(vol)
    assert all(torch.allclose(y[:, :, z], conv(img), atol=1e-5) for z in range(1, 5))  # interior slices


@pytest.mark.parametrize("kind", ["2.5d", "acs", "3d"])
def test_whole_resnet_conversion_carries_weights_and_batchnorm_statistics(kind):
    import timm

    torch.manual_seed(0)
    net2d = timm.create_model("resnet18", pretrained=False, num_classes=0, layers=(1, 1, 1, 1),
                              channels=(8, 16, 32, 64), stem_width=8)
    for m in net2d.modules():  # non-trivial running statistics must be carried over
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net2d.eval()
    img = torch.randn(2, 3, 32, 32)
    ref = net2d(img)
    net3d = convert_2d_to_3d(__import__("copy").deepcopy(net2d), kind).eval()
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)) for m in net3d.modules())
    with torch.no_grad():
        if kind == "3d":  # a depth-constant volume: an inflated net sees the image (up to borders)
            out = net3d(img.unsqueeze(2).expand(-1, -1, 32, -1, -1))
            assert out.shape == ref.shape and torch.isfinite(out).all()
        else:  # a one-slice volume: 2.5D and ACS reduce to the 2D network exactly
            out = net3d(img.unsqueeze(2))
            if kind == "2.5d":
                assert torch.allclose(out, ref, atol=1e-4)
            assert out.shape == ref.shape


def test_conversion_refuses_what_it_cannot_convert():
    class Fancy2d(nn.Module):
        def forward(self, x):
            return x

    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(ModelError, match=r"cannot convert 1 \(Fancy2d\)"):
        convert_2d_to_3d(nn.Sequential(nn.Conv2d(1, 2, 3), Fancy2d()), "acs")
    with pytest.raises(ModelError, match="its own forward"):
        convert_2d_to_3d(nn.Sequential(MyConv(1, 2, 3)), "3d")
    with pytest.raises(ModelError, match="not one square value"):
        convert_2d_to_3d(nn.Sequential(nn.Conv2d(1, 2, (3, 5))), "2.5d")
    with pytest.raises(ConfigError, match="unknown 3D conversion 'acs2'"):
        convert_2d_to_3d(nn.Sequential(), "acs2")


# -- registered 3D adapters ------------------------------------------------------------
def test_3d_adapters_registered():
    for depth in ("18", "50"):
        for conv in ("2.5d", "3d", "acs"):
            assert f"resnet{depth}-{conv}" in NAMES_3D and f"resnet{depth}-in1k-{conv}" in NAMES_3D
    assert "vit3d" in NAMES_3D and len(NAMES_3D) == 13


@pytest.mark.parametrize("name", NAMES_3D)
def test_every_3d_adapter_encodes_volumes_tiny(name):
    a = create_adapter(name, tiny=True, seed=3)
    side = 28 if name == "vit3d" else 12  # the ResNets take any side
    x = torch.rand(2, a.in_channels, side, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        f1 = a.encode_image(x)
        f2 = create_adapter(name, tiny=True, seed=3).encode_image(x)
        f3 = create_adapter(name, tiny=True, seed=4).encode_image(x)
    assert a.ndim == 3 and f1.shape == (2, a.feature_dim) and torch.isfinite(f1).all()
    assert torch.equal(f1, f2) and not torch.equal(f1, f3)
    assert a.weights_id == f"random:{name}:tiny:seed3" and a.lora_targets
    assert a.in_channels == (3 if "-in1k-" in name else 1)
    rec = a.describe()
    assert rec["ndim"] == 3 and rec["transform"]["channels"] == a.in_channels
    with pytest.raises(ModelError, match=r"encodes volumes \[N, \d, D, H, W\]") as err:
        a.encode_image(torch.rand(2, 3, side, side))
    assert "\n" not in str(err.value)


def test_2d_adapters_keep_ndim_2():
    assert create_adapter("resnet18", tiny=True).ndim == 2


def test_vit3d_sizes():
    big = create_adapter("vit3d", tiny=True, input_size=64)
    assert big.model.patch_embed.kernel_size == (16, 16, 16) and big.model.pos_embed.shape[1] == 65
    assert create_adapter("vit3d", tiny=True).model.patch_embed.kernel_size == (7, 7, 7)
    assert big.encode_image(torch.rand(1, 1, 64, 64, 64)).shape == (1, big.feature_dim)
    with pytest.raises(ModelError, match=r"built for 64\^3 volumes"):
        big.encode_image(torch.rand(1, 1, 28, 28, 28))
    with pytest.raises(ConfigError, match="28\\^3 and 64\\^3"):
        create_adapter("vit3d", tiny=True, input_size=32)
    full = create_adapter("vit3d", pretrained=False)  # the published size
    assert full.feature_dim == 256 and len(full.model.blocks) == 6
    assert full.model.blocks[0].attn.num_heads == 8


def test_medmnist_baseline_stem_and_imagenet_stem():
    base = create_adapter("resnet18-acs", tiny=True).model
    assert isinstance(base.conv1, ACSConv3d) and base.conv1.k == 3 and base.conv1.s == 1
    assert isinstance(base.maxpool, nn.Identity) and base.conv1.in_channels == 1
    inet = create_adapter("resnet18-in1k-3d", tiny=True).model
    assert inet.conv1.kernel_size == (7, 7, 7) and inet.conv1.stride == (2, 2, 2)
    assert isinstance(inet.maxpool, nn.MaxPool3d)


def test_imagenet_conversion_offline_is_one_clear_line():
    with pytest.raises(ModelError, match="--weights PATH") as err:
        create_adapter("resnet18-in1k-acs")
    assert "\n" not in str(err.value) and "resnet18.tv_in1k" in str(err.value)


def test_lora_wraps_the_acs_groups_and_takes_part():
    from fmeval.training.lora import LoraSettings, apply_lora

    a = create_adapter("resnet18-acs", tiny=True)
    x = torch.rand(2, 1, 12, 12, 12)
    with torch.no_grad():
        before = a.encode_image(x)
    apply_lora(a, LoraSettings(r=2, alpha=4, dropout=0.0))
    trainable = [n for n, p in a.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("conv1.coronal.lora_A" in n for n in trainable)
    with torch.no_grad():
        assert torch.allclose(a.encode_image(x), before, atol=1e-6)  # lora_B starts at zero
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.normal_()
        assert not torch.allclose(a.encode_image(x), before, atol=1e-3)  # and takes part in forward


# -- a short training sanity check on the real data --------------------------------------
def test_tiny_resnet18_acs_learns_on_real_vesselmnist3d(vessel_root):
    """A few Adam steps on 8 real 28^3 volumes (4 aneurysms) lower the loss on them.

    The loss is measured before and after on the evaluation input (factor
    0.5), so the random training factors of the shape transform do not blur
    the comparison; training itself uses them, as the protocol does.
    """
    from fmeval.data import load_dataset

    train = load_dataset("vesselmnist3d", 28, vessel_root).split("train")
    y = train.labels[:, 0]
    idx = np.r_[np.flatnonzero(y == 1)[:4], np.flatnonzero(y == 0)[:4]]
    vols, target = train.images[idx], torch.as_tensor(y[idx])
    torch.manual_seed(0)
    a = create_adapter("resnet18-acs", tiny=True, seed=0)
    model = nn.Sequential(a, nn.Linear(a.feature_dim, 2)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x_eval = a.transform.prepare(vols, "cpu")
    assert x_eval.shape == (8, 1, 28, 28, 28)

    def eval_loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(model(x_eval), target).item()

    before = eval_loss()
    for _ in range(4):
        loss = F.cross_entropy(model(a.transform.prepare(vols, "cpu", train=True, generator=gen)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
