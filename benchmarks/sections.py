"""Benchmark sections of the precision work (issue 15), called by ``benchmarks.bench``.

* extraction of several encoders vs the plain fp32 loop a user writes, with
  fmeval at the precision policy's choice (``auto``) and its memory format;
* this machine's fp32 and bf16 GEMM roofline, measured in the same run, so the
  kNN's achieved GFLOP/s can be read as a fraction of it;
* LoRA vs full fine-tuning: epoch time and peak memory, fp32 and bf16;
* the goals of issue 15 as measured ratios (never asserted: they depend on the
  machine and its load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

Run = Callable[[str, dict], dict]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _best(runs: list[dict]) -> dict:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["all_seconds"] = [r["seconds"] for r in runs]
    best["peak_rss_delta_mb"] = max(r["peak_rss_delta_mb"] for r in runs)
    return best


def _min_cosine(a: Path, b: Path) -> float:
    x, y = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    num = (x * y).sum(1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float((num / np.maximum(den, 1e-30)).min())


def bench_extraction(run: Run, cfg: dict, data: Path, devices: list[str], tmp: Path) -> dict:
    """Every model of ``cfg['extract_models']``: fmeval (``auto`` precision) vs the plain loop."""
    rows = []
    for spec in cfg["extract_models"]:
        for dev in devices:
            common = dict(data=str(data), model=spec["model"], input_size=spec["input_size"],
                          tiny=spec.get("tiny", False), n_images=spec["n_images"],
                          batch_size=spec["batch_size"], device=dev)
            runs: dict[str, list[dict]] = {"baseline": [], "fmeval": []}
            saved = {m: tmp / f"feat_{spec['model']}_{spec['input_size']}_{dev}_{m}.npy" for m in runs}
            for rep in range(spec["repeats"]):  # alternate, so drifting load hits both
                for method in ("baseline", "fmeval"):
                    extra = {"save": str(saved[method])} if rep == 0 else {}
                    runs[method].append(run("extract", {**common, "method": method,
                                                         "precision": "auto", **extra}))
            base, fm = _best(runs["baseline"]), _best(runs["fmeval"])
            rows.append({
                "model": spec["model"], "device": dev, "baseline": base, "fmeval": fm,
                "speedup": _ratio(fm["images_per_s"], base["images_per_s"]),
                "min_cosine_to_baseline": _min_cosine(saved["fmeval"], saved["baseline"]),
            })
    return {
        "what": "images/s of fmeval (uint8 batches preprocessed as tensors, inference_mode, the "
                "precision policy's `auto` precision and memory format) vs a torchvision Dataset "
                "(PIL Resize/ToTensor/Normalize per image) + DataLoader(num_workers=0) + fp32 "
                "`model(x)` loop without inference_mode; same random weights, batch size and "
                "PneumoniaMNIST images; best of the alternating repeats after a one-batch warm-up. "
                "min_cosine_to_baseline: the two feature sets agree (equal metrics).",
        "rows": rows,
    }


def bench_gemm(run: Run, cfg: dict, devices: list[str]) -> dict:
    out = {}
    for dev in devices:
        # the kNN's scoring tile: [4096 training rows, D] x [D, up to 512 test rows]
        out[dev] = run("gemm", {"device": dev, "square": cfg["gemm_square"], "dim": cfg["dim"],
                                "knn_rows": min(cfg["knn_train"], 4096),
                                "knn_cols": min(cfg["knn_test"], 512)})
    return out


def knn_roofline(knn_row: dict, gemm: dict) -> dict:
    """The kNN's achieved GFLOP/s (its scoring GEMM's FLOPs over the whole call) vs the roofline."""
    eu = knn_row["euclidean"]
    scoring = eu.get("scoring", "fp32")
    peak = gemm.get(f"knn_{scoring}_gflops") or float("nan")
    return {"achieved_gflops": eu.get("achieved_gflops"), "scoring": scoring,
            "roofline_gflops": peak, "fraction_of_roofline": _ratio(eu.get("achieved_gflops", 0.0), peak),
            "fraction_of_fp32_gemm": _ratio(eu.get("achieved_gflops", 0.0), gemm.get("knn_fp32_gflops")),
            "fraction_of_bf16_gemm": _ratio(eu.get("achieved_gflops", 0.0), gemm.get("knn_bf16_gflops"))}


def bench_finetune(run: Run, cfg: dict, data: Path, devices: list[str]) -> dict:
    ft = cfg["finetune"]
    rows = []
    for dev in devices:
        for precision in ft["precisions"]:
            res = {}
            for method in ("full", "lora"):
                res[method] = run("finetune", {
                    "model": ft["model"], "tiny": ft.get("tiny", False), "input_size": ft["input_size"],
                    "method": method, "precision": precision, "steps": ft["steps"],
                    "batch_size": ft["batch_size"], "n_val": ft["n_val"], "data": str(data), "device": dev,
                })
            rows.append({
                "device": dev, "precision": precision, "full": res["full"], "lora": res["lora"],
                "epoch_ratio": _ratio(res["lora"]["seconds"], res["full"]["seconds"]),
                "train_ratio": _ratio(res["lora"]["train_seconds"], res["full"]["train_seconds"]),
                "peak_rss_ratio": _ratio(res["lora"]["peak_rss_mb"], res["full"]["peak_rss_mb"]),
            })
    return {"what": f"one epoch = {ft['steps']} minibatches of {ft['batch_size']} + a validation pass over "
                    f"{ft['n_val']} images ({ft['model']} @ {ft['input_size']} px, random weights); "
                    "epoch_ratio = LoRA / full (< 1: LoRA faster)", "rows": rows}


def goals(res: dict) -> dict:
    """Issue 15's goals next to what this run measured (informational, machine-dependent)."""
    ex = {r["model"]: r for r in res["extraction"]["rows"] if r["device"] == "cpu"}
    knn = res["knn"]["rows"][0]
    lp = res["linear"]["synthetic"]["rows"][0]
    ten = next((s for s in res["scaling"] if s["n_train"] == 10_000), None)
    ft = [r for r in res["finetune"]["rows"] if r["device"] == "cpu"]
    out = {
        "extraction_vit_b16_2x": ex["vit-b16"]["speedup"] if "vit-b16" in ex else None,
        "extraction_resnet50_2x": ex["resnet50"]["speedup"] if "resnet50" in ex else None,
        "knn_4x_at_largest_n": knn["speedup_vs_sklearn"],
        "knn_identical": knn["identical_predictions"],
        "knn_at_10k": _ratio(ten["knn_sklearn_s"], ten["knn_fmeval_s"]) if ten else None,
        "knn_fraction_of_gemm_roofline": (knn.get("roofline") or {}).get("fraction_of_roofline"),
        "linear_3x_at_largest_n": lp["speedup_vs_sklearn"],
        "linear_3x_at_10k": _ratio(ten["lp_sklearn_s"], ten["lp_fmeval_s"]) if ten else None,
        "cached_rerun_3pct": _ratio(res["cache"]["second"]["seconds"], res["cache"]["first"]["seconds"]),
        "lora_epoch_0_7x": {r["precision"]: r["epoch_ratio"] for r in ft},
        "lora_lower_peak_memory": {r["precision"]: r["peak_rss_ratio"] < 1.0 for r in ft},
    }
    out["met"] = {
        "extraction_2x": all((v or 0) >= 2.0 for v in (out["extraction_vit_b16_2x"], out["extraction_resnet50_2x"])),
        "knn_4x": out["knn_4x_at_largest_n"] >= 4.0 and out["knn_identical"],
        "linear_3x": out["linear_3x_at_largest_n"] >= 3.0 and (out["linear_3x_at_10k"] or 0) >= 3.0,
        "cached_rerun_3pct": out["cached_rerun_3pct"] <= 0.03,
        "lora_0_7x": all(v <= 0.7 for v in out["lora_epoch_0_7x"].values()),
    }
    return out


def load_trace() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def summary_rows(res: dict, fmt_f, fmt_x) -> list[list[str]]:
    rows = []
    for r in res["extraction"]["rows"]:
        fm, base = r["fmeval"], r["baseline"]
        rows.append([
            f"Feature extraction {r['model']} @ {fm['input_size']} px, {fm['n_images']} images ({r['device']})",
            f"{fmt_f(fm['images_per_s'], 1)} img/s ({fm['precision']}{', channels-last' if fm['channels_last'] else ''})",
            f"{fmt_f(base['images_per_s'], 1)} img/s (fp32 DataLoader loop)",
            fmt_x(r["speedup"]) + f", min cos {r['min_cosine_to_baseline']:.5f}",
        ])
    for dev, g in res["gemm"].items():
        rows.append([f"GEMM roofline, this run ({dev}, {g['threads']} threads; square {g['shapes']['square'][0]})",
                     f"bf16 {fmt_f(g['square_bf16_gflops'], 0)} GFLOP/s",
                     f"fp32 {fmt_f(g['square_fp32_gflops'], 0)} GFLOP/s", fmt_x(g["bf16_over_fp32"])])
    for r in res["finetune"]["rows"]:
        f, lo = r["full"], r["lora"]
        rows.append([
            f"LoRA vs full fine-tuning epoch, {f['model']} @ {f['input_size']} px, {r['precision']} ({r['device']})",
            f"LoRA {fmt_f(lo['seconds'])} s, peak RSS {fmt_f(lo['peak_rss_mb'], 0)} MB",
            f"full {fmt_f(f['seconds'])} s, peak RSS {fmt_f(f['peak_rss_mb'], 0)} MB",
            f"LoRA/full {r['epoch_ratio']:.2f} (train steps {r['train_ratio']:.2f})",
        ])
    return rows
