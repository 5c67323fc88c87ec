"""Frozen-feature extraction: the hot path of every frozen evaluation.

One pass over uint8 arrays in batches: batched preprocessing on the target
device, ``torch.inference_mode``, channels-last + bf16 autocast on GPU.
Out-of-memory halves the batch and resumes where it stopped; NaN/Inf outputs
are an error, never silently probed.
"""

from __future__ import annotations

import numpy as np
import torch

from fmeval.adapters.base import Adapter
from fmeval.data.transforms import prepare_batch
from fmeval.device import autocast, is_oom
from fmeval.errors import FmevalError
from fmeval.progress import progress_bar


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
    n = len(images)
    out = torch.empty((n, adapter.feature_dim), dtype=torch.float32)
    start, bs = 0, max(1, int(batch_size))
    with progress_bar(description, n, "img") as tick, torch.inference_mode():
        while start < n:
            stop = min(start + bs, n)
            try:
                x = prepare_batch(images[start:stop], adapter.preprocess, geometry, device)
                with autocast(device):
                    feats = adapter.encode_image(x)
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
            if feats.ndim != 2 or feats.shape != (stop - start, adapter.feature_dim):
                raise FmevalError(
                    f"{adapter.name} returned features of shape {tuple(feats.shape)}, expected "
                    f"[{stop - start}, {adapter.feature_dim}]."
                )
            out[start:stop] = feats.float().cpu()
            tick(stop - start)
            start = stop
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        raise FmevalError(
            f"{adapter.name} produced NaN/Inf features for {int(bad.sum())} of {n} images "
            "(check the weights and the input normalisation)."
        )
    return out
