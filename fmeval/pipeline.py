"""data -> adapter -> features: what every mode does before its own work.

:func:`open_data` validates the dataset before any model is built (a bad file
never costs a model load), :func:`build_adapter` creates the encoder at the
run's input size, :func:`run_transform` fixes the exact pixel pipeline, and
:func:`prepare_frozen` loads (or extracts once and caches) frozen features.
Fine-tuning uses the same first three steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from fmeval.adapters.base import Adapter, create_adapter
from fmeval.cache import FeatureCache
from fmeval.config import RunConfig
from fmeval.data import SPLITS, MedMNIST, load_dataset
from fmeval.data.transforms import DEFAULT_CANVAS, ImageTransform, resolve_transform
from fmeval.device import resolve_device, resolve_precision
from fmeval.errors import ConfigError
from fmeval.features import extract_features


@dataclass
class Frozen:
    """Everything a frozen-feature mode needs."""

    config: RunConfig
    adapter: Adapter
    data: MedMNIST
    device: torch.device
    transform: ImageTransform
    precision: str
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)
    indices: dict[str, np.ndarray | None] = field(default_factory=dict)  # --limit subsets (None: all)
    cache: FeatureCache | None = None

    def dataset_record(self) -> dict:
        return dataset_record(self.data, self.config, self.labels)


def dataset_record(data: MedMNIST, cfg: RunConfig, labels: dict[str, np.ndarray]) -> dict:
    rec = data.describe()
    if cfg.limit:
        rec["limit"] = cfg.limit
        rec.update({f"n_{s}": len(labels[s]) for s in labels})
    return rec


def open_data(cfg: RunConfig) -> MedMNIST:
    return load_dataset(cfg.dataset, cfg.size, cfg.data_root, download=cfg.download, md5=cfg.md5)


def build_input_size(cfg: RunConfig) -> int | None:
    """The encoder's input size: explicit, else the pad canvas, else the encoder's default."""
    if cfg.input_size is not None:
        return cfg.input_size
    if cfg.geometry == "pad":
        return cfg.canvas or DEFAULT_CANVAS
    return None


_REUSE: dict | None = None  # see reuse_adapters()


@contextlib.contextmanager
def reuse_adapters() -> Iterator[None]:
    """Within this block, frozen modes share the last encoder built with the same
    arguments (a study's cells of one model load it once). Fine-tuning never
    reuses: it changes the encoder."""
    global _REUSE
    old, _REUSE = _REUSE, {}
    try:
        yield
    finally:
        _REUSE = old


def build_adapter(cfg: RunConfig, device: torch.device, data: MedMNIST | None = None, *,
                  reusable: bool = False) -> Adapter:
    kwargs = dict(
        pretrained=cfg.pretrained, tiny=cfg.tiny, weights=cfg.weights, strict=cfg.strict,
        seed=cfg.seed if cfg.weights_seed is None else cfg.weights_seed,
        input_size=build_input_size(cfg), allow_partial=cfg.allow_partial, device=device,
    )
    key = repr((cfg.model, sorted(kwargs.items(), key=lambda kv: kv[0])))
    if reusable and _REUSE is not None and key in _REUSE:
        adapter = _REUSE[key]
    else:
        adapter = create_adapter(cfg.model, **kwargs)
        if reusable and _REUSE is not None:
            _REUSE.clear()  # keep one encoder in memory: cells come grouped by model
            _REUSE[key] = adapter
    native = getattr(adapter, "native_input", False)
    if native and data is not None and cfg.input_size is None and adapter.preprocess.input_size != data.size:
        raise ConfigError(
            f"{cfg.model} takes {adapter.preprocess.input_size} px input, but {data.flag} at --size "
            f"{data.size} has {data.size} px images; pass --input-size {data.size} for this size explicitly "
            "or use --protocol medmnist-v2 (its 224 variant upsamples the 28 px images)."
        )
    return adapter


def run_transform(adapter: Adapter, cfg: RunConfig, data: MedMNIST) -> ImageTransform:
    return resolve_transform(
        adapter.preprocess, geometry=cfg.geometry, canvas=cfg.canvas, pad_fill=cfg.pad_fill,
        interpolation=cfg.interpolation, norm=cfg.norm, image_size=data.size,
    )


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """A seeded random subset (sorted, so order is stable) or None for all."""
    if not limit or limit >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def feature_key(adapter: Adapter, data: MedMNIST, split: str, cfg: RunConfig,
                transform: ImageTransform, precision: str) -> dict:
    """Everything that determines a cached feature tensor."""
    return {
        "adapter": adapter.name,
        "weights_id": adapter.weights_id,
        "code_version": adapter.code_version,
        "transform": transform.as_dict(),
        "precision": precision,
        "dataset": data.flag,
        "size": data.size,
        "data_md5": data.md5,
        "split": split,
        "limit": cfg.limit,
        "limit_seed": cfg.seed if cfg.limit else None,
    }


def prepare_frozen(
    cfg: RunConfig, splits: tuple[str, ...] = SPLITS, *, require_text: bool = False
) -> Frozen:
    """Load (or extract once and cache) features of ``splits``.

    Data is opened and its labels validated before the model is built; images
    are decompressed and validated only for splits whose features are not
    cached yet.
    """
    data = open_data(cfg)
    for s in splits:
        data.labels(s)  # validated (an empty split is an error) before any model work
    device = resolve_device(cfg.device)
    adapter = build_adapter(cfg, device, data, reusable=True)
    if require_text and not adapter.supports_text:
        adapter.encode_text([])  # raises the adapter's own "no text encoder" error
    transform = run_transform(adapter, cfg, data)
    precision = resolve_precision(cfg.precision, device, adapter.family)
    cache = FeatureCache(enabled=cfg.use_cache)
    fz = Frozen(cfg, adapter, data, device, transform, precision, cache=cache)
    for split in splits:
        all_labels = data.labels(split)
        idx = subset_indices(len(all_labels), cfg.limit, cfg.seed)
        key = feature_key(adapter, data, split, cfg, transform, precision)

        def compute(split=split, idx=idx) -> torch.Tensor:
            images = data.split(split).images
            return extract_features(
                adapter, images if idx is None else images[idx], transform=transform,
                batch_size=cfg.batch_size, device=device, precision=precision,
                description=f"{cfg.model} {data.flag} {split}",
            )

        n_rows = len(all_labels) if idx is None else len(idx)
        feats, hit = cache.get_or_compute("image", key, compute, device=device, expect_rows=n_rows)
        fz.features[split] = feats
        fz.labels[split] = all_labels if idx is None else all_labels[idx]
        fz.cache_hits[split] = hit
        fz.indices[split] = idx
    return fz
