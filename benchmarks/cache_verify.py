"""What verifying a feature-cache hit costs, next to the extraction the hit saves.

A hit is loaded, its shape/dtype checked and its bytes hashed (BLAKE2b tree
hash, :func:`fmeval.cache.content_hash`) before it is served. This case
measures, for one cached split of ``rows`` x ``dim`` float32 features
(default 100k x 768 = 307 MB):

* ``hit_verified`` / ``hit_unverified``: ``FeatureCache.load`` with and
  without the hash (the difference is the price of verification). safetensors
  maps the file lazily, so an unverified hit reads no feature bytes until they
  are used; the difference therefore also holds the first read of the bytes
  (from the page cache here) that any use of the features pays anyway: an
  upper bound on what verifying adds;
* ``hash``: the content hash alone, multi-threaded (as used) and on one
  thread, and the standard library's SHA-256 / BLAKE2b over the same bytes
  on one thread (why BLAKE2b);
* ``save``: writing the entry (tensor + hash + manifest);
* ``extraction``: ``extract_features`` of ``model`` on ``extract_images``
  images, extrapolated linearly to ``rows`` images: what a hit saves.

Run alone: ``python -m benchmarks.cache_verify [--rows N --dim D --model M
--extract-images K --device cpu|cuda --out FILE]``. For the suite,
``CASES["cache_verify"]`` has the signature of the cases in
``benchmarks/cases.py`` (``dict -> dict``) and prints nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks.common import machine_info

DEFAULTS = dict(rows=100_000, dim=768, model="vit-b16", tiny=False, input_size=None,
                extract_images=1024, batch_size=256, device="cpu", repeats=3)


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _hash_rates(feats, repeats: int) -> dict:
    from fmeval.cache import content_hash

    buf = memoryview(feats.reshape(-1).view(__import__("torch").uint8).numpy())
    mb = len(buf) / 1e6
    rows = {
        "content_hash_threads": _best(lambda: content_hash(feats), repeats),
        "content_hash_1_thread": _best(lambda: content_hash(feats, threads=1), repeats),
        "sha256_1_thread": _best(lambda: hashlib.sha256(buf).digest(), repeats),
        "blake2b_1_thread": _best(lambda: hashlib.blake2b(buf, digest_size=32).digest(), repeats),
    }
    return {k: {"seconds": round(v, 4), "mb_per_s": round(mb / v, 1)} for k, v in rows.items()}


def _extraction(p: dict) -> dict:
    import numpy as np
    import torch

    from fmeval.adapters import create_adapter
    from fmeval.features import extract_features

    device = p["device"]
    adapter = create_adapter(p["model"], pretrained=False, tiny=p["tiny"],
                             input_size=p["input_size"], device=device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(p["extract_images"], 28, 28), dtype=np.uint8)
    run = lambda n: extract_features(adapter, images[:n], batch_size=p["batch_size"], device=device)  # noqa: E731
    run(min(len(images), p["batch_size"]))  # warm-up (cudnn autotune, allocator)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = _best(lambda: run(len(images)), max(1, p["repeats"] - 1))
    rate = len(images) / seconds
    return {
        "model": p["model"], "tiny": p["tiny"], "input_size": adapter.preprocess.input_size,
        "device": str(device), "images": len(images), "seconds": round(seconds, 4),
        "images_per_s": round(rate, 1),
        "seconds_for_rows_extrapolated": round(p["rows"] / rate, 2),
    }


def case_cache_verify(p: dict) -> dict:
    """One measurement set (see the module docstring); ``p`` overrides :data:`DEFAULTS`."""
    import torch

    from fmeval.cache import HASH_ALGO, FeatureCache

    p = {**DEFAULTS, **p}
    torch.manual_seed(0)
    feats = torch.randn(p["rows"], p["dim"])
    key = {"benchmark": "cache_verify", "rows": p["rows"], "dim": p["dim"]}
    with tempfile.TemporaryDirectory(prefix="fmeval-cache-verify-") as tmp:
        verified = FeatureCache(Path(tmp), notify=None)
        unverified = FeatureCache(Path(tmp), verify=False, notify=None)
        save_s = _best(lambda: verified.save("image", key, feats), 1)
        # warm page cache for both: compare the checks, not the disk
        assert torch.equal(verified.load("image", key), feats)
        hit_v = _best(lambda: verified.load("image", key, expect_rows=p["rows"]), p["repeats"])
        hit_u = _best(lambda: unverified.load("image", key, expect_rows=p["rows"]), p["repeats"])
    extraction = _extraction(p) if p["extract_images"] else None
    verify_cost = hit_v - hit_u
    out = {
        "what": f"FeatureCache hit of {p['rows']} x {p['dim']} float32 "
                f"({feats.numel() * 4 / 1e6:.0f} MB), best of {p['repeats']}, warm page cache",
        "hash_algo": HASH_ALGO,
        "threads_for_hash": min(8, os.cpu_count() or 1),
        "save_seconds": round(save_s, 4),
        "hit_verified_seconds": round(hit_v, 4),
        "hit_unverified_seconds": round(hit_u, 4),
        "verification_seconds": round(verify_cost, 4),
        "hash": _hash_rates(feats, p["repeats"]),
        "extraction": extraction,
    }
    if extraction:
        saved = extraction["seconds_for_rows_extrapolated"]
        out["verification_share_of_extraction"] = round(verify_cost / saved, 5) if saved else None
    return out


CASES: dict[str, Callable[[dict], dict]] = {"cache_verify": case_cache_verify}


def to_markdown(res: dict) -> str:
    ex = res.get("extraction") or {}
    rows = [
        ("cache hit, verified (load + shape + hash)", f"{res['hit_verified_seconds']:.3f} s"),
        ("cache hit, unverified (load + shape)", f"{res['hit_unverified_seconds']:.3f} s"),
        ("verification cost", f"{res['verification_seconds']:.3f} s"),
        ("content hash, threads / 1 thread",
         f"{res['hash']['content_hash_threads']['mb_per_s']:.0f} / "
         f"{res['hash']['content_hash_1_thread']['mb_per_s']:.0f} MB/s"),
        ("stdlib SHA-256 / BLAKE2b, 1 thread",
         f"{res['hash']['sha256_1_thread']['mb_per_s']:.0f} / "
         f"{res['hash']['blake2b_1_thread']['mb_per_s']:.0f} MB/s"),
    ]
    if ex:
        rows.append((f"extraction it saves ({ex['model']}{' tiny' if ex['tiny'] else ''}, "
                     f"{ex['input_size']} px, {ex['device']}; {ex['images_per_s']:.0f} img/s, "
                     "extrapolated)", f"{ex['seconds_for_rows_extrapolated']:.1f} s"))
    lines = [f"{res['what']}; hash {res['hash_algo']}", "", "| | |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            ap.add_argument(flag, action="store_true")
        else:
            ap.add_argument(flag, type=type(default) if default is not None else int, default=default)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results (+ .md next to it)")
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    os.environ.setdefault("FMEVAL_PROGRESS", "0")
    res = {"machine": machine_info(), "params": args, **case_cache_verify(args)}
    md = to_markdown(res)
    print(md)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".md").write_text(md)
    return res


if __name__ == "__main__":
    main()
