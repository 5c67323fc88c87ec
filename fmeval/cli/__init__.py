"""Command-line interface: ``fmeval <command> --help`` documents each command.

Every way a command can go wrong because of its input ends the same way: the
usage line (for usage errors), one red ``error:`` line, exit status 2, no
traceback. That holds whichever click the installed Typer uses: Typer >= 0.29
vendors click as ``typer._click``, whose exceptions are not the top-level
``click`` ones, so both families are caught (see :func:`_click_exceptions`).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from rich.markup import escape

from fmeval.cli.app import app, console
from fmeval.errors import FmevalError

_COMMAND_MODULES = ("admin", "frozen", "zeroshot", "finetune", "protocols", "weights", "study",
                    "fewshot", "robustness", "external")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"fmeval.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fmeval.cli.{name}":
                raise


_load_commands()


def _click_modules() -> list[ModuleType]:
    """The click implementations the installed Typer may raise from."""
    mods: list[ModuleType] = []
    for name in ("typer._click", "click"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            continue
    return mods


def _click_exceptions(attr: str) -> tuple[type[BaseException], ...]:
    out = []
    for mod in _click_modules():
        exc = getattr(getattr(mod, "exceptions", mod), attr, None)
        if isinstance(exc, type) and exc not in out:
            out.append(exc)
    return tuple(out)


_USAGE = _click_exceptions("UsageError")
_CLICK = _click_exceptions("ClickException")
_EXIT = _click_exceptions("Exit")
_ABORT = _click_exceptions("Abort")
_NO_ARGS_HELP = _click_exceptions("NoArgsIsHelpError")


def error_line(message: object) -> str:
    """``error: <message>`` as Rich markup with the message escaped.

    Messages quote user input (paths, templates, split names in brackets),
    which must never be read as markup: ``[test]`` would vanish and ``[/x]``
    would crash the handler itself.
    """
    return f"[bold red]error:[/] {escape(str(message))}"


def _show_usage_error(exc: BaseException, err) -> None:
    ctx = getattr(exc, "ctx", None)
    if _NO_ARGS_HELP and isinstance(exc, _NO_ARGS_HELP):
        return  # Typer has already printed the command's help
    if ctx is not None:
        err.print(escape(ctx.get_usage()), highlight=False, soft_wrap=True)
        err.print(
            escape(f"Try '{ctx.command_path} --help' for help."), style="dim", highlight=False
        )
    msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err.print(error_line(" ".join(str(msg).split())), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    err = console.__class__(stderr=True)
    try:
        rv = app(args=argv, prog_name="fmeval", standalone_mode=False)
    except FmevalError as exc:
        err.print(error_line(exc), highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except _EXIT as exc:
        raise SystemExit(getattr(exc, "exit_code", 0)) from None
    except _USAGE as exc:
        _show_usage_error(exc, err)
        raise SystemExit(2) from None
    except _CLICK as exc:
        err.print(error_line(exc.format_message()), highlight=False, soft_wrap=True)
        raise SystemExit(getattr(exc, "exit_code", 1) or 1) from None
    except _ABORT:
        err.print("[red]aborted[/]")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
