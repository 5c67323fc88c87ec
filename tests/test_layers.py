"""Arrows point down only: the import layers of ``[tool.fmeval-layers]`` in pyproject.toml.

Every ``import`` of every module under ``fmeval/`` is read from its source (module
level, inside functions and under ``TYPE_CHECKING`` alike: a lazy import is still a
dependency), resolved to the module it names, and checked against the layer order.
A lower layer importing a higher one, a module no layer claims, or a reporter module
importing the model stack fails here with the offending file and line.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fmeval"


def contract() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["fmeval-layers"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (or package, for ``from pkg import name``)
    line: int


def imports_of(path: Path, known: set[str], name: str | None = None) -> list[Import]:
    """Every fmeval import in ``path`` (module ``name``), resolved to a module (relative imports too)."""
    src = name or module_name(path)
    package = src if path.name == "__init__.py" else src.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(src, a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "fmeval"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fmeval":
                continue
            for a in node.names:  # ``from fmeval.modes import knn`` imports the module fmeval.modes.knn
                sub = f"{target}.{a.name}"
                out.append(Import(src, sub if sub in known else target, node.lineno))
    return out


def layer_of(module: str, order: list[list[str]]) -> int | None:
    """The layer of the longest prefix that claims ``module`` (None: unclaimed)."""
    best: tuple[int, int] | None = None
    for i, prefixes in enumerate(order):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return best[0] if best else None


def all_imports() -> list[Import]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return [imp for f in files for imp in imports_of(f, known)]


def violations(imports: list[Import], spec: dict) -> list[str]:
    order = spec["order"]
    bad = []
    for imp in imports:
        if imp.target == "fmeval":  # the package root holds only __version__
            continue
        src, dst = layer_of(imp.source, order), layer_of(imp.target, order)
        if src is None or dst is None:
            bad.append(f"{imp.source}:{imp.line} -> {imp.target}: no layer claims "
                       f"{imp.source if src is None else imp.target}")
        elif dst > src:
            bad.append(f"{imp.source}:{imp.line} -> {imp.target} (layer {src} imports layer {dst})")
    for who, never in spec.get("independent", []):
        for imp in imports:
            if layer_of(imp.source, [[who]]) is not None and layer_of(imp.target, [never]) is not None:
                bad.append(f"{imp.source}:{imp.line} -> {imp.target} ({who} never imports it)")
    return bad


def test_no_import_points_up():
    bad = violations(all_imports(), contract())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_fails_on_an_upward_import(tmp_path):
    """The contract is not vacuous: planted upward imports (module level and in a function) are caught."""
    spec = contract()
    planted = [Import("fmeval.data.npz", "fmeval.cache", 3), Import("fmeval.config", "fmeval.training.loop", 9),
               Import("fmeval.report.export", "fmeval.training.loop", 5),
               Import("fmeval.new_module", "fmeval.errors", 1)]
    bad = violations(planted, spec)
    assert len(bad) == 4, bad
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from fmeval.modes.knn import run\n    from . import sibling\n")
    found = imports_of(f, {"fmeval.modes.knn", "fmeval.data.sibling"}, "fmeval.data.m")
    assert [i.target for i in found] == ["fmeval.modes.knn", "fmeval.data.sibling"]
    assert len(violations(found, spec)) == 1  # the in-function upward one


def test_every_layer_prefix_names_real_modules():
    files = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(f) for f in files}
    for prefixes in contract()["order"]:
        for p in prefixes:
            assert any(n == p or n.startswith(p + ".") for n in names), f"layer entry {p} names no module"


def readme_diagram() -> str:
    """The layer diagram as the README shows it (top layer first)."""
    rows = []
    for prefixes in reversed(contract()["order"]):
        rows.append("  ".join(p.removeprefix("fmeval.") for p in prefixes))
    return "\n".join(rows)


def test_readme_diagram_matches_the_contract():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- layers -->")
    block = text[start:].split("```", 2)[1].strip("\n")
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and set(ln.strip()) != {"|"}
             and not ln.strip().startswith(("↑", "|"))]
    assert "\n".join(lines) == readme_diagram(), "README layer diagram differs from pyproject's contract:\n" + readme_diagram()


def test_only_settings_reads_fmeval_environment_variables():
    """One reader (``settings.env``) of every FMEVAL_* variable: no other module reads the
    environment for one (writing one for child processes is allowed)."""
    import re

    from fmeval.settings import ENV_VARS

    bad = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f == PACKAGE / "settings.py":
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(environ\.get|environ\[|getenv)\(?[^)]*FMEVAL_", line) and not re.search(
                    r"environ\[[^]]+\]\s*=|setdefault", line):
                bad.append(f"{module_name(f)}:{n}: {line.strip()}")
    assert not bad, "read FMEVAL_* outside settings.env:\n" + "\n".join(bad)
    used = {m for f in PACKAGE.rglob("*.py") for m in re.findall(r"FMEVAL_[A-Z_]+", f.read_text(encoding="utf-8"))}
    assert used - set(ENV_VARS) <= {"FMEVAL_"}, f"variables missing from settings.ENV_VARS: {sorted(used - set(ENV_VARS))}"
