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
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from fmeval.adapters.base import Adapter, create_adapter
from fmeval.adapters.lazy import LazyAdapter, identity_key, recall, remember
from fmeval.cache import FeatureCache
from fmeval.config import RunConfig
from fmeval.data import SPLITS, MedMNIST, load_dataset
from fmeval.data.transforms import DEFAULT_CANVAS, resolve_transform
from fmeval.data.volumes import VolumeView, parse_view
from fmeval.device import resolve_device, resolve_precision
from fmeval.errors import ConfigError
from fmeval.features import Transform, extract_features


@dataclass
class Frozen:
    """Everything a frozen-feature mode needs.

    For a 3D dataset seen through a 2D encoder, ``features`` are the pooled
    volume features and ``slice_features`` the per-slice ones (zero-shot pools
    per-slice logits instead), ``n_slices`` slices per volume.
    """

    config: RunConfig
    adapter: Adapter
    data: MedMNIST
    device: torch.device
    transform: Transform
    precision: str
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)
    indices: dict[str, np.ndarray | None] = field(default_factory=dict)  # --limit subsets (None: all)
    cache: FeatureCache | None = None
    view: VolumeView | None = None
    slice_features: dict[str, torch.Tensor] = field(default_factory=dict)
    n_slices: int = 1
    # few-shot runs (fmeval.modes.fewshot): the episode record, and the labels before subsetting
    fewshot: dict | None = None
    fewshot_warnings: list[str] = field(default_factory=list)
    full_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def transform_record(self) -> dict:
        rec = self.transform.as_dict()
        if self.view is not None:
            rec = {**rec, "volume_view": self.view.as_dict(), "slices_per_volume": self.n_slices}
        return rec

    def dataset_record(self) -> dict:
        return dataset_record(self.data, self.config, {**self.labels, **self.full_labels})

    def prior_labels(self) -> np.ndarray:
        """Training labels of the majority baseline: the split's (before any few-shot subsetting)."""
        for labels in (self.full_labels, self.labels):
            if "train" in labels:
                return labels["train"]
        return self.data.labels("train")


def dataset_record(data: MedMNIST, cfg: RunConfig, labels: dict[str, np.ndarray]) -> dict:
    rec = data.describe()
    if cfg.limit:
        rec["limit"] = cfg.limit
        rec.update({f"n_{s}": len(labels[s]) for s in labels})
    return rec


def open_data(cfg: RunConfig) -> MedMNIST:
    return load_dataset(cfg.dataset, cfg.size, cfg.data_root, download=cfg.download, md5=cfg.md5)


def is_volume_model(name: str) -> bool:
    from fmeval.adapters import ADAPTERS

    return ADAPTERS.entry(name).tags.get("ndim") == "3"


def build_input_size(cfg: RunConfig, data: MedMNIST | None = None) -> int | None:
    """The encoder's input size: explicit, else the pad canvas, else the encoder's default
    (a native 3D encoder: the volume side)."""
    if cfg.input_size is not None:
        return cfg.input_size
    if data is not None and data.info.is_volume and is_volume_model(cfg.model):
        return data.size
    if cfg.geometry == "pad":
        return cfg.canvas or DEFAULT_CANVAS
    return None


def check_dimensions(cfg: RunConfig, data: MedMNIST) -> None:
    """2D encoders see volumes only through a volume view; 3D encoders only volumes."""
    volume_model = is_volume_model(cfg.model)
    if data.info.is_volume and not volume_model and not cfg.volume_view:
        raise ConfigError(
            f"{data.flag} holds 3D volumes and {cfg.model} is a 2D encoder: pass --volume-view, e.g. "
            "axial/mean, tri-planar/mean, tri-planar/mean+max or all:axial/max (or use a 3D model)."
        )
    if not data.info.is_volume and cfg.volume_view:
        raise ConfigError(f"--volume-view applies to 3D datasets; {data.flag} is 2D.")
    if not data.info.is_volume and volume_model:
        raise ConfigError(f"{cfg.model} encodes 3D volumes; {data.flag} is a 2D dataset.")
    if volume_model and cfg.volume_view:
        raise ConfigError(f"{cfg.model} is a 3D model and encodes whole volumes; drop --volume-view.")


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
                  reusable: bool = False, memo: Path | None = None) -> Adapter:
    """The run's encoder. ``memo`` (the feature cache folder, frozen modes only): a
    configuration built before comes back as a :class:`LazyAdapter`, whose weights
    are built only when a feature is not cached."""
    kwargs = dict(
        pretrained=cfg.pretrained, tiny=cfg.tiny, weights=cfg.weights, strict=cfg.strict,
        seed=cfg.seed if cfg.weights_seed is None else cfg.weights_seed,
        input_size=build_input_size(cfg, data), allow_partial=cfg.allow_partial, device=device,
    )
    key = repr((cfg.model, sorted(kwargs.items(), key=lambda kv: kv[0])))
    if reusable and _REUSE is not None and key in _REUSE:
        adapter = _REUSE[key]
    else:
        ident_key = identity_key(cfg.model, kwargs) if memo is not None else None

        def build() -> Adapter:
            built = create_adapter(cfg.model, **kwargs)
            if ident_key is not None:
                remember(memo, ident_key, built)
            return built

        identity = recall(memo, ident_key) if ident_key is not None else None
        adapter = LazyAdapter(identity, build) if identity is not None else build()
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


def run_transform(adapter: Adapter, cfg: RunConfig, data: MedMNIST) -> Transform:
    """The run's input pipeline: a 3D encoder's own volume transform, else the image
    transform (for a 2D encoder on volumes: applied to each slice)."""
    if getattr(adapter, "ndim", 2) == 3:
        return adapter.transform
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
                transform: Transform, precision: str, view: VolumeView | None = None) -> dict:
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
        # per-slice features: keyed by the slices taken (pooling happens in memory)
        **({"volume_slices": view.slices} if view is not None else {}),
    }


def split_sizes(cfg: RunConfig, data: MedMNIST, splits: tuple[str, ...] = SPLITS) -> dict[str, int]:
    """Samples per split a run sees (after ``--limit``), from the labels alone."""
    sizes = {s: len(data.labels(s)) for s in splits}
    return {s: min(n, cfg.limit) if cfg.limit else n for s, n in sizes.items()}


def prepare_frozen(
    cfg: RunConfig, splits: tuple[str, ...] = SPLITS, *, require_text: bool = False,
    check: Callable[[MedMNIST], None] | None = None,
) -> Frozen:
    """Load (or extract once and cache) features of ``splits``.

    Data is opened and its labels validated before the model is built; images
    are decompressed and validated only for splits whose features are not
    cached yet. ``check(data)``: the mode's own checks that need the data
    (e.g. k against the training set size), run before any model work.
    A few-shot config then keeps only its episode's rows, in
    memory (:func:`fmeval.modes.fewshot.apply_to_frozen`).
    """
    data = open_data(cfg)
    for s in splits:
        data.labels(s)  # validated (an empty split is an error) before any model work
    check_dimensions(cfg, data)
    if check is not None:
        check(data)
    if cfg.fewshot.shots is not None and "train" in splits:  # a K no class reaches fails before extraction
        from fmeval.data.episodes import check_shots_fit

        check_shots_fit(data.labels("train"), data.task, cfg.fewshot.shots, list(data.info.labels))
    view = parse_view(cfg.volume_view) if cfg.volume_view else None
    device = resolve_device(cfg.device)
    cache = FeatureCache(enabled=cfg.use_cache)
    adapter = build_adapter(cfg, device, data, reusable=True, memo=cache.root if cache.enabled else None)
    if require_text and not adapter.supports_text:
        adapter.encode_text([])  # raises the adapter's own "no text encoder" error
    transform = run_transform(adapter, cfg, data)
    precision = resolve_precision(cfg.precision, device, adapter.family)
    fz = Frozen(cfg, adapter, data, device, transform, precision, cache=cache, view=view)
    fz.n_slices = view.n_slices(data.size) if view is not None else 1
    for split in splits:
        all_labels = data.labels(split)
        idx = subset_indices(len(all_labels), cfg.limit, cfg.seed)
        key = feature_key(adapter, data, split, cfg, transform, precision, view)

        def compute(split=split, idx=idx) -> torch.Tensor:
            images = data.split(split).images
            images = images if idx is None else images[idx]
            if view is not None:
                images = view.select(images)  # [N * S, H, W]: an ordinary grey 2D split
            return extract_features(
                adapter, images, transform=transform, batch_size=cfg.batch_size, device=device,
                precision=precision, description=f"{cfg.model} {data.flag} {split}",
            )

        n_rows = (len(all_labels) if idx is None else len(idx)) * fz.n_slices
        feats, hit = cache.get_or_compute("image", key, compute, device=device, expect_rows=n_rows)
        if view is not None:
            fz.slice_features[split] = feats
            feats = view.pool_features(feats, fz.n_slices)
        fz.features[split] = feats
        fz.labels[split] = all_labels if idx is None else all_labels[idx]
        fz.cache_hits[split] = hit
        fz.indices[split] = idx
    from fmeval.modes.fewshot import apply_to_frozen

    apply_to_frozen(fz)
    return fz
