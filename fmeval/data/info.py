"""Dataset metadata, taken from ``medmnist.INFO`` (never re-typed by hand).

MedMNIST has twelve 2D datasets (images [N, H, W] or [N, H, W, 3] at 28, 64,
128 and 224 px) and six 3D ones (volumes [N, D, H, W] with D = H = W at 28
and 64 voxels). Both go through the same metadata record; ``ndim`` and
``sizes`` say which kind a dataset is and where it exists, so every consumer
asks the record instead of matching on a "3d" suffix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from fmeval.errors import DataError
from fmeval.tasks import BINARY, MULTICLASS, MULTILABEL, ORDINAL, TASKS, is_multilabel  # noqa: F401

SIZES = (28, 64, 128, 224)  # every size MedMNIST+ publishes (2D); 3D stops at 64
SPLITS = ("train", "val", "test")



@functools.lru_cache(maxsize=1)
def _medmnist_info() -> dict:
    """medmnist's INFO table, read from its ``info.py`` alone.

    ``import medmnist`` imports its Evaluator and with it scikit-learn and SciPy
    (2-4 s on a cold start), which looking up a dataset never needs: a cached
    re-run, ``fmeval ls``, study planning. The module is loaded from the installed
    package's own file, so the table is medmnist's, whatever its version.
    """
    import importlib.util
    import sys

    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        import medmnist  # not installed as a package folder: the import says what is wrong

        return medmnist.INFO
    path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("fmeval._medmnist_info", path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO


def _is_3d(flag: str) -> bool:
    # medmnist's own naming (python_class "...MNIST3D"), the only place the suffix is read
    return flag.endswith("3d")


def flags_2d() -> list[str]:
    """The 12 2D datasets, in medmnist's order."""
    return [f for f in _medmnist_info() if not _is_3d(f)]


def flags_3d() -> list[str]:
    """The 6 3D (volume) datasets, in medmnist's order."""
    return [f for f in _medmnist_info() if _is_3d(f)]


def all_flags() -> list[str]:
    """All 18 datasets: the 2D ones first, then the 3D ones."""
    return flags_2d() + flags_3d()


def _sizes(raw: dict) -> tuple[int, ...]:
    """Sizes with a published file: 28 (``url``) plus every ``url_{size}`` key."""
    extra = sorted(int(k[4:]) for k in raw if k.startswith("url_") and k[4:].isdigit())
    return (28, *extra)


@dataclass(frozen=True)
class DatasetInfo:
    flag: str
    task: str
    labels: tuple[str, ...]  # class (or, for multi-label, finding) names by index
    n_channels: int
    n_samples: dict[str, int]
    license: str
    description: str
    ndim: int = 2  # 2: images [N, H, W(, 3)]; 3: volumes [N, D, H, W]
    sizes: tuple[int, ...] = SIZES  # sizes at which an official file exists

    @property
    def is_volume(self) -> bool:
        return self.ndim == 3

    def image_shape(self, size: int) -> tuple[int, ...]:
        """Shape of one sample at ``size``: (S, S), (S, S, 3) or (S, S, S)."""
        if self.ndim == 3:
            return (size, size, size)
        return (size, size) if self.n_channels == 1 else (size, size, 3)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def label_width(self) -> int:
        """Columns of the label array: one per finding for multi-label, else 1."""
        return self.n_classes if is_multilabel(self.task) else 1

    def md5(self, size: int) -> str | None:
        return _medmnist_info()[self.flag].get("MD5" if size == 28 else f"MD5_{size}")

    def url(self, size: int) -> str | None:
        return _medmnist_info()[self.flag].get("url" if size == 28 else f"url_{size}")

    @staticmethod
    def filename(flag: str, size: int) -> str:
        return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def dataset_info(flag: str) -> DatasetInfo:
    """Metadata of a MedMNIST dataset (2D or 3D); unknown names get a suggestion."""
    from fmeval.registry import Registry

    known = all_flags()
    key = flag.lower()
    if key not in known:
        reg: Registry[str] = Registry("dataset", DataError)
        for f in known:
            reg.add(f, f)
        reg.get(key)  # raises with close matches
    raw = _medmnist_info()[key]
    labels = tuple(raw["label"][str(i)] for i in range(len(raw["label"])))
    return DatasetInfo(
        flag=key,
        task=raw["task"],
        labels=labels,
        n_channels=int(raw["n_channels"]),
        n_samples={k: int(v) for k, v in raw["n_samples"].items()},
        license=raw.get("license", ""),
        description=raw.get("description", ""),
        ndim=3 if _is_3d(key) else 2,
        sizes=_sizes(raw),
    )
