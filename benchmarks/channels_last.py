"""Channels-last or not, per adapter family: measured forward passes, not a rule of thumb.

For each family's representative model (full-size random weights at its
native input, plus a tiny one for the record) this times the forward pass of
one batch in four settings: fp32 / bf16 autocast x contiguous / channels-last,
interleaved and repeated so that drifting machine load hits all four alike
(the median of the paired ratios decides). The clock is the process's CPU
time by default (``--clock cpu``, with ``--threads 1``): on a shared machine
wall time mostly measures the other processes, while the CPU seconds of a
single-threaded forward pass are what the layout changes. ``--clock wall``
for a quiet machine or a GPU. Channels-last is chosen for a
(family, device, precision) when it is at least ``GAIN`` (10 %) faster; below
that the contiguous layout stays (no change without a measured reason).

The same timings say whether bf16 is faster than fp32 at all for the family
(each in its chosen layout; :func:`decide_bf16`): on native-bf16 hardware
``auto`` keeps fp32 for a tower measured clearly slower in bf16.

Decisions are written to ``fmeval/precision_policy.json`` with ``--write-policy``
only for the settings this host can speak for: ``cpu-fp32`` always,
``cpu-bf16`` and the bf16 speed only on a CPU with native bf16 (AMX /
AVX-512-BF16; elsewhere bf16 is emulated and its timings say nothing about
hosts where ``auto`` picks it),
``cuda-*`` on a GPU.

    python -m benchmarks.channels_last [--device cpu] [--batch 8] [--repeats 3] [--write-policy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GAIN = 1.10

# family -> (model, full-size input) measured at native resolution
FAMILY_MODELS: dict[str, list[tuple[str, int]]] = {
    "vit": [("vit-b16", 224)],
    "dino": [("dino-vitb16", 224)],
    "dinov2": [("dinov2-vits14", 224)],
    "sam": [("sam-vitb", 256)],  # native 1024 px costs 16 s per image on 2 cores
    "cnn": [("resnet50", 224), ("resnet18", 64)],
    "open_clip": [("clip-vit-b16", 224)],
    "medclip": [("medclip", 224)],
    "medvit": [("medvit-small", 224)],
}
SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def time_forward(adapter, x: torch.Tensor, precision: str, channels_last: bool, device: torch.device,
                 clock=time.perf_counter) -> float:
    from fmeval.device import autocast

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    adapter.to(memory_format=fmt)
    xin = x.contiguous(memory_format=fmt)
    with torch.inference_mode(), autocast(device, precision):
        adapter.encode_image(xin)  # warm-up at this shape and layout (oneDNN primitive creation)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        adapter.encode_image(xin)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return clock() - t0


def measure_model(name: str, size: int | None, tiny: bool, batch: int, repeats: int,
                  device: torch.device, settings=tuple(SETTINGS), clock=time.perf_counter) -> dict:
    from fmeval.adapters.base import create_adapter

    adapter = create_adapter(name, pretrained=False, tiny=tiny, input_size=None if tiny else size,
                             device=device)
    s = adapter.preprocess.input_size
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[str, list[float]] = {f"{p}{'+cl' if cl else ''}": [] for p, cl in settings}
    for _ in range(repeats):  # interleaved: load drift hits every setting alike
        for p, cl in settings:
            times[f"{p}{'+cl' if cl else ''}"].append(time_forward(adapter, x, p, cl, device, clock))
    out = {"model": name, "tiny": tiny, "input_size": s, "batch": batch,
           "images_per_s": {k: batch / min(v) for k, v in times.items()}, "seconds": times}
    for p in {p for p, _ in settings}:
        if f"{p}+cl" in times and p in times:
            out[f"cl_speedup_{p}"] = statistics.median(_paired(out, p))
    if "bf16" in times:
        out["bf16_speedup"] = statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"]))
    return out


def _paired(row: dict, precision: str) -> list[float]:
    """Per-repeat speed-ups of channels-last (contiguous time / channels-last time)."""
    sec = row["seconds"]
    return [a / b for a, b in zip(sec[precision], sec[f"{precision}+cl"])]


def _geomean(values) -> float:
    """Geometric mean of speed-ups (1.0 for none)."""
    values = list(values)
    return float(torch.tensor(values).log().mean().exp()) if values else 1.0


def decide(rows: list[dict], precision: str) -> dict:
    """Channels-last for a family iff the geometric mean of its full-size models' median
    speed-ups is >= GAIN *and* channels-last won every single repeat of every model: a
    measured, repeatable gain, not one noisy draw on a shared machine."""
    full = [r for r in rows if not r["tiny"]]
    med = {f"{r['model']}@{r['input_size']}": statistics.median(_paired(r, precision)) for r in full}
    every = all(min(_paired(r, precision)) > 1.0 for r in full)
    gm = _geomean(med.values())
    return {"use": bool(gm >= GAIN and every), "speedup": round(gm, 3), "won_every_repeat": every,
            "models": {k: round(v, 3) for k, v in med.items()}}


def decide_bf16(rows: list[dict], layouts: dict[str, bool]) -> dict:
    """Whether bf16 autocast is faster than fp32 for a family, each in the layout chosen for it.

    ``auto`` means bf16 on hardware with native bf16, so bf16 stays unless it is
    measurably slower: the geometric mean of the full-size models' median
    speed-ups (fp32 time / bf16 time) below 1 / GAIN *and* bf16 lost every repeat
    of every model (some towers run bf16 slower than fp32 on a CPU: a slow path
    under autocast, not the GEMMs)."""
    def key(p: str) -> str:
        return f"{p}+cl" if layouts.get(p) else p

    full = [r for r in rows if not r["tiny"]]
    per = {f"{r['model']}@{r['input_size']}": [a / b for a, b in zip(r["seconds"][key("fp32")],
                                                                     r["seconds"][key("bf16")])]
           for r in full}
    med = {k: statistics.median(v) for k, v in per.items()}
    lost_all = all(max(v) < 1.0 for v in per.values())
    gm = _geomean(med.values())
    return {"use": not (gm < 1 / GAIN and lost_all), "speedup": round(gm, 3), "lost_every_repeat": lost_all,
            "layouts": {p: ("channels-last" if cl else "contiguous") for p, cl in layouts.items()},
            "models": {k: round(v, 3) for k, v in med.items()}}


def write_policy(decisions: dict[str, dict[str, dict]], source: str, path: Path | None = None,
                 speed: dict[str, dict[str, dict]] | None = None) -> Path:
    """Record the channels-last decisions (and, on native-bf16 hardware, whether bf16 is faster)."""
    from fmeval.device import POLICY_FILE, load_policy
    from fmeval.io import atomic_write_text

    path = Path(path or POLICY_FILE)
    policy = json.loads(path.read_text()) if path.exists() else {"families": {}}
    for fam, per_key in decisions.items():
        cl = policy.setdefault("families", {}).setdefault(fam, {}).setdefault("channels_last", {})
        for key, d in per_key.items():
            cl[key] = {**d, "source": source}
    for fam, per_dev in (speed or {}).items():
        sp = policy.setdefault("families", {}).setdefault(fam, {}).setdefault("bf16_speed", {})
        for dev, d in per_dev.items():
            sp[dev] = {**d, "source": source}
    atomic_write_text(path, json.dumps(policy, indent=1, sort_keys=True) + "\n")
    load_policy.cache_clear()
    return path


def main(argv: list[str] | None = None) -> dict:
    from fmeval.device import cpu_bf16_capable, cpu_flags

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--families", default=None)
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="cpu: process CPU time (default on CPU); wall: wall time (default on GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --clock cpu)")
    ap.add_argument("--all-settings", action="store_true", help="bf16 too on a host without native bf16")
    ap.add_argument("--write-policy", action="store_true")
    ap.add_argument("--from-json", default=None, help="re-decide (and --write-policy) from a saved run")
    args = ap.parse_args(argv)
    if args.from_json:
        return redecide(Path(args.from_json), args.write_policy)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    threads = args.threads or (1 if clock_name == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    fams = args.families.split(",") if args.families else list(FAMILY_MODELS)
    native = device.type == "cuda" or cpu_bf16_capable()
    # emulated bf16 (no native support) is never chosen by auto and its layout timings say
    # nothing about hosts where it is: measure fp32 only there, unless asked
    settings = SETTINGS if (native or args.all_settings) else [s for s in SETTINGS if s[0] == "fp32"]
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": str(device),
                 "threads": torch.get_num_threads(), "native_bf16": native, "clock": clock_name,
                 "load_average": [round(v, 2) for v in __import__("os").getloadavg()],
                 "bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f),
                 "gain_threshold": GAIN, "families": {}}
    for fam in fams:
        rows = []
        for name, size in FAMILY_MODELS[fam]:
            for tiny in ([] if args.no_tiny else [True]) + [False]:
                r = measure_model(name, size, tiny, args.batch, args.repeats, device, settings, clock=clock)
                rows.append(r)
                print(f"{fam:<10} {name:<14} {'tiny' if tiny else 'full'} @{r['input_size']:<4} "
                      + " ".join(f"{k} {v:7.1f}" for k, v in r["images_per_s"].items()) + " img/s",
                      file=sys.stderr, flush=True)
        res["families"][fam] = _decisions(rows, device.type)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from fmeval.io import atomic_write_text

        atomic_write_text(out / f"channels_last_{device.type}.json", json.dumps(res, indent=1) + "\n")
    if args.write_policy:
        _write(res, device.type)
    return res


def _decisions(rows: list[dict], dev: str) -> dict:
    """The family's channels-last decision per precision measured, and bf16's speed where both ran."""
    precisions = sorted({k.split("+")[0] for k in rows[0]["seconds"]})
    out = {"rows": rows, "decisions": {f"{dev}-{p}": decide(rows, p) for p in precisions}}
    if {"fp32", "bf16"} <= set(precisions):
        out["bf16_speed"] = decide_bf16(rows, {p: out["decisions"][f"{dev}-{p}"]["use"] for p in precisions})
    return out


def _write(res: dict, dev: str) -> None:
    """Only what this host can speak for: bf16 layouts and speed only with native bf16."""
    native = res["native_bf16"]
    keys = [f"{dev}-fp32"] + ([f"{dev}-bf16"] if native else [])
    speed = {f: {dev: v["bf16_speed"]} for f, v in res["families"].items() if native and "bf16_speed" in v}
    write_policy({f: {k: v["decisions"][k] for k in keys} for f, v in res["families"].items()},
                 f"benchmarks/channels_last.py on {dev} ({res['date']}, {res.get('clock', 'wall')} clock, "
                 f"{res['threads']} threads, native bf16: {native})", speed=speed)


def redecide(path: Path, write: bool) -> dict:
    """Decisions again from a saved run's timings (e.g. after changing the rule)."""
    res = json.loads(path.read_text())
    dev = res["device"].split(":")[0]
    for fam, v in res["families"].items():
        res["families"][fam] = _decisions(v["rows"], dev)
    path.write_text(json.dumps(res, indent=1) + "\n")
    if write:
        _write(res, dev)
    return res


if __name__ == "__main__":
    main()
