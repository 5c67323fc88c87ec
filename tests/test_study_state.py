"""Study state that survives the filesystem: moved, copied or damaged study folders (issue 26)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fmeval.data.synthetic import write_synthetic
from fmeval.studies.finish import finished_runs
from fmeval.studies.plan import plan_study, read_state
from fmeval.studies.spec import load_study


def _study(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    spec = {
        "name": "tiny",
        "settings": {"tiny": True, "weights_seed": 0, "n_boot": 20, "data_root": str(data)},
        "axes": {"models": ["vit-s16"], "datasets": ["pneumoniamnist"], "sizes": [28],
                 "modes": ["knn", "linprobe"], "seeds": [0, 1]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    write_synthetic(data, "pneumoniamnist", 28, n=(60, 30, 30))
    return path


def _plan(path: Path, reports: Path):
    spec, digest = load_study(path)
    return plan_study(spec, digest, reports_root=reports)


def _cli(capsys, *args) -> tuple[int, str]:
    from fmeval.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def finished(tmp_path, monkeypatch, capsys):
    """A 4-cell study run from ``tmp_path/a`` with a relative ``--reports-dir reports``."""
    path = _study(tmp_path)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    code, out = _cli(capsys, "study", "run", path, "--reports-dir", "reports")
    assert code == 0, out
    return path, tmp_path / "a" / "reports"


def test_cell_state_records_its_run_folder_relative_to_the_study_folder(finished):
    path, reports = finished
    plan = _plan(path, reports)
    for cell in plan.cells:
        raw = json.loads((plan.state_dir / f"{cell.id}.json").read_text())
        assert raw["report_dir"] == f"runs/{raw['run_id']}"


def test_study_resumed_from_another_folder_after_a_move_reads_every_run(finished, tmp_path, monkeypatch, capsys):
    path, reports = finished
    moved = tmp_path / "elsewhere" / "reports"
    moved.parent.mkdir()
    shutil.move(str(reports), str(moved))
    monkeypatch.chdir(tmp_path)
    code, out = _cli(capsys, "study", "report", path, "--reports-dir", moved)
    assert code == 0, out
    assert "4 done, 0 failed, 0 left" in _flat(out)
    assert "leaderboard: 4 runs read of 4 cells done (4 cells in the study)" in _flat(out)
    runs, problems = finished_runs(_plan(path, moved))
    assert len(runs) == 4 and not problems
    assert all(Path(r.report_dir).is_relative_to(moved) for r in runs)


def test_a_copied_study_folder_reads_its_own_runs_not_the_originals(tmp_path, monkeypatch, capsys):
    path = _study(tmp_path)
    original = tmp_path / "orig"
    code, out = _cli(capsys, "study", "run", path, "--reports-dir", original)  # absolute
    assert code == 0, out
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    for run in (original / "studies" / "tiny" / "runs").iterdir():  # the original is edited afterwards
        if run.is_dir():
            res = json.loads((run / "results.json").read_text())
            res["model"]["name"] = "tampered"
            (run / "results.json").write_text(json.dumps(res))
    runs, problems = finished_runs(_plan(path, copy))
    assert len(runs) == 4 and not problems
    assert {r.model["name"] for r in runs} == {"vit-s16"}
    assert all(Path(r.report_dir).is_relative_to(copy) for r in runs)


def test_a_deleted_run_folder_makes_its_cell_left_again_and_the_run_redoes_it(finished, capsys):
    path, reports = finished
    plan = _plan(path, reports)
    victim = plan.cells[1]
    run_dir = reports / "studies" / "tiny" / "runs" / read_state(plan.state_dir, victim)["run_id"]
    shutil.rmtree(run_dir)
    code, out = _cli(capsys, "study", "plan", path, "--reports-dir", reports)
    assert code == 0, out
    flat = _flat(out)
    assert "3 done, 0 failed, 1 left" in flat
    assert flat.count("is missing") == 1 and victim.label() in flat
    code, out = _cli(capsys, "study", "run", path, "--reports-dir", reports)
    assert code == 0, out
    flat = _flat(out)
    assert "4 done, 0 failed, 0 left" in flat
    assert "leaderboard: 4 runs read of 4 cells done (4 cells in the study)" in flat
    runs, problems = finished_runs(_plan(path, reports))
    assert len(runs) == 4 and not problems
    assert len({(r.model["name"], r.mode, r.seed) for r in runs}) == 4


def _damage(kind: str, state: Path, lock: Path) -> None:
    if kind == "state is a folder":
        state.unlink()
        (state / "x").mkdir(parents=True)
    elif kind == "no status":
        raw = json.loads(state.read_text())
        state.write_text(json.dumps({k: v for k, v in raw.items() if k != "status"}))
    elif kind == "no report_dir":
        raw = json.loads(state.read_text())
        state.write_text(json.dumps({k: v for k, v in raw.items() if k not in ("report_dir", "run_id")}))
    elif kind == "not json":
        state.write_bytes(b"\xff\xfe{")
    elif kind == "lock is a folder":
        state.unlink()
        if lock.exists():
            lock.unlink()
        lock.mkdir()


@pytest.mark.parametrize("kind", ["state is a folder", "no status", "no report_dir", "not json",
                                  "lock is a folder"])
def test_a_damaged_cell_record_is_one_warning_and_the_cell_runs_again(finished, capsys, kind):
    path, reports = finished
    plan = _plan(path, reports)
    victim = plan.cells[2]
    _damage(kind, plan.state_dir / f"{victim.id}.json", plan.state_dir / f"{victim.id}.lock")
    code, out = _cli(capsys, "study", "run", path, "--reports-dir", reports)
    assert code == 0, out
    flat = _flat(out)
    assert "Traceback" not in out
    if kind != "lock is a folder":  # a missing record is simply a cell left: nothing to warn about
        assert flat.count("warning:") == 1 and victim.label() in flat, out
    assert "4 done, 0 failed, 0 left" in flat
    assert "leaderboard: 4 runs read of 4 cells done (4 cells in the study)" in flat
    st = read_state(plan.state_dir, victim)
    assert st["status"] == "done" and st["attempts"] == 1


def test_a_cell_held_by_a_live_owner_is_waited_for_not_skipped(tmp_path):
    """A second `study run` meets a cell another live process holds: it waits for the lock (never
    reports that cell as done-elsewhere and moves on); a dead owner's lock is free at once."""
    import threading
    import time

    from fmeval.studies.executors import claim, run_cell

    plan = _plan(_study(tmp_path), tmp_path / "reports")
    cell = plan.cells[0]
    result: dict[str, str] = {}
    with claim(plan.state_dir, cell) as mine:  # the live owner
        assert mine
        t = threading.Thread(target=lambda: result.setdefault("status", run_cell(plan.state_dir, cell)))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not result  # waiting, not skipped
    t.join(120)
    assert result["status"] == "done" and read_state(plan.state_dir, cell)["status"] == "done"
