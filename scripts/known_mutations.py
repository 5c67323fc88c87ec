#!/usr/bin/env python3
"""Apply the hand-made mutations of issue 14, one at a time, and name the tests that catch each.

Every mutation is a plain text replacement in a *copy* of the source tree
(fmeval/, tests/, prompts/, studies/ under a temporary folder), so the checkout
is never edited. For each one the listed test files run against the mutated
copy; the mutation is caught when at least one test fails. The unmutated copy
must pass the same files first.

usage: scripts/known_mutations.py [-o FILE.json] [ID ...]
       (default: every mutation; writes benchmarks/results/known_mutations.json)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEL, REC, INV = "tests/test_selection.py", "tests/test_records.py", "tests/test_test_labels_unused.py"

#: id -> (what the slip is, file, [(old, new), ...], test files that must catch it)
MUTATIONS: dict[str, tuple[str, str, list[tuple[str, str]], list[str]]] = {
    "knn-k-on-test": (
        "k chosen by the test metric instead of the validation metric",
        "fmeval/modes/knn.py",
        [('    k = select_k(sweep, s.select_metric)["k"]',
          '    _t = knn_predict(train, y_train, fz.features["test"], ks, **common); '
          '_yt = fz.labels["test"]\n'
          '    k = select_k([{"k": kk, f"val_{s.select_metric}": float(metric_fn(task, _yt, _t[kk].cpu().numpy()))}'
          ' for kk in ks], s.select_metric)["k"]')],
        [SEL, INV + "::test_garbage_test_labels_change_no_choice_and_no_validation_number[knn]"],
    ),
    "probe-head-by-train-loss": (
        "linear-probe head chosen by lowest training loss instead of best validation loss",
        "fmeval/probes/linear.py",
        [("    k = int(torch.argmin(best_loss))", "    k = int(torch.argmin(last_train))")],
        [SEL],
    ),
    "probe-stats-from-val": (
        "standardisation statistics from the validation split instead of train",
        "fmeval/probes/linear.py",
        [("        mu, sd = _mean_std(xt)", "        mu, sd = _mean_std(x_val.float() if has_val else xt)")],
        [SEL],
    ),
    "finetune-keeps-last-epoch": (
        "fine-tuning keeps the last epoch instead of the best validation epoch",
        "fmeval/training/loop.py",
        [("        if improved or state.best_epoch == 0 or not self.data.has_val:", "        if True:")],
        [SEL],
    ),
    "finetune-no-early-stopping": (
        "early stopping on validation loss never triggers",
        "fmeval/training/loop.py",
        [("        state.done = epoch + 1 >= self.cfg.epochs or (0 < self.cfg.patience <= state.bad_epochs)",
          "        state.done = epoch + 1 >= self.cfg.epochs")],
        [SEL],
    ),
    "baseline-prior-from-test": (
        "majority-baseline prior from the test labels instead of train",
        "fmeval/modes/base.py",
        [("    prior = class_prior(task, train_labels, n_cls)",
          "    prior = class_prior(task, test_labels, n_cls)")],
        [SEL],
    ),
    "knn-temperature-probe-default": (
        "kNN temperature 0.07 -> 0.7 (knn_predict's default)",
        "fmeval/probes/knn.py",
        [("    temperature: float = 0.07,", "    temperature: float = 0.7,")],
        [SEL],
    ),
    "knn-temperature-config-default": (
        "kNN temperature 0.07 -> 0.7 (the config / CLI default)",
        "fmeval/config/sections.py",
        [("    temperature: float = 0.07  #", "    temperature: float = 0.7  #")],
        [SEL],
    ),
    "euclidean-no-float64-rerank": (
        "Euclidean kNN's float64 re-ranking switched off (re-ranked in float32 instead)",
        "fmeval/probes/knn_search.py",
        [(".view(*cand.shape, -1).double()  # [s, m, D]\n    t64 = test.double()",
          ".view(*cand.shape, -1).float()  # [s, m, D]\n    t64 = test.float()")],
        [SEL],
    ),
    "argmax-ties-highest-class": (
        "argmax ties go to the highest class index",
        "fmeval/metrics/core.py",
        [("    return np.argmax(s, axis=1).astype(np.int64)",
          "    return (s.shape[1] - 1 - np.argmax(s[:, ::-1], axis=1)).astype(np.int64)")],
        [SEL],
    ),
    "bootstrap-5-95": (
        "bootstrap CI at 5/95 % instead of 2.5/97.5 % (percentile_ci)",
        "fmeval/metrics/resampling.py",
        [("    alpha = (1.0 - level) / 2.0", "    alpha = 1.0 - level")],
        [SEL],
    ),
    "bootstrap-level-90": (
        "bootstrap CI level 0.90 instead of 0.95 (compute_metrics default)",
        "fmeval/metrics/summary.py",
        [("    ci: float = 0.95,\n    seed: int = 0,\n    prior", "    ci: float = 0.90,\n    seed: int = 0,\n    prior")],
        [SEL],
    ),
    "cache-key-without-preprocess": (
        "preprocessing (input size, mean/std, interpolation) dropped from the feature cache key",
        "fmeval/pipeline.py",
        [('        "transform": transform.as_dict(),\n', "")],
        [REC],
    ),
    "provenance-no-commit": (
        "git commit always omitted from provenance",
        "fmeval/provenance.py",
        [('    commit = _git(["rev-parse", "HEAD"], pkg)', "    commit = None")],
        [REC],
    ),
    "results-key-renamed": (
        "a results.json field renamed (selection -> selections) without a schema-version bump",
        "fmeval/report/schema.py",
        [('"precision", "selection", "test", "val",', '"precision", "selections", "test", "val",'),
         ('            "selection": jsonable(self.selection),', '            "selections": jsonable(self.selection),')],
        [REC],
    ),
    "probe-bias-fold-sign": (
        "sign of the bias fold in the exported linear probe flipped",
        "fmeval/probes/linear.py",
        [("    bias = b_std - mu @ weight", "    bias = b_std + mu @ weight")],
        [SEL],
    ),
    "bank-missing-class-unchecked": (
        "a prompt bank missing a class is not checked where classes are read",
        "fmeval/prompts/schema.py",
        [("    if missing:\n        raise PromptBankError(\n            f\"classes: missing",
          "    if False:\n        raise PromptBankError(\n            f\"classes: missing")],
        [REC],
    ),
    "style-skipping-class-unchecked": (
        "a style whose prompts skip a class is not checked (raw KeyError later)",
        "fmeval/prompts/schema.py",
        [("        if missing:\n            labels = {k: spec.classes[k].name",
          "        if False:\n            labels = {k: spec.classes[k].name")],
        [REC],
    ),
}

COPY = ("fmeval", "tests", "prompts", "studies", "pyproject.toml", "setup.py")


def _copy_tree(dest: Path) -> None:
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def _pytest(root: Path, targets: list[str]) -> tuple[int, list[str], float]:
    env = {**os.environ, "PYTHONPATH": str(root), "FMEVAL_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *targets],
                          cwd=root, env=env, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)))
    return proc.returncode, failed, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", help="mutation ids (default: all)")
    ap.add_argument("-o", "--output", default=str(REPO / "benchmarks/results/known_mutations.json"))
    args = ap.parse_args()
    ids = args.ids or list(MUTATIONS)
    unknown = [i for i in ids if i not in MUTATIONS]
    if unknown:
        ap.error(f"unknown mutation(s) {unknown}; known: {', '.join(MUTATIONS)}")
    results, ok = {}, True
    with tempfile.TemporaryDirectory(prefix="fmeval-mut-") as tmp:
        clean = Path(tmp) / "clean"
        _copy_tree(clean)
        files = sorted({t.split("::")[0] for i in ids for t in MUTATIONS[i][3]})
        code, failed, secs = _pytest(clean, files)
        print(f"unmutated: exit {code} in {secs:.0f}s", flush=True)
        if code != 0:
            print("the unmutated tree must pass first; failing:", *failed, sep="\n  ")
            return 1
        for mid in ids:
            what, rel, edits, targets = MUTATIONS[mid]
            root = Path(tmp) / mid
            _copy_tree(root)
            path = root / rel
            text = path.read_text()
            for old, new in edits:
                if text.count(old) != 1:
                    print(f"{mid}: the code to mutate was not found exactly once in {rel}; update this script")
                    return 1
                text = text.replace(old, new)
            path.write_text(text)
            code, failed, secs = _pytest(root, targets)
            caught = code != 0 and bool(failed)
            ok &= caught
            results[mid] = {"what": what, "file": rel, "caught": caught, "failing_tests": failed,
                            "seconds": round(secs, 1)}
            print(f"{'CAUGHT' if caught else 'SURVIVED'} {mid} ({secs:.0f}s): {len(failed)} failing", flush=True)
            for f in failed:
                print(f"    {f}")
            shutil.rmtree(root)
    out = Path(args.output)
    if len(ids) == len(MUTATIONS):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"mutations": results, "caught": sum(r["caught"] for r in results.values()),
                                   "total": len(results)}, indent=2) + "\n")
        print(f"written {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
