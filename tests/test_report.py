"""Run folders, runs.csv, leaderboard, terminal summary and provenance."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fmeval import metrics as M
from fmeval import report as R
from fmeval.errors import ConfigError
from fmeval.provenance import collect_provenance, git_info

PROVENANCE = {"fmeval_version": "0.1.0", "git": {"commit": "a" * 40, "dirty": False}, "packages": {"numpy": "2"}}


def binary_report(quality: float, seed: int = 0, n_boot: int = 100) -> M.MetricsReport:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(234, int), np.ones(390, int)]
    p = np.clip(0.5 + quality * (y - 0.5) + rng.normal(0, 0.25, y.size), 0.01, 0.99)
    return M.compute_metrics(M.BINARY, y, np.stack([1 - p, p], 1), class_names=["normal", "pneumonia"],
                             n_boot=n_boot, seed=seed)


def make_result(quality: float = 0.6, *, mode: str = "knn", model: str = "dinov2-vits14",
                flag: str = "pneumoniamnist", seed: int = 0, **kw) -> R.RunResult:
    test = kw.pop("test", None) or binary_report(quality, seed)
    return R.RunResult(
        run_id=R.new_run_id(mode, model, flag, 28),
        mode=mode,
        model={"name": model, "family": "dinov2", "weights_id": f"{model}@abc123", "feature_dim": 384,
               "preprocess": {"input_size": 224, "mean": (0.5, 0.5, 0.5)}},
        dataset={"flag": flag, "size": 28, "task": M.BINARY, "md5": "0" * 32, "md5_verified": True,
                 "n_train": 4708, "n_val": 524, "n_test": 624, "path": Path("/data/x.npz")},
        geometry="resize",
        seed=seed,
        config={"k": 11, "metric": "euclidean", "lr": np.float32(1e-3)},
        test=test,
        provenance=PROVENANCE,
        wall_time_s=1.5,
        **kw,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_write_report_writes_all_files(tmp_path):
    curves = {"epoch": [1, 2, 3], "train_loss": [0.9, 0.6, 0.5], "val_auc": [0.7, 0.8, 0.82]}
    r = make_result(val=binary_report(0.6, seed=1, n_boot=0), extras={"curves": curves, "peak_mem_mb": 123.0})
    run_dir = R.write_report(r, tmp_path)
    assert run_dir == tmp_path / r.run_id
    names = {p.name for p in run_dir.iterdir()}
    assert {"results.json", "report.md", "confusion.png", "reliability.png", "curves.png"} <= names
    assert "![curves](curves.png)" in (run_dir / "report.md").read_text()
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    md = (run_dir / "report.md").read_text()
    assert "| metric | value | 95% CI | majority baseline |" in md
    assert re.search(r"\| acc ↑ \| 0\.\d{4} \| \[0\.\d{4}, 0\.\d{4}\] \| 0\.6250 \|", md)
    assert "Confusion matrix" in md and "| pneumonia |" in md and "Validation metrics" in md
    assert "`aaaaaaaaaaaa`" in md  # commit from the provenance block
    rows = read_csv(tmp_path / "runs.csv")
    assert len(rows) == 1 and rows[0]["run_id"] == r.run_id and rows[0]["baseline_acc"] == "0.625"
    assert float(rows[0]["auc_ci_low"]) <= float(rows[0]["auc"]) <= float(rows[0]["auc_ci_high"])
    assert no_temp_files(tmp_path)


def test_results_json_round_trips(tmp_path):
    r = make_result(extras={"per_k": {"1": 0.8, "11": 0.85}, "nan": float("nan")})
    run_dir = R.write_report(r, tmp_path, plots=False)
    assert not list(run_dir.glob("*.png"))
    text = (run_dir / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = R.RunResult.load(run_dir / "results.json")
    assert back.to_dict() == r.to_dict()
    assert back.test.metrics["auc"].value == pytest.approx(r.test.metrics["auc"].value)
    assert back.dataset["path"] == "/data/x.npz" and back.config["lr"] == pytest.approx(1e-3)
    assert back.schema_version == R.SCHEMA_VERSION


def test_newer_schema_is_refused():
    d = make_result().to_dict()
    d["schema_version"] = R.SCHEMA_VERSION + 1
    with pytest.raises(R.ReportError, match="newer"):
        R.RunResult.from_dict(d)


def test_two_reports_append_two_csv_rows_and_default_root(tmp_path):
    a, b = make_result(0.5), make_result(0.8, seed=1)
    R.write_report(a, plots=False)  # default root: $FMEVAL_REPORTS_DIR (set per test by conftest)
    R.write_report(b, plots=False)
    root = tmp_path / "reports"
    rows = read_csv(root / "runs.csv")
    assert [row["run_id"] for row in rows] == [a.run_id, b.run_id]
    assert (root / "runs.csv").read_text().count("run_id,") == 1  # header once
    R.write_report(a, plots=False)  # regenerating a run's report replaces its row
    assert [row["run_id"] for row in read_csv(root / "runs.csv")] == [a.run_id, b.run_id]
    assert no_temp_files(root)


def test_concurrent_appends_lose_no_row(tmp_path):
    results = [make_result(0.5 + 0.05 * i, seed=i) for i in range(6)]
    threads = [threading.Thread(target=R.append_run, args=(r, tmp_path)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(row["run_id"] for row in read_csv(tmp_path / "runs.csv")) == sorted(r.run_id for r in results)


@pytest.mark.parametrize("damage", [
    lambda t: t.replace("\n", "\r\n").encode("utf-8-sig"),  # a spreadsheet's BOM + CRLF
    lambda t: t.replace(",knn,", ',"knn,', 1).encode(),  # a stray quote swallowing rows
    lambda t: t.encode() + b"\xff\xfe broken\n",  # a non-UTF-8 byte
    lambda t: t.encode()[:-20],  # a torn last line
])
def test_damaged_runs_csv_is_rebuilt_from_results_json(tmp_path, damage):
    runs = [make_result(0.4 + 0.1 * i, seed=i) for i in range(3)]
    for r in runs[:2]:
        R.write_report(r, tmp_path, plots=False)
    path = tmp_path / "runs.csv"
    path.write_bytes(damage(path.read_text()))
    R.write_report(runs[2], tmp_path, plots=False)  # must neither crash nor trust the damaged file
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw
    rows = read_csv(path)
    assert sorted(row["run_id"] for row in rows) == sorted(r.run_id for r in runs)
    assert all(row["mode"] == "knn" for row in rows)


def test_runs_csv_is_appended_not_rewritten(tmp_path):
    """A healthy file only ever grows by one line per run (other rows are never re-serialised)."""
    R.write_report(make_result(0.5), tmp_path, plots=False)
    before = (tmp_path / "runs.csv").read_bytes()
    R.write_report(make_result(0.6, seed=1), tmp_path, plots=False)
    after = (tmp_path / "runs.csv").read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1


def test_leaderboard_sorts_filters_and_skips_broken(tmp_path):
    weak = make_result(0.2, model="weak")
    strong = make_result(0.9, model="strong")
    middle = make_result(0.5, model="middle", mode="linprobe")
    other = make_result(0.95, model="other-data", flag="breastmnist")
    for r in (weak, strong, middle, other):
        R.write_report(r, tmp_path, plots=False)
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")

    with pytest.warns(UserWarning, match="leaderboard skips"):
        board = R.leaderboard(tmp_path, dataset="pneumoniamnist")
    assert [row["model"] for row in board.rows] == ["strong", "middle", "weak"]
    assert len(board.warnings) == 1 and "broken-run" in board.warnings[0]
    aucs = [row["auc"] for row in board.rows]
    assert aucs == sorted(aucs, reverse=True)

    with pytest.warns(UserWarning):
        by_ece = R.leaderboard(tmp_path, dataset="pneumoniamnist", metric="ece")
    eces = [row["ece"] for row in by_ece.rows]
    assert eces == sorted(eces)  # lower is better
    with pytest.warns(UserWarning):
        assert [row["model"] for row in R.leaderboard(tmp_path, mode="linprobe").rows] == ["middle"]

    md = board.to_markdown()
    assert md.index("| strong |") < md.index("| middle |") < md.index("| weak |")
    parsed = list(csv.DictReader(io.StringIO(board.to_csv())))
    assert [row["model"] for row in parsed] == ["strong", "middle", "weak"]
    assert float(parsed[0]["auc_ci_low"]) < float(parsed[0]["auc"]) < float(parsed[0]["auc_ci_high"])


def test_write_leaderboard_files(tmp_path):
    for q in (0.3, 0.7):
        R.write_report(make_result(q), tmp_path / "runs", plots=False)
    md, csv_path = R.write_leaderboard(tmp_path / "runs", tmp_path / "out", metric="balanced_acc")
    assert md == tmp_path / "out" / "leaderboard.md" and csv_path.name == "leaderboard.csv"
    assert "Ranked by balanced_acc" in md.read_text()
    assert len(read_csv(csv_path)) == 2
    assert no_temp_files(tmp_path)


def test_leaderboard_rejects_unknown_metric(tmp_path):
    with pytest.raises(M.MetricInputError, match="Did you mean"):
        R.leaderboard(tmp_path, metric="aucc")


def test_multilabel_report_has_no_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.2).astype(int)
    s = np.full((200, 4), 0.1)  # collapsed: never predicts a positive label
    test = M.compute_metrics(M.MULTILABEL, y, s, class_names=list("abcd"), n_boot=20)
    run_dir = R.write_report(make_result(test=test, flag="chestmnist"), tmp_path)
    names = {p.name for p in run_dir.iterdir()}
    assert "confusion.png" not in names and "reliability.png" in names
    md = (run_dir / "report.md").read_text()
    assert "Per-label" in md and "collapsed" in md


def test_print_summary_shows_values_ci_baseline_and_warnings():
    y = np.r_[np.zeros(234, int), np.ones(390, int)]
    test = M.compute_metrics(M.BINARY, y, np.tile([0.2, 0.8], (624, 1)), class_names=["n", "p"], n_boot=20)
    console = Console(record=True, width=140)
    R.print_result(make_result(test=test), console)
    out = console.export_text()
    assert "majority" in out and "95% CI" in out and "0.6250" in out
    assert "collapsed to the majority class 'p'" in out


def test_new_run_id_is_unique_and_a_safe_folder_name():
    ids = {R.new_run_id("finetune-lora", "hf-hub:timm/vit base", "pneumoniamnist", 224) for _ in range(50)}
    assert len(ids) == 50
    for rid in ids:
        assert re.fullmatch(r"\d{8}T\d{6}Z_finetune-lora_hf-hub-timm-vit-base_pneumoniamnist-224_[0-9a-f]{6}", rid)


def test_unsafe_run_id_is_refused(tmp_path):
    r = make_result()
    r.run_id = "../escape"
    with pytest.raises(R.ReportError):
        R.write_report(r, tmp_path)


def test_provenance_is_cached_complete_and_hostname_free(tmp_path):
    import socket

    p = collect_provenance()
    assert p["fmeval_version"] and p["python"]
    assert {"torch", "scikit-learn", "numpy", "medmnist", "timm", "open_clip_torch", "peft"} <= set(p["packages"])
    assert p["packages"]["numpy"] == np.__version__
    assert set(p["git"]) == {"commit", "dirty"}
    if p["git"]["commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", p["git"]["commit"]) and isinstance(p["git"]["dirty"], bool)
    assert "cuda_available" in p["device"]
    assert socket.gethostname() not in json.dumps(p)
    p["python"] = "edited"
    assert collect_provenance()["python"] != "edited"  # callers get copies of the cached block
    assert git_info(tmp_path) == {"commit": None, "dirty": None}  # not a checkout: no crash


def test_writable_check_leaves_no_folder_behind(tmp_path):
    target = tmp_path / "a" / "b" / "reports"
    assert R.check_writable(target) == target
    assert not (tmp_path / "a").exists()


def test_writable_check_accepts_a_folder_another_run_makes_first(tmp_path, monkeypatch):
    """Two study workers check one new reports folder: the second mkdir finds it made."""
    target = tmp_path / "runs"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *a, **k):
        if self == target and not target.exists():
            real_mkdir(self)  # the other worker, a moment earlier
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert R.check_writable(target) == target
    assert target.is_dir()  # theirs: not removed by this check


def test_writable_check_retries_when_another_run_removes_the_folder(tmp_path, monkeypatch):
    import tempfile

    real_mkstemp, calls = tempfile.mkstemp, {"n": 0}

    def vanishing(*a, **k):  # the other worker's check removed the folder between mkdir and write
        calls["n"] += 1
        if calls["n"] <= 3:
            raise FileNotFoundError(2, "No such file or directory")
        return real_mkstemp(*a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", vanishing)
    assert R.check_writable(tmp_path / "runs") == tmp_path / "runs"
    assert calls["n"] == 4


@pytest.mark.parametrize("flock", ["works", "refused"])
def test_concurrent_writable_checks_of_one_new_folder_all_pass(tmp_path, monkeypatch, flock):
    """Study workers start together; without a folder lock (some NFS mounts) the retries do it."""
    if flock == "refused":
        import fcntl

        def refuse(*_):
            raise OSError(9, "Bad file descriptor")

        monkeypatch.setattr(fcntl, "flock", refuse)
    for round_ in range(30):
        target = tmp_path / f"r{round_}" / "studies" / "runs"
        barrier, errors = threading.Barrier(6), []

        def check():
            barrier.wait()
            try:
                R.check_writable(target)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=check) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


def test_writable_check_never_mistakes_a_folder_others_remove_and_remake_for_a_file(tmp_path, monkeypatch):
    """The flaky ``exists and is not a folder``: between two looks at one path, another check's
    clean-up removed the folder and a third check made it again. A path that is only ever a
    folder must never be reported as a file, however the looks interleave."""
    import os

    target = tmp_path / "r" / "studies" / "runs"
    target.mkdir(parents=True)
    real_stat, looks = os.stat, {"n": 0}

    def interleaved_stat(path, *a, **k):
        if os.fspath(path) != os.fspath(target):
            return real_stat(path, *a, **k)
        looks["n"] += 1
        if looks["n"] % 2 == 0:  # every second look: gone at that instant, back right after
            target.rmdir()
            try:
                return real_stat(path, *a, **k)
            finally:
                target.mkdir()
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", interleaved_stat)
    for _ in range(5):
        assert R.check_writable(target) == target
    assert looks["n"] >= 5


def test_writable_check_of_an_over_long_path_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot write to the reports folder .*: File name too long\."):
        R.check_writable(tmp_path / ("x" * 300) / "runs")


def test_writable_check_names_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="cannot be created: .*f is a file"):
        R.check_writable(tmp_path / "f" / "runs")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        R.check_writable(tmp_path / "f")


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_folder_appears_only_whole_and_killed_reports_are_swept(tmp_path, monkeypatch):
    from fmeval.io import owner_tag

    host = owner_tag().split("@", 1)[1]
    dead = tmp_path / f".20260101T000000Z_knn_x_y-28_abcdef.w{_dead_pid()}@{host}.partial"
    live = tmp_path / f".20260101T000000Z_knn_x_y-28_fedcba.{owner_tag()}.partial"
    elsewhere = tmp_path / f".20260101T000000Z_knn_x_y-28_aaaaaa.w{_dead_pid()}@another-node.partial"
    for d in (dead, live, elsewhere):
        d.mkdir()
        (d / "results.json").write_text("{}")
    seen = {}
    real_plots = R.writer.write_plots

    def spy(result, run_dir):  # what exists while the report is being written
        seen["named"] = (tmp_path / result.run_id).exists()
        seen["staging"] = run_dir.name
        return real_plots(result, run_dir)

    monkeypatch.setattr(R.writer, "write_plots", spy)
    r = make_result()
    run_dir = R.write_report(r, tmp_path)
    assert seen["named"] is False and seen["staging"].endswith(".partial")
    assert run_dir == tmp_path / r.run_id and (run_dir / "report.md").exists()
    assert not dead.exists()  # its writer is gone
    assert live.exists() and elsewhere.exists()  # a live writer's, and another machine's: not ours to judge
    assert {p.name for p in tmp_path.glob(".*.partial")} == {live.name, elsewhere.name}


def test_a_failing_plot_keeps_the_numbers_under_the_run_name(tmp_path, monkeypatch):
    def broken(*_):
        raise RuntimeError("plot backend broke")

    monkeypatch.setattr(R.writer, "write_plots", broken)
    r = make_result()
    with pytest.raises(RuntimeError):
        R.write_report(r, tmp_path)
    assert json.loads((tmp_path / r.run_id / "results.json").read_text())["run_id"] == r.run_id
    assert not list(tmp_path.glob(".*.partial"))


def test_half_written_run_folders_are_not_runs(tmp_path):
    whole = make_result(0.7)
    R.write_report(whole, tmp_path)
    half = make_result(0.5, seed=1)
    staging = tmp_path / f".{half.run_id}.w1@elsewhere.partial"  # being written, or killed mid-report
    staging.mkdir()
    (staging / "results.json").write_text(json.dumps(half.to_dict(), default=str))
    runs, skipped = R.load_runs(tmp_path)
    assert [r.run_id for r in runs] == [whole.run_id] and not skipped
    R.runs_index.rebuild(tmp_path)
    assert [row["run_id"] for row in read_csv(tmp_path / "runs.csv")] == [whole.run_id]
