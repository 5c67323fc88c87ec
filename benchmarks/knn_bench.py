"""kNN against scikit-learn (issue 25): both rules, several training sizes, alone and with a rival.

For every training size of ``cfg["knn_sizes"]`` and both rules:

* scikit-learn ``KNeighborsClassifier(algorithm="brute", n_jobs=-1)`` (Euclidean;
  for cosine ``metric="cosine"`` with the DINOv2 weights ``exp((1 - d) / 0.07)``
  as a callable, i.e. the same votes as fmeval's ``cosine`` rule);
* fmeval ``knn_predict`` (``scoring=auto``, threads chosen by the search);
* the ratio, whether the predictions are identical (and how many differ),
  the peak RSS growth of the call against its train-feature bytes and the
  issue's bound (1.5 x train features + one score tile), and the achieved
  GFLOP/s of the call as a fraction of this run's fp32 and bf16 GEMM
  roofline (``sections.bench_gemm``, same run).

Shared machines: at the largest size (Euclidean) each implementation is run
again while a second process of the same kind competes for the cores (a
study with ``--jobs 2`` on two cores), and the slow-down of each is recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.cases import MARKER

REPO = Path(__file__).resolve().parents[1]
RULES = ("euclidean-majority", "cosine")
TILE_MB = 4096 * 512 * 4 / 2**20  # one float32 score tile: 4096 training rows x 512 test rows


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _pair(name: str, params: dict) -> tuple[dict, dict]:
    """Run the case twice at once (two fresh processes); return both results."""
    env = {**os.environ, "FMEVAL_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.cases", name, json.dumps(params)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(MARKER)]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"benchmark case {name} {params} failed (exit {p.returncode}):\n{stderr[-3000:]}")
        out.append(json.loads(lines[-1][len(MARKER):]))
    return out[0], out[1]


def _roof(fm: dict, gemm: dict) -> dict:
    got = fm.get("achieved_gflops") or 0.0
    return {"achieved_gflops": got,
            "fp32_gemm_gflops": gemm.get("knn_fp32_gflops"), "bf16_gemm_gflops": gemm.get("knn_bf16_gflops"),
            "fraction_of_fp32_gemm": _ratio(got, gemm.get("knn_fp32_gflops") or 0.0),
            "fraction_of_bf16_gemm": _ratio(got, gemm.get("knn_bf16_gflops") or 0.0)}


def bench_knn_matrix(run, cfg: dict, tmp: Path, devices: list[str], gemm: dict, inline: bool) -> dict:
    rows = []
    for n in cfg["knn_sizes"]:
        for rule in RULES:
            p = dict(n_train=n, n_test=cfg["knn_test"], dim=cfg["dim"], n_classes=cfg["n_classes"],
                     k=cfg["k"], rule=rule)
            sk_pred = tmp / f"knn25_sk_{rule}_{n}.npy"
            sk = run("knn", {**p, "impl": "sklearn", "algorithm": "brute", "save_pred": str(sk_pred)})
            for dev in devices:
                fm_pred = tmp / f"knn25_fm_{rule}_{n}_{dev}.npy"
                fm = run("knn", {**p, "impl": "fmeval", "device": dev, "save_pred": str(fm_pred),
                                 "scoring": cfg.get("knn_scoring", "auto")})
                a, b = np.load(sk_pred), np.load(fm_pred)
                train_mb = fm["train_matrix_mb"]
                bound = 1.5 * train_mb + TILE_MB
                rows.append({
                    "n_train": n, "n_test": fm["n_test"], "rule": rule, "device": dev,
                    "fmeval": fm, "sklearn": sk, "speedup_vs_sklearn": _ratio(sk["seconds"], fm["seconds"]),
                    "identical_predictions": bool(np.array_equal(a, b)), "mismatches": int((a != b).sum()),
                    "train_mb": round(train_mb, 1), "rss_growth_over_train": _ratio(fm["peak_rss_delta_mb"], train_mb),
                    "rss_bound_mb": round(bound, 1), "rss_within_bound": fm["peak_rss_delta_mb"] <= bound,
                    "sklearn_rss_growth_over_train": _ratio(sk["peak_rss_delta_mb"], train_mb),
                    "roofline": _roof(fm, gemm.get(dev, {})),
                })
    return {"what": __doc__.split("\n\n")[1].strip(), "rows": rows,
            "compete": None if inline else bench_compete(cfg, devices[0])}


def bench_compete(cfg: dict, dev: str) -> dict:
    """Each implementation alone, then with a second process of the same kind on the same cores."""
    n = max(cfg["knn_sizes"])
    p = dict(n_train=n, n_test=cfg["knn_test"], dim=cfg["dim"], n_classes=cfg["n_classes"], k=cfg["k"],
             rule="euclidean-majority")
    out: dict = {"n_train": n, "n_test": cfg["knn_test"], "rule": "euclidean-majority", "device": dev}
    for impl, extra in (("sklearn", {"algorithm": "brute"}), ("fmeval", {"device": dev, "scoring": cfg.get("knn_scoring", "auto")})):
        t0 = time.perf_counter()
        a, b = _pair("knn", {**p, "impl": impl, **extra})
        both = time.perf_counter() - t0
        out[impl] = {"competing_s": [a["seconds"], b["seconds"]], "pair_wall_s": round(both, 2),
                     "cpu_utilisation": [a.get("cpu_utilisation"), b.get("cpu_utilisation")],
                     "tiles_by_threads": [a.get("tiles_by_threads"), b.get("tiles_by_threads")]}
    return out


def finish_compete(res: dict) -> None:
    """Slow-downs under competition against the same run's solo times (the matrix's largest size)."""
    c = res.get("compete")
    if not c:
        return
    solo = next(r for r in res["rows"] if r["n_train"] == c["n_train"] and r["rule"] == c["rule"]
                and r["device"] == c["device"])
    for impl, key in (("sklearn", "sklearn"), ("fmeval", "fmeval")):
        alone = solo[key]["seconds"]
        c[impl]["solo_s"] = alone
        c[impl]["slowdown"] = _ratio(max(c[impl]["competing_s"]), alone)
    c["speedup_vs_sklearn_competing"] = _ratio(max(c["sklearn"]["competing_s"]), max(c["fmeval"]["competing_s"]))
    c["fmeval_degrades_no_more"] = c["fmeval"]["slowdown"] <= c["sklearn"]["slowdown"]


def legacy_knn(res: dict, cfg: dict) -> dict:
    """The older ``res["knn"]`` section (largest size, both rules of fmeval, sklearn Euclidean)."""
    n = max(cfg["knn_sizes"])
    rows = [r for r in res["rows"] if r["n_train"] == n]
    eu = {r["device"]: r for r in rows if r["rule"] == "euclidean-majority"}
    cos = {r["device"]: r for r in rows if r["rule"] == "cosine"}
    first = next(iter(eu.values()))
    return {"data": "synthetic", "n_train": n, "n_test": first["n_test"], "dim": cfg["dim"], "k": cfg["k"],
            "sklearn": first["sklearn"],
            "rows": [{"device": d, "euclidean": r["fmeval"], "cosine": cos[d]["fmeval"],
                      "identical_predictions": r["identical_predictions"] and cos[d]["identical_predictions"],
                      "mismatches": r["mismatches"] + cos[d]["mismatches"],
                      "speedup_vs_sklearn": r["speedup_vs_sklearn"]} for d, r in eu.items()]}


HEAD = ["n_train x D, rule (device)", "fmeval s", "sklearn brute s", "speed-up", "identical",
        "RSS growth / train (bound)", "threads (tiles)", "fp32 / bf16 roofline"]


def table_rows(res: dict) -> list[list[str]]:
    out = []
    for r in res["rows"]:
        fm, sk, roof = r["fmeval"], r["sklearn"], r["roofline"]
        out.append([
            f"{r['n_train']:,} x {fm['dim']}, {r['n_test']:,} test, {r['rule']} ({r['device']}, {fm.get('scoring')}, "
            f"{fm.get('gemm', 'torch')} GEMM)",
            f"{fm['seconds']:.2f}", f"{sk['seconds']:.2f}", f"{r['speedup_vs_sklearn']:.2f}x",
            "yes" if r["identical_predictions"] else f"NO ({r['mismatches']} differ)",
            f"{fm['peak_rss_delta_mb']:.0f} MB = {r['rss_growth_over_train']:.2f}x of {r['train_mb']:.0f} MB "
            f"(<= {r['rss_bound_mb']:.0f}: {'yes' if r['rss_within_bound'] else 'NO'}); sklearn "
            f"{sk['peak_rss_delta_mb']:.0f} MB",
            str(fm.get("tiles_by_threads") or fm.get("threads")),
            f"{roof['fraction_of_fp32_gemm']:.0%} / {roof['fraction_of_bf16_gemm']:.0%} "
            f"({roof['achieved_gflops']:.0f} of {roof['fp32_gemm_gflops']} / {roof['bf16_gemm_gflops']} GFLOP/s)",
        ])
    return out


def compete_rows(res: dict) -> list[list[str]]:
    c = res.get("compete")
    if not c or "slowdown" not in c.get("fmeval", {}):
        return []
    return [[impl, f"{c[impl]['solo_s']:.2f}", " / ".join(f"{x:.2f}" for x in c[impl]["competing_s"]),
             f"{c[impl]['slowdown']:.2f}x"] for impl in ("fmeval", "sklearn")] + [
        ["speed-up vs sklearn, both competing", "", "", f"{c['speedup_vs_sklearn_competing']:.2f}x"]]


COMPETE_HEAD = ["kNN with a rival process of the same kind", "alone s", "competing s (both)", "slow-down"]


def roofline_line(g: dict) -> str:
    """The GEMM rates of the same run; fp64 is scikit-learn's, so fp32/fp64 caps what fp32 scoring can gain."""
    line = f"fp32 {g['knn_fp32_gflops']} GFLOP/s, bf16 {g['knn_bf16_gflops']} GFLOP/s"
    if g.get("knn_fp64_gflops"):
        line += (f", fp64 {g['knn_fp64_gflops']} GFLOP/s (scikit-learn's brute kNN multiplies in float64: "
                 f"fp32 scoring can be at most {g['fp32_over_fp64']}x faster than its GEMM)")
    return line


def machine_line(m: dict) -> str:
    return (f"{m['cpu']} ({', '.join(m.get('cpu_bf16_flags') or ['no native bf16 flags'])}), "
            f"{m['cpu_cores']} cores, torch threads {m['torch_threads']}, load average {m['load_average']}")


def goals(res: dict, cfg: dict) -> dict:
    rows = res["rows"]
    big, small = max(cfg["knn_sizes"]), min(cfg["knn_sizes"])
    sp = {(r["n_train"], r["rule"]): r["speedup_vs_sklearn"] for r in rows if r["device"] == "cpu"}
    out = {f"knn_{rule}_speedup_at_{big}": sp.get((big, rule)) for rule in RULES}
    out.update({f"knn_{rule}_speedup_at_{small}": sp.get((small, rule)) for rule in RULES})
    out["identical_everywhere"] = all(r["identical_predictions"] for r in rows)
    out["memory_within_bound"] = all(r["rss_within_bound"] for r in rows)
    c = res.get("compete") or {}
    out["degrades_no_more_than_sklearn"] = c.get("fmeval_degrades_no_more")
    out["met"] = {
        "2x_at_largest": all((sp.get((big, rule)) or 0) >= 2.0 for rule in RULES),
        "never_slower_at_smallest": all((sp.get((small, rule)) or 0) >= 1.0 for rule in RULES),
        "identical": out["identical_everywhere"], "memory": out["memory_within_bound"],
    }
    return out
