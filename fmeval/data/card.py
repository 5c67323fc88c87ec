"""The dataset card: what a user's data is, written beside it as ``fmeval.yaml``.

MedMNIST datasets take name, task and class names from ``medmnist.INFO``; a
user's folder, manifest or Hugging Face dataset has no such table, so the card
is it. Class names come from the card (in label order) into reports, confusion
matrices and prompt banks; the card's name is the dataset's name on the
leaderboard. ``fmeval data init PATH`` writes a starter card from what it finds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from fmeval.data.info import BINARY, MULTICLASS, MULTILABEL, ORDINAL, DatasetInfo
from fmeval.errors import DataError

CARD_FILE = "fmeval.yaml"

#: The card's short task names -> medmnist's task strings (the ones every mode dispatches on).
TASKS = {"binary": BINARY, "multi-class": MULTICLASS, "multi-label": MULTILABEL, "ordinal": ORDINAL}


@dataclass(frozen=True)
class CardInfo(DatasetInfo):
    """Metadata of a user dataset: no official file, so no official MD5 or URL."""

    def md5(self, size: int) -> str | None:
        return None

    def url(self, size: int) -> str | None:
        return None


@dataclass(frozen=True)
class DatasetCard:
    name: str
    task: str  # one of TASKS' keys
    classes: tuple[str, ...]  # class (multi-label: finding) names, in label order
    modality: str = ""
    license: str = ""
    splits: str = ""  # how the splits were made (provenance, free text)
    description: str = ""
    # the MedMNIST-C dataset whose corruptions and severity parameters `fmeval robustness` applies
    # (MedMNIST-C defines them per dataset; a user's data names the closest one, nothing is guessed)
    corruptions_like: str = ""
    # where the data is, for data that has no folder to hold the card: a Hugging Face hub dataset
    # (hf-dataset:<owner/name>[@revision][/<config>]); the card file itself is then the --dataset
    source: str = ""
    # manifest columns (CSV / Parquet / Hugging Face); None: detected
    path_column: str | None = None
    label_columns: tuple[str, ...] | None = None
    split_column: str | None = None
    group_column: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"card {self.name!r}: task {self.task!r} is not one of {', '.join(TASKS)}.")
        if not self.classes:
            raise DataError(f"card {self.name!r}: no classes.")
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"card {self.name!r}: class names repeat ({', '.join(self.classes)}).")
        if self.task == "binary" and len(self.classes) != 2:
            raise DataError(f"card {self.name!r}: a binary task has 2 classes, not {len(self.classes)}.")
        if self.source and not self.source.startswith("hf-dataset:"):
            raise DataError(f"card {self.name!r}: source {self.source!r} is not hf-dataset:<owner/name>[@revision]"
                            "[/<config>] (a folder's or manifest's card sits beside it and needs no source).")

    @property
    def medmnist_task(self) -> str:
        return TASKS[self.task]

    def info(self, *, n_channels: int, size: int, ndim: int = 2) -> CardInfo:
        """The metadata record every mode reads; no official sample counts (nothing to warn against)."""
        return CardInfo(
            flag=self.name, task=self.medmnist_task, labels=tuple(self.classes), n_channels=n_channels,
            n_samples={}, license=self.license, description=self.description or self.modality,
            ndim=ndim, sizes=(size,),
        )

    def to_yaml(self) -> str:
        keep = ("name", "task", "classes", "modality", "license", "splits", "description",
                "corruptions_like")  # blanks: to fill in
        d = {k: v for k, v in asdict(self).items() if k in keep or (v not in (None, ""))}
        d["classes"] = list(self.classes)
        if self.label_columns is not None:
            d["label_columns"] = list(self.label_columns)
        return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)


_FIELDS = {"name", "task", "classes", "modality", "license", "splits", "description", "corruptions_like",
           "source", "path_column", "label_columns", "split_column", "group_column"}


def read_card(path: Path) -> DatasetCard:
    """A card file; every problem is one line naming the file."""
    from fmeval.yaml_files import read_mapping

    raw = read_mapping(path, "dataset card", DataError, "(name, task, classes, ...)")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise DataError(f"dataset card {path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}.")
    for key in ("name", "task", "classes"):
        if not raw.get(key):
            raise DataError(f"dataset card {path}: missing {key!r}.")
    classes = raw["classes"]
    if isinstance(classes, dict):  # {0: normal, 1: pneumonia}, MedMNIST's own shape
        try:
            classes = [classes[k] for k in sorted(classes, key=int)]
        except (TypeError, ValueError):
            raise DataError(f"dataset card {path}: classes must be a list or a mapping index -> name.") from None
    if not isinstance(classes, list):
        raise DataError(f"dataset card {path}: classes must be a list of names.")
    labels = raw.get("label_columns")
    if isinstance(labels, str):
        labels = [labels]
    try:
        return DatasetCard(
            name=str(raw["name"]), task=str(raw["task"]), classes=tuple(str(c) for c in classes),
            modality=str(raw.get("modality") or ""), license=str(raw.get("license") or ""),
            splits=str(raw.get("splits") or ""), description=str(raw.get("description") or ""),
            corruptions_like=str(raw.get("corruptions_like") or "").strip().lower(),
            source=str(raw.get("source") or "").strip(),
            path_column=raw.get("path_column"), label_columns=tuple(labels) if labels else None,
            split_column=raw.get("split_column"), group_column=raw.get("group_column"),
        )
    except DataError as exc:
        raise DataError(f"dataset card {path}: {str(exc).split(': ', 1)[-1]}") from None


CARD_SUFFIXES = (".yaml", ".yml")


def card_path(location: Path) -> Path:
    """Where the card of a folder or a manifest file lives (a card file given itself: that file)."""
    if location.suffix.lower() in CARD_SUFFIXES and location.is_file():
        return location
    return location / CARD_FILE if location.is_dir() else location.with_name(CARD_FILE)
