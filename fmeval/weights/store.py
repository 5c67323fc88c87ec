"""The weights cache: fetched assets, verified, each visible only when complete.

Layout under ``$FMEVAL_WEIGHTS_DIR`` (default ``<cache root>/weights``)::

    medclip/                      one folder per asset, present only when complete
      pytorch_model.bin, vocab.txt
      fmeval-asset.json           what was fetched from where, sizes, SHA-256s
    .partial/<asset>/<file>.part  downloads in progress (resumable), + .part.json
    .staging/, .trash/            folders being assembled / replaced
    .locks/<asset>.lock           one fetch of an asset at a time

A fetch downloads every file of the asset into ``.partial``, verifies it,
assembles the asset folder under ``.staging`` (unpacking zips there) with its
manifest, and renames it into place. So the asset's name either does not exist
or names a complete, verified folder; an interrupted fetch leaves at most a
part file under ``.partial`` for the next one to resume. A second concurrent
fetch of the same asset waits for the lock and then finds it present.

Using an asset (``--weights medclip``, or a pretrained MedCLIP/MedViT with no
``--weights``) checks each file's size and modification time against the
manifest and re-hashes any file whose stamp changed, so a local copy that was
edited or truncated is reported instead of loaded.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fmeval.errors import ModelError, WeightsError
from fmeval.io import atomic_write_json, file_lock
from fmeval.registry import Registry
from fmeval.settings import cache_root, env
from fmeval.weights.download import Downloaded, discard, download, file_hashes, redact
from fmeval.weights.registry import ASSETS, Asset

WEIGHTS_DIR_ENV = "FMEVAL_WEIGHTS_DIR"
#: Set to 1 to stop automatic downloads (explicit ``fmeval weights fetch`` still works).
OFFLINE_ENV = "FMEVAL_OFFLINE"
MANIFEST = "fmeval-asset.json"
FORMAT_VERSION = 1
_TRUE = {"1", "true", "yes", "on"}
_ZIP_JUNK = ("__MACOSX/",)


def weights_root() -> Path:
    custom = env(WEIGHTS_DIR_ENV)
    if custom:
        return Path(custom).expanduser()
    return cache_root() / "weights"


def auto_download_blocker() -> str | None:
    """Why automatic downloads are off (``"HF_HUB_OFFLINE=1"``), or ``None``."""
    for var, value in ((OFFLINE_ENV, env(OFFLINE_ENV)), ("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE"))):
        if (value or "").strip().lower() in _TRUE:
            return f"{var}={value}"
    return None


@dataclass(frozen=True)
class AssetStatus:
    """What the weights cache holds for one asset."""

    name: str
    state: str  # missing | present | verified | modified | corrupt
    folder: Path
    entry: Path
    pinned: bool
    size: int = 0
    manifest: dict | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.state in ("present", "verified")


@dataclass(frozen=True)
class FetchResult:
    name: str
    entry: Path
    downloaded: bool  # False: it was already present
    files: list[dict] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # unpinned files whose SHA-256 moved


# --------------------------------------------------------------------------- #
# Zip archives
# --------------------------------------------------------------------------- #
def _member_path(info: zipfile.ZipInfo, label: str) -> PurePosixPath:
    path = PurePosixPath(info.filename)
    if path.is_absolute() or ".." in path.parts or info.filename.startswith("\\"):
        raise WeightsError(f"{label}: unsafe path {info.filename!r} in the archive")
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise WeightsError(f"{label}: the archive holds a symbolic link ({info.filename})")
    return path


def unpack_zip(archive: Path, dest: Path, label: str) -> dict[str, dict]:
    """Extract ``archive`` into ``dest``; returns ``relpath -> {size, sha256}``.

    A single top-level folder shared by every member is dropped, so the asset
    folder has the same layout whether or not the archive wrapped its files.
    Paths that would escape ``dest`` and symbolic links are refused.
    """
    import hashlib

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{label}: not a readable zip archive ({e})") from None
    with zf:
        members = [(m, _member_path(m, label)) for m in zf.infolist()
                   if not m.is_dir() and not m.filename.startswith(_ZIP_JUNK)]
        if not members:
            raise WeightsError(f"{label}: the archive is empty")
        tops = {p.parts[0] for _, p in members}
        strip = len(tops) == 1 and all(len(p.parts) > 1 for _, p in members)
        out: dict[str, dict] = {}
        for info, path in members:
            rel = PurePosixPath(*path.parts[1:]) if strip else path
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while block := src.read(1 << 20):
                        h.update(block)
                        dst.write(block)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise WeightsError(
                    f"{label}: corrupt archive member {info.filename} ({e})") from None
            out[str(rel)] = {"size": target.stat().st_size, "sha256": h.hexdigest()}
    return out


# --------------------------------------------------------------------------- #
# The store
# --------------------------------------------------------------------------- #
class WeightStore:
    """Fetch, verify and look up assets under one weights folder.

    ``assets`` defaults to the built-in registry; tests inject their own
    (pointing at a local HTTP server) together with a temporary ``root``.
    """

    def __init__(self, root: str | Path | None = None,
                 assets: Registry[Asset] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else weights_root()
        self.assets = assets if assets is not None else ASSETS

    # -- paths ----------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.root / self.assets.get(name).name

    def entry(self, name: str) -> Path:
        asset = self.assets.get(name)
        folder = self.root / asset.name
        return folder if asset.entry == "." else folder / asset.entry

    def _partial(self, asset: Asset) -> Path:
        return self.root / ".partial" / asset.name

    # -- status ---------------------------------------------------------------
    def status(self, name: str, verify: bool = False) -> AssetStatus:
        """State of one asset; ``verify`` re-hashes every file (slow for GBs)."""
        asset = self.assets.get(name)
        folder, entry = self.folder(name), self.entry(name)

        def st(state: str, detail: str = "", manifest: dict | None = None, size: int = 0):
            return AssetStatus(asset.name, state, folder, entry, asset.pinned, size, manifest,
                               detail)

        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            contents: dict[str, dict] = manifest["contents"]
        except FileNotFoundError:
            return st("missing", "not fetched" if not folder.exists() else "no manifest")
        except (OSError, ValueError, KeyError, TypeError):
            return st("modified", f"unreadable {MANIFEST}")
        total = 0
        rehashed = False
        for rel, rec in contents.items():
            path = folder / rel
            try:
                stat = path.stat()
            except FileNotFoundError:
                return st("modified", f"{rel} is missing", manifest)
            total += stat.st_size
            if stat.st_size != rec["size"]:
                return st("modified", f"{rel} has {stat.st_size} bytes, fetched {rec['size']}",
                          manifest)
            if verify or stat.st_mtime_ns != rec.get("mtime_ns"):
                rehashed = True
                if file_hashes(path, set())["sha256"] != rec["sha256"]:
                    return st("corrupt", f"{rel} no longer has the SHA-256 recorded at fetch",
                              manifest)
        return st("verified" if rehashed else "present", "", manifest, total)

    def list(self, verify: bool = False) -> list[AssetStatus]:
        return [self.status(e.name, verify=verify) for e in self.assets]

    # -- fetch ----------------------------------------------------------------
    def fetch(self, name: str, force: bool = False, accept_new_hash: bool = False) -> FetchResult:
        """Download, verify and install ``name`` (no-op when present, unless ``force``).

        An unpinned file's SHA-256 is recorded on its first fetch; a later
        download with another hash (the upstream file changed, or someone
        swapped it) replaces the recorded copy only with ``accept_new_hash``:
        otherwise the recorded copy is kept and the fetch fails in one line.
        """
        asset = self.assets.get(name)
        try:
            return self._fetch_locked(asset, force, accept_new_hash)
        except OSError as e:  # network errors are WeightsErrors already: this is local disk
            raise WeightsError(f"{asset.name}: cannot write the weights cache {self.root} "
                               f"({e.strerror or e})") from None

    def _fetch_locked(self, asset: Asset, force: bool, accept_new_hash: bool = False) -> FetchResult:
        with file_lock(self.root / ".locks" / f"{asset.name}.lock"):
            before = self.status(asset.name)
            if before.usable and not force:
                return FetchResult(asset.name, before.entry, False,
                                   list((before.manifest or {}).get("files", [])))
            got = [self._download(asset, f) for f in asset.files]
            if not accept_new_hash:
                self._refuse_new_hashes(asset, before.manifest, got)
            files = self._install(asset, got)
            for f in asset.files:
                discard(self._partial(asset) / f"{f.filename}.part")
            shutil.rmtree(self._partial(asset), ignore_errors=True)
        old = {f["filename"]: f["sha256"] for f in (before.manifest or {}).get("files", [])}
        changed = [f["filename"] for f in files
                   if not f["pinned"] and old.get(f["filename"], f["sha256"]) != f["sha256"]]
        return FetchResult(asset.name, self.entry(asset.name), True, files, changed)

    def _refuse_new_hashes(self, asset: Asset, manifest: dict | None, got: list[Downloaded]) -> None:
        """Fail (keeping the recorded copy) when an unpinned file's hash differs from the one recorded."""
        recorded = {f["filename"]: f["sha256"] for f in (manifest or {}).get("files", []) if not f.get("pinned")}
        for f, d in zip(asset.files, got):
            old = recorded.get(f.filename)
            if f.pinned or old is None or old == d.sha256:
                continue
            for g in got:
                discard(g.path)
            raise WeightsError(
                f"{asset.name}: {f.filename} changed upstream (recorded sha256 {old[:12]}..., downloaded "
                f"{d.sha256[:12]}...); the recorded copy is kept. Take the new file only if you trust it: "
                f"fmeval weights fetch {asset.name} --force --accept-new-hash")

    def _download(self, asset: Asset, f) -> Downloaded:
        return download(asset.url(f), self._partial(asset) / f"{f.filename}.part",
                        label=f"{asset.name}: {f.filename}", size=f.size, sha256=f.sha256)

    def _install(self, asset: Asset, got: list[Downloaded]) -> list[dict]:
        """Assemble the asset folder in ``.staging`` and rename it into place."""
        staging = self.root / ".staging" / f"{asset.name}.{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            contents: dict[str, dict] = {}
            files = []
            for f, d in zip(asset.files, got):
                label = f"{asset.name}: {f.filename}"
                if f.unpack:
                    contents.update(unpack_zip(d.path, staging, label))
                else:
                    os.replace(d.path, staging / f.filename)
                    contents[f.filename] = {"size": d.size, "sha256": d.sha256}
                files.append({"filename": f.filename, "url": redact(asset.url(f)), "size": d.size,
                              "sha256": d.sha256, "pinned": f.pinned, "checked": list(d.checked),
                              "note": f.note})
            missing = [r for r in asset.required if not (staging / r).is_file()]
            if missing:
                raise WeightsError(
                    f"{asset.name}: the download does not contain {', '.join(missing)} "
                    f"(found: {', '.join(sorted(contents)) or 'nothing'})"
                )
            for rel, rec in contents.items():
                rec["mtime_ns"] = (staging / rel).stat().st_mtime_ns
            atomic_write_json(staging / MANIFEST, {
                "format": FORMAT_VERSION, "asset": asset.name,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pinned": asset.pinned, "files": files, "contents": contents,
            })
            self._swap_in(asset.name, staging)
            return files
        except WeightsError:
            for d in got:  # verified downloads of a broken asset must not be reused
                discard(d.path)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _swap_in(self, name: str, staging: Path) -> None:
        final = self.root / name
        trash = None
        if final.exists():
            trash = self.root / ".trash" / f"{name}.{secrets.token_hex(4)}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)
        os.rename(staging, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    # -- use --------------------------------------------------------------------
    def ensure(self, name: str, purpose: str | None = None) -> Path:
        """Local path of a usable asset, fetching it first when downloads are allowed.

        Offline (``$FMEVAL_OFFLINE`` / ``$HF_HUB_OFFLINE``) or when the fetch
        fails, the error is one line naming the command that fetches it and
        the offline alternatives.
        """
        asset = self.assets.get(name)
        st = self.status(asset.name)
        if st.usable:
            return st.entry
        what = purpose or f"weights {asset.name}"
        if st.state in ("modified", "corrupt"):
            raise WeightsError(
                f"{what}: the copy in {st.folder} was changed after it was fetched ({st.detail}); "
                f"run `fmeval weights fetch {asset.name} --force`"
            )
        alternatives = (f"run `fmeval weights fetch {asset.name}` with a network, pass "
                        "--weights PATH, or use --tiny / --random-init for an offline run")
        blocker = auto_download_blocker()
        if blocker is not None:
            raise WeightsError(
                f"{what}: its weights are not in the weights cache {self.root} and automatic "
                f"downloads are off ({blocker}): {alternatives}. Source: {asset.origin()}"
            )
        try:
            return self.fetch(asset.name).entry
        except WeightsError as e:
            raise WeightsError(f"{what}: fetching failed ({e}); {alternatives}") from None


def resolve_weights(value: str | Path | None, store: WeightStore | None = None) -> Path | None:
    """What a ``--weights`` value names: an existing path, else a registered asset.

    A path that exists always wins. A bare name of a registered asset
    (``medclip``, ``medvit-small``) resolves to its verified local copy,
    fetched first when downloads are allowed.
    """
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path
    store = store or WeightStore()
    text = str(value).strip()
    if len(Path(text).parts) == 1 and text in store.assets:
        return store.ensure(text, purpose=f"--weights {text}")
    close = difflib.get_close_matches(text.lower(), store.assets.names(), n=2)
    hint = (f"; did you mean the weights asset {' or '.join(close)}?" if close else
            f"; downloadable weights: {', '.join(store.assets.names())} (`fmeval weights ls`)")
    raise ModelError(f"weights file {path} does not exist{hint}")


__all__ = [
    "AssetStatus",
    "FetchResult",
    "MANIFEST",
    "OFFLINE_ENV",
    "WEIGHTS_DIR_ENV",
    "WeightStore",
    "auto_download_blocker",
    "resolve_weights",
    "unpack_zip",
    "weights_root",
]
