"""Command-line interface: ``fmeval <command> --help`` documents each command.

Every way a command can go wrong because of its input ends the same way: the
usage line (for usage errors), one red ``error:`` line, exit status 2, no
traceback. That holds whichever click the installed Typer uses: Typer >= 0.29
vendors click as ``typer._click``, whose exceptions are not the top-level
``click`` ones, so both families are caught (see :func:`_click_exceptions`).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

from rich.markup import escape

from fmeval.cli.app import app, console
from fmeval.errors import FmevalError

_COMMAND_MODULES = ("admin", "models", "frozen", "zeroshot", "finetune", "protocols", "weights", "study",
                    "fewshot", "robustness", "external", "data", "serve")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"fmeval.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fmeval.cli.{name}":
                raise


_load_commands()


def _click_modules() -> list[ModuleType]:
    """The click implementations the installed Typer may raise from (Typer >= 0.29
    also has its own ``Abort``/``Exit`` in ``typer.exceptions``, not click's)."""
    mods: list[ModuleType] = []
    for name in ("typer.exceptions", "typer._click", "click"):
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
    if ctx is not None:  # one usage line (the --help hint on it), then one error line
        usage = " ".join(ctx.get_usage().split())
        err.print(escape(f"{usage}   (see '{ctx.command_path} --help')"), highlight=False, soft_wrap=True)
    msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err.print(error_line(" ".join(str(msg).split())), highlight=False, soft_wrap=True)


def _registered(typer_app) -> int:
    return len(typer_app.registered_commands) + sum(
        1 + _registered(g.typer_instance) for g in typer_app.registered_groups if g.typer_instance
    )


_BUILT: dict[int, object] = {}


def _command():
    """The click command of ``app``, built once per set of registered commands.

    Typer rebuilds it on every call (~0.1 s for this app); a process runs one
    command, but the CLI tests run hundreds in one process.
    """
    import typer.main

    key = _registered(app)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = _guard_interrupts(typer.main.get_command(app))
    return _BUILT[key]


class Interrupted(Exception):
    """Ctrl-C inside a command, carried past Typer (which turns KeyboardInterrupt
    into a silent ``Exit(130)``) to :func:`main`, which says so in one line."""


def _guard_interrupts(cmd):
    for sub in getattr(cmd, "commands", {}).values():
        _guard_interrupts(sub)
    callback = getattr(cmd, "callback", None)
    if callback is not None and not getattr(callback, "fmeval_guarded", False):

        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except KeyboardInterrupt as exc:
                raise Interrupted() from exc

        guarded.fmeval_guarded = True  # type: ignore[attr-defined]
        cmd.callback = guarded
    return cmd


def main(argv: list[str] | None = None) -> int:
    err = console.__class__(stderr=True)
    try:
        rv = _command()(args=argv, prog_name="fmeval", standalone_mode=False)
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
    except (KeyboardInterrupt, Interrupted):
        err.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
