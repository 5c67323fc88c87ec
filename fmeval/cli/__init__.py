"""Command-line interface: ``fmeval <command> --help`` documents each command.

User errors (:class:`FmevalError`) print one red line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from fmeval.cli.app import app, console
from fmeval.errors import FmevalError

_COMMAND_MODULES = ("admin", "frozen", "zeroshot", "finetune")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"fmeval.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fmeval.cli.{name}":
                raise


_load_commands()


def main(argv: list[str] | None = None) -> int:
    err = console.__class__(stderr=True)
    try:
        rv = app(args=argv, prog_name="fmeval", standalone_mode=False)
    except FmevalError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        err.print("[red]aborted[/]")
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
