"""Torch's thread count for a long run of equal-sized parallel ops, chosen by timing them."""

from __future__ import annotations

import math
import time

import torch


class ThreadChooser:
    """torch's thread count for the scan tiles, chosen by timing them: all threads vs one.

    On a shared machine each parallel region of a many-threaded op waits at its
    barrier for whichever thread the scheduler parked, and a kNN runs hundreds
    of them: measured on 2 cores under a load of 12, 20k x 768 train, one
    thread took 3.2 s where two took 11-22 s (scikit-learn: 6 s). On a quiet
    machine all threads win. So tiles (equal work) are timed with each, the
    faster is kept, and the other is tried again every ``every`` tiles.
    """

    def __init__(self, threads: int, every: int = 32):
        self.options = sorted({max(1, threads), 1}, reverse=True)
        self.per_col: dict[int, float] = {}
        self.tiles = 0
        self.every = every
        self.current = self.options[0]
        self.probed: dict[int, float] = {}

    def probe(self, repeats: int = 3) -> int:
        """Time a GEMM (0.8 GFLOP: big enough that BLAS splits it over threads) with one thread and
        with all; set and return the faster.

        All threads are kept only if clearly faster (< 0.8 x one thread's time);
        a clear answer after one try each is final, an unclear one is timed again.
        """
        if len(self.options) > 1:
            a = torch.randn(512, 768)
            b = torch.randn(768, 1024)
            best = {t: math.inf for t in self.options}
            a @ b  # warm-up: allocator, BLAS dispatch
            for _ in range(repeats):
                for t in (1, self.options[0]):
                    torch.set_num_threads(t)
                    t0 = time.perf_counter()
                    a @ b
                    best[t] = min(best[t], time.perf_counter() - t0)
                ratio = best[self.options[0]] / best[1]
                if ratio < 0.6 or ratio > 1.2:
                    break
            self.probed = best
            self.current = self.options[0] if best[self.options[0]] < 0.8 * best[1] else 1
        torch.set_num_threads(self.current)
        return self.current

    def pick(self) -> None:
        """Set the thread count for the next tile: the faster so far, the other now and then."""
        choice = self.current
        if len(self.options) > 1 and self.tiles % self.every == self.every - 1:
            choice = next(t for t in self.options if t != self.current)
        elif len(self.per_col) == len(self.options) > 1:
            choice = min(self.options, key=self.per_col.__getitem__)
        if choice != torch.get_num_threads():
            torch.set_num_threads(choice)
        self.last = choice

    def record(self, seconds: float, cols: int) -> None:
        v = seconds / max(1, cols)
        old = self.per_col.get(self.last)
        self.per_col[self.last] = v if old is None else 0.5 * (old + v)
        if len(self.per_col) == len(self.options):
            self.current = min(self.options, key=self.per_col.__getitem__)
        self.tiles += 1
