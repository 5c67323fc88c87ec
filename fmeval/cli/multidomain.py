"""``fmeval finetune --full|--lora --datasets D1,D2,...|all-2d``: one model for several datasets.

Every dataset's config is resolved before any work (a bad option or dataset name
fails first), all share one run folder (``adapters/<run>``), and each is then
executed through the ordinary runner: the first trains the shared model (or
resumes it), every one writes its own report. A summary line gives the mean
over the datasets, the number the mm-PT thesis ranks.
"""

from __future__ import annotations

import math
from pathlib import Path

from fmeval.cli.app import console, print_run, user_defaults
from fmeval.cli.options import Given
from fmeval.errors import ConfigError


def run_multidomain_command(opts: Given, lora: bool, full: bool) -> None:
    from fmeval.modes.multidomain import expand_datasets
    from fmeval.validation import check_required

    if lora == full:
        raise ConfigError("finetune --datasets needs exactly one of --lora / --full (e.g. fmeval finetune --full "
                          "--protocol mm-pt --model vit-b16 --datasets all-2d).")
    if "dataset" in opts:
        raise ConfigError("give --dataset (one dataset) or --datasets (multi-domain training), not both.")
    if "shots" in opts or "draws" in opts:
        raise ConfigError("--shots/--draws do not apply to multi-domain training (--datasets).")
    explicit = opts.explicit()
    datasets = expand_datasets(explicit["multidomain.datasets"])
    explicit["multidomain.datasets"] = datasets
    mode = "multidomain-lora" if lora else "multidomain-full"
    user = user_defaults()
    check_required(mode, {**user, **explicit, "dataset": datasets[0]})
    from fmeval.runner import make_config

    configs = [make_config(mode, {**explicit, "dataset": d}, user=user) for d in datasets]
    _run_all(configs)


def resume_multidomain(opts: Given, lora: bool, full: bool, folder: Path, saved) -> None:
    """``fmeval finetune --resume DIR`` of a multi-domain run: the run's own configs, one per dataset."""
    from fmeval.runner import make_config

    method = saved.mode.removeprefix("multidomain-")
    if lora and full or (lora and method != "lora") or (full and method != "full"):
        raise ConfigError(f"--resume {folder}: the run is {saved.mode}; drop --lora/--full or match it.")
    explicit = {k: v for k, v in opts.explicit().items() if k != "resume"}
    if "dataset" in explicit or "multidomain.datasets" in explicit:
        raise ConfigError(f"--resume {folder}: the run's datasets are fixed ({','.join(saved.multidomain.datasets)}); "
                          "drop --dataset/--datasets.")
    configs = [make_config(saved.mode, {**explicit, "resume": str(folder), "dataset": d}, base=saved)
               for d in saved.multidomain.datasets]
    _run_all(configs)


def _run_all(configs: list) -> None:
    from fmeval.modes.multidomain import run_folder
    from fmeval.report import check_writable
    from fmeval.runner import execute

    check_writable(configs[0].reports_dir)
    folder = run_folder(configs[0])  # one folder for the whole set
    if not configs[0].resume:
        configs = [c.with_values({"adapter_dir": str(folder)}) for c in configs]
    results = []
    for cfg in configs:
        results.append(print_run(lambda c=cfg: execute(c)))
    _summary(results, folder)


def _summary(results: list, folder: Path) -> None:
    parts = []
    for metric in ("auc", "balanced_acc", "acc"):
        values = [r.test.metrics[metric].value for r in results if metric in r.test.metrics]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if len(values) == len(results):
            parts.append(f"{metric} {sum(values) / len(values):.4f}")
    console.print(f"multi-domain run {folder.name}: {len(results)} datasets, test mean over datasets: "
                  f"{', '.join(parts) or 'n/a'}", highlight=False, markup=False, soft_wrap=True)
