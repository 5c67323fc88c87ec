"""Run folders, the run record and resumable training state.

A fine-tuning run owns ``$FMEVAL_ADAPTERS_DIR/<run_id>/`` (default
``./adapters``): ``run.json`` (full config, written before training starts,
so an interrupted run can be resumed from its folder alone),
``train_state.pt`` (rewritten atomically after every epoch) and, at the end,
the trained weights. Resuming restores model, optimiser, scheduler, RNG and
early-stopping state, so the continued run ends exactly where an
uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from fmeval.errors import ConfigError, ModelError
from fmeval.io import atomic_path, atomic_write_json, new_run_id
from fmeval.settings import adapters_root  # noqa: F401  (re-exported)

RUN_FILE = "run.json"
STATE_FILE = "train_state.pt"
RUN_FORMAT = "fmeval-finetune/1"

# Options that may differ on resume: where things are, not what is computed.
RESUME_FREE = frozenset({
    "resume", "adapter_dir", "device", "reports_dir", "data_root", "download", "md5", "use_cache", "n_boot",
})


def new_run_dir(method: str, model: str, dataset: str, size: int) -> Path:
    """``adapters/<run_id>``, named like the run's report folder under ``reports/``."""
    path = adapters_root() / new_run_id(f"finetune-{method}", model, dataset, size)
    path.mkdir(parents=True, exist_ok=False)
    return path


def write_run_record(folder: Path, record: dict) -> None:
    atomic_write_json(folder / RUN_FILE, {"format": RUN_FORMAT, **record})


def read_run_record(folder: str | Path) -> dict:
    folder = Path(folder).expanduser()
    path = folder / RUN_FILE
    if not folder.is_dir():
        raise ConfigError(f"run folder {folder} does not exist.")
    if not path.exists():
        raise ConfigError(f"{folder} has no {RUN_FILE}; it is not a fine-tuning run folder.")
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # incl. UnicodeDecodeError
        raise ConfigError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}).") from None
    if not isinstance(rec, dict):
        raise ConfigError(f"{path} is not a run record (expected a JSON object).")
    if rec.get("format") != RUN_FORMAT:
        raise ConfigError(
            f"{path} has format {rec.get('format')!r}; this fmeval reads {RUN_FORMAT!r} "
            "(written by another fmeval version?)."
        )
    if not isinstance(rec.get("config"), dict):
        raise ConfigError(f"{path} has no config object; the run record is damaged.")
    return rec


T = TypeVar("T")


def dataclass_from_record(cls: type[T], values: Any, where: str) -> T:
    """``cls(**values)`` for a section of a saved record, or one ConfigError line.

    An option this fmeval does not know means the record was written by a
    newer version: say so instead of failing inside a constructor.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be an object, not {type(values).__name__}.")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where} has option(s) this fmeval does not know ({', '.join(unknown)}): "
            "it was probably written by a newer fmeval; upgrade to use it."
        )
    try:
        return cls(**values)
    except TypeError as exc:  # a required option missing
        raise ConfigError(f"{where} is incomplete ({exc}).") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a saved ``.safetensors`` file; a damaged file is one ModelError line."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (truncated, bad header), OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(
            f"{path} is damaged or not a safetensors file ({first}); restore it or re-run "
            "the fine-tuning."
        ) from None


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts (nested), ignoring RESUME_FREE.

    An option the saved run does not have at all was added to fmeval after the
    run started; it matches when it is off now (False/None, how new options
    default), so upgrading fmeval does not make interrupted runs unresumable.
    """
    out: list[str] = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_FREE:
            continue
        if key not in saved and _off(current.get(key)):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif _norm(a) != _norm(b):
            out.append(f"{prefix}{key}: run has {a!r}, now {b!r}")
    return out


def _off(v: Any) -> bool:
    """An option (or a whole new settings section, e.g. ``multidomain``) left at "off"."""
    if isinstance(v, dict):
        return all(_off(x) for x in v.values())
    return v is None or v is False or (isinstance(v, (list, tuple)) and not v)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def check_resume(saved_config: dict, current_config: dict, folder: Path) -> None:
    diffs = config_differences(saved_config, current_config)
    if diffs:
        raise ConfigError(
            f"--resume {folder}: the options differ from the interrupted run "
            f"({'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}). "
            "Resume with the run's own options."
        )


@dataclass
class TrainState:
    """Everything needed to continue training after epoch ``epoch``."""

    epoch: int  # last completed epoch (0-based)
    model: dict[str, torch.Tensor]  # the entries of the method's state_keys
    optimizer: dict
    scheduler: dict
    rng: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metric: float
    best_val_loss: float
    bad_epochs: int
    done: bool
    curves: dict[str, list[float]] = field(default_factory=dict)
    epoch_times: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def save_train_state(folder: Path, state: TrainState) -> None:
    """Write ``train_state.pt`` atomically: a crash mid-write keeps the previous epoch's."""
    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save(state.to_dict(), tmp)


def load_train_state(folder: Path) -> TrainState | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(
            f"cannot read training state {path} ({first}); the run cannot be resumed from it."
        ) from None
    return dataclass_from_record(TrainState, raw, str(path))


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
