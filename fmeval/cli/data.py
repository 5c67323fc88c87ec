"""``fmeval data check`` and ``fmeval data init``: a user's dataset before any model sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fmeval.cli.app import console

data_app = typer.Typer(help="Your own data: check it, write its dataset card.", no_args_is_help=True)

from fmeval.cli.app import app  # noqa: E402

app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Annotated[str, typer.Argument(help="Image folder, CSV/Parquet manifest, npz with a card, Hugging Face "
                                             "dataset (hf-dataset:... or a card naming one), or a MedMNIST name.")],
    size: Annotated[int, typer.Option(help="Side images are resized to (as the run would).", min=1)] = 28,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", envvar="FMEVAL_DATA_ROOT",
                                                      help="Folder of the MedMNIST npz files (for a MedMNIST name).")] = None,
    split_ratios: Annotated[Optional[str], typer.Option("--split-ratios", help="train,val,test shares of drawn splits.")] = None,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="Manifest column kept within one split.")] = None,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of drawn splits.", min=0)] = 0,
    strict_leakage: Annotated[bool, typer.Option("--strict-leakage", help="Cross-split duplicates are an error.")] = False,
) -> None:
    """Run every check of a dataset alone (one line per finding); writes nothing. Exit 2 on an error."""
    from fmeval.cli.options import parse_list
    from fmeval.data.info import SPLITS
    from fmeval.data.local import LocalDataset, SourceOptions
    from fmeval.data.sources import open_dataset
    from fmeval.validation import check_folder

    check_folder(data_root, "--data-root")
    ratios = tuple(parse_list(split_ratios, "--split-ratios", float)) if split_ratios else None
    options = SourceOptions(split_ratios=ratios, group_by=group_by, split_seed=split_seed, strict_leakage=strict_leakage)
    data = open_dataset(path, size, data_root, options=options, write=False)
    if not isinstance(data, LocalDataset):
        for s in SPLITS:
            data.split(s)  # MedMNIST layout: shapes, dtypes and labels of every split
    for line in data.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    counts = ", ".join(f"{len(data.labels(s))} {s}" for s in SPLITS)
    console.print(f"[green]ok[/] {escape(data.flag)}: {data.task}, {len(data.info.labels)} classes, {counts}; "
                  f"content hash {data.md5[:16]}")


@data_app.command("init")
def data_init(
    path: Annotated[str, typer.Argument(help="Image folder, CSV/Parquet manifest or hf-dataset:<owner/name> "
                                             "(its card goes to ./<name>.yaml).")],
    task: Annotated[Optional[str], typer.Option(help="binary, multi-class, multi-label or ordinal [default: inferred].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing card.")] = False,
) -> None:
    """Write a starter dataset card (fmeval.yaml) from what the data holds; edit it (name, modality,
    licence), then run."""
    from fmeval.data.card import TASKS, DatasetCard, card_path
    from fmeval.data.info import SPLITS
    from fmeval.data.sources import scan
    from fmeval.errors import ConfigError
    from fmeval.io import atomic_write_text

    if task is not None and task not in TASKS:
        raise ConfigError(f"--task: {task!r} is not one of {', '.join(TASKS)}.")
    kind, where, manifest, card, cfile, _ = scan(path)
    hub = path.startswith("hf-dataset:")  # no folder to hold its card: <name>.yaml here, naming the source
    target = Path.cwd() / f"{card.name}.yaml" if hub else card_path(where)
    if (cfile is not None or target.exists()) and not force:
        raise ConfigError(f"{target} exists; edit it, or pass --force to overwrite it.")
    given = [s for s in SPLITS if s in set(manifest.splits)]
    provenance = (f"given ({', '.join(given)}); missing ones drawn by fmeval (stratified, seeded)" if given
                  else "drawn by fmeval (stratified, seeded; see each report's split record)")
    card = DatasetCard(name=card.name, task=task or card.task, classes=card.classes, splits=provenance,
                       source=path if hub else card.source)
    atomic_write_text(target, card.to_yaml())
    console.print(f"[green]wrote[/] {escape(str(target))}: {card.name}, {card.task}, classes "
                  f"{escape(', '.join(card.classes))} ({len(manifest.paths)} images)")


from fmeval.cli.zeroshot import prompts_app  # noqa: E402  (registered before this module)


@prompts_app.command("init")
def prompts_init(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Your dataset (folder or manifest with a card).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing bank.")] = False,
) -> None:
    """Write a starter prompt bank (prompts.yaml beside the dataset card) from the card's class names;
    zero-shot on the dataset uses it by default. Edit the wording, then `fmeval prompts validate` it."""
    import yaml

    from fmeval.data.sources import bank_key, default_bank, label_table
    from fmeval.errors import ConfigError
    from fmeval.io import atomic_write_text
    from fmeval.prompts import PromptBank

    target = default_bank(dataset)
    if target is None and dataset.startswith("hf-dataset:"):
        raise ConfigError(f"--dataset {dataset}: a hub dataset's bank goes beside its card; write the card with "
                          f"`fmeval data init {dataset}` and give that file.")
    if target is None:
        raise ConfigError(f"--dataset {dataset}: MedMNIST datasets have shipped banks (fmeval prompts ls).")
    table = label_table(dataset)  # the card's classes (one line if there is no card)
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; edit it, or pass --force to overwrite it.")
    doc = starter_bank(bank_key(dataset), table["task"], [table["label"][k] for k in sorted(table["label"], key=int)])
    PromptBank.from_dict(doc, source=str(target))  # never write a bank that would not validate
    header = "# Starter prompt bank written by `fmeval prompts init`: edit display names, synonyms and templates.\n"
    atomic_write_text(target, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    console.print(f"[green]wrote[/] {escape(str(target))} ({len(doc['classes'])} classes, "
                  f"styles {', '.join(doc['styles'])})")


def starter_bank(dataset: str, task: str, classes: list[str]) -> dict:
    """Two styles: the class names alone, and a few generic templates over display names."""
    multi = "multi-label" in task
    pair = (lambda pos, neg: {"positive": pos, "negative": neg}) if multi else (lambda pos, neg: pos)
    return {
        "dataset": dataset,
        "version": "0.1",
        "description": "Starter bank from the dataset card's class names.",
        "sources": [{"id": "card", "citation": "class names from the dataset card (fmeval.yaml)"}],
        "default_style": "templates",
        "classes": {str(i): {"name": c, "display": c.replace("_", " "), "synonyms": []} for i, c in enumerate(classes)},
        "styles": {
            "class-names": {"description": "The card's class names alone.", "fill": ["name"],
                            "templates": pair(["{class}"], ["no {class}"]), "sources": ["card"]},
            "templates": {"description": "Generic medical-image templates over display names and synonyms.",
                          "fill": ["display", "synonyms"], "sources": ["card"],
                          "templates": pair(["a medical image showing {class}.", "an image of {class}."],
                                            ["a medical image showing no {class}.", "an image without {class}."])},
        },
    }
