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

    table = Table(title="fmeval protocols (`fmeval protocols show NAME` for every setting)")
    table.add_column("name", no_wrap=True)
    table.add_column("v", no_wrap=True)
    table.add_column("modes")
    table.add_column("title")
    for name in protocol_names():
        p = load_protocol(name)
        table.add_row(*map(escape, (name, str(p.version), ", ".join(p.spec.modes), p.spec.title)))
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
    console.print(f"modes: {', '.join(s.modes)}", markup=False, highlight=False)

    def show(key: str, value, source: str) -> None:
        console.print(f"  [bold]{escape(key)}[/] = {escape(_value(value))}", highlight=False, soft_wrap=True)
        console.print(f"      {escape(source)}", style="dim", highlight=False, soft_wrap=True)

    console.print("[underline]study axes[/]")
    for label, setting in (("seeds", s.seeds), ("models", s.models), ("datasets", s.datasets), ("sizes", s.sizes)):
        if setting is not None:
            show(label, setting.value, setting.source)
    console.print("[underline]every mode[/]")
    for key, setting in s.settings.items():
        show(key, setting.value, setting.source)
    for mode, block in s.mode_settings.items():
        console.print(f"[underline]{escape(mode)}[/]")
        for key, setting in block.items():
            show(key, setting.value, setting.source)
    for model, block in s.model_settings.items():
        console.print(f"[underline]--model {escape(model)}[/]")
        for key, setting in block.items():
            show(key, setting.value, setting.source)
    for size, var in s.variants.items():
        console.print(f"[underline]--size {escape(size)}[/]")
        show("variant", ", ".join(f"{k}={_value(v)}" for k, v in var.settings.items()), var.source)
    for note in s.silent:
        console.print(f"source is silent or differs: {note}", markup=False, highlight=False, soft_wrap=True)
