"""Housekeeping commands: ls, cache, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmeval.cli.app import ReportsDir, app, console

ls_app = typer.Typer(help="List registered models and available datasets.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")
app.add_typer(cache_app, name="cache")


@ls_app.command("models")
def ls_models() -> None:
    """Registered encoders, their family, text support and default weights."""
    from fmeval.adapters import ADAPTERS

    table = Table(title="fmeval models")
    for col in ("name", "family", "text", "default weights", "description"):
        table.add_column(col)
    for e in ADAPTERS:
        table.add_row(e.name, e.tags.get("family", ""), e.tags.get("text", ""),
                      e.tags.get("weights", ""), e.description)
    console.print(table)


@ls_app.command("datasets")
def ls_datasets(
    data_root: Annotated[Optional[Path], typer.Option("--data-root", envvar="FMEVAL_DATA_ROOT",
                                                      help="Folder to check for local npz files.")] = None,
) -> None:
    """The 18 MedMNIST datasets (12 2D, 6 3D): dimensionality, task, classes, splits, sizes on disk."""
    from fmeval.data import DatasetInfo, all_flags, dataset_info, default_data_root

    root = data_root or default_data_root()
    table = Table(title=f"MedMNIST datasets (local root: {root})")
    table.add_column("flag", no_wrap=True)  # names stay whole in narrow terminals
    for col in ("dim", "task", "ch", "classes", "train/val/test", "sizes", "local sizes"):
        table.add_column(col, overflow="fold")
    for flag in all_flags():
        info = dataset_info(flag)
        local = [str(s) for s in info.sizes if (root / DatasetInfo.filename(flag, s)).exists()]
        n = info.n_samples
        table.add_row(flag, f"{info.ndim}D", info.task, str(info.n_channels), str(info.n_classes),
                      f"{n['train']}/{n['val']}/{n['test']}", ",".join(map(str, info.sizes)),
                      ",".join(local) or "-")
    console.print(table)


@cache_app.command("ls")
def cache_ls() -> None:
    """List cached feature tensors with their provenance key."""
    from fmeval.cache import FeatureCache

    cache = FeatureCache()
    entries = cache.entries()
    table = Table(title=f"feature cache: {cache.root}")
    for col in ("kind", "digest", "model", "weights", "dataset", "size", "split", "geometry", "shape", "MB"):
        table.add_column(col)
    for e in entries:
        k = e.key
        table.add_row(e.kind, e.digest[:12], str(k.get("adapter", "")), str(k.get("weights_id", ""))[:40],
                      str(k.get("dataset", "")), str(k.get("size", "")), str(k.get("split", "")),
                      str(k.get("geometry", "")), "x".join(map(str, e.shape)), f"{e.bytes / 1e6:.1f}")
    console.print(table)
    console.print(f"{len(entries)} entries, {sum(e.bytes for e in entries) / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(
    model: Annotated[Optional[str], typer.Option(help="Only entries of this model.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Only entries of this dataset.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete cached features (all, or one model's / dataset's)."""
    from fmeval.cache import FeatureCache

    cache = FeatureCache()

    def match(e) -> bool:
        return (model is None or e.key.get("adapter") == model.lower()) and (
            dataset is None or e.key.get("dataset") == dataset.lower()
        )

    n = sum(1 for e in cache.entries() if match(e))
    if n and not yes and not typer.confirm(f"delete {n} cache entries under {cache.root}?"):
        raise typer.Abort()
    console.print(f"removed {cache.clear(match)} entries")


@app.command()
def report(
    reports_dir: ReportsDir = None,
    dataset: Annotated[Optional[str], typer.Option(help="Only runs on this dataset.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Only runs of this mode.")] = None,
    metric: Annotated[str, typer.Option(help="Sort the leaderboard by this metric.")] = "auc",
    out: Annotated[Optional[Path], typer.Option(help="Folder for leaderboard.md/.csv (default: the reports folder).")] = None,
) -> None:
    """Aggregate all runs under the reports folder into one leaderboard (Markdown + CSV)."""
    from fmeval.report import leaderboard, reports_dir as default_reports, write_leaderboard

    root = reports_dir or default_reports()
    board = leaderboard(root, dataset=dataset, mode=mode, metric=metric)
    table = Table(title=f"leaderboard: {len(board.rows)} runs under {root}, by {metric}")
    short = {"acc": "ACC", "balanced_acc": "bACC", "auc": "AUC", "f1_macro": "F1"}
    for col in ("model", "mode", "data", "geom"):
        table.add_column(col, overflow="fold")
    for col in (*board.metric_columns, "majority"):
        table.add_column(short.get(col, col), no_wrap=True, justify="right")
    for row in board.rows:
        cells = [str(row["model"]), str(row["mode"]), f"{row['dataset']}@{row['size']}",
                 f"{row['geometry']}/s{row['seed']}"]
        cells += [f"{row[m]:.3f}" if row[m] == row[m] else "-" for m in board.metric_columns]
        table.add_row(*cells, f"{row['baseline_acc']:.3f}")
    console.print(table)
    for w in board.warnings:
        console.print(f"[yellow]skipped: {w}[/]")
    md, csv_path = write_leaderboard(root, out or root, dataset=dataset, mode=mode, metric=metric)
    console.print(f"written: {md}, {csv_path}")
