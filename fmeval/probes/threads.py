"""The GEMM thread count for a long run of equal-sized tiles, chosen by timing them."""

from __future__ import annotations

import math
import os
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
    So ``runqueue`` (Linux's per-thread scheduler statistics) is also read
    after each tile: when the process's threads, running all of them, were
    on a CPU for less than ``SHARED`` of the time they were ready to run
    (the rest they waited for a core), the machine is shared and one thread
    is kept, whatever the timing says, until a trial of all threads runs
    unhindered again. (The process's CPU time per wall second was tried
    first: other threads' CPU time is accounted at scheduler ticks, too
    coarse for 5-20 ms tiles, and read as sharing on a quiet machine.)
    """

    SHARED = 0.75  # below this fraction of their ready time the all-threads tiles ran, the machine is shared
    SHARED_CAP = 64  # the longest wait between trials while the machine reads as shared

    def __init__(self, threads: int, every: int = 32, gemm=TORCH, cap: int = 256, runqueue=None):
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
        self.share: float | None = None  # fraction of its ready time the all-threads option ran (EMA)
        self.runqueue = runqueue  # () -> (ns running, ns waiting for a CPU) of this process, or None
        self._rq = runqueue() if runqueue else None

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

    def _read_share(self) -> float | None:
        """Of the time this process's threads were ready to run since the last reading, the
        fraction they ran (None: no reading, or threads came and went in between)."""
        now = self.runqueue()
        prev, self._rq = self._rq, now
        if now is None or prev is None:
            return None
        ran, waited = now[0] - prev[0], now[1] - prev[1]
        return ran / (ran + waited) if ran >= 0 and waited >= 0 and ran + waited > 0 else None

    def record(self, seconds: float, cols: int, share: float | None = None) -> None:
        """One tile's wall time for ``cols`` training rows; ``share`` (default: read through
        ``runqueue``) is the fraction of their ready time the tile's threads ran.

        A trial (a tile of the option not kept) that leaves the choice as it was
        doubles the wait for the next trial; one that changes it resets the wait.
        """
        v = seconds / max(1, cols)
        trial = self.last != self.current
        if share is None and self.runqueue is not None:
            share = self._read_share()
        if share is not None and self.last > 1:
            got = share
            # a trial is the only fresh reading of the all-threads option: it replaces the average
            # (otherwise a slow average - one busy moment of the machine is not a rival -
            # from an unshared start: the probe chose all threads)
            prior = 1.0 if self.share is None else self.share
            self.share = got if trial else 0.75 * prior + 0.25 * got
        old = self.per_col.get(self.last)
        # a reading counts at most twice the estimate: one tile slowed by a busy moment (measured:
        # a quiet 100k cosine run then spent 182 of 500 tiles on one thread) cannot flip the choice
        self.per_col[self.last] = v if old is None else 0.5 * (old + min(v, 2 * old))
        if self.shared:
            self.current = 1
        elif len(self.per_col) == len(self.options):
            self.current = min(self.options, key=self.per_col.__getitem__)
        if trial:
            lost = self.current != self.last
            # while shared, trials come at least every SHARED_CAP tiles: a busy moment read as a
            # rival costs at most that many one-thread tiles
            cap = min(self.cap, self.SHARED_CAP) if self.shared else self.cap
            self.every = min(cap, 2 * self.every) if lost else self.base
            self.next_trial = self.tiles + self.every
        self.tiles += 1


def runqueue() -> tuple[int, int] | None:
    """(ns on a CPU, ns ready but waiting for one), summed over this process's threads: Linux's
    ``/proc/self/task/*/schedstat``; None where there is none."""
    run = wait = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/schedstat") as f:
                fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
        except (OSError, ValueError, IndexError):  # a thread that just ended; no schedstat
            continue
    return (run, wait) if run else None
