"""Measure what the MedMNIST+ train()-mode linear probe changes (issue 22 item 2).

For each model, three probes on the same data, same recipe (medmnist-plus linprobe: AdamW lr 1e-4,
wd 0.01, batch 64, cosine per epoch, patience 5 on validation loss, raw features):
  cached   - fmeval's eval-mode probe on cached features (probes/linear.py)
  eval-bb  - the train-mode probe's loop with the backbone in eval() (isolates the trainer)
  train-bb - the reference's probe: frozen backbone in train() (BatchNorm adapts, dropout on)
train-bb minus eval-bb is the effect of train() mode alone.

Usage: FMEVAL_DATA_ROOT=... python scripts/measure_probe_backbone.py [--epochs 15] [--canvas 28]
       [--lite0 PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import time

from fmeval.modes.linprobe import run_linprobe
from fmeval.modes.linprobe_train import run_trainmode_probe
from fmeval.runner import make_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--canvas", type=int, default=28)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--lite0", default=None, help="tf_efficientnet_lite0 safetensors (real ImageNet weights)")
    ap.add_argument("--skip-resnet", action="store_true")
    a = ap.parse_args()
    models = [] if a.skip_resnet else [("resnet18 (random init)", {"model": "resnet18", "pretrained": False})]
    if a.lite0:
        models.append(("tf_efficientnet_lite0 (ImageNet)", {"model": "timm:tf_efficientnet_lite0.in1k",
                                                            "weights": a.lite0}))
    print(f"PneumoniaMNIST 28 px, canvas {a.canvas}, probe epochs <= {a.epochs}, limit {a.limit}")
    print("| model | probe | test AUC | test ACC | val loss | best epoch | s |")
    print("|---|---|---|---|---|---|---|")
    for label, spec in models:
        base = {"protocol": "medmnist-plus", "dataset": "pneumoniamnist", "canvas": a.canvas, "input_size": a.canvas,
                "probe.epochs": a.epochs, "n_boot": 0, "use_cache": False, **spec}
        if a.limit:
            base["limit"] = a.limit
        runs = [("cached", lambda: run_linprobe(make_config("linprobe", {**base, "linprobe.backbone": "eval"}))),
                ("eval-bb", lambda: run_trainmode_probe(make_config("linprobe", {**base, "linprobe.backbone": "train"}),
                                                        backbone_train=False)),
                ("train-bb", lambda: run_trainmode_probe(make_config("linprobe", {**base, "linprobe.backbone": "train"})))]
        for name, fn in runs:
            t0 = time.perf_counter()
            r = fn()
            sel = r.selection
            print(f"| {label} | {name} | {r.test.value('auc'):.4f} | {r.test.value('acc'):.4f} | "
                  f"{sel.get('val_loss', float('nan')):.4f} | {sel.get('best_epoch')} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
