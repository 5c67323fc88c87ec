"""GPU benchmark: extraction throughput with model FLOPs utilisation, kNN at 1M x 768, LoRA vs full.

    python -m benchmarks.gpu                          # on a CUDA machine (bf16, full sizes)
    python -m benchmarks.gpu --preset toy --device cpu  # the same code at toy sizes (the test)

1. Extraction, ViT-B/16 and ResNet-50 at 224 px, bf16 autocast + the policy's
   memory format: uint8 PneumoniaMNIST batches on the host, pinned and sent
   to the device, preprocessed there (``prepare_batch``). Images/s, and model
   FLOPs utilisation = (forward FLOPs per image, counted by
   ``torch.utils.flop_counter``) x images/s / the card's dense bf16 peak
   (a table of known cards; elsewhere the bf16 GEMM rate measured here).
2. kNN at 1M x 768 (synthetic, generated on the device), 10k queries, k=11:
   bf16 scoring vs fp32 scoring (predictions must be identical: both exact),
   with the share of rows the bf16 bound settled and GFLOP/s vs the GEMM rate.
3. LoRA vs full fine-tuning epoch (``benchmarks.cases_perf.case_finetune``).

Writes ``gpu.json`` (and prints it) to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets
BF16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}

PRESETS = {
    "full": dict(models=[("vit-b16", 224, False), ("resnet50", 224, False)], batch=512, batches=8,
                 knn_train=1_000_000, knn_test=10_000, dim=768,
                 ft=dict(model="vit-b16", tiny=False, input_size=224, batch_size=64, steps=20, n_val=1024)),
    "toy": dict(models=[("vit-b16", None, True), ("resnet50", None, True)], batch=16, batches=2,
                knn_train=2_000, knn_test=200, dim=32,
                ft=dict(model="vit-s16", tiny=True, input_size=None, batch_size=8, steps=2, n_val=16)),
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bf16_peak(dev: torch.device) -> tuple[float, str]:
    """The card's dense bf16 peak (data sheet), or the measured bf16 GEMM rate elsewhere."""
    from benchmarks.cases_perf import gemm_rate

    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, peak in BF16_PEAK.items():
            if key in name:
                return peak, f"data sheet ({key})"
    n = 8192 if dev.type == "cuda" else 512
    return gemm_rate(n, n, n, "bf16", str(dev)) * 1e9, f"measured bf16 GEMM {n}^3"


def forward_flops(adapter, size: int, dev: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=dev)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        adapter.encode_image(x)
    return float(fc.get_total_flops())


def bench_extraction(cfg: dict, images: np.ndarray, dev: torch.device, peak: float) -> list[dict]:
    from fmeval.adapters.base import create_adapter
    from fmeval.data.transforms import prepare_batch
    from fmeval.device import autocast, prepare_module, resolve_precision, use_channels_last

    rows = []
    bs, nb = cfg["batch"], cfg["batches"]
    for name, size, tiny in cfg["models"]:
        adapter = create_adapter(name, pretrained=False, tiny=tiny, input_size=size, device=dev)
        precision = resolve_precision("bf16", dev, adapter.family)
        cl = use_channels_last(adapter.family, dev, precision)
        prepare_module(adapter, adapter.family, dev, precision)
        s = adapter.preprocess.input_size
        flops = forward_flops(adapter, s, dev)
        batch = images[:bs] if len(images) >= bs else np.resize(images, (bs,) + images.shape[1:])

        def run_once() -> None:
            x = prepare_batch(batch, adapter.preprocess, "resize", dev)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(dev, precision):
                adapter.encode_image(x)

        run_once()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(nb):
            run_once()
        _sync(dev)
        secs = time.perf_counter() - t0
        ips = bs * nb / secs
        rows.append({"model": name, "input_size": s, "tiny": tiny, "precision": precision,
                     "channels_last": cl, "batch": bs, "images_per_s": round(ips, 1),
                     "gflops_per_image": round(flops / 1e9, 3),
                     "mfu": ips * flops / peak, "seconds": round(secs, 3)})
        print(f"extract {name}@{s}: {ips:,.0f} img/s, MFU {ips * flops / peak:.1%}", flush=True)
    return rows


def bench_knn(cfg: dict, dev: torch.device) -> dict:
    from benchmarks.cases_perf import gemm_rate
    from fmeval.probes.knn import knn_predict
    from fmeval.probes.knn_search import SearchStats

    g = torch.Generator(device=dev).manual_seed(0)
    n, m, d = cfg["knn_train"], cfg["knn_test"], cfg["dim"]
    means = torch.randn(10, d, generator=g, device=dev)
    ytr = torch.randint(0, 10, (n,), generator=g, device=dev)
    xtr = means[ytr] + 2.0 * torch.randn(n, d, generator=g, device=dev)
    xte = means[torch.randint(0, 10, (m,), generator=g, device=dev)] + 2.0 * torch.randn(m, d, generator=g, device=dev)
    out: dict = {"n_train": n, "n_test": m, "dim": d, "k": 11}
    preds = {}
    for scoring in ("bf16", "fp32"):
        stats = SearchStats()
        _sync(dev)
        t0 = time.perf_counter()
        p = knn_predict(xtr, ytr, xte, [11], n_classes=10, rule="euclidean-majority", scoring=scoring,
                        stats=stats)[11]
        _sync(dev)
        secs = time.perf_counter() - t0
        preds[scoring] = p.argmax(1)
        gf = 2.0 * n * m * d / secs / 1e9
        out[scoring] = {"seconds": round(secs, 3), "achieved_gflops": float(f"{gf:.4g}"),  # toy sizes on a busy CPU: well under 0.1
                        "rows_by_precision": stats.by_precision, "rows_full_exact": stats.full_exact}
        print(f"knn {n:,}x{d} scoring {scoring}: {secs:.2f} s ({gf:,.0f} GFLOP/s)", flush=True)
    rows = max(1, min(1024, (1 << 27 if dev.type == "cuda" else 1 << 24) // n))
    for dt in ("fp32", "bf16"):
        out[f"gemm_{dt}_gflops"] = round(gemm_rate(rows, d, n, dt, str(dev)), 1)
    out["identical_predictions"] = bool(torch.equal(preds["bf16"], preds["fp32"]))
    out["speedup_bf16_scoring"] = out["fp32"]["seconds"] / out["bf16"]["seconds"]
    return out


def bench_finetune(cfg: dict, data: Path, dev: torch.device) -> list[dict]:
    from benchmarks.cases_perf import case_finetune

    rows = []
    for method in ("full", "lora"):
        r = case_finetune({**cfg["ft"], "method": method, "precision": "bf16", "data": str(data),
                           "device": str(dev)})
        rows.append(r)
        print(f"finetune {method}: {r['seconds']:.2f} s/epoch, {r['ms_per_step']:.0f} ms/step", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--skip", default="", help="comma list of sections to skip: extract,knn,finetune")
    args = ap.parse_args(argv)
    cfg, dev, skip = PRESETS[args.preset], torch.device(args.device), set(filter(None, args.skip.split(",")))
    peak, peak_src = bf16_peak(dev)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": args.preset,
                 "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "torch": torch.__version__, "bf16_peak_flops": peak, "bf16_peak_source": peak_src}
    images = np.load(args.data)["train_images"]
    if "extract" not in skip:
        res["extraction"] = bench_extraction(cfg, images, dev, peak)
    if "knn" not in skip:
        res["knn"] = bench_knn(cfg, dev)
    if "finetune" not in skip:
        ft = bench_finetune(cfg, Path(args.data), dev)
        res["finetune"] = {"rows": ft, "epoch_ratio_lora_over_full": ft[1]["seconds"] / ft[0]["seconds"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu.json" if dev.type == "cuda" else f"gpu_{args.preset}_{dev.type}.json"
    (out / name).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "finetune"}, indent=1))
    return res


if __name__ == "__main__":
    main()
