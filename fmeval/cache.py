"""Content-addressed, verified feature cache shared by zero-shot, kNN and linear probing.

A cache entry is named by the SHA-256 of everything that determines the
vectors: adapter, weights id, adapter code version, dataset file MD5, size,
split, geometry and preprocessing (plus, for text, the exact prompts). Any
change to any of these is a different address, so a stale feature can never
be served; an unchanged one is never recomputed.

The address says what an entry *should* hold; the manifest also records what
it *does* hold (shape, dtype and a content hash of the tensor bytes), checked
on every read. Flipped bits on disk, a tensor file copied over another one, a
truncated file or an entry with the wrong number of rows is never served: it
is treated as a miss, recomputed, rewritten, and reported in one line
(``cache entry <digest12> failed verification (<reason>), recomputed``) both
on stderr and in :attr:`FeatureCache.events`, which a mode forwards into its
report's warnings. Hashing costs a fraction of a second per 100k features
(see ``benchmarks/cache_verify.py``), far less than the extraction it guards.

Layout: ``<root>/<kind>/<hh>/<digest>.safetensors`` + ``<digest>.json``
(manifest, written last, so an entry exists only once both are complete).
Writes are atomic and a per-entry lock makes a second concurrent run wait for
the first instead of computing the same features twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from fmeval.adapters.lazy import ADAPTER_MEMO
from fmeval.data.npz import MD5_MEMO
from fmeval.io import atomic_path, atomic_write_json, file_lock
from fmeval.settings import cache_root  # noqa: F401  (re-exported: the cache folder)

# 2: manifests carry shape, dtype and a content hash. Format-1 entries live at
# other addresses (the format is part of the key) and are never read.
FORMAT_VERSION = 2

#: Tree hash: BLAKE2b-256 of every 8 MiB chunk, then of the chunk digests. The
#: chunks hash in parallel threads (hashlib releases the GIL), and the digest
#: does not depend on how many threads did it. BLAKE2b because it is the
#: fastest strong hash in the standard library on CPUs without SHA extensions
#: (measured in benchmarks/cache_verify.py).
HASH_ALGO = "blake2b-256/tree-8MiB"
_CHUNK = 8 << 20
_MAX_HASH_THREADS = 8

#: Files of one entry, and the temporary files of its interrupted writes.
# Memo files kept in the cache folder (fmeval.io.write_memo), removed by ``fmeval cache clear``.
# (each named by the layer that writes it: data/npz.MD5_MEMO, adapters/lazy.ADAPTER_MEMO)
MEMO_FILES = (MD5_MEMO, ADAPTER_MEMO)


def key_digest(key: dict[str, Any]) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def content_hash(tensor: torch.Tensor, threads: int | None = None) -> str:
    """Hash of a tensor's dtype, shape and bytes (see :data:`HASH_ALGO`)."""
    t = tensor.detach().to("cpu").contiguous()
    buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    chunks = [buf[i:i + _CHUNK] for i in range(0, len(buf), _CHUNK)]

    def leaf(chunk: memoryview) -> bytes:
        return hashlib.blake2b(chunk, digest_size=32).digest()

    n = threads if threads is not None else min(_MAX_HASH_THREADS, os.cpu_count() or 1)
    if n > 1 and len(chunks) > 2:
        with ThreadPoolExecutor(min(n, len(chunks))) as pool:
            digests = list(pool.map(leaf, chunks))
    else:
        digests = [leaf(c) for c in chunks]
    root = hashlib.blake2b(digest_size=32)
    root.update(f"{t.dtype}|{list(t.shape)}|".encode())
    for d in digests:
        root.update(d)
    return root.hexdigest()


def _notify_stderr(message: str) -> None:
    from fmeval.progress import warn

    warn(message)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    recomputed: int = 0  # entries that failed verification and were rewritten


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


class _Rejected(Exception):
    """An entry exists but must not be served; the message says why."""


class FeatureCache:
    """Tensors on disk, addressed by the hash of their provenance, verified on read.

    ``events`` collects one line per entry that failed verification and was
    recomputed; ``notify`` (default: a warning on stderr) is told each one as
    it happens. ``verify=False`` skips the content hash on reads (benchmarks
    only: it is what the check costs).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        enabled: bool = True,
        *,
        verify: bool = True,
        notify: Callable[[str], None] | None = _notify_stderr,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.enabled = enabled
        self.verify_hash = verify
        self.notify = notify
        self.stats = CacheStats()
        self.events: list[str] = []
        self.unwritable = False  # set by the first write that fails (see _cannot_write)

    def _paths(self, kind: str, digest: str) -> tuple[Path, Path]:
        base = self.root / kind / digest[:2] / digest
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    # -- reading ----------------------------------------------------------------
    def _read(self, tensor_path: Path, manifest_path: Path, key: dict | None,
              expect_rows: int | None, check_hash: bool) -> torch.Tensor:
        """The verified tensor of one entry (on CPU), or :class:`_Rejected`."""
        from safetensors.torch import load_file

        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            raise _Rejected(f"manifest unreadable: {_first_line(exc)}") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise _Rejected(f"written by another fmeval (format {manifest.get('format')!r})")
        if key is not None and manifest.get("key") != json.loads(json.dumps(key, default=str)):
            raise _Rejected("manifest names another key")  # hash collision or a hand edit
        if not tensor_path.exists():
            raise _Rejected("tensor file missing")
        try:
            feats = load_file(str(tensor_path), device="cpu")["features"]
        except Exception as exc:  # truncated, foreign or damaged header
            raise _Rejected(f"tensor unreadable: {_first_line(exc)}") from None
        if list(feats.shape) != manifest.get("shape") or str(feats.dtype) != manifest.get("dtype"):
            raise _Rejected(
                f"tensor is {str(feats.dtype).removeprefix('torch.')} {list(feats.shape)}, "
                f"manifest says {str(manifest.get('dtype')).removeprefix('torch.')} "
                f"{manifest.get('shape')}"
            )
        if check_hash and content_hash(feats) != manifest.get("content_hash"):
            raise _Rejected("content hash mismatch")
        if expect_rows is not None and feats.shape[0] != expect_rows:
            raise _Rejected(f"{feats.shape[0]} rows, expected {expect_rows}")
        return feats

    def _lookup(self, kind: str, key: dict, expect_rows: int | None
                ) -> tuple[torch.Tensor | None, str | None]:
        """(tensor, None) on a verified hit; (None, reason) for a rejected entry; (None, None) else."""
        tensor_path, manifest_path = self._paths(kind, key_digest(key))
        if not manifest_path.exists():
            return None, None  # a tensor alone is an interrupted write: a plain miss
        try:
            return self._read(tensor_path, manifest_path, key, expect_rows, self.verify_hash), None
        except _Rejected as exc:
            return None, str(exc)

    def load(self, kind: str, key: dict, device: str | torch.device = "cpu",
             *, expect_rows: int | None = None) -> torch.Tensor | None:
        """The verified features of ``key``, or None (absent or failing verification)."""
        if not self.enabled:
            return None
        feats, _ = self._lookup(kind, key, expect_rows)
        return None if feats is None else feats.to(device)

    # -- writing ----------------------------------------------------------------
    def save(self, kind: str, key: dict, features: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        digest = key_digest(key)
        tensor_path, manifest_path = self._paths(kind, digest)
        feats = features.detach().to("cpu", torch.float32).contiguous()
        with atomic_path(tensor_path) as tmp:
            save_file({"features": feats}, str(tmp))
        atomic_write_json(
            manifest_path,
            {
                "format": FORMAT_VERSION,
                "kind": kind,
                "digest": digest,
                "key": key,
                "shape": list(feats.shape),
                "dtype": str(feats.dtype),
                "hash_algo": HASH_ALGO,
                "content_hash": content_hash(feats),
                "bytes": tensor_path.stat().st_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        return tensor_path

    def get_or_compute(
        self,
        kind: str,
        key: dict,
        compute: Callable[[], torch.Tensor],
        device: str | torch.device = "cpu",
        *,
        expect_rows: int | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """Return (features on ``device``, hit?). Computes at most once per key.

        ``expect_rows``: the number of samples the caller is about to pair
        with the features; a stored entry of another length is recomputed
        (a run that would fail on it, or worse, silently misalign, never sees it).
        """
        if not self.enabled:
            self.stats.misses += 1
            return compute().to(device), False
        feats, reason = self._lookup(kind, key, expect_rows)
        if feats is not None:
            self.stats.hits += 1
            return feats.to(device), True
        _, manifest_path = self._paths(kind, key_digest(key))
        lock = None if self.unwritable else self._enter_lock(manifest_path.with_suffix(".lock"))
        try:
            if lock is not None:
                feats, again = self._lookup(kind, key, expect_rows)  # another run may have finished it
                if feats is not None:
                    self.stats.hits += 1
                    return feats.to(device), True
                reason = again or reason
            self.stats.misses += 1
            feats = compute()
            if lock is not None:
                try:
                    self.save(kind, key, feats)
                except OSError as exc:  # a full disk, a read-only folder: the run goes on uncached
                    self._cannot_write(exc)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
        if reason is not None:
            self._event(key_digest(key), reason)
        return feats.to(device), False

    def _enter_lock(self, path: Path):
        """The entry's write lock, held; None (and the cache turned read-only) when it cannot be made."""
        lock = file_lock(path)
        try:
            lock.__enter__()
        except OSError as exc:  # FMEVAL_CACHE_DIR is a file, a file is where a folder goes, read-only
            self._cannot_write(exc)
            return None
        return lock

    def _cannot_write(self, exc: OSError) -> None:
        """A cache that cannot be written is a speed-up lost, not a failed run: one warning, then
        the rest of the run computes what it needs in memory (hits already on disk still serve)."""
        if self.unwritable:
            return
        self.unwritable = True
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        line = f"feature cache {self.root} cannot be written: {reason}{where}; running uncached"
        self.events.append(line)
        if self.notify is not None:
            self.notify(line)

    def _event(self, digest: str, reason: str) -> None:
        self.stats.recomputed += 1
        line = f"cache entry {digest[:12]} failed verification ({reason}), recomputed"
        self.events.append(line)
        if self.notify is not None:
            self.notify(line)

    # -- housekeeping -------------------------------------------------------------
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
            self._read(tensor, manifest, None, None, check_hash=True)
        except _Rejected as exc:
            return str(exc)
        return None


_ENTRY_NAME = re.compile(r"^\.?(?P<digest>[0-9a-f]{64})\.(?:safetensors|json|lock)(?:\..+\.tmp)?$")


def _real_subfolders(folder: Path) -> list[Path]:
    """The subfolders of ``folder`` that are folders, not symlinks to one."""
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:  # missing, a file, unreadable
        return []


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 120 else text[:117] + "..."


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
