"""Vision-only encoders built by timm: ViT, DINO, DINOv2, SAM, CNN baselines.

They differ only in data (architecture tag, tiny overrides, LoRA targets), so
one adapter class serves them all and a table registers them. Features are
timm's pre-logits (``forward_head(forward_features(x), pre_logits=True)``),
the representation the MedMNIST+ benchmark probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    Preprocess,
    checkpoint_weights_id,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
)
from fmeval.errors import ConfigError, ModelError

VIT_TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
VIT_LORA = ("qkv", "attn.proj")


@dataclass(frozen=True)
class TimmSpec:
    """One registered timm encoder.

    ``arch`` always carries the pretrained tag: timm's default tags drift (for
    example ``vit_base_patch16_clip_224`` resolves to an ImageNet-fine-tuned
    tower), so the tag is pinned here and recorded in every report.
    """

    name: str
    arch: str
    family: str
    description: str
    tiny: dict = field(default_factory=dict)
    lora_targets: tuple[str, ...] = VIT_LORA
    resizable: bool = True  # accepts an img_size override (ViTs); CNNs take any size
    # MedMNIST v2 reference ResNets: 3x3 stride-1 stem, no max-pool, trained from
    # scratch at 28 px with mean = std = 0.5. No pretrained weights exist for them.
    medmnist_stem: bool = False
    # Input size when none is asked for. DINOv2's timm default is 518 px, but its
    # own evaluation (and every MedMNIST+ number) uses 224: 5x less compute.
    default_input: int | None = None


SPECS: tuple[TimmSpec, ...] = (
    TimmSpec("vit-b16", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit",
             "ViT-B/16, ImageNet-21k pretrain + 1k fine-tune (timm augreg2)", VIT_TINY),
    TimmSpec("vit-s16", "vit_small_patch16_224.augreg_in21k_ft_in1k", "vit",
             "ViT-S/16, ImageNet-21k pretrain + 1k fine-tune (timm augreg)", VIT_TINY),
    TimmSpec("dino-vitb16", "vit_base_patch16_224.dino", "dino",
             "DINO self-supervised ViT-B/16 (Caron et al. 2021)", VIT_TINY),
    TimmSpec("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", "dinov2",
             "DINOv2 ViT-S/14 (LVD-142M), at 224 px by default", dict(VIT_TINY, img_size=28, patch_size=7),
             default_input=224),
    TimmSpec("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "dinov2",
             "DINOv2 ViT-B/14 (LVD-142M), at 224 px by default", dict(VIT_TINY, img_size=28, patch_size=7),
             default_input=224),
    TimmSpec("sam-vitb", "samvit_base_patch16.sa1b", "sam",
             "SAM ViT-B image encoder (SA-1B), neck output average-pooled",
             dict(VIT_TINY, neck_chans=16, window_size=4, global_attn_indexes=(1,))),
    TimmSpec("resnet18", "resnet18.a1_in1k", "cnn", "ResNet-18 CNN baseline (ImageNet-1k)",
             dict(layers=[1, 1, 1, 1]), ("conv1", "conv2"), resizable=False),
    TimmSpec("resnet50", "resnet50.a1_in1k", "cnn", "ResNet-50 CNN baseline (ImageNet-1k)",
             dict(layers=[1, 1, 1, 1]), ("conv1", "conv2", "conv3"), resizable=False),
    TimmSpec("resnet18-medmnist", "resnet18", "cnn",
             "ResNet-18 as in the MedMNIST v2 baselines (from scratch; 28 px: 3x3 stem, no max-pool; "
             "224: standard stem)",
             dict(layers=[1, 1, 1, 1]), ("conv1", "conv2"), resizable=False, medmnist_stem=True),
    TimmSpec("resnet50-medmnist", "resnet50", "cnn",
             "ResNet-50 as in the MedMNIST v2 baselines (from scratch; 28 px: 3x3 stem, no max-pool; "
             "224: standard stem)",
             dict(layers=[1, 1, 1, 1]), ("conv1", "conv2", "conv3"), resizable=False, medmnist_stem=True),
    TimmSpec("densenet121", "densenet121.tv_in1k", "cnn",
             "DenseNet-121 CNN baseline (torchvision ImageNet-1k)",
             dict(growth_rate=8, block_config=(2, 2, 2, 2)),
             ("conv1", "conv2"), resizable=False),
)

TINY_CNN_INPUT = 32  # DenseNet needs >= 32 px (five stride-2 stages)
MEDMNIST_SMALL_STEM_MAX = 32  # inputs up to this size get the 3x3 stride-1 stem (MedMNIST v2 "28")


class TimmAdapter(Adapter):
    code_version = "1"

    def __init__(self, spec: TimmSpec, cfg: AdapterConfig) -> None:
        super().__init__()
        import timm

        self.family = spec.family  # type: ignore[misc]
        self.lora_targets = spec.lora_targets  # type: ignore[misc]
        kwargs: dict = dict(spec.tiny) if cfg.tiny else {}
        if cfg.input_size is not None and spec.resizable:
            kwargs["img_size"] = cfg.input_size
        elif spec.default_input is not None and not cfg.tiny:
            kwargs["img_size"] = spec.default_input
        use_hub = cfg.pretrained and cfg.weights is None and not spec.medmnist_stem
        try:
            self.model = timm.create_model(spec.arch, pretrained=use_hub, num_classes=0, **kwargs)
        except Exception as exc:  # network, hub or config failure -> one line
            if use_hub:
                raise ModelError(
                    f"could not fetch pretrained weights for {spec.name} ({spec.arch}): "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}. Pass --weights PATH "
                    "for a local checkpoint, or --random-init/--tiny for an offline run."
                ) from None
            raise ModelError(f"cannot build {spec.name}: {exc}") from None
        medmnist_size = cfg.input_size or 28
        self.native_input = spec.medmnist_stem  # takes its input size as is: never a silent resize
        if spec.medmnist_stem and medmnist_size <= MEDMNIST_SMALL_STEM_MAX:
            self.model.conv1 = nn.Conv2d(3, self.model.conv1.out_channels, 3, 1, 1, bias=False)
            self.model.maxpool = nn.Identity()
        if cfg.weights is not None:
            sd = load_state_dict_file(cfg.weights)
            head = self.model.pretrained_cfg.get("classifier", "head")
            heads = [k for k in sd if k.startswith(f"{head}.")]
            self.load_report = load_weights(
                self.model, sd, strict=cfg.strict, source=str(cfg.weights), ignore=heads,
                allow_partial=cfg.allow_partial,
            )
            self.weights_id = checkpoint_weights_id(cfg.weights, self.load_report, cfg)
        elif use_hub:
            self.weights_id = f"timm:{spec.arch}"
        else:
            arch = spec.name if spec.medmnist_stem else spec.arch
            if spec.medmnist_stem:
                arch += "-3x3stem" if medmnist_size <= MEDMNIST_SMALL_STEM_MAX else "-stdstem"
            self.weights_id = random_weights_id(cfg, arch)

        data_cfg = timm.data.resolve_model_data_config(self.model)
        # The pretrained config names the native size; an override or a tiny
        # config builds the model at another one, and that is what it accepts.
        size = int(kwargs.get("img_size") or data_cfg["input_size"][-1])
        if cfg.tiny and not spec.resizable:
            size = TINY_CNN_INPUT
        if cfg.input_size is not None:
            size = cfg.input_size
        self.preprocess = Preprocess(
            input_size=size,
            mean=tuple(float(v) for v in data_cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data_cfg["std"]),  # type: ignore[arg-type]
            interpolation=str(data_cfg.get("interpolation", "bicubic")),
        )
        if spec.medmnist_stem:  # the MedMNIST protocol: native 28 px, Normalize(0.5, 0.5)
            self.preprocess = Preprocess(
                input_size=medmnist_size, mean=(0.5,) * 3, std=(0.5,) * 3,  # type: ignore[arg-type]
                interpolation="nearest",
            )
        self.feature_dim = int(self.model.num_features)
        self.arch = spec.arch

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _register(spec: TimmSpec) -> None:
    def factory(cfg: AdapterConfig) -> Adapter:
        if cfg.input_size is not None and cfg.input_size < 8:
            raise ConfigError(f"input size {cfg.input_size} is too small.")
        return TimmAdapter(spec, cfg)

    register_adapter(spec.name, spec.description, family=spec.family, text="no",
                     weights=spec.arch)(factory)


for _spec in SPECS:
    _register(_spec)
