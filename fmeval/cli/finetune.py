"""Commands ``fmeval finetune`` (LoRA or full) and ``fmeval evaluate`` (reload a trained adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.cli.app import app, console, with_eval_options
from fmeval.errors import ConfigError


def _print_result(result) -> None:
    from fmeval.report import print_summary

    print_summary(result, console)
    ex = result.extras
    if "params" in ex:
        p = ex["params"]
        console.print(f"trainable params: {p['trainable']:,} / {p['total']:,}")
    if ex.get("adapter_path"):
        console.print(f"adapter: [bold]{ex['adapter_path']}[/]")
    console.print(f"report: [bold]{ex.get('report_dir', '')}[/]")


@app.command()
@with_eval_options
def finetune(
    common: dict,
    lora: Annotated[bool, typer.Option("--lora", help="LoRA (peft) on the encoder's attention/conv layers + a linear head.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning: every backbone parameter + a linear head.")] = False,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (MedMNIST+: 100, with early stopping).")] = 100,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (MedMNIST+: 1e-4).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices (not biases/norms).")] = 0.01,
    train_batch_size: Annotated[int, typer.Option(help="Training minibatch size (MedMNIST+: 64).")] = 64,
    accum_steps: Annotated[int, typer.Option(help="Gradient accumulation: minibatches per optimiser step.")] = 1,
    warmup_epochs: Annotated[float, typer.Option(help="Linear LR warm-up length in epochs, then cosine decay to 0 (per step).")] = 1.0,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without validation-loss improvement (MedMNIST+: 5; 0 = off).")] = 5,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (scaling = alpha / r).")] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA branch.")] = 0.1,
    layer_decay: Annotated[Optional[float], typer.Option(help="Layer-wise LR decay, e.g. 0.75 (full fine-tuning; head at the base LR).")] = None,
    pos_weight: Annotated[Optional[float], typer.Option(help="Positive-class loss weight (multi-label BCE, e.g. 10 for ChestMNIST; binary: weight of class 1).")] = None,
    class_weights: Annotated[Optional[str], typer.Option(help="'balanced': inverse-frequency class weights from the training labels.")] = None,
    select_metric: Annotated[str, typer.Option(help="Validation metric that picks the best epoch's weights.")] = "auc",
    augment: Annotated[bool, typer.Option(help="Light augmentation (random flip, 2 px shift); off in the MedMNIST+ protocol.")] = False,
    max_steps_per_epoch: Annotated[Optional[int], typer.Option(help="Cap on minibatches per epoch (quick looks; recorded).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Run folder (adapters/<run>) of an interrupted run to continue; pass the run's own options.")] = None,
) -> None:
    """Fine-tune an encoder with a linear head: exactly one of --lora / --full.

    Defaults follow the MedMNIST+ protocol: AdamW lr 1e-4, batch 64, cosine
    schedule (1 warm-up epoch), up to 100 epochs with early stopping on
    validation loss (patience 5); the weights of the best epoch by
    --select-metric on validation are kept. Weights, run.json and a resumable
    training state go to $FMEVAL_ADAPTERS_DIR/<run> (default ./adapters).
    """
    from fmeval.modes.finetune import FinetuneConfig, run_finetune
    from fmeval.training import LoraSettings, TrainConfig

    if lora == full:
        raise ConfigError("choose exactly one of --lora and --full.")
    train = TrainConfig(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=train_batch_size,
        accum_steps=accum_steps, warmup_epochs=warmup_epochs, patience=patience,
        select_metric=select_metric, pos_weight=pos_weight, class_weights=class_weights,
        augment=augment, layer_decay=layer_decay, max_steps_per_epoch=max_steps_per_epoch,
    )
    cfg = FinetuneConfig(
        **common, method="lora" if lora else "full", train=train,
        lora=LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout),
        resume=str(resume) if resume else None,
    )
    _print_result(run_finetune(cfg))


@app.command()
def evaluate(
    adapter: Annotated[Path, typer.Option("--adapter", "-a", help="Folder of a fine-tuned run (adapters/<run>).")],
    data_root: Annotated[Optional[Path], typer.Option("--data-root", envvar="FMEVAL_DATA_ROOT", help="Folder with the npz files, if not where the run found them.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bootstrap: Annotated[Optional[int], typer.Option("--bootstrap", help="Bootstrap resamples for the CIs (default: the run's).")] = None,
    reports_dir: Annotated[Optional[Path], typer.Option("--reports-dir", envvar="FMEVAL_REPORTS_DIR", help="Where reports go (default ./reports).")] = None,
) -> None:
    """Reload a fine-tuned adapter (LoRA or full) and report its val/test metrics.

    The base encoder is rebuilt from the run's own config, the saved weights
    are loaded, and predictions are made as at the end of training, so the
    test metrics equal the run's.
    """
    from fmeval.modes.finetune import evaluate_adapter

    result = evaluate_adapter(
        adapter, data_root=str(data_root) if data_root else None, device=device,
        n_boot=bootstrap, reports_dir=str(reports_dir) if reports_dir else None,
    )
    if not result.extras.get("reproduces_training_scores"):
        console.print("[yellow]warning:[/] test scores differ from those at the end of training")
    _print_result(result)
