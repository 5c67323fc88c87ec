"""One file over HTTP(S): resumable, size- and digest-checked, never half-visible.

A download writes ``<name>.part`` beside a small ``<name>.part.json`` that
records the URL, the server's validator (``ETag`` / ``Last-Modified``) and the
digests the server stated. When a connection drops, the part file stays and
the next attempt (an automatic retry, or the next ``fmeval weights fetch``)
asks for the rest with ``Range`` + ``If-Range``: a server that no longer has
the same file answers 200 and the download restarts from zero instead of
splicing two versions together. A finished file is checked against its
expected size, every digest the server stated and the pinned SHA-256; a
mismatch deletes the part file (resuming a wrong file cannot fix it). Only the
caller moves a verified part file to its final name.

Every failure is one :class:`~fmeval.errors.WeightsError` line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from fmeval.errors import WeightsError
from fmeval.io import atomic_write_json

CHUNK = 1 << 20
#: Seconds a connect or a read may stall before the attempt counts as dropped.
TIMEOUT_S = 30.0
#: Further attempts after a dropped connection or a 5xx answer (each resumes).
RETRIES = 2
#: Base of the exponential wait between attempts (tests set it to 0).
RETRY_WAIT_S = 1.0

_DROPPED = (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class DownloadInterrupted(WeightsError):
    """The connection ended early; the part file is kept for a resume."""


class Unreachable(WeightsError):
    """No connection at all (offline, DNS, refused); any part file is kept."""


@dataclass(frozen=True)
class Downloaded:
    """A complete, verified part file (still under its ``.part`` name)."""

    path: Path
    size: int
    sha256: str
    checked: tuple[str, ...]  # the server digests that were verified, e.g. ("md5 (x-goog-hash)",)
    resumed_from: int = 0


@dataclass
class _Meta:
    """The part file's sidecar: enough to resume safely, or to skip a finished file."""

    url: str
    validator: str | None = None
    total: int | None = None
    digests: dict[str, list[str]] = field(default_factory=dict)  # algo -> [hex, header]
    complete: bool = False
    sha256: str | None = None

    @classmethod
    def read(cls, path: Path) -> "_Meta | None":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.__dict__)


# --------------------------------------------------------------------------- #
# Digests
# --------------------------------------------------------------------------- #
def _b64_hex(value: str) -> str | None:
    try:
        return base64.b64decode(value.strip(), validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def _is_hex(value: str, n: int) -> bool:
    return len(value) == n and all(c in "0123456789abcdef" for c in value)


def server_digests(headers: Mapping[str, str] | http.client.HTTPMessage) -> dict[str, list[str]]:
    """Digests a server states about the whole file, as ``algo -> [hex, header]``.

    Understood: Google Cloud Storage's ``x-goog-hash: md5=<base64>``,
    ``Content-MD5``, and Hugging Face's ``X-Linked-Etag`` (SHA-256 of an LFS
    file) or, beside ``X-Repo-Commit``, its ``ETag`` (the git blob id of a
    regular file). Anything else is ignored rather than guessed at.
    """
    if isinstance(headers, http.client.HTTPMessage):
        def values(key: str) -> list[str]:
            return headers.get_all(key) or []
    else:
        lowered = {k.lower(): v for k, v in headers.items()}

        def values(key: str) -> list[str]:
            return [lowered[key]] if key in lowered else []
    out: dict[str, list[str]] = {}
    for line in values("x-goog-hash"):
        for part in line.split(","):
            algo, _, value = part.strip().partition("=")
            if algo.lower() == "md5" and (hexd := _b64_hex(value)):
                out["md5"] = [hexd, "x-goog-hash"]
    for value in values("content-md5"):
        if (hexd := _b64_hex(value)) and "md5" not in out:
            out["md5"] = [hexd, "Content-MD5"]

    def etag(raw: str) -> str:
        return raw.strip().removeprefix("W/").strip('"').lower()

    for value in values("x-linked-etag"):
        if _is_hex(etag(value), 64):
            out["sha256"] = [etag(value), "X-Linked-Etag"]
    if values("x-repo-commit"):
        for value in values("etag"):
            if _is_hex(etag(value), 40):
                out["git-sha1"] = [etag(value), "ETag (git blob id)"]
    return out


def file_hashes(path: Path, algos: set[str]) -> dict[str, str]:
    """SHA-256 plus the requested algorithms in one pass over the file."""
    size = path.stat().st_size
    hashers = {"sha256": hashlib.sha256()}
    for algo in algos - {"sha256"}:
        if algo == "git-sha1":
            h = hashlib.sha1(usedforsecurity=False)
            h.update(b"blob %d\0" % size)
            hashers[algo] = h
        else:
            hashers[algo] = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hashers.values():
                h.update(block)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


# --------------------------------------------------------------------------- #
# Transfer
# --------------------------------------------------------------------------- #
def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


def redact(text: str) -> str:
    """``https://user:password@mirror/...`` -> ``https://***@mirror/...`` anywhere in ``text``:
    a mirror URL with credentials (FMEVAL_WEIGHTS_MIRROR) never reaches a message or a file."""
    return _USERINFO.sub("***@", text)


def _host(url: str) -> str:
    netloc = urllib.parse.urlsplit(url).netloc
    return netloc.rpartition("@")[2] if netloc else redact(url)  # never the user:password part


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-199/200`` -> (100, 200); None when absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    start, _, _ = span.partition("-")
    try:
        return int(start), (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _open(url: str, offset: int, meta: _Meta | None, label: str, timeout: float):
    headers = {"User-Agent": "fmeval (weights fetch)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta is not None and meta.validator:
            headers["If-Range"] = meta.validator
    try:
        req = urllib.request.Request(url, headers=headers)
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - registry URLs
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return None  # our part file is not a prefix of theirs: start over
        retry = e.code >= 500
        cls = DownloadInterrupted if retry else WeightsError
        raise cls(f"{label}: HTTP {e.code} {e.reason} from {redact(url)}") from None
    except urllib.error.URLError as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (ConnectionResetError, TimeoutError, http.client.HTTPException)):
            raise DownloadInterrupted(
                f"{label}: {_host(url)} dropped the connection ({reason})") from None
        raise Unreachable(f"{label}: cannot reach {_host(url)} ({reason})") from None
    except _DROPPED as e:
        raise DownloadInterrupted(f"{label}: connection to {_host(url)} failed ({e})") from None
    except ValueError as e:  # not an http(s) URL, e.g. a mistyped mirror
        raise WeightsError(redact(f"{label}: bad URL {url!r} ({e})")) from None


def _attempt(url: str, part: Path, meta_path: Path, label: str, timeout: float) -> int:
    """One request; appends to ``part``. Returns the offset it resumed from."""
    from fmeval.progress import download_bar

    meta = _Meta.read(meta_path)
    if meta is None or meta.url != url or not part.exists():
        part.unlink(missing_ok=True)
        meta = None
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, meta, label, timeout)
    if resp is None:  # 416: restart from zero
        part.unlink(missing_ok=True)
        offset, meta = 0, None
        resp = _open(url, 0, None, label, timeout)
    with resp:
        total: int | None
        span = _content_range(resp.headers.get("Content-Range")) if resp.status == 206 else None
        if resp.status == 206 and (span is None or span[0] != offset):
            discard(part)  # a range we did not ask for: start the next attempt from zero
            raise DownloadInterrupted(f"{label}: unexpected Content-Range "
                                      f"{resp.headers.get('Content-Range')!r} from {_host(url)}")
        if span is not None:
            total = span[1]
        else:  # 200 (range ignored, or the file changed): the whole file follows
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html") and not part.name.endswith((".html.part", ".htm.part")):
            part.unlink(missing_ok=True)
            raise WeightsError(
                f"{label}: {_host(url)} sent an HTML page instead of the file (a login, quota "
                "or confirmation page); download it in a browser and pass --weights PATH"
            )
        digests = server_digests(resp.headers)
        if offset and meta is not None:
            digests = {**meta.digests, **digests}
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        _Meta(url=url, validator=validator, total=total, digests=digests).write(meta_path)
        with open(part, "ab" if offset else "wb") as f, \
                download_bar(label, total, completed=offset) as tick:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, TLS error
                    raise DownloadInterrupted(
                        f"{label}: connection dropped at {_mb(f.tell())} of {_mb(total)} "
                        f"({e or type(e).__name__})"
                    ) from None
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as e:
                    raise WeightsError(f"{label}: cannot write {part.parent} "
                                       f"({e.strerror or e})") from None
                tick(len(block))
            f.flush()
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadInterrupted(f"{label}: connection closed at {_mb(size)} of {_mb(total)}")
    if total is not None and size > total:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{label}: received {size} bytes but the server announced {total}")
    return offset


def _verify(part: Path, meta_path: Path, *, size: int | None, sha256: str | None,
            label: str) -> tuple[str, tuple[str, ...]]:
    """Size, server digests and pin of a complete part file; deletes it on any mismatch."""
    meta = _Meta.read(meta_path) or _Meta(url="")
    got_size = part.stat().st_size

    def fail(msg: str) -> WeightsError:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return WeightsError(f"{label}: {msg}; the download was deleted")

    if size is not None and got_size != size:
        raise fail(f"got {got_size} bytes, expected {size} (truncated or wrong file)")
    hashes = file_hashes(part, set(meta.digests))
    checked = []
    for algo, (expected, header) in sorted(meta.digests.items()):
        if hashes[algo] != expected:
            raise fail(f"{algo} {hashes[algo][:12]}... does not match the server's {header} "
                       f"{expected[:12]}... (corrupted in transit)")
        checked.append(f"{algo} ({header})")
    if sha256 is not None and hashes["sha256"] != sha256:
        raise fail(f"SHA-256 mismatch: expected {sha256[:16]}..., got {hashes['sha256'][:16]}...")
    meta.complete, meta.sha256 = True, hashes["sha256"]
    meta.write(meta_path)
    return hashes["sha256"], tuple(checked)


def download(
    url: str,
    part: Path,
    *,
    label: str,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> Downloaded:
    """Fetch ``url`` into ``part`` (resuming what is there) and verify it.

    A part file already marked complete by an earlier, interrupted fetch of a
    multi-file asset is re-hashed instead of downloaded again.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    meta_path = part.with_name(part.name + ".json")
    meta = _Meta.read(meta_path)
    if meta is not None and meta.complete and meta.url == url and part.exists():
        digest, checked = _verify(part, meta_path, size=size, sha256=sha256, label=label)
        return Downloaded(part, part.stat().st_size, digest, checked, part.stat().st_size)

    timeout = TIMEOUT_S if timeout is None else timeout
    retries = RETRIES if retries is None else retries
    resumed_from = 0
    for attempt in range(retries + 1):
        try:
            resumed = _attempt(url, part, meta_path, label, timeout)
            resumed_from = resumed_from or resumed
            break
        except Unreachable:
            raise
        except DownloadInterrupted as e:
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                keep = (f"; {_mb(have)} kept, run the same command again to resume" if have
                        else "")
                raise DownloadInterrupted(f"{e}{keep}") from None
            time.sleep(RETRY_WAIT_S * 2**attempt)
        except WeightsError:
            discard(part)  # 4xx, HTML page, oversize: a resume could not fix it
            raise
    digest, checked = _verify(part, meta_path, size=size, sha256=sha256, label=label)
    return Downloaded(part, part.stat().st_size, digest, checked, resumed_from)


def discard(part: Path) -> None:
    """Remove a part file and its sidecar."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".json").unlink(missing_ok=True)


__all__ = ["Downloaded", "DownloadInterrupted", "Unreachable", "discard", "download",
           "file_hashes", "server_digests"]
