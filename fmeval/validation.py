"""Every named choice of a run checked before any work, with close-match suggestions.

Ranges are checked where the values live (the config sections'
``__post_init__``); names that must be one of a registry or a fixed list are
checked here, once the whole :class:`~fmeval.config.RunConfig` is known
(``make_config`` calls :func:`validate_config`); the files a run reads are
checked when it starts (:func:`check_inputs`). So a typo in ``--geometry``,
a protocol file or a study cell fails in one line naming the option, before a
dataset is opened or a model is built, whichever way the value came in.

One policy for every command: fixed choices are *not* Typer ``Choice`` types
but checked here, so the same message comes out for a value typed on the
command line, read from a protocol or written in a study file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from fmeval.errors import ConfigError, FmevalError, check_choice, unknown_choice  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from fmeval.config import RunConfig


# -- the named choices of a RunConfig -------------------------------------------
@dataclass(frozen=True)
class Choice:
    path: str  # dotted RunConfig path
    flag: str  # the command-line option that sets it
    check: Callable[[Any], None]  # raises an FmevalError for an unknown value


def _registry(get: Callable[[], Any]) -> Callable[[Any], None]:
    """Check a value against the registry ``get()`` returns. The getters import their
    registry when first called, so importing this module stays light (start-up speed)."""

    def check(value: Any) -> None:
        get().entry(str(value))

    return check


# The registries and fixed lists, found by object (imported on first use).
def _adapters():
    from fmeval.adapters import ADAPTERS

    return ADAPTERS


def _geometries():
    from fmeval.data.transforms import GEOMETRIES

    return GEOMETRIES


def _norms():
    from fmeval.data.transforms import NORMS

    return NORMS


def _pad_fills():
    from fmeval.data.transforms import PAD_FILLS

    return PAD_FILLS


def _interpolations():
    from fmeval.data.transforms import INTERPOLATIONS

    return INTERPOLATIONS


def _precisions():
    from fmeval.device import PRECISIONS

    return PRECISIONS


def _knn_rules():
    from fmeval.probes.knn import KNN_RULES

    return KNN_RULES


def _ensembles():
    from fmeval.zeroshot import ENSEMBLES

    return ENSEMBLES


def _optimizers():
    from fmeval.training.optim import OPTIMIZERS

    return OPTIMIZERS


def _schedules():
    from fmeval.training.optim import SCHEDULES

    return SCHEDULES


def _weightings():
    from fmeval.training.losses import WEIGHTINGS

    return WEIGHTINGS


def _metrics():
    from fmeval.metrics import METRICS

    return METRICS


def _modes():
    from fmeval.modes import MODES

    return MODES


def _fixed(kind: str, names: Callable[[], Iterable[str]]) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        known = tuple(names())
        if value not in known:
            raise ConfigError(unknown_choice(kind, value, known))

    return check


def _dataset(value: Any) -> None:
    """A MedMNIST name or an existing dataset path (nothing is read yet)."""
    from fmeval.data.sources import check_spec

    check_spec(str(value))


def _device(value: Any) -> None:
    from fmeval.device import check_device_name

    check_device_name(str(value))


def _volume_view(value: Any) -> None:
    from fmeval.data.volumes import parse_view

    parse_view(str(value))


def _weights(value: Any) -> None:
    """A path that exists, or a registered asset name (fetched later, when used)."""
    from fmeval.weights.registry import ASSETS
    from fmeval.weights.store import resolve_weights

    text = str(value).strip()
    if Path(text).expanduser().exists() or (len(Path(text).parts) == 1 and text in ASSETS):
        return
    resolve_weights(text)  # raises the "does not exist; did you mean ..." line


def _metric(allow_loss: bool) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if allow_loss and value == "loss":
            return
        _registry(_metrics)(value)

    return check


CHOICES: tuple[Choice, ...] = (
    Choice("model", "--model", _registry(_adapters)),
    Choice("dataset", "--dataset", _dataset),
    Choice("geometry", "--geometry", _registry(_geometries)),
    Choice("norm", "--norm", _registry(_norms)),
    Choice("pad_fill", "--pad-fill", _fixed("pad fill", _pad_fills)),
    Choice("interpolation", "--interpolation",
           _fixed("interpolation", _interpolations)),
    Choice("precision", "--precision", _fixed("precision", _precisions)),
    Choice("device", "--device", _device),
    Choice("volume_view", "--volume-view", _volume_view),
    Choice("knn.rule", "--rule", _registry(_knn_rules)),
    Choice("knn.select_metric", "--select-metric", _metric(allow_loss=False)),
    Choice("zeroshot.ensemble", "--ensemble", _registry(_ensembles)),
    Choice("train.optimizer", "--optimizer", _registry(_optimizers)),
    Choice("train.schedule", "--schedule", _registry(_schedules)),
    Choice("train.select_metric", "--select-metric", _metric(allow_loss=True)),
    Choice("train.class_weights", "--class-weights", _registry(_weightings)),
)


_NAMES: dict[str, tuple[str, Callable[[Any], None]]] = {
    "model": ("--model", _registry(_adapters)),
    "dataset": ("--dataset", _dataset),
    "mode": ("--mode", _registry(_modes)),
    "metric": ("--metric", _metric(allow_loss=False)),
    "device": ("--device", _device),
    "precision": ("--precision", _fixed("precision", _precisions)),
}


def check_names(**values: Any) -> None:
    """Options of the housekeeping commands (``report --metric``, ``cache clear --model``):
    each given name must be a known one, checked before anything is read or deleted."""
    for key, value in values.items():
        if value is None:
            continue
        flag, check = _NAMES[key]
        try:
            check(value)
        except FmevalError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(flag) else f"{flag}: {msg}") from None


def check_required(mode: str, merged: dict[str, Any]) -> None:
    """--model and --dataset, named together; light enough to run before torch is imported
    (a usage error must not wait for the model stack to load)."""
    missing = [f"--{k}" for k in ("model", "dataset") if not merged.get(k)]
    if missing:
        raise ConfigError(f"{mode} needs {' and '.join(missing)} (e.g. --model vit-s16 --dataset pneumoniamnist).")


def check_folder(path: str | Path | None, flag: str) -> Path | None:
    """A folder option: ``None`` passes, an existing file does not (a missing folder may be created later)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder.")
    return p


def validate_config(cfg: "RunConfig") -> None:
    """Every named choice of ``cfg`` (``None``: the built-in default, always valid)."""
    for c in CHOICES:
        value = cfg.get(c.path)
        if value is None or (c.path == "model" and cfg.mode == "score"):  # external:<file>: no adapter
            continue
        try:
            c.check(value)
        except FmevalError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(c.flag) else f"{c.flag}: {msg}") from None
    if cfg.pool is not None:  # which poolings exist depends on the model's kind
        from fmeval.adapters.base import check_pool

        check_pool(cfg.model, cfg.pool)
    if cfg.mean is not None or cfg.std is not None:  # only the user's own models take them
        from fmeval.adapters.base import check_norm

        check_norm(cfg.model, cfg.mean, cfg.std)
    cfg.train.validate()
    _check_prompts(cfg)


def check_inputs(cfg: "RunConfig") -> None:
    """The files and folders a run reads are there: ``--weights`` (a path, or an asset
    name fetched on use) and ``--data-root``.

    Called when a run starts (:func:`fmeval.runner.execute`), not when a study
    is planned: a study may be planned where its checkpoints are not (yet)
    visible, and one missing file fails its own cell, not the plan.
    """
    check_folder(cfg.data_root, "--data-root")
    if cfg.weights is not None:
        try:
            _weights(cfg.weights)
        except FmevalError as exc:
            raise ConfigError(f"--weights: {exc}") from None


def _check_prompts(cfg: "RunConfig") -> None:
    """A prompt bank, style or styles given by name exist and fit the dataset (YAML only)."""
    z = cfg.zeroshot
    if z.prompts is None and z.style is None and not z.styles:
        return
    from fmeval.prompts import resolve_bank

    try:
        bank = resolve_bank(z.prompts, cfg.dataset)
    except FmevalError as exc:
        raise ConfigError(f"--prompts: {exc}") from None
    for flag, style in [("--style", z.style)] + [("--styles", s) for s in z.styles or ()]:
        if style is None:
            continue
        try:
            bank.style_groups(style)
        except FmevalError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
