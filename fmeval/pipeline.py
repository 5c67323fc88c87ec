"""Shared plumbing of the frozen modes: config -> adapter, data, cached features.

zero-shot, kNN and linear probing all start the same way; they differ only in
what they do with the cached feature tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmeval.adapters.base import Adapter, create_adapter
from fmeval.cache import FeatureCache
from fmeval.data import SPLITS, MedMNIST, load_dataset
from fmeval.data.transforms import GEOMETRIES
from fmeval.device import resolve_device
from fmeval.errors import ConfigError
from fmeval.features import extract_features


@dataclass
class EvalConfig:
    """Options common to every evaluation mode (recorded in each report)."""

    model: str
    dataset: str
    size: int = 28
    data_root: str | None = None
    download: bool = False
    md5: str = "warn"
    geometry: str = "resize"
    pretrained: bool = True
    tiny: bool = False
    weights: str | None = None
    strict: bool = True
    allow_partial: bool = False  # accept a non-strict load that fills < half the model
    input_size: int | None = None
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    use_cache: bool = True
    n_boot: int = 1000
    limit: int | None = None  # cap per split (quick looks; recorded, never default)
    reports_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Frozen:
    """Everything a frozen-feature mode needs."""

    config: EvalConfig
    adapter: Adapter
    data: MedMNIST
    device: torch.device
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)
    cache: FeatureCache | None = None

    def dataset_record(self) -> dict:
        rec = self.data.describe()
        if self.config.limit:
            rec["limit"] = self.config.limit
            rec.update({f"n_{s}": len(self.labels[s]) for s in self.labels})
        return rec


def open_data(cfg: EvalConfig) -> MedMNIST:
    GEOMETRIES.get(cfg.geometry)  # validate before any heavy work
    return load_dataset(cfg.dataset, cfg.size, cfg.data_root, download=cfg.download, md5=cfg.md5)


def build_adapter(cfg: EvalConfig, device: torch.device) -> Adapter:
    return create_adapter(
        cfg.model, pretrained=cfg.pretrained, tiny=cfg.tiny, weights=cfg.weights,
        strict=cfg.strict, seed=cfg.seed, input_size=cfg.input_size,
        allow_partial=cfg.allow_partial, device=device,
    )


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """A seeded random subset (sorted, so order is stable) or None for all."""
    if not limit or limit >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def feature_key(adapter: Adapter, data: MedMNIST, split: str, cfg: EvalConfig) -> dict:
    return {
        "adapter": adapter.name,
        "weights_id": adapter.weights_id,
        "code_version": adapter.code_version,
        "preprocess": adapter.preprocess.as_dict(),
        "dataset": data.flag,
        "size": data.size,
        "data_md5": data.md5,
        "split": split,
        "geometry": cfg.geometry,
        "limit": cfg.limit,
        "limit_seed": cfg.seed if cfg.limit else None,
    }


def prepare_frozen(
    cfg: EvalConfig, splits: tuple[str, ...] = SPLITS, *, require_text: bool = False
) -> Frozen:
    """Load (or extract once and cache) features of ``splits``.

    Data is opened and validated before the model is built, so a bad dataset
    never costs a model load.
    """
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError("--limit must be a positive number of samples.")
    data = open_data(cfg)
    for s in splits:
        data.split(s)
    device = resolve_device(cfg.device)
    adapter = build_adapter(cfg, device)
    if require_text and not adapter.supports_text:
        adapter.encode_text([])  # raises the adapter's own "no text encoder" error
    cache = FeatureCache(enabled=cfg.use_cache)
    fz = Frozen(cfg, adapter, data, device, cache=cache)
    for split in splits:
        sp = data.split(split)
        idx = subset_indices(len(sp), cfg.limit, cfg.seed)
        images = sp.images if idx is None else sp.images[idx]
        labels = sp.labels if idx is None else sp.labels[idx]
        key = feature_key(adapter, data, split, cfg)

        def compute(images=images, split=split) -> torch.Tensor:
            return extract_features(
                adapter, images, geometry=cfg.geometry, batch_size=cfg.batch_size,
                device=device, description=f"{cfg.model} {data.flag} {split}",
            )

        feats, hit = cache.get_or_compute("image", key, compute, device=device,
                                          expect_rows=len(labels))
        fz.features[split] = feats
        fz.labels[split] = labels
        fz.cache_hits[split] = hit
    return fz


def reports_root(cfg: EvalConfig) -> Path | None:
    return Path(cfg.reports_dir) if cfg.reports_dir else None
