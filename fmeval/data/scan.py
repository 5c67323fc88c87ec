"""Reading what a user's data says before any pixel is decoded: files, labels, splits, groups.

Two layouts become one :class:`Manifest` (a row per image):

- an **image folder**, ``ROOT/{train,val,test}/<class>/*`` or ``ROOT/<class>/*``;
  rows are ordered by file name within a split (the class folder breaks ties),
  so files named by their index keep the order they were exported in;
- a **manifest** (CSV or Parquet): a path column (relative to the manifest),
  a label column (class name or index) or several 0/1 columns (multi-label),
  optional split and group columns; rows keep the file's order.

Problems found here (an empty class folder, a label that is not a class, a
missing file) are collected as one line each, naming the folder or the row.
"""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmeval.data.card import DatasetCard
from fmeval.data.decode import IMAGE_SUFFIXES, is_volume_file
from fmeval.data.info import SPLITS
from fmeval.errors import DataError

PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "filepath")
LABEL_COLUMNS = ("label", "class", "target", "y")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


@dataclass
class Manifest:
    """One row per image; ``where[i]`` names the row in messages."""

    root: Path  # paths are relative to it
    paths: list[str]
    labels: np.ndarray  # int64 [N, width]
    splits: list[str | None]
    where: list[str]
    classes: tuple[str, ...]
    task: str  # card short name
    groups: list[str] | None = None
    problems: list[str] = field(default_factory=list)  # errors: one line each
    notes: list[str] = field(default_factory=list)  # warnings: one line each
    # in-memory sources (Hugging Face datasets): encoded image bytes per row, and what identifies them
    payload: list[bytes] | None = None
    fingerprint: str | None = None
    # int64 [N, 2] (bytes, mtime_ns) per row when the scan already stat'ed the files (folders), else None
    stats: np.ndarray | None = None
    ndim: int = 2  # 3: every row is a NIfTI volume (manifests only)

    def file(self, i: int) -> str:
        return f"{self.root}{os.sep}{self.paths[i]}"  # str: pathlib costs more than the stat on 10k files


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _images_in(folder: Path) -> tuple[list[str], list[int], list[int]]:
    """(names, bytes, mtime_ns) of the image files in ``folder``: one scandir and one stat per image,
    nothing else per file (the identity the decoded-array cache is keyed by; on a cached run this
    listing is most of the time spent, so it avoids pathlib and per-file helpers)."""
    names: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:  # scandir on the folder's descriptor: each stat is fstatat(fd, name), no walk of the full path
        with os.scandir(fd) as it:
            for e in it:
                n = e.name
                if n[0] != "." and n.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                    st = e.stat()
                    names.append(n)
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime_ns)
    finally:
        os.close(fd)
    return names, sizes, mtimes


def _suggest(value: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def scan_folder(root: Path, card: DatasetCard | None) -> Manifest:
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    extra = [p.name for p in root.iterdir() if p.is_dir() and p.name in SPLIT_NAMES and p.name not in SPLITS]
    if extra:
        raise DataError(f"{root}: split folders are named train, val and test; found {', '.join(sorted(extra))}.")
    bases = [(s.name, s) for s in split_dirs] if split_dirs else [(None, root)]
    found: dict[str, list[Path]] = {}
    problems: list[str] = []
    class_dirs: list[tuple[str | None, Path]] = []
    for split, base in bases:
        subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = [p.name for p in base.iterdir() if _is_image(p)]
        if loose:
            problems.append(f"{base}: {len(loose)} image(s) outside a class folder (e.g. {loose[0]}); "
                            "put each image in a folder named by its class.")
        for d in subdirs:
            class_dirs.append((split, d))
            found.setdefault(d.name, [])
    names = tuple(sorted(found))
    if card is not None:
        classes = card.classes
    else:
        classes = names
    if not classes:
        raise DataError(f"{root} has no class folders: expected ROOT/<class>/* or ROOT/{{train,val,test}}/<class>/*.")
    if card is not None and card.task == "multi-label":
        raise DataError(f"{root}: a folder of class folders is single-label; describe multi-label data with a manifest.")
    names: list[str] = []
    paths: list[str] = []
    split_of: list[int] = []  # index in SPLITS (0 when no split folders)
    label_of: list[int] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for split, d in class_dirs:
        rel = d.relative_to(root)
        if d.name not in classes:
            problems.append(f"{rel}: class folder {d.name!r} is not one of the card's classes "
                            f"({', '.join(classes)}){_suggest(d.name, classes)}.")
            continue
        n, size, mtime = _images_in(d)
        if not n:
            problems.append(f"{rel}: class folder has no images ({', '.join(IMAGE_SUFFIXES)}).")
            continue
        prefix = f"{rel}{os.sep}"
        names += n
        paths += [prefix + name for name in n]
        split_of += [SPLITS.index(split) if split else 0] * len(n)
        label_of += [classes.index(d.name)] * len(n)
        sizes += size
        mtimes += mtime
    # rows ordered by split, then file name, then class (one vectorised sort: no per-row key calls)
    order = np.lexsort((np.asarray(label_of, dtype=np.int64), np.asarray(names, dtype=str),
                        np.asarray(split_of, dtype=np.int64))) if names else np.zeros(0, dtype=np.int64)
    paths = [paths[i] for i in order.tolist()]
    splits_named = [SPLITS[k] for k in np.asarray(split_of, dtype=np.int64)[order].tolist()] if split_dirs else [None] * len(paths)
    task = card.task if card is not None else ("binary" if len(classes) == 2 else "multi-class")
    labels = np.asarray(label_of, dtype=np.int64)[order].reshape(-1, 1)
    stats = np.stack([np.asarray(sizes, dtype=np.int64), np.asarray(mtimes, dtype=np.int64)], axis=1)[order]
    return Manifest(root=root, paths=paths, labels=labels, splits=splits_named, where=paths,
                    classes=tuple(classes), task=task, problems=problems, stats=stats)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV (stdlib) or Parquet (pyarrow, optional) manifest, every cell as text
    (a Parquet integer label 1 reads as "1", like the same CSV cell; nulls as "")."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'fmeval[data]'): {exc}.") from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several kinds for a damaged file
            raise DataError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]}).") from None
        cols = [str(c) for c in table.column_names]
        return cols, [{c: _cell(v) for c, v in r.items()} for r in table.to_pylist()]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            cols = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest {path} ({exc}).") from None
    return cols, rows


def _cell(v) -> str:
    """A typed Parquet cell as the text a CSV would hold: null "", bool "0"/"1", 2.0 "2"."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _pick(cols: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in cols:
            raise DataError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(cols)}){_suggest(wanted, tuple(cols))}.")
        return wanted
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in candidates if c in lower), None)


def scan_manifest(path: Path, card: DatasetCard | None, group_by: str | None = None) -> Manifest:
    cols, rows = read_table(path)
    if not rows:
        raise DataError(f"manifest {path} has no rows.")
    pcol = _pick(cols, card.path_column if card else None, PATH_COLUMNS, "path", path)
    if pcol is None:
        raise DataError(f"{path}: no path column; name one of {', '.join(PATH_COLUMNS)} or set path_column in the card.")
    scol = _pick(cols, card.split_column if card else None, ("split",), "split", path)
    gcol = _pick(cols, group_by or (card.group_column if card else None), (), "group", path)
    used = {pcol, scol, gcol}
    lcols = list(card.label_columns) if card and card.label_columns else None
    if lcols is None:
        single = _pick(cols, None, LABEL_COLUMNS, "label", path)
        lcols = [single] if single else [c for c in cols if c not in used]
    for c in lcols:
        if c not in cols:
            raise DataError(f"{path}: no label column {c!r} (columns: {', '.join(cols)}){_suggest(c, tuple(cols))}.")
    if not lcols:
        raise DataError(f"{path}: no label column; name it 'label' or set label_columns in the card.")
    where = [f"{path.name} row {i + 2}" for i in range(len(rows))]  # row 1 is the header
    problems: list[str] = []
    if len(lcols) > 1:
        classes = card.classes if card else tuple(lcols)
        task = "multi-label"
        labels = np.zeros((len(rows), len(lcols)), dtype=np.int64)
        for i, r in enumerate(rows):
            for j, c in enumerate(lcols):
                v = (r.get(c) or "").strip()
                if v not in ("0", "1", "0.0", "1.0"):
                    problems.append(f"{where[i]}: {c} = {v!r}, expected 0 or 1.")
                else:
                    labels[i, j] = int(float(v))
    else:
        values = [(r.get(lcols[0]) or "").strip() for r in rows]
        classes = card.classes if card else _classes_of(values)
        task = card.task if card else ("binary" if len(classes) == 2 else "multi-class")
        labels = np.zeros((len(rows), 1), dtype=np.int64)
        for i, v in enumerate(values):
            k = _label_index(v, classes)
            if k is None:
                problems.append(f"{where[i]}: label {v!r} is not one of the classes ({', '.join(classes)})"
                                f"{_suggest(v, classes)}.")
            else:
                labels[i, 0] = k
    splits: list[str | None] = []
    for i, r in enumerate(rows):
        raw = (r.get(scol) or "").strip().lower() if scol else ""
        if raw and raw not in SPLIT_NAMES:
            problems.append(f"{where[i]}: split {raw!r} is not train, val or test.")
        splits.append(SPLIT_NAMES.get(raw) if raw else None)
    paths = [(r.get(pcol) or "").strip() for r in rows]
    for i, p in enumerate(paths):
        if not p:
            problems.append(f"{where[i]}: empty {pcol!r}.")
    groups = [(r.get(gcol) or "").strip() for r in rows] if gcol else None
    return Manifest(root=path.parent, paths=paths, labels=labels, splits=splits, where=where,
                    classes=tuple(classes), task=task, groups=groups, problems=problems, ndim=_ndim(path, paths))


def _ndim(path: Path, paths: list[str]) -> int:
    """3 when every row is a NIfTI volume, 2 when none is; a mix is refused before any decoding."""
    vols = sum(is_volume_file(p) for p in paths)
    if vols and vols != len(paths):
        raise DataError(f"{path}: {vols} of {len(paths)} rows are NIfTI volumes; a dataset holds "
                        "2D images or 3D volumes, not both.")
    return 3 if vols else 2


def _classes_of(values: list[str]) -> tuple[str, ...]:
    """Without a card: integer labels are indices 0..max; names are sorted."""
    uniq = sorted(set(v for v in values if v))
    if uniq and all(v.isdigit() for v in uniq):
        return tuple(str(i) for i in range(max(int(v) for v in uniq) + 1))
    return tuple(uniq)


def _label_index(value: str, classes: tuple[str, ...]) -> int | None:
    if value in classes:
        return classes.index(value)
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    return None
