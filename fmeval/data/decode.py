"""Decoding image files into one uint8 array per split, in worker processes.

Conversion rules (stated once, recorded in every report through the source's
``describe()``):

- 8-bit grey (``L``, ``1``, grey palettes, ``LA``) stays grey; anything in colour
  (``RGB``, ``RGBA``, ``P``, ``CMYK``, ...) becomes RGB, alpha dropped.
- 16-bit images (``I;16*``, and ``I`` with values in 0..65535) are scaled linearly
  from the full 16-bit range: ``round(x / 257)``. Floating-point images are refused.
- If a dataset mixes grey and colour, grey images are repeated to 3 channels.
- Every image is resized to the run's ``--size`` square (PIL bicubic, antialiased,
  aspect ratio not kept) unless it already has that shape.

The pixel hash (BLAKE2b of the decoded array before resizing) finds identical
images across splits (leakage) and is kept with the decoded arrays.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESIZE_RULE = "PIL bicubic to size x size (antialiased, aspect ratio not kept); 16-bit: round(x/257)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_GREY = {"L", "1", "LA"}
_SIXTEEN = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass
class Decoded:
    """One file's outcome: ``array`` (uint8 [S, S] or [S, S, 3]) or ``error``."""

    array: np.ndarray | None = None
    error: str | None = None
    pixel_hash: str = ""
    fmt: str = ""  # the file's real format (PIL's)
    bits: int = 8
    channels: int = 1


VOLUME_SUFFIXES = (".nii", ".nii.gz")
VOLUME_RULE = ("NIfTI: the stored array as is, axes (D, H, W) = array axes 0, 1, 2 (no reorientation); "
               "uint8 kept, uint16 round(x/257), other integer or float types refused; no resizing")


def is_volume_file(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES)


def decode_volume(path: str, size: int) -> Decoded:
    """One NIfTI volume (nibabel, optional) as uint8 [S, S, S], by :data:`VOLUME_RULE`."""
    try:
        import nibabel
    except ImportError:
        return Decoded(error="reading NIfTI needs the optional nibabel package (pip install 'fmeval[data]')")
    try:
        a = np.asanyarray(nibabel.load(path).dataobj)
    except Exception as exc:  # nibabel raises many kinds for a damaged file
        return Decoded(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype == np.uint16:
        a, bits = np.round(a.astype(np.float64) / 257.0).astype(np.uint8), 16
    elif a.dtype == np.uint8:
        bits = 8
    else:
        return Decoded(error=f"voxel type {a.dtype} is not supported (uint8 or uint16)")
    if a.shape != (size, size, size):
        return Decoded(error=f"volume is {'x'.join(map(str, a.shape))}, expected {size}^3 (--size); "
                             "volumes are not resized")
    digest = hashlib.blake2b(a.tobytes(), digest_size=16)
    digest.update(repr(a.shape).encode())
    return Decoded(array=np.ascontiguousarray(a), pixel_hash=digest.hexdigest(), fmt="NIfTI", bits=bits, channels=1)


def decode_file(path: str | bytes, size: int) -> Decoded:
    """Open, fully decode, convert and resize one image (a worker's unit of work); ``path`` may
    be the encoded bytes themselves (an image stored in a Hugging Face dataset)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            fmt = im.format or ""
            im.load()  # decodes every byte: a truncated file fails here, not later
            arr, bits = _to_uint8(im)
    except UnidentifiedImageError:
        return Decoded(error="not an image file PIL can read")
    except (OSError, ValueError, SyntaxError) as exc:
        return Decoded(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if arr is None:
        return Decoded(error=f"pixel type {bits} is not supported (8- or 16-bit grey or colour only)", fmt=fmt)
    digest = hashlib.blake2b(arr.tobytes(), digest_size=16)
    digest.update(repr(arr.shape).encode())
    if arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
    return Decoded(array=arr, pixel_hash=digest.hexdigest(), fmt=fmt, bits=bits,
                   channels=1 if arr.ndim == 2 else 3)


def _to_uint8(im) -> tuple[np.ndarray | None, int | str]:
    mode = im.mode
    if mode in _SIXTEEN:
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            return None, f"{mode} (values outside 0..65535)"
        return np.round(a.astype(np.float64) / 257.0).astype(np.uint8), 16
    if mode == "F":
        return None, "F (floating point)"
    if mode in _GREY:
        return np.asarray(im.convert("L")), 8
    if mode == "P":
        rgb = im.convert("RGB")
        a = np.asarray(rgb)
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            return np.ascontiguousarray(a[..., 0]), 8
        return a, 8
    return np.asarray(im.convert("RGB")), 8


def format_mismatch(path: str, fmt: str) -> str | None:
    """'a JPEG file named .png' when the content's format differs from the suffix."""
    expect = _FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())
    if expect and fmt and fmt != expect and not (expect == "TIFF" and fmt.startswith("TIFF")):
        return f"a {fmt} file named {Path(path).suffix}"
    return None


def _work(args: tuple[str, int]) -> Decoded:
    path, size = args
    if isinstance(path, str) and is_volume_file(path):
        return decode_volume(path, size)
    return decode_file(path, size)


def decode_all(paths: list[str] | list[bytes], size: int, description: str, workers: int | None = None) -> list[Decoded]:
    """Decode every file, in order, with a progress bar; worker processes when it pays."""
    from fmeval.progress import progress_bar

    n = len(paths)
    workers = workers or decode_workers()
    jobs = [(p, size) for p in paths]
    out: list[Decoded] = []
    with progress_bar(description, n, "images") as tick:
        if workers <= 1 or n < 64:
            for job in jobs:
                out.append(_work(job))
                tick()
            return out
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        chunk = max(1, min(256, n // (workers * 8)))
        with ctx.Pool(workers) as pool:
            for d in pool.imap(_work, jobs, chunksize=chunk):
                out.append(d)
                tick()
    return out


def decode_workers() -> int:
    """All usable cores (``FMEVAL_DECODE_WORKERS`` overrides)."""
    from fmeval.settings import env

    value = env("FMEVAL_DECODE_WORKERS")
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def stack_shape(n: int, channels: int, size: int, ndim: int = 2) -> tuple[int, ...]:
    if ndim == 3:
        return (n, size, size, size)
    return (n, size, size) if channels == 1 else (n, size, size, 3)


def stack(decoded: list[Decoded], channels: int, size: int, ndim: int = 2, out: np.ndarray | None = None) -> np.ndarray:
    """One uint8 array [N, S, S] (grey), [N, S, S, 3] or volumes [N, S, S, S], written into ``out``
    when given (a cache file); grey repeated to 3 channels when the dataset is colour."""
    if out is None:
        out = np.empty(stack_shape(len(decoded), channels, size, ndim), dtype=np.uint8)
    for i, d in enumerate(decoded):
        a = d.array
        out[i] = a if ndim == 3 or (a.ndim == 2) == (channels == 1) else np.repeat(a[..., None], 3, axis=2)
    return out
