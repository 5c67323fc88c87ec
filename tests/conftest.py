"""Test-wide settings: never touch the network, never write outside tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Hub lookups hang ~30 s before failing without these; offline they fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_PNEUMONIA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache and report folders."""
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FMEVAL_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / "adapters"))
    yield


@pytest.fixture(scope="session")
def pneumonia_root() -> Path:
    """Folder holding the real PneumoniaMNIST (28 px) shared with this project."""
    if not SHARED_PNEUMONIA.exists():
        pytest.skip(f"real PneumoniaMNIST not found at {SHARED_PNEUMONIA}")
    return SHARED_PNEUMONIA.parent


SHARED_VESSEL = REPO.parent / "shared" / "data" / "vesselmnist3d.npz"


@pytest.fixture(scope="session")
def vessel_root() -> Path:
    """Folder holding the official VesselMNIST3D files (28^3 and 64^3).

    Missing data fails under CI=true (the 3D paths must run there) and skips
    elsewhere.
    """
    if not SHARED_VESSEL.exists():
        msg = f"real VesselMNIST3D not found at {SHARED_VESSEL}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_VESSEL.parent
