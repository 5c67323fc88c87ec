"""The GEMM thread count for a long run of equal-sized tiles, chosen by timing them."""

from __future__ import annotations

import math
import time

import torch

from fmeval.probes.blas import TORCH


class ThreadChooser:
    """The scan GEMM's thread count, chosen by timing tiles: all threads vs one.

    On a shared machine each parallel region of a many-threaded op waits at its
    barrier for whichever thread the scheduler parked, and a kNN runs hundreds
    of them: measured on 2 cores under a load of 12, 20k x 768 train, one
    thread took 3.2 s where two took 11-22 s (scikit-learn: 6 s). On a quiet
    machine all threads win. So tiles (equal work) are timed with each, the
    faster is kept, and the other is tried again after ``every`` tiles (the
    first time after 8: a rival that started with us shows by then); each
    trial the other option loses doubles that wait (up to ``cap``), so
    on a steady machine trials cost a few tiles rather than one in ``every``,
    and a trial it wins resets it. ``gemm`` (``probes.blas``) owns the threads.
    """

    def __init__(self, threads: int, every: int = 32, gemm=TORCH, cap: int = 256):
        self.options = sorted({max(1, threads), 1}, reverse=True)
        self.per_col: dict[int, float] = {}
        self.tiles = 0
        self.every = self.base = every
        self.cap = max(every, cap)
        self.next_trial = min(every, 8) - 1
        self.gemm = gemm
        self.current = self.options[0]
        self.probed: dict[int, float] = {}
        self.last = self.current

    def probe(self, repeats: int = 3) -> int:
        """Time a GEMM (0.8 GFLOP: big enough that BLAS splits it over threads) with one thread and
        with all; set and return the faster.

        All threads are kept only if clearly faster (< 0.8 x one thread's time);
        a clear answer after one try each is final, an unclear one is timed again.
        """
        if len(self.options) > 1:
            g = torch.Generator().manual_seed(0)
            a = torch.randn(1024, 768, generator=g)
            b = torch.randn(512, 768, generator=g)
            out = torch.empty(1024, 512)
            best = {t: math.inf for t in self.options}
            self.gemm.mm(a, b, out)  # warm-up: allocator, BLAS dispatch
            for _ in range(repeats):
                for t in (1, self.options[0]):
                    self.gemm.set_threads(t)
                    t0 = time.perf_counter()
                    self.gemm.mm(a, b, out)
                    best[t] = min(best[t], time.perf_counter() - t0)
                ratio = best[self.options[0]] / best[1]
                if ratio < 0.6 or ratio > 1.2:
                    break
            self.probed = best
            self.current = self.options[0] if best[self.options[0]] < 0.8 * best[1] else 1
        self.gemm.set_threads(self.current)
        return self.current

    def pick(self) -> None:
        """Set the thread count for the next tile: the faster so far, the other now and then."""
        choice = self.current
        if len(self.options) > 1 and self.tiles >= self.next_trial:
            choice = next(t for t in self.options if t != self.current)
        elif len(self.per_col) == len(self.options) > 1:
            choice = min(self.options, key=self.per_col.__getitem__)
        self.gemm.set_threads(choice)
        self.last = choice

    def record(self, seconds: float, cols: int) -> None:
        v = seconds / max(1, cols)
        old = self.per_col.get(self.last)
        self.per_col[self.last] = v if old is None else 0.5 * (old + v)
        if self.last != self.current:  # a trial of the other option: schedule the next one
            lost = v > self.per_col.get(self.current, v)
            self.every = min(self.cap, 2 * self.every) if lost else self.base
            self.next_trial = self.tiles + self.every

        if len(self.per_col) == len(self.options):
            self.current = min(self.options, key=self.per_col.__getitem__)
        self.tiles += 1
