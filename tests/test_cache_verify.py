"""A damaged cache entry is never served: it is recomputed, and the run says so in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fmeval.cache import FeatureCache, key_digest
from fmeval.data.synthetic import write_synthetic
from helpers import run

LINE = re.compile(r"cache entry [0-9a-f]{12} failed verification \((.+)\), recomputed")


def _report(reports: Path, n: int) -> dict:
    """The newest of ``n`` runs. By write time, not by name: two fast runs can start in the same
    second, and then their run ids order by the random suffix."""
    runs = sorted(reports.glob("*/results.json"), key=lambda p: p.stat().st_mtime_ns)
    assert len(runs) == n
    return json.loads(runs[-1].read_text())


def _metrics(res: dict) -> dict:
    return {m: v["value"] for m, v in res["test"]["metrics"].items()} | {"k": res["selection"]["k"]}


def _entry(cache_dir: Path, split: str) -> tuple[Path, dict]:
    for manifest in cache_dir.glob("image/*/*.json"):
        m = json.loads(manifest.read_text())
        if m["key"]["split"] == split:
            return manifest.with_suffix(".safetensors"), m
    raise AssertionError(f"no cached {split} features under {cache_dir}")


def _flip_bytes(path: Path, n: int, seed: int = 0) -> None:
    """XOR ``n`` bytes of the tensor data (past the safetensors header): a silent bit-rot."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    pos = np.random.default_rng(seed).choice(np.arange(start, len(raw)), size=n, replace=False)
    for p in pos:
        raw[p] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_flipped_bytes_in_real_run_are_recomputed(capsys, pneumonia_root, tmp_path):
    reports, cache_dir = tmp_path / "reports", tmp_path / "cache"
    args = ("knn", "--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist",
            "--data-root", str(pneumonia_root), "--bootstrap", "0", "--reports-dir", str(reports))
    code, _, err = run(capsys, *args)
    assert code == 0, err
    clean = _metrics(_report(reports, 1))
    tensor, _ = _entry(cache_dir, "train")
    _flip_bytes(tensor, 20_000)

    code, _, err = run(capsys, *args)
    assert code == 0, err
    res = _report(reports, 2)
    assert _metrics(res) == clean  # the clean run's numbers, not the corrupted ones
    lines = [ln for ln in err.splitlines() if LINE.search(ln)]
    assert len(lines) == 1 and "content hash mismatch" in lines[0]
    assert res["extras"]["cache_hits"] == {"train": False, "val": True, "test": True}
    assert any(LINE.search(w) for w in res["warnings"])  # the report carries it too

    code, _, err = run(capsys, *args)  # the rewritten entry verifies: a plain hit, silently
    assert code == 0 and not LINE.search(err)
    assert _report(reports, 3)["extras"]["cache_hits"] == {"train": True, "val": True, "test": True}


def _synthetic_knn(tmp_path: Path) -> tuple[str, ...]:
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 30))
    return ("knn", "--model", "resnet18", "--tiny", "--dataset", "pneumoniamnist",
            "--data-root", str(tmp_path), "--bootstrap", "0", "--k", "3,5",
            "--reports-dir", str(tmp_path / "reports"))


def test_valid_entry_of_wrong_length_is_recomputed(capsys, tmp_path):
    args = _synthetic_knn(tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    clean = _metrics(_report(tmp_path / "reports", 1))
    cache = FeatureCache(tmp_path / "cache")
    _, test_m = _entry(tmp_path / "cache", "test")
    val_tensor, _ = _entry(tmp_path / "cache", "val")
    from safetensors.torch import load_file

    # a complete, self-consistent entry (manifest, shape, hash all agree) that holds
    # the 20 val rows under the 30-row test split's address
    cache.save("image", test_m["key"], load_file(str(val_tensor))["features"])
    assert cache.load("image", test_m["key"]) is not None

    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert _metrics(_report(tmp_path / "reports", 2)) == clean
    (line,) = [ln for ln in err.splitlines() if LINE.search(ln)]
    assert "20 rows, expected 30" in line


def test_verification_reasons(tmp_path):
    cache = FeatureCache(tmp_path / "c", notify=None)
    key = {"adapter": "x", "split": "test"}
    feats = torch.arange(12.0).view(4, 3)
    calls = []

    def compute():
        calls.append(1)
        return feats

    cache.save("image", key, feats)
    tensor = next((tmp_path / "c").rglob("*.safetensors"))
    manifest = tensor.with_suffix(".json")

    def reason() -> str:
        before = len(cache.events)
        out, hit = cache.get_or_compute("image", key, compute, expect_rows=4)
        assert not hit and torch.equal(out, feats)
        assert len(cache.events) == before + 1
        return LINE.search(cache.events[-1]).group(1)

    tensor.write_bytes(tensor.read_bytes()[:-7])  # truncated
    assert reason().startswith("tensor unreadable")
    m = json.loads(manifest.read_text())
    m["shape"] = [4, 4]
    manifest.write_text(json.dumps(m))
    assert reason().startswith("tensor is float32 [4, 3], manifest says float32 [4, 4]")
    manifest.write_text("{not json")
    assert reason().startswith("manifest unreadable")
    tensor.unlink()
    assert reason() == "tensor file missing"
    assert cache.stats.recomputed == 4 and len(calls) == 4
    out, hit = cache.get_or_compute("image", key, compute, expect_rows=4)
    assert hit and len(calls) == 4  # rewritten entries verify


def test_verification_on_and_off(tmp_path):
    cache = FeatureCache(tmp_path / "c", notify=None)
    key = {"adapter": "x"}
    cache.save("image", key, torch.ones(50, 8))
    tensor = next((tmp_path / "c").rglob("*.safetensors"))
    _flip_bytes(tensor, 16)
    assert cache.load("image", key) is None
    unverified = FeatureCache(tmp_path / "c", verify=False)
    assert unverified.load("image", key) is not None  # what the hash protects against


def test_content_hash_is_independent_of_threads_and_sees_one_bit():
    from fmeval.cache import content_hash

    x = torch.randn(3_000, 1_000)  # 12 MB: two chunks
    assert content_hash(x, threads=1) == content_hash(x, threads=4)
    y = x.clone()
    y.view(-1).view(torch.int32)[123_456] ^= 1
    assert content_hash(y) != content_hash(x)
    assert content_hash(x.view(1_000, 3_000)) != content_hash(x)  # shape is part of it


def test_events_print_one_warning_line_on_stderr(tmp_path, capsys):
    cache = FeatureCache(tmp_path / "c")
    key = {"adapter": "x"}
    cache.save("image", key, torch.ones(2, 2))
    next((tmp_path / "c").rglob("*.safetensors")).write_bytes(b"garbage")
    cache.get_or_compute("image", key, lambda: torch.ones(2, 2))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"cache entry {key_digest(key)[:12]} failed verification" in err
