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

from fmeval.cache.entry import FORMAT_VERSION, HASH_ALGO, content_hash, key_digest
from fmeval.cache.housekeeping import MEMO_FILES, CacheEntry, ClearReport, Problem, VerifyReport
from fmeval.cache.store import CacheStats, FeatureCache
from fmeval.settings import cache_root  # the cache folder (one rule, in settings)

# The package's modules: entry (address, content hash, the check of a stored entry), store
# (FeatureCache: a run's reads and writes) and housekeeping (ls, clear, verify of the folder).
__all__ = ["FORMAT_VERSION", "HASH_ALGO", "MEMO_FILES", "CacheEntry", "CacheStats", "ClearReport",
           "FeatureCache", "Problem", "VerifyReport", "cache_root", "content_hash", "key_digest"]
