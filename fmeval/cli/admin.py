"""Housekeeping commands: ls, cache, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import ReportsDir, app, console
from fmeval.errors import ConfigError
from fmeval.settings import reports_root

ls_app = typer.Typer(help="List registered models and available datasets.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect or clear the feature cache.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")
app.add_typer(cache_app, name="cache")


@ls_app.command("models")
def ls_models() -> None:
    """Registered encoders and installed plugins (with their package), their family, text
    support and default weights; any other model is named by a spec."""
    from fmeval.adapters import ADAPTERS

    table = Table(title="fmeval models")
    # names are what users copy into --model: never wrapped or cut, whatever the width
    table.add_column("name", no_wrap=True, min_width=max(len(e.name) for e in ADAPTERS))
    for col in ("family", "text", "default weights", "description"):
        table.add_column(col)
    for e in ADAPTERS:
        family = f"plugin ({e.tags['package']})" if "plugin" in e.tags else e.tags.get("family", "")
        table.add_row(e.name, family, e.tags.get("text", ""), e.tags.get("weights", ""), e.description)
    console.print(table)
    from fmeval.adapters import SKIPPED_PLUGINS

    if SKIPPED_PLUGINS:
        console.print(f"plugins skipped (a built-in model has the name): {', '.join(SKIPPED_PLUGINS)}")
    console.print("Any other model by spec: timm:<arch>[.<tag>], open_clip:<arch>/<tag>, hf:<org>/<repo>[@rev], "
                  "hf:<folder>, torchvision:<name>[:<weights>], file.py:factory, module:factory "
                  "(`fmeval models show SPEC`).")


@ls_app.command("datasets")
def ls_datasets(
    data_root: Annotated[Optional[Path], typer.Option("--data-root", envvar="FMEVAL_DATA_ROOT",
                                                      help="Folder to check for local npz files.")] = None,
) -> None:
    """The 18 MedMNIST datasets (12 2D, 6 3D): dimensionality, task, classes, splits, sizes on disk."""
    from fmeval.data import DatasetInfo, all_flags, dataset_info, default_data_root
    from fmeval.validation import check_folder

    root = check_folder(data_root, "--data-root") or default_data_root()
    table = Table(title=escape(f"MedMNIST datasets (local root: {root})"))
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
    table = Table(title=escape(f"feature cache: {cache.root}"))
    for col in ("kind", "digest", "model", "weights", "dataset", "size", "split", "geometry", "shape", "MB"):
        table.add_column(col)
    for e in entries:
        k = e.key
        cells = (e.kind, e.digest[:12], str(k.get("adapter", "")), str(k.get("weights_id", ""))[:40],
                 str(k.get("dataset", "")), str(k.get("size", "")), str(k.get("split", "")),
                 str(k.get("geometry", "")), "x".join(map(str, e.shape)), f"{e.bytes / 1e6:.1f}")
        table.add_row(*map(escape, cells))  # manifests hold user paths and names: never markup
    console.print(table)
    console.print(f"{len(entries)} entries, {sum(e.bytes for e in entries) / 1e6:.1f} MB")


def _stderr():
    return console.__class__(stderr=True)


def _confirm(question: str, what: str) -> None:
    """Ask on a terminal; without one, refuse in one line (exit 2) instead of guessing.

    Answering no (or end of input) prints ``aborted`` and exits 1, never a traceback.
    """
    import sys

    from fmeval.errors import ConfigError

    if not sys.stdin.isatty():
        raise ConfigError(f"{what}; no terminal to confirm on, pass --yes.")
    try:
        ok = typer.confirm(question, default=False)
    except (typer.Abort, EOFError, KeyboardInterrupt):
        ok = False
    if not ok:
        _stderr().print("[red]aborted[/]")
        raise SystemExit(1)


@cache_app.command("clear")
def cache_clear(
    model: Annotated[Optional[str], typer.Option(help="Only entries of this model.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Only entries of this dataset.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete cached features (all, or one model's / dataset's).

    Without a filter everything fmeval wrote there goes: entries, tensors
    whose manifest is missing, lock files, temporaries of killed writes and
    the emptied folders. Entries a running fmeval is writing are kept.
    Without --yes it asks on a terminal; with no terminal it exits 2.
    """
    from fmeval.cache import FeatureCache
    from fmeval.validation import check_names

    check_names(model=model, dataset=dataset)
    cache = FeatureCache()
    root = escape(str(cache.root))
    if model is None and dataset is None:
        n_files = cache.file_count()
        if not n_files:
            console.print(f"nothing to remove under {root}")
            return
        n = len(cache.entries())
        if not yes:
            _confirm(f"delete {n} cache entries ({n_files} files) under {cache.root}?",
                     f"cache clear would delete {n} entries ({n_files} files) under {cache.root}")
        rep = cache.clear_all()
        decoded = f" and {rep.decoded} decoded user dataset(s)" if rep.decoded else ""
        console.print(f"removed {rep.entries} entries{decoded} ({rep.files} files) under {root}")
        if rep.split_files:
            console.print(f"kept {rep.split_files} split index file(s) of user datasets (reports name them) "
                          f"under {escape(str(cache.root / 'splits'))}")
        if rep.busy:
            console.print(f"[yellow]kept {len(rep.busy)} entries a running fmeval is writing[/]")
        if rep.foreign:
            console.print(f"[yellow]kept {len(rep.foreign)} files fmeval did not write, "
                          f"e.g. {escape(str(rep.foreign[0]))}[/]")
        return

    def match(e) -> bool:
        return (model is None or e.key.get("adapter") == model.lower()) and (
            dataset is None or e.key.get("dataset") == dataset.lower()
        )

    n = sum(1 for e in cache.entries() if match(e))
    if not n:
        console.print(f"no matching entries under {root}")
        return
    if not yes:
        _confirm(f"delete {n} cache entries under {cache.root}?",
                 f"cache clear would delete {n} entries under {cache.root}")
    console.print(f"removed {cache.clear(match)} entries")


@cache_app.command("verify")
def cache_verify(
    keep: Annotated[bool, typer.Option("--keep", help="Only report bad entries; do not remove them.")] = False,
) -> None:
    """Check every entry (manifest, key, shape, dtype, content hash) and remove bad ones.

    One line per bad entry (damaged or truncated tensor, hash or shape
    mismatch, orphaned tensor, temporaries of a killed write). A bad entry
    would be recomputed on its next use anyway; removing it just frees the
    space now. Exit status 1 when anything was bad, so scripts notice damage;
    0 when every entry verified.
    """
    from fmeval.cache import FeatureCache

    cache = FeatureCache()
    rep = cache.verify(remove=not keep)
    for p in rep.problems:
        where = p.path.relative_to(cache.root) if p.path.is_relative_to(cache.root) else p.path
        action = " (removed)" if p.removed else ""
        console.print(f"bad: {escape(str(where))}: {escape(p.reason)}{action}",
                      highlight=False, soft_wrap=True)
    state = "removed" if not keep else "kept"
    bad = f", {len(rep.problems)} bad ({state})" if rep.problems else ", none bad"
    console.print(f"{rep.ok} entries verified under {escape(str(cache.root))}{bad}",
                  highlight=False, soft_wrap=True)
    if rep.problems:
        raise SystemExit(1)  # not typer.Exit: exits the same under any Typer runner


@app.command()
def report(
    reports_dir: ReportsDir = None,
    dataset: Annotated[Optional[str], typer.Option(help="Only runs on this dataset.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Only runs of this mode.")] = None,
    metric: Annotated[str, typer.Option(help="Rank by this metric.")] = "auc",
    include_all: Annotated[bool, typer.Option("--all", help="Also rank --limit subsets and tiny random models.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="More columns (CIs, weights, precision, seed).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for leaderboard.md/.csv (default: the reports folder).")] = None,
) -> None:
    """Aggregate the runs under the reports folder into a leaderboard per dataset x size (Markdown + CSV)."""

    from fmeval.io import atomic_write_text
    from fmeval.report import build_leaderboard, load_runs, print_leaderboard

    from fmeval.report import check_writable
    from fmeval.validation import check_names

    check_names(metric=metric, mode=mode, dataset=dataset)
    if out is not None:
        check_writable(out, "leaderboard folder")
    root = reports_dir or reports_root()
    if not root.is_dir():
        raise ConfigError(f"no reports folder at {root}; run an evaluation first or pass --reports-dir.")
    check_writable(out or root, "leaderboard folder")
    runs, skipped = load_runs(root, warn=False)
    board = build_leaderboard(runs, metric=metric, include_all=include_all, dataset=dataset, mode=mode,
                              skipped=skipped)
    print_leaderboard(board, console, wide=wide)
    for w in board.warnings:  # one line per damaged results.json; the other runs are ranked
        _stderr().print(f"warning: skipped {w}", style="yellow", markup=False, highlight=False,
                        soft_wrap=True)
    dest = out or root
    atomic_write_text(dest / "leaderboard.md", board.to_markdown())
    atomic_write_text(dest / "leaderboard.csv", board.to_csv())
    console.print(f"written: {dest / 'leaderboard.md'}, {dest / 'leaderboard.csv'}", markup=False, highlight=False)


@app.command("config")
def config_show() -> None:
    """Show the user defaults in effect and where each comes from (option > environment > file > built-in)."""
    from fmeval.settings import USER_SETTINGS, file_settings, resolve

    _, where = file_settings()
    where = where or "none: fmeval.toml or [tool.fmeval] in pyproject.toml"
    table = Table(title=escape(f"fmeval settings (file: {where})"))
    for col in ("setting", "value", "source", "meaning"):
        table.add_column(col)
    for s in USER_SETTINGS:
        value, source = resolve(s.key)
        table.add_row(*map(escape, (s.key, "-" if value is None else str(value), source, s.help)))
    console.print(table)
