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
from fmeval.data import SPLITS, MedMNIST
from fmeval.data.fewshot import is_fewshot, plan_fewshot, take_indices
from fmeval.data.sources import SourceOptions, open_dataset
from fmeval.data.transforms import DEFAULT_CANVAS, resolve_transform
from fmeval.data.volumes import VolumeView, parse_view
from fmeval.device import resolve_device, resolve_precision
from fmeval.errors import ConfigError
from fmeval.features import Transform, extract_features


@dataclass
class Prepared:
    """Everything a mode needs before its own work: data, encoder, pixels, and the rows.

    ``frozen`` (the kNN, probe and zero-shot modes): ``features`` hold each split's
    cached features. Otherwise (fine-tuning) ``images`` hold each split's uint8 arrays
    and the encoder is fresh (never shared, never lazy): training changes it.
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
    # few-shot runs (fmeval.data.fewshot): the episode record, and the labels before subsetting
    fewshot: dict | None = None
    fewshot_warnings: list[str] = field(default_factory=list)
    full_labels: dict[str, np.ndarray] = field(default_factory=dict)
    frozen: bool = True
    images: dict[str, np.ndarray | None] = field(default_factory=dict)  # not frozen: the rows to train on

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
    """A MedMNIST name or a user dataset (folder, manifest, npz with a card): see fmeval.data.sources."""
    options = SourceOptions(split_ratios=cfg.split_ratios, group_by=cfg.group_by, split_seed=cfg.split_seed,
                            strict_leakage=cfg.strict_leakage)
    return open_dataset(cfg.dataset, cfg.size, cfg.data_root, download=cfg.download, md5=cfg.md5, options=options)


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
        **({"pool": cfg.pool} if cfg.pool is not None else {}),  # unset: identity memo keys unchanged
        **({"mean": cfg.mean} if cfg.mean is not None else {}),
        **({"std": cfg.std} if cfg.std is not None else {}),
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


def text_feature_key(adapter: Adapter, prompts: list[list[str]], per_class: bool) -> dict:
    """Everything that determines cached prompt embeddings (the text twin of :func:`feature_key`)."""
    return {
        "adapter": adapter.name,
        "text_id": getattr(adapter, "text_id", adapter.weights_id),
        "code_version": adapter.code_version,
        "prompts": prompts,
        "per_class": per_class,
    }


def split_sizes(cfg: RunConfig, data: MedMNIST, splits: tuple[str, ...] = SPLITS) -> dict[str, int]:
    """Samples per split a run sees (after ``--limit``), from the labels alone."""
    sizes = {s: len(data.labels(s)) for s in splits}
    return {s: min(n, cfg.limit) if cfg.limit else n for s, n in sizes.items()}


def prepare_frozen(cfg: RunConfig, splits: tuple[str, ...] = SPLITS, *, require_text: bool = False,
                   check: Callable[[MedMNIST], None] | None = None) -> Prepared:
    """:func:`prepare` for the frozen-feature modes (features of ``splits``, cached)."""
    return prepare(cfg, splits, frozen=True, require_text=require_text, check=check)


def prepare(
    cfg: RunConfig, splits: tuple[str, ...] = SPLITS, *, frozen: bool = True, require_text: bool = False,
    check: Callable[[MedMNIST], None] | None = None, adapter: Adapter | None = None,
) -> Prepared:
    """The one door of every mode: data, encoder, pixel pipeline and the rows of ``splits``.

    Data is opened and its labels validated before the model is built; images
    are decompressed and validated only for splits whose features are not
    cached yet. ``check(data)``: the mode's own checks that need the data
    (e.g. k against the training set size), run before any model work.
    ``frozen``: load (or extract once and cache) features; else keep the
    split images for training. A few-shot config then keeps only its
    episode's rows, in memory (:func:`apply_fewshot`). ``adapter``: use this
    encoder instead of building one (multi-domain training shares one encoder
    across its datasets).
    """
    data = open_data(cfg)
    for s in splits if frozen else ():
        data.labels(s)  # validated (an empty split is an error) before any model work
    check_dimensions(cfg, data)
    if check is not None:
        check(data)
    if cfg.fewshot.shots is not None and "train" in splits:  # a K no class reaches fails before extraction
        from fmeval.data.episodes import check_shots_fit

        check_shots_fit(data.labels("train"), data.task, cfg.fewshot.shots, list(data.info.labels))
    view = parse_view(cfg.volume_view) if cfg.volume_view else None
    device = resolve_device(cfg.device)
    cache = FeatureCache(enabled=cfg.use_cache) if frozen else None
    if adapter is not None:
        pass  # shared by the caller (multi-domain training)
    elif frozen:
        adapter = build_adapter(cfg, device, data, reusable=True, memo=cache.root if cache.enabled else None)
    else:
        adapter = build_adapter(cfg, device, data)
    if require_text and not adapter.supports_text:
        adapter.encode_text([])  # raises the adapter's own "no text encoder" error
    transform = run_transform(adapter, cfg, data)
    precision = resolve_precision(cfg.precision, device, adapter.family)
    p = Prepared(cfg, adapter, data, device, transform, precision, cache=cache, view=view, frozen=frozen)
    p.n_slices = view.n_slices(data.size) if view is not None else 1
    for split in splits:
        if frozen:
            _load_features(p, split)
        else:
            _load_images(p, split)
    apply_fewshot(p)
    return p


def _load_images(p: Prepared, split: str) -> None:
    """A split's uint8 images and labels (the ``--limit`` subset), for training."""
    sp = p.data.split(split)
    if len(sp) == 0:
        raise ConfigError(f"the {split} split of {p.data.path.name} is empty.")
    idx = subset_indices(len(sp), p.config.limit, p.config.seed)
    p.images[split] = sp.images if idx is None else sp.images[idx]
    p.labels[split] = sp.labels if idx is None else sp.labels[idx]
    p.indices[split] = idx


def _load_features(p: Prepared, split: str) -> None:
    """A split's features from the cache (extracted once on a miss), labels and rows."""
    cfg, data, view = p.config, p.data, p.view
    all_labels = data.labels(split)
    idx = subset_indices(len(all_labels), cfg.limit, cfg.seed)
    key = feature_key(p.adapter, data, split, cfg, p.transform, p.precision, view)

    def compute() -> torch.Tensor:
        images = data.split(split).images
        images = images if idx is None else images[idx]
        if view is not None:
            images = view.select(images)  # [N * S, H, W]: an ordinary grey 2D split
        return extract_features(
            p.adapter, images, transform=p.transform, batch_size=cfg.batch_size, device=p.device,
            precision=p.precision, description=f"{cfg.model} {data.flag} {split}",
        )

    n_rows = (len(all_labels) if idx is None else len(idx)) * p.n_slices
    feats, hit = p.cache.get_or_compute("image", key, compute, device=p.device, expect_rows=n_rows)
    if view is not None:
        p.slice_features[split] = feats
        feats = view.pool_features(feats, p.n_slices)
    p.features[split] = feats
    p.labels[split] = all_labels if idx is None else all_labels[idx]
    p.cache_hits[split] = hit
    p.indices[split] = idx


def apply_fewshot(p: Prepared) -> None:
    """Keep only the run's K-shot episode (and the validation rows selection may use), in memory.

    Frozen features are subset, never re-extracted; ``p.full_labels`` keeps the
    labels before subsetting (majority baseline, split sizes), ``p.fewshot`` the
    record. Fine-tuning under ``fewshot.selection=fixed`` drops the validation
    split: it trains for all epochs and keeps the last (no early stopping).
    """
    cfg = p.config
    if not is_fewshot(cfg) or "train" not in p.labels:
        return
    plan = plan_fewshot(cfg, p.data.task, list(p.data.info.labels), p.labels["train"], p.labels.get("val"),
                        p.indices.get("train"), p.indices.get("val"))
    p.full_labels = dict(p.labels)
    take = _take_features if p.frozen else _take_images
    take(p, "train", plan.train)
    if plan.val is not None:
        take(p, "val", plan.val)
    if not p.frozen and not plan.use_val:
        p.images["val"] = p.labels["val"] = None
    p.fewshot = plan.record
    p.fewshot_warnings = plan.warnings


def _take_images(p: Prepared, split: str, pos: np.ndarray) -> None:
    p.indices[split] = take_indices(p.indices.get(split), len(p.labels[split]), pos)
    p.images[split], p.labels[split] = p.images[split][pos], p.labels[split][pos]


def _take_features(fz: Prepared, split: str, pos: np.ndarray) -> None:
    n = len(fz.labels[split])
    fz.indices[split] = take_indices(fz.indices.get(split), n, pos)
    fz.labels[split] = fz.labels[split][pos]
    rows = torch.as_tensor(pos, dtype=torch.long, device=fz.features[split].device)
    fz.features[split] = fz.features[split].index_select(0, rows)
    if split in fz.slice_features:  # per-slice rows: volume i owns rows i*S .. i*S+S-1
        s = fz.n_slices
        srows = (rows.view(-1, 1) * s + torch.arange(s, device=rows.device)).reshape(-1)
        fz.slice_features[split] = fz.slice_features[split].index_select(0, srows.to(fz.slice_features[split].device))
