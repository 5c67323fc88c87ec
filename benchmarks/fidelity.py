"""What bf16 costs, measured per adapter family on real PneumoniaMNIST images.

For every 2D family (timm ViT, DINO, DINOv2, SAM, CNN, open_clip image + text
towers, timm CLIP image towers, MedCLIP, MedViT) and for tiny and full-size
random weights (the 3D families are not measured: PneumoniaMNIST is 2D):

* the cosine between bf16-autocast and fp32 features of the same images
  (image tower; text tower too for vision-language families);
* kNN (DINOv2 cosine rule, k=11), linear probe (the default grid, selected on
  val) and, for vision-language families, zero-shot (the shipped prompt bank)
  test metrics from bf16 features vs fp32 features, each with its percentile
  bootstrap CI (``fmeval.metrics.compute_metrics``).

A family passes when every bf16 metric lies inside the fp32 metric's CI and
the smallest feature cosine is at least ``MIN_COSINE``; ``auto`` precision
picks bf16 only for families that pass (``fmeval.device.resolve_precision``).

    python -m benchmarks.fidelity                      # full measurement (minutes)
    python -m benchmarks.fidelity --preset quick       # fewer images
    python -m benchmarks.fidelity --write-policy       # also record pass/fail in fmeval/precision_policy.json

``tests/test_precision.py`` runs :func:`measure_family` on tiny models and a
subset, so the numbers in the policy table are produced by this code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
RESULTS = REPO / "benchmarks" / "results"
MIN_COSINE = 0.99  # below this the features themselves are no longer the same
METRICS_CHECKED = ("acc", "auc")


@dataclass(frozen=True)
class FamilyModel:
    """The registered model that stands for an adapter family, and its sizes."""

    family: str
    model: str
    full_input: int  # input size for the full-size run (reduced from native where cost demands)


FAMILY_MODELS: tuple[FamilyModel, ...] = (
    FamilyModel("vit", "vit-b16", 64),
    FamilyModel("dino", "dino-vitb16", 64),
    FamilyModel("dinov2", "dinov2-vits14", 56),
    FamilyModel("sam", "sam-vitb", 64),
    FamilyModel("cnn", "resnet50", 64),
    FamilyModel("open_clip", "clip-vit-b16", 64),
    FamilyModel("clip", "vit-b16-clip-ft", 64),  # timm CLIP image towers (MedMNIST+)
    FamilyModel("medclip", "medclip", 224),  # its Swin fails below 224 px (see report)
    FamilyModel("medvit", "medvit-small", 64),
)

PRESETS = {
    # tiny: all of PneumoniaMNIST; full size: a class-stratified subset
    "full": dict(tiny_n=(4708, 524, 624), full_n=(1024, 256, 512), n_boot=1000, probe_epochs=100),
    "quick": dict(tiny_n=(1024, 256, 624), full_n=(256, 64, 256), n_boot=1000, probe_epochs=100),
    "toy": dict(tiny_n=(400, 100, 200), full_n=None, n_boot=200, probe_epochs=30),
}


@dataclass
class MetricShift:
    probe: str  # knn | linear | zeroshot
    metric: str
    fp32: float
    fp32_ci: tuple[float, float]
    bf16: float
    inside_ci: bool


@dataclass
class FamilyFidelity:
    family: str
    model: str
    size: str  # tiny | full
    input_size: int
    n: tuple[int, int, int]
    image_cosine: dict[str, float]
    text_cosine: dict[str, float] | None
    shifts: list[MetricShift] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        cos_ok = self.image_cosine["min"] >= MIN_COSINE and (
            self.text_cosine is None or self.text_cosine["min"] >= MIN_COSINE)
        return cos_ok and all(s.inside_ci for s in self.shifts)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def load_split_subset(path: Path, n: tuple[int, int, int], seed: int = 0) -> dict:
    """{split: (uint8 images, int labels [N])}: the first n per split after a seeded shuffle."""
    z = np.load(path)
    out = {}
    rng = np.random.default_rng(seed)
    for split, k in zip(("train", "val", "test"), n):
        x, y = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
        idx = np.sort(rng.permutation(len(y))[: min(k, len(y))])
        out[split] = (x[idx], y[idx].astype(np.int64))
    return out


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Per-row cosine of fp32 ``a`` and bf16 ``b`` features; also after removing the fp32 mean.

    Random-weight encoders often emit a large common component (DINOv2's
    LayerScale starts at 1e-5, so its random features are a constant plus a
    1e-5 signal): the plain cosine is then ~1 whatever bf16 does to the signal.
    ``centred_min`` compares what distinguishes the images.
    """
    a, b = a.double(), b.double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    mu = a.mean(0, keepdim=True)
    cc = torch.nn.functional.cosine_similarity(a - mu, b - mu, dim=1)
    return {"min": float(cos.min()), "p01": float(torch.quantile(cos, 0.01)), "mean": float(cos.mean()),
            "centred_min": float(cc.min()), "centred_mean": float(cc.mean())}


def encode_images(adapter, images: np.ndarray, precision: str, *, batch_size: int = 64,
                  device: str = "cpu") -> torch.Tensor:
    """Features through fmeval's own extraction (``extract_features``) at ``precision``,
    in the memory format the policy picks for the family."""
    from fmeval.features import extract_features

    return extract_features(adapter, images, batch_size=batch_size, device=device, precision=precision,
                            description="fidelity")


def encode_texts(adapter, prompts: list[list[str]], precision: str, device: str = "cpu") -> list[torch.Tensor]:
    from fmeval.device import autocast
    from fmeval.zeroshot import encode_prompts

    per_class = bool(getattr(adapter, "per_class_text", False))
    with torch.inference_mode(), autocast(torch.device(device), precision):
        feats = encode_prompts(adapter.encode_text, prompts, per_class=per_class)
    return [f.float() for f in feats]


def _shift(probe: str, task: str, y: np.ndarray, s32: np.ndarray, s16: np.ndarray,
           names: list[str], n_boot: int) -> list[MetricShift]:
    from fmeval.metrics import compute_metrics

    r32 = compute_metrics(task, y, s32, class_names=names, n_boot=n_boot, metrics=METRICS_CHECKED)
    r16 = compute_metrics(task, y, s16, class_names=names, n_boot=0, metrics=METRICS_CHECKED)
    out = []
    for m in METRICS_CHECKED:
        v32, v16 = r32.metrics[m], r16.metrics[m].value
        lo, hi = v32.ci_low, v32.ci_high
        out.append(MetricShift(probe, m, float(v32.value), (float(lo), float(hi)), float(v16),
                               bool(lo <= v16 <= hi) if math.isfinite(v16) else False))
    return out


def probe_scores(feats: dict[str, torch.Tensor], labels: dict[str, np.ndarray], n_classes: int,
                 probe_epochs: int) -> dict[str, np.ndarray]:
    """Test-split scores of kNN and of the linear probe trained on these features."""
    from fmeval.probes.knn import knn_predict
    from fmeval.probes.linear import ProbeConfig, train_linear_probe

    ytr = torch.from_numpy(labels["train"])
    knn = knn_predict(feats["train"], ytr, feats["test"], [11], n_classes=n_classes, rule="cosine")[11]
    probe = train_linear_probe(feats["train"], ytr, feats["val"], torch.from_numpy(labels["val"]),
                               n_outputs=n_classes, multilabel=False,
                               config=ProbeConfig(epochs=probe_epochs))
    return {"knn": knn.numpy(), "linear": probe.predict_proba(feats["test"]).numpy()}


def measure_family(fm: FamilyModel, data: dict, *, tiny: bool, n_boot: int, probe_epochs: int,
                   device: str = "cpu") -> FamilyFidelity:
    """bf16 vs fp32 features and metrics of one family on ``data`` (see module doc)."""
    from fmeval.adapters.base import create_adapter
    from fmeval.data.info import dataset_info

    info = dataset_info("pneumoniamnist")
    adapter = create_adapter(fm.model, pretrained=False, tiny=tiny,
                             input_size=None if tiny else fm.full_input, device=device)
    labels = {s: data[s][1] for s in data}
    feats: dict[str, dict[str, torch.Tensor]] = {}
    seconds = {}
    for prec in ("fp32", "bf16"):
        t0 = time.perf_counter()
        feats[prec] = {s: encode_images(adapter, data[s][0], prec, device=device) for s in data}
        seconds[f"extract_{prec}"] = round(time.perf_counter() - t0, 2)
    res = FamilyFidelity(
        family=fm.family, model=fm.model, size="tiny" if tiny else "full",
        input_size=adapter.preprocess.input_size, n=tuple(len(labels[s]) for s in ("train", "val", "test")),
        image_cosine=cosine_stats(torch.cat(list(feats["fp32"].values())),
                                  torch.cat(list(feats["bf16"].values()))),
        text_cosine=None, seconds=seconds,
    )
    task, n_classes, names = info.task, info.n_classes, list(info.labels)
    scores = {p: probe_scores(feats[p], labels, n_classes, probe_epochs) for p in ("fp32", "bf16")}
    for probe in ("knn", "linear"):
        res.shifts += _shift(probe, task, labels["test"], scores["fp32"][probe], scores["bf16"][probe],
                             names, n_boot)
    if adapter.supports_text:
        res.text_cosine, zs = zeroshot_shift(adapter, feats, labels["test"], task, names, n_boot, device)
        res.shifts += zs
    return res


def zeroshot_shift(adapter, feats, y_test, task, names, n_boot, device):
    from fmeval.prompts import resolve_bank
    from fmeval.zeroshot import zeroshot_probs

    bank = resolve_bank(None, "pneumoniamnist")
    prompts = [list(p) for p in bank.prompts(None)]
    text = {p: encode_texts(adapter, prompts, p, device) for p in ("fp32", "bf16")}
    tcos = cosine_stats(torch.cat(text["fp32"]), torch.cat(text["bf16"]))
    probs = {p: zeroshot_probs(feats[p]["test"], text[p], logit_scale=adapter.logit_scale).numpy()
             for p in ("fp32", "bf16")}
    return tcos, _shift("zeroshot", task, y_test, probs["fp32"], probs["bf16"], names, n_boot)


def family_verdicts(results: list[FamilyFidelity]) -> dict[str, dict]:
    """Per family: ok only if every measured size passed; the numbers behind it."""
    out: dict[str, dict] = {}
    for r in results:
        v = out.setdefault(r.family, {"ok": True, "min_cosine": 1.0, "outside_ci": [], "sizes": []})
        v["ok"] = v["ok"] and r.ok
        v["min_cosine"] = min(v["min_cosine"], r.image_cosine["min"],
                              r.text_cosine["min"] if r.text_cosine else 1.0)
        v["outside_ci"] += [f"{r.size}:{s.probe}:{s.metric} {s.bf16:.4f} vs {s.fp32:.4f} "
                            f"[{s.fp32_ci[0]:.4f}, {s.fp32_ci[1]:.4f}]" for s in r.shifts if not s.inside_ci]
        v["sizes"].append(r.size)
    return out


def write_policy(verdicts: dict[str, dict], source: str, path: Path | None = None) -> Path:
    from fmeval.device import POLICY_FILE, load_policy
    from fmeval.io import atomic_write_text

    path = Path(path or POLICY_FILE)
    load_policy.cache_clear()
    policy = json.loads(path.read_text()) if path.exists() else {"families": {}}
    for fam, v in verdicts.items():
        policy.setdefault("families", {}).setdefault(fam, {})["bf16_fidelity"] = {
            "ok": v["ok"], "min_cosine": round(v["min_cosine"], 6), "outside_ci": v["outside_ci"],
            "sizes": v["sizes"], "source": source,
        }
    atomic_write_text(path, json.dumps(policy, indent=1, sort_keys=True) + "\n")
    load_policy.cache_clear()
    return path


def _from_dict(d: dict) -> FamilyFidelity:
    d = {k: v for k, v in d.items() if k != "ok"}
    d["shifts"] = [MetricShift(**{**s, "fp32_ci": tuple(s["fp32_ci"])}) for s in d["shifts"]]
    d["n"] = tuple(d["n"])
    return FamilyFidelity(**d)


def run(preset: str, data_path: Path, families: list[str] | None = None, device: str = "cpu",
        partial: Path | None = None, resume: Path | None = None) -> dict:
    """Measure every (family, size) of the preset; ``resume`` keeps those a saved partial run has."""
    cfg = PRESETS[preset]
    chosen = [fm for fm in FAMILY_MODELS if families is None or fm.family in families]
    results = [_from_dict(d) for d in json.loads(resume.read_text())] if resume else []
    done = {(r.family, r.size) for r in results}
    t0 = time.perf_counter()
    sizes = [(True, cfg["tiny_n"])] + ([(False, cfg["full_n"])] if cfg["full_n"] else [])
    for tiny, n in sizes:
        data = load_split_subset(data_path, n)
        for fm in chosen:
            if (fm.family, "tiny" if tiny else "full") in done:
                continue
            r = measure_family(fm, data, tiny=tiny, n_boot=cfg["n_boot"],
                               probe_epochs=cfg["probe_epochs"], device=device)
            results.append(r)
            if partial is not None:  # a long run keeps what it has measured
                partial.write_text(json.dumps([x.as_dict() for x in results], indent=1) + "\n")
            print(f"{fm.family:<10} {r.size:<5} @{r.input_size:<4} min cos {r.image_cosine['min']:.6f}"
                  + (f" text {r.text_cosine['min']:.6f}" if r.text_cosine else "")
                  + f"  {'ok' if r.ok else 'FAIL'}  {r.seconds}", file=sys.stderr, flush=True)
    out = {"preset": preset, "min_cosine_threshold": MIN_COSINE, "metrics": list(METRICS_CHECKED),
           "seconds": round(time.perf_counter() - t0, 1),
           "results": [r.as_dict() for r in results], "verdicts": family_verdicts(results)}
    if resume:  # say which results this run kept rather than measured
        out["resumed"] = {"from": str(resume), "kept": sorted(map(list, done))}
    return out


def to_markdown(res: dict) -> str:
    lines = ["| family | model | weights | input | n train/val/test | min cos image (centred) | min cos text "
             "| metric shifts (bf16 - fp32) | inside fp32 CI |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        shifts = "; ".join(f"{s['probe']} {s['metric']} {s['bf16'] - s['fp32']:+.4f}" for s in r["shifts"])
        inside = all(s["inside_ci"] for s in r["shifts"])
        tc = f"{r['text_cosine']['min']:.5f}" if r["text_cosine"] else "-"
        cen = r["image_cosine"].get("centred_min")
        ic = f"{r['image_cosine']['min']:.5f}" + (f" ({cen:.4f})" if cen is not None else "")
        lines.append(f"| {r['family']} | {r['model']} | {r['size']} | {r['input_size']} | "
                     f"{'/'.join(map(str, r['n']))} | {ic} | {tc} | {shifts} | "
                     f"{'yes' if inside else '**no**'} |")
    return "\n".join(lines) + "\n"


def _machine(device: str) -> dict:
    """Where the bf16 was computed: native (AMX / AVX-512-BF16, a GPU) or emulated."""
    from benchmarks.common import cpu_model
    from fmeval.device import cpu_bf16_capable, native_bf16

    return {"cpu": cpu_model(), "device": device, "cpu_native_bf16": cpu_bf16_capable(),
            "native_bf16": native_bf16(torch.device(device))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--families", default=None, help="comma-separated subset of families")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--write-policy", action="store_true", help="record the verdicts in the policy table")
    ap.add_argument("--resume", default=None, help="a fidelity.partial.json whose results are kept")
    args = ap.parse_args(argv)
    fams = args.families.split(",") if args.families else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(args.preset, Path(args.data), fams, args.device, partial=out / "fidelity.partial.json",
              resume=Path(args.resume) if args.resume else None)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["load_average_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    res["machine"] = _machine(args.device)
    from fmeval.io import atomic_write_text

    atomic_write_text(out / "fidelity.json", json.dumps(res, indent=1) + "\n")
    atomic_write_text(out / "fidelity.md", to_markdown(res))
    if args.write_policy:
        write_policy(res["verdicts"], f"benchmarks/fidelity.py --preset {args.preset} ({res['date']})")
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
