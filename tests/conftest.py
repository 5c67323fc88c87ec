"""Test-wide settings: never touch the network, never write outside tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Hub lookups hang ~30 s before failing without these; offline they fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import in_ci  # noqa: E402 - after the offline settings

REPO = Path(__file__).resolve().parents[1]
SHARED_PNEUMONIA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache and report folders."""
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FMEVAL_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / "adapters"))
    for var in ("FMEVAL_WEIGHTS_DIR", "FMEVAL_WEIGHTS_MIRROR", "FMEVAL_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # weights cache under the per-test cache dir
    yield


@pytest.fixture
def quiet_one_thread(monkeypatch):
    """No progress bars, one intra-op thread: tiny models gain nothing from threads, and on a
    busy 2-core machine extra threads spin against other processes. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("quiet_one_thread")``."""
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def require_shared(path: Path) -> Path:
    """The shared real data: under CI=true a missing file FAILS the test (CI must never go
    green without the real-data tests); elsewhere it skips with the reason."""
    if not path.exists():
        msg = f"real data not found at {path} (the project's ../shared/data)"
        if in_ci():
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def pneumonia_root() -> Path:
    """Folder holding the real PneumoniaMNIST (28 px) shared with this project."""
    return require_shared(SHARED_PNEUMONIA).parent


SHARED_VESSEL = REPO.parent / "shared" / "data" / "vesselmnist3d.npz"


@pytest.fixture(scope="session")
def vessel_root() -> Path:
    """Folder holding the official VesselMNIST3D files (28^3 and 64^3)."""
    return require_shared(SHARED_VESSEL).parent
