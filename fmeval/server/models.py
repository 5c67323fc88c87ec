"""The server's tables (SQLAlchemy 2 ORM); the schema itself is made by the Alembic migrations.

A submission and its per-dataset scores are written in one transaction after
scoring has finished, so a server killed mid-scoring leaves no row at all. The
validated scores are kept with the submission (one compressed npz), which is
what lets ``fmeval server rescore`` recompute every score (after a metric fix,
or for a submission whose scores are missing) and the comparison page run a
paired bootstrap on the same test images.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive UTC (SQLite has no zones)


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254), unique=True, nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)  # None: cannot log in (baseline)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    submissions: Mapped[list["Submission"]] = relationship(back_populates="team")


class LoginSession(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the cookie value
    # no CSRF column: a session's token is derived from its cookie (auth.session_token; migration 0003)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    expires: Mapped[datetime] = mapped_column(DateTime)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists so a user can tell tokens apart
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    study_url: Mapped[str] = mapped_column(String(500), default="")
    size: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    complete: Mapped[bool] = mapped_column(Boolean)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    means: Mapped[dict] = mapped_column(JSON, default=dict)  # metric -> {mean, ci_low, ci_high} (complete only)
    archive: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the validated CSVs, zipped
    team: Mapped[Team] = relationship(back_populates="submissions")
    scores: Mapped[list["Score"]] = relationship(back_populates="submission", cascade="all, delete-orphan",
                                                 order_by="Score.dataset")


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("submission_id", "dataset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    dataset: Mapped[str] = mapped_column(String(40))
    n: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    balanced_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    kappa: Mapped[float | None] = mapped_column(Float, nullable=True)
    acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    precision: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)  # CIs, confusion matrix
    submission: Mapped[Submission] = relationship(back_populates="scores")


class LoginAttempt(Base):
    """One login attempt that was let through to the password check, or one registration attempt, kept for
    the length of its rate-limit window (a successful login removes its own rows; a refused attempt is
    never stored)."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "account" or "address" (logins), "register" (an address)
    key: Mapped[str] = mapped_column(String(254))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ServerSecret(Base):
    """Random values made once per database (shared by every worker): the key that signs the
    CSRF tokens (of the login and register forms, and of every session)."""

    __tablename__ = "server_secrets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
