"""``fmeval submit``, ``fmeval serve``'s start-up checks and ``fmeval server hide``, as typed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import run
from server_helpers import SHARED, THREE, Browserless, api_upload, csv_bytes, noisy_scores, require_server_extra, running

pytestmark = pytest.mark.slow


def test_submit_scored_runs_lands_with_the_numbers_fmeval_score_gives(capsys, tmp_path, monkeypatch):
    """Each dataset scored by ``fmeval score`` (a run folder with predictions.csv), then the reports folder
    submitted: the server's ACC, AUC and balanced ACC equal the reports' (kappa too on binary tasks; on
    RetinaMNIST the server's is the thesis's unweighted kappa, the report's the quadratic one)."""
    require_server_extra()
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(SHARED))
    reports = tmp_path / "reports"
    for flag in THREE:
        path = tmp_path / f"{flag}.csv"
        path.write_bytes(csv_bytes(noisy_scores(flag, 21)))
        code, _, err = run(capsys, "score", str(path), "--dataset", flag, "--size", "28", "--bootstrap", "0",
                           "--reports-dir", str(reports))
        assert code == 0, err
    with running(tmp_path, "--bootstrap", "0") as srv:
        token = Browserless(srv.url, "Lima").token()
        code, out, err = run(capsys, "submit", str(reports), "--server", srv.url, "--token", token,
                             "--model-name", "scored-runs")
        assert code == 0, err
        assert "3 datasets at 28 px, complete" in out
        sid = int(out.split("submission ", 1)[1].split(":", 1)[0])
        import httpx
        got = {s["dataset"]: s for s in httpx.get(f"{srv.url}/api/submissions/{sid}").json()["scores"]}
        board = httpx.get(srv.url + "/api/leaderboard", params={"metric": "auc"}).json()
        assert sid in [r["id"] for r in board["rows"]]
    for results in reports.glob("*/results.json"):
        r = json.loads(results.read_text())
        flag, m = r["dataset"]["flag"], r["test"]["metrics"]
        for metric in ("acc", "auc", "balanced_acc"):
            assert got[flag][metric] == m[metric]["value"], (flag, metric)
        if flag != "retinamnist":
            assert got[flag]["kappa"] == pytest.approx(m["kappa"]["value"], abs=1e-12)
        else:
            assert got[flag]["kappa"] != pytest.approx(m["kappa"]["value"])


def test_submit_refuses_with_the_servers_message(capsys, tmp_path):
    require_server_extra()
    folder = tmp_path / "preds"
    folder.mkdir()
    (folder / "breastmnist.csv").write_bytes(csv_bytes(noisy_scores("breastmnist", 0)[:-3]))
    with running(tmp_path, "--bootstrap", "0") as srv:
        token = Browserless(srv.url, "Mike").token()
        code, out, err = run(capsys, "submit", str(folder), "--server", srv.url, "--token", token,
                             "--model-name", "x", "--size", "28")
        assert code == 2
        assert "the server refused the submission (400): breastmnist.csv: 153 rows, expected 156" in " ".join(err.split())
        code, _, err = run(capsys, "submit", str(folder), "--server", srv.url, "--token", "fmv_" + "0" * 43,
                           "--model-name", "x", "--size", "28")
        assert code == 2 and "(401)" in err
    code, _, err = run(capsys, "submit", str(tmp_path / "nowhere"), "--server", "http://127.0.0.1:9",
                       "--token", "fmv_" + "0" * 43, "--model-name", "x")
    assert code == 2 and "is neither a folder of predictions nor a study" in err and "Traceback" not in err


def test_serve_refuses_bad_settings_in_one_line(capsys, tmp_path, monkeypatch):
    require_server_extra()
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(tmp_path))  # no files here
    code, _, err = run(capsys, "serve", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}", "--datasets", "breastmnist")
    assert code == 2 and "no size has the test files" in err
    code, _, err = run(capsys, "serve", "--datasets", "breastmnst")
    assert code == 2 and "breastmnist" in err  # the close name
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(SHARED))
    code, _, err = run(capsys, "serve", "--datasets", "pneumoniamnist", "--sizes", "28", "--md5", "strict",
                       "--db", f"sqlite:///{tmp_path / 'y.sqlite3'}")
    assert code == 2 and "not the official" in err  # the shared PneumoniaMNIST's train split is reordered


def test_admin_hide_removes_a_submission_from_every_page(capsys, tmp_path):
    require_server_extra()
    from server_helpers import submission_zip

    with running(tmp_path, "--bootstrap", "0") as srv:
        token = Browserless(srv.url, "November").token()
        sid = api_upload(srv.url, token, submission_zip(seed=31), model="to-hide").json()["id"]
        code, out, err = run(capsys, "server", "hide", str(sid), "--db", srv.db)
        assert code == 0 and "hidden" in out, err
        import httpx
        assert sid not in [r["id"] for r in httpx.get(srv.url + "/api/leaderboard").json()["rows"]]
        assert httpx.get(f"{srv.url}/api/submissions/{sid}").status_code == 404
        assert "to-hide" not in httpx.get(srv.url + "/teams/November").text
        assert run(capsys, "server", "hide", "999", "--db", srv.db)[0] == 2


def test_twelve_dataset_board_preloads_the_published_baselines(tmp_path):
    """With the 12 2D datasets configured (the 9 not shared here generated in the MedMNIST layout, test
    labels only), team "baseline" holds Table 6 and ranks among the submissions."""
    require_server_extra()
    from fmeval.data import dataset_info
    from fmeval.server import build
    from fmeval.server.baselines import TABLE6
    from fmeval.server.service import TWELVE_2D, ServerSettings

    for flag in TWELVE_2D:
        target = tmp_path / f"{flag}.npz"
        if (SHARED / f"{flag}.npz").exists():
            target.symlink_to(SHARED / f"{flag}.npz")
            continue
        info = dataset_info(flag)
        rng = np.random.default_rng(0)
        n = 40
        labels = rng.integers(0, 2, size=(n, info.label_width)) if info.label_width > 1 else \
            rng.integers(0, info.n_classes, size=(n, 1))
        np.savez(target, test_labels=labels.astype(np.uint8))
    lb, _ = build(ServerSettings(db=f"sqlite:///{tmp_path / 'lb.sqlite3'}", sizes=[28], data_root=str(tmp_path)))
    with lb.sessions() as db:
        board = lb.ranking(db, 28, "auc", top=100)
        lb.preload_baselines(db)  # a restart loads nothing twice
        assert len(lb.ranking(db, 28, "auc", top=100)["rows"]) == len(TABLE6)
    assert [r["model"] for r in board["rows"]][:2] == ["VGG16", "DenseNet-121"]  # .9266, .9175
    assert {r["team"] for r in board["rows"]} == {"baseline"}
    assert board["rows"][0]["mean"] == 0.9266


def test_rescore_recomputes_scores_from_the_kept_predictions(capsys, tmp_path, monkeypatch):
    require_server_extra()
    import sqlite3

    from server_helpers import submission_zip

    with running(tmp_path, "--bootstrap", "0") as srv:
        token = Browserless(srv.url, "Oscar").token()
        sid = api_upload(srv.url, token, submission_zip(seed=41), model="r").json()["id"]
        import httpx
        before = httpx.get(f"{srv.url}/api/submissions/{sid}").json()
    path = srv.db.split("///", 1)[1]
    con = sqlite3.connect(path)
    con.execute("update scores set auc = 0.123, kappa = null")  # a stale metric
    con.execute("update submissions set means = '{}'")
    con.commit()
    con.close()
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(SHARED))
    code, out, err = run(capsys, "server", "rescore", "--db", srv.db, "--datasets", ",".join(THREE), "--sizes", "28",
                         "--bootstrap", "0")
    assert code == 0 and "rescored 1 submissions" in out, err
    with running(tmp_path, "--bootstrap", "0", db=srv.db) as srv2:
        import httpx
        after = httpx.get(f"{srv2.url}/api/submissions/{sid}").json()
    assert [{k: s[k] for k in ("dataset", "auc", "kappa", "sha256")} for s in after["scores"]] == \
        [{k: s[k] for k in ("dataset", "auc", "kappa", "sha256")} for s in before["scores"]]
    assert after["means"] == before["means"]
