"""A study cell's record on disk: ``<study>/cells/<id>.json`` (and its ``.lock``).

The record is what tells a re-run which cells are finished, so it must stay
true when the study folder moves:

- the run folder is recorded *relative to the study folder* (``runs/<run_id>``),
  never to the directory ``study run`` was started in, and it is only ever
  looked for inside the study folder, so a moved study reads its runs and a
  copied one reads its own, never the original's;
- a cell marked done whose run folder is gone is *left* again (it runs again),
  and the reason is kept so the command can say so in one line;
- a damaged record (not JSON, a folder where the file should be, no
  ``status``, a done cell without its run) is a warning and the cell runs
  again; it never stops the study. What is in the way of a new record is moved
  aside (``*.damaged-<time>``), not deleted: it is not this code's to delete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from fmeval.io import atomic_write_json
from fmeval.report.schema import RESULTS_FILE

STATUSES = ("done", "failed")
RUNS_FOLDER = "runs"  # the cells' run folders, inside the study folder


def state_path(state_dir: Path, cell) -> Path:
    return state_dir / f"{cell.id}.json"


def lock_path(state_dir: Path, cell) -> Path:
    return state_dir / f"{cell.id}.lock"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_state(state_dir: Path, cell, notes: dict[str, str] | None = None) -> dict | None:
    """The cell's record when it stands, else None (the cell is to run).

    A done record gets ``run_dir``: its run folder, resolved inside the study
    folder (``state_dir.parent``). Why a record does not stand goes into
    ``notes[cell.id]`` (one line each) when the caller keeps notes.
    """
    path = state_path(state_dir, cell)

    def note(text: str) -> None:
        if notes is not None:
            notes[cell.id] = f"cell {cell.label()}: {text}"

    try:
        st = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        note(f"its state {path} cannot be read ({_reason(exc)}); the cell runs again")
        return None
    except ValueError:  # not UTF-8, not JSON
        note(f"its state {path} is damaged (not JSON); the cell runs again")
        return None
    if not isinstance(st, dict) or st.get("key") != cell.key or st.get("status") not in STATUSES:
        what = "another cell's" if isinstance(st, dict) and st.get("key") not in (None, cell.key) else "damaged"
        note(f"its state {path} is {what} (no valid key and status); the cell runs again")
        return None
    if st["status"] == "done":
        run_dir = run_dir_of_state(state_dir.parent, st)
        if run_dir is None:
            shown = st.get("report_dir") or st.get("run_id") or "?"
            note(f"its run folder {shown} is missing from {state_dir.parent}; the cell is left and runs again")
            return None
        st = {**st, "run_dir": str(run_dir)}
    return st


def _inside(rel: Any) -> PurePosixPath | None:
    """``rel`` as a relative path that stays inside the study folder, else None."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return None
    p = PurePosixPath(rel.replace(os.sep, "/"))
    return None if ".." in p.parts else p


def run_dir_of_state(study_root: Path, st: dict) -> Path | None:
    """The done cell's run folder inside ``study_root`` (holding its results), or None.

    Records written before run folders were relative name them from wherever
    the study was started; those are found by their run id under ``runs/``.
    """
    candidates = []
    if (rel := _inside(st.get("report_dir"))) is not None:
        candidates.append(study_root / rel)
    if (run_id := _inside(st.get("run_id"))) is not None and len(run_id.parts) == 1:
        candidates.append(study_root / RUNS_FOLDER / run_id)
    return next((c for c in candidates if (c / RESULTS_FILE).is_file()), None)


def relative_run_dir(study_root: Path, report_dir: str | Path) -> str:
    """How a record names a run folder: relative to the study folder, POSIX separators."""
    rel = os.path.relpath(os.path.abspath(report_dir), os.path.abspath(study_root))
    return PurePosixPath(*Path(rel).parts).as_posix()


def move_aside(path: Path) -> Path | None:
    """Rename what is in the way of a record (a folder, say) to ``<name>.damaged-<time>``."""
    if not (path.is_dir() and not path.is_symlink()):
        return None
    target = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
    os.replace(path, target)
    return target


def write_state(state_dir: Path, cell, **fields: Any) -> None:
    """Write the cell's record atomically (a damaged folder in its place is moved aside first)."""
    path = state_path(state_dir, cell)
    if "report_dir" in fields and fields["report_dir"]:
        fields["report_dir"] = relative_run_dir(state_dir.parent, fields["report_dir"])
    move_aside(path)
    atomic_write_json(path, {
        "key": cell.key, "axes": cell.axes, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
    })
