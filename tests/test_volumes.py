"""3D data: metadata and loading of the volume datasets, volume views, the shape transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmeval.data import all_flags, dataset_info, flags_2d, flags_3d, load_dataset
from fmeval.data.synthetic import synthetic_arrays, write_synthetic
from fmeval.data.volume_transform import VolumeTransform
from fmeval.data.volumes import VolumeView, encode_volumes
from fmeval.errors import ConfigError, DataError

VESSEL_COUNTS = {"train": 1335, "val": 191, "test": 382}


# -- metadata and files --------------------------------------------------------------------
def test_six_3d_datasets_with_dimensionality_and_sizes():
    flags = flags_3d()
    assert flags == ["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d",
                     "vesselmnist3d", "synapsemnist3d"]
    assert len(flags_2d()) == 12 and all_flags() == flags_2d() + flags
    for f in flags:
        info = dataset_info(f)
        assert info.ndim == 3 and info.is_volume and info.sizes == (28, 64) and info.n_channels == 1
        assert info.image_shape(64) == (64, 64, 64)
    vessel = dataset_info("VesselMNIST3D")
    assert vessel.labels == ("vessel", "aneurysm") and vessel.n_samples == VESSEL_COUNTS
    assert dataset_info("pathmnist").ndim == 2 and dataset_info("pathmnist").sizes == (28, 64, 128, 224)


@pytest.mark.parametrize("flag", ["organmnist3d", "nodulemnist3d", "adrenalmnist3d",
                                  "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"])
def test_synthetic_volumes_load_for_every_3d_dataset(tmp_path, flag):
    write_synthetic(tmp_path, flag, 28, n=(6, 3, 4))
    data = load_dataset(flag, 28, tmp_path)
    sp = data.split("test")
    assert sp.images.shape == (4, 28, 28, 28) and sp.images.dtype == np.uint8
    assert sp.labels.shape == (4, 1) and sp.labels.max() < dataset_info(flag).n_classes
    assert data.describe()["md5_verified"] is False


def test_synthetic_volumes_carry_the_label_in_every_central_plane():
    arrays = synthetic_arrays("fracturemnist3d", 16, n=(30, 2, 2))
    vols, y = arrays["train_images"], arrays["train_labels"][:, 0]
    bright = (VolumeView.parse("tri-planar").select(vols) > 150).reshape(30, 3, -1).sum(2)
    for c in range(3):  # a larger cube per class: strictly more bright pixels in each plane
        assert (y == c).any()
    means = [bright[y == c].mean(0) for c in range(3)]
    assert np.all(means[0] < means[1]) and np.all(means[1] < means[2])


def _write_vessel(tmp_path, name="vesselmnist3d.npz", **override):
    arrays = synthetic_arrays("vesselmnist3d", 28, (4, 2, 2))
    arrays.update(override)
    np.savez(tmp_path / name, **arrays)


@pytest.mark.parametrize("images,match", [
    (np.zeros((2, 28, 28), np.uint8), r"a 2D image file, not a 3D volume file"),
    (np.zeros((2, 28, 28, 3), np.uint8), r"a 2D image file, not a 3D volume file"),
    (np.zeros((2, 20, 28, 28), np.uint8), r"depth 20, expected 28"),
    (np.zeros((2, 64, 64, 64), np.uint8), r"64\^3 volumes, a file of another size"),
])
def test_bad_volume_files_are_one_line_errors(tmp_path, images, match):
    _write_vessel(tmp_path, val_images=images, val_labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match=match) as err:
        load_dataset("vesselmnist3d", 28, tmp_path).split("val")
    assert "\n" not in str(err.value) and "expected [N, 28, 28, 28]" in str(err.value)


def test_volume_file_passed_as_2d_and_labels_checked(tmp_path):
    arrays = synthetic_arrays("pneumoniamnist", 28, (4, 2, 2))
    arrays["val_images"] = np.zeros((2, 28, 28, 28), np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="a 3D volume file, not a 2D image file") as err:
        load_dataset("pneumoniamnist", 28, tmp_path).split("val")
    assert "\n" not in str(err.value)
    _write_vessel(tmp_path, test_labels=np.full((2, 1), 2, np.uint8))
    with pytest.raises(DataError, match="labels span"):
        load_dataset("vesselmnist3d", 28, tmp_path).split("test")


@pytest.mark.parametrize("size", [128, 224, 32])
def test_3d_sizes_that_do_not_exist(tmp_path, size):
    with pytest.raises(DataError, match=f"size {size} is not available for organmnist3d; "
                                        "3D volumes sizes are 28, 64") as err:
        load_dataset("organmnist3d", size, tmp_path)
    assert "\n" not in str(err.value)


def test_real_vesselmnist3d_official_file(vessel_root):
    data = load_dataset("vesselmnist3d", 28, vessel_root, md5="strict")
    assert data.md5_verified is True and data.md5 == "b41fd4f7e7e2feedddb201585ecafa1b"
    assert {s: len(data.split(s)) for s in VESSEL_COUNTS} == VESSEL_COUNTS
    test = data.split("test")
    assert test.images.shape == (382, 28, 28, 28) and int((test.labels[:, 0] == 0).sum()) == 339
    assert not data.warnings
    big = load_dataset("vesselmnist3d", 64, vessel_root, md5="strict")
    assert big.md5_verified is True and big.split("val").images.shape == (191, 64, 64, 64)


# -- volume views ------------------------------------------------------------------------
@pytest.mark.parametrize("text,name,n28", [
    ("axial", "axial/mean", 1),
    ("central:Axial/MEAN", "axial/mean", 1),
    ("tri-planar/mean+max", "tri-planar/mean+max", 3),
    ("all:axial/max", "all:axial/max", 28),
    ("strided:4:axial/mean", "strided:4:axial/mean", 7),
    ("all:tri-planar", "all:tri-planar/mean", 84),
    ("strided:100:sagittal/max", "strided:100:sagittal/max", 1),
])
def test_view_syntax_canonical_name_and_key(text, name, n28):
    v = VolumeView.parse(text)
    assert v.name == name and VolumeView.parse(v.name) == v and hash(VolumeView.parse(name)) == hash(v)
    assert v.as_dict() == dict(zip(("slices", "pool"), name.split("/")))
    assert v.n_slices(28) == n28


def test_views_differ_in_their_cache_keys():
    keys = {tuple(VolumeView.parse(t).as_dict().items()) for t in
            ("axial", "coronal", "all:axial", "strided:2:axial", "axial/max", "tri-planar/mean+max")}
    assert len(keys) == 6


@pytest.mark.parametrize("text", ["foo", "strided:axial", "strided:0:axial", "all:2:axial",
                                  "axial/avg", "axial/mean/max", "middle:axial"])
def test_bad_view_is_one_line_config_error(text):
    with pytest.raises(ConfigError) as err:
        VolumeView.parse(text)
    assert "\n" not in str(err.value)


def test_slice_indices():
    assert VolumeView.parse("axial").indices(28).tolist() == [13]
    assert VolumeView.parse("axial").indices(27).tolist() == [13]
    assert VolumeView.parse("strided:4:axial").indices(28).tolist() == [1, 5, 9, 13, 17, 21, 25]
    assert VolumeView.parse("strided:2:axial").indices(6).tolist() == [0, 2, 4]
    assert VolumeView.parse("strided:3:axial").indices(64).tolist() == list(range(0, 64, 3))
    assert VolumeView.parse("strided:28:axial").indices(28).tolist() == [13]  # K >= side: central
    assert VolumeView.parse("all:axial").indices(5).tolist() == [0, 1, 2, 3, 4]


VOLS = np.arange(2 * 6 * 6 * 6, dtype=np.int64).reshape(2, 6, 6, 6).astype(np.uint8)


def test_select_takes_the_named_planes_volume_major():
    v = VOLS
    tri = VolumeView.parse("tri-planar").select(v)
    assert tri.shape == (6, 6, 6) and tri.dtype == np.uint8
    # volume 0: axial, coronal, sagittal central planes (index 2 of 0..5), then volume 1
    for i in range(2):
        assert np.array_equal(tri[3 * i + 0], v[i, 2, :, :])
        assert np.array_equal(tri[3 * i + 1], v[i, :, 2, :])
        assert np.array_equal(tri[3 * i + 2], v[i, :, :, 2])
    allc = VolumeView.parse("all:coronal").select(v)
    assert allc.shape == (12, 6, 6)
    assert all(np.array_equal(allc[6 * i + h], v[i, :, h, :]) for i in range(2) for h in range(6))
    st = VolumeView.parse("strided:2:sagittal").select(v)
    assert st.shape == (6, 6, 6) and np.array_equal(st[4], v[1, :, :, 2])


@pytest.mark.parametrize("text", ["axial", "tri-planar", "all:sagittal", "strided:4:tri-planar"])
def test_select_numpy_and_torch_agree(text):
    vols = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 28), dtype=np.uint8)
    view = VolumeView.parse(text)
    a, b = view.select(vols), view.select(torch.from_numpy(vols))
    assert a.shape == (3 * view.n_slices(28), 28, 28) and b.dtype == torch.uint8
    assert np.array_equal(a, b.numpy())


def test_select_rejects_non_volumes_and_non_cubic_tri_planar():
    with pytest.raises(ConfigError, match=r"needs volumes \[N, D, H, W\]"):
        VolumeView().select(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="cubic"):
        VolumeView.parse("tri-planar").select(np.zeros((1, 4, 5, 6), np.uint8))
    assert VolumeView.parse("all:coronal").select(np.zeros((1, 4, 5, 6), np.uint8)).shape == (5, 4, 6)
    assert VolumeView.parse("all:coronal").n_slices((4, 5, 6)) == 5


def test_pooling_values():
    x = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 2.0],  # volume 0, 3 slices
                      [0.0, 0.0], [4.0, 1.0], [-2.0, 7.0]])  # volume 1
    mean = VolumeView("tri-planar", "mean").pool_features(x, 3)
    mx = VolumeView("tri-planar", "max").pool_features(x, 3)
    both = VolumeView("tri-planar", "mean+max").pool_features(x, 3)
    assert torch.allclose(mean, torch.tensor([[2.0, 2.0], [2 / 3, 8 / 3]]))
    assert torch.equal(mx, torch.tensor([[3.0, 5.0], [4.0, 7.0]]))
    assert torch.equal(both, torch.cat([mean, mx], 1)) and VolumeView(pool="mean+max").feature_dim(2) == 4
    assert torch.equal(VolumeView().pool_features(x.numpy(), 1), x)  # numpy accepted
    with pytest.raises(ConfigError, match=r"per-slice rows \[N \* 4, F\]"):
        VolumeView().pool_features(x, 4)


def test_pooling_scores_for_zero_shot():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    mean = VolumeView("all:axial", "mean").pool_scores(probs, 2, kind="probs")
    assert torch.allclose(mean, torch.tensor([[0.45, 0.55], [0.7, 0.3]]))
    mx = VolumeView("all:axial", "max").pool_scores(probs, 2, kind="probs")
    assert torch.allclose(mx, torch.tensor([[0.7, 0.8], [0.9, 0.5]]) / torch.tensor([[1.5], [1.4]]))
    assert torch.allclose(mx.sum(1), torch.ones(2))
    logits = torch.log(probs)
    assert torch.equal(VolumeView("all:axial", "max").pool_scores(logits, 2), logits.view(2, 2, 2).amax(1))
    with pytest.raises(ConfigError, match="mean\\+max"):
        VolumeView("axial", "mean+max").pool_scores(probs, 1)
    with pytest.raises(ConfigError, match="'logits' or 'probs'"):
        VolumeView().pool_scores(probs, 1, kind="softmax")


def test_encode_volumes_around_a_2d_encoder_in_chunks():
    vols = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 8), dtype=np.uint8)
    seen = []

    def encode(images):  # stands in for a 2D adapter's batched feature extraction
        seen.append(images.shape)
        x = torch.as_tensor(images).float()
        return torch.stack([x.mean((1, 2)), x.amax((1, 2))], 1)

    view = VolumeView.parse("strided:3:tri-planar/mean+max")
    full = encode_volumes(vols, view, encode)
    chunked = encode_volumes(vols, view, encode, chunk=2)
    assert full.shape == (5, 4) and torch.allclose(full, chunked)
    assert seen[0] == (5 * 9, 8, 8) and seen[1] == (2 * 9, 8, 8)
    assert view.indices(8).tolist() == [0, 3, 6]
    v0 = torch.as_tensor(vols[0]).float()
    planes = [v0[i] for i in (0, 3, 6)] + [v0[:, i] for i in (0, 3, 6)] + [v0[:, :, i] for i in (0, 3, 6)]
    assert torch.isclose(full[0, 0], torch.stack([p.mean() for p in planes]).mean())
    assert torch.isclose(full[0, 3], torch.stack([p.max() for p in planes]).max())


# -- the MedMNIST shape transform ---------------------------------------------------------
def test_shape_transform_train_factor_per_volume():
    vols = np.random.default_rng(0).integers(1, 256, (16, 5, 5, 5), dtype=np.uint8)
    t = VolumeTransform()
    x = t.prepare(vols, "cpu", train=True, generator=torch.Generator().manual_seed(3))
    assert x.shape == (16, 1, 5, 5, 5) and x.dtype == torch.float32
    ratio = x[:, 0] / (torch.from_numpy(vols).float() / 255.0)
    factors = ratio.flatten(1)
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), atol=1e-5)  # one per volume
    f = factors[:, 0]
    assert (f >= 0).all() and (f < 1).all() and f.unique().numel() == 16
    again = t.prepare(vols, "cpu", train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, again)  # drawn from the generator: reproducible
    other = t.prepare(vols, "cpu", train=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(x, other)


def test_shape_transform_eval_is_exactly_half_and_channels():
    vols = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 4), dtype=np.uint8)
    ref = torch.from_numpy(vols).float() / 255.0
    x = VolumeTransform().prepare(vols, "cpu")
    assert torch.equal(x[:, 0], ref * 0.5)
    rgb = VolumeTransform(channels=3).prepare(torch.from_numpy(vols), "cpu")
    assert rgb.shape == (3, 3, 4, 4, 4) and all(torch.equal(rgb[:, c], ref * 0.5) for c in range(3))
    plain = VolumeTransform(shape=False)
    assert torch.equal(plain.prepare(vols, "cpu", train=True)[:, 0], ref)
    assert VolumeTransform(channels=3).as_dict() == {"kind": "volume", "channels": 3, "shape": True,
                                                     "eval_factor": 0.5}


def test_volume_transform_rejects_bad_input():
    with pytest.raises(ConfigError, match=r"uint8 volumes \[N, D, H, W\]"):
        VolumeTransform().prepare(np.zeros((2, 28, 28), np.uint8), "cpu")
    with pytest.raises(ConfigError, match="uint8"):
        VolumeTransform().prepare(np.zeros((2, 4, 4, 4), np.float32), "cpu")
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        VolumeTransform(channels=2)


def test_ls_datasets_shows_3d_with_dimensionality(capsys, tmp_path, monkeypatch):
    from fmeval.cli import main

    from fmeval.cli.app import console

    monkeypatch.setattr(console, "width", 200)  # the console's width is fixed when it is created
    write_synthetic(tmp_path, "nodulemnist3d", 64, n=(2, 1, 1))
    with pytest.raises(SystemExit) as exc:
        main(["ls", "datasets", "--data-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "3D" in rows["vesselmnist3d"] and "28,64 " in rows["vesselmnist3d"]
    assert "2D" in rows["pathmnist"] and "28,64,128,224" in rows["pathmnist"]
    assert rows["nodulemnist3d"].rstrip(" │").endswith("64")  # the local size found on disk
