"""``runs.csv``: one appended line per run, never trusted over ``results.json``.

Each run appends exactly one line under a lock; it never re-reads and
rewrites the rows of other runs (a stray quote or a spreadsheet's BOM + CRLF
once swallowed rows that way). Before appending, the file is checked: if it
is not exactly what fmeval writes (UTF-8, no BOM, LF, the current header,
well-formed rows) or already holds the run, it is rebuilt from the
``results.json`` files, which are the source of truth.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from fmeval.io import atomic_write_text, file_lock
from fmeval.report.fmt import csv_num
from fmeval.report.schema import ReportError, RunResult, run_files

RUNS_CSV = "runs.csv"
_RUNS_LOCK = ".runs.csv.lock"  # a separate file: runs.csv itself may be replaced
METRIC_COLUMNS = ("acc", "balanced_acc", "auc", "f1_macro", "kappa", "ece")
COLUMNS = (
    "run_id", "created", "mode", "model", "weights_id", "dataset", "size", "geometry", "input_size",
    "precision", "protocol", "deviations", "seed", "n_test", "limit",
    *[f"{m}{s}" for m in METRIC_COLUMNS for s in ("", "_ci_low", "_ci_high")],
    "baseline_acc", "n_warnings", "config_hash",
)


def run_row(r: RunResult) -> list[str]:
    vals: dict[str, str] = {
        "run_id": r.run_id, "created": r.created, "mode": r.mode, "model": r.model_name,
        "weights_id": str(r.model.get("weights_id", "")), "dataset": r.dataset_flag,
        "size": str(r.dataset.get("size", "")), "geometry": r.geometry,
        "input_size": str((r.transform or {}).get("input_size", "")), "precision": r.precision,
        "protocol": str((r.protocol or {}).get("name", "")), "deviations": ";".join(r.deviations),
        "seed": str(r.seed), "n_test": str(r.test.n), "limit": str(r.dataset.get("limit") or ""),
        "baseline_acc": csv_num(r.test.baseline.get("acc")), "n_warnings": str(len(r.all_warnings())),
        "config_hash": r.config_hash,
    }
    for m in METRIC_COLUMNS:
        mv = r.test.metrics.get(m)
        vals[m] = csv_num(mv.value) if mv else ""
        vals[f"{m}_ci_low"] = csv_num(mv.ci_low) if mv else ""
        vals[f"{m}_ci_high"] = csv_num(mv.ci_high) if mv else ""
    return [vals[c] for c in COLUMNS]


def _line(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _healthy_ids(path: Path) -> set[str] | None:
    """Run ids of a well-formed runs.csv, or None when it must be rebuilt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    if raw.startswith(b"\xef\xbb\xbf") or b"\r" in raw or (raw and not raw.endswith(b"\n")):
        return None
    try:
        text = raw.decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error):
        return None
    if not rows or tuple(rows[0]) != COLUMNS or any(len(r) != len(COLUMNS) for r in rows[1:]):
        return None
    if text.count("\n") != len(rows):  # a quoted field spanning lines: not ours
        return None
    return {r[0] for r in rows[1:]}


def rebuild(root: Path) -> Path:
    """Rewrite ``root/runs.csv`` from every ``root/*/results.json`` (skipping unreadable ones)."""
    rows = []
    for res in run_files(root):
        try:
            rows.append(run_row(RunResult.load(res)))
        except ReportError as e:
            warnings.warn(f"runs.csv skips {res}: {e}", stacklevel=2)
    rows.sort(key=lambda r: (r[1], r[0]))
    path = root / RUNS_CSV
    atomic_write_text(path, _line(list(COLUMNS)) + "".join(_line(r) for r in rows))
    return path


def append_run(r: RunResult, root: Path) -> Path:
    """Add the run's line to ``root/runs.csv`` (rebuilding a damaged or stale file)."""
    path = root / RUNS_CSV
    with file_lock(root / _RUNS_LOCK):
        ids = _healthy_ids(path)
        if ids is None or r.run_id in ids:
            return rebuild(root)
        with open(path, "a", encoding="utf-8", newline="") as f:
            if not ids and f.tell() == 0:
                f.write(_line(list(COLUMNS)))
            f.write(_line(run_row(r)))
            f.flush()
    return path
