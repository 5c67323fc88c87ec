"""Batched image preparation: uint8 MedMNIST arrays -> normalised encoder input.

Done on whole batches of tensors (on the GPU when there is one) rather than
per PIL image, which is where a plain ``DataLoader`` + torchvision pipeline
spends its time at these image sizes.

Two records, two jobs:

- :class:`Preprocess` is what an *encoder* asks for (input size, its own
  mean/std, interpolation, grayscale). Adapters set it from their config.
- :class:`ImageTransform` is what a *run* actually does to the pixels: the
  encoder's contract combined with the run's geometry (``resize`` or ``pad``),
  the pad canvas and fill, and any normalisation or interpolation a protocol
  imposes. Every field changes the numbers, so the whole record is part of the
  feature-cache key and of every report.

Geometry ``pad`` places the image centred on a ``canvas`` x ``canvas`` field
filled with either the mean colour (``pad_fill="mean"``: zero after
normalisation, the MedMNIST+ protocol's "normalise, then zero-pad") or black
in pixel space (``pad_fill="zero"``: MedCLIP's processor pastes onto a black
canvas). If the canvas differs from the encoder's input size it is then
resized to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fmeval.errors import ConfigError
from fmeval.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PAD_FILLS = ("mean", "zero")
DEFAULT_CANVAS = 224  # MedMNIST+: always a 224 canvas, whatever the encoder's native size

# ITU-R 601 luma weights, as PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 images must be turned into one encoder's input.

    Taken from the encoder's own config (never a global default) because
    normalisation and input size are part of what makes a feature comparable.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "nearest"
    grayscale: bool = False  # collapse RGB to gray (MedCLIP was trained that way)

    def as_dict(self) -> dict:
        return asdict(self)


# -- normalisations a run may impose instead of the encoder's own -------------
Norm = Callable[[Preprocess], tuple[tuple[float, ...], tuple[float, ...]]]
NORMS: Registry[Norm] = Registry("normalisation", ConfigError)
NORMS.add("model", lambda pre: (tuple(pre.mean), tuple(pre.std)),
          "the encoder's own mean/std (MedMNIST+, CLIP)")
NORMS.add("half", lambda pre: (HALF, HALF), "Normalize(0.5, 0.5) (MedMNIST v2, the resolution study)")
NORMS.add("imagenet", lambda pre: (IMAGENET_MEAN, IMAGENET_STD), "ImageNet mean/std")


@dataclass(frozen=True)
class ImageTransform:
    """The exact pixel pipeline of a run (recorded and part of the cache key)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    grayscale: bool = False
    geometry: str = "resize"  # "resize" | "pad"
    canvas: int | None = None  # pad only
    pad_fill: str = "mean"  # pad only: "mean" colour (0 after normalising) or pixel "zero"
    norm: str = "model"  # provenance: which normalisation rule gave mean/std
    # Bilinear/bicubic resampling computes PIL's kernels (torch ``antialias=True``) for up- AND
    # down-sampling, as the timm/open_clip/torchvision transforms the encoders were trained with
    # (PIL): without it torch's bicubic upsampling uses a = -0.75, not PIL's -0.5 (0.72 grey levels
    # mean difference from PIL 28 -> 224 on PneumoniaMNIST, 0.31 with it: scripts/measure_resampling.py).
    # A field so the feature-cache key of earlier (non-antialiased) features differs.
    resampler: str = "pil-antialias"

    def __post_init__(self) -> None:
        GEOMETRIES.get(self.geometry)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}."
            )
        if self.pad_fill not in PAD_FILLS:
            raise ConfigError(f"pad fill must be one of {', '.join(PAD_FILLS)}, not {self.pad_fill!r}.")
        if self.geometry == "pad" and (self.canvas is None or self.canvas < 1):
            raise ConfigError("pad geometry needs a positive canvas size.")

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.geometry != "pad":  # canvas/fill mean nothing without padding
            d["canvas"] = None
            d["pad_fill"] = None
        return d

    def describe(self) -> str:
        if self.geometry == "pad":
            how = f"pad to {self.canvas} ({self.pad_fill} fill)"
            if self.canvas != self.input_size:
                how += f", {self.interpolation} to {self.input_size}"
        else:
            how = f"{self.interpolation} resize to {self.input_size}"
        return f"{how}; norm {self.norm}" + ("; grayscale" if self.grayscale else "")

    def prepare(
        self,
        images: np.ndarray | torch.Tensor,
        device: torch.device | str = "cpu",
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """uint8 [N,H,W] or [N,H,W,3] -> normalised float [N, 3, S, S] on ``device``.

        The uint8 batch travels to the device before conversion: 4x less
        traffic than shipping floats, and the arithmetic runs on the
        accelerator. ``train``/``generator`` are part of the transform protocol
        (volume transforms randomise in training); images take augmentation
        separately (:mod:`fmeval.data.augment`).
        """
        t = torch.as_tensor(images)
        device = torch.device(device)
        if device.type == "cuda":
            t = t.pin_memory().to(device, non_blocking=True)
        x = GEOMETRIES.get(self.geometry)(to_float_rgb(t, self.grayscale), self)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_transform(
    pre: Preprocess,
    *,
    geometry: str = "resize",
    canvas: int | None = None,
    pad_fill: str = "mean",
    interpolation: str | None = None,
    norm: str = "model",
    image_size: int | None = None,
) -> ImageTransform:
    """Combine an encoder's :class:`Preprocess` with a run's choices.

    ``image_size`` (the dataset's side length) is checked against the canvas so
    a misfit fails before any model work.
    """
    GEOMETRIES.get(geometry)
    mean, std = NORMS.get(norm)(pre)
    if geometry == "pad":
        canvas = canvas or DEFAULT_CANVAS
        if image_size is not None and image_size > canvas:
            raise ConfigError(
                f"pad geometry cannot fit {image_size} px images on a {canvas} px canvas; "
                "use --geometry resize, a larger --canvas or a smaller --size."
            )
    else:
        canvas = None
    return ImageTransform(
        input_size=pre.input_size, mean=mean, std=std,  # type: ignore[arg-type]
        interpolation=interpolation or pre.interpolation, grayscale=pre.grayscale,
        geometry=geometry, canvas=canvas, pad_fill=pad_fill, norm=norm,
    )


def transform_from_dict(d: dict) -> ImageTransform:
    """Rebuild a recorded transform (fine-tuned adapters are re-evaluated with it)."""
    d = dict(d)
    d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
    d["pad_fill"] = d.get("pad_fill") or "mean"
    return ImageTransform(**d)


# -- geometry -----------------------------------------------------------------
Geometry = Callable[[torch.Tensor, ImageTransform], torch.Tensor]
GEOMETRIES: Registry[Geometry] = Registry("geometry", ConfigError)


def _normalise(x: torch.Tensor, t: ImageTransform) -> torch.Tensor:
    mean = torch.tensor(t.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(t.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _resize_to(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    kw = {} if interpolation == "nearest" else {"align_corners": False, "antialias": True}  # PIL's kernels
    gray = x.shape[1] == 3 and x.stride(1) == 0  # one channel broadcast to three
    if gray:
        x = x[:, :1]  # resize it once, not three times
    x = F.interpolate(x, size=(size, size), mode=interpolation, **kw).clamp_(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if gray else x


@GEOMETRIES.register("resize", "scale to the encoder's input size (then normalise)")
def _resize(x: torch.Tensor, t: ImageTransform) -> torch.Tensor:
    return _normalise(_resize_to(x, t.input_size, t.interpolation), t)


@GEOMETRIES.register("pad", "centre on a canvas (default 224) filled with the mean colour or black")
def _pad(x: torch.Tensor, t: ImageTransform) -> torch.Tensor:
    size = int(t.canvas or DEFAULT_CANVAS)
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ConfigError(
            f"pad geometry cannot fit {h}x{w} images on a {size} px canvas; "
            "use --geometry resize, a larger --canvas or a smaller --size."
        )
    top, left = (size - h) // 2, (size - w) // 2
    fill = torch.tensor(t.mean if t.pad_fill == "mean" else (0.0, 0.0, 0.0), dtype=x.dtype, device=x.device)
    out = fill.view(1, 3, 1, 1).expand(x.shape[0], 3, size, size).clone()
    out[:, :, top:top + h, left:left + w] = x
    # The mean colour normalises to exactly 0: "normalise, then zero-pad".
    return _normalise(_resize_to(out, t.input_size, t.interpolation), t)


def to_float_rgb(batch: torch.Tensor, grayscale: bool) -> torch.Tensor:
    """uint8 [N,H,W] or [N,H,W,3] -> float [N,3,H,W] in [0, 1]."""
    x = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    if grayscale and x.shape[1] == 3:
        w = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def prepare_batch(
    images: np.ndarray | torch.Tensor,
    pre: Preprocess,
    geometry: str = "resize",
    device: torch.device | str = "cpu",
    **choices,
) -> torch.Tensor:
    """One-off convenience: ``resolve_transform(pre, geometry=...).prepare(images, device)``."""
    side = int(np.shape(images)[1]) if np.ndim(images) >= 3 else None
    return resolve_transform(pre, geometry=geometry, image_size=side, **choices).prepare(images, device)


def with_input_size(pre: Preprocess, size: int | None) -> Preprocess:
    return pre if size is None else replace(pre, input_size=size)
