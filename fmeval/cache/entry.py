"""One cache entry on disk: its address, the hash of its content, and the check of a stored entry.

Shared by the run's reads (:mod:`fmeval.cache.store`) and by ``fmeval cache verify``
(:mod:`fmeval.cache.housekeeping`), so both reject exactly the same entries for the same reasons.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

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


class Rejected(Exception):
    """An entry exists but must not be served; the message says why."""


def read_entry(tensor_path: Path, manifest_path: Path, key: dict | None,
               expect_rows: int | None, check_hash: bool) -> torch.Tensor:
    """The verified tensor of one entry (on CPU), or :class:`Rejected`."""
    from safetensors.torch import load_file

    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise Rejected(f"manifest unreadable: {first_line(exc)}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise Rejected(f"written by another fmeval (format {manifest.get('format')!r})")
    if key is not None and manifest.get("key") != json.loads(json.dumps(key, default=str)):
        raise Rejected("manifest names another key")  # hash collision or a hand edit
    if not tensor_path.exists():
        raise Rejected("tensor file missing")
    try:
        feats = load_file(str(tensor_path), device="cpu")["features"]
    except Exception as exc:  # truncated, foreign or damaged header
        raise Rejected(f"tensor unreadable: {first_line(exc)}") from None
    if list(feats.shape) != manifest.get("shape") or str(feats.dtype) != manifest.get("dtype"):
        raise Rejected(
            f"tensor is {str(feats.dtype).removeprefix('torch.')} {list(feats.shape)}, "
            f"manifest says {str(manifest.get('dtype')).removeprefix('torch.')} "
            f"{manifest.get('shape')}"
        )
    if check_hash and content_hash(feats) != manifest.get("content_hash"):
        raise Rejected("content hash mismatch")
    if expect_rows is not None and feats.shape[0] != expect_rows:
        raise Rejected(f"{feats.shape[0]} rows, expected {expect_rows}")
    return feats


def first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 120 else text[:117] + "..."
