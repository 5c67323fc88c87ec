"""The end of a study: the finished cells' runs, handed to the study outputs."""

from __future__ import annotations

from pathlib import Path

from fmeval.report import RunResult
from fmeval.report.schema import RESULTS_FILE, ReportError
from fmeval.studies.plan import Plan


def finished_runs(plan: Plan) -> tuple[list[RunResult], list[str]]:
    """The runs of the cells marked done (a killed cell's partial folder is never read)."""
    runs, problems = [], []
    for cell in plan.cells:
        st = plan.state(cell)
        if not st or st.get("status") != "done":
            continue
        path = Path(st["run_dir"]) / RESULTS_FILE  # inside the study folder (see studies.state)
        try:
            r = RunResult.load(path)
        except ReportError as exc:
            problems.append(f"{cell.label()}: {exc}")
            continue
        r.extras.setdefault("study", {"name": plan.spec.name, "cell": cell.id, "axes": cell.axes})
        runs.append(r)
    return runs, problems


def runs_read_line(plan: Plan, runs: list[RunResult]) -> str:
    """How many runs a leaderboard was built from, of how many cells are done (and in the study):
    a leaderboard over fewer runs than finished cells says so instead of passing for complete."""
    done = plan.counts()["done"]
    return f"leaderboard: {len(runs)} runs read of {done} cells done ({len(plan.cells)} cells in the study)"


def finish_study(plan: Plan, *, data_root: str | None = None,
                 runs: list[RunResult] | None = None) -> dict[str, Path]:
    """Write the study's leaderboards, plots, paired comparisons and HTML page."""
    from fmeval.studies.outputs import write_study_outputs

    if runs is None:
        runs, _ = finished_runs(plan)
    return write_study_outputs(plan.spec.name, runs, plan.root, summary_datasets=plan.spec.summary_datasets,
                               data_root=data_root)
