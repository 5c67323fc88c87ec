"""Files fmeval writes get the user's normal permissions, whatever library writes them."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from fmeval.cache import FeatureCache
from fmeval.io import atomic_path, atomic_write_text


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_safetensors_in_cache_and_adapters_get_the_umask_mode(tmp_path, umask):
    from fmeval.training.checkpoint import TrainState, save_train_state
    from fmeval.training.methods import save_tensors

    want = 0o666 & ~umask  # 0o644 under the usual umask 022
    FeatureCache(tmp_path / "cache").save("image", {"a": 1}, torch.ones(3, 2))
    files = list((tmp_path / "cache").rglob("*.*"))
    assert {f.suffix for f in files} == {".safetensors", ".json"}
    save_tensors({"w": torch.ones(2)}, tmp_path / "run" / "head.safetensors")
    save_train_state(tmp_path / "run", TrainState(
        epoch=0, model={}, optimizer={}, scheduler={}, rng={}, best_state={}, best_epoch=0,
        best_metric=0.0, best_val_loss=0.0, bad_epochs=0, done=False))
    atomic_write_text(tmp_path / "r.md", "x")
    files += [tmp_path / "run" / "head.safetensors", tmp_path / "run" / "train_state.pt",
              tmp_path / "r.md"]
    assert {f.name: oct(_mode(f)) for f in files} == {f.name: oct(want) for f in files}


def test_a_writer_that_recreates_the_file_still_gets_the_mode(tmp_path, umask):
    """safetensors deletes and re-creates the path it is given; so may others."""
    with atomic_path(tmp_path / "x.bin") as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert _mode(tmp_path / "x.bin") == 0o666 & ~umask
