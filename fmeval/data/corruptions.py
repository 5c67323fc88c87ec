"""MedMNIST-C corruptions, applied through the authors' own ``medmnistc`` package.

The corruption code, the per-dataset corruption lists and the five severity
parameters all come from ``medmnistc.corruptions.registry.CORRUPTIONS_DS``;
fmeval never re-types them. What fmeval adds:

* **Per-image seeding.** ``medmnistc``'s ``DatasetManager`` seeds the global
  ``random`` / ``numpy.random`` generators once and then corrupts every image
  of every corruption and severity from one sequential stream, so an image's
  noise depends on everything generated before it. fmeval seeds each image on
  its own, exactly as ``DatasetManager(random_seed=s)`` seeds its first image,
  with ``s = image_seed(seed, corruption, severity, index)``. An image's
  corrupted pixels are then a function of (seed, corruption, severity, its
  index in the split) only: independent of batch size, of which subset is
  corrupted and of the order of corruptions, which is what a feature cache
  keyed by (corruption, severity, seed) needs. Deterministic corruptions
  (pixelate, JPEG, blurs, brightness, contrast, gamma) equal the released
  MedMNIST-C files; the noisy ones draw the same distribution with different
  realisations. The global generators are restored afterwards.
* **Batching** where ``medmnistc`` calls a pure, batchable function:
  ``GaussianBlur`` runs torchvision's ``gaussian_blur`` on a uint8 batch (the
  very function ``medmnistc`` calls per image, ~40x faster), and the pointwise
  ``Brightness`` / ``GammaCorrection`` become a 256-entry lookup table built
  by running ``medmnistc``'s own corruptor on a ramp image. Tests check all of
  them pixel for pixel against ``medmnistc``.
* **Two fixes** that keep ``medmnistc`` 0.1.0 usable: its ``MotionBlur`` calls
  ``np.fromstring``, removed in NumPy 2 (and mis-handles greyscale output at
  sizes other than 224 px); fmeval runs the same ImageMagick motion blur with
  ``np.frombuffer``. Greyscale datasets go through RGB and back to ``L`` as
  ``DatasetManager`` does.

MedMNIST-C defines its severities on 224 px images. At smaller sizes the
same parameters act on fewer pixels (a 9 px blur kernel is a third of a 28 px
image), so compare robustness only at one size; three corruptions need a
minimum size (:data:`MIN_SIZE`) because they place 10 px margins or letters.
"""

from __future__ import annotations

import importlib.metadata
import random
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable

import numpy as np

from fmeval.errors import FmevalError
from fmeval.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
SCHEME_VERSION = 1  # bump when seeding or kernels change: cached corrupted features become stale
MEDMNISTC_VERSION = "0.1.0"
INSTALL_HINT = (
    "install it with scripts/install-robustness.sh (pip install -e '.[robustness]', "
    f"pip install --no-deps medmnistc=={MEDMNISTC_VERSION}, and ImageMagick's libMagickWand from apt)"
)
# Smallest image side on which medmnistc's code can place its marks (from its source:
# 10 px margins around 32 px inks, bubbles of radius <= 17, words of up to 10 letters x 8 px).
MIN_SIZE = {"bubble": 64, "stain_deposit": 64, "characters": 128}
_CHUNK = 256  # images converted to RGB at once (memory only: results are per image)


class CorruptionError(FmevalError):
    """A corruption cannot be applied (unknown name, bad severity, missing package)."""


@dataclass(frozen=True)
class CorruptionSet:
    """Which MedMNIST-C dataset's corruptions and severity parameters apply to a dataset, and why.

    MedMNIST-C defines its corruption list and the five parameters of each per
    MedMNIST dataset (a chest X-ray gets gamma changes, a pathology slide stain
    deposits). A MedMNIST dataset uses its own; a user dataset uses the one its
    card names in ``corruptions_like`` (nothing is guessed from channels or free
    text). ``rule`` says which, and goes into the report.
    """

    like: str  # a MedMNIST-C dataset (a key of medmnistc's CORRUPTIONS_DS)
    rule: str

    def as_dict(self) -> dict[str, str]:
        return {"dataset": self.like, "rule": self.rule}


#: MedMNIST v2's modality of each MedMNIST-C dataset (its Table 1), to help a card pick ``corruptions_like``.
MODALITY_OF = {
    "pathmnist": "colon pathology", "chestmnist": "chest X-ray", "pneumoniamnist": "chest X-ray",
    "dermamnist": "dermatoscope", "octmnist": "retinal OCT", "retinamnist": "fundus camera",
    "breastmnist": "breast ultrasound", "bloodmnist": "blood cell microscope",
    "tissuemnist": "kidney cortex microscope", "organamnist": "abdominal CT (axial)",
    "organcmnist": "abdominal CT (coronal)", "organsmnist": "abdominal CT (sagittal)",
}


def modality_hint() -> str:
    """``pathmnist (colon pathology), chestmnist (chest X-ray), ...``: the choices, in one line."""
    return ", ".join(f"{flag} ({m})" for flag, m in MODALITY_OF.items())


# ---------------------------------------------------------------------------
# medmnistc access
# ---------------------------------------------------------------------------
def medmnistc_version() -> str | None:
    try:
        return importlib.metadata.version("medmnistc")
    except importlib.metadata.PackageNotFoundError:
        return None


def _corruptions_ds() -> dict[str, dict[str, Any]]:
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except (ImportError, OSError) as exc:  # wand raises ImportError without libMagickWand
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptionError(f"robustness needs the medmnistc package ({reason}); {INSTALL_HINT}.") from None
    return CORRUPTIONS_DS


def _dataset_corruptions(dataset: str) -> dict[str, Any]:
    table = _corruptions_ds()
    reg: Registry[str] = Registry("MedMNIST-C dataset", CorruptionError)
    for flag in table:
        reg.add(flag, flag)
    return table[reg.get(dataset)]


def corruptions_for(dataset: str) -> tuple[str, ...]:
    """The MedMNIST-C corruptions of a dataset, in ``medmnistc``'s order."""
    return tuple(_dataset_corruptions(dataset))


def _corruptor(dataset: str, corruption: str) -> Any:
    per_ds = _dataset_corruptions(dataset)
    if corruption not in per_ds:
        raise CorruptionError(
            f"{corruption!r} is not a MedMNIST-C corruption of {dataset}; "
            f"use one of: {', '.join(per_ds)}."
        )
    return per_ds[corruption]


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [round(float(x), 10) for x in v.tolist()]
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


def severity_params(dataset: str, corruption: str) -> list[Any]:
    """``medmnistc``'s parameter of each of the 5 severities (JSON-ready, for reports)."""
    params = _corruptor(dataset, corruption).severity_params
    return [_jsonable(params[s - 1]) for s in SEVERITIES]


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise CorruptionError(f"severity must be one of 1..5, got {severity!r}.")
    return int(severity)


def corruption_key(dataset: str, corruption: str, severity: int, seed: int) -> dict[str, Any]:
    """What determines corrupted images, for feature-cache keys and reports.

    Combine it with the clean test split's key (dataset MD5, size, model,
    preprocessing): ``{**clean_key, "corruption": corruption_key(...)}``.
    """
    severity = _check_severity(severity)
    return {
        "dataset": dataset.lower(),
        "corruption": corruption,
        "severity": severity,
        "param": severity_params(dataset, corruption)[severity - 1],
        "seed": int(seed),
        "medmnistc": medmnistc_version(),
        "scheme": SCHEME_VERSION,
    }


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def image_seeds(seed: int, corruption: str, severity: int, indices: np.ndarray) -> np.ndarray:
    """Per-image 32-bit seeds: a function of (seed, corruption, severity, index) only."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise CorruptionError(f"seed must be a non-negative integer, got {seed!r}.")
    base = _splitmix64(np.uint64(seed))
    base = _splitmix64(base ^ np.uint64(zlib.crc32(corruption.encode())))
    base = _splitmix64(base ^ np.uint64(_check_severity(severity)))
    mixed = _splitmix64(np.asarray(indices, dtype=np.uint64) ^ base)
    return (mixed >> np.uint64(32)).astype(np.uint32)


class _SeededGlobals:
    """Seed ``random``, ``numpy.random`` and the corruptor's ``rng`` per image, as
    ``medmnistc.utils.seed_everything`` does, and restore all three afterwards."""

    def __init__(self, corruptor: Any) -> None:
        self.corruptor = corruptor

    def __enter__(self) -> "_SeededGlobals":
        self._np, self._py = np.random.get_state(), random.getstate()
        self._rng = self.corruptor.__dict__.get("rng", _MISSING)
        return self

    def seed(self, s: int) -> None:
        random.seed(int(s))
        np.random.seed(int(s))
        self.corruptor.rng = np.random.default_rng(int(s))  # ImpulseNoise's skimage generator

    def __exit__(self, *exc: object) -> None:
        np.random.set_state(self._np)
        random.setstate(self._py)
        if self._rng is _MISSING:
            self.corruptor.__dict__.pop("rng", None)
        else:
            self.corruptor.rng = self._rng


_MISSING = object()


# ---------------------------------------------------------------------------
# Kernels: [N, H, W, C] uint8 -> same (C = 3, or 1 for per-channel kernels on greyscale)
# ---------------------------------------------------------------------------
Kernel = Callable[[Any, np.ndarray, int, np.ndarray], np.ndarray]
KERNELS: Registry[Kernel] = Registry("corruption kernel", CorruptionError)


def _as_rgb_array(out: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """medmnistc's output as an array, checked against the shape it should have."""
    arr = np.asarray(out)
    if arr.shape != shape or arr.dtype != np.uint8:
        raise CorruptionError(f"medmnistc's {name} returned {arr.shape} {arr.dtype}, expected {shape} uint8.")
    return arr


def _per_image(apply: Callable[[Any, Any, int], Any]) -> Kernel:
    """Run a per-image PIL corruption with each image seeded on its own."""

    def kernel(corruptor: Any, rgb: np.ndarray, sev: int, seeds: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty_like(rgb)
        name = type(corruptor).__name__
        with _SeededGlobals(corruptor) as g:
            for i in range(len(rgb)):  # medmnistc works on one PIL image at a time
                g.seed(seeds[i])
                out[i] = _as_rgb_array(apply(corruptor, Image.fromarray(rgb[i]), sev), rgb.shape[1:], name)
        return out

    return kernel


def _medmnistc_apply(corruptor: Any, img: Any, sev: int) -> Any:
    return corruptor.apply(img, sev)


def _motion_blur_apply(corruptor: Any, img: Any, sev: int) -> np.ndarray:
    """``medmnistc`` MotionBlur.apply with ``np.frombuffer`` (``fromstring`` is gone in
    NumPy 2) and greyscale detected by ``ndim`` (it assumed 224 px images)."""
    import cv2
    from medmnistc.corruptions.filter import MotionImage

    radius, sigma = corruptor.severity_params[sev]
    buf = BytesIO()
    img.save(buf, format="PNG")
    with MotionImage(blob=buf.getvalue()) as wimg:
        wimg.motion_blur(radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45))
        blob = wimg.make_blob()
    dec = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
    dec = np.repeat(dec[..., None], 3, axis=-1) if dec.ndim == 2 else dec[..., [2, 1, 0]]
    return np.clip(dec, 0, 255).astype(np.uint8)


def _gaussian_blur_batch(corruptor: Any, rgb: np.ndarray, sev: int, seeds: np.ndarray) -> np.ndarray:
    """torchvision's ``gaussian_blur`` (what ``medmnistc`` calls per PIL image) on a uint8 batch."""
    import torch
    import torchvision.transforms.functional as TF

    batch = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
    out = TF.gaussian_blur(batch, kernel_size=corruptor.severity_params[sev])
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _pointwise_lut(corruptor: Any, rgb: np.ndarray, sev: int, seeds: np.ndarray) -> np.ndarray:
    """A per-pixel corruption is its own 256-entry table: run ``medmnistc`` once on a ramp."""
    from PIL import Image

    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=-1)
    table = _as_rgb_array(corruptor.apply(Image.fromarray(ramp), sev), ramp.shape, type(corruptor).__name__)
    if not (table == table[..., :1]).all():
        raise CorruptionError(f"{type(corruptor).__name__} is not channel-independent; cannot tabulate it.")
    return table[..., 0].reshape(256)[rgb]


# per_channel="yes": the kernel treats channels alike and independently, so a greyscale
# image (three equal channels, whose luma is that channel) can go through as one channel.
KERNELS.add("MotionBlur", _per_image(_motion_blur_apply), "NumPy-2-safe copy of medmnistc's")
KERNELS.add("GaussianBlur", _gaussian_blur_batch, "batched torchvision gaussian_blur", per_channel="yes")
KERNELS.add("Brightness", _pointwise_lut, "lookup table from medmnistc on a ramp", per_channel="yes")
KERNELS.add("GammaCorrection", _pointwise_lut, "lookup table from medmnistc on a ramp", per_channel="yes")
_DEFAULT_KERNEL = _per_image(_medmnistc_apply)


def _kernel(corruptor: Any) -> tuple[Kernel, bool]:
    """The kernel for a corruptor, and whether greyscale may skip the RGB round trip."""
    name = type(corruptor).__name__
    if name not in KERNELS:
        return _DEFAULT_KERNEL, False
    entry = KERNELS.entry(name)
    return entry.obj, entry.tags.get("per_channel") == "yes"


def rgb_to_l(rgb: np.ndarray) -> np.ndarray:
    """PIL's ``convert('L')`` (ITU-R 601-2 luma, fixed point, rounded), vectorised."""
    r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------
def _check_images(images: np.ndarray, corruption: str) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise CorruptionError(f"corrupt() needs uint8 images [N, H, W] or [N, H, W, 3], got {x.dtype} {x.shape}.")
    side = min(x.shape[1:3])
    if side < MIN_SIZE.get(corruption, 0):
        raise CorruptionError(
            f"the MedMNIST-C corruption {corruption!r} needs images of at least "
            f"{MIN_SIZE[corruption]} px (these are {side} px); use a larger --size."
        )
    return x


def corrupt(
    images: np.ndarray,
    dataset: str,
    corruption: str,
    severity: int,
    seed: int,
    *,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """MedMNIST-C ``corruption`` at ``severity`` (1..5) of uint8 images, same shape and dtype.

    ``indices``: each image's index in its split (default ``0..N-1``); an image
    is corrupted identically whether it comes alone, in a subset or in the
    full split. Greyscale input ([N, H, W]) is corrupted in RGB and converted
    back with PIL's luma, as ``medmnistc``'s ``DatasetManager`` does.
    """
    corruptor = _corruptor(dataset, corruption)
    severity = _check_severity(severity)
    x = _check_images(images, corruption)
    idx = np.arange(len(x)) if indices is None else np.asarray(indices)
    if idx.shape != (len(x),):
        raise CorruptionError(f"indices must have one entry per image ({len(x)}), got shape {idx.shape}.")
    seeds = image_seeds(seed, corruption, severity, idx)
    kernel, per_channel = _kernel(corruptor)
    gray = x.ndim == 3
    out = np.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK]
        if gray:
            part = part[..., None] if per_channel else np.repeat(part[..., None], 3, axis=-1)
        try:
            res = kernel(corruptor, part, severity - 1, seeds[start:start + _CHUNK])
        except ValueError as exc:  # medmnistc's random placements on images too small for them
            raise CorruptionError(
                f"medmnistc could not apply {corruption!r} to {x.shape[1]}x{x.shape[2]} px images ({exc})."
            ) from None
        if gray:
            res = res[..., 0] if per_channel else rgb_to_l(res)
        out[start:start + _CHUNK] = res
    return out
