"""Where a number came from: code version, library versions, hardware.

A score is only comparable to another if both were produced by the same code
and comparable libraries (a timm or open_clip upgrade can change weights and
preprocessing). Every report embeds this block. It deliberately leaves out the
hostname and user name: reports get shared.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import fmeval

# Distribution names (as pip knows them) whose version can change a result.
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "open_clip_torch",
    "transformers",
    "peft",
    "scikit-learn",
    "numpy",
    "medmnist",
)
_GIT_TIMEOUT_S = 5.0


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(package_dir: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout fmeval is imported from.

    Only when fmeval's own files are tracked by that repository: an installed
    copy in site-packages that happens to sit inside some other repository
    must not report that repository's commit.
    """
    pkg = Path(package_dir or Path(fmeval.__file__).resolve().parent)
    if _git(["ls-files", "--error-unmatch", "__init__.py"], pkg) is None:
        return {"commit": None, "dirty": None}
    commit = _git(["rev-parse", "HEAD"], pkg)
    status = _git(["status", "--porcelain", "--untracked-files=no"], pkg)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info() -> dict[str, Any]:
    """Accelerator facts; torch is imported only here, and its absence is not an error."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - a broken torch install must not break a report
        return {"cuda_available": None, "cuda_device": None}
    info: dict[str, Any] = {
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda_device": None,
        "cuda_device_count": 0,
        "cuda_version": torch.version.cuda,
        "cudnn_version": None,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if info["cuda_available"]:
        info["cuda_device_count"] = torch.cuda.device_count()
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cudnn_version"] = torch.backends.cudnn.version()
    return info


@functools.lru_cache(maxsize=1)
def _collect() -> dict[str, Any]:
    return {
        "fmeval_version": fmeval.__version__,
        "git": git_info(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "device": device_info(),
    }


def collect_provenance() -> dict[str, Any]:
    """Provenance of this process, computed once (git and CUDA queries are slow).

    Returns a fresh copy so a caller editing its report cannot alter the cache.
    """
    return copy.deepcopy(_collect())
