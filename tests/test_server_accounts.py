"""Account internals without HTTP: the password check does the same scrypt work for an unknown email."""

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
