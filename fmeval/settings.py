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
)
BY_KEY = {s.key: s for s in USER_SETTINGS}


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None


def file_settings(cwd: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Settings from ``fmeval.toml`` (preferred) or ``pyproject.toml [tool.fmeval]`` in ``cwd``."""
    cwd = Path(cwd or Path.cwd())
    for path, getter in ((cwd / "fmeval.toml", lambda d: d),
                         (cwd / "pyproject.toml", lambda d: d.get("tool", {}).get("fmeval", {}))):
        if path.exists():
            table = getter(_read_toml(path))
            if table:
                unknown = sorted(set(table) - set(BY_KEY))
                if unknown:
                    raise ConfigError(
                        f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(BY_KEY)}."
                    )
                return dict(table), str(path)
    return {}, None


def resolve(key: str, option: Any = None, cwd: Path | None = None) -> tuple[Any, str]:
    """(value, source) of one user setting: option > environment > file > built-in."""
    s = BY_KEY[key]
    if option is not None:
        return option, "option"
    if s.env and os.environ.get(s.env):
        return os.environ[s.env], f"environment ({s.env})"
    table, where = file_settings(cwd)
    if key in table:
        return table[key], f"file ({where})"
    return s.builtin, "built-in"


def apply_to_environment(cwd: Path | None = None) -> None:
    """Export file-configured locations (cache, adapters) for code that reads the environment."""
    table, _ = file_settings(cwd)
    for s in USER_SETTINGS:
        if s.env and s.key in table and not os.environ.get(s.env) and s.path is None:
            os.environ[s.env] = str(Path(str(table[s.key])).expanduser())
