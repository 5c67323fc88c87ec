"""``fmeval models show SPEC``: what a model name or spec resolves to, before any run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import app, console

models_app = typer.Typer(help="Inspect models: registered names and specs (timm:, hf:, open_clip:, ...).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("show")
def models_show(
    spec: Annotated[str, typer.Argument(help="A registered name (`fmeval ls models`) or a spec: timm:<arch>[.<tag>], "
                                             "open_clip:<arch>/<tag>, hf:<org>/<repo>[@rev] or hf:<folder>, "
                                             "torchvision:<name>[:<weights>], file.py:factory, module:factory.")],
    random_init: Annotated[bool, typer.Option("--random-init", help="Random weights (nothing fetched).")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="The tiny random config (registered names).")] = False,
    weights: Annotated[Optional[str], typer.Option(help="A local checkpoint to load.")] = None,
    input_size: Annotated[Optional[int], typer.Option("--input-size", min=8, help="Input size override.")] = None,
    pool: Annotated[Optional[str], typer.Option("--pool", help="Pooled output (hf: cls, mean, pooler, embed).")] = None,
) -> None:
    """Family, weights id, input size, interpolation, mean/std, feature width and pooling,
    zero-shot scoring, LoRA targets and parameter count, as a run would resolve them.

    Pretrained weights are read from the local caches (offline and missing: one line
    saying what to fetch); --random-init shows the architecture without any weights.
    """
    from fmeval.adapters.show import resolve_model
    from fmeval.weights import resolve_weights

    wpath = resolve_weights(weights) if weights else None
    resolved = resolve_model(spec, pretrained=not (random_init or tiny), tiny=tiny, weights=wpath,
                             input_size=input_size, pool=pool)
    table = Table(title=escape(f"model {spec}"), show_header=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    for k, v in resolved.rows():
        table.add_row(escape(k), escape(v))
    console.print(table)
