"""Timing, peak-RSS and machine-info helpers shared by the benchmark cases.

Peak memory: Linux lets a process reset its own RSS high-water mark
(``echo 5 > /proc/self/clear_refs``), so the peak of one call is
``VmHWM`` after it minus ``VmRSS`` before it. Where that is not allowed (other
kernels) a 5 ms sampling thread stands in for it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MB = 1024 * 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import resource  # fallback: lifetime peak, the best a non-Linux host offers

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _cpu_time() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Measurement:
    seconds: float = 0.0
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    method: str = ""
    cpu_seconds: float = 0.0  # user + system time of all threads of this process

    @property
    def peak_delta_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.rss_before_mb)

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 4),
            "rss_before_mb": round(self.rss_before_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_rss_delta_mb": round(self.peak_delta_mb, 1),
            "rss_method": self.method,
            "cpu_seconds": round(self.cpu_seconds, 3),
            # ~ number of threads when the machine is otherwise idle; far less when
            # other processes compete for the cores
            "cpu_utilisation": round(self.cpu_seconds / self.seconds, 2) if self.seconds else None,
        }


@contextmanager
def measure(device: str = "cpu") -> Iterator[Measurement]:
    """Wall time and peak-RSS delta of the ``with`` body (CUDA-synchronised)."""
    import gc

    import torch

    gc.collect()
    m = Measurement()
    sampler: threading.Thread | None = None
    stop = threading.Event()
    peak = [0.0]
    if _reset_hwm():
        m.method = "VmHWM reset via /proc/self/clear_refs"
    else:
        m.method = "VmRSS sampled every 5 ms"

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
    m.rss_before_mb = rss_mb()
    peak[0] = m.rss_before_mb
    if sampler is not None:
        sampler.start()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    c0 = _cpu_time()
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        if cuda:
            torch.cuda.synchronize()
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = _cpu_time() - c0
        if sampler is not None:
            stop.set()
            sampler.join()
            m.peak_rss_mb = max(peak[0], rss_mb())
        else:
            hwm = _status_kb("VmHWM")
            m.peak_rss_mb = hwm / 1024 if hwm is not None else rss_mb()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import numpy as np
    import sklearn
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:  # native bf16 (and AMX) as the kernel reports it: what `auto` kNN scoring keys on
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
        info["cpu_bf16_flags"] = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in flags]
    except OSError:
        info["cpu_bf16_flags"] = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["sklearn_threadpools"] = sorted(
            {f"{p['internal_api']}:{p['num_threads']}" for p in threadpool_info()}
        )
    except Exception:
        pass
    return info


def synthetic_features(
    n: int, *, dim: int = 768, n_classes: int = 10, latent: int = 64, seed: int = 0
):
    """A learnable but not trivial feature set: float32 [n, dim], int64 [n].

    Class means in a ``latent``-dim space plus unit Gaussian noise (classes
    overlap), lifted to ``dim`` by a fixed random projection, plus isotropic
    noise. The class means and the projection are the same for every seed,
    so seeds 1/2/3 give train/val/test splits of one problem; a linear
    classifier reaches roughly 80 % accuracy on 10 classes.
    """
    import torch

    problem = torch.Generator().manual_seed(1234)
    means = torch.randn(n_classes, latent, generator=problem) * 0.3
    proj = torch.randn(latent, dim, generator=problem) / latent**0.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    z = means[y] + torch.randn(n, latent, generator=g)
    x = torch.addmm(torch.randn(n, dim, generator=g).mul_(0.5), z, proj)
    return x.float().contiguous(), y


def dump_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
