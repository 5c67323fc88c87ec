"""Accounts on the leaderboard server through real HTTP: CSRF on the forms shown before login, the login
rate limit under concurrent clients, and API-token revocation (page, API and admin command).

One server with two uvicorn worker processes, so the rate limit is shown to hold across processes
(it is stored in the database, not in a worker's memory). Clients are told apart by the
``X-Forwarded-For`` header, which uvicorn honours from 127.0.0.1 (a reverse proxy's address).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from helpers import run
from server_helpers import postgres  # noqa: F401  (the fixture)
from server_helpers import Browserless, api_upload, form_csrf, require_server_extra, rows, running, submission_zip

pytestmark = pytest.mark.slow

PER_ACCOUNT, PER_ADDRESS = 3, 6


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """One server per backend (a SQLite file; a database on the test PostgreSQL server)."""
    require_server_extra()
    tmp = tmp_path_factory.mktemp("lb-auth")
    db = f"sqlite:///{tmp / 'lb.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres").new_db()
    with running(tmp, "--bootstrap", "0", "--workers", "2", "--login-attempts", str(PER_ACCOUNT),
                 "--login-attempts-per-address", str(PER_ADDRESS), "--login-window", "10", db=db) as srv:
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
