"""Commands on frozen features: features, knn, linprobe."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmeval.cli.app import app, console, parse_list, with_eval_options


def _print_result(result) -> None:
    from fmeval.report import print_summary

    print_summary(result, console)
    console.print(f"report: [bold]{result.extras.get('report_dir', '')}[/]")


@app.command()
@with_eval_options
def features(common: dict) -> None:
    """Extract frozen features of train/val/test into the feature cache (once)."""
    from fmeval.pipeline import EvalConfig, prepare_frozen

    fz = prepare_frozen(EvalConfig(**common))
    for split, feats in fz.features.items():
        state = "cached" if fz.cache_hits[split] else "extracted"
        console.print(f"{split:>5}: {tuple(feats.shape)} {state}")
    console.print(f"weights: {fz.adapter.weights_id}   cache: {fz.cache.root}")


@app.command()
@with_eval_options
def knn(
    common: dict,
    k: Annotated[str, typer.Option(help="Comma-separated k values, swept in one pass; the best on val is reported.")] = "1,5,11,20,50",
    rule: Annotated[str, typer.Option(help="cosine (DINOv2 weighted votes) or euclidean-majority (MedMNIST+, use --k 11).")] = "cosine",
    temperature: Annotated[float, typer.Option(help="Temperature of the cosine vote weights exp(sim/T).")] = 0.07,
    select_metric: Annotated[str, typer.Option(help="Validation metric that picks k.")] = "auc",
) -> None:
    """kNN classification on frozen features, with metrics, CIs and a report."""
    from fmeval.modes.knn import KnnConfig, run_knn

    cfg = KnnConfig(**common, ks=parse_list(k, "--k"), rule=rule, temperature=temperature,
                    select_metric=select_metric)
    _print_result(run_knn(cfg))


@app.command()
@with_eval_options
def linprobe(
    common: dict,
    lr: Annotated[str, typer.Option(help="Learning rates of the grid (comma-separated).")] = "0.001,0.01,0.1",
    wd: Annotated[str, typer.Option(help="Weight decays of the grid (comma-separated).")] = "0,0.0001,0.001,0.01",
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on val loss).")] = 100,
    patience: Annotated[int, typer.Option(help="Epochs without val improvement before a head stops.")] = 10,
    probe_batch_size: Annotated[int, typer.Option(help="Minibatch size of probe training.")] = 1024,
    init: Annotated[str, typer.Option(help="zeros, or zeroshot: start from the prompt bank's zero-shot classifier (vision-language models).")] = "zeros",
    prompts: Annotated[Optional[str], typer.Option(help="Prompt bank for --init zeroshot (default: the dataset's).")] = None,
    style: Annotated[Optional[str], typer.Option(help="Prompt style for --init zeroshot.")] = None,
) -> None:
    """Linear probe on frozen features: the lr x wd grid trains in parallel, selected on val."""
    from fmeval.modes.linprobe import LinprobeConfig, run_linprobe
    from fmeval.probes.linear import ProbeConfig

    probe = ProbeConfig(lrs=parse_list(lr, "--lr", float), weight_decays=parse_list(wd, "--wd", float),
                        epochs=epochs, patience=patience, batch_size=probe_batch_size,
                        seed=common["seed"])
    _print_result(run_linprobe(LinprobeConfig(**common, probe=probe, init=init, prompts=prompts, style=style)))
