"""The cache-verification benchmark runs at toy size and records every number (never asserted)."""

from __future__ import annotations

import json


def test_cache_verify_benchmark_toy(tmp_path):
    from benchmarks.cache_verify import CASES, main

    assert "cache_verify" in CASES
    out = tmp_path / "cv.json"
    res = main(["--rows", "3000", "--dim", "64", "--model", "resnet18", "--tiny",
                "--extract-images", "16", "--batch-size", "8", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["hash_algo"] == res["hash_algo"]
    for k in ("hit_verified_seconds", "hit_unverified_seconds", "save_seconds"):
        assert saved[k] >= 0
    assert set(saved["hash"]) == {"content_hash_threads", "content_hash_1_thread",
                                  "sha256_1_thread", "blake2b_1_thread"}
    assert saved["extraction"]["images"] == 16 and saved["extraction"]["images_per_s"] > 0
    assert "verification cost" in out.with_suffix(".md").read_text()
