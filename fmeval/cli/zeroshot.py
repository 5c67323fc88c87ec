"""Zero-shot commands: ``fmeval zeroshot`` and ``fmeval prompts ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import app, console, run_mode
from fmeval.cli.options import COMMON, COMPARE, ZEROSHOT, Given, command
from fmeval.errors import ConfigError

prompts_app = typer.Typer(help="Prompt banks: list, validate, compare styles.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


def with_bank_dataset(opts: Given) -> dict:
    """``--dataset`` defaults to the bank's dataset; a conflicting one is an error."""
    explicit = opts.explicit()
    bank_spec = explicit.get("zeroshot.prompts")
    if bank_spec is None:
        return explicit
    from fmeval.data.sources import bank_key
    from fmeval.prompts import find_bank

    bank = find_bank(bank_spec)
    ds = explicit.get("dataset")
    if ds is None:
        explicit["dataset"] = bank.dataset
    elif bank_key(ds) != bank_key(bank.dataset):
        raise ConfigError(f"prompt bank {bank_spec!r} is for {bank.dataset}, not --dataset {ds}.")
    return explicit


@app.command()
@command(COMMON, ZEROSHOT)
def zeroshot(opts: Given) -> None:
    """Zero-shot classification of a vision-language model with a YAML prompt bank."""
    run_mode("zeroshot", with_bank_dataset(opts))


@prompts_app.command("compare")
@command(COMMON, ZEROSHOT, COMPARE)
def prompts_compare(opts: Given) -> None:
    """Compare the prompt styles of a bank on validation; test metrics for the style chosen there."""
    run_mode("prompts-compare", with_bank_dataset(opts))


@prompts_app.command("validate")
def prompts_validate(
    banks: Annotated[Optional[list[Path]], typer.Argument(help="Bank files (default: every shipped bank).")] = None,
) -> None:
    """Validate prompt banks against medmnist.INFO (non-zero exit on the first bad bank)."""
    from fmeval.prompts import list_shipped_banks, load_bank

    paths = banks or list(list_shipped_banks().values())
    for p in paths:
        bank = load_bank(p)
        console.print(f"[green]ok[/] {escape(str(p))}  ({bank.dataset}, {len(bank.styles)} styles, "
                      f"sha256 {bank.content_hash[:12]})")


@prompts_app.command("ls")
def prompts_ls() -> None:
    """Shipped prompt banks and their styles."""
    from fmeval.prompts import list_shipped_banks, load_bank

    table = Table(title="shipped prompt banks")
    for col in ("bank", "dataset", "styles", "default"):
        table.add_column(col)
    for name, path in sorted(list_shipped_banks().items()):
        b = load_bank(path)
        table.add_row(*map(escape, (name, b.dataset, ", ".join(b.styles), b.default_style)))
    console.print(table)
