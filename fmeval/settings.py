"""Defaults a user sets once: ``fmeval.toml`` or ``[tool.fmeval]`` in ``pyproject.toml``.

Each value is resolved as option > environment > file > built-in, and
``fmeval config`` shows which one won. Only settings that say *where* and
*how* (folders, device, precision) or what to run by default (model,
dataset) can be set here; what a protocol defines is never a user default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmeval.errors import ConfigError


@dataclass(frozen=True)
class UserSetting:
    key: str
    path: str | None  # RunConfig field it fills (None: an environment-only location)
    env: str | None
    builtin: Any
    help: str


USER_SETTINGS: tuple[UserSetting, ...] = (
    UserSetting("data_root", "data_root", "FMEVAL_DATA_ROOT", None, "folder with the npz files (default: ~/.medmnist)"),
    UserSetting("reports_dir", "reports_dir", "FMEVAL_REPORTS_DIR", "reports", "where reports go"),
    UserSetting("cache_dir", None, "FMEVAL_CACHE_DIR", "~/.cache/fmeval", "feature cache"),
    UserSetting("adapters_dir", None, "FMEVAL_ADAPTERS_DIR", "adapters", "where fine-tuned adapters go"),
    UserSetting("device", "device", "FMEVAL_DEVICE", "auto", "auto, cpu, cuda or cuda:N"),
    UserSetting("precision", "precision", "FMEVAL_PRECISION", "auto", "auto, fp32 or bf16"),
    UserSetting("model", "model", None, None, "default --model"),
    UserSetting("dataset", "dataset", None, None, "default --dataset"),
    # experiment tracking (fmeval.tracking): not a run setting, so no RunConfig path
    UserSetting("track", None, "FMEVAL_TRACK", None, "default --track: trackers, comma-separated (wandb, mlflow, "
                "tensorboard, none)"),
)
BY_KEY = {s.key: s for s in USER_SETTINGS}

# -- the environment ------------------------------------------------------------
#: Every environment variable fmeval reads, and what it sets. :func:`env` is the only
#: reader (tests/test_layers.py checks no other module reads one), so this table is
#: the whole list a user can set.
ENV_VARS: dict[str, str] = {
    "FMEVAL_DATA_ROOT": "folder with the dataset files",
    "FMEVAL_REPORTS_DIR": "where reports go (default ./reports)",
    "FMEVAL_CACHE_DIR": "feature cache (default $XDG_CACHE_HOME/fmeval or ~/.cache/fmeval)",
    "FMEVAL_ADAPTERS_DIR": "where fine-tuned adapters go (default ./adapters)",
    "FMEVAL_DEVICE": "default --device",
    "FMEVAL_PRECISION": "default --precision",
    "FMEVAL_WEIGHTS_DIR": "weights store (default <cache>/weights)",
    "FMEVAL_WEIGHTS_MIRROR": "base URL that replaces the weights' own download URLs",
    "FMEVAL_OFFLINE": "1: never download weights",
    "FMEVAL_PROMPTS_DIR": "extra folders searched for prompt banks (os.pathsep-separated)",
    "FMEVAL_PROGRESS": "0: no progress bars",
    "FMEVAL_TRACK": "default --track (comma-separated trackers: wandb, mlflow, tensorboard; none: off)",
    "FMEVAL_FT_STOP_AFTER_EPOCH": "test hook: stop fine-tuning after this epoch, as if killed",
    "FMEVAL_DECODE_WORKERS": "processes that decode a user dataset's images (default: every usable core)",
    "FMEVAL_LEADERBOARD_TOKEN": "API token of `fmeval submit` (default --token)",
    "FMEVAL_SERVER_SETTINGS": "set by `fmeval serve --workers N` for its worker processes (JSON settings)",
}


def env(name: str) -> str | None:
    """The value of one of fmeval's environment variables; ``None`` when unset or empty."""
    if name not in ENV_VARS:
        raise KeyError(f"{name} is not one of fmeval's environment variables")
    return os.environ.get(name) or None


def cache_root() -> Path:
    """The feature cache folder (also holds the weights store and the memo files)."""
    custom = env("FMEVAL_CACHE_DIR")
    if custom:
        return Path(custom).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fmeval"


def reports_root() -> Path:
    return Path(env("FMEVAL_REPORTS_DIR") or "reports")


def adapters_root() -> Path:
    return Path(env("FMEVAL_ADAPTERS_DIR") or "adapters").expanduser()


def data_root() -> Path | None:
    """``$FMEVAL_DATA_ROOT`` (None: the dataset layer's own default)."""
    root = env("FMEVAL_DATA_ROOT")
    return Path(root).expanduser() if root else None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return {}
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: not UTF-8 text.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None


def _fmeval_table(path: Path, doc: dict) -> Any:
    """``[tool.fmeval]`` of a pyproject.toml, checking each level is a table (another tool's file
    may hold anything under [tool], but not where fmeval looks)."""
    tool = doc.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: [tool] must be a table, not {type(tool).__name__}.")
    table = tool.get("fmeval", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.fmeval] must be a table, not {type(table).__name__}.")
    return table


def _check_types(path: Path, table: dict) -> None:
    """Every user setting is a folder or a name: a non-empty string. A TOML table or a boolean
    would otherwise become a folder named ``{'a': 1}`` or ``True``."""
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            shown = f"{type(value).__name__} {value!r}" if not isinstance(value, str) else "an empty string"
            raise ConfigError(f"{path}: {key} must be a non-empty string (a {BY_KEY[key].help}), not {shown}.")


def file_settings(cwd: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Settings from ``fmeval.toml`` (preferred) or ``pyproject.toml [tool.fmeval]`` in ``cwd``."""
    cwd = Path(cwd or Path.cwd())
    for path, getter in ((cwd / "fmeval.toml", lambda p, d: d), (cwd / "pyproject.toml", _fmeval_table)):
        if path.exists():
            table = getter(path, _read_toml(path))
            if table:
                unknown = sorted(set(table) - set(BY_KEY))
                if unknown:
                    raise ConfigError(
                        f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(BY_KEY)}."
                    )
                _check_types(path, table)
                return dict(table), str(path)
    return {}, None


def resolve(key: str, option: Any = None, cwd: Path | None = None) -> tuple[Any, str]:
    """(value, source) of one user setting: option > environment > file > built-in."""
    s = BY_KEY[key]
    if option is not None:
        return option, "option"
    if s.env and env(s.env):
        return env(s.env), f"environment ({s.env})"
    table, where = file_settings(cwd)
    if key in table:
        return table[key], f"file ({where})"
    return s.builtin, "built-in"


def apply_to_environment(cwd: Path | None = None) -> None:
    """Export file-configured locations (cache, adapters) for code that reads the environment."""
    table, _ = file_settings(cwd)
    for s in USER_SETTINGS:
        if s.env and s.key in table and not env(s.env) and s.path is None and s.key != "track":
            os.environ[s.env] = str(Path(str(table[s.key])).expanduser())
