"""Frozen-feature extraction: the hot path of every frozen evaluation.

One pass over uint8 arrays in batches: the run's transform on the target
device, ``torch.inference_mode``, the run's precision (bf16 autocast where the
policy chose it) and channels-last where it helps. Out-of-memory halves the
batch and resumes where it stopped; NaN/Inf outputs are an error, never
silently probed.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch

from fmeval.adapters.base import Adapter
from fmeval.device import autocast, is_oom, use_channels_last
from fmeval.errors import FmevalError
from fmeval.progress import progress_bar


class Transform(Protocol):
    """What turns a batch of stored uint8 samples into model input.

    Implemented by :class:`fmeval.data.transforms.ImageTransform` (2D images)
    and the volume transforms of :mod:`fmeval.data.volumes`.
    """

    def prepare(self, images: np.ndarray, device: torch.device | str = "cpu", *, train: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor: ...

    def as_dict(self) -> dict: ...


def batched_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    *,
    transform: Transform,
    batch_size: int,
    device: torch.device,
    description: str,
    name: str,
    precision: str = "fp32",
    channels_last: bool = False,
    out_dim: int | None = None,
) -> torch.Tensor:
    """``fn`` over uint8 images in batches -> float32 [N, D] on CPU.

    The one inference loop of fmeval (frozen features and fine-tuned
    predictions alike): batched preprocessing on ``device``, inference mode,
    the run's precision, and out-of-memory halving the batch where it stopped.
    """
    n = len(images)
    chunks: list[torch.Tensor] = []
    start, bs = 0, max(1, int(batch_size))
    with progress_bar(description, n, "img") as tick, torch.inference_mode():
        while start < n:
            stop = min(start + bs, n)
            try:
                x = transform.prepare(images[start:stop], device)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    out = fn(x)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                if bs == 1:
                    raise FmevalError("out of memory even at batch size 1.") from None
                bs = max(1, bs // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                tick(0, info=f"OOM: batch size -> {bs}")
                continue
            expect = (stop - start, out_dim if out_dim is not None else out.shape[-1])
            if out.ndim != 2 or tuple(out.shape) != expect:
                raise FmevalError(
                    f"{name} returned features of shape {tuple(out.shape)}, expected "
                    f"[{expect[0]}, {expect[1]}]."
                )
            chunks.append(out.float().cpu())
            tick(stop - start)
            start = stop
    return torch.cat(chunks) if chunks else torch.empty((0, out_dim or 0))


def extract_features(
    adapter: Adapter,
    images: np.ndarray,
    *,
    transform: Transform | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    description: str = "features",
) -> torch.Tensor:
    """Encode ``images`` (stored uint8 samples) -> float32 [N, feature_dim] on CPU.

    ``transform`` defaults to resizing to the encoder's own input (its
    ``Preprocess``); runs pass the transform they resolved and recorded.
    """
    if transform is None:
        from fmeval.data.transforms import resolve_transform

        transform = resolve_transform(adapter.preprocess)
    device = torch.device(device)
    adapter = adapter.to(device).eval()
    cl = use_channels_last(adapter.family, device, precision)
    if cl:
        adapter = adapter.to(memory_format=torch.channels_last)
    out = batched_inference(
        adapter.encode_image, images, transform=transform, batch_size=batch_size, device=device,
        precision=precision, channels_last=cl, description=description, name=adapter.name,
        out_dim=adapter.feature_dim,
    )
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        raise FmevalError(
            f"{adapter.name} produced NaN/Inf features for {int(bad.sum())} of {len(images)} images "
            "(check the weights and the input normalisation)."
        )
    return out
