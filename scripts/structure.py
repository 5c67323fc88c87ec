"""Structure numbers of the package (issue 19): size, the largest module and function, and
the files one command runs through.

    python scripts/structure.py                      # sizes
    python scripts/structure.py --trace knn --model vit-s16 --tiny ...   # + files a command calls into

``--trace`` runs the CLI in this process under ``sys.setprofile`` and lists every fmeval
source file in which a function was called by the run (calls made while a module is being
imported - registrations, decorators - do not count), and
the calls that climb the layers of ``[tool.fmeval-layers]`` (caller in a lower layer than
the callee). Point ``PYTHONPATH`` at another checkout to measure that one.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The layer contract has one reader: the test that enforces it.
sys.path.insert(0, str(REPO / "tests"))
from test_layers import layer_of  # noqa: E402


def package_dir() -> Path:
    import fmeval

    return Path(fmeval.__file__).resolve().parent


def module_of(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sizes(pkg: Path) -> dict:
    files = sorted(pkg.rglob("*.py"))
    lines = {f: len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    longest = ("", 0)
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > longest[1]:
                    longest = (f"{module_of(f, pkg)}.{node.name}", n)
    big = max(lines, key=lines.get)
    return {"files": len(files), "lines": sum(lines.values()), "largest_module": (module_of(big, pkg), lines[big]),
            "largest_function": longest, "modules_over_500": sorted(module_of(f, pkg) for f, n in lines.items() if n > 500)}


def trace(argv: list[str], pkg: Path) -> dict:
    order = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["fmeval-layers"]["order"]
    root = str(pkg)
    files: set[str] = set()
    climbs: set[tuple[str, str]] = set()

    importing = [0]  # depth of module bodies being executed: what they call is import, not the run

    def prof(frame, event, arg):
        code = frame.f_code
        if code.co_name == "<module>":
            importing[0] += 1 if event == "call" else -1 if event == "return" else 0
            return
        if event != "call" or importing[0] > 0 or not code.co_filename.startswith(root):
            return
        callee = module_of(Path(code.co_filename), pkg)
        files.add(callee)
        back = frame.f_back
        if back is not None and back.f_code.co_filename.startswith(root):
            caller = module_of(Path(back.f_code.co_filename), pkg)
            lc, le = layer_of(caller, order), layer_of(callee, order)
            if lc is not None and le is not None and le > lc:
                climbs.add((caller, callee))

    from fmeval.cli import main

    sys.setprofile(prof)
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.setprofile(None)
    return {"exit": code, "files": sorted(files), "climbs": sorted(climbs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", nargs=argparse.REMAINDER, help="a CLI command to trace (everything after it)")
    args = ap.parse_args()
    pkg = package_dir()
    s = sizes(pkg)
    print(f"{pkg}: {s['files']} files, {s['lines']:,} lines; largest module {s['largest_module'][0]} "
          f"({s['largest_module'][1]} lines), largest function {s['largest_function'][0]} "
          f"({s['largest_function'][1]} lines); over 500 lines: {', '.join(s['modules_over_500']) or 'none'}")
    if args.trace:
        t = trace(args.trace, pkg)
        print(f"fmeval {' '.join(args.trace[:2])}: exit {t['exit']}, {len(t['files'])} files, "
              f"{len(t['climbs'])} upward call edges (layers of pyproject's contract)")
        print("  files: " + ", ".join(f.removeprefix("fmeval.") for f in t["files"]))
        for a, b in t["climbs"]:
            print(f"  climbs: {a} -> {b}")


if __name__ == "__main__":
    main()
