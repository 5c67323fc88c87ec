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

    Timing alone is a prisoner's dilemma when the rival is another search like
    this one: with a BLAS that does not wait at barriers (OpenBLAS), each
    process's two threads beat its one thread *given* the other keeps two, so
    both keep two and both run slower than if each took one core (measured,
    100k x 768 fp32, numpy's BLAS, 2 cores: 22.3 s each against about 17 s).
    So the CPU time the process got per wall second is also read: when the
    all-threads tiles got less than ``SHARED`` of their cores, the machine is
    shared and one thread is kept, whatever the timing says, until a trial
    of all threads gets its cores again.
    """

    SHARED = 0.75  # below this fraction of the cores the all-threads tiles got, the machine is shared

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
        self.share: float | None = None  # fraction of its cores the all-threads option got (EMA)

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
        self.gemm.set_threads(choice)
        self.last = choice

    @property
    def shared(self) -> bool:
        return self.share is not None and self.share < self.SHARED

    def record(self, seconds: float, cols: int, cpu_seconds: float | None = None) -> None:
        """One tile's wall time for ``cols`` training rows, and the process's CPU time over it.

        A trial (a tile of the option not kept) that leaves the choice as it was
        doubles the wait for the next trial; one that changes it resets the wait.
        """
        v = seconds / max(1, cols)
        trial = self.last != self.current
        if cpu_seconds is not None and self.last > 1 and seconds > 0:
            got = cpu_seconds / seconds / self.last
            # a trial is the only fresh reading of the all-threads option: it replaces the average
            self.share = got if trial or self.share is None else 0.5 * (self.share + got)
        old = self.per_col.get(self.last)
        self.per_col[self.last] = v if old is None else 0.5 * (old + v)
        if self.shared:
            self.current = 1
        elif len(self.per_col) == len(self.options):
            self.current = min(self.options, key=self.per_col.__getitem__)
        if trial:
            lost = self.current != self.last
            self.every = min(self.cap, 2 * self.every) if lost else self.base
            self.next_trial = self.tiles + self.every
        self.tiles += 1
