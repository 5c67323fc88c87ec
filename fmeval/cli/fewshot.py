"""Few-shot sweeps from the command line, and ``fmeval fewshot report``.

``--shots 1,2,4 --draws 5`` on ``knn``, ``linprobe`` or ``finetune`` runs one
ordinary run per (K, draw) through the runner (each with its own report),
then writes the few-shot summary (:mod:`fmeval.report.fewshot`). Without
``--shots`` the command is the usual full-data run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.cli.app import ReportsDir, app, console, print_run, run_mode, user_defaults
from fmeval.cli.options import Given
from fmeval.errors import ConfigError

fewshot_app = typer.Typer(help="Few-shot summaries across runs (curves of a metric against K).",
                          no_args_is_help=True)
app.add_typer(fewshot_app, name="fewshot")


def run_with_shots(mode: str, opts: Given) -> None:
    """The command's run, or its few-shot sweep when ``--shots`` is given."""
    explicit = opts.explicit()
    if "shots" not in opts:
        if "draws" in opts or "fewshot.selection" in explicit:
            raise ConfigError("--draws and --fewshot-selection need --shots (e.g. --shots 1,2,4,8,16 --draws 5).")
        run_mode(mode, explicit)
        return
    shots = opts.table["shots"].convert(opts.get("shots"))
    run_fewshot_sweep(mode, explicit, shots, int(opts.get("draws") or 1))


def run_fewshot_sweep(mode: str, explicit: dict, shots: tuple[int, ...], draws: int) -> None:
    from fmeval.report import check_writable, reports_dir
    from fmeval.report.fewshot import fewshot_curves, print_fewshot_summary, write_fewshot_summary
    from fmeval.runner import execute, fewshot_configs

    configs = fewshot_configs(mode, explicit, shots, draws, user=user_defaults())
    root = Path(configs[0].reports_dir) if configs[0].reports_dir else reports_dir()
    check_writable(root)
    if len(configs) == 1:
        print_run(lambda: execute(configs[0]))
        return
    results = []
    for i, cfg in enumerate(configs, 1):
        r = execute(cfg)
        results.append(r)
        m = r.test.metrics
        console.print(f"[{i}/{len(configs)}] K={cfg.fewshot.shots} draw {cfg.fewshot.draw}: "
                      f"auc {m['auc'].value:.4f} acc {m['acc'].value:.4f} -> {r.run_id}",
                      highlight=False, markup=False, soft_wrap=True)
    curves = fewshot_curves(results)
    folder = write_fewshot_summary(curves, root)
    print_fewshot_summary(curves, console, folder=folder)


@fewshot_app.command("report")
def fewshot_report(
    reports_dir: ReportsDir = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Only runs on this dataset.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Only runs of this model.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Only runs of this mode.")] = None,
    metric: Annotated[str, typer.Option(help="Metric of the curve plot.")] = "auc",
) -> None:
    """One few-shot summary (tables, every draw, the curve plot) over the few-shot runs of a reports folder.

    Runs are grouped into one curve per model x mode x selection rule; each
    run is one draw (in a study: one seed). Writes
    <reports>/fewshot-<stamp>/summary.{md,json,png}.
    """
    from fmeval.metrics import METRICS
    from fmeval.report import load_runs, reports_dir as default_root
    from fmeval.report.fewshot import fewshot_curves, print_fewshot_summary, write_fewshot_summary

    from fmeval.validation import check_names

    METRICS.entry(metric)
    check_names(dataset=dataset, mode=mode, model=model)
    root = Path(reports_dir) if reports_dir else default_root()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--reports-dir {root} is a file, not a folder.")
    if not root.is_dir():
        raise ConfigError(f"reports folder {root} does not exist.")
    runs, _ = load_runs(root)
    runs = [r for r in runs if (dataset is None or r.dataset_flag == dataset.lower())
            and (model is None or r.model_name == model) and (mode is None or r.mode == mode)]
    curves = fewshot_curves(runs)
    if not curves:
        raise ConfigError(f"no few-shot runs (run with --shots) under {root}" +
                          (" matching the filters." if dataset or model or mode else "."))
    folder = write_fewshot_summary(curves, root, metric=metric)
    print_fewshot_summary(curves, console, metric=metric, folder=folder)
