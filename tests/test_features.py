"""Feature extraction: out-of-memory retry, NaN detection, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmeval.adapters import create_adapter
from fmeval.errors import FmevalError
from fmeval.features import extract_features

IMAGES = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)


def test_out_of_memory_halves_the_batch_and_gives_identical_features(monkeypatch):
    adapter = create_adapter("resnet18", tiny=True)
    reference = extract_features(adapter, IMAGES, batch_size=8)
    sizes = []
    original = type(adapter).encode_image

    def flaky(self, x):
        sizes.append(len(x))
        if len(x) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, x)

    monkeypatch.setattr(type(adapter), "encode_image", flaky)
    feats = extract_features(adapter, IMAGES, batch_size=32)
    assert sizes[:3] == [32, 16, 8] and max(sizes[3:]) == 8
    torch.testing.assert_close(feats, reference)


def test_out_of_memory_at_batch_one_is_a_clear_error(monkeypatch):
    adapter = create_adapter("resnet18", tiny=True)

    def always(self, x):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(type(adapter), "encode_image", always)
    with pytest.raises(FmevalError, match="out of memory even at batch size 1"):
        extract_features(adapter, IMAGES[:3], batch_size=2)


def test_nan_features_are_refused(monkeypatch):
    adapter = create_adapter("vit-b16", tiny=True)
    original = type(adapter).encode_image

    def nan_second_row(self, x):
        out = original(self, x).clone()
        out[1] = float("nan")
        return out

    monkeypatch.setattr(type(adapter), "encode_image", nan_second_row)
    with pytest.raises(FmevalError, match="NaN/Inf features for 2 of 37 images"):
        extract_features(adapter, IMAGES, batch_size=32)


def test_wrong_feature_shape_is_refused(monkeypatch):
    adapter = create_adapter("vit-b16", tiny=True)
    monkeypatch.setattr(type(adapter), "encode_image", lambda self, x: torch.zeros(len(x), 3, 4))
    with pytest.raises(FmevalError, match="returned features of shape"):
        extract_features(adapter, IMAGES, batch_size=16)


def test_other_errors_are_not_swallowed(monkeypatch):
    adapter = create_adapter("vit-b16", tiny=True)

    def broken(self, x):
        raise ValueError("a real bug")

    monkeypatch.setattr(type(adapter), "encode_image", broken)
    with pytest.raises(ValueError, match="a real bug"):
        extract_features(adapter, IMAGES, batch_size=16)
