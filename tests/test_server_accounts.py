"""Account internals without HTTP: the password check does the same scrypt work for an unknown email; the
login and registration limits keep their own windows in the shared table."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from server_helpers import require_server_extra


def test_an_unknown_email_costs_the_same_scrypt_as_a_wrong_password(tmp_path, monkeypatch):
    require_server_extra()
    from fmeval.server.db import open_db
    from fmeval.server.service import AuthError, Leaderboard, ServerSettings

    db_url = f"sqlite:///{tmp_path / 'lb.sqlite3'}"
    _, sessions = open_db(db_url)
    lb = Leaderboard(ServerSettings(db=db_url), SimpleNamespace(datasets=["breastmnist"], sizes=[28]), sessions)
    with sessions() as db:
        lb.register(db, "Known", "known@example.org", "correct horse battery")
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(k.get("n")) or real(*a, **k))
    from fmeval.server import auth

    getattr(auth, "dummy_hash", lambda: None)()  # made once per process; not part of a login's cost
    calls.clear()
    for email in ("known@example.org", "nobody@example.org"):
        with sessions() as db, pytest.raises(AuthError, match="wrong email or password"):
            lb.login(db, email, "wrong password", "10.0.0.1")
    assert calls == [auth.SCRYPT_N, auth.SCRYPT_N]  # one scrypt each, same parameters
    with sessions() as db:
        cookie, csrf = lb.login(db, "known@example.org", "correct horse battery", "10.0.0.1")
        assert lb.session_of(db, cookie) is not None and lb.session_csrf(db, cookie) == csrf


def test_a_login_clean_up_keeps_the_longer_registration_window(tmp_path, monkeypatch):
    """Both limits share one table; a login's clean-up (15-minute window) must not delete registrations
    that still count in their own (60-minute) window."""
    require_server_extra()
    from datetime import timedelta

    from fmeval.server import throttle
    from fmeval.server.db import open_db
    from fmeval.server.models import utcnow

    _, sessions = open_db(f"sqlite:///{tmp_path / 'lb.sqlite3'}")
    reg = throttle.RegistrationLimits(per_address=2, window_s=3600)
    with sessions() as db:
        for _ in range(2):
            throttle.admit_registration(db, reg, "10.7.0.1")
        later = utcnow() + timedelta(minutes=20)
        monkeypatch.setattr(throttle, "utcnow", lambda: later)
        throttle.admit_login(db, throttle.LoginLimits(window_s=900), "someone@example.org", "10.7.0.1")
        with pytest.raises(throttle.TooManyAttempts, match=r"too many registrations from this address \(2 in 60 minutes\)"):
            throttle.admit_registration(db, reg, "10.7.0.1")
