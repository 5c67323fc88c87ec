"""Content-addressed feature cache shared by zero-shot, kNN and linear probing.

A cache entry is named by the SHA-256 of everything that determines the
vectors: adapter, weights id, adapter code version, dataset file MD5, size,
split, geometry and preprocessing (plus, for text, the exact prompts). Any
change to any of these is a different address, so a stale feature can never
be served; an unchanged one is never recomputed.

Layout: ``<root>/<kind>/<hh>/<digest>.safetensors`` + ``<digest>.json``
(manifest, written last, so an entry exists only once both are complete).
Writes are atomic and a per-entry lock makes a second concurrent run wait for
the first instead of computing the same features twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fmeval.io import atomic_path, atomic_write_json, file_lock

FORMAT_VERSION = 1


def cache_root() -> Path:
    env = os.environ.get("FMEVAL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fmeval"


def key_digest(key: dict[str, Any]) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    digest: str
    key: dict
    shape: list[int]
    bytes: int
    created: str
    path: Path


class FeatureCache:
    """Tensors on disk, addressed by the hash of their provenance."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.enabled = enabled
        self.stats = CacheStats()

    def _paths(self, kind: str, digest: str) -> tuple[Path, Path]:
        base = self.root / kind / digest[:2] / digest
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    def load(self, kind: str, key: dict, device: str | torch.device = "cpu") -> torch.Tensor | None:
        if not self.enabled:
            return None
        digest = key_digest(key)
        tensor_path, manifest_path = self._paths(kind, digest)
        if not manifest_path.exists() or not tensor_path.exists():
            return None
        try:
            from safetensors.torch import load_file

            manifest = json.loads(manifest_path.read_text())
            if manifest.get("key") != json.loads(json.dumps(key, default=str)):
                return None  # hash collision or a hand-edited entry: never trust it
            return load_file(str(tensor_path), device=str(device))["features"]
        except Exception:
            return None  # unreadable entry behaves as a miss and is rewritten

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
    ) -> tuple[torch.Tensor, bool]:
        """Return (features on ``device``, hit?). Computes at most once per key."""
        cached = self.load(kind, key, device)
        if cached is not None:
            self.stats.hits += 1
            return cached, True
        if not self.enabled:
            self.stats.misses += 1
            return compute().to(device), False
        _, manifest_path = self._paths(kind, key_digest(key))
        with file_lock(manifest_path.with_suffix(".lock")):
            cached = self.load(kind, key, device)  # another run may have finished it
            if cached is not None:
                self.stats.hits += 1
                return cached, True
            self.stats.misses += 1
            feats = compute()
            self.save(kind, key, feats)
        return feats.to(device), False

    def entries(self) -> list[CacheEntry]:
        out = []
        for manifest_path in sorted(self.root.glob("*/*/*.json")):
            try:
                m = json.loads(manifest_path.read_text())
                out.append(
                    CacheEntry(m["kind"], m["digest"], m["key"], m["shape"], m["bytes"],
                               m["created"], manifest_path.with_suffix(".safetensors"))
                )
            except (OSError, ValueError, KeyError):
                continue
        return out

    def clear(self, match: Callable[[CacheEntry], bool] | None = None) -> int:
        """Delete entries (all, or those ``match`` selects); returns how many."""
        removed = 0
        for e in self.entries():
            if match is None or match(e):
                e.path.with_suffix(".json").unlink(missing_ok=True)
                e.path.unlink(missing_ok=True)
                removed += 1
        return removed
