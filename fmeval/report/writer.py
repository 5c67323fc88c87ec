"""The only writer of run reports: ``finish`` turns a RunResult into files.

``<root>/<run_id>/results.json`` first (if plotting fails, the numbers are
already safe), then the plots of the run and of its registered sections,
then ``report.md``, then one line in ``<root>/runs.csv``. Every file is
written atomically.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from fmeval.io import atomic_write_json, atomic_write_text
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
    """Write the run folder and its runs.csv line; return the run folder."""
    root = Path(root) if root is not None else reports_dir()
    if slug(result.run_id, 200) != result.run_id:
        raise ReportError(f"run_id {result.run_id!r} is not a safe folder name; use new_run_id()")
    run_dir = root / result.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RESULTS_FILE, result.to_dict())
    write_predictions_file(result, run_dir)
    try:
        images = write_plots(result, run_dir) if plots else []
    except ImportError as e:  # matplotlib is a dependency, but a report must not die for a plot
        warnings.warn(f"plots skipped: {e}", stacklevel=2)
        images = []
    atomic_write_text(run_dir / REPORT_FILE, render_markdown(result, images))
    append_run(result, root)
    result.report_dir = str(run_dir)
    return run_dir


def finish(result: RunResult, root: str | Path | None = None, *, write: bool = True,
           plots: bool = True) -> RunResult:
    """Finish a run: write its report (unless ``write=False``) and return it."""
    if write:
        write_report(result, root, plots=plots)
    return result


def check_writable(root: str | Path | None, what: str = "reports folder") -> Path:
    """Fail before any work when the reports folder (or another output folder) cannot be created or written.

    Permission bits do not answer this (root passes every ``os.access`` check,
    ``/proc`` refuses new folders whatever its mode), so it is tried for real:
    the missing folders are created, a file is written into the deepest one,
    and everything the check created is removed again (a run that then fails
    on bad input leaves no empty folder behind).
    """
    from fmeval.errors import ConfigError

    root = Path(root) if root is not None else reports_dir()
    missing: list[Path] = []  # deepest first
    probe = root
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        problem = "exists and is not a folder" if probe == root else f"cannot be created: {probe} is a file"
        raise ConfigError(f"{what} {root} {problem}.")
    for attempt in range(2):  # a concurrent check may remove a folder this one just saw
        try:
            _try_write(root, missing)
            return root
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not attempt:
                continue
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot write to the {what} {root}: {reason}.") from None
    return root


def _try_write(root: Path, missing: list[Path]) -> None:
    import os
    import tempfile

    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
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
