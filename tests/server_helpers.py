"""A real leaderboard server process for the tests, and an HTTP client that logs in like a browser.

Servers bind 127.0.0.1 on a free port and are killed (and reaped) when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_shared
from helpers import make_zip

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
        if "--registrations-per-address" not in args:  # tests register many teams from 127.0.0.1
            args = ("--registrations-per-address", "1000", *args)
        cmd = [sys.executable, "-m", "fmeval", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--db", self.db, "--datasets", ",".join(THREE), "--sizes", "28", *args]
        # with --workers N every worker must be serving before a test runs: a test of what holds
        # "across worker processes" would otherwise run on one (seen under load)
        self.workers = int(args[list(args).index("--workers") + 1]) if "--workers" in args else 1
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
                if httpx.get(self.url + "/api/leaderboard", timeout=5).status_code == 200 \
                        and self.started() >= self.workers:
                    return
            time.sleep(0.3)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def started(self) -> int:
        """Worker processes that have logged their start."""
        return len(set(re.findall(r"Started server process \[(\d+)\]", self.log.read_text(errors="replace"))))

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


# -- PostgreSQL: a real server in a temporary folder ----------------------------------------------------
def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb/pg_ctl (PATH first, then Debian's /usr/lib/postgresql/<v>/bin)."""
    import shutil

    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if
                   p.parts[-3].isdigit() else 0)
    return cands[-1].parent if cands else None


def require_postgres() -> Path:
    """Skip without PostgreSQL's binaries or psycopg (fail under CI=true: .ci/run installs both)."""
    missing = []
    pg = postgres_bin()
    if pg is None:
        missing.append("PostgreSQL's initdb/pg_ctl (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("psycopg (pip install -e '.[server-test]')")
    if missing:
        msg = "no PostgreSQL to test against: " + "; ".join(missing) + " missing"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)
    return pg


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` in a temporary folder, TCP on 127.0.0.1:<free port>, trust auth,
    stopped (fast) and deleted at the end. PostgreSQL refuses to run as root, so under root (a CI
    container) it runs as the ``postgres`` system user the Debian package creates."""

    def __init__(self, bindir: Path) -> None:
        import pwd
        import tempfile

        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fmeval-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' user to run PostgreSQL as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "fmeval", "--auth=trust", "-E", "UTF8", "--no-instructions")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log.txt"), "-o", opts, "-w", "start")
        self.n = 0

    def _run(self, tool: str, *args: str) -> None:
        r = subprocess.run([*self.prefix, str(self.bindir / tool), *args], capture_output=True, text=True,
                           timeout=120, cwd=self.root)
        if r.returncode != 0:
            raise AssertionError(f"{tool} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://fmeval@127.0.0.1:{self.port}/{db}"

    def new_db(self) -> str:
        """A fresh empty database (one per test: no test sees another's rows)."""
        import psycopg

        self.n += 1
        name = f"lb{self.n}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=fmeval dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        import shutil

        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    require_server_extra()
    cluster = PostgresCluster(require_postgres())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database of each backend: a SQLite file, a database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lb.sqlite3'}"
    return request.getfixturevalue("postgres").new_db()


def rows(db_url: str, sql: str) -> list[tuple]:
    """Rows of ``sql`` on any backend (SQLAlchemy; the URL the server was started with)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(text(sql)).all()]
    finally:
        engine.dispose()
