"""Hugging Face datasets as a source: ``hf-dataset:<repo>[@revision][/<config>]`` or a
folder written by ``datasets.save_to_disk``.

The optional ``datasets`` package (``pip install 'fmeval[data]'``) reads them.
The image column is the card's ``path_column`` or the first column of type
``Image``; the label column(s) the card's ``label_columns``, else the first
``ClassLabel`` column, else ``label``/``labels``. Class names come from the
card, else from the ``ClassLabel`` feature. Splits named ``train``,
``validation``/``val``/``valid`` and ``test`` are used as given; a dataset
without splits has them drawn. Images are taken as their stored bytes and
decoded by fmeval (same rules and checks as files); the dataset's fingerprint
keys the decoded-array cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fmeval.data.card import DatasetCard
from fmeval.data.scan import LABEL_COLUMNS, SPLIT_NAMES, Manifest
from fmeval.errors import DataError

PREFIX = "hf-dataset:"
_SPEC = re.compile(r"^hf-dataset:(?P<repo>[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?)(?:@(?P<rev>[\w.\-]+))?(?:/(?P<config>[\w.\-]+))?$")


def is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder: a DatasetDict (``dataset_dict.json``) or one Dataset (``state.json``)."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading Hugging Face datasets needs the optional `datasets` package: "
                        "pip install 'fmeval[data]'.") from None
    return datasets


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    m = _SPEC.match(spec)
    if not m:
        raise DataError(f"{spec!r} is not hf-dataset:<owner/name>[@revision][/<config>].")
    return m.group("repo"), m.group("rev"), m.group("config")


def load(spec: str):
    """A DatasetDict or Dataset (a hub download needs a network; revision and config recorded)."""
    ds = _datasets()
    if spec.startswith(PREFIX):
        repo, rev, config = parse_spec(spec)
        try:
            return ds.load_dataset(repo, config, revision=rev)
        except Exception as exc:  # the hub's errors are many; one line says which dataset failed
            raise DataError(f"{spec}: cannot load ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).") from None
    try:
        return ds.load_from_disk(spec)
    except Exception as exc:
        raise DataError(f"{spec}: not a readable save_to_disk folder ({str(exc).splitlines()[0]}).") from None


def scan_hf(spec: str, card: DatasetCard | None) -> Manifest:
    ds = _datasets()
    obj = load(spec)
    parts = dict(obj) if isinstance(obj, ds.DatasetDict) else {None: obj}
    unknown = [k for k in parts if k is not None and k.lower() not in SPLIT_NAMES]
    if unknown:
        raise DataError(f"{spec}: split(s) {', '.join(unknown)} are not train, validation/val or test.")
    first = next(iter(parts.values()))
    features = first.features
    img_col = (card.path_column if card and card.path_column else
               next((c for c, f in features.items() if isinstance(f, ds.Image)), None))
    if img_col not in features:
        raise DataError(f"{spec}: no image column (columns: {', '.join(features)}); set path_column in the card.")
    if card and card.label_columns:
        lcols = list(card.label_columns)
    else:
        lcols = [next((c for c, f in features.items() if isinstance(f, ds.ClassLabel)), None)
                 or next((c for c in features if c.lower() in (*LABEL_COLUMNS, "labels")), None)]
    if None in lcols or any(c not in features for c in lcols):
        raise DataError(f"{spec}: no label column (columns: {', '.join(features)}); set label_columns in the card.")
    feat = features[lcols[0]]
    if card is not None:
        classes, task = card.classes, card.task
    elif len(lcols) > 1:
        classes, task = tuple(lcols), "multi-label"
    elif isinstance(feat, ds.ClassLabel):
        classes = tuple(feat.names)
        task = "binary" if len(classes) == 2 else "multi-class"
    else:
        raise DataError(f"{spec}: label column {lcols[0]!r} has no class names; give them in a card (fmeval.yaml).")
    payload, labels, splits, paths, fps = [], [], [], [], []
    for split, part in parts.items():
        fps.append(f"{split}:{part._fingerprint}:{len(part)}")
        raw = part.cast_column(img_col, ds.Image(decode=False))
        table = raw.select_columns([img_col, *lcols]).to_dict()
        payload += [(x or {}).get("bytes") or _read(x) for x in table[img_col]]
        labels.append(np.stack([np.asarray(table[c], dtype=np.int64) for c in lcols], axis=1))
        name = SPLIT_NAMES[split.lower()] if split else None
        splits += [name] * len(part)
        paths += [f"{split or 'data'} row {i}" for i in range(len(part))]
    y = np.concatenate(labels) if labels else np.zeros((0, len(lcols)), np.int64)
    problems = []
    hi = 2 if task == "multi-label" else len(classes)
    bad = np.flatnonzero((y < 0).any(axis=1) | (y >= hi).any(axis=1))
    problems += [f"{paths[i]}: label {y[i].tolist()} is outside the {len(classes)} classes." for i in bad[:20]]
    return Manifest(root=Path("."), paths=paths, labels=y, splits=splits, where=paths, classes=tuple(classes),
                    task=task, problems=problems, payload=payload, fingerprint="|".join(fps))


def _read(entry) -> bytes:
    """An image stored as a path only (a dataset built from local files)."""
    path = (entry or {}).get("path")
    if not path:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""
