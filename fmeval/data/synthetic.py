"""Small synthetic MedMNIST-layout npz files for tests and benchmarks.

Images carry a class-dependent signal (a bright square whose position depends
on the label, plus noise) so that a probe on even random features can beat
chance: tests can then assert learning, not just shapes. 3D datasets get
volumes [N, S, S, S] holding a bright cube centred in the volume whose side
grows with the label, so every volume view through the centre (one axial
slice, the tri-planar planes, all slices) sees a class-dependent square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmeval.data.info import DatasetInfo, dataset_info, is_multilabel
from fmeval.io import atomic_path


def synthetic_arrays(
    flag: str, size: int = 28, n: tuple[int, int, int] = (64, 32, 32), seed: int = 0
) -> dict[str, np.ndarray]:
    info = dataset_info(flag)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, count in zip(("train", "val", "test"), n):
        if is_multilabel(info.task):
            labels = (rng.random((count, info.n_classes)) < 0.3).astype(np.uint8)
            signal_class = labels.argmax(1)
        else:
            labels = rng.integers(0, info.n_classes, size=(count, 1)).astype(np.uint8)
            signal_class = labels[:, 0]
        if info.is_volume:
            imgs = _volumes(rng, count, size, signal_class, info.n_classes)
        else:
            imgs = rng.integers(0, 80, size=(count, size, size), dtype=np.int64)
            cell = max(size // max(info.n_classes, 2), 2)
            for c in range(info.n_classes):
                rows = signal_class == c
                off = (c * cell) % max(size - cell, 1)
                imgs[rows, off : off + cell, off : off + cell] += 150
        imgs = np.clip(imgs, 0, 255).astype(np.uint8)
        if info.n_channels == 3:
            imgs = np.repeat(imgs[..., None], 3, axis=-1)
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels
    return arrays


def _volumes(
    rng: np.random.Generator, count: int, size: int, label: np.ndarray, n_classes: int
) -> np.ndarray:
    """Noise volumes [count, size, size, size] plus a centred cube of side ~ label."""
    vols = rng.integers(0, 80, size=(count, size, size, size), dtype=np.int64)
    for c in range(n_classes):
        side = max(2, size * (c + 1) // (n_classes + 1))
        lo = (size - side) // 2
        cube = slice(lo, lo + side)
        vols[label == c, cube, cube, cube] += 150
    return vols


def write_synthetic(
    root: str | Path, flag: str, size: int = 28, n: tuple[int, int, int] = (64, 32, 32), seed: int = 0
) -> Path:
    """Write ``{flag}[_{size}].npz`` under ``root`` (atomically) and return its path."""
    path = Path(root) / DatasetInfo.filename(flag, size)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **synthetic_arrays(flag, size, n, seed))
    return path
