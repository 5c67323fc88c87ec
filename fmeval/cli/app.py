"""The Typer application object and the option types its commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="fmeval",
    help="Evaluate vision foundation models on MedMNIST: zero-shot, kNN, linear probe, "
    "LoRA and full fine-tuning, with one trustworthy report per run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()

# -- options shared by the evaluation commands --------------------------------
Model = Annotated[str, typer.Option("--model", "-m", help="Registered encoder name (see `fmeval ls models`).")]
Dataset = Annotated[str, typer.Option("--dataset", "-d", help="MedMNIST flag, e.g. pneumoniamnist (see `fmeval ls datasets`).")]
Size = Annotated[int, typer.Option(help="Image size of the MedMNIST+ file: 28, 64, 128 or 224.")]
DataRoot = Annotated[Optional[Path], typer.Option(
    "--data-root", envvar="FMEVAL_DATA_ROOT",
    help="Folder with the npz files (default: medmnist's ~/.medmnist).")]
Download = Annotated[bool, typer.Option(help="Download the npz through medmnist if it is missing (needs a network).")]
Md5 = Annotated[str, typer.Option(help="MD5 check against the official file: warn, strict or off.")]
Geometry = Annotated[str, typer.Option(help="resize: scale to the encoder input; pad: zero-pad at native resolution (MedMNIST+ protocol).")]
Tiny = Annotated[bool, typer.Option(help="Random-init tiny config of the same architecture (offline tests, smoke runs).")]
RandomInit = Annotated[bool, typer.Option("--random-init", help="Full-size architecture with random weights (no download).")]
Weights = Annotated[Optional[Path], typer.Option(help="Local checkpoint to load instead of downloading pretrained weights.")]
Strict = Annotated[bool, typer.Option(help="Fail when checkpoint keys or shapes do not match the model.")]
InputSize = Annotated[Optional[int], typer.Option(help="Override the encoder's input resolution (e.g. 224 for SAM).")]
Seed = Annotated[int, typer.Option(help="Seed for random weights, subsets, training and bootstrap.")]
BatchSize = Annotated[int, typer.Option(help="Batch size of feature extraction (halved automatically on out-of-memory).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Recompute features instead of using the feature cache.")]
Boot = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% CIs (0: none).")]
Limit = Annotated[Optional[int], typer.Option(help="Use at most N random samples per split (quick looks; recorded in the report).")]
ReportsDir = Annotated[Optional[Path], typer.Option(
    "--reports-dir", envvar="FMEVAL_REPORTS_DIR", help="Where reports go (default ./reports).")]


def eval_kwargs(
    model: str, dataset: str, size: int, data_root: Optional[Path], download: bool, md5: str,
    geometry: str, tiny: bool, random_init: bool, weights: Optional[Path], strict: bool,
    input_size: Optional[int], seed: int, batch_size: int, device: str, no_cache: bool,
    bootstrap: int, limit: Optional[int], reports_dir: Optional[Path],
) -> dict:
    """Shared CLI options -> keyword arguments of :class:`EvalConfig`."""
    return dict(
        model=model, dataset=dataset, size=size,
        data_root=str(data_root) if data_root else None, download=download, md5=md5,
        geometry=geometry, pretrained=not (random_init or tiny), tiny=tiny,
        weights=str(weights) if weights else None, strict=strict, input_size=input_size,
        seed=seed, batch_size=batch_size, device=device, use_cache=not no_cache,
        n_boot=bootstrap, limit=limit, reports_dir=str(reports_dir) if reports_dir else None,
    )


_COMMON = {
    "model": (Model, ...), "dataset": (Dataset, ...), "size": (Size, 28),
    "data_root": (DataRoot, None), "download": (Download, False), "md5": (Md5, "warn"),
    "geometry": (Geometry, "resize"), "tiny": (Tiny, False), "random_init": (RandomInit, False),
    "weights": (Weights, None), "strict": (Strict, True), "input_size": (InputSize, None),
    "seed": (Seed, 0), "batch_size": (BatchSize, 256), "device": (Device, "auto"),
    "no_cache": (NoCache, False), "bootstrap": (Boot, 1000), "limit": (Limit, None),
    "reports_dir": (ReportsDir, None),
}


def with_eval_options(fn):
    """Give a command the shared evaluation options.

    The command is written as ``fn(common: dict, <own options>)``; the wrapper
    exposes the shared options in its signature (Typer reads it) and passes
    them to ``fn`` as EvalConfig keyword arguments, so every command spells
    each option identically without repeating nineteen parameters.
    """
    import functools
    import inspect
    import typing

    hints = typing.get_type_hints(fn, include_extras=True)  # resolve string annotations
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in list(inspect.signature(fn).parameters.values())[1:]]
    common = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, (ann, default) in _COMMON.items()
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        shared = eval_kwargs(**{k: kwargs.pop(k) for k in _COMMON})
        return fn(shared, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + common
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return wrapper


def parse_list(text: str, what: str, kind: type = int) -> tuple:
    """Comma-separated numbers of one kind (``--k 5,11,21``, ``--lr 1e-3,1e-2``)."""
    from fmeval.errors import ConfigError

    noun = "integers" if kind is int else "numbers"
    try:
        vals = tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated {noun}, got {text!r}.") from None
    if not vals:
        raise ConfigError(f"{what} is empty.")
    return vals
