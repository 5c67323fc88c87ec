"""fmeval performance benchmark suite: one command, ratios measured in one run.

    python -m benchmarks.bench [--quick] [--out benchmarks/results]

Sections (see benchmarks/README.md):
1. feature extraction: ``extract_features`` vs a torchvision Dataset/DataLoader loop
2. cached re-run: ``prepare_frozen`` twice on PneumoniaMNIST (fresh cache dir)
3. kNN: ``knn_predict`` vs scikit-learn ``KNeighborsClassifier`` (identical predictions asserted)
4. linear probe: ``train_linear_probe`` vs scikit-learn ``LogisticRegression`` (lbfgs)
5. scaling with the number of training samples
6. peak-RSS delta of every phase vs the size of its feature matrix

Every case runs in a fresh process (see benchmarks/cases.py); the suite writes
``bench.json`` and ``bench.md`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.cases import CASES, MARKER
from benchmarks.common import dump_json, machine_info
from benchmarks import knn_bench, sections

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
BUDGET_S = 600.0

PRESETS: dict[str, dict] = {
    # the published numbers: 100k x 768 synthetic features, all of PneumoniaMNIST
    "full": dict(
        model="resnet18", input_size=64, tiny=False, extract_images=2048, extract_repeats=3, batch_size=256,
        prepare_limit=None, dim=768, n_classes=10, k=11,
        knn_train=100_000, knn_test=10_000, knn_sizes=[10_000, 100_000], lp_train=100_000, lp_val=10_000, lp_test=10_000,
        scaling=[1_000, 10_000], sk_max_iter=100, sk_grid=[0.01, 0.1, 1.0, 10.0], lp_epochs=None,
        extract_models=[
            dict(model="vit-s16", input_size=224, n_images=64, batch_size=32, repeats=2),
            dict(model="vit-b16", input_size=224, n_images=32, batch_size=16, repeats=2),
            dict(model="resnet50", input_size=224, n_images=64, batch_size=32, repeats=2),
            dict(model="resnet18", input_size=64, n_images=2048, batch_size=256, repeats=3),
        ],
        gemm_square=2048,
        finetune=dict(model="vit-s16", input_size=32, batch_size=64, steps=6, n_val=256,
                      precisions=["fp32", "bf16"]),
    ),
    # a few minutes less: the same code paths at 1/10 of the sizes
    "quick": dict(
        model="resnet18", input_size=64, tiny=False, extract_images=512, extract_repeats=1, batch_size=256,
        prepare_limit=512, dim=768, n_classes=10, k=11,
        knn_train=20_000, knn_test=2_000, knn_sizes=[2_000, 20_000], lp_train=10_000, lp_val=2_000, lp_test=2_000,
        scaling=[1_000], sk_max_iter=100, sk_grid=[0.01, 0.1, 1.0, 10.0], lp_epochs=None,
        extract_models=[
            dict(model="vit-s16", input_size=224, n_images=16, batch_size=16, repeats=1),
            dict(model="vit-b16", input_size=224, n_images=8, batch_size=8, repeats=1),
            dict(model="resnet50", input_size=224, n_images=16, batch_size=16, repeats=1),
            dict(model="resnet18", input_size=64, n_images=512, batch_size=256, repeats=1),
        ],
        gemm_square=1024,
        finetune=dict(model="vit-s16", input_size=32, batch_size=32, steps=3, n_val=64,
                      precisions=["fp32", "bf16"]),
    ),
    # seconds: the smoke test's end-to-end check (tiny random model, toy sizes)
    "toy": dict(
        model="resnet18", input_size=None, tiny=True, extract_images=32, extract_repeats=1, batch_size=16,
        prepare_limit=24, dim=32, n_classes=3, k=5,
        knn_train=600, knn_test=100, knn_sizes=[200, 600], lp_train=600, lp_val=100, lp_test=100,
        scaling=[200], sk_max_iter=100, sk_grid=[0.1, 1.0], lp_epochs=5,
        extract_models=[
            dict(model="vit-s16", input_size=None, tiny=True, n_images=16, batch_size=8, repeats=1),
            dict(model="resnet18", input_size=None, tiny=True, n_images=32, batch_size=16, repeats=1),
        ],
        gemm_square=256,
        finetune=dict(model="vit-s16", tiny=True, input_size=None, batch_size=8, steps=2, n_val=16,
                      precisions=["fp32", "bf16"]),
    ),
}


@dataclass
class Runner:
    inline: bool = False
    log: list[str] = field(default_factory=list)

    def __call__(self, name: str, params: dict) -> dict:
        t0 = time.perf_counter()
        if self.inline:
            saved = dict(os.environ)
            try:
                os.environ["FMEVAL_PROGRESS"] = "0"
                result = CASES[name](params)
            finally:
                os.environ.clear()
                os.environ.update(saved)
        else:
            env = {**os.environ, "FMEVAL_PROGRESS": "0", "PYTHONPATH": str(REPO)}
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.cases", name, json.dumps(params)],
                cwd=REPO, env=env, capture_output=True, text=True,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(
                    f"benchmark case {name} {params} failed (exit {proc.returncode}):\n"
                    + proc.stderr[-3000:]
                )
            result = json.loads(lines[-1][len(MARKER):])
        desc = " ".join(str(v) for v in (params.get("model"), params.get("impl") or params.get("method"),
                                          params.get("precision")) if v)
        self.log.append(f"{name} {desc} {params.get('rule', '')} {params.get('device', '')}".strip())
        result["process_wall_s"] = round(time.perf_counter() - t0, 2)
        _progress(f"  {name:<8} {desc:<22} {params.get('rule', '') or '':<19} "
                  f"{result['seconds']:8.2f} s   peak RSS +{result['peak_rss_delta_mb']:.0f} MB")
        return result


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


# -- sections -----------------------------------------------------------------------


def bench_cache(run: Runner, cfg: dict, data: Path, tmp: Path, device: str) -> dict:
    common = dict(cache_dir=str(tmp / "cache"), model=cfg["model"], input_size=cfg["input_size"],
                  tiny=cfg["tiny"], batch_size=cfg["batch_size"], device=device,
                  data_root=str(data.parent), dataset=data.stem.split("_")[0],
                  limit=cfg["prepare_limit"])
    first = run("prepare", {**common, "save": str(tmp / "real_features.npz")})
    second = run("prepare", common)
    if any(first["cache_hits"].values()) or not all(second["cache_hits"].values()):
        raise RuntimeError(f"unexpected cache behaviour: {first['cache_hits']} then {second['cache_hits']}")
    return {
        "what": "wall time of prepare_frozen (train/val/test features) in a fresh cache dir, "
                "then again (a new process each time; model build + data load included)",
        "first": first, "second": second, "speedup": _ratio(first["seconds"], second["seconds"]),
    }


def bench_knn(run: Runner, cfg: dict, tmp: Path, devices: list[str], n_train: int,
              features: str | None = None, tag: str = "synthetic") -> dict:
    p = dict(n_train=n_train, n_test=cfg["knn_test"], dim=cfg["dim"], n_classes=cfg["n_classes"],
             k=cfg["k"], features=features)
    sk_pred, fm_pred = tmp / f"knn_sk_{tag}_{n_train}.npy", tmp / f"knn_fm_{tag}_{n_train}.npy"
    sk = run("knn", {**p, "impl": "sklearn", "algorithm": "brute", "save_pred": str(sk_pred)})
    rows = []
    for dev in devices:
        eu = run("knn", {**p, "impl": "fmeval", "rule": "euclidean-majority", "device": dev,
                         "save_pred": str(fm_pred)})
        identical = bool(np.array_equal(np.load(sk_pred), np.load(fm_pred)))
        mismatches = int((np.load(sk_pred) != np.load(fm_pred)).sum())
        cos = run("knn", {**p, "impl": "fmeval", "rule": "cosine", "device": dev})
        rows.append({"device": dev, "euclidean": eu, "cosine": cos,
                     "identical_predictions": identical, "mismatches": mismatches,
                     "speedup_vs_sklearn": _ratio(sk["seconds"], eu["seconds"])})
    return {"data": tag, "n_train": sk["n_train"], "n_test": sk["n_test"], "dim": sk["dim"],
            "k": cfg["k"], "sklearn": sk, "rows": rows}


def bench_linear(run: Runner, cfg: dict, devices: list[str], n_train: int,
                 features: str | None = None, tag: str = "synthetic", grid: bool = False) -> dict:
    p = dict(n_train=n_train, n_val=cfg["lp_val"], n_test=cfg["lp_test"], dim=cfg["dim"],
             n_classes=cfg["n_classes"], features=features, max_iter=cfg["sk_max_iter"],
             epochs=cfg["lp_epochs"])
    sk = run("linear", {**p, "impl": "sklearn", "Cs": [1.0]})
    sk_grid = run("linear", {**p, "impl": "sklearn", "Cs": cfg["sk_grid"]}) if grid else None
    rows = []
    for dev in devices:
        fm = run("linear", {**p, "impl": "fmeval", "device": dev})
        rows.append({"device": dev, "fmeval": fm, "speedup_vs_sklearn": _ratio(sk["seconds"], fm["seconds"]),
                     "speedup_vs_sklearn_grid": _ratio(sk_grid["seconds"], fm["seconds"]) if sk_grid else None})
    return {"data": tag, "n_train": sk["n_train"], "sklearn": sk, "sklearn_grid": sk_grid, "rows": rows}


def memory_table(res: dict) -> list[dict]:
    """Peak-RSS delta of each phase next to the size of the data it streams over."""
    out = []

    def add(phase: str, r: dict, ref_mb: float, ref: str) -> None:
        out.append({
            "phase": phase, "peak_rss_delta_mb": r["peak_rss_delta_mb"],
            "reference": ref, "reference_mb": round(ref_mb, 1),
            "delta_over_reference": round(_ratio(r["peak_rss_delta_mb"], ref_mb), 2) if ref_mb else None,
        })

    for row in res["extraction"]["rows"]:
        fm = row["fmeval"]
        n, s = fm["n_images"], fm["input_size"]
        ref = f"{n} images as float32 3x{s}x{s} input"
        add(f"extract {row['model']} fmeval ({row['device']})", fm, n * 3 * s * s * 4 / 2**20, ref)
        add(f"extract {row['model']} baseline ({row['device']})", row["baseline"], n * 3 * s * s * 4 / 2**20, ref)
    c = res["cache"]
    s = next(r["fmeval"]["input_size"] for r in res["extraction"]["rows"] if r["model"] == res["config"]["model"])
    n = c["first"]["n_images"]
    add("prepare_frozen, first run", c["first"], n * 3 * s * s * 4 / 2**20,
        f"{n} images as float32 3x{s}x{s} input")
    add("prepare_frozen, cached re-run", c["second"], n * c["second"]["feature_dim"] * 4 / 2**20,
        "float32 features read back")
    k = res["knn"]
    ref = f"train features {k['n_train']:,} x {k['dim']} float32"
    add("kNN sklearn", k["sklearn"], k["sklearn"]["train_matrix_mb"], ref)
    for row in k["rows"]:
        add(f"kNN fmeval euclidean ({row['device']})", row["euclidean"], row["euclidean"]["train_matrix_mb"], ref)
        add(f"kNN fmeval cosine ({row['device']})", row["cosine"], row["cosine"]["train_matrix_mb"], ref)
    sec = res["linear"]["synthetic"]
    ref = f"train features {sec['n_train']:,} x {sec['sklearn']['dim']} float32"
    add("linear sklearn (1 C)", sec["sklearn"], sec["sklearn"]["train_matrix_mb"], ref)
    for row in sec["rows"]:
        add(f"linear fmeval, 12 heads ({row['device']})", row["fmeval"], row["fmeval"]["train_matrix_mb"], ref)
    return out


# -- reporting -------------------------------------------------------------------------


def _f(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:,.{nd}f}"


def _x(x: float | None) -> str:
    return "-" if x is None or np.isnan(x) else f"{x:.2f}x"


def summary_rows(res: dict) -> list[list[str]]:
    rows: list[list[str]] = sections.summary_rows(res, _f, _x)
    c = res["cache"]
    rows.append([
        f"prepare_frozen, cached re-run vs first run ({c['first']['n_images']} images)",
        f"{_f(c['second']['seconds'])} s (re-run)", f"{_f(c['first']['seconds'])} s (first run)",
        _x(c["speedup"]),
    ])
    k = res["knn"]
    for r in k["rows"]:
        rows.append([
            f"kNN euclidean-majority k={k['k']}, {k['n_train']:,} x {k['dim']} train, {k['n_test']:,} test ({r['device']})",
            f"{_f(r['euclidean']['seconds'])} s",
            f"{_f(k['sklearn']['seconds'])} s (sklearn {k['sklearn']['fit_method']}, n_jobs=-1)",
            _x(r["speedup_vs_sklearn"]) + (" identical predictions" if r["identical_predictions"]
                                           else f" {r['mismatches']} DIFFERENT predictions"),
        ])
        roof = r.get("roofline")
        if roof:
            rows.append([
                f"  kNN scoring GEMM, {r['euclidean']['scoring']} ({r['device']})",
                f"{_f(roof['achieved_gflops'], 0)} GFLOP/s achieved",
                f"{_f(roof['roofline_gflops'], 0)} GFLOP/s {roof['scoring']} GEMM of the same shape",
                f"{roof['fraction_of_roofline']:.0%} of roofline",
            ])
        rows.append([
            f"kNN cosine (DINOv2 weighted) k={k['k']}, same data ({r['device']})",
            f"{_f(r['cosine']['seconds'])} s", "-", "-",
        ])
    for tag, sec in res["linear"].items():
        sk = sec["sklearn"]
        for r in sec["rows"]:
            fm = r["fmeval"]
            name = (f"Linear probe, synthetic {sec['n_train']:,} x {fm['dim']}, {fm['n_classes']} classes"
                    if tag == "synthetic" else f"Linear probe, PneumoniaMNIST features ({sec['n_train']:,} x {fm['dim']})")
            rows.append([
                f"{name} ({r['device']})",
                f"{_f(fm['seconds'])} s, {fm['heads']} heads, {fm['epochs_run']} ep, acc {fm['accuracy']:.3f}",
                f"{_f(sk['seconds'])} s, lbfgs C=1 ({sk['n_iter']} it), acc {sk['accuracy']:.3f}",
                _x(r["speedup_vs_sklearn"]),
            ])
            if sec.get("sklearn_grid"):
                g = sec["sklearn_grid"]
                rows.append([
                    f"  same, vs sklearn {len(g['Cs'])}-C grid selected on val ({r['device']})",
                    f"{_f(fm['seconds'])} s, acc {fm['accuracy']:.3f}",
                    f"{_f(g['seconds'])} s, C={g['selected_C']}, acc {g['accuracy']:.3f}",
                    _x(r["speedup_vs_sklearn_grid"]),
                ])
    return rows


def scaling_rows(res: dict) -> list[list[str]]:
    rows = []
    for s in res["scaling"]:
        rows.append([
            f"{s['n_train']:,}",
            _f(s["knn_fmeval_s"]), _f(s["knn_sklearn_s"]), _x(_ratio(s["knn_sklearn_s"], s["knn_fmeval_s"])),
            _f(s["lp_fmeval_s"]), _f(s["lp_sklearn_s"]), _x(_ratio(s["lp_sklearn_s"], s["lp_fmeval_s"])),
            f"{s['lp_fmeval_acc']:.3f} / {s['lp_sklearn_acc']:.3f}",
        ])
    return rows


SUMMARY_HEAD = ["Benchmark", "fmeval", "Reference", "fmeval speed-up"]
SCALING_HEAD = ["n_train", "kNN fmeval (s)", "kNN sklearn (s)", "kNN speed-up",
                "LP fmeval (s)", "LP sklearn (s)", "LP speed-up", "LP acc fmeval / sklearn"]
MEMORY_HEAD = ["Phase", "Peak RSS delta (MB)", "Data it streams over", "Size (MB)", "delta / size"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def memory_rows(res: dict) -> list[list[str]]:
    return [[m["phase"], _f(m["peak_rss_delta_mb"], 0), m["reference"], _f(m["reference_mb"], 1),
             _f(m["delta_over_reference"], 2)] for m in res["memory"]]


def to_markdown(res: dict) -> str:
    m = res["machine"]
    head = (
        f"Measured {res['date']} with `{res['command']}` (preset `{res['preset']}`): "
        f"{m['cpu']}, {m['cpu_cores']} cores, {m['memory_gb']} GB RAM, torch {m['torch']} "
        f"({m['torch_threads']} threads), scikit-learn {m['sklearn']}, CUDA: {m['cuda'] or 'none'}; "
        f"load average at start {m['load_average']}. Whole suite: **{res['suite_seconds']:.0f} s** "
        f"({'under' if res['suite_seconds'] < BUDGET_S else 'OVER'} the {BUDGET_S / 60:.0f}-minute budget). "
        "Speed-up = reference time / fmeval time (> 1: fmeval faster); "
        + ("cases ran in this process (--inline)." if res["inline"] else "every case ran in its own process.")
    )
    parts = [
        head, "", _md_table(SUMMARY_HEAD, summary_rows(res)), "",
        f"Scaling with the number of training samples (synthetic {res['config']['dim']}-d, "
        f"{res['config']['n_classes']} classes; kNN k={res['config']['k']} against "
        f"{res['config']['knn_test']:,} test points, linear probe with {res['config']['lp_val']:,} val / "
        f"{res['config']['lp_test']:,} test):", "",
        _md_table(SCALING_HEAD, scaling_rows(res)), "",
        "Peak resident-memory growth during each call (its inputs already resident; the "
        "high-water mark is reset before the call), next to the size of the data it streams over:", "",
        _md_table(MEMORY_HEAD, memory_rows(res)), "",
        f"Load average (1, 5, 15 min) through the run: {res.get('load_trace')}.", "",
        "Goals of issue 15 as measured in this run (informational; `met` needs a quiet machine):", "",
        _md_table(["Goal", "Measured"], [[k, str(v)] for k, v in res.get("goals", {}).items()]), "",
    ]
    if "knn_matrix" in res:
        parts += [knn_markdown(res)]
    return "\n".join(parts)


def _rich_table(title: str, head: list[str], rows: list[list[str]]):
    """A rich table: the first column (the row's name) left-aligned, the numbers right-aligned."""
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def print_rich(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for title, head, rows in (
        ("fmeval benchmark", SUMMARY_HEAD, summary_rows(res)),
        ("Scaling", SCALING_HEAD, scaling_rows(res)),
        ("Peak RSS", MEMORY_HEAD, memory_rows(res)),
    ):
        con.print(_rich_table(title, head, rows))
    goals = res.get("goals", {})
    if goals:
        t = Table(title="Issue 15 goals (measured in this run)")
        t.add_column("Goal")
        t.add_column("Measured", justify="right")
        for k, v in goals.items():
            t.add_row(k, str(v))
        con.print(t)
    con.print(f"load average (1, 5, 15 min) through the run: {res.get('load_trace')}")
    if "knn_matrix" in res:
        print_knn(res)
    con.print(f"suite: {res['suite_seconds']:.0f} s; results in {res['out']}")


# -- main --------------------------------------------------------------------------------


def _knn_section(res: dict, run: Runner, cfg: dict, tmp: Path, devices: list[str], inline: bool) -> None:
    """Issue 25's matrix (sizes x rules vs scikit-learn brute, rival processes); the older
    ``knn`` section is its largest size."""
    res["knn_matrix"] = knn_bench.bench_knn_matrix(run, cfg, tmp, devices, res["gemm"], inline)
    knn_bench.finish_compete(res["knn_matrix"])
    res["knn"] = knn_bench.legacy_knn(res["knn_matrix"], cfg)
    for row in res["knn"]["rows"]:
        row["roofline"] = sections.knn_roofline(row, res["gemm"][row["device"]])


def _main_knn_only(args: argparse.Namespace, res: dict, run: Runner, cfg: dict, devices: list[str],
                   t0: float) -> dict:
    res["load_trace"] = {"start": sections.load_trace()}
    _progress("[1/2] GEMM roofline")
    res["gemm"] = sections.bench_gemm(run, cfg, devices)
    _progress("[2/2] kNN vs scikit-learn")
    with tempfile.TemporaryDirectory(prefix="fmeval-bench-") as tmpd:
        _knn_section(res, run, cfg, Path(tmpd), devices, args.inline)
    res["load_trace"]["end"] = sections.load_trace()
    res["goals"] = {"issue_25": knn_bench.goals(res["knn_matrix"], cfg)}
    res["suite_seconds"] = round(time.perf_counter() - t0, 1)
    return _finish(args, res, "bench_knn", knn_markdown, print_knn,
                   identical=res["goals"]["issue_25"]["identical_everywhere"])


def knn_markdown(res: dict) -> str:
    km = res["knn_matrix"]
    parts = [f"kNN vs scikit-learn, measured {res['date']} with `{res['command']}`: "
             f"{knn_bench.machine_line(res['machine'])}; load through the run {res.get('load_trace')}.", "",
             *[f"GEMM roofline ({g['device']}, kNN tile {g['shapes']['knn']}): {knn_bench.roofline_line(g)}."
               for g in res["gemm"].values()], "",
             _md_table(knn_bench.HEAD, knn_bench.table_rows(km)), ""]
    if knn_bench.compete_rows(km):
        parts += [_md_table(knn_bench.COMPETE_HEAD, knn_bench.compete_rows(km)), ""]
    parts += [f"Goals (issue 25): {res['goals']['issue_25']}", ""]
    return "\n".join(parts)


def print_knn(res: dict) -> None:
    from rich.console import Console

    con = Console()
    km = res["knn_matrix"]
    con.print(f"machine: {knn_bench.machine_line(res['machine'])}")
    for g in res["gemm"].values():
        con.print(f"GEMM roofline ({g['device']}, kNN tile {g['shapes']['knn']}): "
                  f"{knn_bench.roofline_line(g)}")
    for title, head, rows in (("kNN vs scikit-learn brute (issue 25)", knn_bench.HEAD, knn_bench.table_rows(km)),
                              ("kNN on a shared machine", knn_bench.COMPETE_HEAD, knn_bench.compete_rows(km))):
        if rows:
            con.print(_rich_table(title, head, rows))
    con.print(f"goals (issue 25): {res['goals']['issue_25']}")
    con.print(f"load average (1, 5, 15 min) through the run: {res.get('load_trace')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1/10 sizes (same as --preset quick)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for bench.json/bench.md")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="PneumoniaMNIST npz (28 px)")
    ap.add_argument("--devices", default="auto", help="auto (cpu, plus cuda when present) or a comma list")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in every case (default: torch's default, recorded in the results)")
    ap.add_argument("--inline", action="store_true", help="run cases in this process (faster, less isolated)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--only", choices=["all", "knn"], default="all",
                    help="knn: the GEMM roofline and the kNN-vs-scikit-learn matrix only (bench_knn.json/.md)")
    ap.add_argument("--knn-sizes", default=None, help="comma list of kNN training sizes (default: the preset's)")
    ap.add_argument("--knn-test", type=int, default=None, help="kNN test rows (default: the preset's)")
    ap.add_argument("--knn-scoring", choices=("auto", "fp32", "bf16"), default="auto",
                    help="fmeval kNN candidate precision (fp32: the path of a CPU without native bf16)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = "quick" if args.quick else args.preset
    cfg = dict(PRESETS[preset])
    if args.knn_sizes:
        cfg["knn_sizes"] = [int(v) for v in args.knn_sizes.split(",")]
        cfg["knn_train"] = max(cfg["knn_sizes"])
    if args.knn_test:
        cfg["knn_test"] = args.knn_test
    cfg["knn_scoring"] = args.knn_scoring
    import torch

    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if args.threads:
        os.environ["FMEVAL_BENCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"PneumoniaMNIST not found at {data} (pass --data)")
    t0 = time.perf_counter()
    run = Runner(inline=args.inline)
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.bench" + (" --quick" if args.quick else
                                                  f" --preset {preset}" if preset != "full" else ""),
        "preset": preset, "config": cfg, "devices": devices, "data": str(data), "inline": args.inline,
        "machine": machine_info(),
    }
    if args.only == "knn":
        return _main_knn_only(args, res, run, cfg, devices, t0)
    with tempfile.TemporaryDirectory(prefix="fmeval-bench-") as tmpd:
        tmp = Path(tmpd)
        res["load_trace"] = {"start": sections.load_trace()}
        _progress("[0/7] GEMM roofline")
        res["gemm"] = sections.bench_gemm(run, cfg, devices)
        _progress("[1/7] feature extraction")
        res["extraction"] = sections.bench_extraction(run, cfg, data, devices, tmp)
        res["load_trace"]["after_extraction"] = sections.load_trace()
        _progress("[2/7] cached prepare_frozen")
        res["cache"] = bench_cache(run, cfg, data, tmp, devices[-1])
        real = str(tmp / "real_features.npz")
        _progress("[3/7] kNN")
        _knn_section(res, run, cfg, tmp, devices, args.inline)
        res["load_trace"]["after_knn"] = sections.load_trace()
        _progress("[4/7] linear probe")
        res["linear"] = {
            "synthetic": bench_linear(run, cfg, devices, cfg["lp_train"]),
            "pneumoniamnist": bench_linear(run, cfg, devices, 0, features=real, tag="pneumoniamnist",
                                           grid=True),
        }
        _progress("[5/7] scaling")
        scaling = []
        for n in cfg["scaling"]:
            kn = bench_knn(run, cfg, tmp, devices[:1], n)
            lp = bench_linear(run, cfg, devices[:1], n)
            scaling.append({
                "n_train": n, "knn_fmeval_s": kn["rows"][0]["euclidean"]["seconds"],
                "knn_sklearn_s": kn["sklearn"]["seconds"],
                "knn_identical": kn["rows"][0]["identical_predictions"],
                "lp_fmeval_s": lp["rows"][0]["fmeval"]["seconds"], "lp_sklearn_s": lp["sklearn"]["seconds"],
                "lp_fmeval_acc": lp["rows"][0]["fmeval"]["accuracy"], "lp_sklearn_acc": lp["sklearn"]["accuracy"],
                "source": "measured here",
            })
        big_k, big_l = res["knn"], res["linear"]["synthetic"]
        scaling.append({
            "n_train": big_k["n_train"], "knn_fmeval_s": big_k["rows"][0]["euclidean"]["seconds"],
            "knn_sklearn_s": big_k["sklearn"]["seconds"],
            "knn_identical": big_k["rows"][0]["identical_predictions"],
            "lp_fmeval_s": big_l["rows"][0]["fmeval"]["seconds"], "lp_sklearn_s": big_l["sklearn"]["seconds"],
            "lp_fmeval_acc": big_l["rows"][0]["fmeval"]["accuracy"],
            "lp_sklearn_acc": big_l["sklearn"]["accuracy"],
            "source": "sections 3 and 4",
        })
        res["scaling"] = scaling
        res["load_trace"]["after_scaling"] = sections.load_trace()
        _progress("[6/7] LoRA vs full fine-tuning")
        res["finetune"] = sections.bench_finetune(run, cfg, data, devices)
        res["load_trace"]["end"] = sections.load_trace()
    res["memory"] = memory_table(res)
    res["suite_seconds"] = round(time.perf_counter() - t0, 1)
    res["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    knn_row, lp_row = res["knn"]["rows"][0], res["linear"]["synthetic"]["rows"][0]
    res["checks"] = {
        "suite_under_10_min": res["suite_seconds"] < BUDGET_S,
        "knn_identical_predictions": all(r["identical_predictions"] for r in res["knn"]["rows"])
        and all(s["knn_identical"] for s in scaling),
        "extraction_no_slower": all(r["speedup"] >= 1.0 for r in res["extraction"]["rows"]),
        "fmeval_ahead_knn_at_largest_n": knn_row["speedup_vs_sklearn"] > 1.0,
        "fmeval_ahead_linear_at_largest_n": lp_row["speedup_vs_sklearn"] > 1.0,
    }
    res["goals"] = sections.goals(res)
    res["goals"]["issue_25"] = knn_bench.goals(res["knn_matrix"], cfg)
    res["checks"]["knn_identical_predictions"] &= res["goals"]["issue_25"]["identical_everywhere"]
    return _finish(args, res, "bench", to_markdown, print_rich,
                   identical=res["checks"]["knn_identical_predictions"])


def _finish(args: argparse.Namespace, res: dict, stem: str, markdown: Callable[[dict], str],
            show: Callable[[dict], None], *, identical: bool) -> dict:
    """The end both suites share: record the output folder, write ``<stem>.json`` and ``<stem>.md``
    (unless --no-write), print the tables, and exit non-zero when kNN predictions differ from
    scikit-learn - after writing, so the files show where."""
    out = Path(args.out)
    res["out"] = str(out)
    if not args.no_write:
        dump_json(out / f"{stem}.json", res)
        (out / f"{stem}.md").write_text(markdown(res))
    show(res)
    if not identical:
        raise SystemExit(f"kNN predictions differ from scikit-learn (see {stem}.json)")
    return res


if __name__ == "__main__":
    main()
