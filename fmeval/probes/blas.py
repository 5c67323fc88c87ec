"""The fp32 GEMM that scores kNN tiles: torch's BLAS or numpy's, whichever is faster on this machine.

A kNN over 100k training rows is a GEMM of 1.5 TFLOP and little else, so the
BLAS decides the time. torch's CPU BLAS (MKL or oneDNN in the PyPI wheels)
and numpy's (OpenBLAS in the PyPI wheels) differ by machine: on an AMD EPYC
with AVX-512, numpy's sgemm ran a [4096, 768] x [768, 512] tile at
204 GFLOP/s where torch's ``addmm`` ran it at 187. Neither wins everywhere, so the
faster is measured once per process (``fastest``) on the tile shape the
search uses; bf16 and GPU GEMMs stay with torch (numpy has neither).

Each backend owns the thread count of its BLAS: the search's thread chooser
(``probes.threads``) sets it through ``set_threads``. With numpy's BLAS doing
the GEMMs, torch's own ops between them (block minima, merges) run on one
thread: torch's OpenMP workers and OpenBLAS's spin-waiting workers on the same
cores were measured 5x slower than either alone (50 s against 10 s, 2 cores).
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import torch


class TorchGemm:
    """``torch.mm``; threads are torch's."""

    name = "torch"

    def mm(self, b: torch.Tensor, op: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = b @ op.T``."""
        return torch.mm(b, op.T, out=out)

    def threads(self) -> int:
        return torch.get_num_threads()

    def set_threads(self, n: int) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)


class NumpyGemm:
    """``numpy.matmul`` on the same memory (no copies); threads are numpy's BLAS's, via threadpoolctl."""

    name = "numpy"

    def __init__(self) -> None:
        from threadpoolctl import ThreadpoolController

        self._libs = ThreadpoolController().select(user_api="blas").lib_controllers

    @property
    def available(self) -> bool:
        """threadpoolctl can see (hence set the threads of) numpy's BLAS."""
        return bool(self._libs)

    def mm(self, b: torch.Tensor, op: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        np.matmul(b.numpy(), op.numpy().T, out=out.numpy())
        return out

    def threads(self) -> int:
        return max((lc.num_threads for lc in self._libs), default=1)

    def set_threads(self, n: int) -> None:
        for lc in self._libs:
            if lc.num_threads != n:  # read from the library: other code may have set it
                lc.set_num_threads(n)


TORCH = TorchGemm()
# below this many multiply-adds (n_train x n_test x D) the search takes a second or less on a
# CPU and timing the two BLAS (about 0.1 s) would cost more than the faster one can save
MIN_WORK_TO_TIME = 2e11


@lru_cache(maxsize=1)
def numpy_gemm() -> NumpyGemm | None:
    try:
        g = NumpyGemm()
    except Exception:  # threadpoolctl missing or unable to read a library: keep torch's
        return None
    return g if g.available else None


def _best_seconds(gemm, b: torch.Tensor, op: torch.Tensor, out: torch.Tensor, repeats: int) -> float:
    gemm.mm(b, op, out)  # warm-up: thread pool start, packing buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        gemm.mm(b, op, out)
        best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=8)
def _fastest(threads: int, k: int, rows: int, tile: int) -> tuple[str, tuple[tuple[str, float], ...]]:
    candidates = [TORCH] + ([numpy_gemm()] if numpy_gemm() is not None else [])
    if len(candidates) == 1:
        return TORCH.name, ()
    g = torch.Generator().manual_seed(0)
    b = torch.randn(tile, k, generator=g)
    op = torch.randn(rows, k, generator=g)
    out = torch.empty(tile, rows)
    saved = {c.name: c.threads() for c in candidates}
    times = {}
    try:
        for c in candidates:
            c.set_threads(threads)
            times[c.name] = _best_seconds(c, b, op, out, repeats=2)
    finally:
        for c in candidates:
            c.set_threads(saved[c.name])
    best = min(times, key=times.__getitem__)
    return best, tuple(sorted(times.items()))


def fastest(device: torch.device, precision: str, threads: int, k: int, rows: int, tile: int,
            work: float) -> tuple[TorchGemm | NumpyGemm, dict[str, float]]:
    """The GEMM for the scan tiles, and the seconds each candidate took on one tile (empty: not timed).

    Timed only for large fp32 searches on a CPU, once per process and shape.
    """
    if device.type != "cpu" or precision != "fp32" or work < MIN_WORK_TO_TIME:
        return TORCH, {}
    name, times = _fastest(max(1, threads), k, rows, tile)
    return (numpy_gemm() if name == "numpy" else TORCH), dict(times)
