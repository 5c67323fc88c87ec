"""Dataset metadata, taken from ``medmnist.INFO`` (never re-typed by hand)."""

from __future__ import annotations

from dataclasses import dataclass

from fmeval.errors import DataError

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")

BINARY = "binary-class"
MULTICLASS = "multi-class"
MULTILABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (BINARY, MULTICLASS, MULTILABEL, ORDINAL)


def is_multilabel(task: str) -> bool:
    return task == MULTILABEL


def _medmnist_info() -> dict:
    import medmnist

    return medmnist.INFO


def flags_2d() -> list[str]:
    """The 12 2D datasets (3D volumes are out of scope for image encoders)."""
    return [f for f in _medmnist_info() if not f.endswith("3d")]


@dataclass(frozen=True)
class DatasetInfo:
    flag: str
    task: str
    labels: tuple[str, ...]  # class (or, for multi-label, finding) names by index
    n_channels: int
    n_samples: dict[str, int]
    license: str
    description: str

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
    """Metadata of a 2D MedMNIST dataset; unknown names get a suggestion."""
    from fmeval.registry import Registry

    known = flags_2d()
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
    )
