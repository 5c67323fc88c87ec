"""What the pages and the JSON API do, without HTTP: accounts, uploads, rankings, comparisons.

Every route is a thin wrapper of one function here, so a page and its JSON
twin can never disagree.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from fmeval.errors import FmevalError
from fmeval.metrics import rank_order
from fmeval.server import auth
from fmeval.server.baselines import SOURCE as BASELINE_SOURCE, baseline_rows
from fmeval.server.labels import LabelStore
from fmeval.server.models import ApiToken, LoginSession, Score, ServerSecret, Submission, Team, utcnow
from fmeval.server.scoring import (
    LEADERBOARD_METRICS, RANKED, DatasetScore, SubmissionError, ZipLimits, score_arrays, score_zip,
)
from fmeval.server.throttle import LoginLimits, RegistrationLimits, admit_login, admit_registration, forget

LOG = logging.getLogger("fmeval.server")
BASELINE_TEAM = "baseline"
SESSION_DAYS = 14
TWELVE_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
             "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")


class LimitError(SubmissionError):
    """A team's submission limit is reached; the message says when the next one is allowed."""


class AuthError(FmevalError):
    pass


@dataclass
class ServerSettings:
    """Everything ``fmeval serve`` can set (defaults: the thesis's stated rules)."""

    db: str = "sqlite:///leaderboard.sqlite3"
    datasets: list[str] = field(default_factory=lambda: list(TWELVE_2D))
    sizes: list[int] = field(default_factory=lambda: [28, 64, 128, 224])
    data_root: str | None = None
    md5: str = "warn"
    daily_limit: int = 10
    total_limit: int = 100
    top: int = 10
    n_boot: int = 200
    secure_cookies: bool = False  # set behind TLS (--secure-cookies)
    limits: ZipLimits = field(default_factory=ZipLimits)
    login: LoginLimits = field(default_factory=LoginLimits)
    registration: RegistrationLimits = field(default_factory=RegistrationLimits)

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "ServerSettings":
        return cls(**{**raw, "limits": ZipLimits(**raw.get("limits", {})), "login": LoginLimits(**raw.get("login", {})),
                      "registration": RegistrationLimits(**raw.get("registration", {}))})


#: the range a metric's mean can take; the t-interval is clipped to it (3 datasets give wide intervals)
METRIC_RANGE = {"kappa": (-1.0, 1.0)}


def mean_ci(values: list[float], metric: str = "auc") -> dict[str, float | None]:
    """Mean over datasets with its 95% t-interval (the datasets as the sample), clipped to the metric's range."""
    from scipy import stats

    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    m = float(v.mean())
    if v.size < 2:
        return {"mean": m, "ci_low": None, "ci_high": None}
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    lo, hi = METRIC_RANGE.get(metric, (0.0, 1.0))
    return {"mean": m, "ci_low": max(lo, m - half), "ci_high": min(hi, m + half)}


class Leaderboard:
    """The server's state: settings, held labels, a session factory."""

    def __init__(self, settings: ServerSettings, labels: LabelStore, sessions) -> None:
        self.settings = settings
        self.labels = labels
        self.sessions = sessions
        self._secrets: dict[str, str] = {}
        self._write_lock = threading.Lock()  # one process's limit check + insert; PostgreSQL also locks the team row
        self.benchmark_is_twelve = sorted(labels.datasets) == sorted(TWELVE_2D)

    def _process_lock(self):
        """Across worker processes: a lock file beside a SQLite database (PostgreSQL locks the team row)."""
        import contextlib

        from fmeval.io import file_lock
        from fmeval.server.db import sqlite_lock_path

        path = sqlite_lock_path(self.settings.db)
        return file_lock(path) if path else contextlib.nullcontext()

    # -- accounts ---------------------------------------------------------------------------
    def register(self, db: Session, name: str, email: str, password: str, address: str = "") -> Team:
        """A new team, once the form is valid and the address's registration limit lets the attempt through
        (``TooManyAttempts`` otherwise). An "already registered" answer counts too: probing which emails
        have accounts costs as much as making them."""
        name, email = name.strip(), email.strip().lower()
        if not (1 <= len(name) <= 64) or name.lower() == BASELINE_TEAM:
            raise AuthError("team name must be 1-64 characters and not 'baseline'.")
        if "@" not in email or len(email) > 254:
            raise AuthError("give a valid email address.")
        if len(password) < 8:
            raise AuthError("the password must have at least 8 characters.")
        admit_registration(db, self.settings.registration, address)
        if db.scalar(select(Team).where((func.lower(Team.name) == name.lower()) | (Team.email == email))):
            raise AuthError("that team name or email is already registered.")
        team = Team(name=name, email=email, password_hash=auth.hash_password(password))
        db.add(team)
        try:
            db.commit()
        except IntegrityError:  # a parallel registration of this name or email committed first
            db.rollback()
            raise AuthError("that team name or email is already registered.") from None
        return team

    def login(self, db: Session, email: str, password: str, address: str = "",
              throttled: bool = True) -> tuple[str, str]:
        """A new session (cookie, CSRF token), after the rate limit let the attempt through
        (:func:`fmeval.server.throttle.admit_login` raises ``TooManyAttempts`` otherwise; ``throttled=False``
        only for the login that follows a registration, whose password is not a guess)."""
        email = email.strip().lower()
        attempt = admit_login(db, self.settings.login, email, address) if throttled else []
        team = db.scalar(select(Team).where(Team.email == email))
        stored = team.password_hash if team is not None and team.password_hash else auth.dummy_hash()
        if not auth.verify_password(password, stored) or team is None or not team.password_hash:
            raise AuthError("wrong email or password.")  # same scrypt work either way: no account enumeration by time
        if attempt:
            forget(db, attempt)
        cookie = auth.new_secret()
        db.add(LoginSession(token_hash=auth.digest(cookie), team_id=team.id,
                            expires=utcnow() + timedelta(days=SESSION_DAYS)))
        db.commit()
        return cookie, self.session_csrf(db, cookie)

    def session_csrf(self, db: Session, cookie: str) -> str:
        """The CSRF token of the session of ``cookie``: derived (an HMAC under the server's secret), never
        stored, so the database holds nothing that forges a session's forms."""
        return auth.session_token(self.secret(db), cookie)

    def session_of(self, db: Session, cookie: str | None) -> LoginSession | None:
        if not cookie:
            return None
        s = db.scalar(select(LoginSession).where(LoginSession.token_hash == auth.digest(cookie)))
        return s if s is not None and s.expires > utcnow() else None

    def logout(self, db: Session, cookie: str | None) -> None:
        s = self.session_of(db, cookie)
        if s is not None:
            db.delete(s)
            db.commit()

    def new_token(self, db: Session, team_id: int) -> str:
        token = auth.new_api_token()
        db.add(ApiToken(token_hash=auth.digest(token), prefix=token[:10], team_id=team_id))
        db.commit()
        return token

    def team_of_token(self, db: Session, token: str) -> Team:
        """The team of a live API token; AuthError (one line) for an unknown or revoked one."""
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == auth.digest(token)))
        if row is None:
            raise AuthError("unknown API token; create one on your team page.")
        if row.revoked:
            raise AuthError(f"API token {row.prefix}... was revoked; create a new one on your team page.")
        return db.get(Team, row.team_id)

    def tokens(self, db: Session, team_id: int | None = None) -> list[ApiToken]:
        q = select(ApiToken).order_by(ApiToken.id)
        return list(db.scalars(q if team_id is None else q.where(ApiToken.team_id == team_id)).all())

    def revoke_token(self, db: Session, token_id: int, team_id: int | None = None) -> ApiToken:
        """Revoke one token (``team_id``: only if it is that team's; None: an admin). Idempotent."""
        row = db.get(ApiToken, token_id)
        if row is None or (team_id is not None and row.team_id != team_id):
            raise SubmissionError(f"no API token {token_id}" + (" of this team." if team_id is not None else "."))
        row.revoked = True
        db.commit()
        return row

    def revoke_presented(self, db: Session, token: str) -> ApiToken:
        """Revoke the token presented (a leaked token can be killed with itself)."""
        team = self.team_of_token(db, token)
        row = db.scalar(select(ApiToken).where(ApiToken.token_hash == auth.digest(token)))
        return self.revoke_token(db, row.id, team.id)

    def secret(self, db: Session, name: str = "csrf") -> str:
        """A random value made once per database and shared by every worker (first writer wins)."""
        cached = self._secrets.get(name)
        if cached is None:
            row = db.get(ServerSecret, name)
            if row is None:
                try:
                    db.add(ServerSecret(name=name, value=auth.new_secret()))
                    db.commit()
                except IntegrityError:  # another worker made it first
                    db.rollback()
                row = db.get(ServerSecret, name)
            cached = self._secrets[name] = row.value
        return cached

    # -- baselines --------------------------------------------------------------------------
    def preload_baselines(self, db: Session) -> None:
        """Team "baseline" and its Table 6 rows, once (12-dataset benchmark only)."""
        if not self.benchmark_is_twelve or db.scalar(select(Team).where(Team.name == BASELINE_TEAM)):
            return
        team = Team(name=BASELINE_TEAM, email=None, password_hash=None)
        db.add(team)
        db.flush()
        for row in baseline_rows():
            db.add(Submission(team_id=team.id, model_name=row["model"], description=BASELINE_SOURCE,
                              study_url="", size=row["size"], complete=True, is_baseline=True, means=row["means"]))
        db.commit()

    # -- submissions ------------------------------------------------------------------------
    def next_allowed(self, db: Session, team_id: int) -> datetime | None:
        """None when the team may submit now; else when it may next (or datetime.max: never)."""
        s = self.settings
        total = db.scalar(select(func.count()).select_from(Submission).where(Submission.team_id == team_id))
        if total >= s.total_limit:
            return datetime.max
        since = utcnow() - timedelta(days=1)
        recent = db.scalars(select(Submission.created).where(Submission.team_id == team_id, Submission.created > since)
                            .order_by(Submission.created)).all()
        if len(recent) >= s.daily_limit:
            return recent[len(recent) - s.daily_limit] + timedelta(days=1)
        return None

    def _limit_message(self, when: datetime) -> str:
        if when == datetime.max:
            return f"this team has made its {self.settings.total_limit} submissions (the total limit)."
        return (f"this team has made {self.settings.daily_limit} submissions in the last 24 hours; the next is allowed "
                f"at {when:%Y-%m-%d %H:%M:%S} UTC.")

    def submit(self, db: Session, team: Team, data: bytes, *, size: int, model_name: str,
               description: str = "", study_url: str = "") -> Submission:
        """Check the limit, score every file (nothing written yet), then write the submission and its
        scores in one transaction: an error or a kill before the commit leaves no row."""
        model_name = model_name.strip()
        if not 1 <= len(model_name) <= 200:
            raise SubmissionError("give a model name (1-200 characters).")
        if study_url and not study_url.startswith(("https://", "http://")):
            raise SubmissionError("the study link must be an http(s) URL.")
        if size not in self.labels.sizes:
            raise SubmissionError(f"resolution {size} is not open here; choose one of {', '.join(map(str, self.labels.sizes))}.")
        if (when := self.next_allowed(db, team.id)) is not None:
            raise LimitError(self._limit_message(when))
        LOG.info("scoring an upload of team %s (%d bytes, %d px)", team.id, len(data), size)
        scored = score_zip(data, size, self.labels, self.settings.limits, n_boot=self.settings.n_boot)
        complete = {d.dataset for d in scored} == set(self.labels.datasets)
        means = {m: mean_ci([d.metrics[m] for d in scored], m) for m in RANKED} if complete else {}
        with self._write_lock, self._process_lock():
            db.scalar(select(Team).where(Team.id == team.id).with_for_update())
            if (when := self.next_allowed(db, team.id)) is not None:  # a parallel upload took the last slot
                db.rollback()
                raise LimitError(self._limit_message(when))
            sub = Submission(team_id=team.id, model_name=model_name, description=description[:5000],
                             study_url=study_url[:500], size=size, complete=complete, means=means,
                             archive=_archive(scored))
            sub.scores = [_score_row(d) for d in scored]
            db.add(sub)
            db.commit()
        LOG.info("stored submission %d of team %s (%d datasets, %s)", sub.id, team.id, len(scored),
                 "complete" if complete else "incomplete")
        return sub

    def rescore(self, db: Session) -> int:
        """Recompute every stored submission's scores and means from its kept scores, one transaction
        per submission (a kill leaves each submission either old or new, never half)."""
        ids = db.scalars(select(Submission.id).where(Submission.is_baseline.is_(False))).all()
        for sid in ids:
            sub = db.get(Submission, sid)
            if sub.size not in self.labels.sizes:
                continue
            old = {s.dataset: s.sha256 for s in sub.scores}
            scored = []
            for flag, scores in sorted(_unpack(sub.archive).items()):
                held = self.labels.get(flag, sub.size)
                scored.append(score_arrays(flag, held.task, held.labels, held.class_names, scores,
                                           old.get(flag, ""), n_boot=self.settings.n_boot))
            sub.scores.clear()
            db.flush()  # the old rows go first: (submission, dataset) is unique
            sub.scores.extend(_score_row(d) for d in scored)
            sub.complete = {d.dataset for d in scored} == set(self.labels.datasets)
            sub.means = {m: mean_ci([d.metrics[m] for d in scored], m) for m in RANKED} if sub.complete else {}
            db.commit()
        return len(ids)

    def hide(self, db: Session, submission_id: int, hidden: bool = True) -> Submission:
        sub = db.get(Submission, submission_id)
        if sub is None:
            raise SubmissionError(f"no submission {submission_id}.")
        sub.hidden = hidden
        db.commit()
        return sub

    # -- reading ----------------------------------------------------------------------------
    def ranking(self, db: Session, size: int, metric: str, top: int | None = None) -> dict:
        if metric not in RANKED:
            raise SubmissionError(f"unknown metric {metric!r}; rank by one of {', '.join(RANKED)}.")
        subs = db.scalars(select(Submission).options(selectinload(Submission.team))
                          .where(Submission.size == size, Submission.complete.is_(True), Submission.hidden.is_(False))).all()
        rows = [s for s in subs if (s.means.get(metric) or {}).get("mean") is not None]
        rows.sort(key=lambda s: rank_order(metric, s.means[metric]["mean"], (s.created, s.id)))  # ties: earlier first
        rows = rows[: top or self.settings.top]
        return {
            "size": size, "metric": metric, "metric_label": LEADERBOARD_METRICS.entry(metric).tags["label"],
            "metric_description": LEADERBOARD_METRICS.entry(metric).description,
            "datasets": self.labels.datasets, "n_datasets": len(self.labels.datasets),
            "rows": [{"rank": i + 1, **submission_summary(s), **s.means[metric]} for i, s in enumerate(rows)],
        }

    def detail(self, db: Session, submission_id: int) -> Submission:
        sub = db.scalar(select(Submission).options(selectinload(Submission.scores), selectinload(Submission.team))
                        .where(Submission.id == submission_id))
        if sub is None or sub.hidden:
            raise SubmissionError(f"no submission {submission_id}.")
        return sub

    def team_page(self, db: Session, name: str) -> tuple[Team, list[Submission]]:
        team = db.scalar(select(Team).where(Team.name == name))
        if team is None:
            raise SubmissionError(f"no team {name!r}.")
        subs = db.scalars(select(Submission).options(selectinload(Submission.team))
                          .where(Submission.team_id == team.id, Submission.hidden.is_(False))
                          .order_by(Submission.created.desc())).all()
        return team, list(subs)

    def compare(self, db: Session, a_id: int, b_id: int, metric: str = "auc", n_boot: int = 1000) -> dict:
        """Per-dataset values of two submissions and fmeval's paired bootstrap of the difference
        on the datasets both scored (the same test images, the same resamples)."""
        from fmeval.metrics import paired_difference

        if metric not in ("auc", "balanced_acc", "acc"):
            raise SubmissionError("the paired bootstrap compares auc, balanced_acc or acc.")
        a, b = self.detail(db, a_id), self.detail(db, b_id)
        if a.size != b.size:
            raise SubmissionError("the two submissions are at different resolutions; compare like with like.")
        sa, sb = _unpack(a.archive), _unpack(b.archive)
        rows = []
        for flag in self.labels.datasets:
            if flag not in sa or flag not in sb:
                continue
            held = self.labels.get(flag, a.size)
            y = held.labels if held.task == "multi-label, binary-class" else held.labels[:, 0]
            pd = paired_difference(held.task, y, sa[flag], sb[flag], metric, n_boot=n_boot, seed=0)
            va = next(s for s in a.scores if s.dataset == flag)
            vb = next(s for s in b.scores if s.dataset == flag)
            rows.append({"dataset": flag, "a": getattr(va, metric), "b": getattr(vb, metric),
                         **{k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in pd.items()}})
        return {"metric": metric, "a": submission_summary(a), "b": submission_summary(b), "rows": rows}


def submission_summary(s: Submission) -> dict:
    return {"id": s.id, "team": s.team.name, "model": s.model_name, "description": s.description,
            "study_url": s.study_url, "size": s.size, "created": s.created.isoformat(timespec="seconds"),
            "complete": s.complete, "baseline": s.is_baseline, "n_scored": len(s.scores) if "scores" in s.__dict__ else None,
            "means": s.means}


def _score_row(d: DatasetScore) -> Score:
    return Score(dataset=d.dataset, n=d.n, sha256=d.sha256, detail={"ci": d.ci, "confusion": d.confusion},
                 **{m: d.metrics[m] for m in ("auc", "balanced_acc", "kappa", "acc", "precision")})


def _archive(scored: list[DatasetScore]) -> bytes:
    """The validated scores, as float64 arrays in one compressed npz (for comparisons and rescoring)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{d.dataset: d.scores for d in scored})
    return buf.getvalue()


def _unpack(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
