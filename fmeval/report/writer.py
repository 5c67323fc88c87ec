"""The only writer of run reports: ``finish`` turns a RunResult into files.

``<root>/<run_id>/results.json`` first (if plotting fails, the numbers are
already safe), then the plots of the run and of its registered sections,
then ``report.md``, then one line in ``<root>/runs.csv``. Every file is
written atomically, and a new run folder appears under its name only when
it is complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path
from typing import Iterator

from fmeval.io import atomic_write_json, atomic_write_text, owner_tag, sweep_leftovers
from fmeval.report.markdown import render_markdown
from fmeval.report.runs_index import append_run
from fmeval.report.schema import RESULTS_FILE, ReportError, RunResult, reports_dir, slug
from fmeval.report.sections import SECTIONS

REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions.csv"


def write_predictions_file(result: RunResult, run_dir: Path) -> None:
    """The run's test scores as ``predictions.csv`` (index + one column per class)."""
    if result.test_scores is None:
        return
    from fmeval.predictions import write_predictions

    write_predictions(run_dir / PREDICTIONS_FILE, result.test_scores, list(result.test.class_names),
                      result.test_indices)


def write_plots(r: RunResult, run_dir: Path) -> list[str]:
    """Write the PNGs that apply to this run and return their file names."""
    from fmeval.report.plots import plot_confusion, plot_reliability

    written = []
    if r.test.confusion:
        plot_confusion(r.test, run_dir / "confusion.png")
        written.append("confusion.png")
    if r.test.reliability.get("count"):
        plot_reliability(r.test, run_dir / "reliability.png")
        written.append("reliability.png")
    for key, value in r.extras.items():
        if key in SECTIONS and SECTIONS.get(key).plot is not None:
            written += SECTIONS.get(key).plot(value, r, run_dir)
    return written


def write_report(result: RunResult, root: str | Path | None = None, *, plots: bool = True) -> Path:
    """Write the run folder and its runs.csv line; return the run folder.

    A new run folder is written under a hidden name that carries its writer
    (``.<run_id>.w<pid>@<host>.partial``) and renamed into place once
    ``report.md`` is there, so a run killed mid-report leaves no half run
    folder for a leaderboard to count, only a leftover that
    :func:`fmeval.io.sweep_leftovers` removes (a study does, when it starts).
    """
    root = Path(root) if root is not None else reports_dir()
    if slug(result.run_id, 200) != result.run_id:
        raise ReportError(f"run_id {result.run_id!r} is not a safe folder name; use new_run_id()")
    run_dir = root / result.run_id
    staging = run_dir if run_dir.exists() else root / f".{result.run_id}.{owner_tag()}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        _write_files(result, staging, plots)
    except OSError:  # a full disk: no half run folder stays behind for a leaderboard to trip on
        if staging != run_dir and not (staging / RESULTS_FILE).exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:  # the numbers are kept even when a plot fails
        if staging != run_dir and (staging / RESULTS_FILE).exists():
            os.replace(staging, run_dir)
    append_run(result, root)
    sweep_leftovers(root, recursive=False)  # an earlier run killed mid-report, in this folder
    result.report_dir = str(run_dir)
    return run_dir


def _write_files(result: RunResult, run_dir: Path, plots: bool) -> None:
    atomic_write_json(run_dir / RESULTS_FILE, result.to_dict())
    write_predictions_file(result, run_dir)
    try:
        images = write_plots(result, run_dir) if plots else []
    except ImportError as e:  # matplotlib is a dependency, but a report must not die for a plot
        warnings.warn(f"plots skipped: {e}", stacklevel=2)
        images = []
    atomic_write_text(run_dir / REPORT_FILE, render_markdown(result, images))


class ReportNotWritten(ReportError):
    """The run finished but its report could not be written (a full disk, say).

    Carries the result, so a command prints the metrics first and then this
    one line: the numbers a run computed are never lost to a failed write.
    """

    def __init__(self, result: RunResult, message: str) -> None:
        super().__init__(message)
        self.result = result


def finish(result: RunResult, root: str | Path | None = None, *, write: bool = True,
           plots: bool = True) -> RunResult:
    """Finish a run: write its report (unless ``write=False``) and return it."""
    if write:
        try:
            write_report(result, root, plots=plots)
        except OSError as exc:
            where = Path(root) if root is not None else reports_dir()
            reason = exc.strerror or type(exc).__name__
            raise ReportNotWritten(result, f"the report of run {result.run_id} could not be written to "
                                           f"{where}: {reason}; the metrics above are not saved.") from None
    return result


_ATTEMPTS = 20  # a concurrent check may remove a folder this one just saw: look again


def check_writable(root: str | Path | None, what: str = "reports folder") -> Path:
    """Fail before any work when the reports folder (or another output folder) cannot be created or written.

    Permission bits do not answer this (root passes every ``os.access`` check,
    ``/proc`` refuses new folders whatever its mode), so it is tried for real:
    the missing folders are created, a file is written into the deepest one,
    and everything the check created is removed again (a run that then fails
    on bad input leaves no empty folder behind).

    Study workers start together and check the same new folder, so the check
    holds a lock on the deepest folder that exists (checks of one folder take
    turns) and, where the filesystem refuses that lock (some NFS mounts),
    looks again after a short random wait when another check's clean-up
    removed a folder under it.
    """
    import random
    import time

    from fmeval.errors import ConfigError

    root = Path(root) if root is not None else reports_dir()
    for attempt in range(_ATTEMPTS):
        try:
            missing, existing, is_dir = _missing_folders(root)
            if not is_dir:
                problem = ("exists and is not a folder" if existing == root
                           else f"cannot be created: {existing} is a file")
                raise ConfigError(f"{what} {root} {problem}.")
            with _folder_lock(existing):
                _try_write(root, missing)
            return root
        except (FileNotFoundError, FileExistsError) as exc:
            if attempt + 1 == _ATTEMPTS:
                raise ConfigError(f"cannot write to the {what} {root}: {exc.strerror}.") from None
            time.sleep(random.uniform(0.001, 0.02))
        except OSError as exc:  # e.g. permission denied, a read-only disk, a name too long
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot write to the {what} {root}: {reason}.") from None
    raise ConfigError(f"cannot write to the {what} {root}: its parent folders keep changing.")


def _missing_folders(root: Path) -> tuple[list[Path], Path, bool]:
    """The folders to create (deepest first), the deepest path that exists, and whether it is a folder.

    Each path is looked at with ONE ``stat``: separate looks (``exists`` then
    ``is_dir``) race with other checks, whose clean-up may remove a folder
    between two looks and whose ``mkdir`` may make it again, so a path that is
    only ever a folder would read as "exists but is not a folder".
    """
    missing: list[Path] = []
    probe = root
    while True:
        try:
            mode = os.stat(probe).st_mode
        except (FileNotFoundError, NotADirectoryError):  # missing, or under a file: look higher up
            if probe.parent == probe:
                raise
            missing.append(probe)
            probe = probe.parent
            continue
        return missing, probe, stat.S_ISDIR(mode)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """``flock`` on the folder itself (nothing written there); no lock where the filesystem refuses one."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # e.g. NFS without flock on folders: the retries above do the job
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_write(root: Path, missing: list[Path]) -> None:
    import tempfile

    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # made by a check that had no lock (or by a run): theirs to keep
                if not d.is_dir():
                    raise
                continue
            created.append(d)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".fmeval-write-check-")
        os.close(fd)
        os.unlink(tmp)
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass  # another run put something there meanwhile: it is theirs now
