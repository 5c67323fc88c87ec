#!/usr/bin/env python3
"""Summarise a mutmut run (./mutants/**/*.meta) over the scope of scripts/mutation.sh.

usage: scripts/mutation_report.py [--seconds S] [--equivalent FILE] [-o OUT.json] PATTERN...

PATTERN: the mutant-name globs the run used. Writes counts (mutants, killed,
survived, timeout, ...), the kill ratio, per-function counts and every
surviving mutant with its diff. A survivor matching an entry of ``--equivalent``
(JSON list of {"function", "diff", "why"}) carries that reason: entries match on the
function and the changed lines, not on mutmut's mutant number, which shifts
whenever the function is edited.
"""

from __future__ import annotations

import argparse
import difflib
import re
import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed", None: "not checked",
          -11: "segfault", -9: "segfault"}


def _body(path: Path, func: str) -> list[str]:
    """The lines of ``def <func>(`` in a mutmut-generated file, up to the next def at its indent."""
    lines = path.read_text().splitlines()
    for i, ln in enumerate(lines):
        m = re.match(r"(\s*)(async\s+)?def " + re.escape(func) + r"\(", ln)
        if m:
            indent, out = m.group(1), []
            for nxt in lines[i + 1:]:
                if nxt.strip() and not nxt.startswith(indent + " ") and not nxt.startswith(indent + ")"):
                    break
                out.append(nxt)
            return out
    return []


def _diff(key: str) -> list[str]:
    """The changed lines of one mutant (what ``mutmut show`` prints, without its ~4 s start-up)."""
    module, _, func = key.rpartition(".")
    path = Path("mutants") / (module.replace(".", "/") + ".py")
    base = func.rsplit("__mutmut_", 1)[0]
    orig, mutant = _body(path, base + "__mutmut_orig"), _body(path, func)
    return [ln for ln in difflib.unified_diff(orig, mutant, lineterm="", n=0)
            if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]


def _function(name: str) -> str:
    return name.rsplit("__mutmut_", 1)[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("patterns", nargs="+")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the run")
    ap.add_argument("--equivalent", type=Path, default=None)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    entries = json.loads(args.equivalent.read_text()) if args.equivalent and args.equivalent.exists() else []
    reasons = {(e["function"], tuple(e["diff"])): e["why"] for e in entries}

    status: dict[str, str] = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(key, p) for p in args.patterns):
                status[key] = STATUS.get(code, "suspicious")
    if not status:
        print("no mutants match the scope; run scripts/mutation.sh first", file=sys.stderr)
        return 1
    counts = Counter(status.values())
    tested = len(status) - counts["skipped"] - counts["not checked"]
    killed = counts["killed"] + counts["timeout"]
    per_function: dict[str, Counter] = defaultdict(Counter)
    for key, s in status.items():
        per_function[_function(key)][s] += 1
    survivors = []
    for key in sorted(k for k, s in status.items() if s == "survived"):
        lines = _diff(key)
        survivors.append({"mutant": key, "diff": lines, "equivalent": reasons.get((_function(key), tuple(lines)))})
    n_equivalent = sum(1 for s in survivors if s["equivalent"])
    report = {
        "tool": "mutmut 3.8.1",
        "command": "scripts/mutation.sh",
        "scope": args.patterns,
        "wall_time_s": args.seconds,
        "mutants": len(status),
        "killed": counts["killed"],
        "timeout": counts["timeout"],
        "survived": counts["survived"],
        "no_tests": counts["no tests"],
        "other": {k: v for k, v in counts.items() if k not in ("killed", "timeout", "survived", "no tests")},
        "kill_ratio": round(killed / tested, 4) if tested else None,
        "kill_ratio_rule": "(killed + timeout) / (mutants - skipped - not checked); 'no tests' counts as not killed",
        "equivalent_survivors": n_equivalent,
        "kill_ratio_excluding_equivalent": round(killed / (tested - n_equivalent), 4) if tested > n_equivalent else None,
        "per_function": {f: dict(c) for f, c in sorted(per_function.items())},
        "survivors": survivors,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"written {args.output}")
    print(f"mutants {report['mutants']}  killed {report['killed']}  timeout {report['timeout']}  "
          f"survived {report['survived']} ({n_equivalent} equivalent)  no tests {report['no_tests']}  "
          f"kill ratio {report['kill_ratio']} ({report['kill_ratio_excluding_equivalent']} without the equivalent)")
    for s in survivors:
        print(f"  survived {s['mutant']}" + (f"  (equivalent: {s['equivalent']})" if s["equivalent"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
