"""The decoded-array cache: a user dataset's splits as uint8 arrays, decoded once.

The key is the manifest's content (every file's relative path, byte size and
mtime_ns, its label, split and group) plus the preprocessing (size, conversion
rule, drawn split settings), so a later run with the same files reads the
arrays (memory-mapped) and opens no image file. The entry also keeps what
decoding found (pixel hashes' digest, check warnings, the content hash), so a
cached run reports the same.

What a cached run verifies, precisely: it lists every folder (one ``scandir``
each) and stats every file it names (size and mtime in nanoseconds); no file is
opened. A file added, removed, renamed, replaced (a new file moved over it) or
rewritten in place changes its path, size or mtime, so the key changes and the
arrays are decoded again. A folder's own mtime is NOT used as a shortcut: it
changes when entries are added or removed, not when a file's content is
rewritten. The one change not seen is a rewrite that keeps the byte size AND
the mtime: a tool that sets mtime back (``touch -d``, ``cp -p`` of another file
of equal size), or a same-size rewrite within the filesystem's timestamp tick
(1-10 ms) of the first decode reading that file. ``fmeval cache clear``
removes the entries (see :mod:`fmeval.cache`).

Entries live under ``<cache>/decoded/<hh>/<key>/`` (deeper than the feature
cache's ``<kind>/<hh>/<digest>`` files, which its housekeeping globs), written
to a temporary folder and renamed into place: a killed run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from fmeval.data.info import SPLITS
from fmeval.settings import cache_root  # the one rule for the cache folder (re-exported)

FORMAT = 2  # 2: identity hashed as blocks (paths, stats, labels, splits, groups)


def decoded_root() -> Path:
    return cache_root() / "decoded"


def manifest_key(identity: list[tuple[str, bytes]], preprocessing: dict) -> str:
    """SHA-256 of the preprocessing and the identity blocks, each framed by its name and length
    (so no two different listings hash alike by moving bytes across a block boundary)."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **preprocessing}, sort_keys=True, default=str).encode())
    for name, data in identity:
        h.update(f"\n{name}:{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def _entry(key: str) -> Path:
    return decoded_root() / key[:2] / key


def load(key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """(images per split, memory-mapped; meta) or None when absent or damaged.

    Copy-on-write maps: torch takes them without a read-only warning, and nothing
    a consumer does to an array reaches the file.
    """
    folder = _entry(key)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = {s: np.load(folder / f"{s}_images.npy", mmap_mode="c", allow_pickle=False) for s in SPLITS}
    except (OSError, ValueError):
        return None
    if any(images[s].shape[0] != meta["n"][s] for s in SPLITS):
        return None
    return images, meta


class Writer:
    """A new entry, written in a temporary folder and renamed into place by :meth:`commit`;
    leaving the block without a commit (an error, a failed check) removes every trace.
    ``enabled=False`` (``fmeval data check``) hands out in-memory arrays and writes nothing."""

    def __init__(self, key: str, enabled: bool = True) -> None:
        self.key, self.enabled = key, enabled
        self.folder = _entry(key)
        self.tmp = self.folder.with_name(f".{key}.{os.getpid()}.tmp")
        self.arrays: dict[str, np.ndarray] = {}

    def __enter__(self) -> "Writer":
        if self.enabled:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
        return self

    def array(self, split: str, shape: tuple[int, ...]) -> np.ndarray:
        if not self.enabled:
            return np.empty(shape, dtype=np.uint8)
        arr = np.lib.format.open_memmap(self.tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=shape)
        self.arrays[split] = arr
        return arr

    def commit(self, meta: dict) -> None:
        if not self.enabled:
            return
        for arr in self.arrays.values():
            arr.flush()
        (self.tmp / "meta.json").write_text(json.dumps({**meta, "n": {s: len(a) for s, a in self.arrays.items()}}))
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.tmp, self.folder)

    def __exit__(self, *exc) -> None:
        self.arrays.clear()
        if self.enabled:
            shutil.rmtree(self.tmp, ignore_errors=True)
