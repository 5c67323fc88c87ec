"""MedMNIST-C corruptions: fmeval's images equal medmnistc's own, per image and seed."""

from __future__ import annotations

import copy
import random
import sys

import numpy as np
import pytest

from fmeval.data import corruptions as C
from fmeval.data.corruptions import CorruptionError, corrupt, corruption_key, corruptions_for, image_seeds
from helpers import ROBUSTNESS_INSTALL, require_extra

PNEUMONIA_CORRUPTIONS = (
    "pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise",
    "gaussian_blur", "brightness_up", "brightness_down", "contrast_up", "contrast_down",
    "gamma_corr_up", "gamma_corr_down",
)
DETERMINISTIC = ("pixelate", "jpeg_compression", "gaussian_blur", "brightness_up", "brightness_down",
                 "contrast_up", "contrast_down", "gamma_corr_up", "gamma_corr_down")


def _need(module: str) -> None:
    require_extra(module, "robustness", ROBUSTNESS_INSTALL)


@pytest.fixture(scope="module")
def medmnistc():
    _need("medmnistc.corruptions.registry")
    import medmnistc

    return medmnistc


@pytest.fixture(scope="module")
def pneumonia_test(pneumonia_root):
    with np.load(pneumonia_root / "pneumoniamnist.npz") as npz:
        return npz["test_images"][:12].copy(), npz["test_labels"][:12].copy()


def _dataset_manager(tmp_path, flag, images, corruptor_name, corruptor, seed):
    """Corrupt ``images`` with medmnistc's own DatasetManager (its README's entry point)
    restricted to one corruption; returns its [5 * N, ...] output (severity-major)."""
    import medmnistc.dataset_manager as dm

    src, out = tmp_path / f"src-{seed}", tmp_path / f"out-{seed}"
    src.mkdir(exist_ok=True)
    # DatasetManager reads {flag}_224.npz through medmnist's class; it never checks the size.
    np.savez(src / f"{flag}_224.npz", test_images=images, test_labels=np.zeros((len(images), 1), np.uint8))
    saved, state = dm.CORRUPTIONS_DS[flag], (np.random.get_state(), random.getstate())
    dm.CORRUPTIONS_DS[flag] = {corruptor_name: corruptor}
    try:
        dm.DatasetManager(str(src), str(out), random_seed=int(seed)).create_dataset(flag)
    finally:
        dm.CORRUPTIONS_DS[flag] = saved
        np.random.set_state(state[0])
        random.setstate(state[1])
    with np.load(out / flag / f"{corruptor_name}.npz") as npz:
        return npz["test_images"]


def test_every_pneumonia_corruption_equals_medmnistc_dataset_manager(medmnistc, pneumonia_test, tmp_path, monkeypatch):
    """For each image, DatasetManager seeded with fmeval's per-image seed produces the
    same pixels as fmeval (noisy corruptions included). DatasetManager always starts at
    severity index 0, so it gets a copy of the corruptor whose first parameter is severity 3's."""
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    assert corruptions_for("pneumoniamnist") == PNEUMONIA_CORRUPTIONS
    images, severity, seed, indices = pneumonia_test[0], 3, 2024, (0, 5, 11)
    for name in PNEUMONIA_CORRUPTIONS:
        ours = corrupt(images[list(indices)], "pneumoniamnist", name, severity, seed, indices=np.array(indices))
        shifted = copy.copy(CORRUPTIONS_DS["pneumoniamnist"][name])
        shifted.severity_params = list(shifted.severity_params[severity - 1:]) + list(shifted.severity_params[:severity - 1])
        for j, i in enumerate(indices):
            s = image_seeds(seed, name, severity, np.array([i]))[0]
            theirs = _dataset_manager(tmp_path, "pneumoniamnist", images[i:i + 1], name, shifted, s)
            np.testing.assert_array_equal(ours[j], theirs[0], err_msg=f"{name} image {i}")


@pytest.mark.parametrize("size", [28, 224])
def test_deterministic_corruptions_equal_medmnistc_at_every_severity(medmnistc, pneumonia_test, tmp_path, monkeypatch, size):
    """Batched kernels (blur batch, brightness/gamma tables) and per-image ones match
    DatasetManager on several images at all 5 severities, at 28 px and at MedMNIST-C's 224 px."""
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    images = pneumonia_test[0][:8] if size == 28 else np.kron(pneumonia_test[0][:2], np.ones((8, 8), np.uint8))
    for name in DETERMINISTIC:
        theirs = _dataset_manager(tmp_path, "pneumoniamnist", images, name, CORRUPTIONS_DS["pneumoniamnist"][name], 0)
        for sev in C.SEVERITIES:
            ours = corrupt(images, "pneumoniamnist", name, sev, seed=0)
            np.testing.assert_array_equal(ours, theirs[(sev - 1) * len(images):sev * len(images)], err_msg=f"{name} s{sev}")


@pytest.mark.parametrize("flag,rgb", [("breastmnist", False), ("bloodmnist", True)])
def test_motion_blur_fix_equals_medmnistc_with_numpy1_fromstring(medmnistc, tmp_path, monkeypatch, flag, rgb):
    """medmnistc's MotionBlur calls np.fromstring (gone in NumPy 2): with a frombuffer
    stand-in it runs at 224 px, and fmeval's copy must give the same pixels."""
    monkeypatch.setattr(np, "fromstring", lambda s, dtype: np.frombuffer(s, dtype), raising=False)
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(1, 28, 28) + ((3,) if rgb else ()), dtype=np.uint8)
    image = np.kron(base, np.ones((1, 8, 8) + ((1,) if rgb else ()), np.uint8))
    corruptor = CORRUPTIONS_DS[flag]["motion_blur"]
    s = image_seeds(7, "motion_blur", 1, np.array([0]))[0]
    theirs = _dataset_manager(tmp_path, flag, image, "motion_blur", corruptor, s)
    ours = corrupt(image, flag, "motion_blur", 1, seed=7)
    assert ours.shape == image.shape
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert not np.array_equal(ours, image)


def test_per_image_seeding_is_independent_of_batch_order_and_global_state(medmnistc, pneumonia_test):
    x = pneumonia_test[0]
    for name in ("gaussian_noise", "impulse_noise", "shot_noise", "gaussian_blur", "contrast_up"):
        full = corrupt(x, "pneumoniamnist", name, 4, seed=3)
        state = np.random.get_state()[1].copy(), random.getstate()
        part = corrupt(x[[9, 2, 5]], "pneumoniamnist", name, 4, seed=3, indices=np.array([9, 2, 5]))
        np.testing.assert_array_equal(part, full[[9, 2, 5]], err_msg=name)
        np.testing.assert_array_equal(np.random.get_state()[1], state[0])  # caller's RNG untouched
        assert random.getstate() == state[1]
        np.testing.assert_array_equal(corrupt(x, "pneumoniamnist", name, 4, seed=3), full)
    noisy = corrupt(x, "pneumoniamnist", "gaussian_noise", 4, seed=3)
    assert not np.array_equal(noisy, corrupt(x, "pneumoniamnist", "gaussian_noise", 4, seed=4))
    assert not np.array_equal(noisy, corrupt(x, "pneumoniamnist", "gaussian_noise", 5, seed=3))
    assert noisy.dtype == np.uint8 and noisy.shape == x.shape


def test_small_images_and_bad_arguments_get_one_line_errors(medmnistc, pneumonia_test):
    x = pneumonia_test[0][:2]
    rgb = np.repeat(x[..., None], 3, axis=-1)
    with pytest.raises(CorruptionError, match="at least 64 px"):
        corrupt(rgb, "bloodmnist", "bubble", 1, seed=0)
    big = np.kron(rgb, np.ones((1, 3, 3, 1), np.uint8))  # 84 px: enough for bubbles
    assert corrupt(big, "bloodmnist", "bubble", 5, seed=0).shape == big.shape
    with pytest.raises(CorruptionError, match="not a MedMNIST-C corruption of pneumoniamnist.*pixelate"):
        corrupt(x, "pneumoniamnist", "bubble", 1, seed=0)
    with pytest.raises(CorruptionError, match="severity must be one of 1..5"):
        corrupt(x, "pneumoniamnist", "pixelate", 0, seed=0)
    with pytest.raises(CorruptionError, match="unknown MedMNIST-C dataset 'pneumonia'.*pneumoniamnist"):
        corrupt(x, "pneumonia", "pixelate", 1, seed=0)
    with pytest.raises(CorruptionError, match="uint8"):
        corrupt(x.astype(np.float32), "pneumoniamnist", "pixelate", 1, seed=0)
    with pytest.raises(CorruptionError, match="one entry per image"):
        corrupt(x, "pneumoniamnist", "pixelate", 1, seed=0, indices=np.arange(3))


def test_corruption_key_names_everything_that_changes_the_pixels(medmnistc):
    key = corruption_key("pneumoniamnist", "gaussian_blur", 2, seed=5)
    assert key == {
        "dataset": "pneumoniamnist", "corruption": "gaussian_blur", "severity": 2, "param": 5,
        "seed": 5, "medmnistc": "0.1.0", "scheme": C.SCHEME_VERSION,
    }
    assert corruption_key("pneumoniamnist", "gaussian_blur", 3, seed=5) != key
    assert corruption_key("pneumoniamnist", "gaussian_blur", 2, seed=6) != key
    assert C.severity_params("dermamnist", "zoom_blur")[0][:3] == [1.0, 1.01, 1.02]


def test_missing_medmnistc_names_the_install_step(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnistc.corruptions.registry", None)  # import now fails
    with pytest.raises(CorruptionError, match=r"needs the medmnistc package.*install-robustness\.sh") as exc:
        corruptions_for("pneumoniamnist")
    assert "\n" not in str(exc.value)


def test_rgb_to_l_equals_pil_convert():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(C.rgb_to_l(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


def test_image_seeds_are_a_function_of_their_arguments_only():
    a = image_seeds(1, "shot_noise", 2, np.arange(5))
    np.testing.assert_array_equal(a[[3, 1]], image_seeds(1, "shot_noise", 2, np.array([3, 1])))
    assert len(set(a.tolist())) == 5
    for other in (image_seeds(2, "shot_noise", 2, np.arange(5)), image_seeds(1, "gaussian_noise", 2, np.arange(5)),
                  image_seeds(1, "shot_noise", 3, np.arange(5))):
        assert not np.array_equal(a, other)
    # Pinned: changing the seeding silently would serve stale cached features (bump SCHEME_VERSION).
    assert a[:3].tolist() == [3832492020, 3695213564, 2629166080]
    with pytest.raises(CorruptionError, match="seed"):
        image_seeds(-1, "shot_noise", 2, np.arange(2))
