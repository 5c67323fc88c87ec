"""Data layer: metadata, npz validation, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmeval.adapters.base import Preprocess
from fmeval.data import BINARY, MULTILABEL, ORDINAL, MULTICLASS, dataset_info, flags_2d, load_dataset
from fmeval.data.synthetic import synthetic_arrays, write_synthetic
from fmeval.data.transforms import prepare_batch
from fmeval.errors import ConfigError, DataError

TASK_FLAGS = {BINARY: "breastmnist", MULTICLASS: "bloodmnist", MULTILABEL: "chestmnist", ORDINAL: "retinamnist"}


def test_twelve_2d_datasets_with_medmnist_metadata():
    flags = flags_2d()
    assert len(flags) == 12 and "pneumoniamnist" in flags and not any(f.endswith("3d") for f in flags)
    info = dataset_info("PneumoniaMNIST")
    assert info.task == BINARY and info.labels == ("normal", "pneumonia") and info.n_channels == 1
    assert dataset_info("chestmnist").label_width == 14


@pytest.mark.parametrize("task,flag", sorted(TASK_FLAGS.items()))
@pytest.mark.parametrize("size", [28, 64])
def test_synthetic_fixture_loads_for_every_task_type(tmp_path, task, flag, size):
    write_synthetic(tmp_path, flag, size, n=(20, 10, 12))
    data = load_dataset(flag, size, tmp_path)
    assert data.task == task
    sp = data.split("test")
    info = dataset_info(flag)
    assert sp.images.shape[1:3] == (size, size) and sp.images.dtype == np.uint8
    assert sp.labels.shape == (12, info.label_width)
    rec = data.describe()
    assert rec["md5_verified"] is False and rec["n_train"] == 20
    # fixtures are not the official files: both facts are recorded as warnings
    assert any("MD5" in w for w in data.warnings) and any("official" in w for w in data.warnings)


def test_real_pneumoniamnist_official_counts(pneumonia_root):
    data = load_dataset("pneumoniamnist", 28, pneumonia_root)
    counts = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 4708, "val": 524, "test": 624}
    assert int((data.split("test").labels[:, 0] == 1).sum()) == 390
    assert data.split("train").images.shape == (4708, 28, 28)


def test_unknown_dataset_suggests_name(tmp_path):
    with pytest.raises(DataError, match="Did you mean: pneumoniamnist"):
        load_dataset("pneumonamnist", 28, tmp_path)


def test_missing_npz_says_where(tmp_path):
    with pytest.raises(DataError, match="pathmnist.npz not found"):
        load_dataset("pathmnist", 28, tmp_path)


def test_size_not_available(tmp_path):
    with pytest.raises(DataError, match="size 32 is not available"):
        load_dataset("pathmnist", 32, tmp_path)


def test_corrupt_npz(tmp_path):
    (tmp_path / "pathmnist.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not an npz archive"):
        load_dataset("pathmnist", 28, tmp_path)


def test_truncated_npz(tmp_path):
    path = write_synthetic(tmp_path, "pathmnist", 28)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError):
        load_dataset("pathmnist", 28, tmp_path).split("train")


def _write(tmp_path, flag, **override):
    arrays = synthetic_arrays(flag, 28, (8, 4, 4))
    arrays.update(override)
    np.savez(tmp_path / f"{flag}.npz", **arrays)


def test_wrong_label_shape(tmp_path):
    _write(tmp_path, "pneumoniamnist", train_labels=np.zeros((8, 3), np.uint8))
    with pytest.raises(DataError, match=r"labels have shape \(8, 3\), expected \[N, 1\]"):
        load_dataset("pneumoniamnist", 28, tmp_path).split("train")


def test_label_out_of_range(tmp_path):
    _write(tmp_path, "pneumoniamnist", test_labels=np.full((4, 1), 2, np.uint8))
    with pytest.raises(DataError, match="labels span"):
        load_dataset("pneumoniamnist", 28, tmp_path).split("test")


def test_wrong_image_shape_and_dtype(tmp_path):
    _write(tmp_path, "pathmnist", val_images=np.zeros((4, 28, 28), np.uint8))  # RGB expected
    data = load_dataset("pathmnist", 28, tmp_path)
    with pytest.raises(DataError, match="expected \\[N, 28, 28, 3\\]"):
        data.split("val")
    _write(tmp_path, "pneumoniamnist", val_images=np.zeros((4, 28, 28), np.float32))
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset("pneumoniamnist", 28, tmp_path).split("val")


def test_missing_key(tmp_path):
    arrays = synthetic_arrays("pneumoniamnist", 28, (8, 4, 4))
    del arrays["test_labels"]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="no array 'test_labels'"):
        load_dataset("pneumoniamnist", 28, tmp_path).split("test")


def test_md5_strict(tmp_path):
    write_synthetic(tmp_path, "pneumoniamnist", 28)
    with pytest.raises(DataError, match="not the official"):
        load_dataset("pneumoniamnist", 28, tmp_path, md5="strict").describe()


PRE = Preprocess(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear")


def test_pad_geometry_border_is_mean_colour():
    imgs = np.full((2, 28, 28), 255, np.uint8)
    x = prepare_batch(imgs, PRE, "pad", canvas=32)
    assert x.shape == (2, 3, 32, 32)
    assert torch.all(x[:, :, :2, :] == 0)  # zero after normalisation = the mean colour
    assert torch.allclose(x[:, :, 2:30, 2:30], torch.full((2, 3, 28, 28), 2.0))  # (1-0.5)/0.25


def test_pad_defaults_to_a_224_canvas_not_the_encoder_size():
    """MedMNIST+ pads onto 224 whatever the encoder's native size (DINOv2: 518, SAM: 1024)."""
    from fmeval.data.transforms import resolve_transform

    big = Preprocess(input_size=518, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    t = resolve_transform(big, geometry="pad", image_size=28)
    assert t.canvas == 224 and t.as_dict()["canvas"] == 224
    # the encoder is built at the canvas size for pad runs (see pipeline.build_input_size)
    from fmeval.config import RunConfig
    from fmeval.pipeline import build_input_size

    assert build_input_size(RunConfig(mode="knn", model="dinov2-vits14", dataset="pneumoniamnist",
                                      geometry="pad")) == 224


def test_medmnist_plus_canvas_pixel_for_pixel():
    """A 28 px image on the 224 canvas equals normalise-then-centre-pad, pixel for pixel."""
    from fmeval.data.transforms import resolve_transform

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    pre = Preprocess(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = resolve_transform(pre, geometry="pad", canvas=224, pad_fill="mean", image_size=28).prepare(img)
    ref = (torch.as_tensor(img).permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(pre.mean).view(1, 3, 1, 1)) \
        / torch.tensor(pre.std).view(1, 3, 1, 1)
    ref = torch.nn.functional.pad(ref, (98, 98, 98, 98), value=0.0)  # torchvision Pad(98) after Normalize
    assert x.shape == (3, 3, 224, 224)
    assert torch.equal(x, ref)


def test_pad_fill_zero_is_black_in_pixel_space():
    """MedCLIP pastes onto a black canvas: the border is pixel 0, normalised."""
    from fmeval.data.transforms import resolve_transform

    t = resolve_transform(PRE, geometry="pad", canvas=64, pad_fill="zero", image_size=28)
    x = t.prepare(np.full((1, 28, 28), 255, np.uint8))
    assert x.shape == (1, 3, 32, 32)  # the 64 canvas resized to the 32 px input
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), (0 - 0.5) / 0.25))
    assert t.as_dict()["pad_fill"] == "zero" and "zero fill" in t.describe()


def test_resize_geometry_and_gray_to_rgb():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = prepare_batch(imgs, PRE, "resize")
    assert x.shape == (3, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert float(x.min()) >= (0 - 0.5) / 0.25 - 1e-6 and float(x.max()) <= (1 - 0.5) / 0.25 + 1e-6


def test_pad_refuses_larger_images_and_unknown_geometry():
    with pytest.raises(ConfigError, match="use --geometry resize"):
        prepare_batch(np.zeros((1, 64, 64), np.uint8), PRE, "pad", canvas=32)
    with pytest.raises(ConfigError, match="unknown geometry"):
        prepare_batch(np.zeros((1, 28, 28), np.uint8), PRE, "crop")


def test_grayscale_preprocess_collapses_rgb():
    pre = Preprocess(input_size=28, mean=(0, 0, 0), std=(1, 1, 1), grayscale=True)
    rgb = np.zeros((1, 28, 28, 3), np.uint8)
    rgb[..., 0] = 255
    x = prepare_batch(rgb, pre, "resize")
    assert torch.allclose(x, torch.full_like(x, 0.299), atol=1e-6)


def test_download_goes_through_medmnist(tmp_path, monkeypatch):
    """With --download a missing file is fetched by medmnist's own class (faked here: no network)."""
    import medmnist

    calls = []

    class FakePneumonia:
        def __init__(self, split, download, size, root):
            calls.append((split, download, size, root))
            write_synthetic(root, "pneumoniamnist", size)

    monkeypatch.setattr(medmnist, "PneumoniaMNIST", FakePneumonia)
    data = load_dataset("pneumoniamnist", 64, tmp_path / "new", download=True)
    assert calls == [("test", True, 64, str(tmp_path / "new"))]
    assert data.split("train").images.shape[1:] == (64, 64)


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    import medmnist

    class Offline:
        def __init__(self, **kw):
            raise RuntimeError("Automatic download failed! ...\n many lines")

    monkeypatch.setattr(medmnist, "PathMNIST", Offline)
    with pytest.raises(DataError, match=r"download of pathmnist_128.npz failed \(no network\?\)") as err:
        load_dataset("pathmnist", 128, tmp_path, download=True)
    assert "\n" not in str(err.value) and "zenodo" in str(err.value)
