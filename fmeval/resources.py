"""Files that ship with fmeval: prompt banks, protocols, studies.

They must be found the same way from a source checkout (editable install, or
``PYTHONPATH`` pointing at the checkout) and from an installed wheel, where
there is no checkout at all. ``setup.py`` maps the top-level ``prompts/`` and
``studies/`` folders into the wheel as ``fmeval/_shipped/<kind>/``; protocols
live inside the package (``fmeval/protocols/``) and ship as package data.

Lookup order for a kind: the copy inside the installed package first, then the
checkout's top-level folder (only when fmeval is imported from a checkout, i.e.
the package sits next to a ``pyproject.toml``). Nothing here reads the current
working directory: shipped files resolve the same from any directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fmeval

#: The package's own folder (``.../site-packages/fmeval`` or ``<checkout>/fmeval``).
PACKAGE_DIR = Path(fmeval.__file__).resolve().parent

#: Sub-folder of the installed package that holds the mapped top-level folders.
SHIPPED_SUBDIR = "_shipped"


@dataclass(frozen=True)
class ShippedKind:
    """Where one kind of shipped file lives, installed and in a checkout."""

    in_package: str  # path relative to the package folder
    in_checkout: str | None  # top-level folder of a checkout (None: inside the package)
    pattern: str = "*.yaml"


SHIPPED_KINDS: dict[str, ShippedKind] = {
    "prompts": ShippedKind(f"{SHIPPED_SUBDIR}/prompts", "prompts"),
    "protocols": ShippedKind("protocols", None),
    "studies": ShippedKind(f"{SHIPPED_SUBDIR}/studies", "studies"),
}


def _kind(kind: str) -> ShippedKind:
    try:
        return SHIPPED_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown kind of shipped file {kind!r}; known: {', '.join(SHIPPED_KINDS)}"
        ) from None


def checkout_root() -> Path | None:
    """The source checkout fmeval is imported from, or ``None`` when installed."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def shipped_dir(kind: str) -> Path:
    """Folder holding the shipped files of ``kind`` ("prompts", "protocols", "studies").

    Returns the installed copy when there is one, else the checkout's folder.
    The folder may not exist (a kind nothing has been shipped for yet);
    :func:`shipped_files` then returns an empty list.
    """
    spec = _kind(kind)
    installed = PACKAGE_DIR / spec.in_package
    if installed.is_dir() or spec.in_checkout is None:
        return installed
    root = checkout_root()
    return root / spec.in_checkout if root is not None else installed


def shipped_files(kind: str) -> list[Path]:
    """Every shipped file of ``kind``, sorted by name."""
    folder = shipped_dir(kind)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(_kind(kind).pattern) if p.is_file())


def find_shipped(kind: str, name: str) -> Path | None:
    """The shipped file named ``name`` (``pneumonia`` or ``pneumonia.yaml``), if any."""
    stem = strip_yaml_suffix(name.strip()).lower()
    for path in shipped_files(kind):
        if path.stem.lower() == stem:
            return path
    return None


def strip_yaml_suffix(name: str) -> str:
    """``pneumonia.yaml`` / ``pneumonia.yml`` -> ``pneumonia``; other names unchanged."""
    for suffix in (".yaml", ".yml"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


__all__ = [
    "PACKAGE_DIR",
    "SHIPPED_KINDS",
    "ShippedKind",
    "checkout_root",
    "find_shipped",
    "shipped_dir",
    "shipped_files",
    "strip_yaml_suffix",
]
