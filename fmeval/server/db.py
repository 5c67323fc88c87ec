"""The database: any SQLAlchemy URL; SQLite (one file, WAL) when none is given.

The schema is made and upgraded by Alembic at every start (a no-op when it is
current), so a fresh install needs nothing but ``fmeval serve``. SQLite runs in
WAL mode with a busy timeout, which lets the page readers go on while one
upload commits; writes are serialised by SQLite itself. PostgreSQL (or any
server database) is selected by ``--db postgresql+psycopg://...``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_DB = "sqlite:///leaderboard.sqlite3"


def sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_lock_path(url: str) -> Path | None:
    """The lock file that serialises limit checks across worker processes on one SQLite file."""
    if not sqlite_url(url):
        return None
    db_file = url.split("///", 1)[-1]
    return None if not db_file or db_file == ":memory:" else Path(db_file + ".lock").expanduser()


def make_engine(url: str) -> Engine:
    if sqlite_url(url):
        db_file = url.split("///", 1)[-1]
        if db_file and db_file != ":memory:":
            Path(db_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # every pooled connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Apply the Alembic migrations up to head."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_db(url: str, *, migrate: bool = True) -> tuple[Engine, sessionmaker]:
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
