"""The cache's housekeeping: list, clear and verify what is on disk (``fmeval cache ls|clear|verify``).

Apart from :mod:`fmeval.cache.store` because a run never does any of it: a run reads and
writes one entry at a time by its key, while these walk the whole folder, touch only files
named by the cache's layout, and skip entries a running fmeval holds locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from fmeval.adapters.lazy import ADAPTER_MEMO
from fmeval.cache.entry import Rejected, key_digest, read_entry
from fmeval.data.npz import MD5_MEMO

# Memo files kept in the cache folder (fmeval.io.write_memo), removed by ``fmeval cache clear``.
# (each named by the layer that writes it: data/npz.MD5_MEMO, adapters/lazy.ADAPTER_MEMO)
MEMO_FILES = (MD5_MEMO, ADAPTER_MEMO)


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    digest: str
    key: dict
    shape: list[int]
    bytes: int
    created: str
    path: Path


@dataclass(frozen=True)
class Problem:
    """One bad thing found by :meth:`FeatureCache.verify`."""

    path: Path
    reason: str
    removed: bool = False

    def line(self) -> str:
        return f"{self.path}: {self.reason}{' (removed)' if self.removed else ''}"


@dataclass
class VerifyReport:
    ok: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass
class ClearReport:
    entries: int = 0  # complete entries removed
    files: int = 0  # files removed in all (incl. orphans, locks, temporaries)
    busy: list[str] = field(default_factory=list)  # digests a running fmeval holds
    foreign: list[Path] = field(default_factory=list)  # files fmeval did not write (kept)
    decoded: int = 0  # decoded-array entries of user datasets removed (fmeval.data.arraycache)
    split_files: int = 0  # split index files of user datasets kept (reports refer to them)


class CacheHousekeeping:
    """What :class:`fmeval.cache.FeatureCache` offers on its folder ``self.root`` as a whole."""

    root: Path

    def entries(self) -> list[CacheEntry]:
        out = []
        for stem in sorted(self._entry_files()):
            manifest_path = stem.with_suffix(".json")
            try:
                m = json.loads(manifest_path.read_text())
                if m["digest"] != stem.name:  # a manifest names only its own entry
                    continue
                out.append(
                    CacheEntry(m["kind"], m["digest"], m["key"], m["shape"], m["bytes"],
                               m["created"], manifest_path.with_suffix(".safetensors"))
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def _entry_files(self) -> dict[Path, list[Path]]:
        """``<kind>/<hh>/<digest>`` stem -> the files of that entry (incl. locks and temporaries).

        Only what the cache's layout names: real folders (a symlinked folder
        is never entered: on a shared cache it could point at anyone's files),
        then regular files named ``<digest>.safetensors|json|lock`` (or their
        temporaries) in the ``<hh>`` folder of their own digest. Everything
        else is not the cache's to count, verify or delete.
        """
        groups: dict[Path, list[Path]] = {}
        for kind in _real_subfolders(self.root):
            for hh in _real_subfolders(kind):
                try:
                    items = list(os.scandir(hh))
                except OSError:
                    continue
                for item in items:
                    m = _ENTRY_NAME.match(item.name)
                    if m and m["digest"][:2] == hh.name and item.is_file(follow_symlinks=False):
                        groups.setdefault(hh / m["digest"], []).append(Path(item.path))
        return groups

    def file_count(self) -> int:
        """Files of the cache's entries, incl. orphans, locks and temporaries, and of decoded user datasets."""
        return sum(len(files) for files in self._entry_files().values()) + self._decoded(dry_run=True)[1]

    def _decoded(self, dry_run: bool) -> tuple[int, int, list[str]]:
        """Decoded user-dataset arrays, when this cache is the one they live in (the configured root)."""
        from fmeval.data import arraycache

        if not self._holds_user_data():
            return 0, 0, []
        return arraycache.clear_decoded(dry_run=dry_run)

    def _holds_user_data(self) -> bool:
        from fmeval.data import arraycache

        return self.root.resolve() == arraycache.cache_root().resolve()

    def clear(self, match: Callable[[CacheEntry], bool] | None = None) -> int:
        """Delete entries (all, or those ``match`` selects); returns how many entries."""
        return self.clear_all().entries if match is None else self._clear_matching(match)

    def _clear_matching(self, match: Callable[[CacheEntry], bool]) -> int:
        removed = 0
        for e in self.entries():
            if match(e):
                stem = e.path.with_suffix("")
                with _try_lock(stem.with_suffix(".lock")) as free:
                    if not free:
                        continue
                    for f in (e.path.with_suffix(".json"), e.path):
                        f.unlink(missing_ok=True)
                    stem.with_suffix(".lock").unlink(missing_ok=True)
                removed += 1
        _prune_empty_dirs(self.root)
        return removed

    def clear_all(self) -> ClearReport:
        """Remove every file of the cache: entries, orphaned tensors and manifests,
        locks and the temporaries of killed writes, then the emptied folders.

        Entries a running fmeval holds locked (it is writing them) are left
        alone; files fmeval never writes are kept and listed.
        """
        report = ClearReport()
        for stem, files in self._entry_files().items():
            with _try_lock(stem.with_suffix(".lock")) as free:
                if not free:
                    report.busy.append(stem.name)
                    continue
                report.entries += stem.with_suffix(".json").exists()
                for f in files:
                    f.unlink(missing_ok=True)
                    report.files += 1
        memos = [p for name in MEMO_FILES for p in (self.root / name, (self.root / name).with_suffix(".lock"),
                                                    *self.root.glob(f".{name}.*.tmp"))]
        for f in memos:
            if f.exists():
                f.unlink()
                report.files += 1
        report.decoded, n_files, busy = self._decoded(dry_run=False)
        report.files += n_files
        report.busy += busy
        _prune_empty_dirs(self.root, include_root=True)
        if self.root.exists():
            from fmeval.data.arraycache import split_files

            kept = set(split_files()) if self._holds_user_data() else set()
            report.split_files = len(kept)
            report.foreign = sorted(p for p in self.root.rglob("*") if p.is_file() and p not in kept)
        return report

    def verify(self, *, remove: bool = True) -> VerifyReport:
        """Check every entry (manifest, key, shape, dtype, content hash).

        Bad entries, orphaned tensors and manifests, and temporaries of killed
        writes are reported (and removed unless ``remove=False``). Entries a
        running fmeval holds locked are skipped: they are being written.
        """
        report = VerifyReport()
        for stem, files in sorted(self._entry_files().items()):
            with _try_lock(stem.with_suffix(".lock")) as free:
                if not free:
                    continue
                temps = [f for f in files if f.suffix == ".tmp"]
                if temps:  # debris of a killed write; the entry itself may be fine
                    if remove:
                        for f in temps:
                            f.unlink(missing_ok=True)
                    report.problems.append(Problem(
                        temps[0], f"{len(temps)} temporary file(s) of an interrupted write", remove))
                reason = self._check_entry(stem)
                if reason is None:
                    report.ok += stem.with_suffix(".json").exists()
                    continue
                if remove:
                    for f in files:
                        f.unlink(missing_ok=True)
                report.problems.append(Problem(stem.with_suffix(".safetensors"), reason, remove))
        if remove:
            _prune_empty_dirs(self.root)
        return report

    def _check_entry(self, stem: Path) -> str | None:
        """Why the entry at ``stem`` is bad, or None when it verifies (or is only a lock)."""
        tensor, manifest = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        if not manifest.exists():
            return "tensor without manifest (interrupted write)" if tensor.exists() else None
        try:
            m = json.loads(manifest.read_text())
            digest = key_digest(m["key"]) if isinstance(m, dict) and "key" in m else None
        except (OSError, ValueError, TypeError):
            digest = None
        if digest is not None and digest != stem.name:
            return "manifest key does not hash to the entry's name"
        try:
            read_entry(tensor, manifest, None, None, check_hash=True)
        except Rejected as exc:
            return str(exc)
        return None


#: Files of one entry, and the temporaries of its interrupted writes.
_ENTRY_NAME = re.compile(r"^\.?(?P<digest>[0-9a-f]{64})\.(?:safetensors|json|lock)(?:\..+\.tmp)?$")


def _real_subfolders(folder: Path) -> list[Path]:
    """The subfolders of ``folder`` that are folders, not symlinks to one."""
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:  # missing, a file, unreadable
        return []


class _try_lock:
    """Non-blocking exclusive lock on an entry's ``.lock``: ``with _try_lock(p) as free``.

    ``free`` is False when another process holds it (a run is writing that
    entry right now). A missing lock file is free and is not created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None

    def __enter__(self) -> bool:
        if not self.path.exists():
            return True
        try:
            self._f = open(self.path, "a+")
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if self._f is not None:
                self._f.close()
                self._f = None
            return not self.path.exists()  # vanished meanwhile: free; held: busy
        return True

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()


def _prune_empty_dirs(root: Path, include_root: bool = False) -> None:
    """Remove folders left empty under ``root`` (deepest first; ``root`` too if asked)."""
    if not root.is_dir():
        return
    dirs: Iterator[Path] = (p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty
    if include_root:
        try:
            root.rmdir()
        except OSError:
            pass
