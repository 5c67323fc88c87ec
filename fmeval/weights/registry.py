"""Weight assets fmeval can download: what the model hubs cannot give.

timm, open_clip and transformers fetch their own weights. MedCLIP's release
is a zip on Google Cloud Storage that needs Bio_ClinicalBERT's vocabulary beside
it, and MedViT's ImageNet checkpoints sit behind Google Drive links in the
authors' README; each is registered here as an :class:`Asset` whose name is the
model's name, so ``fmeval weights fetch medclip`` and ``--weights medclip`` read
naturally.

SHA-256 policy (see the README, "Weights"). A file is *pinned* when its
SHA-256 is written here, taken from a source that can be checked (for example
a Hugging Face LFS pointer). None of the files below has a published SHA-256
from its authors, and none is invented: they are *unpinned*. An unpinned file
is checked against whatever digest its server states (Google Cloud Storage's
MD5 in ``x-goog-hash``, Hugging Face's git blob id for a file at a pinned
revision) and its size, and the SHA-256 computed on the first fetch is recorded
in the weights cache (trust on first use): later changes to the local copy are
detected against that record, and ``fmeval weights ls`` shows it so it can be
compared with other copies. For tests and for sites without access to the
original hosts, every URL can be redirected to a mirror with
``$FMEVAL_WEIGHTS_MIRROR`` (``<mirror>/<asset>/<filename>``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fmeval.errors import WeightsError
from fmeval.registry import Registry
from fmeval.settings import env

#: Base URL that replaces every asset URL: ``<mirror>/<asset name>/<filename>``.
MIRROR_ENV = "FMEVAL_WEIGHTS_MIRROR"


@dataclass(frozen=True)
class AssetFile:
    """One file to download for an asset.

    ``sha256`` pins the content (``None``: unpinned, see the module doc);
    ``size`` in bytes is checked when known. ``unpack`` extracts a zip into the
    asset folder instead of keeping the archive.
    """

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    unpack: bool = False
    note: str = ""  # where the pin comes from, or which check stands in for one

    def __post_init__(self) -> None:
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{self.filename}: sha256 must be 64 hex digits")
            object.__setattr__(self, "sha256", digest)
        if "/" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"bad asset file name {self.filename!r}")

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Asset:
    """A named set of files that together form one model's weights.

    ``entry`` is what ``--weights NAME`` resolves to, relative to the asset's
    folder in the weights cache ("." for the folder itself); ``required`` names
    files that must be in the folder after unpacking (a zip of the wrong
    layout fails the fetch, not the first run).
    """

    name: str
    description: str
    files: tuple[AssetFile, ...]
    entry: str = "."
    required: tuple[str, ...] = ()
    homepage: str = ""

    @property
    def pinned(self) -> bool:
        return all(f.pinned for f in self.files)

    def url(self, f: AssetFile) -> str:
        """The URL a file is fetched from, after the mirror override."""
        mirror = (env(MIRROR_ENV) or "").strip()
        return f"{mirror.rstrip('/')}/{self.name}/{f.filename}" if mirror else f.url

    def origin(self) -> str:
        """'file (url), file (url) [homepage]' for messages that say where weights come from."""
        files = ", ".join(f"{f.filename} ({self.url(f)})" for f in self.files)
        return f"{files} [{self.homepage}]" if self.homepage else files


ASSETS: Registry[Asset] = Registry("weights asset", WeightsError)


def register_asset(asset: Asset) -> Asset:
    ASSETS.add(asset.name, asset, asset.description)
    return asset


# --------------------------------------------------------------------------- #
# Built-in assets
# --------------------------------------------------------------------------- #
MEDCLIP_ZIP_URL = "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip"
#: The Bio_ClinicalBERT commit that added ``vocab.txt``: a fixed revision, so the
#: file cannot change under the same URL, and its git blob id (the ``ETag``
#: Hugging Face sends) is checked on download.
BIO_CLINICALBERT_REVISION = "001352d9772814cafbcb315506bd53972044fe5b"
BIO_CLINICALBERT_VOCAB_URL = (
    "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT/resolve/"
    f"{BIO_CLINICALBERT_REVISION}/vocab.txt"
)

register_asset(Asset(
    name="medclip",
    description="MedCLIP-ViT release zip + Bio_ClinicalBERT vocab.txt",
    files=(
        AssetFile(
            "medclip-vit-pretrained.zip", MEDCLIP_ZIP_URL, unpack=True,
            note="no SHA-256 published by the authors; checked against the MD5 Google Cloud "
                 "Storage states (x-goog-hash) and recorded on first fetch",
        ),
        AssetFile(
            "vocab.txt", BIO_CLINICALBERT_VOCAB_URL,
            note=f"Hugging Face revision {BIO_CLINICALBERT_REVISION[:7]}, checked against its "
                 "git blob id; recorded on first fetch",
        ),
    ),
    required=("pytorch_model.bin", "vocab.txt"),
    homepage="https://github.com/RyanWangZf/MedCLIP",
))

#: Google Drive ids of the authors' ImageNet-1K checkpoints (MedViT README).
MEDVIT_DRIVE_IDS = {
    "small": "14wcH5cm8P63cMZAUHA1lhhJgMVOw_5VQ",
    "base": "1Lrfzjf3CK7YOztKa8D6lTUZjYJIiT7_s",
    "large": "1sU-nLpYuCI65h7MjFJKG0yphNAlUFSKG",
}


def _drive_url(file_id: str) -> str:
    # Direct download that skips Drive's "cannot scan for viruses" page.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


for _variant, _drive_id in MEDVIT_DRIVE_IDS.items():
    _file = f"MedViT_{_variant}_im1k.pth"
    register_asset(Asset(
        name=f"medvit-{_variant}",
        description=f"MedViT-{_variant[0].upper()} ImageNet-1K checkpoint",
        files=(AssetFile(
            _file, _drive_url(_drive_id),
            note="no SHA-256 published and Google Drive states no digest: "
                 "recorded on first fetch (trust on first use)",
        ),),
        entry=_file,
        homepage="https://github.com/Omid-Nejati/MedViT",
    ))


__all__ = [
    "ASSETS",
    "Asset",
    "AssetFile",
    "MIRROR_ENV",
    "register_asset",
]
