"""The leaderboard server through real HTTP: a ``fmeval serve`` process on a local port, an HTTP client.

The dataset set is the three real 2D files of ../shared/data (PneumoniaMNIST,
BreastMNIST, RetinaMNIST); the 12-dataset rule is the same code with a
longer list.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn import metrics as skm

from server_helpers import (
    THREE, Browserless, api_upload, csv_bytes, make_zip, noisy_scores, require_server_extra, rows, running,
    submission_zip, truth_of,
)
from server_helpers import db_url, postgres  # noqa: F401  (fixtures: each storage test on SQLite and PostgreSQL)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_server_extra()
    with running(tmp_path_factory.mktemp("lb"), "--bootstrap", "50") as srv:
        yield srv


def _rows(db_url: str, sql: str) -> list:
    return rows(db_url, sql)


def _expected(flag: str, seed: int) -> dict[str, float]:
    """The leaderboard's metrics from scikit-learn directly: medmnist thresholds, unweighted kappa."""
    y, s = truth_of(flag), noisy_scores(flag, seed)
    binary = s.shape[1] == 2
    pred = (s[:, 1] > 0.5).astype(int) if binary else s.argmax(1)
    auc = skm.roc_auc_score(y, s[:, 1]) if binary else np.mean(
        [skm.roc_auc_score(y == c, s[:, c]) for c in range(s.shape[1])])
    return {"auc": auc, "balanced_acc": skm.balanced_accuracy_score(y, pred), "acc": skm.accuracy_score(y, pred),
            "kappa": skm.cohen_kappa_score(y, pred), "precision": skm.precision_score(y, pred, average="macro",
                                                                                     zero_division=0)}


def test_scores_against_its_own_labels_and_ranks_the_mean(server):
    team = Browserless(server.url, "Alpha")
    r = team.upload(submission_zip(seed=1), model="alpha-net", study_url="https://example.org/paper")
    assert r.status_code == 303, r.text[:300]
    sid = int(r.headers["location"].rsplit("/", 1)[1])
    detail = team.client.get(f"/api/submissions/{sid}").json()
    assert detail["complete"] is True
    got = {s["dataset"]: s for s in detail["scores"]}
    assert sorted(got) == sorted(THREE)
    for flag in THREE:
        for metric, want in _expected(flag, 1).items():
            assert got[flag][metric] == pytest.approx(want, abs=1e-12), (flag, metric)
    # RetinaMNIST's kappa is the unweighted one (the thesis's rule), not fmeval's quadratic kappa
    y, s = truth_of("retinamnist"), noisy_scores("retinamnist", 1)
    assert got["retinamnist"]["kappa"] != pytest.approx(skm.cohen_kappa_score(y, s.argmax(1), weights="quadratic"))
    board = team.client.get("/api/leaderboard", params={"size": 28, "metric": "kappa"}).json()
    row = next(r for r in board["rows"] if r["id"] == sid)
    values = [got[f]["kappa"] for f in THREE]
    assert row["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    from scipy import stats
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert row["study_url"] == "https://example.org/paper"
    page = team.client.get("/", params={"size": 28, "metric": "kappa"}).text
    assert "alpha-net" in page and 'class="study' in page
    # a 3-dataset board is not the 12-dataset benchmark: the published baselines are not mixed in
    assert all(r["team"] != "baseline" for r in board["rows"])


def test_incomplete_submission_is_stored_but_never_ranked(server):
    team = Browserless(server.url, "Bravo")
    r = team.upload(submission_zip(seed=2, datasets=("breastmnist",)), model="only-breast")
    assert r.status_code == 303
    sid = int(r.headers["location"].rsplit("/", 1)[1])
    assert team.client.get(f"/api/submissions/{sid}").json()["complete"] is False
    for metric in ("auc", "balanced_acc", "kappa", "acc"):
        rows = team.client.get("/api/leaderboard", params={"size": 28, "metric": metric}).json()["rows"]
        assert sid not in [r["id"] for r in rows]
    assert "incomplete" in team.client.get("/teams/Bravo").text


def test_truth_columns_are_ignored(server):
    """An upload that carries truth = its own prediction scores exactly what the predictions alone score."""
    token = Browserless(server.url, "Charlie").token()
    files = {}
    for flag in THREE:
        s = noisy_scores(flag, 3)
        files[f"{flag}.csv"] = csv_bytes(s, {"truth": s.argmax(1)})
    with_truth = api_upload(server.url, token, make_zip(files), model="cheat").json()
    plain = api_upload(server.url, token, submission_zip(seed=3), model="plain").json()
    assert with_truth["means"] == plain["means"]
    assert with_truth["means"]["acc"]["mean"] < 0.95  # not the perfect score truth=prediction would give


def test_a_bad_file_is_refused_with_the_score_message_and_nothing_is_stored(server):
    token = Browserless(server.url, "Delta").token()
    short = noisy_scores("breastmnist", 0)[:-1]
    files = {"breastmnist.csv": csv_bytes(short), "pneumoniamnist.csv": csv_bytes(noisy_scores("pneumoniamnist", 0))}
    r = api_upload(server.url, token, make_zip(files))
    assert r.status_code == 400
    assert r.json()["error"] == ("breastmnist.csv: 155 rows, expected 156 (one per test image); missing index(es) 155.")
    logits = noisy_scores("pneumoniamnist", 0) * 7
    r = api_upload(server.url, token, make_zip({"pneumoniamnist.csv": csv_bytes(logits)}))
    assert r.status_code == 400 and "write probabilities, not logits" in r.json()["error"]
    r = api_upload(server.url, token, b"not a zip")
    assert r.status_code == 400 and "not a zip file" in r.json()["error"]
    r = api_upload(server.url, token, submission_zip(), size="abc")
    assert r.status_code == 400 and r.json()["error"].startswith("resolution must be a number of pixels")
    r = api_upload(server.url, token, submission_zip(), size=64)  # no 64 px files on this server
    assert r.status_code == 400 and r.json()["error"] == "resolution 64 is not open here; choose one of 28."
    assert _rows(server.db, "select count(*) from submissions s join teams t on s.team_id = t.id "
                            "where t.name = 'Delta'") == [(0,)]


def test_zip_slip_and_zip_bomb_are_refused(server):
    token = Browserless(server.url, "Echo").token()
    slip = make_zip({"../../evil/breastmnist.csv": csv_bytes(noisy_scores("breastmnist", 0))})
    r = api_upload(server.url, token, slip)
    assert r.status_code == 400 and "outside the archive" in r.json()["error"]
    buf = io.BytesIO()  # 1 GB of zeros in a ~1 MB upload
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("breastmnist.csv", "w", force_zip64=True) as fh:
            block = b"0" * (1 << 20)
            for _ in range(1024):
                fh.write(block)
    bomb = buf.getvalue()
    assert len(bomb) < 5 << 20
    t0 = time.monotonic()
    r = api_upload(server.url, token, bomb)
    assert r.status_code == 400 and "zip bomb" in r.json()["error"]
    assert time.monotonic() - t0 < 60
    assert _rows(server.db, "select count(*) from submissions s join teams t on s.team_id = t.id "
                            "where t.name = 'Echo'") == [(0,)]


def test_user_strings_render_as_text(server):
    team = Browserless(server.url, "Fox<b>trot</b>")
    name = '<script>alert("x")</script>'
    r = team.upload(submission_zip(seed=4), model=name, description="<img src=x onerror=alert(1)>")
    sid = int(r.headers["location"].rsplit("/", 1)[1])
    for page in (team.client.get(f"/submissions/{sid}").text, team.client.get("/").text, team.client.get("/me").text):
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>trot" not in page
        assert "&lt;script&gt;" in page
    r = team.client.get("/")
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert "access-control-allow-origin" not in r.headers  # CORS closed


def test_session_cookie_flags_and_csrf(server):
    team = Browserless(server.url, "Golf")
    cookie = team.cookie_header.lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    r = team.client.post("/submit", data={"csrf": "forged", "model_name": "x", "size": "28"},
                         files={"file": ("p.zip", submission_zip(), "application/zip")})
    assert r.status_code == 403 and "CSRF" in r.text
    stored = _rows(server.db, "select password_hash from teams where name = 'Golf'")[0][0]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    tokens = _rows(server.db, "select token_hash from api_tokens")
    token = team.token()
    assert token not in json.dumps(_rows(server.db, "select * from api_tokens"))
    assert len(_rows(server.db, "select token_hash from api_tokens")) == len(tokens) + 1


def test_eleventh_submission_in_a_day_is_refused(server):
    token = Browserless(server.url, "Hotel").token()
    data = submission_zip(seed=5, datasets=("breastmnist",))
    for i in range(10):
        assert api_upload(server.url, token, data, model=f"m{i}").status_code == 201
    r = api_upload(server.url, token, data, model="m10")
    assert r.status_code == 429
    msg = r.json()["error"]
    first = _rows(server.db, "select min(s.created) from submissions s join teams t on s.team_id = t.id "
                             "where t.name = 'Hotel'")[0][0]
    from datetime import datetime, timedelta
    nxt = (datetime.fromisoformat(first) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"the next is allowed at {nxt} UTC" in msg
    assert _rows(server.db, "select count(*) from submissions s join teams t on s.team_id = t.id "
                            "where t.name = 'Hotel'") == [(10,)]


def test_comparison_uses_the_paired_bootstrap(server):
    from fmeval.metrics import paired_difference

    token = Browserless(server.url, "India").token()
    a = api_upload(server.url, token, submission_zip(seed=6), model="a").json()["id"]
    b = api_upload(server.url, token, submission_zip(seed=7), model="b").json()["id"]
    cmp = json.loads(__import__("httpx").get(server.url + "/api/compare", params={"a": a, "b": b}).text)
    row = next(r for r in cmp["rows"] if r["dataset"] == "retinamnist")
    want = paired_difference("ordinal-regression", truth_of("retinamnist"), noisy_scores("retinamnist", 6),
                             noisy_scores("retinamnist", 7), "auc", n_boot=1000, seed=0)
    assert row["diff"] == pytest.approx(want["diff"]) and row["ci_low"] == pytest.approx(want["ci_low"])
    page = __import__("httpx").get(server.url + "/compare", params={"a": a, "b": b}).text
    assert 'src="data:image/png;base64,' in page and "retinamnist" in page


def test_twenty_parallel_uploads_give_twenty_rows_and_scores(tmp_path, db_url):
    require_server_extra()
    with running(tmp_path, "--bootstrap", "0", "--daily-limit", "100", db=db_url) as srv:
        token = Browserless(srv.url, "Juliet").token()
        zips = [submission_zip(seed=100 + i) for i in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda i: api_upload(srv.url, token, zips[i], model=f"p{i}"), range(20)))
        assert [r.status_code for r in answers] == [201] * 20, [r.text[:200] for r in answers if r.status_code != 201]
        assert len({r.json()["id"] for r in answers}) == 20
        assert _rows(srv.db, "select count(*) from submissions where not is_baseline") == [(20,)]
        assert _rows(srv.db, "select count(*) from scores") == [(60,)]
        board = __import__("httpx").get(srv.url + "/api/leaderboard", params={"top": 100}).json()
        assert len(board["rows"]) == 20


def test_a_server_killed_mid_scoring_leaves_no_half_submission(tmp_path, db_url):
    require_server_extra()
    db = db_url
    srv = running(tmp_path, "--bootstrap", "100000", db=db)
    with srv as s:
        token = Browserless(s.url, "Kilo").token()
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(api_upload, s.url, token, submission_zip(seed=9), "slow")
            end = time.monotonic() + 120
            while b"scoring an upload" not in s.log.read_bytes() and time.monotonic() < end:
                time.sleep(0.05)
            assert b"scoring an upload" in s.log.read_bytes()
            s.kill()
            with pytest.raises(Exception):
                fut.result(timeout=60).raise_for_status()
    assert _rows(db, "select count(*) from submissions where not is_baseline") == [(0,)]
    assert _rows(db, "select count(*) from scores") == [(0,)]
    with running(tmp_path, "--bootstrap", "0", db=db) as s2:  # restarts on the same file; the upload goes through
        assert api_upload(s2.url, token, submission_zip(seed=9), model="again").status_code == 201


def test_mean_ci_is_the_t_interval_clipped_to_the_metric_range():
    require_server_extra()
    from scipy import stats

    from fmeval.server.service import mean_ci

    v = [0.80, 0.95, 0.99]
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    got = mean_ci(v, "auc")
    assert got["mean"] == pytest.approx(np.mean(v)) and got["ci_low"] == pytest.approx(np.mean(v) - half)
    assert np.mean(v) + half > 1 and got["ci_high"] == 1.0
    assert mean_ci([-0.9, 0.5, 0.1], "kappa")["ci_low"] == -1.0
    assert mean_ci([0.5], "auc") == {"mean": 0.5, "ci_low": None, "ci_high": None}


def test_the_daily_limit_holds_across_worker_processes(tmp_path, db_url):
    """Two uvicorn workers on one database, 20 parallel uploads of one team: exactly 10 are stored
    (SQLite: a lock file beside the database; PostgreSQL: SELECT ... FOR UPDATE on the team's row)."""
    require_server_extra()
    with running(tmp_path, "--bootstrap", "0", "--workers", "2", db=db_url) as srv:
        token = Browserless(srv.url, "Papa").token()
        data = submission_zip(seed=51, datasets=("breastmnist",))
        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = sorted(r.status_code for r in pool.map(lambda i: api_upload(srv.url, token, data, f"w{i}"),
                                                            range(20)))
        assert codes == [201] * 10 + [429] * 10
        assert _rows(srv.db, "select count(*) from submissions where not is_baseline") == [(10,)]
        log = srv.log.read_text()
        assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2, log[-1500:]


def test_an_upload_over_the_size_limit_is_refused(tmp_path, db_url):
    require_server_extra()
    import httpx

    with running(tmp_path, "--bootstrap", "0", "--max-upload-mb", "1", db=db_url) as srv:
        token = Browserless(srv.url, "Quebec").token()
        big = make_zip({"breastmnist.csv": np.random.default_rng(0).bytes(3 << 20)})  # incompressible
        r = api_upload(srv.url, token, big)
        assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["error"]

        body = httpx.Request("POST", "/", files={"file": ("p.zip", big)}, data={"size": "28", "model_name": "m"})
        r = httpx.post(srv.url + "/api/submissions", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": body.headers["content-type"]},
                       content=iter([body.read()]))
        assert r.status_code == 413
        assert _rows(srv.db, "select count(*) from submissions where not is_baseline") == [(0,)]
