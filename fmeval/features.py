"""Frozen-feature extraction: the hot path of every frozen evaluation.

One pass over uint8 arrays in batches: batched preprocessing on the target
device, ``torch.inference_mode``, channels-last + bf16 autocast on GPU.
Out-of-memory halves the batch and resumes where it stopped; NaN/Inf outputs
are an error, never silently probed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fmeval.adapters.base import Adapter, Preprocess
from fmeval.data.transforms import prepare_batch
from fmeval.device import autocast, is_oom
from fmeval.errors import FmevalError
from fmeval.progress import progress_bar


def batched_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    geometry: str,
    batch_size: int,
    device: torch.device,
    description: str,
    name: str,
    out_dim: int | None = None,
) -> torch.Tensor:
    """``fn`` over uint8 images in batches -> float32 [N, D] on CPU.

    The one inference loop of fmeval (frozen features and fine-tuned
    predictions alike): batched preprocessing on ``device``, inference mode,
    autocast on GPU, and out-of-memory halving the batch where it stopped.
    """
    n = len(images)
    chunks: list[torch.Tensor] = []
    start, bs = 0, max(1, int(batch_size))
    with progress_bar(description, n, "img") as tick, torch.inference_mode():
        while start < n:
            stop = min(start + bs, n)
            try:
                x = prepare_batch(images[start:stop], preprocess, geometry, device)
                with autocast(device):
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
    geometry: str = "resize",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    description: str = "features",
) -> torch.Tensor:
    """Encode ``images`` (uint8 [N,H,W(,3)]) -> float32 [N, feature_dim] on CPU."""
    device = torch.device(device)
    adapter = adapter.to(device).eval()
    if device.type == "cuda":
        adapter = adapter.to(memory_format=torch.channels_last)
    out = batched_inference(
        adapter.encode_image, images, preprocess=adapter.preprocess, geometry=geometry,
        batch_size=batch_size, device=device, description=description, name=adapter.name,
        out_dim=adapter.feature_dim,
    )
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        raise FmevalError(
            f"{adapter.name} produced NaN/Inf features for {int(bad.sum())} of {len(images)} images "
            "(check the weights and the input normalisation)."
        )
    return out
