"""The login rate limit: a sliding window per account (the email typed) and per client address.

Every attempt that reaches the password check is first written to
``login_attempts`` and counted in the same transaction, so parallel guesses
cannot all read "0 so far" before any of them is stored: the database orders
them (SQLite serialises writers; PostgreSQL takes a transaction-scoped
advisory lock), and only the first ``limit`` in any window get through. A
refused attempt is not stored, so hammering a locked account does not keep it
locked: the window slides, and the refusal says when the oldest counted
attempt leaves it. A successful login removes its own rows (it is not a guess).
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


def admit(db: Session, limits: LoginLimits, email: str, address: str) -> list[int]:
    """Store this attempt under both keys and commit, or raise :class:`TooManyAttempts` (storing nothing).

    Returns the ids of the stored rows (``forget`` them after a successful login)."""
    now = utcnow()
    since = now - timedelta(seconds=limits.window_s)
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
    keys = (("account", email, limits.per_account, "this account"), ("address", address, limits.per_address,
                                                                     "this address"))
    rows = [LoginAttempt(kind=kind, key=key[:254], created=now) for kind, key, _, _ in keys]
    db.add_all(rows)
    db.flush()  # the insert takes SQLite's write lock before the count below
    for (kind, key, limit, what), row in zip(keys, rows):
        times = db.scalars(select(LoginAttempt.created).where(
            LoginAttempt.kind == kind, LoginAttempt.key == key[:254], LoginAttempt.created > since,
            LoginAttempt.id <= row.id).order_by(LoginAttempt.created, LoginAttempt.id)).all()
        if len(times) > limit:
            db.rollback()
            retry = times[len(times) - 1 - limit] + timedelta(seconds=limits.window_s)
            raise TooManyAttempts(
                f"too many login attempts from {what} ({limit} in {_minutes(limits.window_s)}); "
                f"try again at {retry:%Y-%m-%d %H:%M:%S} UTC.", retry)
    db.execute(delete(LoginAttempt).where(LoginAttempt.created <= since))
    db.commit()
    return [r.id for r in rows]


def forget(db: Session, ids: list[int]) -> None:
    db.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))
    db.commit()


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
