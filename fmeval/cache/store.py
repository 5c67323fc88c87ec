"""The feature cache a run reads and writes: one entry per key, verified on every read.

See :mod:`fmeval.cache` for what a key holds and why an entry is never served stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fmeval.cache.entry import FORMAT_VERSION, HASH_ALGO, Rejected, content_hash, key_digest, read_entry
from fmeval.cache.housekeeping import CacheHousekeeping
from fmeval.io import atomic_path, atomic_write_json, file_lock
from fmeval.settings import cache_root


def _notify_stderr(message: str) -> None:
    from fmeval.progress import warn

    warn(message)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    recomputed: int = 0  # entries that failed verification and were rewritten


class FeatureCache(CacheHousekeeping):
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
    def _lookup(self, kind: str, key: dict, expect_rows: int | None
                ) -> tuple[torch.Tensor | None, str | None]:
        """(tensor, None) on a verified hit; (None, reason) for a rejected entry; (None, None) else."""
        tensor_path, manifest_path = self._paths(kind, key_digest(key))
        if not manifest_path.exists():
            return None, None  # a tensor alone is an interrupted write: a plain miss
        try:
            return read_entry(tensor_path, manifest_path, key, expect_rows, self.verify_hash), None
        except Rejected as exc:
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
