"""Commands ``fmeval finetune`` (LoRA or full) and ``fmeval evaluate`` (reload a trained adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.cli.app import ReportsDir, app, print_run
from fmeval.settings import data_root as settings_data_root, env
from fmeval.cli.fewshot import run_with_shots
from fmeval.cli.options import COMMON, FEWSHOT, FINETUNE, MULTIDOMAIN, Given, command
from fmeval.errors import ConfigError


@app.command()
@command(COMMON, FINETUNE, FEWSHOT, MULTIDOMAIN)
def finetune(opts: Given) -> None:
    """Fine-tune an encoder with a linear head: exactly one of --lora / --full.

    Without a protocol the defaults are AdamW, lr 1e-4, batch 64, cosine
    schedule (1 warm-up epoch), up to 100 epochs with early stopping on
    validation loss (patience 5), the best epoch by --select-metric on
    validation. --protocol medmnist-plus / medmnist-v2 / resolution-study
    fix every training setting of those recipes. Weights, run.json and a
    resumable training state go to $FMEVAL_ADAPTERS_DIR/<run> (default
    ./adapters); the folder and the command that resumes it
    (fmeval finetune --resume FOLDER) are printed when training starts and
    when it is interrupted. --shots/--draws: few-shot fine-tuning on seeded
    episodes, one run per K and draw. --datasets D1,D2,...|all-2d: one
    backbone with a head per dataset trained on all of them at once
    (--protocol mm-pt), then one report per dataset.
    """
    lora, full = bool(opts.get("lora")), bool(opts.get("full"))
    if "resume" in opts:
        return resume_finetune(opts, lora, full)
    if "datasets" in opts:  # multi-domain training (issue 24)
        from fmeval.cli.multidomain import run_multidomain_command

        return run_multidomain_command(opts, lora, full)
    given = [f"--{k.replace('_', '-')}" for k in ("domain_weights", "domain_bn", "ordinal_loss") if k in opts]
    if given:
        raise ConfigError(f"{', '.join(given)} applies to multi-domain training: add --datasets D1,D2,...")
    missing = [f"--{k}" for k in ("model", "dataset") if k not in opts]
    if lora == full or missing:
        need = ([] if lora != full else ["exactly one of --lora / --full"]) + missing
        from fmeval.cli.app import user_defaults

        user = user_defaults()
        need = [n for n in need if n.lstrip("-") not in user]
        if need:
            raise ConfigError(f"finetune needs {', '.join(need)} (e.g. fmeval finetune --lora --model vit-s16 "
                              "--dataset pneumoniamnist).")
    run_with_shots("finetune-lora" if lora else "finetune-full", opts)


def resume_finetune(opts: Given, lora: bool, full: bool) -> None:
    """``fmeval finetune --resume DIR``: the run's own config, read from its run.json.

    Options given as well must agree with the run (a difference is named, as
    resuming with other settings would mix two runs in one result).
    """
    from fmeval.config import RunConfig
    from fmeval.runner import execute, make_config
    from fmeval.training.checkpoint import read_run_record

    folder = Path(opts.get("resume")).expanduser()
    rec = read_run_record(folder)
    try:
        saved = RunConfig.from_dict(rec["config"])
    except ConfigError as exc:
        raise ConfigError(f"{folder / 'run.json'}: config: {exc}") from None
    if saved.mode.startswith("multidomain-"):  # multi-domain training (issue 24)
        from fmeval.cli.multidomain import resume_multidomain

        return resume_multidomain(opts, lora, full, folder, saved)
    asked = "finetune-lora" if lora else "finetune-full" if full else saved.mode
    if lora and full or asked != saved.mode:
        raise ConfigError(f"--resume {folder}: the run is {saved.mode}; drop --lora/--full or match it.")
    explicit = {k: v for k, v in opts.explicit().items() if k != "resume"}
    cfg = make_config(saved.mode, {**explicit, "resume": str(folder)}, base=saved)
    print_run(lambda: execute(cfg))


@app.command()
def evaluate(
    adapter: Annotated[Path, typer.Option("--adapter", "-a", help="Folder of a fine-tuned run (adapters/<run>).")],
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder with the npz files, if not where the run found them \\[env FMEVAL_DATA_ROOT].")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16 [default: the precision the run "
                                                     "trained in].")] = None,
    bootstrap: Annotated[Optional[int], typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the CIs (default: the run's).")] = None,
    reports_dir: ReportsDir = None,
) -> None:
    """Reload a fine-tuned adapter (LoRA or full) and report its val/test metrics.

    The base encoder is rebuilt from the run's own config, the saved weights
    are loaded, and predictions are made as at the end of training, so the
    test metrics equal the run's (a differing fingerprint is a warning).
    """

    from fmeval.modes.finetune import evaluate_adapter, reload_config
    from fmeval.report import check_writable
    from fmeval.runner import execute, make_config
    from fmeval.validation import check_folder, check_names

    check_names(device=device, precision=precision)
    check_folder(data_root, "--data-root")
    reports = str(reports_dir) if reports_dir else env("FMEVAL_REPORTS_DIR")
    check_writable(reports)
    root = data_root or settings_data_root()
    from fmeval.training.checkpoint import read_run_record

    if str(read_run_record(adapter).get("mode", "")).startswith("multidomain-"):  # issue 24
        raise ConfigError(f"{adapter} is a multi-domain run: `fmeval finetune --resume {adapter}` reads its "
                          "model back and reports every dataset again.")
    saved, changes = reload_config(adapter, data_root=str(root) if root else None, device=device,
                                   precision=precision, n_boot=bootstrap)
    cfg = make_config(saved.mode, {**changes, "reports_dir": reports}, base=saved)
    print_run(lambda: execute(cfg, run=lambda c: evaluate_adapter(adapter, c)))
