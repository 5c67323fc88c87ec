"""Experiment tracking (issue 24): ``--track wandb|mlflow|tensorboard``.

Each tracker runs in its local mode and is read back with its own reader -
MLflow's ``MlflowClient`` on the SQLite store, ``wandb leet inspect`` on the
offline run, TensorBoard's ``EventAccumulator`` on the event files - and what
it holds is compared with the run's ``results.json``. A tracker that raises
never fails or changes a run: one warning line, the same results.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import require_extra, run

from fmeval.data.synthetic import write_synthetic
from fmeval.errors import ConfigError
from fmeval.tracking import TRACKERS, FanOut, TrackerContext, final_metrics, parse_names, step_callbacks
from fmeval.tracking.base import TrackerKind

MODEL = ("--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist", "--data-root", "data", "--bootstrap", "20")
LORA = ("finetune", "--lora", *MODEL, "--epochs", "2", "--train-batch-size", "32", "--patience", "0")
LINPROBE = ("linprobe", *MODEL, "--epochs", "5", "--lr", "0.01,0.1", "--wd", "0")
EXTRA_INSTALL = {"mlflow": "pip install 'fmeval[track-mlflow]'", "wandb": "pip install 'fmeval[track-wandb]'",
                 "tensorboard": "pip install 'fmeval[track-tensorboard]'"}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A working directory with synthetic PneumoniaMNIST under ./data; trackers' own variables unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMEVAL_DATA_ROOT", raising=False)
    monkeypatch.delenv("FMEVAL_TRACK", raising=False)
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):  # wandb's own logs and staging: not ~
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(64, 24, 24))
    return tmp_path


def the_results(work: Path) -> dict:
    (path,) = (work / "reports").glob("*/results.json")
    return json.loads(path.read_text())


def comparable(results: dict) -> dict:
    """results.json less what differs between two runs of the same config: id, time stamps, timings."""
    d = json.loads(json.dumps(results))
    for key in ("run_id", "created", "wall_time_s"):
        d.pop(key)
    training = d["extras"].get("training")
    if training:
        for key in ("train_time_s", "time_per_epoch_s", "epoch_times_s", "adapter_path", "peak_memory"):
            training.pop(key, None)
    return d


def untracked_results(work: Path, capsys, monkeypatch, argv) -> dict:
    """The run without tracking; its reports folder is then moved aside and the feature cache
    switched, so the tracked run that follows does the same work into the same (empty) folder."""
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    results = the_results(work)
    (work / "reports").rename(work / "plain")
    for folder in ("adapters",):
        if (work / folder).exists():
            (work / folder).rename(work / f"plain-{folder}")
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(work / "cache2"))
    return results


def tracked_results(work: Path, capsys, monkeypatch, argv, tracker: str) -> dict:
    """``argv`` run untracked, then with ``--track tracker``: the tracked run's results.json, after
    checking that it ran without a tracking warning and that the tracker changed nothing."""
    plain = untracked_results(work, capsys, monkeypatch, argv)
    code, _, err = run(capsys, *argv, "--track", tracker)
    assert code == 0 and "warning: tracking" not in err, err
    results = the_results(work)
    assert comparable(results) == comparable(plain)  # the tracker changed nothing
    return results


def mlflow_runs(uri: str, experiment: str) -> tuple:
    """(client, runs of ``experiment``) read back from the MLflow store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def tensorboard_events(work: Path, run_id: str):
    """The TensorBoard events of run ``run_id`` (every scalar and tensor kept), loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(work / "reports" / "tracking" / "tensorboard" / "fmeval" / run_id),
                          size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def assert_final_metrics(logged: dict, results: dict) -> dict:
    """The tracker logged exactly results.json's final numbers (see ``final_metrics``); returns them."""
    final = final_metrics(results)
    assert {k: v for k, v in logged.items() if k in final} == final
    return final


# -- the fan-out: a tracker that fails is one warning line and is not called again ------------------
class Recorder:
    def __init__(self, ctx: TrackerContext, fail: str = "") -> None:
        self.calls: list[str] = []
        self.fail = fail
        RECORDERS.append(self)

    def _do(self, what: str) -> None:
        self.calls.append(what)
        if self.fail in (what, "all"):
            raise RuntimeError(f"tracker down in {what}")

    def start(self, params):
        self._do("start")

    def log(self, step, metrics):
        self._do("log")

    def finish(self, metrics, artefacts, *, ok=True, run_id=None):
        self._do("finish")


RECORDERS: list[Recorder] = []


@pytest.fixture
def fake_trackers(monkeypatch):
    """Trackers 'ok' (records its calls), 'boom' (raises on every call) and 'midrun' (raises in log)."""
    from fmeval.registry import Entry

    RECORDERS.clear()
    for name, fail in (("ok", ""), ("boom", "all"), ("midrun", "log")):
        kind = TrackerKind(name, lambda ctx, f=fail: Recorder(ctx, f), (), f"track-{name}")
        monkeypatch.setitem(TRACKERS._entries, name, Entry(name, kind))
    return RECORDERS


def test_fan_out_turns_each_failure_into_one_warning_and_keeps_the_others(fake_trackers, tmp_path, capsys):
    fan = FanOut(["boom", "midrun", "ok"], TrackerContext(tmp_path, None, "r"))
    fan.start({"config": {}})
    for step in (1, 2, 3):
        fan.log(step, {"train/loss": 0.5, "nan": math.nan})
    fan.finish({"test/auc": 0.9}, [])
    boom, midrun, ok = fake_trackers
    assert boom.calls == ["start"] and midrun.calls == ["start", "log", "finish"][:2]
    assert ok.calls == ["start", "log", "log", "log", "finish"]
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("warning: tracking: ") for ln in lines), err
    assert "boom failed (start: RuntimeError: tracker down in start)" in lines[0]
    assert "midrun failed (log:" in lines[1]


def test_unknown_tracker_and_missing_extra_are_one_line(work, capsys, monkeypatch):
    code, _, err = run(capsys, *LINPROBE, "--track", "mlfow")
    assert code == 2 and err.strip().splitlines() == [
        "error: --track: unknown tracker 'mlfow'; known: mlflow, tensorboard, wandb (or none)."], err
    import importlib.util

    real = importlib.util.find_spec
    # mlflow missing, tensorboard present (faked where it is not installed: a bare machine)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else (real(name, *a) or
                                                                        (object() if name == "tensorboard" else None)))
    code, _, err = run(capsys, *LINPROBE, "--track", "tensorboard,mlflow")
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()  # a bare machine also lacks the extra's sqlalchemy and alembic
    assert len(lines) == 1 and lines[0].startswith("error: --track mlflow needs the track-mlflow extra (mlflow")
    assert lines[0].endswith("not installed): pip install 'fmeval[track-mlflow]'."), lines
    assert not (work / "reports").exists()  # refused before any work


@pytest.mark.parametrize("argv", [LINPROBE, LORA], ids=["linprobe", "finetune-lora"])
def test_a_failing_tracker_leaves_the_results_unchanged(work, capsys, fake_trackers, monkeypatch, argv):
    """The same run untracked and with trackers that raise (on every call; in the middle of training):
    results.json is identical apart from ids and times, and each failing tracker says so once."""
    plain = untracked_results(work, capsys, monkeypatch, argv)
    code, _, err = run(capsys, *argv, "--track", "boom,midrun,ok")
    assert code == 0, err
    tracked = the_results(work)
    assert comparable(tracked) == comparable(plain)
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: tracking")]
    assert len(warnings) == 2 and "boom failed (start" in warnings[0] and "midrun failed (log" in warnings[1]
    ok = fake_trackers[2]
    assert ok.calls[0] == "start" and ok.calls[-1] == "finish" and ok.calls.count("log") >= 5  # the loop fed it
    files = sorted(p.name for p in (work / "reports" / tracked["run_id"]).iterdir())
    assert {"results.json", "report.md", "predictions.csv"} <= set(files)


def test_step_callbacks_are_empty_outside_a_tracked_run():
    assert step_callbacks() == []


def test_parse_names(fake_trackers):
    assert parse_names("OK, ok,none,boom") == ("ok", "boom")
    assert parse_names("none") == () and parse_names(None) is None
    with pytest.raises(ConfigError, match="unknown tracker 'x'"):
        parse_names(["x"])


def test_final_metrics_are_the_numbers_of_results_json():
    results = {"test": {"metrics": {"auc": {"value": 0.75, "ci_low": 0.7, "ci_high": 0.8},
                                    "kappa": {"value": None, "ci_low": None, "ci_high": None}},
                        "baseline": {"auc": 0.5}},
               "val": {"metrics": {"auc": {"value": 0.6, "ci_low": 0.5, "ci_high": 0.7}}},
               "selection": {"k": 11, "rule": "cosine", "flag": True}}
    assert final_metrics(results) == {"test/auc": 0.75, "test/auc_ci_low": 0.7, "test/auc_ci_high": 0.8,
                                      "baseline/auc": 0.5, "val/auc": 0.6, "selection/k": 11.0}


# -- each tracker, local, read back with its own reader ---------------------------------------------
def test_finetune_lora_track_mlflow_reads_back_the_results(work, capsys, monkeypatch):
    require_extra("mlflow", "track-mlflow", EXTRA_INSTALL["mlflow"])
    results = tracked_results(work, capsys, monkeypatch, LORA, "mlflow")
    client, (r,) = mlflow_runs(f"sqlite:///{work / 'reports' / 'tracking' / 'mlflow.db'}", "fmeval")
    assert r.info.status == "FINISHED" and r.info.run_name == results["run_id"]
    assert r.data.tags["fmeval.run_id"] == results["run_id"]
    final = assert_final_metrics(r.data.metrics, results)  # exact: float64 in SQLite
    assert "test/auc_ci_low" in final and "test/auc_ci_high" in final
    curves = results["extras"]["curves"]
    epochs = client.get_metric_history(r.info.run_id, "train/loss")
    assert [m.value for m in sorted(epochs, key=lambda m: m.step)] == curves["train_loss"]
    assert [m.value for m in sorted(client.get_metric_history(r.info.run_id, "train/val_loss"),
                                    key=lambda m: m.step)] == curves["val_loss"]
    steps = client.get_metric_history(r.info.run_id, "train/step_loss")
    per_epoch = results["extras"]["training"]["steps_per_epoch"]
    assert sorted(m.step for m in steps) == list(range(1, 2 * per_epoch + 1))
    assert r.data.params["config.model"] == "vit-s16" and r.data.params["config.train.epochs"] == "2"
    assert r.data.params["config.mode"] == "finetune-lora" and "config.knn.ks" not in r.data.params
    arts = {f.path for f in client.list_artifacts(r.info.run_id, "report")}
    assert {"report/results.json", "report/report.md", "report/predictions.csv"} <= arts
    local = Path(client.download_artifacts(r.info.run_id, "report/results.json", str(work / "dl")))
    assert json.loads(local.read_text()) == results


def _wandb_inspect(folder: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *args, str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_finetune_lora_track_wandb_offline_reads_back_the_results(work, capsys, monkeypatch):
    require_extra("wandb", "track-wandb", EXTRA_INSTALL["wandb"])
    results = tracked_results(work, capsys, monkeypatch, LORA, "wandb")
    (folder,) = (work / "reports" / "tracking" / "wandb").glob("offline-run-*")  # offline: nothing uploaded
    summary = json.loads(_wandb_inspect(folder, "--summary", "--json"))
    assert summary["state"] == "finished" and summary["name"] == results["run_id"]
    assert summary["project"] == "fmeval"
    assert_final_metrics(summary["summary"], results)
    assert summary["config"]["config"]["model"] == "vit-s16" and summary["config"]["fmeval_run_id"] == results["run_id"]
    records = [json.loads(line) for line in _wandb_inspect(folder, "--json").splitlines() if line.strip()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    epochs = [h["train/loss"] for h in history if "train/loss" in h]
    assert epochs == results["extras"]["curves"]["train_loss"]
    (art,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert art["type"] == "fmeval-report"
    assert {"results.json", "report.md"} <= {c["path"] for c in art["manifest"]["contents"]}


def test_finetune_lora_track_tensorboard_reads_back_the_results(work, capsys):
    require_extra("tensorboard", "track-tensorboard", EXTRA_INSTALL["tensorboard"])
    code, _, err = run(capsys, *LORA, "--track", "tensorboard")
    assert code == 0 and "warning: tracking" not in err, err
    results = the_results(work)
    ea = tensorboard_events(work, results["run_id"])
    final = final_metrics(results)
    got = {tag: ea.Scalars(tag)[-1].value for tag in ea.Tags()["scalars"] if tag in final}
    assert got == {k: float(np.float32(v)) for k, v in final.items()}  # TensorBoard keeps float32
    epochs = [e.value for e in ea.Scalars("train/loss")]
    assert epochs == [float(np.float32(v)) for v in results["extras"]["curves"]["train_loss"]]
    texts = ea.Tags()["tensors"]
    assert {"fmeval/params/text_summary", "fmeval/report/text_summary"} <= set(texts)
    report = ea.Tensors("fmeval/report/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert report == (work / "reports" / results["run_id"] / "report.md").read_text()


def test_linprobe_epochs_reach_the_tracker_and_a_tracked_run_is_unchanged(work, capsys, monkeypatch):
    """A real tracker changes nothing either (no RNG draw, no extra work in the result)."""
    require_extra("tensorboard", "track-tensorboard", EXTRA_INSTALL["tensorboard"])
    results = tracked_results(work, capsys, monkeypatch, LINPROBE, "tensorboard")
    ea = tensorboard_events(work, results["run_id"])
    best = [e.value for e in ea.Scalars("probe/best_val_loss")]
    assert len(best) == results["extras"]["epochs_run"] and best == sorted(best, reverse=True)
    assert best[-1] == pytest.approx(results["selection"]["val_loss"], rel=1e-6)


def test_user_setting_turns_tracking_on_and_track_none_off(work, capsys):
    require_extra("tensorboard", "track-tensorboard", EXTRA_INSTALL["tensorboard"])
    (work / "fmeval.toml").write_text('track = "tensorboard"\n')
    code, _, err = run(capsys, "knn", *MODEL)
    assert code == 0, err
    runs = list((work / "reports" / "tracking" / "tensorboard" / "fmeval").iterdir())
    assert [p.name for p in runs] == [the_results(work)["run_id"]]
    code, _, err = run(capsys, "knn", *MODEL, "--track", "none", "--reports-dir", "untracked")
    assert code == 0, err
    assert not (work / "untracked" / "tracking").exists()


# -- a study: its cells grouped under its name ---------------------------------------------------------
def test_study_track_groups_its_runs_under_the_study(work, capsys):
    """``track:`` in the study file: every cell is an MLflow run of the experiment named after the
    study and a TensorBoard folder under it; the study's hash (its cells' keys) does not change."""
    require_extra("mlflow", "track-mlflow", EXTRA_INSTALL["mlflow"])
    require_extra("tensorboard", "track-tensorboard", EXTRA_INSTALL["tensorboard"])
    import yaml

    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import load_study

    spec = {"name": "tracked", "settings": {"tiny": True, "n_boot": 20, "data_root": str(work / "data")},
            "axes": {"models": ["vit-s16"], "datasets": ["pneumoniamnist"], "modes": ["knn"], "seeds": [0, 1]}}
    untracked = work / "untracked.yaml"
    untracked.write_text(yaml.safe_dump(spec))
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump({**spec, "track": ["mlflow", "tensorboard"]}))
    assert load_study(path)[1] == load_study(untracked)[1]
    code, _, err = run(capsys, "study", "run", str(path), "--reports-dir", "reports")
    assert code == 0 and "warning: tracking" not in err, err
    plan = plan_study(*load_study(path), reports_root=work / "reports")
    run_ids = sorted(plan.state(c)["run_id"] for c in plan.cells)
    assert len(run_ids) == 2
    root = work / "reports" / "studies" / "tracked" / "tracking"
    _, runs = mlflow_runs(f"sqlite:///{root / 'mlflow.db'}", "tracked")
    assert sorted(r.data.tags["fmeval.run_id"] for r in runs) == run_ids
    for r in runs:
        (res,) = (work / "reports" / "studies" / "tracked" / "runs").glob(f"{r.data.tags['fmeval.run_id']}/results.json")
        assert_final_metrics(r.data.metrics, json.loads(res.read_text()))
    assert sorted(p.name for p in (root / "tensorboard" / "tracked").iterdir()) == run_ids
    code, _, err = run(capsys, "study", "run", str(path), "--reports-dir", "reports", "--track", "mlfow")
    assert code == 2 and "unknown tracker 'mlfow'" in err


def _mlflow_worker(root: str, i: int) -> str:
    from fmeval.tracking.backends import MlflowTracker

    t = MlflowTracker(TrackerContext(Path(root), "parallel", f"run{i}"))
    t.start({"config": {"seed": i}})
    for step in range(1, 11):
        t.log(step, {"train/loss": 1.0 / step})
    t.finish({"test/auc": 0.5 + i / 10}, [], run_id=f"cell{i}")
    return "ok"


def test_parallel_study_workers_share_one_mlflow_store(tmp_path):
    """Two processes open a fresh local store at once (a study with --jobs): without the store's lock
    one of them dies creating MLflow's tables ("duplicate column name"); with it every run lands."""
    require_extra("mlflow", "track-mlflow", EXTRA_INSTALL["mlflow"])
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_mlflow_worker, [(str(tmp_path), i) for i in range(2)]) == ["ok"] * 2
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "parallel")
    assert sorted((r.data.tags["fmeval.run_id"], r.data.metrics["test/auc"]) for r in runs) == [
        ("cell0", 0.5), ("cell1", 0.6)]
    assert all(len(client.get_metric_history(r.info.run_id, "train/loss")) == 10 for r in runs)


def test_run_params_carry_the_protocol_and_its_deviations():
    from fmeval.tracking import flat_params, run_params

    protocol = {"name": "medmnist-plus", "sha256": "ab", "deviations": ["train.epochs"]}
    params = run_params({"model": "vit-s16", "train": {"epochs": 2, "milestones": [5, 8]}}, protocol)
    assert params["protocol"]["name"] == "medmnist-plus" and params["deviations"] == ["train.epochs"]
    assert flat_params(params) == {"config.model": "vit-s16", "config.train.epochs": "2",
                                   "config.train.milestones": "5,8", "protocol.name": "medmnist-plus",
                                   "protocol.sha256": "ab", "protocol.deviations": "train.epochs",
                                   "deviations": "train.epochs"}
    assert run_params({"model": "m", "deviations": []}, None) == {"config": {"model": "m", "deviations": []},
                                                                  "deviations": []}


def test_mlflow_tracking_uri_set_by_the_user_wins(work, capsys, monkeypatch):
    require_extra("mlflow", "track-mlflow", EXTRA_INSTALL["mlflow"])
    uri = f"sqlite:///{work / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = run(capsys, "knn", *MODEL, "--track", "mlflow")
    assert code == 0 and "warning: tracking" not in err, err
    assert not (work / "reports" / "tracking" / "mlflow.db").exists()
    _, (r,) = mlflow_runs(uri, "fmeval")
    results = the_results(work)
    assert r.data.tags["fmeval.run_id"] == results["run_id"]
    assert "selection/k" in assert_final_metrics(r.data.metrics, results)
