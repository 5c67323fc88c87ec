"""Finding, verifying and reading MedMNIST npz files.

The official layout is one file per dataset and size (``{flag}.npz`` for 28 px,
``{flag}_{size}.npz`` otherwise) with ``{split}_images`` / ``{split}_labels``.
We read the npz directly instead of through ``medmnist``'s Dataset class,
whose ``len()`` insists on the official sample counts (breaking subsets and
test fixtures); every inconsistency becomes a one-line :class:`DataError`.
2D and 3D datasets share this path: the metadata record says which shape a
sample has (``DatasetInfo.image_shape``), and a file of the other kind (a 2D
file saved under a 3D name, a volume of the wrong depth) is named as such.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fmeval.data.info import SPLITS, DatasetInfo, dataset_info, is_multilabel
from fmeval.errors import DataError
from fmeval.io import file_digest, file_identity, read_memo, write_memo


def default_data_root() -> Path:
    """``$FMEVAL_DATA_ROOT``, else where ``medmnist`` keeps its files."""
    from fmeval.settings import data_root

    if data_root() is not None:
        return data_root()
    try:
        from medmnist.info import DEFAULT_ROOT

        return Path(DEFAULT_ROOT)
    except Exception:  # pragma: no cover - medmnist is a dependency
        return Path.home() / ".medmnist"


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W], [N, H, W, 3] or volumes [N, D, H, W]
    labels: np.ndarray  # int64 [N, label_width]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MedMNIST:
    """One dataset at one size, validated against its metadata on first use."""

    info: DatasetInfo
    size: int
    path: Path
    md5_policy: str = "warn"  # "warn" | "strict" | "off"
    warnings: list[str] = field(default_factory=list)
    _splits: dict[str, Split] = field(default_factory=dict, repr=False)
    _labels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def flag(self) -> str:
        return self.info.flag

    @property
    def task(self) -> str:
        return self.info.task

    @cached_property
    def md5(self) -> str:
        return cached_md5(self.path)

    @cached_property
    def md5_verified(self) -> bool | None:
        """True: the official file; False: differs (warned); None: not checked."""
        if self.md5_policy == "off":
            return None
        expected = self.info.md5(self.size)
        if expected is None:
            return None
        if self.md5 == expected:
            return True
        msg = (
            f"{self.path.name} has MD5 {self.md5}, not the official {expected}: "
            "results may not be comparable with published numbers"
        )
        if self.md5_policy == "strict":
            raise DataError(msg + " (--md5 strict).")
        self.warnings.append(msg)
        return False

    @cached_property
    def _npz(self):
        _check_npz_magic(self.path)
        try:
            return np.load(self.path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{self.path} is not a readable npz file ({_no_pickle(exc)}).") from None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}.")
        if name not in self._splits:
            self._splits[name] = self._load_split(name)
        return self._splits[name]

    def _read(self, key: str) -> np.ndarray:
        npz = self._npz
        if key not in npz.files:
            raise DataError(
                f"{self.path} has no array {key!r} (found: {', '.join(npz.files) or 'none'}); "
                "expected the MedMNIST layout train/val/test _images/_labels."
            )
        try:
            return npz[key]
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: array {key!r} is corrupt ({_no_pickle(exc)}).") from None

    def labels(self, name: str) -> np.ndarray:
        """Validated labels of a split without decompressing its images.

        A cached evaluation needs only the labels; the images are read (and
        validated) only when features must be computed.
        """
        if name in self._splits:
            return self._splits[name].labels
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}.")
        if name not in self._labels:
            self._labels[name] = self._check_labels(name, self._read(f"{name}_labels"))
        return self._labels[name]

    def _check_labels(self, name: str, labels: np.ndarray) -> np.ndarray:
        where = f"{self.path.name} [{name}]"
        width = self.info.label_width
        if labels.ndim == 1 and width == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[1] != width:
            raise DataError(
                f"{where}: labels have shape {labels.shape}, expected [N, {width}] for a "
                f"{self.task} task."
            )
        if len(labels) == 0:
            raise DataError(
                f"{where}: the {name} split has no samples; every evaluation needs samples in "
                "train, val and test."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.mod(labels, 1) == 0):
                raise DataError(f"{where}: labels are not integers.")
        labels = labels.astype(np.int64)
        hi = 2 if is_multilabel(self.task) else self.info.n_classes
        if labels.size and (labels.min() < 0 or labels.max() >= hi):
            raise DataError(
                f"{where}: labels span [{labels.min()}, {labels.max()}], expected [0, {hi - 1}]"
                f" ({self.info.n_classes} classes)."
            )
        official = self.info.n_samples.get(name)
        if official is not None and official != len(labels):
            msg = f"{name} split has {len(labels)} samples, the official {self.flag} has {official}"
            if msg not in self.warnings:
                self.warnings.append(msg)
        return labels

    def _load_split(self, name: str) -> Split:
        images = self._read(f"{name}_images")
        labels = self.labels(name)
        where = f"{self.path.name} [{name}]"
        expect = self.info.image_shape(self.size)
        if images.dtype != np.uint8:
            raise DataError(f"{where}: images are {images.dtype}, expected uint8 (0-255).")
        if images.ndim != len(expect) + 1 or images.shape[1:] != expect:
            unit = f"{self.size}^3 voxels" if self.info.is_volume else f"{self.size} px"
            raise DataError(
                f"{where}: images have shape {images.shape}, expected [N, {', '.join(map(str, expect))}]"
                f" for {self.flag} at {unit}{_shape_hint(self.info, self.size, images.shape)}."
            )
        if len(labels) != len(images):
            raise DataError(f"{where}: {len(images)} images but {len(labels)} labels.")
        return Split(images=images, labels=labels)

    def describe(self) -> dict:
        counts = {f"n_{s}": len(self.labels(s)) for s in SPLITS}
        return {
            "flag": self.flag,
            "size": self.size,
            "task": self.task,
            "classes": list(self.info.labels),
            "path": str(self.path),
            "md5": self.md5,
            "md5_verified": self.md5_verified,
            **counts,
        }


#: The first bytes of a zip archive (an npz is one): a local file header, or an
#: empty archive's end-of-directory record.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _check_npz_magic(path: Path) -> None:
    """Refuse anything that is not a zip before numpy guesses what it is.

    ``np.load`` takes any non-zip, non-npy file for a pickle and answers
    "use allow_pickle=True", which would point users at running code from a
    data file. fmeval never unpickles data; it says what the file is instead.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}).") from None
    if head[:4] in _ZIP_MAGIC:
        return
    if head.startswith(b"\x93NUMPY"):
        what = "a single .npy array"
    elif not head:
        what = "empty"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = "a text file"
    else:
        what = "not a zip archive"
    raise DataError(
        f"{path} is not an npz archive ({what}); MedMNIST files are zip archives of "
        "train/val/test _images/_labels arrays."
    )


def _no_pickle(exc: BaseException) -> str:
    """numpy's message, minus its advice to enable pickle loading (never do that for data)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "pickle" in text.lower():
        return "it holds Python objects (pickled data), which fmeval never loads"
    return text


def _shape_hint(info: DatasetInfo, size: int, shape: tuple[int, ...]) -> str:
    """Why a sample shape is wrong, when the shape says so (else nothing)."""
    dims = shape[1:]
    if info.is_volume:
        if len(dims) == 2 or (len(dims) == 3 and dims[-1] == 3 and dims[0] != 3):
            return ": this is a 2D image file, not a 3D volume file"
        if len(dims) == 3 and dims[1:] == (size, size):
            return f": depth {dims[0]}, expected {size} (volumes are [N, D, H, W] with D = H = W)"
        if len(dims) == 3 and len(set(dims)) == 1:
            return f": {dims[0]}^3 volumes, a file of another size"
        return ""
    if len(dims) == 3 and dims[-1] != 3:
        return ": this is a 3D volume file, not a 2D image file"
    return ""


#: The cache folder's memo of data-file MD5s (removed by ``fmeval cache clear``).
MD5_MEMO = "md5.json"


def cached_md5(path: Path) -> str:
    """MD5 of a data file, remembered by (path, size, mtime) in the cache folder.

    224 px files are gigabytes; hashing them on every run would dominate a
    cached evaluation.
    """
    from fmeval.settings import cache_root

    memo_path = cache_root() / MD5_MEMO
    ident = "|".join(map(str, file_identity(path)))
    digest = read_memo(memo_path, ident)
    if digest is None:
        digest = file_digest(path, "md5")
        write_memo(memo_path, ident, digest)
    return digest


def locate(flag: str, size: int, root: str | Path | None, download: bool) -> Path:
    info = dataset_info(flag)
    if size not in info.sizes:
        kind = "3D volumes" if info.is_volume else "MedMNIST+"
        raise DataError(
            f"size {size} is not available for {info.flag}; {kind} sizes are "
            f"{', '.join(map(str, info.sizes))}."
        )
    root = Path(root).expanduser() if root is not None else default_data_root()
    path = root / DatasetInfo.filename(info.flag, size)
    if path.exists():
        return path
    if not download:
        raise DataError(
            f"{path} not found. Put the official {path.name} there, point --data-root "
            "(or FMEVAL_DATA_ROOT) at its folder, or pass --download."
        )
    _download(info, size, root)
    return path


def _download(info: DatasetInfo, size: int, root: Path) -> None:
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[info.flag]["python_class"])
    try:
        cls(split="test", download=True, size=size, root=str(root))
    except Exception:
        raise DataError(
            f"download of {DatasetInfo.filename(info.flag, size)} failed (no network?). "
            f"Fetch it from {info.url(size)} into {root}."
        ) from None


def load_dataset(
    flag: str,
    size: int = 28,
    root: str | Path | None = None,
    *,
    download: bool = False,
    md5: str = "warn",
) -> MedMNIST:
    """Open a MedMNIST(+) dataset from a local root (downloading only if asked)."""
    if md5 not in ("warn", "strict", "off"):
        raise DataError(f"md5 policy must be warn, strict or off, not {md5!r}.")
    path = locate(flag, size, root, download)
    data = MedMNIST(info=dataset_info(flag), size=size, path=path, md5_policy=md5)
    data._npz  # fail fast on a corrupt file
    return data
