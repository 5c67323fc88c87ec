"""The headline commands, typed as a user types them, against an installed wheel.

A wheel is built from the checkout and installed (no editable link, no
``PYTHONPATH``) into a throw-away venv; each command then runs as
``fmeval ...`` from an empty temporary directory, with the real
PneumoniaMNIST and no network. This is what catches data files that only
exist in a checkout, and usage errors that only a real process shows.

Speed: the venv reuses the running environment's installed dependencies
through a ``.pth`` file (torch & co. are not installed again), so only the
wheel itself is installed, offline, in seconds.

To add a command, append a :class:`Case` to :data:`CASES`, e.g.
``Case("study run studies/quick.yaml", files=("reports/*/results.json",))``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmeval.resources import SHIPPED_KINDS, shipped_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Top-level folders of a working checkout that are outputs, not source.
_SKIP_TOP = {".git", ".venv", "build", "dist", "reports", "adapters", ".pytest_cache"}


@dataclass(frozen=True)
class Case:
    """One command line and what a user must see."""

    cmd: str  # after "fmeval", exactly as typed
    exit: int = 0
    stdout: tuple[str, ...] = ()  # substrings expected on stdout
    stderr: tuple[str, ...] = ()  # substrings expected on stderr
    files: tuple[str, ...] = ()  # globs that must match under the working directory
    timeout: int = 600

    @property
    def id(self) -> str:
        return self.cmd or "(no arguments)"


CASES: list[Case] = [
    Case("prompts ls", stdout=("pneumonia", "pneumoniamnist", "chestmnist")),
    Case("zeroshot --model medclip --tiny --prompts pneumonia.yaml --dataset pneumoniamnist "
         "--bootstrap 50", files=("reports/*/results.json",)),
    # offline, no weights: one clear line naming every way out
    Case("zeroshot --model medclip --prompts pneumonia.yaml --dataset pneumoniamnist", exit=2,
         stderr=("fmeval weights fetch medclip", "--weights", "--tiny")),
    Case("knn --model vit-s16 --tiny --dataset pneumoniamnist --bootstrap 50",
         files=("reports/*/results.json",)),
    Case("knn", exit=2, stderr=("--model",)),
    Case("knn --bogus", exit=2, stderr=("--bogus",)),
    Case("weights ls", stdout=("medclip", "medvit-small", "missing")),
    Case("prompts compare --model medclip --tiny --prompts pneumonia.yaml --dataset pneumoniamnist "
         "--bootstrap 50", stdout=("prompt styles (val)", "selected on validation"),
         files=("reports/*/results.json",)),
    Case("finetune --lora", exit=2, stderr=("--model", "--dataset")),
    # the shipped study resolves from an empty folder; planning and a dry run build no model
    Case("study plan studies/quick.yaml", stdout=("20 cells", "0 done")),
    Case("study run studies/quick.yaml --dry-run", stdout=("would run 20 cells",)),
]


# --------------------------------------------------------------------------- #
# Build and install
# --------------------------------------------------------------------------- #
def _source_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what a clean checkout would have)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True, timeout=60,
        ).stdout.decode()
        files = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in REPO.rglob("*") if p.is_file()]
    def keep(p: Path) -> bool:
        parts = p.relative_to(REPO).parts
        return p.is_file() and parts[0] not in _SKIP_TOP and "__pycache__" not in parts

    return [p for p in files if keep(p)]


def _copy_checkout(dest: Path) -> Path:
    for src in _source_files():
        target = dest / src.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{shlex.join(map(str, argv))}\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    bin: Path
    workdir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory, pneumonia_root) -> Installed:
    root = tmp_path_factory.mktemp("install")
    src = _copy_checkout(root / "src")
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(dist), str(src)], timeout=600)
    (wheel,) = dist.glob("fmeval-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    vpy = venv / "bin" / "python"
    site = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip())
    # The running environment's packages (torch, pip, ...) after the venv's own:
    # paths listed in a .pth are appended, and their own .pth files (such as an
    # editable fmeval's finder) are not executed.
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_outer_env.pth").write_text("\n".join(outer) + "\n")
    _run([str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "-q", str(wheel)], timeout=600)

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "FMEVAL_REPORTS_DIR", "FMEVAL_ADAPTERS_DIR", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", FMEVAL_PROGRESS="0",
               FMEVAL_DATA_ROOT=str(pneumonia_root), FMEVAL_CACHE_DIR=str(root / "cache"),
               PYTHONNOUSERSITE="1")
    workdir = root / "work"
    workdir.mkdir()
    where = _run([str(vpy), "-c", "import fmeval; print(fmeval.__file__)"], cwd=workdir,
                 env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"fmeval imported from {where}, not the wheel"
    return Installed(wheel, venv, venv / "bin", workdir, env)


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
def test_wheel_ships_every_shipped_file(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for kind, spec in SHIPPED_KINDS.items():
        for path in shipped_files(kind):  # in the checkout
            assert f"fmeval/{spec.in_package}/{path.name}" in names, f"{kind}: {path.name}"
    assert "fmeval/_shipped/prompts/pneumonia.yaml" in names


def test_installed_package_finds_its_files_outside_any_checkout(installed):
    code = ("import json; from fmeval.resources import SHIPPED_KINDS, shipped_dir, shipped_files;"
            "print(json.dumps({k: [str(shipped_dir(k)), [p.name for p in shipped_files(k)]]"
            " for k in SHIPPED_KINDS}))")
    found = json.loads(_run([str(installed.bin / "python"), "-c", code], cwd=installed.workdir,
                            env=installed.env).stdout)
    for kind, (folder, files) in found.items():
        assert Path(folder).is_relative_to(installed.venv), (kind, folder)
        assert files == [p.name for p in shipped_files(kind)], kind


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_headline_command(installed, case: Case):
    before = set(installed.workdir.rglob("*"))
    proc = subprocess.run([str(installed.bin / "fmeval"), *shlex.split(case.cmd)],
                          cwd=installed.workdir, env=installed.env, capture_output=True,
                          text=True, timeout=case.timeout)
    shown = f"$ fmeval {case.cmd}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == case.exit, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    for text in case.stdout:
        assert text in proc.stdout, shown
    for text in case.stderr:
        assert text in proc.stderr, shown
    if case.exit:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown  # ends in one error line
    new = set(installed.workdir.rglob("*")) - before
    for pattern in case.files:
        assert set(installed.workdir.glob(pattern)) & new, f"no new {pattern}\n{shown}"
