"""``fmeval study plan|run|report``: a benchmark grid from one YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import ReportsDir, app, console, user_defaults
from fmeval.settings import reports_root

study_app = typer.Typer(help="Studies: a grid of runs from one YAML file, resumable, local or on Slurm.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")

StudyFile = Annotated[str, typer.Argument(help="Study YAML (a path, or the name of a shipped study).")]


def _plan(file: str, reports_dir: Optional[Path]):

    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import load_study, resolve_study_path

    spec, digest = load_study(resolve_study_path(file))
    root = reports_dir or reports_root()
    return plan_study(spec, digest, reports_root=root, user=user_defaults())


def _say_notes(plan, said: set) -> None:
    """One warning line per cell whose record does not stand (run folder missing, damaged state)."""
    from fmeval.progress import warn

    for cell_id, text in list(plan.notes.items()):
        if cell_id not in said:
            said.add(cell_id)
            warn(text)


def _finish(plan) -> None:
    """Write the study outputs and print the leaderboards, saying how many runs they read."""
    from fmeval.studies.finish import finish_study, finished_runs, runs_read_line

    runs, problems = finished_runs(plan)
    for p in problems:
        console.print(f"not read: {p}", style="red", markup=False, highlight=False)
    for label, path in finish_study(plan, runs=runs).items():
        console.print(f"{label}: {path}", markup=False, highlight=False)
    print_leaderboards(plan, runs)
    console.print(runs_read_line(plan, runs), markup=False, highlight=False)


def _state_name(plan, cell) -> str:
    st = plan.state(cell)
    return "left" if st is None else st["status"]


@study_app.command("plan")
def study_plan(file: StudyFile, reports_dir: ReportsDir = None,
               cells: Annotated[bool, typer.Option("--cells/--no-cells", help="List every cell.")] = True) -> None:
    """The cells of a study, how many are done, and an estimate of the work left."""
    from fmeval.report import check_writable
    from fmeval.studies.plan import estimate_left

    plan = _plan(file, reports_dir)
    check_writable(plan.root, "study folder")
    if cells:
        from rich import box

        from fmeval.report.leaderboard import SHORT_MODES

        table = Table(title=escape(f"study {plan.spec.name}: {len(plan.cells)} cells"), box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False)
        for col in ("model", "mode", "dataset", "size", "in", "seed", "style/shots", "state"):
            table.add_column(col, overflow="fold", no_wrap=col in ("dataset", "model"))
        for c in plan.cells:
            a = c.axes
            extra = a["style"] if a.get("style") else (f"{a['shots']}-shot" if a.get("shots") else "")
            table.add_row(*map(escape, (a["model"], SHORT_MODES.get(a["mode"], a["mode"]), a["dataset"],
                                        str(a["size"]), str(a.get("input_size") or "-"), str(a["seed"]),
                                        extra or "-", _state_name(plan, c))))
        console.print(table)
    n = plan.counts()
    console.print(f"{len(plan.cells)} cells in {len(plan.groups())} encoder groups: {n['done']} done, "
                  f"{n['failed']} failed, {n['left']} left; work left: {estimate_left(plan)}", highlight=False)
    from collections import Counter

    for (mode, why), n_skip in Counter((a["mode"], why) for a, why in plan.skipped).items():
        console.print(f"skipped {n_skip} {mode} cell(s): {why}", style="dim", markup=False, highlight=False)
    console.print(f"study folder: {plan.root}", markup=False, highlight=False)
    _say_notes(plan, set())


def _print_dry_run(plan, executor: str, jobs: int) -> None:
    from fmeval.studies.executors import slurm_parameters, slurm_tasks

    if executor == "slurm":
        tasks = slurm_tasks(plan, plan.spec.executor.slurm.cells_per_task)
        params = slurm_parameters(plan)
        console.print(f"would submit a Slurm job array of {len(tasks)} tasks ({len(plan.cells)} cells) "
                      f"through submitit:", highlight=False)
        for k, v in params.items():
            console.print(f"  {k}: {v}", markup=False, highlight=False)
        table = Table(title="array tasks")
        for col in ("task", "model", "data", "cells", "modes"):
            table.add_column(col)
        for i, t in enumerate(tasks):
            a = t[0].axes
            table.add_row(*map(escape, (str(i), a["model"], f"{a['dataset']}@{a['size']}", str(len(t)),
                                        ", ".join(sorted({c.axes["mode"] for c in t})))))
        console.print(table)
        console.print(f"logs: {plan.root / 'slurm'}", markup=False, highlight=False)
    else:
        console.print(f"would run {len(plan.cells)} cells in {len(plan.groups())} groups locally with "
                      f"{jobs} worker(s).", highlight=False)


@study_app.command("run")
def study_run(
    file: StudyFile,
    reports_dir: ReportsDir = None,
    executor: Annotated[Optional[str], typer.Option(help="local or slurm \\[default: the study file's].")] = None,
    jobs: Annotated[Optional[int], typer.Option(min=1, help="local: worker processes (one GPU each when there are several).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed cells again.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run (Slurm: the array and resources).")] = False,
    track: Annotated[Optional[str], typer.Option("--track", help="Experiment trackers of every cell (wandb, mlflow, "
                     "tensorboard; comma-separated; none: off), grouped by the study's name \\[default: the study "
                     "file's track, else env FMEVAL_TRACK / fmeval.toml].")] = None,
) -> None:
    """Run every cell that is not finished; failed cells are recorded and the study goes on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fmeval.io import sweep_leftovers
    from fmeval.report import check_writable
    from fmeval.studies.executors import EXECUTORS
    from fmeval.tracking import requested

    with requested(track):  # --track over the study file's track: (fmeval.tracking)
        plan = _plan(file, reports_dir)
    kind = executor or plan.spec.executor.kind
    ex = EXECUTORS.get(kind)
    n_jobs = jobs or plan.spec.executor.jobs
    if dry_run:
        _print_dry_run(plan, kind, n_jobs)
        return
    check_writable(plan.root, "study folder")  # a bad --reports-dir fails here, not in every cell
    sweep_leftovers(plan.root)  # what cells killed mid-write left (temporary files, half run folders)
    counts = plan.counts()
    console.print(f"study {plan.spec.name}: {len(plan.cells)} cells ({counts['done']} done, {counts['failed']} failed, "
                  f"{counts['left']} left) -> {plan.root}", markup=False, highlight=False)
    said: set = set()
    _say_notes(plan, said)
    live = {"done": counts["done"], "failed": counts["failed"]}
    columns = [TextColumn("[bold blue]study"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task("cells", total=len(plan.cells), completed=counts["done"], info="")

        def progress(cell, status: str) -> None:
            if status in ("done", "failed"):
                live[status] += 1
                prog.update(task, advance=1)
            left = len(plan.cells) - live["done"] - live["failed"]
            now = f" | {cell.label()}" if status == "running" else ""
            prog.update(task, info=f"done {live['done']} failed {live['failed']} left {left}{now}")

        ex.run(plan, jobs=n_jobs, retry_failed=retry_failed, progress=progress)
    _summary(plan)
    _say_notes(plan, said)
    _finish(plan)


#: Leaderboard columns shown in the terminal (the rest are in leaderboard.md / .csv and the page).
TERMINAL_COLUMNS = {"#": "#", "model": "model", "mode": "mode", "style": "style", "variant": "variant",
                    "AUC (± sd)": "AUC ± sd", "ACC (± sd)": "ACC ± sd", "majority ACC": "maj."}


def print_leaderboards(plan, runs=None) -> None:
    """The study's leaderboard per dataset x size, in the terminal, narrowed to what fits a line.

    Built from the same tables as leaderboard.md (same ranking, same pooling
    over seeds), so the terminal never says something the files do not.
    """
    from rich.table import Table as RichTable

    from fmeval.report.leaderboard import SHORT_MODES
    from fmeval.studies import cells as C
    from fmeval.studies import tables as T
    from fmeval.studies.finish import finished_runs

    if runs is None:
        runs, _ = finished_runs(plan)
    if not runs:
        return
    entries = C.pool_entries([C.cell_row(r) for r in runs])
    for table in T.group_tables(entries, "auc"):
        keep = [i for i, c in enumerate(table.columns) if c in TERMINAL_COLUMNS]
        rt = RichTable(title=escape(table.title), title_justify="left", header_style="bold", box=None,
                       pad_edge=False, padding=(0, 1))
        for i in keep:
            name = table.columns[i]
            rt.add_column(escape(TERMINAL_COLUMNS[name]), justify="right" if name == "#" else "left",
                          no_wrap=name in ("model", "mode") or "±" in name, overflow="fold")
        for row in table.rows:
            rt.add_row(*[escape(_short_cell(row[i].text, SHORT_MODES)) for i in keep])
        console.print(rt)
    console.print(f"full tables, CIs and plots: {plan.root / 'index.html'}", markup=False, highlight=False)


def _short_cell(text: str, short_modes: dict) -> str:
    """'0.8840 ± 0.0087' -> '0.884±0.009'; mode names shortened as in `fmeval report`."""
    if " ± " in text:
        try:
            v, sd = (float(x) for x in text.split(" ± "))
            return f"{v:.3f}±{sd:.3f}"
        except ValueError:
            return text
    try:
        return f"{float(text):.3f}" if "." in text else short_modes.get(text, text)
    except ValueError:
        return short_modes.get(text, text)


def _summary(plan) -> None:
    n = plan.counts()
    console.print(f"{n['done']} done, {n['failed']} failed, {n['left']} left", highlight=False)
    for c in plan.cells:
        st = plan.state(c)
        if st and st["status"] == "failed":
            console.print(f"failed: {c.label()}: {st.get('error')}", style="red", markup=False, highlight=False)
    if n["failed"]:
        console.print("rerun them with --retry-failed", style="dim")


@study_app.command("report")
def study_report(file: StudyFile, reports_dir: ReportsDir = None) -> None:
    """Rebuild the study's leaderboards, plots and HTML page from its finished cells."""
    from fmeval.report import check_writable

    plan = _plan(file, reports_dir)
    check_writable(plan.root, "study folder")
    _summary(plan)
    _say_notes(plan, set())
    _finish(plan)
