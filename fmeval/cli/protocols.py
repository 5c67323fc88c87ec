"""``fmeval protocols ls|show``: the named protocols, every setting with its source."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import app, console

protocols_app = typer.Typer(help="Named protocols: published recipes as versioned presets.", no_args_is_help=True)
app.add_typer(protocols_app, name="protocols")


def _value(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else "-" if v is None else str(v)


@protocols_app.command("ls")
def protocols_ls() -> None:
    """The shipped protocols."""
    from fmeval.protocols import load_protocol, protocol_names

    table = Table(title="fmeval protocols")
    for col in ("name", "version", "modes", "title", "sha256"):
        table.add_column(col)
    for name in protocol_names():
        p = load_protocol(name)
        table.add_row(name, str(p.version), ", ".join(p.spec.modes), p.spec.title, p.sha256[:12])
    console.print(table)


@protocols_app.command("show")
def protocols_show(name: Annotated[str, typer.Argument(help="Protocol name (see `fmeval protocols ls`) or YAML path.")]) -> None:
    """Every setting of a protocol with the source it follows."""
    from fmeval.protocols import load_protocol

    p = load_protocol(name)
    s = p.spec
    console.print(f"[bold]{escape(s.title)}[/] ({escape(p.name)} v{p.version}, sha256 {p.sha256[:16]})")
    console.print(escape(s.citation) + (f"  {escape(s.url)}" if s.url else ""), highlight=False)
    if s.description:
        console.print(escape(s.description.strip()), highlight=False)
    console.print(f"modes: {', '.join(s.modes)}", highlight=False)
    table = Table(show_lines=False)
    for col in ("applies to", "setting", "value", "source"):
        table.add_column(col, overflow="fold")
    for label, setting in (("seeds", s.seeds), ("models", s.models), ("datasets", s.datasets), ("sizes", s.sizes)):
        if setting is not None:
            table.add_row("study", label, escape(_value(setting.value)), escape(setting.source))
    for key, setting in s.settings.items():
        table.add_row("every mode", key, escape(_value(setting.value)), escape(setting.source))
    for mode, block in s.mode_settings.items():
        for key, setting in block.items():
            table.add_row(mode, key, escape(_value(setting.value)), escape(setting.source))
    for size, var in s.variants.items():
        vals = ", ".join(f"{k}={_value(v)}" for k, v in var.settings.items())
        table.add_row(f"--size {size}", "variant", escape(vals), escape(var.source))
    console.print(table)
    for note in s.silent:
        console.print(f"source is silent: {note}", style="dim", markup=False, highlight=False)
