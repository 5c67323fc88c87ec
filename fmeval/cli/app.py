"""The Typer application, and the one function every evaluation command ends in."""

from __future__ import annotations

from typing import Annotated, Any, Optional
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="fmeval",
    help="Evaluate vision foundation models on MedMNIST: zero-shot, kNN, linear probe, "
    "LoRA and full fine-tuning, with one trustworthy report per run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()

ReportsDir = Annotated[Optional[Path], typer.Option(
    "--reports-dir", help="Where reports go \\[env FMEVAL_REPORTS_DIR; default ./reports].")]


def user_defaults() -> dict[str, Any]:
    """Config paths filled from the environment and fmeval.toml / [tool.fmeval] (not deviations)."""
    from fmeval.settings import USER_SETTINGS, apply_to_environment, resolve

    apply_to_environment()
    out: dict[str, Any] = {}
    for s in USER_SETTINGS:
        if s.path is None:
            continue
        value, source = resolve(s.key)
        if source != "built-in" and value is not None:
            out[s.path] = value
    return out


def run_mode(mode: str, explicit: dict[str, Any]) -> None:
    """Resolve the config (defaults < user < protocol < options), run it, print it."""
    from fmeval.validation import check_required

    user = user_defaults()
    check_required(mode, {**user, **explicit})  # before the model stack is imported (seconds)
    from fmeval.runner import execute, make_config

    cfg = make_config(mode, explicit, user=user)
    print_run(lambda: execute(cfg))


def print_run(run):
    """Run (``run()`` returns the finished RunResult) and print its metrics.

    A report that could not be written still has its metrics printed, then
    the one error line (:class:`fmeval.report.ReportNotWritten`): compute
    first, print, then write.
    """
    from fmeval.report import ReportNotWritten, print_result

    try:
        result = run()
    except ReportNotWritten as exc:
        print_result(exc.result, console)
        raise
    print_result(result, console)
    return result
