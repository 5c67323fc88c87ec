"""The one terminal printer: every command shows a run the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmeval.report.fmt import fmt, fmt_ci
from fmeval.report.markdown import protocol_line
from fmeval.report.schema import RunResult
from fmeval.report.sections import SECTIONS

if TYPE_CHECKING:
    from rich.console import Console


IMBALANCE_RATE = 0.8  # a test split this dominated by one class makes accuracy say little


def imbalance_note(result: RunResult) -> str | None:
    """For a heavily imbalanced test split (VesselMNIST3D: 88.7 % vessels), the
    numbers to read first: balanced accuracy and per-class sensitivity."""
    rep = result.test
    base = rep.baseline.get("acc")
    if rep.confusion is None or base is None or not base >= IMBALANCE_RATE:
        return None
    sens = ", ".join(f"{name} {fmt(row.get('sensitivity'), 3)}" for name, row in rep.per_class.items())
    bal = rep.metrics.get("balanced_acc")
    return (f"imbalanced test split (majority rate {base:.3f}): read balanced accuracy "
            f"{fmt(bal.value if bal else None, 3)} and per-class sensitivity ({sens}) before accuracy")


def print_result(result: RunResult, console: "Console | None" = None) -> None:
    """Metric, value, CI and majority baseline side by side, so a 0.62 accuracy
    that merely equals the majority rate is seen for what it is; then the
    mode's own sections, the warnings (each once) and where the report is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    rep = result.test
    imbalance = imbalance_note(result)
    if imbalance:
        console.print(imbalance, style="yellow", markup=False, highlight=False)
    table = Table(
        title=escape(f"{result.mode} · {result.model_name} · {result.dataset_flag} (test, n = {rep.n})"),
        caption=escape(f"run {result.run_id}"),
    )
    table.add_column("metric")
    table.add_column("value", justify="right", style="bold")
    table.add_column(f"{rep.ci:.0%} CI", justify="right")
    table.add_column("majority", justify="right", style="dim")
    if result.val is not None:
        table.add_column("val", justify="right")
    for name, mv in rep.metrics.items():
        cells = [name, fmt(mv.value), fmt_ci(mv.ci_low, mv.ci_high), fmt(rep.baseline.get(name))]
        if result.val is not None:
            cells.append(fmt(result.val.value(name)))
        table.add_row(*cells)
    console.print(table)
    if result.selection:
        sel = ", ".join(f"{k}={v}" for k, v in result.selection.items())
        console.print(f"selected on validation: {sel}", highlight=False, markup=False)
    if result.protocol:
        console.print(f"protocol: {protocol_line(result).replace('`', '')}", highlight=False, markup=False)
    for key, value in result.extras.items():
        if key in SECTIONS and SECTIONS.get(key).terminal is not None:
            SECTIONS.get(key).terminal(value, result, console)
    for w in dict.fromkeys(result.all_warnings()):
        console.print(f"⚠ {w}", style="yellow", markup=False, highlight=False)
    if result.report_dir:
        console.print(f"report: {result.report_dir}", style="bold", markup=False, highlight=False)
