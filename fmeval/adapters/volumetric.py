"""Native 3D models: the MedMNIST v2 3D baselines and a small 3D ViT.

ResNets (MedMNIST/experiments ``MedMNIST3D/models.py`` +
``train_and_eval_pytorch.py``): a 2D ResNet-18/50 converted to 3D by one of
the :mod:`fmeval.adapters.conv3d` conversions (``2.5d``, ``3d``, ``acs``).

* ``resnet{18,50}-{2.5d,3d,acs}`` -- the MedMNIST v2 baselines: the CIFAR-style
  ResNet of ``models.py`` (3x3 stride-1 stem, no max-pool, one input
  channel), trained from scratch. Built from timm's ResNet (the same blocks,
  shortcut and global average pool) with that stem, and re-initialised with
  PyTorch's default layer init as ``models.py`` has no custom init (timm's
  own init and zeroed last BatchNorm would be a different baseline). The
  ``3d`` variant inflates the random 2D init as the script's default
  ``--pretrained_3d i3d`` does.
* ``resnet{18,50}-in1k-{2.5d,3d,acs}`` -- the same conversions applied to
  ImageNet-pretrained torchvision ResNets (timm ``*.tv_in1k``), standard
  7x7 stride-2 stem and max-pool kept so every pretrained weight carries
  over (2D-to-3D transfer as in the ACS paper); three input channels (the
  grey volume repeated, MedMNIST's ``--as_rgb``). At 28^3 the stem leaves a
  7^3 map after the max-pool; 64^3 suits them better.

``vit3d``: the small 3D ViT published for MedMNIST 3D (7^3 patches on 28^3
volumes, width 256, 6 layers, 8 heads), trained from scratch. What the
publication leaves open is chosen here and recorded: pre-norm timm blocks,
MLP ratio 4, qkv bias, a class token plus learned position embeddings
(truncated-normal init, std 0.02), the final-norm class token as the
feature. At 64^3 the patch is 16^3, keeping the same 4 x 4 x 4 = 64-token
grid (and cost) as 28^3 with 7^3 patches; other sizes are refused.

Every adapter here takes float volumes [N, C, D, H, W] (see
:class:`~fmeval.data.volume_transform.VolumeTransform`, its ``transform``)
and declares ``ndim = 3``. LoRA: peft 0.21 wraps ``nn.Conv3d`` and
``nn.Linear`` (also Conv1d/Conv2d/Embedding/MultiheadAttention), so the 2.5D
and 3D ResNets take LoRA on their block convolutions, the ACS ResNets on the
three ``Conv3d`` groups inside each block convolution, and the ViT on its
``qkv`` / ``attn.proj`` linears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    fetch_error,
    file_digest,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
)
from fmeval.adapters.conv3d import ACS_AXES, convert_2d_to_3d
from fmeval.data.volume_transform import VolumeTransform
from fmeval.errors import ConfigError, ModelError

RESNET_TINY = dict(layers=(1, 1, 1, 1), channels=(4, 8, 16, 32), stem_width=4)
VIT_TINY = dict(embed_dim=32, depth=2, num_heads=2)
VIT_PATCH = {28: 7, 64: 16}  # 4 x 4 x 4 tokens at both MedMNIST 3D sizes


class VolumeAdapter(Adapter):
    """An encoder of volumes: ``encode_image`` takes float [N, C, D, H, W].

    ``transform`` is its input contract (channels, shape transform) in place
    of the 2D ``preprocess``, which volume adapters do not have; callers
    branch on ``ndim`` first. ``input_size`` is the volume side it was built
    for (the ResNets accept any side, the ViT only this one).
    """

    ndim: ClassVar[int] = 3
    code_version = "1"
    transform: VolumeTransform
    input_size: int
    conversion: str | None = None

    @property
    def backbone(self) -> nn.Module:
        return self.model

    @property
    def in_channels(self) -> int:
        return self.transform.channels

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ModelError(
                f"{self.name} encodes volumes [N, {self.in_channels}, D, H, W], got {tuple(x.shape)}."
            )
        return self.model(x)

    def describe(self) -> dict:
        return {
            "name": self.name, "family": self.family, "weights_id": self.weights_id,
            "feature_dim": self.feature_dim, "code_version": self.code_version, "ndim": self.ndim,
            "input_size": self.input_size, "conversion": self.conversion,
            "transform": self.transform.as_dict(),
        }


# -- ResNets converted from 2D --------------------------------------------------------
@dataclass(frozen=True)
class ResNet3DSpec:
    name: str
    arch: str  # timm architecture, with the pretrained tag for ImageNet networks
    conversion: str  # a fmeval.adapters.conv3d.CONVERSIONS name
    imagenet: bool  # ImageNet network (RGB, standard stem) vs MedMNIST v2 baseline
    block_convs: tuple[str, ...]  # conv names inside a residual block (LoRA targets)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        if self.conversion == "acs":  # the Conv3d groups inside each ACS convolution
            return tuple(f"{c}.{axis}" for c in self.block_convs for axis in ACS_AXES)
        return self.block_convs

    @property
    def description(self) -> str:
        conv = {"2.5d": "2.5D", "3d": "3D (I3D-inflated)", "acs": "ACS"}[self.conversion]
        depth = self.arch.split(".")[0].removeprefix("resnet")
        if self.imagenet:
            return f"ResNet-{depth} ImageNet ({self.arch}) converted to {conv} convolutions"
        return f"ResNet-{depth} + {conv} convolutions, MedMNIST v2 3D baseline (from scratch)"


def _resnet_specs() -> list[ResNet3DSpec]:
    specs = []
    for depth, convs in (("18", ("conv1", "conv2")), ("50", ("conv1", "conv2", "conv3"))):
        for conv in ("2.5d", "3d", "acs"):
            specs.append(ResNet3DSpec(f"resnet{depth}-{conv}", f"resnet{depth}", conv, False, convs))
            specs.append(ResNet3DSpec(f"resnet{depth}-in1k-{conv}", f"resnet{depth}.tv_in1k", conv,
                                      True, convs))
    return specs


def _timm_resnet(spec: ResNet3DSpec, cfg: AdapterConfig, in_chans: int, use_hub: bool) -> nn.Module:
    import timm

    kwargs: dict = dict(RESNET_TINY) if cfg.tiny else {}
    try:
        return timm.create_model(spec.arch, pretrained=use_hub, num_classes=0, in_chans=in_chans, **kwargs)
    except Exception as exc:  # network, hub or config failure -> one line
        if use_hub:
            raise fetch_error(spec.name, spec.arch, exc, checkpoint="a local 2D checkpoint") from None
        raise ModelError(f"cannot build {spec.name}: {exc}") from None


def _narrow_stem(net: nn.Module, width: int) -> None:
    """Tiny builds: timm's basic ResNet stem is always 64 wide, which at 28^3 with a
    stride-1 stem costs more than the rest of a tiny network; narrow it and the
    first block's inputs to ``width`` (same layers, same layout)."""
    old = net.conv1.out_channels
    net.conv1 = nn.Conv2d(net.conv1.in_channels, width, net.conv1.kernel_size, net.conv1.stride,
                          net.conv1.padding, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    block = net.layer1[0]
    for parent in (block, getattr(block, "downsample", None)):
        if parent is None:
            continue
        for name, m in list(parent.named_children()):
            if isinstance(m, nn.Conv2d) and m.in_channels == old:
                setattr(parent, name, nn.Conv2d(width, m.out_channels, m.kernel_size, m.stride, m.padding,
                                                bias=m.bias is not None))


def _medmnist_stem(net: nn.Module, in_chans: int) -> None:
    """``models.py``: 3x3 stride-1 first conv, no max-pool, PyTorch default init."""
    net.conv1 = nn.Conv2d(in_chans, net.conv1.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()


class ResNet3DAdapter(VolumeAdapter):
    family = "cnn3d"

    def __init__(self, spec: ResNet3DSpec, cfg: AdapterConfig) -> None:
        super().__init__()
        self.lora_targets = spec.lora_targets  # type: ignore[misc]
        in_chans = 3 if spec.imagenet else 1
        use_hub = spec.imagenet and cfg.pretrained and cfg.weights is None
        net = _timm_resnet(spec, cfg, in_chans, use_hub)
        if not spec.imagenet:
            _medmnist_stem(net, in_chans)
        if cfg.tiny:
            _narrow_stem(net, RESNET_TINY["stem_width"])
        if cfg.weights is not None:  # a 2D checkpoint of the base network, converted with it
            sd = load_state_dict_file(cfg.weights)
            self.load_report = load_weights(net, sd, strict=cfg.strict, source=str(cfg.weights),
                                            ignore=[k for k in sd if k.startswith("fc.")])
            weights = f"file:{file_digest(cfg.weights)[:16]}"
        elif use_hub:
            weights = f"timm:{spec.arch}"
        else:
            weights = random_weights_id(cfg, spec.name)
        self.model = convert_2d_to_3d(net, spec.conversion)
        self.weights_id = weights if weights.startswith("random:") else f"{weights}+{spec.conversion}"
        self.conversion = spec.conversion
        self.feature_dim = int(net.num_features)
        self.input_size = cfg.input_size or 28
        self.transform = VolumeTransform(channels=in_chans)
        self.arch = spec.arch


# -- 3D ViT ------------------------------------------------------------------------------
class ViT3D(nn.Module):
    """Patch-embedded volume -> class token feature (pre-norm ViT, timm blocks)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int = 1, embed_dim: int = 256,
                 depth: int = 6, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.img_size = img_size
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, patch_size, stride=patch_size)
        n_tokens = (img_size // patch_size) ** 3
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens + 1, embed_dim))
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != (self.img_size,) * 3:
            raise ModelError(
                f"vit3d was built for {self.img_size}^3 volumes, got {tuple(x.shape[-3:])}; "
                "pass --input-size to build it for another size (28 or 64)."
            )
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos_embed
        return self.norm(self.blocks(t))[:, 0]


class ViT3DAdapter(VolumeAdapter):
    family = "vit3d"
    lora_targets = ("qkv", "attn.proj")

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        size = cfg.input_size or 28
        if size not in VIT_PATCH:
            raise ConfigError(f"vit3d is defined for 28^3 and 64^3 volumes, not {size}^3.")
        kwargs = dict(VIT_TINY) if cfg.tiny else {}
        self.model = ViT3D(size, VIT_PATCH[size], in_chans=1, **kwargs)
        if cfg.weights is not None:
            self.load_report = load_weights(self.model, load_state_dict_file(cfg.weights),
                                            strict=cfg.strict, source=str(cfg.weights))
            self.weights_id = f"file:{file_digest(cfg.weights)[:16]}"
        else:
            self.weights_id = random_weights_id(cfg, "vit3d")
        self.feature_dim = self.model.num_features
        self.input_size = size
        self.transform = VolumeTransform(channels=1)


def _register_resnet(spec: ResNet3DSpec) -> None:
    def factory(cfg: AdapterConfig) -> Adapter:
        return ResNet3DAdapter(spec, cfg)

    weights = spec.arch if spec.imagenet else "none (from scratch)"
    register_adapter(spec.name, spec.description, family="cnn3d", text="no", weights=weights, ndim="3")(factory)


for _spec in _resnet_specs():
    _register_resnet(_spec)

register_adapter(
    "vit3d", "3D ViT as published for MedMNIST 3D: 7^3 patches on 28^3 (16^3 on 64^3), width 256, "
    "6 layers, 8 heads (from scratch)", family="vit3d", text="no", weights="none (from scratch)", ndim="3",
)(ViT3DAdapter)
