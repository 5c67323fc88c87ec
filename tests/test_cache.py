"""The feature cache: hits never run the encoder, any key change misses."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from fmeval.cache import FeatureCache
from fmeval.data.synthetic import write_synthetic
from fmeval.config import RunConfig
from fmeval.pipeline import prepare_frozen
from helpers import count_encodes


@pytest.fixture
def counting(monkeypatch):
    """Count encoder forward passes (the timm adapters serve every model these tests use)."""
    return count_encodes(monkeypatch)


def _cfg(root, **kw):
    base = dict(model="vit-b16", dataset="pneumoniamnist", data_root=str(root), tiny=True, batch_size=16)
    base.update(kw)
    return RunConfig(mode="knn", **base)


def test_second_run_does_zero_forward_passes(tmp_path, counting):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20))
    first = prepare_frozen(_cfg(tmp_path))
    assert counting["n"] == 3 + 2 + 2  # ceil(40/16) + ceil(20/16) * 2
    assert set(first.cache_hits.values()) == {False}
    counting["n"] = 0
    second = prepare_frozen(_cfg(tmp_path))
    assert counting["n"] == 0
    assert set(second.cache_hits.values()) == {True}
    for split in ("train", "val", "test"):
        assert torch.equal(first.features[split], second.features[split])


def test_cached_rerun_does_not_build_the_encoder(tmp_path, counting, monkeypatch):
    """A full cache hit answers from the recorded identity (no random init, no checkpoint
    read); a miss builds the encoder once; a changed weights file is a new identity."""
    import fmeval.pipeline as pipeline
    from fmeval.adapters.base import create_adapter
    from fmeval.adapters.lazy import LazyAdapter

    builds = []
    monkeypatch.setattr(pipeline, "create_adapter", lambda *a, **k: builds.append(a) or create_adapter(*a, **k))
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20))
    first = prepare_frozen(_cfg(tmp_path))
    assert len(builds) == 1 and not isinstance(first.adapter, LazyAdapter)
    second = prepare_frozen(_cfg(tmp_path))
    assert len(builds) == 1 and counting["n"] == 7  # neither built nor run
    assert isinstance(second.adapter, LazyAdapter) and not second.adapter.built
    assert json.dumps(second.adapter.describe()) == json.dumps(first.adapter.describe())  # as reported
    assert second.transform.as_dict() == first.transform.as_dict() and second.precision == first.precision
    for split in ("train", "val", "test"):
        assert torch.equal(first.features[split], second.features[split])

    third = prepare_frozen(_cfg(tmp_path, limit=10))  # misses: the recorded encoder is built, once
    assert len(builds) == 2 and third.adapter.built and counting["n"] == 7 + 3
    assert torch.equal(third.features["train"], first.features["train"][third.indices["train"]])

    ckpt = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    for seed in (1, 2):
        src = create_adapter("vit-b16", tiny=True, seed=seed)
        save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(ckpt))
        os.utime(ckpt, ns=(seed * 10**9, seed * 10**9))  # a rewritten file: new mtime
        a = prepare_frozen(_cfg(tmp_path, weights=str(ckpt)))
        b = prepare_frozen(_cfg(tmp_path, weights=str(ckpt)))
        assert not isinstance(a.adapter, LazyAdapter) and isinstance(b.adapter, LazyAdapter)
        assert a.adapter.weights_id == b.adapter.weights_id and set(b.cache_hits.values()) == {True}
    assert len(builds) == 4
    memo = FeatureCache().root / "adapters.json"
    assert len(json.loads(memo.read_text())) == 3  # random seed 0, and the two checkpoints
    FeatureCache().clear_all()
    assert not memo.exists()
    prepare_frozen(_cfg(tmp_path, use_cache=False))
    assert len(builds) == 5 and not memo.exists()  # no cache, no record


@pytest.mark.parametrize("change", [
    {"geometry": "pad"},
    {"size": 64},
    {"seed": 1},  # different random weights -> different weights_id
    {"model": "dino-vitb16"},
    {"limit": 10},
])
def test_changing_a_key_component_misses(tmp_path, counting, change):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20))
    write_synthetic(tmp_path, "pneumoniamnist", 64, n=(40, 20, 20))
    prepare_frozen(_cfg(tmp_path))
    counting["n"] = 0
    other = prepare_frozen(_cfg(tmp_path, **change))
    assert counting["n"] > 0 and set(other.cache_hits.values()) == {False}


def test_changed_data_file_misses(tmp_path, counting):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20), seed=0)
    prepare_frozen(_cfg(tmp_path))
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20), seed=1)
    counting["n"] = 0
    assert set(prepare_frozen(_cfg(tmp_path)).cache_hits.values()) == {False}
    assert counting["n"] > 0


def test_no_cache_flag_recomputes(tmp_path, counting):
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20))
    prepare_frozen(_cfg(tmp_path))
    counting["n"] = 0
    prepare_frozen(_cfg(tmp_path, use_cache=False))
    assert counting["n"] == 7


def test_entries_clear_and_corrupt_entry_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    key = {"adapter": "x", "split": "test"}
    calls = []
    feats, hit = cache.get_or_compute("image", key, lambda: calls.append(1) or torch.ones(3, 2))
    assert not hit and len(calls) == 1
    feats, hit = cache.get_or_compute("image", key, lambda: calls.append(1) or torch.ones(3, 2))
    assert hit and len(calls) == 1 and torch.equal(feats, torch.ones(3, 2))
    (entry,) = cache.entries()
    assert entry.shape == [3, 2] and entry.key == key
    entry.path.write_bytes(b"garbage")  # a damaged tensor file must not be served
    feats, hit = cache.get_or_compute("image", key, lambda: calls.append(1) or torch.zeros(3, 2))
    assert not hit and len(calls) == 2
    assert cache.clear() == 1 and cache.entries() == []
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_manifest_mismatch_is_never_served(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    key = {"adapter": "x"}
    cache.save("image", key, torch.ones(2, 2))
    (entry,) = cache.entries()
    manifest = entry.path.with_suffix(".json")
    m = json.loads(manifest.read_text())
    m["key"] = {"adapter": "y"}
    manifest.write_text(json.dumps(m))
    assert cache.load("image", key) is None


def test_concurrent_runs_compute_once(tmp_path):
    cache_a, cache_b = FeatureCache(tmp_path / "c"), FeatureCache(tmp_path / "c")
    key = {"adapter": "x"}
    calls = []
    started = threading.Event()

    def slow():
        calls.append(1)
        started.set()
        threading.Event().wait(0.3)
        return torch.arange(6.0).view(3, 2)

    results = {}
    t = threading.Thread(target=lambda: results.setdefault("a", cache_a.get_or_compute("image", key, slow)))
    t.start()
    started.wait(5)
    results["b"] = cache_b.get_or_compute("image", key, slow)
    t.join()
    assert len(calls) == 1
    assert results["b"][1] is True and torch.equal(results["a"][0], results["b"][0])


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from fmeval.io import atomic_write_text

    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_text(tmp_path / "r.md", "x")
    mode = stat.S_IMODE((tmp_path / "r.md").stat().st_mode)
    assert mode == 0o666 & ~mask  # not mkstemp's private 0600


def test_full_cache_hit_reads_no_images_and_rehashes_no_data_file(tmp_path, counting, monkeypatch):
    """A cached re-run decompresses and validates no image array, and trusts the data
    file's remembered MD5 (path, size, mtime): only the small label arrays are read."""
    import fmeval.data.npz as npz

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(40, 20, 20))
    prepare_frozen(_cfg(tmp_path))  # first run: computes, caches, remembers the MD5
    reads, splits, digests = [], [], []
    monkeypatch.setattr(npz.MedMNIST, "_read", lambda self, key, _r=npz.MedMNIST._read: reads.append(key)
                        or _r(self, key))
    monkeypatch.setattr(npz.MedMNIST, "_load_split", lambda self, name, _l=npz.MedMNIST._load_split:
                        splits.append(name) or _l(self, name))
    monkeypatch.setattr(npz, "file_digest", lambda *a, _d=npz.file_digest, **k: digests.append(a) or _d(*a, **k))
    counting["n"] = 0
    again = prepare_frozen(_cfg(tmp_path))
    assert set(again.cache_hits.values()) == {True} and counting["n"] == 0
    assert splits == [] and digests == []
    assert sorted(reads) == ["test_labels", "train_labels", "val_labels"]
