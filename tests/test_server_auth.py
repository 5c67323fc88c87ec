"""Accounts on the leaderboard server through real HTTP: CSRF on the forms shown before login, the login
rate limit under concurrent clients, and API-token revocation (page, API and admin command).

One server with two uvicorn worker processes, so the rate limit is shown to hold across processes
(it is stored in the database, not in a worker's memory). Clients are told apart by the
``X-Forwarded-For`` header, which uvicorn honours from 127.0.0.1 (a reverse proxy's address).
"""

from __future__ import annotations

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from helpers import run
from server_helpers import db_url, postgres  # noqa: F401  (the fixtures)
from server_helpers import Browserless, api_upload, form_csrf, require_server_extra, rows, running, submission_zip

pytestmark = pytest.mark.slow

PER_ACCOUNT, PER_ADDRESS = 3, 6


PER_REGISTRATION = 4


@contextlib.contextmanager
def _two_workers(request, tmp_path_factory, *args: str):
    """A server with two worker processes on the backend of ``request.param`` (a SQLite file; a database
    on the test PostgreSQL server)."""
    require_server_extra()
    tmp = tmp_path_factory.mktemp("lb-auth")
    db = f"sqlite:///{tmp / 'lb.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres").new_db()
    with running(tmp, "--bootstrap", "0", "--workers", "2", *args, db=db) as srv:
        yield srv


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """One server per backend; registrations are not limited (every helper team comes from 127.0.0.1)."""
    with _two_workers(request, tmp_path_factory, "--login-attempts", str(PER_ACCOUNT), "--login-attempts-per-address",
                      str(PER_ADDRESS), "--login-window", "10") as srv:
        yield srv


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def strict_server(request, tmp_path_factory):
    """One server per backend with a tight registration limit (PER_REGISTRATION an address in 10 minutes)."""
    with _two_workers(request, tmp_path_factory, "--registrations-per-address", str(PER_REGISTRATION),
                      "--registration-window", "10") as srv:
        yield srv


def _client(url: str):
    import httpx

    return httpx.Client(base_url=url, timeout=120, follow_redirects=False)


def _login(url: str, email: str, password: str, address: str):
    """One fresh browser-like client: GET the form (pre-session cookie + token), POST it."""
    with _client(url) as c:
        token = form_csrf(c, "/login")
        return c.post("/login", data={"email": email, "password": password, "csrf": token},
                      headers={"X-Forwarded-For": address})


# -- CSRF ----------------------------------------------------------------------------------------------
def test_login_and_register_forms_refuse_a_missing_forged_or_foreign_csrf_token(server):
    Browserless(server.url, "Csrf")  # registers through the form with its token
    with _client(server.url) as c:
        token = form_csrf(c, "/login")
        creds = {"email": "csrf@example.org", "password": "correct horse battery"}
        for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": token[:-1] + ("0" if token[-1] != "0" else "1")}):
            r = c.post("/login", data={**creds, **bad}, headers={"X-Forwarded-For": "10.9.0.1"})
            assert r.status_code == 403 and "CSRF token is missing or stale" in r.text, bad
            assert "set-cookie" not in r.headers or "fmeval_session" not in r.headers["set-cookie"]
        # a token is bound to its own pre-session cookie: another visitor's valid token does not fit this cookie
        with _client(server.url) as other:
            foreign = form_csrf(other, "/login")
        assert foreign != token
        r = c.post("/login", data={**creds, "csrf": foreign}, headers={"X-Forwarded-For": "10.9.0.1"})
        assert r.status_code == 403
        # a forged cross-site post carries the victim's cookie but cannot read the page: no token, no account
        r = c.post("/register", data={"team": "Forged", "email": "forged@example.org", "password": "12345678"})
        assert r.status_code == 403 and "CSRF" in r.text
        # without the pre-session cookie a copied token is refused too
        with _client(server.url) as bare:
            r = bare.post("/login", data={**creds, "csrf": token}, headers={"X-Forwarded-For": "10.9.0.1"})
            assert r.status_code == 403
        # the genuine form works, and the team registered only once
        r = c.post("/login", data={**creds, "csrf": token}, headers={"X-Forwarded-For": "10.9.0.1"})
        assert r.status_code == 303 and "fmeval_session=" in r.headers["set-cookie"]
    r = _client(server.url).get("/api/teams/Forged")
    assert r.status_code == 404


def test_the_pre_session_cookie_is_httponly_and_samesite(server):
    with _client(server.url) as c:
        r = c.get("/login")
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("fmeval_csrf=") and "httponly" in cookie and "samesite=lax" in cookie
        # the same cookie keeps its token (the page does not mint a new cookie each time)
        assert form_csrf(c, "/login") == form_csrf(c, "/register")


# -- the login rate limit ------------------------------------------------------------------------------
def _parallel(calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


def test_parallel_password_guesses_on_one_account_get_exactly_the_limit_through(server):
    Browserless(server.url, "Victim")
    email = "victim@example.org"
    # 12 clients from 12 addresses guess at once: the account's limit lets exactly PER_ACCOUNT reach the check
    answers = _parallel([lambda i=i: _login(server.url, email, f"guess-{i}", f"10.1.0.{i}") for i in range(12)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [400] * PER_ACCOUNT + [429] * (12 - PER_ACCOUNT), codes
    refused = next(r for r in answers if r.status_code == 429)
    msg = re.search(r'id="message">([^<]+)<', refused.text).group(1)
    assert msg.startswith(f"too many login attempts from this account ({PER_ACCOUNT} in 10 minutes); try again at ")
    retry = datetime.strptime(msg.rsplit("at ", 1)[1], "%Y-%m-%d %H:%M:%S UTC.")
    assert timedelta(minutes=9) < retry - datetime.utcnow() <= timedelta(minutes=10, seconds=5)
    assert 500 <= int(refused.headers["retry-after"]) <= 601
    # inside the window even the right password is refused (the guesser cannot tell it is right) ...
    r = _login(server.url, email, "correct horse battery", "10.1.1.1")
    assert r.status_code == 429
    # ... while another account from the same addresses logs in (the limit is per account)
    Browserless(server.url, "Bystander")
    assert _login(server.url, "bystander@example.org", "correct horse battery", "10.1.0.1").status_code == 303


def test_parallel_logins_from_one_address_are_limited_across_accounts(server):
    for i in range(3):
        Browserless(server.url, f"Spray{i}")
    # 10 parallel tries from one address on 3 accounts (at most 3-4 each, within the account limit):
    # the address limit lets PER_ADDRESS through
    emails = [f"spray{i % 3}@example.org" for i in range(10)]
    answers = _parallel([lambda e=e, i=i: _login(server.url, e, f"wrong-{i}", "10.2.0.1")
                         for i, e in enumerate(emails)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [400] * PER_ADDRESS + [429] * (10 - PER_ADDRESS), codes  # spray0's 4th try: account or address
    assert any("from this address" in r.text for r in answers if r.status_code == 429)
    # a fresh account: refused from the spent address, let in from another one
    Browserless(server.url, "Spray3")
    assert _login(server.url, "spray3@example.org", "correct horse battery", "10.2.0.1").status_code == 429
    assert _login(server.url, "spray3@example.org", "correct horse battery", "10.2.0.2").status_code == 303


def test_a_successful_login_does_not_count_as_a_guess(server):
    Browserless(server.url, "Regular")
    for _ in range(PER_ACCOUNT + 2):
        r = _login(server.url, "regular@example.org", "correct horse battery", "10.3.0.1")
        assert r.status_code == 303


# -- the registration limit ----------------------------------------------------------------------------
def _register(url: str, team: str, address: str, email: str | None = None, password: str = "correct horse battery"):
    with _client(url) as c:
        token = form_csrf(c, "/register")
        return c.post("/register", data={"team": team, "email": email or f"{team.lower()}@example.org",
                                         "password": password, "csrf": token}, headers={"X-Forwarded-For": address})


def test_parallel_registrations_from_one_address_get_exactly_the_limit_through(strict_server):
    url = strict_server.url
    answers = _parallel([lambda i=i: _register(url, f"Flood{i}", "10.4.0.1") for i in range(10)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [303] * PER_REGISTRATION + [429] * (10 - PER_REGISTRATION), codes
    teams = [t for (t,) in rows(strict_server.db, "select name from teams where name like 'Flood%'")]
    assert len(teams) == PER_REGISTRATION
    refused = next(r for r in answers if r.status_code == 429)
    msg = re.search(r'id="message">([^<]+)<', refused.text).group(1)
    assert msg.startswith(f"too many registrations from this address ({PER_REGISTRATION} in 10 minutes); "
                          "try again at "), msg
    retry = datetime.strptime(msg.rsplit("at ", 1)[1], "%Y-%m-%d %H:%M:%S UTC.")
    assert timedelta(minutes=9) < retry - datetime.utcnow() <= timedelta(minutes=10, seconds=5)
    assert 500 <= int(refused.headers["retry-after"]) <= 601
    assert 'action="/register"' in refused.text  # the register page, with its message
    # another address still registers; an invalid form is answered without counting
    assert _register(url, "Elsewhere", "10.4.0.2").status_code == 303
    for i in range(PER_REGISTRATION + 1):
        r = _register(url, f"Short{i}", "10.4.0.3", password="short")
        assert r.status_code == 400 and "at least 8 characters" in r.text
    assert _register(url, "Valid", "10.4.0.3").status_code == 303


def test_already_registered_answers_count_against_the_address(strict_server):
    """Probing which emails have accounts costs registrations too (it slows email enumeration)."""
    url = strict_server.url
    assert _register(url, "Probed", "10.5.0.1").status_code == 303
    for i in range(PER_REGISTRATION - 1):
        r = _register(url, f"Probe{i}", "10.5.0.2", email="probed@example.org")
        assert r.status_code == 400 and "already registered" in r.text
    r = _register(url, "ProbeLast", "10.5.0.2", email="probed@example.org")
    assert r.status_code == 400  # the limit-th attempt is still answered
    r = _register(url, "ProbeOver", "10.5.0.2", email="probed@example.org")
    assert r.status_code == 429 and "too many registrations from this address" in r.text
    r = _register(url, "Fresh", "10.5.0.2")
    assert r.status_code == 429  # the address is spent, whatever it registers


def test_parallel_registrations_of_one_team_make_one_account_and_plain_refusals(server):
    """The name/email check and the insert are two steps; a parallel twin that commits first is answered
    "already registered" (the database's unique constraint decides), never a server error."""
    answers = _parallel([lambda i=i: _register(server.url, "Twin", f"10.6.0.{i}") for i in range(8)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [303] + [400] * 7, codes
    assert all("already registered" in r.text for r in answers if r.status_code == 400)
    assert rows(server.db, "select count(*) from teams where name = 'Twin'") == [(1,)]


# -- the session CSRF token ------------------------------------------------------------------------------
def test_the_session_csrf_token_is_derived_not_stored_and_a_forged_one_is_refused(server):
    import hashlib
    import hmac

    import httpx

    team = Browserless(server.url, "Derived")
    cookie = team.client.cookies["fmeval_session"]
    # the sessions table keeps no secret of a session: no csrf column, only the cookie's SHA-256
    cols = _columns(server.db, "sessions")
    assert "csrf" not in cols and "token_hash" in cols
    dump = repr(rows(server.db, "select * from sessions"))
    assert team.csrf not in dump and cookie not in dump
    # the token is the same on every page of the session, and another session's token differs
    assert re.search(r'name="csrf" value="([^"]+)"', team.client.get("/").text).group(1) == team.csrf
    other = Browserless(server.url, "Derived2")
    assert other.csrf != team.csrf
    # forged: another session's token, a token keyed by anything but the server's secret, a near miss
    guess = hmac.new(b"not the secret", b"session:" + cookie.encode(), hashlib.sha256).hexdigest()
    near = team.csrf[:-1] + ("0" if team.csrf[-1] != "0" else "1")
    for bad in (other.csrf, guess, near, "", hashlib.sha256(cookie.encode()).hexdigest()):
        r = team.client.post("/tokens", data={"csrf": bad})
        assert r.status_code == 403 and "CSRF" in r.text, bad
    assert team.client.post("/tokens", data={"csrf": team.csrf}).status_code == 200
    with httpx.Client(base_url=server.url, cookies={"fmeval_session": cookie}) as thief:  # the token needs the cookie
        assert thief.post("/logout", data={"csrf": other.csrf}).status_code == 403
        assert thief.post("/logout", data={"csrf": team.csrf}).status_code == 303


def _columns(db_url: str, table: str) -> list[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(db_url)
    try:
        return [c["name"] for c in inspect(engine).get_columns(table)]
    finally:
        engine.dispose()


def test_a_database_at_0002_with_a_live_session_upgrades_and_the_session_keeps_working(tmp_path, db_url):
    """The csrf column is dropped by migration 0003; a session made before it still logs in and its
    (now derived) token works on the forms."""
    require_server_extra()
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from fmeval.server import auth
    from fmeval.server.db import MIGRATIONS

    engine = create_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cookie = auth.new_secret()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(text("insert into teams (name, email, password_hash, is_admin, created) values "
                          "('Old', 'old@example.org', :pw, false, :now)"),
                     {"pw": auth.hash_password("correct horse battery"), "now": datetime.utcnow()})
        conn.execute(text("insert into sessions (token_hash, csrf, team_id, expires) select :h, :c, id, :e "
                          "from teams where name = 'Old'"),
                     {"h": auth.digest(cookie), "c": "plain-text-csrf", "e": datetime.utcnow() + timedelta(days=1)})
    engine.dispose()
    assert "csrf" in _columns(db_url, "sessions")
    with running(tmp_path, "--bootstrap", "0", db=db_url) as srv:
        assert "csrf" not in _columns(db_url, "sessions")
        assert rows(db_url, "select count(*) from sessions") == [(1,)]
        with _client(srv.url) as c:
            c.cookies.set("fmeval_session", cookie)
            me = c.get("/me")
            assert me.status_code == 200 and "Old" in me.text
            token = re.search(r'name="csrf" value="([^"]+)"', me.text).group(1)
            assert token != "plain-text-csrf"
            assert c.post("/tokens", data={"csrf": "plain-text-csrf"}).status_code == 403
            assert c.post("/tokens", data={"csrf": token}).status_code == 200


# -- API-token revocation --------------------------------------------------------------------------------
def test_a_revoked_token_is_refused_from_the_page_the_api_and_the_admin_command(server, capsys):
    team = Browserless(server.url, "Revoker")
    t1, t2, t3 = team.token(), team.token(), team.token()
    data = submission_zip(seed=1, datasets=("breastmnist",))
    assert api_upload(server.url, t1, data).status_code == 201
    # 1) from the team page: a CSRF form per token
    me = team.client.get("/me").text
    ids = re.findall(r'action="/tokens/(\d+)/revoke"', me)
    assert len(ids) == 3
    r = team.client.post(f"/tokens/{ids[0]}/revoke", data={"csrf": "forged"})
    assert r.status_code == 403
    assert api_upload(server.url, t1, data).status_code == 201  # still live
    r = team.client.post(f"/tokens/{ids[0]}/revoke", data={"csrf": team.csrf})
    assert r.status_code == 200 and f"API token {t1[:10]}... revoked" in r.text
    r = api_upload(server.url, t1, data)
    assert r.status_code == 401 and r.json()["error"] == (f"API token {t1[:10]}... was revoked; create a new one "
                                                         "on your team page.")
    # another team cannot revoke this team's token
    other = Browserless(server.url, "Intruder")
    assert other.client.post(f"/tokens/{ids[1]}/revoke", data={"csrf": other.csrf}).status_code == 404
    assert api_upload(server.url, t2, data).status_code == 201
    # 2) a leaked token revokes itself through the API
    import httpx

    r = httpx.post(server.url + "/api/tokens/revoke", headers={"Authorization": f"Bearer {t2}"})
    assert r.status_code == 200 and r.json()["revoked"] == t2[:10]
    assert api_upload(server.url, t2, data).status_code == 401
    mine = httpx.get(server.url + "/api/me", headers={"Authorization": f"Bearer {t3}"}).json()  # the JSON of /me
    assert mine["team"] == "Revoker" and [k["revoked"] for k in mine["tokens"]] == [True, True, False]
    assert len(mine["submissions"]) == 3 and mine["limit_reached"] is False
    # 3) the admin command on the server's database
    code, listing, err = run(capsys, "server", "tokens", "--db", server.db, "--team", "Revoker")
    assert code == 0, err
    assert listing.count("revoked") == 2 and listing.count("live") == 1 and t3[:10] in listing
    code, out, err = run(capsys, "server", "revoke-token", "--db", server.db, "--team", "Revoker")
    assert code == 0 and "revoked 1 API token(s)" in out, err
    r = api_upload(server.url, t3, data)
    assert r.status_code == 401 and "was revoked" in r.json()["error"]
    r = httpx.get(server.url + "/api/me", headers={"Authorization": f"Bearer {t3}"})
    assert r.status_code == 401 and "was revoked" in r.json()["error"]
    assert api_upload(server.url, "fmv_" + "x" * 40, data).json()["error"].startswith("unknown API token")
    # the database holds no token, only hashes
    dump = repr(rows(server.db, "select * from api_tokens"))
    assert not any(t in dump for t in (t1, t2, t3)) and dump.count("'fmv_") >= 3


def test_revoke_token_refuses_bad_input_in_one_line(server, capsys):
    for argv, msg in ((("server", "revoke-token"), "give a token id or --team NAME"),
                      (("server", "revoke-token", "999999"), "no API token 999999"),
                      (("server", "tokens", "--team", "Nobody"), "no team 'Nobody'")):
        code, out, err = run(capsys, *argv, "--db", server.db)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
