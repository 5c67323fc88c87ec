"""Zero-shot commands: ``fmeval zeroshot`` and ``fmeval prompts ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmeval.cli.app import app, console, with_eval_options
from fmeval.cli.frozen import _print_result

prompts_app = typer.Typer(help="Prompt banks: list, validate, compare styles.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")

Prompts = Annotated[Optional[str], typer.Option(
    "--prompts", "-p", help="Prompt bank: a YAML path or a shipped bank name (default: the dataset's bank).")]
Style = Annotated[Optional[str], typer.Option(help="Prompt style of the bank (default: the bank's default_style).")]
Ensemble = Annotated[str, typer.Option(help="mean-embedding (CLIP), mean-logit (MedCLIP ensemble) or max-logit.")]
TextBatch = Annotated[int, typer.Option(help="Prompts per text-encoder call.")]


@app.command()
@with_eval_options
def zeroshot(
    common: dict,
    prompts: Prompts = None,
    style: Style = None,
    ensemble: Ensemble = "mean-embedding",
    text_batch_size: TextBatch = 256,
) -> None:
    """Zero-shot classification of a vision-language model with a YAML prompt bank."""
    from fmeval.modes.zeroshot import ZeroshotConfig, run_zeroshot

    cfg = ZeroshotConfig(**common, prompts=prompts, style=style, ensemble=ensemble,
                         text_batch_size=text_batch_size)
    _print_result(run_zeroshot(cfg))


@prompts_app.command("compare")
@with_eval_options
def prompts_compare(
    common: dict,
    prompts: Prompts = None,
    styles: Annotated[Optional[str], typer.Option(help="Comma-separated styles (default: all).")] = None,
    per_template: Annotated[bool, typer.Option(help="Also score every single template on its own.")] = False,
    ensemble: Ensemble = "mean-embedding",
    split: Annotated[str, typer.Option(help="Split to compare on (val to choose, test to report).")] = "test",
    text_batch_size: TextBatch = 256,
) -> None:
    """Compare every prompt style of a bank on the same cached image features."""
    from fmeval.modes.prompt_compare import CompareConfig, run_prompt_compare

    chosen = tuple(s.strip() for s in styles.split(",") if s.strip()) if styles else None
    cfg = CompareConfig(**common, prompts=prompts, styles=chosen, per_template=per_template,
                        ensemble=ensemble, split=split, text_batch_size=text_batch_size)
    cmp = run_prompt_compare(cfg)
    table = Table(title=f"prompt styles: {cmp.model['name']} on {cmp.dataset} ({cmp.split})")
    for col in ("style", "prompts", "ACC", "bal. ACC", "AUC", "95% CI"):
        table.add_column(col)
    for r in cmp.rows:
        table.add_row(r["style"], str(r["n_prompts"]), f"{r['acc']:.3f}", f"{r['balanced_acc']:.3f}",
                      f"{r['auc']:.3f}", f"{r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f}")
    b = cmp.baseline
    table.add_row("[dim]majority class", "-", f"{b.get('acc', float('nan')):.3f}",
                  f"{b.get('balanced_acc', float('nan')):.3f}", f"{b.get('auc', float('nan')):.3f}", "")
    console.print(table)
    console.print(f"spread (best-worst): AUC {cmp.spread('auc'):.3f}, bal. ACC {cmp.spread('balanced_acc'):.3f}")
    console.print(f"report: [bold]{cmp.out_dir}[/]")


@prompts_app.command("validate")
def prompts_validate(
    banks: Annotated[Optional[list[Path]], typer.Argument(help="Bank files (default: every shipped bank).")] = None,
) -> None:
    """Validate prompt banks against medmnist.INFO (non-zero exit on the first bad bank)."""
    from fmeval.prompts import list_shipped_banks, load_bank

    paths = banks or list(list_shipped_banks().values())
    for p in paths:
        bank = load_bank(p)
        console.print(f"[green]ok[/] {p}  ({bank.dataset}, {len(bank.styles)} styles, sha256 {bank.content_hash[:12]})")


@prompts_app.command("ls")
def prompts_ls() -> None:
    """Shipped prompt banks and their styles."""
    from fmeval.prompts import list_shipped_banks, load_bank

    table = Table(title="shipped prompt banks")
    for col in ("bank", "dataset", "styles", "default"):
        table.add_column(col)
    for name, path in sorted(list_shipped_banks().items()):
        b = load_bank(path)
        table.add_row(name, b.dataset, ", ".join(b.styles), b.default_style)
    console.print(table)
