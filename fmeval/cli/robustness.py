"""``fmeval robustness``: a clean-trained head (or fine-tuned adapter) under MedMNIST-C corruptions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmeval.cli.app import app, run_mode
from fmeval.cli.options import COMMON, KNN, LINPROBE, ROBUSTNESS, ZEROSHOT, Given, command
from fmeval.errors import ConfigError

# Options that still mean something when the model comes from a fine-tuned run folder.
_WITH_ADAPTER = {"corruptions", "severities", "seed", "data_root", "device", "bootstrap", "reports_dir",
                 "batch_size", "md5"}


def _adapter_explicit(adapter: Path, opts: Given) -> dict:
    """Config of a robustness run on a fine-tuned adapter: model, dataset and size are the run's."""
    from fmeval.training.checkpoint import read_run_record

    extra = sorted(o for o in opts.values if o not in _WITH_ADAPTER)
    if extra:
        raise ConfigError(f"--adapter takes the model, dataset and settings from the run; drop "
                          f"{', '.join(opts.table[o].flag for o in extra)}.")
    cfg = (read_run_record(adapter.expanduser()).get("config") or {})
    explicit = {k: cfg[k] for k in ("model", "dataset", "size", "tiny", "pretrained", "weights", "volume_view")
                if cfg.get(k) is not None}
    explicit.update(opts.explicit())
    explicit["robustness.adapter"] = str(adapter.expanduser())
    return explicit


@app.command()
@command(COMMON, KNN, LINPROBE, ZEROSHOT, ROBUSTNESS)
def robustness(
    opts: Given,
    adapter: Annotated[Optional[Path], typer.Option(
        "--adapter", "-a", help="A fine-tuned run folder (adapters/<run>) instead of a frozen-feature head.")] = None,
) -> None:
    """Test metrics under MedMNIST-C corruptions (needs scripts/install-robustness.sh).

    The head (--head knn|linprobe|zeroshot, with that mode's options) is
    trained and selected on the clean train/val splits exactly as its clean
    run; or --adapter reloads a fine-tuned run. The test split is then scored
    clean and under every corruption of the dataset (--corruptions) at each
    severity (--severities). One report: clean test metrics with CIs, and a
    table per corruption and severity with the relative drop. Corrupted test
    features are cached under the corruption, severity and seed.
    """
    explicit = _adapter_explicit(adapter, opts) if adapter is not None else opts.explicit()
    run_mode("robustness", explicit)
