"""Vision-only encoders built by timm: ViT, CLIP/EVA-02 towers, DINO, DINOv2, SAM, CNNs.

They differ only in data (architecture tag, tiny overrides, LoRA targets), so
one adapter class serves them all and a table registers them. Features are
timm's pre-logits (``forward_head(forward_features(x), pre_logits=True)``,
what ``num_classes=0`` returns), the representation the MedMNIST+ benchmark
probes. Their width is timm's ``head_hidden_size``, not ``num_features``: for
VGG the pre-logits are the 4096-d ConvMlp after the 512-channel conv trunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    fetch_error,
    Preprocess,
    checkpoint_weights_id,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
    ungrouped_conv_names,
)
from fmeval.errors import ConfigError, ModelError

VIT_TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
VIT_LORA = ("qkv", "attn.proj")
# EVA-02 CLIP towers keep q, k and v as separate linears (timm ``qkv_fused=False``).
EVA_LORA = ("q_proj", "k_proj", "v_proj", "attn.proj")
# VGG-16's layer pattern (13 convs, 5 max-pools, cfg "D") at 1/8 width: the same
# ``features.<i>`` indices as the full model.
VGG16_TINY_CFG = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]


def _tiny_vgg16(arch: str) -> nn.Module:
    """VGG-16 through timm's own builder with a narrow layer config.

    ``timm.create_model("vgg16", cfg=...)`` is refused ("multiple values for
    keyword argument 'cfg'": the entrypoint fixes the config), so the tiny
    model goes through the builder the entrypoint itself calls, keeping the
    pinned tag's pretrained config (mean/std, classifier name). The ConvMlp
    pre-logits stay 4096 wide (timm fixes them); ``mlp_ratio`` only narrows
    the hidden layer between its two convs.
    """
    from timm.models import split_model_name_tag
    from timm.models._builder import build_model_with_cfg
    from timm.models.vgg import VGG

    variant, tag = split_model_name_tag(arch)
    return build_model_with_cfg(VGG, variant, False, pretrained_cfg=tag or None,
                                model_cfg=VGG16_TINY_CFG, mlp_ratio=1 / 64, num_classes=0)


# torchvision's VGG classifier (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear) in timm's names.
_VGG_TV_KEYS = {"classifier.0.": "pre_logits.fc1.", "classifier.3.": "pre_logits.fc2.",
                "classifier.6.": "head.fc."}


def _vgg_torchvision_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Read torchvision's own VGG-16 file (``vgg16-397923af.pth``, the weights
    ``vgg16.tv_in1k`` ports) as timm's pretrained loader does: the classifier
    linears become the ConvMlp's convs (same numbers, conv shape). A tensor whose
    size does not fit is left as is, so the strict check still reports it."""
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        for old, new in _VGG_TV_KEYS.items():
            if k.startswith(old):
                k = new + k[len(old):]
                if k in own and v.ndim == 2 and v.numel() == own[k].numel():
                    v = v.reshape(own[k].shape)
        out[k] = v
    return out


def _tiny_efficientnet_b4(arch: str) -> nn.Module:
    """EfficientNet-B4's generator at width 0.25 and depth 0.1 (one block per stage).

    B0..B7 share one block definition and differ only in the channel/depth
    multipliers (B4: 1.4, 1.8), which the ``efficientnet_b4`` entrypoint fixes
    (passing ``channel_multiplier`` again is a TypeError), so the tiny model
    calls the generator that entrypoint calls, with the pinned tag's config.
    """
    from timm.models import split_model_name_tag
    from timm.models.efficientnet import _gen_efficientnet

    variant, tag = split_model_name_tag(arch)
    return _gen_efficientnet(variant, channel_multiplier=0.25, depth_multiplier=0.1,
                             pretrained=False, pretrained_cfg=tag or None, num_classes=0)


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
    # Empty means "every ungrouped conv of the built model" (see ungrouped_conv_names).
    lora_targets: tuple[str, ...] = VIT_LORA
    resizable: bool = True  # accepts an img_size override (ViTs); CNNs take any size
    # MedMNIST v2 reference ResNets: 3x3 stride-1 stem, no max-pool, trained from
    # scratch at 28 px with mean = std = 0.5. No pretrained weights exist for them.
    medmnist_stem: bool = False
    # Input size when none is asked for. DINOv2's timm default is 518 px, but its
    # own evaluation (and every MedMNIST+ number) uses 224: 5x less compute.
    default_input: int | None = None
    # Builds the tiny model (``arch`` -> model with ``num_classes=0``) when the
    # timm entrypoint fixes the very arguments a tiny config must change.
    tiny_build: Callable[[str], nn.Module] | None = None
    # Renames a foreign local checkpoint's keys (``--weights``) to the model's.
    key_fix: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    # Extra ``timm.create_model`` arguments (a spec's ``--pool`` -> ``global_pool``).
    build_kwargs: dict = field(default_factory=dict)
    # Always built at its native size and fed the requested input as it is. SAM: timm does not
    # resize its relative-position tables when loading, so a 224 px build cannot load the 1024 px
    # weights; the reference (MedMNIST+) builds at 1024 and feeds 224, which SAM's ViT handles
    # (absolute positions resampled, relative ones interpolated, at every forward).
    native_build: bool = False


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
             "SAM ViT-B image encoder (SA-1B), neck output average-pooled; built at its native 1024 px "
             "and fed the requested input",
             dict(VIT_TINY, neck_chans=16, window_size=4, global_attn_indexes=(1,)), native_build=True),
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
    # The MedMNIST+ encoders (Doerrich et al. 2025) that timm's default tags
    # resolved to (timm 1.0.31); see fmeval.adapters.MEDMNIST_PLUS_MODELS.
    TimmSpec("vgg16", "vgg16.tv_in1k", "cnn",
             "VGG-16 (torchvision ImageNet-1k weights ported to timm), 4096-d ConvMlp pre-logits",
             lora_targets=(), resizable=False, tiny_build=_tiny_vgg16,
             key_fix=_vgg_torchvision_keys),
    TimmSpec("densenet121-ra", "densenet121.ra_in1k", "cnn",
             "DenseNet-121, timm RandAugment ImageNet-1k weights (MedMNIST+'s densenet121)",
             dict(growth_rate=8, block_config=(2, 2, 2, 2)),
             ("conv1", "conv2"), resizable=False),
    TimmSpec("efficientnet-b4", "efficientnet_b4.ra2_in1k", "cnn",
             "EfficientNet-B4, timm RA2 ImageNet-1k weights (native 320 px)",
             lora_targets=(), resizable=False, tiny_build=_tiny_efficientnet_b4),
    TimmSpec("vit-b16-clip-ft", "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k", "clip",
             "CLIP ViT-B/16 image tower (LAION-2B), fine-tuned on ImageNet-12k then 1k "
             "(not raw CLIP; MedMNIST+'s vit_base_patch16_clip_224)", VIT_TINY),
    TimmSpec("eva02-b16-clip", "eva02_base_patch16_clip_224.merged2b", "clip",
             "EVA-02 CLIP ViT-B/16 image tower (Merged-2B), pre-projection features",
             VIT_TINY, EVA_LORA),
)

TINY_CNN_INPUT = 32  # DenseNet needs >= 32 px (five stride-2 stages)
MEDMNIST_SMALL_STEM_MAX = 32  # inputs up to this size get the 3x3 stride-1 stem (MedMNIST v2 "28")


class TimmAdapter(Adapter):
    code_version = "1"

    def __init__(self, spec: TimmSpec, cfg: AdapterConfig) -> None:
        super().__init__()
        import timm

        self.family = spec.family  # type: ignore[misc]
        kwargs: dict = {**spec.build_kwargs, **(dict(spec.tiny) if cfg.tiny else {})}
        if spec.native_build:
            self.code_version = "2-native-build"  # type: ignore[misc]  # features differ from a resized build
        elif cfg.input_size is not None and spec.resizable:
            kwargs["img_size"] = cfg.input_size
        elif spec.default_input is not None and not cfg.tiny:
            kwargs["img_size"] = spec.default_input
        use_hub = cfg.pretrained and cfg.weights is None and not spec.medmnist_stem
        if use_hub:
            _require_cached_when_offline(spec)
        try:
            if cfg.tiny and spec.tiny_build is not None:
                self.model = spec.tiny_build(spec.arch)
            else:
                self.model = timm.create_model(spec.arch, pretrained=use_hub, num_classes=0, **kwargs)
        except Exception as exc:  # network, hub or config failure -> one line
            if use_hub:
                raise fetch_error(spec.name, spec.arch, exc) from None
            raise ModelError(f"cannot build {spec.name}: {exc}") from None
        # how to rebuild this model with a classifier (classifier_init); None: no such build
        self._head_build = None if (cfg.tiny and spec.tiny_build is not None) or spec.medmnist_stem else (
            spec.arch, kwargs)
        medmnist_size = cfg.input_size or 28
        self.native_input = spec.medmnist_stem  # takes its input size as is: never a silent resize
        if spec.medmnist_stem and medmnist_size <= MEDMNIST_SMALL_STEM_MAX:
            self.model.conv1 = nn.Conv2d(3, self.model.conv1.out_channels, 3, 1, 1, bias=False)
            self.model.maxpool = nn.Identity()
        if spec.medmnist_stem:  # MedMNIST v2's models.py: PyTorch's default init, not timm's
            _torch_default_init(self.model)  # (timm zero-inits each block's last BatchNorm weight)
        if cfg.weights is not None:
            sd = load_state_dict_file(cfg.weights)
            if spec.key_fix is not None:
                sd = spec.key_fix(sd, self.model)
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
                arch += "-torchinit"
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
        # The pre-logits width (VGG: 4096 after its ConvMlp; num_features is the 512-channel trunk).
        self.feature_dim = int(getattr(self.model, "head_hidden_size", self.model.num_features))
        self.lora_targets = spec.lora_targets or ungrouped_conv_names(self.model)  # type: ignore[misc]
        self.arch = spec.arch
        self.pooling = f"timm pre-logits (global_pool={_global_pool(self.model)})"

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def classifier_init(self, n_outputs: int) -> nn.Linear | None:
        """timm's own classifier initialisation for this model: ``create_model(num_classes=n)`` runs the
        model's init on its head (ViT: truncated normal std 0.02 and zero bias; EfficientNet: uniform
        +-1/sqrt(n) and zero bias; ResNet: PyTorch's default), which is the head the MedMNIST+ reference
        trains. A random build of the same architecture, kept for its head only (seeded by the caller).
        None when the build is not a plain timm one (tiny builders, MedMNIST v2 stems: PyTorch default
        there, as their reference) or the head is not one Linear of ``feature_dim`` inputs."""
        if self._head_build is None:
            return None
        import timm

        arch, kwargs = self._head_build
        try:
            head = timm.create_model(arch, pretrained=False, num_classes=n_outputs, **kwargs).get_classifier()
        except Exception:  # an architecture timm cannot rebuild with a classifier: PyTorch's default
            return None
        ok = isinstance(head, nn.Linear) and head.in_features == self.feature_dim and head.out_features == n_outputs
        return head if ok else None

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _torch_default_init(model: nn.Module) -> None:
    """Every conv, BatchNorm and linear layer back to PyTorch's own initialisation (what a
    torchvision-style ResNet built in the MedMNIST v2 experiments code starts from)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()


def _global_pool(model: nn.Module) -> str:
    """timm's pooling of the final feature map / tokens: 'avg', 'token', 'map', ..."""
    pool = getattr(model, "global_pool", None)
    pool = getattr(pool, "pool_type", pool)
    return str(pool) if pool is not None and not isinstance(pool, nn.Module) else type(pool).__name__


def _require_cached_when_offline(spec: TimmSpec) -> None:
    """Offline (``HF_HUB_OFFLINE``), fail before building unless the weights are cached.

    timm builds and initialises the full network before it looks for the
    weights: 7-13 s on two cores for VGG-16, ViT-B or EVA-02, all wasted on a
    certain failure. The file names are the ones timm itself will ask the hub
    for (its source resolution, then the safetensors alternatives first).
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

    if not constants.is_offline_mode():
        return
    pcfg = get_pretrained_cfg(spec.arch)
    if pcfg is None:
        return  # timm reports an unknown tag itself
    source, loc = _resolve_pretrained_source(pcfg.to_dict())
    if source != "hf-hub":
        return  # url/file sources: timm's own error (torch hub cache) applies
    hub_id, fname = loc if isinstance(loc, tuple) else (loc, HF_WEIGHTS_NAME)
    repo, revision = hf_split(hub_id)
    names = [*_get_safe_alternatives(fname), fname]
    if any(isinstance(try_to_load_from_cache(repo, n, revision=revision), str) for n in names):
        return
    raise ModelError(
        f"could not fetch pretrained weights for {spec.name} ({spec.arch}): HF_HUB_OFFLINE is set "
        f"and hub repo {repo} ({' or '.join(names)}) is not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE}. Pass --weights PATH for a local checkpoint, "
        "or --random-init/--tiny for an offline run."
    )


def _register(spec: TimmSpec) -> None:
    def factory(cfg: AdapterConfig) -> Adapter:
        if cfg.input_size is not None and cfg.input_size < 8:
            raise ConfigError(f"input size {cfg.input_size} is too small.")
        return TimmAdapter(spec, cfg)

    register_adapter(spec.name, spec.description, family=spec.family, text="no",
                     weights=spec.arch, spec=f"timm:{spec.arch}")(factory)


for _spec in SPECS:
    _register(_spec)
