"""Sliding-window rate limits stored in the database: logins (per account, the email typed, and per client
address) and registrations (per client address).

Every attempt that is let through is first written to ``login_attempts`` and
counted in the same transaction, so parallel attempts cannot all read "0 so
far" before any of them is stored: the database orders them (SQLite serialises
writers; PostgreSQL takes a transaction-scoped advisory lock), and only the
first ``limit`` in any window get through, across threads and worker
processes alike. A refused attempt is not stored, so hammering a locked key
does not keep it locked: the window slides, and the refusal says when the
oldest counted attempt leaves it. A successful login removes its own rows (it
is not a guess); a registration's rows stay (each one made an account, or
probed whether an email has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from fmeval.server.models import LoginAttempt, utcnow
from fmeval.server.scoring import SubmissionError

#: any constant: the advisory lock key of login attempts on PostgreSQL
PG_LOCK_KEY = 0x666D6576


class TooManyAttempts(SubmissionError):
    """Refused before the password check; ``retry_at`` is when one more attempt is allowed."""

    def __init__(self, message: str, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at


@dataclass(frozen=True)
class LoginLimits:
    per_account: int = 5
    per_address: int = 20
    window_s: int = 900


@dataclass(frozen=True)
class RegistrationLimits:
    per_address: int = 5
    window_s: int = 3600


@dataclass(frozen=True)
class Counted:
    """One key an attempt is counted under: ``kind`` names the counter (a row's kind), ``what`` the key
    in the refusal ("this address")."""

    kind: str
    key: str
    limit: int
    what: str


def admit(db: Session, counted: list[Counted], window_s: int, attempts: str) -> list[int]:
    """Store this attempt under every key and commit, or raise :class:`TooManyAttempts` (storing nothing)
    naming the first key over its limit ("too many <attempts> from <what> ...").

    Returns the ids of the stored rows (``forget`` them when the attempt should not count after all)."""
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
    rows = [LoginAttempt(kind=c.kind, key=c.key[:254], created=now) for c in counted]
    db.add_all(rows)
    db.flush()  # the insert takes SQLite's write lock before the count below
    for c, row in zip(counted, rows):
        times = db.scalars(select(LoginAttempt.created).where(
            LoginAttempt.kind == c.kind, LoginAttempt.key == c.key[:254], LoginAttempt.created > since,
            LoginAttempt.id <= row.id).order_by(LoginAttempt.created, LoginAttempt.id)).all()
        if len(times) > c.limit:
            db.rollback()
            retry = times[len(times) - 1 - c.limit] + timedelta(seconds=window_s)
            raise TooManyAttempts(
                f"too many {attempts} from {c.what} ({c.limit} in {_minutes(window_s)}); "
                f"try again at {retry:%Y-%m-%d %H:%M:%S} UTC.", retry)
    # old rows of these counters only: another counter's window may be longer
    db.execute(delete(LoginAttempt).where(LoginAttempt.kind.in_({c.kind for c in counted}),
                                          LoginAttempt.created <= since))
    db.commit()
    return [r.id for r in rows]


def admit_login(db: Session, limits: LoginLimits, email: str, address: str) -> list[int]:
    return admit(db, [Counted("account", email, limits.per_account, "this account"),
                      Counted("address", address, limits.per_address, "this address")],
                 limits.window_s, "login attempts")


def admit_registration(db: Session, limits: RegistrationLimits, address: str) -> list[int]:
    return admit(db, [Counted("register", address, limits.per_address, "this address")], limits.window_s,
                 "registrations")


def forget(db: Session, ids: list[int]) -> None:
    db.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))
    db.commit()


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
