"""torchvision ImageNet-1K classifiers as encoders, with pinned weight versions.

The resolution study compares torchvision's own ResNet-18/50, DenseNet-121,
EfficientNetV2-S and ViT-B/16; MedMNIST+ takes its AlexNet from torchvision. torchvision ships several weight versions per
architecture (ResNet-50 ``IMAGENET1K_V1`` at 76.1 % top-1 and the newer-recipe
``IMAGENET1K_V2`` at 80.9 %) and ``DEFAULT`` moves between them, so every spec
pins one enum member and the ``weights_id`` records it.

Features are the penultimate activations: only the final 1000-class
``nn.Linear`` is replaced by ``nn.Identity`` (anything before it, such as
EfficientNet's ``Dropout(0.2)``, stays), so fmeval's ``Classifier`` head on top
reproduces "the 1000-class layer replaced by a linear layer of n_classes".

LoRA on the ViT targets the MLP linears only. torchvision's attention is an
``nn.MultiheadAttention`` whose forward reads ``out_proj.weight`` directly, so
LoRA on ``out_proj`` alone is silently never applied; peft's whole-module
MultiheadAttention LoRA does work, but it merges and unmerges the delta into the
frozen ``in_proj_weight`` on every forward, which drifts the "frozen" weights
(measured ~7e-7 after 50 steps) and re-registers parameters, so a saved LoRA
would no longer reproduce the run exactly.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    fetch_error,
    Preprocess,
    file_digest,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
    ungrouped_conv_names,
)
from fmeval.errors import ConfigError, ModelError
from fmeval.progress import progress_enabled

# Bounds every socket wait of a hub download (connect and each read), so an
# offline machine whose firewall drops packets fails in seconds, not minutes.
DOWNLOAD_TIMEOUT_S = 20.0
TINY_INPUT = 32


def _tiny_resnet18(size: int) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1])


def _tiny_resnet50(size: int) -> nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1])


def _tiny_densenet(size: int) -> nn.Module:
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)


def _tiny_efficientnet_v2(size: int) -> nn.Module:
    """Fused-MBConv stages then an MBConv (with squeeze-excitation) stage, as in V2-S."""
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    setting = [
        FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        FusedMBConvConfig(4, 3, 2, 8, 16, 1),
        MBConvConfig(4, 3, 2, 16, 32, 1),
    ]
    return EfficientNet(setting, dropout=0.2, last_channel=64,
                        norm_layer=partial(nn.BatchNorm2d, eps=1e-3))


def _tiny_vit(size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=size, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64)


# AlexNet's layers at 1/8 width (conv 64/192/384/256/256, hidden 4096 -> 512).
_TINY_ALEXNET_CONVS = {0: 8, 3: 24, 6: 48, 8: 32, 10: 32}
_TINY_ALEXNET_HIDDEN = 512
ALEXNET_LORA = ("features.0", "features.3", "features.6", "features.8", "features.10",
                "classifier.1", "classifier.4")


def _tiny_alexnet(size: int) -> nn.Module:
    """torchvision's ``AlexNet`` class (its forward, 6x6 adaptive pool, layer names) at 1/8 width.

    The class has no width argument (only ``num_classes`` and ``dropout``), so
    it is built on the meta device (no 61 M-parameter allocation) and every
    conv and linear is swapped for a narrow one with the same kernel, stride
    and padding, drawn with torch's default init as torchvision's AlexNet is.
    """
    from torchvision.models.alexnet import AlexNet

    with torch.device("meta"):
        model = AlexNet()
    prev = 3
    for i, out in _TINY_ALEXNET_CONVS.items():
        old = model.features[i]
        model.features[i] = nn.Conv2d(prev, out, old.kernel_size, old.stride, old.padding)
        prev = out
    flat = prev * 6 * 6
    model.classifier[1] = nn.Linear(flat, _TINY_ALEXNET_HIDDEN)
    model.classifier[4] = nn.Linear(_TINY_ALEXNET_HIDDEN, _TINY_ALEXNET_HIDDEN)
    model.classifier[6] = nn.Linear(_TINY_ALEXNET_HIDDEN, 1000)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ModelError("tiny AlexNet kept a meta tensor: torchvision's AlexNet layout changed.")
    return model


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released DenseNet files use ``norm.1`` where the module has ``norm1``;
    torchvision renames them when it loads from the hub, so a local copy of the
    same file must be renamed the same way."""
    out = {}
    for k, v in sd.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _fill_bn_counters(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counters files saved before torch 0.4.1 lack.

    torch's BatchNorm fills them in itself when loading such a file (they only
    matter with ``momentum=None``, which torchvision never uses); fmeval's strict
    key check runs first, so it must see them too.
    """
    own = model.state_dict()
    missing = {k: own[k] for k in own if k.endswith(".num_batches_tracked") and k not in sd}
    return {**sd, **missing}


@dataclass(frozen=True)
class TvSpec:
    """One registered torchvision encoder.

    ``weights`` is the pinned enum member and ``top1`` the ImageNet-1K top-1 the
    protocol names for it (the tests check it against torchvision's metadata, so
    a renamed or re-trained enum cannot slip in). ``head`` is the dotted path of
    the 1000-class linear layer. ``lora_targets`` empty means "computed from the
    built model" (see :func:`ungrouped_conv_names`). ``tiny_input`` is the input
    size of the tiny build (AlexNet's three stride-2 pools need >= 63 px).
    """

    name: str
    arch: str
    weights: str
    top1: float
    family: str
    description: str
    head: str
    tiny: Callable[[int], nn.Module]
    lora_targets: tuple[str, ...] = ()
    min_size: int = 8
    tiny_input: int = TINY_INPUT
    fixed_size: bool = False  # ViT: the position embeddings fix the pretrained input size
    patch: int = 1  # ViT: the input size must be a multiple of the patch size
    key_fix: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    @property
    def weights_tag(self) -> str:
        return f"torchvision:{self.arch}.{self.weights}"


SPECS: tuple[TvSpec, ...] = (
    TvSpec("tv-resnet18", "resnet18", "IMAGENET1K_V1", 0.698, "cnn",
           "torchvision ResNet-18, original ImageNet-1K weights (top-1 0.698)",
           "fc", _tiny_resnet18, ("conv1", "conv2")),
    TvSpec("tv-resnet50", "resnet50", "IMAGENET1K_V2", 0.809, "cnn",
           "torchvision ResNet-50, newer-recipe ImageNet-1K weights (top-1 0.809)",
           "fc", _tiny_resnet50, ("conv1", "conv2", "conv3")),
    TvSpec("tv-densenet121", "densenet121", "IMAGENET1K_V1", 0.744, "cnn",
           "torchvision DenseNet-121, ImageNet-1K weights (top-1 0.744)",
           "classifier", _tiny_densenet, ("conv1", "conv2"), min_size=29,
           key_fix=_densenet_keys),
    TvSpec("tv-efficientnetv2-s", "efficientnet_v2_s", "IMAGENET1K_V1", 0.842, "cnn",
           "torchvision EfficientNetV2-S, ImageNet-1K weights (top-1 0.842, native 384 px)",
           "classifier.1", _tiny_efficientnet_v2),
    TvSpec("tv-vit-b16", "vit_b_16", "IMAGENET1K_V1", 0.811, "vit",
           "torchvision ViT-B/16, ImageNet-1K weights (top-1 0.811, fixed 224 px input)",
           "heads.head", _tiny_vit, ("mlp.0", "mlp.3"), fixed_size=True, patch=16),
    TvSpec("tv-alexnet", "alexnet", "IMAGENET1K_V1", 0.565, "cnn",
           "torchvision AlexNet, ImageNet-1K weights (top-1 0.565), 4096-d penultimate features "
           "(MedMNIST+'s AlexNet_Weights.DEFAULT)",
           "classifier.6", _tiny_alexnet, ALEXNET_LORA, min_size=63, tiny_input=64),
)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens its URL without a timeout; bound it for this call only."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _pinned_weights(spec: TvSpec):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(spec.arch)[spec.weights]
    except (KeyError, ValueError):
        raise ModelError(f"this torchvision has no {spec.weights_tag} weights.") from None


def hub_cache_file(url: str) -> Path:
    """Where torchvision keeps a downloaded checkpoint: ``<torch.hub.get_dir()>/checkpoints``,
    i.e. ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` when TORCH_HOME is unset)."""
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def ensure_cached(url: str, *, timeout_s: float | None = None) -> Path:
    """Download ``url`` into torchvision's cache unless it is already there.

    The same steps as ``torch.hub.load_state_dict_from_url`` (same file, same
    hash-prefix check), done *before* the model is built: torchvision builds
    and randomly initialises the full network first and downloads afterwards,
    so an offline machine would wait seconds per model for a certain failure.
    Every socket wait is bounded by ``timeout_s`` (``DOWNLOAD_TIMEOUT_S``).
    """
    from torch.hub import HASH_REGEX, download_url_to_file

    cached = hub_cache_file(url)
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    match = HASH_REGEX.search(cached.name)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S if timeout_s is None else timeout_s):
        download_url_to_file(url, str(cached), match.group(1) if match else None,
                             progress=progress_enabled())
    return cached


def _fetch_error(spec: TvSpec, url: str, exc: Exception) -> ModelError:
    """One line: what failed, where torchvision caches the file, how to work offline."""
    cached = hub_cache_file(url)
    return fetch_error(spec.name, spec.weights_tag, exc,
                       where=f"Put {cached.name} in {cached.parent} (set by TORCH_HOME), ")


def _check_size(spec: TvSpec, cfg: AdapterConfig, use_hub: bool) -> None:
    size = cfg.input_size
    if size is None:
        return
    if size < spec.min_size:
        raise ConfigError(f"{spec.name} needs input size >= {spec.min_size}, got {size}.")
    if spec.fixed_size and use_hub:
        raise ConfigError(
            f"{spec.name} pretrained weights fix the input at 224 px (position embeddings); "
            f"got --input-size {size}. Resize to 224, or use --random-init/--tiny."
        )
    if size % spec.patch:
        raise ConfigError(f"{spec.name} needs an input size divisible by {spec.patch}, got {size}.")


def _build(spec: TvSpec, cfg: AdapterConfig, use_hub: bool, weights) -> nn.Module:
    from torchvision.models import get_model

    if cfg.tiny:
        return spec.tiny(cfg.input_size or spec.tiny_input)
    if not use_hub:
        kwargs = {"image_size": cfg.input_size} if spec.fixed_size and cfg.input_size else {}
        return get_model(spec.arch, weights=None, **kwargs)
    try:
        cached = ensure_cached(weights.url)
    except Exception as exc:  # network, timeout or hash failure -> one line
        raise _fetch_error(spec, weights.url, exc) from None
    try:
        return get_model(spec.arch, weights=weights)
    except Exception as exc:  # a truncated or foreign file in the cache
        detail = (str(exc).splitlines() or [""])[0][:160]
        raise ModelError(
            f"cannot load the cached {spec.weights_tag} weights {cached}: "
            f"{type(exc).__name__}: {detail}. Delete the file to download it again."
        ) from None


def _drop_head(model: nn.Module, path: str) -> int:
    """Replace the 1000-class linear at ``path`` by Identity; return its input width."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    linear = getattr(parent, child)
    if not isinstance(linear, nn.Linear):
        raise ModelError(f"{path} of {type(model).__name__} is not the linear classifier.")
    setattr(parent, child, nn.Identity())
    return int(linear.in_features)


class TorchvisionAdapter(Adapter):
    code_version = "1"

    def __init__(self, spec: TvSpec, cfg: AdapterConfig) -> None:
        super().__init__()
        weights = _pinned_weights(spec)
        use_hub = cfg.pretrained and cfg.weights is None and not cfg.tiny
        _check_size(spec, cfg, use_hub)
        self.family = spec.family  # type: ignore[misc]
        self.arch = spec.arch
        self.model = _build(spec, cfg, use_hub, weights)
        self.feature_dim = _drop_head(self.model, spec.head)
        self.lora_targets = spec.lora_targets or ungrouped_conv_names(self.model)  # type: ignore[misc]
        if cfg.weights is not None:
            sd = load_state_dict_file(cfg.weights)
            if spec.key_fix is not None:
                sd = spec.key_fix(sd)
            sd = _fill_bn_counters(sd, self.model)
            heads = [k for k in sd if k.startswith(f"{spec.head}.")]
            self.load_report = load_weights(
                self.model, sd, strict=cfg.strict, source=str(cfg.weights), ignore=heads
            )
            self.weights_id = f"file:{file_digest(cfg.weights)[:16]}"
        elif use_hub:
            self.weights_id = spec.weights_tag
        else:
            self.weights_id = random_weights_id(cfg, f"torchvision.{spec.arch}")
        self.preprocess = _preprocess(weights, cfg, spec.tiny_input)

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _preprocess(weights, cfg: AdapterConfig, tiny_input: int = TINY_INPUT) -> Preprocess:
    """Mean, std and interpolation from the pinned weights' own transforms.

    torchvision resizes to ``resize_size`` then centre-crops ``crop_size``;
    :class:`Preprocess` has no crop (cropping a 28 px MedMNIST image would cut
    its border), so the crop size, what the network sees, is the input size.
    """
    t = weights.transforms()
    size = cfg.input_size or (tiny_input if cfg.tiny else int(t.crop_size[0]))
    return Preprocess(
        input_size=size,
        mean=tuple(float(v) for v in t.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in t.std),  # type: ignore[arg-type]
        interpolation=str(t.interpolation.value),
    )


def _register(spec: TvSpec) -> None:
    def factory(cfg: AdapterConfig) -> Adapter:
        return TorchvisionAdapter(spec, cfg)

    register_adapter(spec.name, spec.description, family=spec.family, text="no",
                     weights=spec.weights_tag, spec=f"torchvision:{spec.arch}:{spec.weights}")(factory)


for _spec in SPECS:
    _register(_spec)
