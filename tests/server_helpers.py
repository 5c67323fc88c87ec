"""A real leaderboard server process for the tests, and an HTTP client that logs in like a browser.

Servers bind 127.0.0.1 on a free port and are killed (and reaped) when the test ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_shared

SHARED = REPO.parent / "shared" / "data"
THREE = ("pneumoniamnist", "breastmnist", "retinamnist")


def require_server_extra() -> None:
    """Skip without the ``server`` extra (and httpx); under CI=true fail instead."""
    missing = []
    for mod in ("starlette", "uvicorn", "jinja2", "sqlalchemy", "alembic", "python_multipart", "httpx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        msg = f"the server extra is not installed ({', '.join(missing)} missing): pip install -e '.[server-test]'"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)
    for flag in THREE:
        require_shared(SHARED / f"{flag}.npz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, *args: str, db: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db or f"sqlite:///{tmp / 'lb.sqlite3'}"
        self.log = tmp / f"server-{self.port}.log"
        env = {**os.environ, "FMEVAL_DATA_ROOT": str(SHARED), "FMEVAL_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "fmeval", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--db", self.db, "--datasets", ",".join(THREE), "--sizes", "28", *args]
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=self._fh, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 120) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/leaderboard", timeout=5).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._fh.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()


@contextlib.contextmanager
def running(tmp: Path, *args: str, db: str | None = None):
    server = Server(tmp, *args, db=db)
    try:
        yield server
    finally:
        server.stop()


def truth_of(flag: str) -> np.ndarray:
    with np.load(SHARED / f"{flag}.npz") as z:
        return z["test_labels"][:, 0].astype(np.int64)


N_CLASSES = {"pneumoniamnist": 2, "breastmnist": 2, "retinamnist": 5}


def noisy_scores(flag: str, seed: int, quality: float = 0.6) -> np.ndarray:
    """Probabilities that lean to the truth by ``quality`` (deterministic per seed)."""
    y = truth_of(flag)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), N_CLASSES[flag]))
    logits[np.arange(len(y)), y] += 2.0 * quality
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def csv_bytes(scores: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> bytes:
    extra = extra or {}
    head = ["index", *map(str, range(scores.shape[1])), *extra]
    lines = [",".join(head)]
    for i, row in enumerate(scores.tolist()):
        lines.append(",".join([str(i), *map(repr, row), *(str(v[i]) for v in extra.values())]))
    return ("\n".join(lines) + "\n").encode()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return buf.getvalue()


def submission_zip(seed: int = 0, datasets=THREE) -> bytes:
    return make_zip({f"{f}.csv": csv_bytes(noisy_scores(f, seed)) for f in datasets})


def form_csrf(client, path: str = "/login") -> str:
    """GET a form page (which sets the pre-session cookie in ``client``) and return its CSRF token."""
    r = client.get(path)
    assert r.status_code == 200, r.text[:300]
    return re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)


class Browserless:
    """A team's logged-in HTTP session (cookies + the CSRF token of its forms)."""

    def __init__(self, url: str, team: str, password: str = "correct horse battery") -> None:
        import httpx

        self.url = url
        self.client = httpx.Client(base_url=url, timeout=300, follow_redirects=False)
        r = self.client.post("/register", data={"team": team, "email": f"{team.lower()}@example.org",
                                                "password": password, "csrf": form_csrf(self.client, "/register")})
        assert r.status_code == 303, r.text[:500]
        self.cookie_header = r.headers["set-cookie"]
        me = self.client.get("/me")
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', me.text).group(1)

    def token(self) -> str:
        r = self.client.post("/tokens", data={"csrf": self.csrf})
        assert r.status_code == 200, r.text[:500]
        return re.search(r'id="token">([^<]+)<', r.text).group(1)

    def upload(self, data: bytes, model: str = "m", size: int = 28, **fields):
        return self.client.post("/submit", data={"csrf": self.csrf, "model_name": model, "size": str(size), **fields},
                                files={"file": ("p.zip", data, "application/zip")})


def api_upload(url: str, token: str, data: bytes, model: str = "m", size: int = 28, **fields):
    import httpx

    return httpx.post(url + "/api/submissions", headers={"Authorization": f"Bearer {token}"},
                      data={"model_name": model, "size": str(size), **fields},
                      files={"file": ("p.zip", data, "application/zip")}, timeout=600)
