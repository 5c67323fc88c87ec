"""Benchmark cases of the precision work (issue 15): GEMM roofline, fine-tuning epochs.

Same contract as :mod:`benchmarks.cases`: one measured call per fresh process,
inputs built before the timer, a JSON-able dict out.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import measure


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# -- GEMM roofline -------------------------------------------------------------------


def gemm_rate(m: int, k: int, n: int, dtype: str, device: str = "cpu", repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` (after one warm-up)."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dt)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=dt)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def numpy_rate(m: int, k: int, n: int, dtype: str, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of numpy's ``[m, k] @ [k, n]`` at its BLAS's own thread count."""
    dt = {"fp32": np.float32, "fp64": np.float64}[dtype]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def case_gemm(p: dict) -> dict:
    """This machine's fp32 and bf16 GEMM throughput: square, and the kNN's scoring shape."""
    dev = p.get("device", "cpu")
    shapes = {"square": (p["square"],) * 3, "knn": (p["knn_rows"], p["dim"], p["knn_cols"])}
    out: dict = {"device": dev, "threads": _threads(), "shapes": {k: list(v) for k, v in shapes.items()}}
    t0 = time.perf_counter()
    for name, (m, k, n) in shapes.items():
        for dt in ("fp32", "bf16"):
            out[f"{name}_{dt}_gflops"] = round(gemm_rate(m, k, n, dt, dev), 1)
    if dev == "cpu" and _threads() > 1:  # the kNN may run one thread (a shared machine): its roofline
        import torch  # is the better of the two, each measured here

        m, k, n = shapes["knn"]
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        for dt in ("fp32", "bf16"):
            one = round(gemm_rate(m, k, n, dt, dev), 1)
            out[f"knn_{dt}_gflops_1_thread"] = one
            out[f"knn_{dt}_gflops_{saved}_threads"] = out[f"knn_{dt}_gflops"]
            out[f"knn_{dt}_gflops"] = max(one, out[f"knn_{dt}_gflops"])
        torch.set_num_threads(saved)
    if dev == "cpu":  # numpy's BLAS: fp32 (the kNN may use it, probes.blas) and fp64 (scikit-learn's
        m, k, n = shapes["knn"]  # brute kNN multiplies in float64: the most fp32 scoring can gain on it)
        for dt in ("fp32", "fp64"):
            out[f"knn_{dt}_gflops_numpy"] = round(numpy_rate(m, k, n, dt), 1)
        out["knn_fp32_gflops_torch"] = out["knn_fp32_gflops"]
        out["knn_fp32_gflops"] = max(out["knn_fp32_gflops"], out["knn_fp32_gflops_numpy"])
        out["knn_fp64_gflops"] = out["knn_fp64_gflops_numpy"]
        out["fp32_over_fp64"] = round(out["knn_fp32_gflops"] / out["knn_fp64_gflops"], 3)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_delta_mb"] = 0.0
    out["bf16_over_fp32"] = round(out["square_bf16_gflops"] / out["square_fp32_gflops"], 3)
    return out


# -- fine-tuning epoch ------------------------------------------------------------------


def _train_step(model, opt, x, y, device, precision):
    import torch

    from fmeval.device import autocast

    with autocast(device, precision):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def case_finetune(p: dict) -> dict:
    """One epoch (``steps`` minibatches + a validation pass) of LoRA or full fine-tuning.

    Built from fmeval's own pieces (adapter, ``METHODS`` prepare/train mode,
    ``Classifier``, AdamW param groups, ``prepare_batch``) with the precision
    policy's autocast and memory format, so fp32 and bf16 are measured the same
    way; one warm-up step first (kernel selection, optimizer state allocation).
    """
    import torch

    from fmeval.adapters.base import create_adapter
    from fmeval.data.transforms import prepare_batch
    from fmeval.device import autocast, prepare_module, resolve_precision
    from fmeval.training.lora import LoraSettings, count_parameters
    from fmeval.training.methods import METHODS, Classifier
    from fmeval.training.optim import build_optimizer, param_groups

    dev = torch.device(p.get("device", "cpu"))
    torch.manual_seed(0)
    adapter = create_adapter(p["model"], pretrained=False, tiny=p.get("tiny", False),
                             input_size=p.get("input_size"), device=dev)
    precision = resolve_precision(p["precision"], dev, adapter.family)
    method = METHODS.get(p["method"])
    method.prepare(adapter, LoraSettings(dropout=p.get("lora_dropout", 0.1)))
    model = Classifier(adapter, 2).to(dev)
    prepare_module(model, adapter.family, dev, precision)
    opt = build_optimizer(param_groups(model.backbone, model.head, weight_decay=0.01, layer_decay=None), 1e-4)
    z = np.load(p["data"])
    bs, steps = p["batch_size"], p["steps"]
    train = z["train_images"][: bs * (steps + 1)]
    labels = torch.from_numpy(z["train_labels"][: bs * (steps + 1), 0]).long().to(dev)
    val = z["val_images"][: p["n_val"]]
    pre = adapter.preprocess
    method.set_train_mode(model)
    _train_step(model, opt, prepare_batch(train[:bs], pre, "resize", dev), labels[:bs], dev, precision)
    with measure(str(dev)) as m:
        t0 = time.perf_counter()
        method.set_train_mode(model)
        for s in range(1, steps + 1):
            x = prepare_batch(train[s * bs : (s + 1) * bs], pre, "resize", dev)
            _train_step(model, opt, x, labels[s * bs : (s + 1) * bs], dev, precision)
        t_train = time.perf_counter() - t0
        model.eval()
        with torch.inference_mode(), autocast(dev, precision):
            for i in range(0, len(val), 256):
                model(prepare_batch(val[i : i + 256], pre, "resize", dev))
    trainable, total = count_parameters(model)
    out = {**m.as_dict(), "model": p["model"], "method": p["method"], "precision": precision,
           "input_size": pre.input_size, "batch_size": bs, "steps": steps, "n_val": len(val),
           "train_seconds": round(t_train, 3), "val_seconds": round(m.seconds - t_train, 3),
           "ms_per_step": round(1000 * t_train / steps, 1), "trainable_params": trainable,
           "total_params": total, "lora_dropout": p.get("lora_dropout", 0.1), "threads": _threads()}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


PERF_CASES = {"gemm": case_gemm, "finetune": case_finetune}
