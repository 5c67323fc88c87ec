"""``fmeval score`` (any model's predictions file, as a run) and ``fmeval predict`` (a run's file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.settings import data_root as settings_data_root
from fmeval.cli.app import app, console, run_mode
from fmeval.cli.options import SCORE, Given, command
from fmeval.errors import ConfigError


@app.command()
@command(SCORE)
def score(
    opts: Given,
    predictions: Annotated[Path, typer.Argument(help="CSV of per-sample class probabilities: index column, one "
                                                     "column per class (by name or index); multi-label: one per label.",
                                                show_default=False)],
) -> None:
    """Score an external model's predictions like any run: all metrics, CIs, majority baseline, report.

    The file has one row per test image (index 0..N-1), the format of the
    MedMNIST+ leaderboard submissions and of every fmeval run's
    predictions.csv (`fmeval predict`). The report's provenance holds the
    file's SHA-256; the leaderboard lists it as external:<file stem>.
    """
    from fmeval.modes.score import external_model_name

    explicit = opts.explicit()
    explicit["model"] = external_model_name(predictions)
    explicit["score.predictions"] = str(predictions.expanduser())
    run_mode("score", explicit)


@app.command()
def predict(
    out: Annotated[Path, typer.Option("--out", "-o", help="The CSV file to write.", show_default=False)],
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="A run folder (reports/<run_id>).")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", "-a", help="A fine-tuned run folder "
                                                    "(adapters/<run>): its test split is predicted again.")] = None,
    header: Annotated[bool, typer.Option("--header/--no-header", help="Write the header row (no header: the "
                                         "layout medmnist's Evaluator writes).")] = True,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder with the npz files, if not "
                                                      "where the run found them \\[env FMEVAL_DATA_ROOT].")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N (--adapter).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16 (--adapter) \\[default: the "
                                                     "precision the run trained in].")] = None,
) -> None:
    """Write a run's test predictions as the CSV `fmeval score` reads (round trip: same metrics)."""

    from fmeval.modes.finetune import export_adapter, reload_config
    from fmeval.report.export import export_run
    from fmeval.runner import make_config
    from fmeval.validation import check_folder, check_names

    check_names(device=device, precision=precision)
    check_folder(data_root, "--data-root")
    from fmeval.report import check_writable

    check_writable(out.expanduser().parent, "--out folder")  # before any work (also: a name too long)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the CSV file to write.")
    if (run is None) == (adapter is None):
        raise ConfigError("predict needs exactly one of --run reports/<run_id> or --adapter adapters/<run>.")
    if run is not None:
        exp = export_run(run, out, header=header)
    else:
        root = data_root or settings_data_root()
        saved, changes = reload_config(adapter, data_root=str(root) if root else None, device=device,
                                       precision=precision)
        exp = export_adapter(adapter, out, header=header, cfg=make_config(saved.mode, changes, base=saved))
    console.print(f"wrote {exp.path}: {exp.n} rows, sha256 {exp.sha256}", markup=False, highlight=False, soft_wrap=True)
    if exp.n_split is not None and exp.n != exp.n_split:
        console.print(f"⚠ the run scored {exp.n} of {exp.n_split} test images (--limit); `fmeval score` needs every "
                      "test image", style="yellow", markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"score it with: {exp.score_command()}", markup=False, highlight=False, soft_wrap=True)
