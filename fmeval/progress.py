"""Rich progress bars for every long loop, silent when asked (tests, pipes)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)


def progress_enabled() -> bool:
    from fmeval.settings import env

    return env("FMEVAL_PROGRESS") != "0"


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "") -> Iterator["Tick"]:
    """Yield a callable ``tick(n, **fields)``; a no-op when progress is off."""
    if not progress_enabled():
        yield Tick(None, None)
        return
    columns = [
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(escape(description), total=total, info="")
        yield Tick(prog, task)


class Tick:
    def __init__(self, prog: Progress | None, task) -> None:
        self._prog, self._task = prog, task

    def __call__(self, advance: int = 1, info: str | None = None) -> None:
        if self._prog is not None:
            kw = {"info": escape(info)} if info is not None else {}  # columns render markup
            self._prog.update(self._task, advance=advance, **kw)


@contextlib.contextmanager
def download_bar(description: str, total: int | None, completed: int = 0) -> Iterator["Tick"]:
    """Byte progress (size, speed, time left) for a download; ``total=None`` if unknown.

    ``completed`` starts a resumed download where its partial file ends.
    """
    if not progress_enabled():
        yield Tick(None, None)
        return
    columns = [
        TextColumn("[bold blue]{task.description}"),
        BarColumn(bar_width=24),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(escape(description), total=total, completed=completed, info="")
        yield Tick(prog, task)


def warn(message: str) -> None:
    """One yellow ``warning:`` line on stderr, shown even when progress bars are off.

    For things a user must see while a run goes on (a cache entry that failed
    verification and was recomputed); the run's report records them too.
    """
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
