"""One resolver from a ``--dataset`` string to the dataset a run reads.

Nothing above ``data/`` parses dataset strings. The string is tried against
the source kinds in :data:`SOURCES`, in order, and the first that claims it
opens it:

=============== ============================================= ==================
kind            ``--dataset``                                 becomes
=============== ============================================= ==================
medmnist        a MedMNIST flag (``pneumoniamnist``)           :class:`MedMNIST`
npz             ``private.npz`` in the MedMNIST layout + card  :class:`MedMNIST`
manifest        ``labels.csv`` / ``labels.parquet``            :class:`LocalDataset`
hf-dataset      ``hf-dataset:<owner/name>[@rev][/<config>]``   :class:`LocalDataset`
                or a ``save_to_disk`` folder
card            ``mine.yaml``, a card with ``source:``         :class:`LocalDataset`
                ``hf-dataset:...`` (a hub dataset with a card)
folder          ``ROOT/{train,val,test}/<class>/*`` or         :class:`LocalDataset`
                ``ROOT/<class>/*``
=============== ============================================= ==================

A MedMNIST name wins over a folder of the same name (``./pneumoniamnist``
is a path: give it with ``./``). Both result types answer the same questions
(see :mod:`fmeval.data.local`). DICOM series are not a source (out of scope).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fmeval.data import hf
from fmeval.data.card import CARD_SUFFIXES, DatasetCard, card_path, read_card
from fmeval.data.info import all_flags, dataset_info
from fmeval.data.local import LocalDataset, SourceOptions, build
from fmeval.data.npz import MedMNIST, load_dataset
from fmeval.data.scan import Manifest, scan_folder, scan_manifest
from fmeval.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".parquet")


def _is_flag(spec: str) -> bool:
    return spec.lower() in all_flags()


def _as_path(spec: str) -> Path | None:
    p = Path(spec).expanduser()
    return p if p.exists() else None


@dataclass(frozen=True)
class SourceKind:
    name: str
    claims: Callable[[str], bool]
    describe: str


SOURCES: tuple[SourceKind, ...] = (
    SourceKind("medmnist", _is_flag, "a MedMNIST name (fmeval ls datasets)"),
    SourceKind("npz", lambda s: bool((p := _as_path(s)) and p.is_file() and p.suffix == ".npz"),
               "an npz in the MedMNIST layout with a card beside it"),
    SourceKind("manifest", lambda s: bool((p := _as_path(s)) and p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES),
               "a CSV or Parquet manifest"),
    SourceKind("hf-dataset", lambda s: s.startswith(hf.PREFIX) or bool((p := _as_path(s)) and hf.is_saved_dataset(p)),
               "a Hugging Face dataset (hf-dataset:<repo> or a save_to_disk folder)"),
    SourceKind("card", lambda s: bool((p := _as_path(s)) and p.is_file() and p.suffix.lower() in CARD_SUFFIXES),
               "a dataset card whose source names a Hugging Face hub dataset"),
    SourceKind("folder", lambda s: bool((p := _as_path(s)) and p.is_dir()), "an image folder"),
)


def source_kind(spec: str) -> SourceKind:
    """The kind that claims ``spec``; else one line saying what it could have been."""
    for kind in SOURCES:
        if kind.claims(spec):
            return kind
    p = Path(spec).expanduser()
    if p.is_file():
        raise DataError(f"{spec} is a file fmeval cannot read as a dataset; use a folder, a .csv/.parquet "
                        "manifest or a MedMNIST-layout .npz.")
    if any(ch in spec for ch in "/\\") or spec.startswith("."):
        raise DataError(f"dataset path {spec} does not exist.")
    try:
        dataset_info(spec)  # the registry's "unknown dataset 'x'. Did you mean ...?" line
    except DataError as exc:
        raise DataError(f"{exc} Or give a path: an image folder, a CSV/Parquet manifest or an npz with a card.") from None
    raise DataError(f"unknown dataset {spec!r}.")  # pragma: no cover - dataset_info raised


def check_spec(spec: str) -> None:
    """Cheap check at config time: a known name or an existing path (nothing read)."""
    source_kind(spec)
    if spec.startswith(hf.PREFIX):
        hf.parse_spec(spec)


def _card_or_none(location: Path) -> tuple[DatasetCard | None, Path | None]:
    cp = card_path(location)
    return (read_card(cp), cp) if cp.exists() else (None, None)


def _checked_name(name: str, where: Path) -> str:
    if _is_flag(name):
        raise DataError(f"{where}: the dataset name {name!r} is a MedMNIST name; set another name in the card "
                        "(fmeval data init) so the two are never mixed up on the leaderboard.")
    return name


def scan(spec: str, group_by: str | None = None) -> tuple[str, Path, Manifest, DatasetCard, Path | None, list[str]]:
    """(kind, path, manifest, card, card file, notes) of a folder, manifest or Hugging Face source."""
    kind = source_kind(spec)
    hub = spec.startswith(hf.PREFIX)
    path = Path(hf.parse_spec(spec)[0]) if hub else Path(spec).expanduser().resolve()
    card, cfile = (None, None) if hub else _card_or_none(path)
    notes: list[str] = []
    if kind.name == "card":  # a card naming a hub dataset: the card file is the dataset's address
        if not card.source:
            raise DataError(f"{path}: a card given as --dataset names its data with `source: hf-dataset:<owner/name>`; "
                            "a folder's or manifest's card sits beside it: give the folder or the manifest.")
        manifest = hf.scan_hf(card.source, card)
    elif kind.name == "hf-dataset":
        manifest = hf.scan_hf(spec if hub else str(path), card)
    elif kind.name == "manifest":
        manifest = scan_manifest(path, card, group_by)
    elif kind.name == "folder":
        manifest = scan_folder(path, card)
    else:
        raise DataError(f"{spec} is {kind.describe}, not a folder or manifest.")
    if card is None:
        default = path.name if hub or path.is_dir() else path.stem
        card = DatasetCard(name=default, task=manifest.task, classes=manifest.classes or ("?", "?"))
        then = f" ({card.name}.yaml here; then give that file as --dataset)" if hub else ""
        notes.append(f"no dataset card ({'a card file' if hub else card_path(path).name}): name {card.name!r}, task "
                     f"{card.task} and classes {', '.join(card.classes)} were inferred; `fmeval data init {spec}` "
                     f"writes one to edit{then}.")
    _checked_name(card.name, path)
    return ("hf-dataset" if kind.name == "card" else kind.name), path, manifest, card, cfile, notes


def open_dataset(spec: str, size: int = 28, root: str | Path | None = None, *, download: bool = False,
                 md5: str = "warn", options: SourceOptions | None = None,
                 write: bool = True) -> MedMNIST | LocalDataset:
    """The dataset ``spec`` names, checked, at ``size``."""
    options = options or SourceOptions()
    kind = source_kind(spec)
    if kind.name in ("medmnist", "npz"):
        _fixed_splits(spec, options)
    if kind.name == "medmnist":
        return load_dataset(spec, size, root, download=download, md5=md5)
    if kind.name == "npz":
        return open_npz(Path(spec).expanduser().resolve(), size)
    kind_name, path, manifest, card, cfile, notes = scan(spec, options.group_by)
    origin = card.source or (spec if spec.startswith(hf.PREFIX) else None)
    return build(manifest, card, kind=kind_name, path=path, card_file=str(cfile) if cfile else None, size=size,
                 options=options, write=write, notes=tuple(notes), origin=origin)


def reopen(record: dict) -> tuple[str, SourceOptions] | None:
    """How a run's user dataset opens again, from its report's dataset record: the ``--dataset``
    (its path; a hub dataset without a card file: its ``hf-dataset:`` address) and the options that
    drew its splits. None for a MedMNIST name (its flag is the address)."""
    flag = str(record.get("flag", ""))
    if _is_flag(flag):
        return None
    spec = record.get("origin") if record.get("origin") and not record.get("card") else record.get("path") or flag
    split = record.get("split") or {}
    if not split.get("drawn"):
        return str(spec), SourceOptions()
    ratios = split.get("ratios")
    return str(spec), SourceOptions(split_ratios=tuple(float(r) for r in ratios) if ratios else None,
                                    group_by=split.get("group_by") or None, split_seed=int(split.get("seed") or 0))


def _fixed_splits(spec: str, options: SourceOptions) -> None:
    """Split options on a dataset whose splits are fixed are a mistake, not a no-op."""
    given = [flag for flag, value, default in (("--split-ratios", options.split_ratios, None),
                                                ("--group-by", options.group_by, None),
                                                ("--split-seed", options.split_seed, 0)) if value != default]
    if given:
        raise DataError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to your own data (folders, "
                        f"manifests); {spec} comes with its train/val/test splits.")


def open_npz(path: Path, size: int) -> MedMNIST:
    """A private npz in the MedMNIST layout; its card (``fmeval.yaml`` or ``<stem>.yaml`` beside it)
    gives name, task and classes; its MD5 is its content hash."""
    own = path.with_suffix(".yaml")
    cp = own if own.exists() else card_path(path)
    if not cp.exists():
        raise DataError(f"{path} is not an official MedMNIST file: put a dataset card ({own.name} or "
                        f"{cp.name}) beside it with name, task and classes (fmeval data init writes one for folders).")
    card = read_card(cp)
    _checked_name(card.name, path)
    channels = _npz_channels(path)
    info = card.info(n_channels=channels, size=size)
    data = MedMNIST(info=info, size=size, path=path, md5_policy="off")
    data._npz  # fail fast on a corrupt file
    return data


def _npz_channels(path: Path) -> int:
    """1 or 3, from the header of ``train_images`` (no array is read)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as z, z.open("train_images.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
    except KeyError:
        raise DataError(f"{path} has no train_images array; expected the MedMNIST layout.") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}).") from None
    return 3 if len(shape) == 4 and shape[-1] == 3 else 1


__all__ = ["SOURCES", "SourceOptions", "LocalDataset", "open_dataset", "check_spec", "scan", "reopen"]


# -- what prompt banks ask of a dataset (fmeval.prompts), for names and paths alike ------------
def bank_key(spec: str) -> str:
    """How a prompt bank names a dataset: a MedMNIST name in lower case, else the resolved path."""
    if _is_flag(spec.strip()) or spec.startswith(hf.PREFIX):
        return spec.strip().lower() if _is_flag(spec.strip()) else spec.strip()
    return str(Path(spec.strip()).expanduser().resolve())


def _card_of(spec: str) -> tuple[DatasetCard, Path]:
    """The card of a user dataset (folder, manifest, npz), read without touching the data."""
    path = Path(spec).expanduser()
    if not path.exists():
        source_kind(spec)  # "unknown dataset 'x'. Did you mean ...?" or "path does not exist"
    cp = path.with_suffix(".yaml") if path.suffix == ".npz" and path.with_suffix(".yaml").exists() else card_path(path)
    if not cp.exists():
        raise DataError(f"{spec}: no dataset card ({cp.name}); write one with `fmeval data init`.")
    return read_card(cp), cp


def label_table(spec: str) -> dict:
    """``{"task": ..., "label": {"0": name, ...}}`` (medmnist.INFO's shape) from the INFO table
    for a MedMNIST name, else from the dataset's card (nothing else is read)."""
    from fmeval.data.info import _medmnist_info

    if _is_flag(spec.strip()):
        return _medmnist_info()[spec.strip().lower()]
    card, _ = _card_of(spec)
    return {"task": card.medmnist_task, "label": {str(i): c for i, c in enumerate(card.classes)}}


def corruption_set(spec: str):
    """The MedMNIST-C corruptions a robustness run applies to ``spec`` (see
    :class:`fmeval.data.corruptions.CorruptionSet`): a MedMNIST name's own; a user dataset's
    card's ``corruptions_like``; else one line saying how to opt in."""
    from fmeval.data.corruptions import CorruptionSet, modality_hint

    if _is_flag(spec.strip()):
        flag = spec.strip().lower()
        return CorruptionSet(flag, f"{flag}'s own MedMNIST-C corruptions")
    try:
        card, cp = _card_of(spec)
    except DataError as exc:
        raise DataError(f"{exc} Robustness on your own data also needs `corruptions_like: <MedMNIST dataset>` "
                        "in it.") from None
    if not card.corruptions_like:
        modality = f" (its modality: {card.modality})" if card.modality else ""
        raise DataError(f"robustness on {card.name}: MedMNIST-C defines corruptions and severities per dataset; add "
                        f"`corruptions_like: <dataset>` to {cp}{modality}, naming the closest of: {modality_hint()}.")
    return CorruptionSet(card.corruptions_like, f"card {cp.name}: corruptions_like {card.corruptions_like} "
                                                f"(MedMNIST-C's {card.corruptions_like} corruptions and severity parameters)")


def default_bank(spec: str) -> Path | None:
    """A user dataset's own prompt bank: ``prompts.yaml`` beside its card (``fmeval prompts init``)."""
    if _is_flag(spec.strip()) or spec.startswith(hf.PREFIX):
        return None
    path = Path(spec).expanduser()
    if path.suffix.lower() in CARD_SUFFIXES and path.is_file():  # a hub dataset's card file: one bank per card
        return path.with_name(f"{path.stem}.prompts.yaml")
    return card_path(path).with_name("prompts.yaml")
