"""Benchmark: time per epoch and peak memory of LoRA vs full fine-tuning.

Not a test. Each configuration runs in its own subprocess, because peak RSS
(``getrusage``) cannot be reset inside a process. Writes
``benchmarks/results/finetune.json`` and ``finetune.md``.

    python benchmarks/finetune_bench.py                       # defaults below
    python benchmarks/finetune_bench.py --model vit-b16 --sizes 224 --steps 20 --device cuda

Defaults: a random-init ViT-S/16 (full size, 22M parameters) at input 32 and
64 px (28 px PneumoniaMNIST resized), 10 minibatches of 64 per epoch, 2 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_ROOT = ROOT.parent / "shared" / "data"


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this process; returns its measurements."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fmeval.device import resolve_device
    from fmeval.config import RunConfig
    from fmeval.modes.finetune import run_finetune
    from fmeval.training import TrainConfig

    cfg = RunConfig(
        mode=f"finetune-{args.method}", model=args.model, dataset=args.dataset, data_root=args.data_root, size=28,
        pretrained=False, tiny=args.tiny, input_size=args.size,
        seed=0, n_boot=0, limit=args.limit, device=args.device, batch_size=256,
        train=TrainConfig(epochs=args.epochs, lr=1e-4, patience=0, batch_size=args.batch_size,
                          max_steps_per_epoch=args.steps, warmup_epochs=0),
    )
    t0 = time.perf_counter()
    r = run_finetune(cfg)
    ex = r.extras["training"]
    times = ex["epoch_times_s"]
    steady = times[1:] or times  # epoch 1 includes one-off warm-up costs
    return {
        "model": args.model, "method": args.method, "input_size": args.size,
        "device": str(resolve_device(args.device)), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "steps_per_epoch": ex["steps_per_epoch"],
        "epochs": ex["epochs_run"], "trainable_params": ex["params"]["trainable"],
        "total_params": ex["params"]["total"],
        "time_per_epoch_s": sum(steady) / len(steady),
        "time_per_step_ms": 1000 * sum(steady) / len(steady) / ex["steps_per_epoch"],
        "epoch_times_s": times, "wall_s": time.perf_counter() - t0,
        **ex["peak_memory"],
        "test_auc": r.test.value("auc"),
    }


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Fine-tuning benchmark: LoRA vs full", "",
        f"{meta['when']} on {meta['machine']} ({meta['device']}); torch {meta['torch']}; "
        f"PneumoniaMNIST 28 px resized to the input size; random-init weights; "
        f"time per epoch = training steps + validation pass (limit {meta['limit']} per split), "
        "mean over epochs after the first.", "",
        "| model | method | input | trainable / total params | steps/epoch | s/epoch | s/epoch ÷ steps (ms) "
        "| peak RSS MB | CUDA max alloc MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['input_size']} | "
            f"{r['trainable_params']:,} / {r['total_params']:,} | {r['steps_per_epoch']} | "
            f"{r['time_per_epoch_s']:.2f} | {r['time_per_step_ms']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('cuda_max_allocated_mb', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit-s16")
    ap.add_argument("--tiny", action="store_true", help="tiny config instead of full-size random init")
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--sizes", default="32,64", help="encoder input sizes (comma-separated)")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--steps", type=int, default=10, help="minibatches per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=640, help="samples per split")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", default=str(RESULTS))
    # internal: run one configuration and print its JSON
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args)))
        return

    import torch

    env = dict(os.environ, FMEVAL_PROGRESS="0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("FMEVAL_ADAPTERS_DIR", str(Path(tmp) / "adapters"))
        env.setdefault("FMEVAL_CACHE_DIR", str(Path(tmp) / "cache"))
        for size in (int(s) for s in args.sizes.split(",")):
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, "--one", "--method", method, "--size", str(size),
                       "--model", args.model, "--dataset", args.dataset, "--data-root", args.data_root,
                       "--steps", str(args.steps), "--epochs", str(args.epochs),
                       "--batch-size", str(args.batch_size), "--limit", str(args.limit),
                       "--device", args.device]
                if args.tiny:
                    cmd.append("--tiny")
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{method} @ {size} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(line[len("RESULT "):])
                rows.append(row)
                print(f"{method:>4} @ {size:>3}px: {row['time_per_epoch_s']:.2f} s/epoch, "
                      f"{row['time_per_step_ms']:.0f} ms/step, peak RSS {row['peak_rss_mb']:.0f} MB, "
                      f"trainable {row['trainable_params']:,}/{row['total_params']:,}", flush=True)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}",
        "torch": torch.__version__, "limit": args.limit, "args": vars(args),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    (out / "finetune.md").write_text(_markdown(rows, meta))
    print(f"wrote {out / 'finetune.json'} and {out / 'finetune.md'}")


if __name__ == "__main__":
    main()
