"""Atomic file writes.

Cache entries and reports must never be seen half-written (a killed run, two
runs at once): everything is written to a temporary file in the destination
folder and moved into place with ``os.replace``, which is atomic on POSIX.

A write killed with SIGKILL cannot remove its temporary file, so every
temporary name carries its writer (``w<pid>@<host>``): :func:`sweep_leftovers`
removes those whose writer is gone, and never those of a live one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which for an instant gives
    every other thread's new files mode 0666; Linux exposes it in
    ``/proc/self/status`` instead. Read per write, so a umask changed after
    import (a test, a long-lived notebook) is honoured.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (usually 0644)."""
    return 0o666 & ~_current_umask()


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
_OWNER = re.compile(r"\.w(\d+)@([A-Za-z0-9-]+)\.")
LEFTOVER_SUFFIXES = (".tmp", ".partial")


def owner_tag() -> str:
    """``w<pid>@<host>``: who writes a temporary file or folder (read per call: pids change on fork)."""
    return f"w{os.getpid()}@{_HOST}"


def _writer_gone(name: str) -> bool:
    """True only when the name's writer ran on this host and its process no longer exists."""
    m = _OWNER.search(name)
    if not m or m.group(2) != _HOST:
        return False  # another machine's (a cluster's shared folder) or not ours: not ours to judge
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def sweep_leftovers(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files and half-written run folders of killed writers in ``folder``
    (and, with ``recursive``, in every folder under it)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        if path.suffix not in LEFTOVER_SUFFIXES or not _writer_gone(path.name):
            continue
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:
            continue  # inside a folder removed a moment ago
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    mkstemp creates files 0600, and writers given the temporary *path* (not
    its descriptor) may delete and re-create it (``safetensors.save_file``
    does), so the user's normal mode is set on the finished file itself,
    just before it is moved into place: reports, caches and adapters shared
    by a team must be readable by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock``) for read-modify-write files."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def file_digest(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, streamed (checkpoints and npz files can be GBs)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): what memos keyed by a file trust instead of reading it."""
    path = Path(path)
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def read_memo(path: str | Path, key: str) -> Any | None:
    """One value of a JSON memo file (None when absent, unreadable or not yet written)."""
    try:
        return json.loads(Path(path).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def write_memo(path: str | Path, key: str, value: Any) -> bool:
    """Add one value to a JSON memo file: read-modify-write under its lock, written atomically,
    so concurrent runs never lose each other's entries or see a half-written file.

    A memo only saves work, so one that cannot be written (a read-only or full
    cache folder, a file where the folder should be) is skipped: False.
    """
    path = Path(path)
    try:
        with file_lock(path.with_suffix(".lock")):
            try:
                memo = json.loads(path.read_text())
            except (OSError, ValueError):
                memo = {}
            memo = memo if isinstance(memo, dict) else {}
            memo[key] = value
            atomic_write_json(path, memo)
    except OSError:
        return False
    return True


# -- names of run folders ------------------------------------------------------
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: Any, max_len: int = 40) -> str:
    s = _SLUG.sub("-", str(text)).strip("-.") or "x"
    return s[:max_len].rstrip("-.")


def new_run_id(mode: str, model: str | Mapping[str, Any], dataset: str, size: int | None) -> str:
    """``20250101T120000Z_knn_dinov2-vits14_pneumoniamnist-28_3fa2c1``.

    Timestamp first so folders sort chronologically; the random suffix keeps two
    runs started in the same second (parallel seeds) apart. Safe as a folder name.
    """
    name = model.get("name", "model") if isinstance(model, Mapping) else model
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    size_part = f"-{size}" if size else ""
    return f"{stamp}_{slug(mode, 24)}_{slug(name)}_{slug(dataset, 24)}{size_part}_{secrets.token_hex(3)}"
