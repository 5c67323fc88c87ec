"""``fmeval submit``: pack a folder's (or a study's) prediction CSVs into a zip and upload it.

The folder holds one ``<dataset>.csv`` per dataset (what ``fmeval predict
--out`` writes), or fmeval run folders each with a ``predictions.csv`` and a
``results.json`` naming its dataset and size (a study's ``reports`` folder).
Only the standard library is used, so submitting needs no server extra.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

from fmeval.errors import ConfigError


def collect(folder: Path, size: int | None) -> tuple[dict[str, Path], int | None]:
    """dataset -> predictions CSV of ``folder``; and the size the run folders record."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of prediction CSVs or fmeval runs.")
    found: dict[str, Path] = {}
    sizes = set()
    for results in sorted(folder.rglob("results.json")):
        csv = results.with_name("predictions.csv")
        if not csv.exists():
            continue
        try:
            r = json.loads(results.read_text())
            flag, sz = r["dataset"]["flag"], int(r["dataset"]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if size is not None and sz != size:
            continue
        if flag in found:
            raise ConfigError(f"{folder} holds two runs of {flag} at {sz} px ({found[flag].parent.name}, "
                              f"{csv.parent.name}); submit a folder with one run per dataset.")
        found[flag], _ = csv, sizes.add(sz)
    if not found:
        for csv in sorted(folder.glob("*.csv")):
            found[csv.stem.lower()] = csv
    if not found:
        raise ConfigError(f"{folder} holds no prediction CSVs (<dataset>.csv) and no fmeval runs with predictions.csv.")
    if len(sizes) > 1:
        raise ConfigError(f"{folder} holds runs at several sizes ({', '.join(map(str, sorted(sizes)))}); pass --size.")
    return found, (sizes.pop() if sizes else size)


def pack(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for flag, path in sorted(files.items()):
            zf.write(path, f"{flag}.csv")
    return buf.getvalue()


def upload(server: str, token: str, data: bytes, fields: dict[str, str], timeout: float = 600) -> dict:
    """POST the zip to ``/api/submissions`` as multipart/form-data; the server's JSON answer."""
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="predictions.zip"\r\n'
                 f"Content-Type: application/zip\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(server.rstrip("/") + "/api/submissions", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            msg = exc.reason
        raise ConfigError(f"the server refused the submission ({exc.code}): {msg}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"cannot reach {server}: {getattr(exc, 'reason', exc)}.") from None
