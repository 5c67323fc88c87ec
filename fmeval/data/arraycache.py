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
import re
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


# -- housekeeping (``fmeval cache clear``) --------------------------------------------------
_KEY = re.compile(r"^[0-9a-f]{64}$")
_TMP = re.compile(r"^\.(?P<key>[0-9a-f]{64})\.(?P<pid>\d+)\.tmp$")
_ENTRY_FILES = {"meta.json", *(f"{s}_images.npy" for s in SPLITS)}
SPLIT_FILE = re.compile(r"^.+-[0-9a-f]{16}\.json$")  # <cache>/splits/<name>-<sha16>.json (kept: reports name them)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clear_decoded(dry_run: bool = False) -> tuple[int, int, list[str]]:
    """Remove every decoded-array entry and the temporaries of killed writes: (entries, files, busy
    folder names); ``dry_run`` only counts.

    Only what this module writes is touched: ``decoded/<hh>/<key>/`` folders (never through a
    symlink) holding nothing but ``meta.json`` and ``{split}_images.npy``, and ``.<key>.<pid>.tmp``
    folders whose process is gone; a temporary of a live process (a run decoding now) is kept
    and counted as busy. A run reading an entry keeps its memory maps (POSIX unlink semantics).
    """
    entries = files = 0
    busy: list[str] = []
    root = decoded_root()
    for hh in _real_dirs(root):
        for d in _real_dirs(hh):
            tmp = _TMP.match(d.name)
            if tmp and tmp["key"][:2] == hh.name:
                if _alive(int(tmp["pid"])):
                    busy.append(d.name)
                    continue
            elif not (_KEY.match(d.name) and d.name[:2] == hh.name):
                continue
            names = {e.name: e for e in os.scandir(d)}
            if any(n not in _ENTRY_FILES or not e.is_file(follow_symlinks=False) for n, e in names.items()):
                continue  # something fmeval did not write: leave the folder alone
            files += len(names)
            entries += 0 if tmp else 1
            if not dry_run:
                for n in names:
                    (d / n).unlink(missing_ok=True)
                d.rmdir()
    return entries, files, busy


def _real_dirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def split_files() -> list[Path]:
    """The split index files fmeval wrote (kept by ``cache clear``: reports refer to them by path)."""
    folder = cache_root() / "splits"
    return sorted(Path(e.path) for e in _scandir(folder) if SPLIT_FILE.match(e.name) and e.is_file(follow_symlinks=False))


def _scandir(folder: Path) -> list:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []
