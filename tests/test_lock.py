"""constraints.txt is a full lock: reproducible by its script, and what is installed.

``scripts/lock.sh`` resolves pyproject.toml against PyPI as of a fixed date,
so regenerating must give the committed file byte for byte (this needs PyPI:
marked ``network``; skipped without it, except under CI=true where a missing
network is a failure). The environment the tests run in must hold exactly
the locked versions, which is what ``pip install -c constraints.txt`` gives.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import subprocess
import sys
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints.txt"
#: The platform the lock is resolved for (scripts/lock.sh).
LOCK_PYTHON = (3, 11)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and ";" not in version, f"not an exact pin: {line!r}"
            pins[_norm(name)] = version.strip()
    return pins


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/uv/", timeout=10):
            return True
    except OSError:
        return False


def test_lock_pins_every_dependency_exactly():
    pins = read_lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    for req in declared:
        name = _norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
        assert name in pins, f"{name} is a dependency but not in the lock"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert len(pins) > len(declared)  # transitive dependencies are pinned too


def test_breaking_majors_are_bounded():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {_norm(re.split(r"[<>=!~ ]", d, maxsplit=1)[0]): d for d in deps}
    assert "<0.30" in spec["typer"] and "<9" in spec["click"]


#: Optional extras scripts/lock.sh locks besides ``test`` (installed by their own scripts, not by
#: the README's ``pip install -c constraints.txt -e ".[test]"``).
LOCKED_EXTRAS = ("robustness", "data", "server", "server-test", "track-wandb", "track-mlflow", "track-tensorboard")


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def _reached(roots: set[str]) -> set[str]:
    """The installed distributions ``roots`` need, transitively (Requires-Dist without extras,
    markers evaluated for this interpreter)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(sys.version_info[:2] != LOCK_PYTHON or sys.platform != "linux"
                    or platform.machine() != "x86_64",
                    reason="the lock is resolved for Linux x86-64, Python 3.11")
def test_installed_environment_matches_the_lock():
    """Every locked package is installed at its locked version, except the packages of an optional
    extra that is not installed (a bare machine: the README's install) -- under CI=true every
    extra must be installed, so there nothing is excused."""
    from helpers import in_ci

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = _requirement_names(project["dependencies"] + project["optional-dependencies"]["test"])
    extras = {e: _requirement_names(project["optional-dependencies"][e]) for e in LOCKED_EXTRAS}
    absent = [e for e, names in extras.items() if not all(_installed(n) for n in names)]
    if absent and in_ci():
        pytest.fail(f"CI=true: the {', '.join(absent)} extra(s) are not installed (scripts/install-robustness.sh)")
    # a missing extra excuses the locked packages the base install does not reach (its transitive ones too)
    excused = (set(read_lock()) - _reached(needed)) if absent else set()
    wrong = {}
    for name, version in read_lock().items():
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in excused:
                continue  # the extra is not installed: nothing of it to check
            got = None
        if got != version:
            wrong[name] = f"installed {got}, locked {version}"
    assert not wrong, ("install with `pip install -c constraints.txt -e \".[test]\"`: "
                       f"{wrong}")


@pytest.mark.network
def test_committed_lock_is_what_the_lock_script_resolves(tmp_path):
    """scripts/lock.sh, keeping the committed versions where they still resolve, writes the
    committed file byte for byte: every dependency of pyproject.toml (extras included) is pinned,
    nothing else is, every pin satisfies the bounds at LOCK_DATE, and the header is current. A
    fresh resolution is not compared: the index may gain files dated before LOCK_DATE later."""
    if not _pypi_reachable():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PyPI is unreachable, so the lock cannot be checked")
        pytest.skip("PyPI is unreachable")
    out = tmp_path / "constraints.txt"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "lock.sh"), "-o", str(out), "--prefer", str(LOCK)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed, fresh = LOCK.read_text(), out.read_text()
    diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                        "constraints.txt (committed)", "scripts/lock.sh"))
    assert committed == fresh, f"the lock is stale; run scripts/lock.sh:\n{diff[:3000]}"
