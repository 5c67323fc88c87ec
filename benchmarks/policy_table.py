"""Render ``fmeval/precision_policy.json`` (and a fidelity run) as Markdown for the README.

    python -m benchmarks.policy_table [--fidelity benchmarks/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmeval.device import POLICY_FILE

KEYS = ("cpu-fp32", "cpu-bf16", "cuda-bf16")


def _cl(entry: dict | None) -> str:
    if entry is None:
        return "default"
    models = ", ".join(f"{k} {v:.2f}x" for k, v in entry.get("models", {}).items())
    return f"{'**yes**' if entry['use'] else 'no'} ({models})"


def policy_markdown(policy: dict) -> str:
    lines = ["| family | bf16 fidelity (auto may pick bf16) | min cosine bf16 vs fp32 | bf16 speed-up, CPU | "
             + " | ".join(f"channels-last {k}" for k in KEYS) + " |",
             "|---|---|---|---|" + "---|" * len(KEYS)]
    for fam, p in sorted(policy["families"].items()):
        fid = p.get("bf16_fidelity", {})
        ok = "pass" if fid.get("ok") else ("**fail**: " + "; ".join(fid.get("outside_ci", [])) if fid else "not measured")
        cos = f"{fid['min_cosine']:.5f}" if "min_cosine" in fid else "-"
        cl = p.get("channels_last", {})
        sp = p.get("bf16_speed", {}).get("cpu")
        speed = "not measured" if sp is None else f"{sp['speedup']:.2f}x" + ("" if sp["use"] else " (**auto: fp32**)")
        lines.append(f"| {fam} | {ok} | {cos} | {speed} | " + " | ".join(_cl(cl.get(k)) for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", default=str(POLICY_FILE))
    ap.add_argument("--fidelity", default=None)
    args = ap.parse_args(argv)
    print(policy_markdown(json.loads(Path(args.policy).read_text())))
    if args.fidelity:
        from benchmarks.fidelity import to_markdown

        print(to_markdown(json.loads(Path(args.fidelity).read_text())))


if __name__ == "__main__":
    main()
