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

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from fmeval.errors import ConfigError, FmevalError

if TYPE_CHECKING:
    from fmeval.config import RunConfig


def unknown_choice(kind: str, value: Any, known: Iterable[str]) -> str:
    """``unknown <kind> 'x'. Did you mean: y? Known: a, b.`` (the Registry's wording)."""
    known = list(known)
    close = difflib.get_close_matches(str(value).lower(), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {kind} {value!r}.{hint} Known: {', '.join(known)}."


def check_choice(value: Any, known: Iterable[str], flag: str, kind: str) -> None:
    """Raise ``--flag: unknown <kind> ...`` unless ``value`` is one of ``known``."""
    known = tuple(known)
    if value not in known:
        raise ConfigError(f"{flag}: {unknown_choice(kind, value, known)}")


# -- the named choices of a RunConfig -------------------------------------------
@dataclass(frozen=True)
class Choice:
    path: str  # dotted RunConfig path
    flag: str  # the command-line option that sets it
    check: Callable[[Any], None]  # raises an FmevalError for an unknown value


def _registry(module: str, attr: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        import importlib

        getattr(importlib.import_module(module), attr).entry(str(value))

    return check


def _fixed(kind: str, names: Callable[[], Iterable[str]]) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        known = tuple(names())
        if value not in known:
            raise ConfigError(unknown_choice(kind, value, known))

    return check


def _dataset(value: Any) -> None:
    from fmeval.data import dataset_info

    dataset_info(str(value))


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
        _registry("fmeval.metrics", "METRICS")(value)

    return check


def _names(module: str, attr: str) -> Callable[[], Iterable[str]]:
    def names() -> Iterable[str]:
        import importlib

        return getattr(importlib.import_module(module), attr)

    return names


CHOICES: tuple[Choice, ...] = (
    Choice("model", "--model", _registry("fmeval.adapters", "ADAPTERS")),
    Choice("dataset", "--dataset", _dataset),
    Choice("geometry", "--geometry", _registry("fmeval.data.transforms", "GEOMETRIES")),
    Choice("norm", "--norm", _registry("fmeval.data.transforms", "NORMS")),
    Choice("pad_fill", "--pad-fill", _fixed("pad fill", _names("fmeval.data.transforms", "PAD_FILLS"))),
    Choice("interpolation", "--interpolation",
           _fixed("interpolation", _names("fmeval.data.transforms", "INTERPOLATIONS"))),
    Choice("precision", "--precision", _fixed("precision", _names("fmeval.device", "PRECISIONS"))),
    Choice("device", "--device", _device),
    Choice("volume_view", "--volume-view", _volume_view),
    Choice("knn.rule", "--rule", _registry("fmeval.probes.knn", "KNN_RULES")),
    Choice("knn.select_metric", "--select-metric", _metric(allow_loss=False)),
    Choice("zeroshot.ensemble", "--ensemble", _registry("fmeval.zeroshot", "ENSEMBLES")),
    Choice("train.optimizer", "--optimizer", _registry("fmeval.training.optim", "OPTIMIZERS")),
    Choice("train.schedule", "--schedule", _registry("fmeval.training.optim", "SCHEDULES")),
    Choice("train.select_metric", "--select-metric", _metric(allow_loss=True)),
    Choice("train.class_weights", "--class-weights", _registry("fmeval.training.losses", "WEIGHTINGS")),
)


_NAMES: dict[str, tuple[str, Callable[[Any], None]]] = {
    "model": ("--model", _registry("fmeval.adapters", "ADAPTERS")),
    "dataset": ("--dataset", _dataset),
    "mode": ("--mode", _registry("fmeval.modes", "MODES")),
    "metric": ("--metric", _metric(allow_loss=False)),
    "device": ("--device", _device),
    "precision": ("--precision", _fixed("precision", _names("fmeval.device", "PRECISIONS"))),
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
    from fmeval.modes.zeroshot import style_prompts
    from fmeval.prompts import resolve_bank

    try:
        bank = resolve_bank(z.prompts, cfg.dataset)
    except FmevalError as exc:
        raise ConfigError(f"--prompts: {exc}") from None
    for flag, style in [("--style", z.style)] + [("--styles", s) for s in z.styles or ()]:
        if style is None:
            continue
        try:
            style_prompts(bank, style)
        except FmevalError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
