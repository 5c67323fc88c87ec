"""``fmeval weights fetch|ls``: weights the model hubs cannot give."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fmeval.cli.app import app, console

weights_app = typer.Typer(
    help="Download and verify weights no model hub has (MedCLIP, MedViT); "
    "`--weights NAME` then uses them.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}" if n else "-"


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="Asset names (see `fmeval weights ls`), e.g. medclip.")],
    force: Annotated[bool, typer.Option("--force", help="Download again even when a verified copy is present.")] = False,
    accept_new_hash: Annotated[bool, typer.Option("--accept-new-hash", help="With --force: replace an unpinned "
                                                  "file whose upstream hash changed (refused otherwise).")] = False,
) -> None:
    """Download, verify (size, server digest, SHA-256) and unpack into the weights cache.

    Interrupted downloads resume where they stopped when the command is run again.
    """
    from fmeval.weights import WeightStore

    store = WeightStore()
    for name in names:
        store.assets.get(name)  # unknown names fail before any download
    for name in names:
        res = store.fetch(name, force=force, accept_new_hash=accept_new_hash)
        if not res.downloaded:
            console.print(f"[green]present[/] {escape(f'{res.name}: {res.entry}')}", highlight=False)
            continue
        console.print(f"[green]fetched[/] {escape(f'{res.name}: {res.entry}')}", highlight=False)
        for f in res.files:
            pin = "pinned" if f["pinned"] else "unpinned, recorded"
            checks = ", ".join(f["checked"]) or "no server digest"
            console.print(f"  {f['filename']}  sha256 {f['sha256']} ({pin}; {checks})",
                          markup=False, highlight=False, soft_wrap=True)
        for changed in res.changed:
            console.print(f"[yellow]warning:[/] {escape(str(changed))} differs from the copy fetched before "
                          "(the upstream file changed)", highlight=False)


@weights_app.command("ls")
def weights_ls(
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash every file (reads them all).")] = False,
) -> None:
    """Downloadable weights and what the weights cache holds for each."""
    from fmeval.weights import WeightStore

    store = WeightStore()
    table = Table(title=escape(f"weights cache: {store.root}"))
    for col in ("name", "state", "sha256", "MB"):
        table.add_column(col, no_wrap=True)
    table.add_column("what", overflow="fold")
    colour = {"present": "green", "verified": "green", "missing": "dim",
              "modified": "red", "corrupt": "red"}
    for st in store.list(verify=verify):
        pin = "pinned" if st.pinned else ("recorded" if st.manifest else "unpinned")
        desc = store.assets.entry(st.name).description + (f" ({st.detail})" if st.detail and
                                                          st.state != "missing" else "")
        table.add_row(escape(st.name), f"[{colour[st.state]}]{st.state}[/]", pin, _mb(st.size), escape(desc))
    console.print(table)
    console.print("fetch one with `fmeval weights fetch NAME`; use it with `--weights NAME`. "
                  "unpinned: no published SHA-256, the one computed at the first fetch is "
                  "recorded and checked from then on.", highlight=False)
