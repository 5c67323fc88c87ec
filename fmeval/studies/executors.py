"""Executors: where and how a study's cells run.

Every executor runs the same function, :func:`run_cells`, on groups of cells
(one group = one encoder on one dataset and size), so the results do not
depend on the executor: state is on the filesystem, a cell is claimed with an
``flock`` (released by the kernel when a process dies, so ``kill -9`` leaves
no stale lock), and a finished cell is never run twice.

- ``local``: this process, cells in order.
- ``local --jobs N``: N worker processes (spawned), each taking whole groups;
  with several GPUs each worker sees one (``CUDA_VISIBLE_DEVICES``).
- ``slurm``: a submitit job array whose tasks each take a group of cells,
  with partition, GPUs, time and memory from the study file or options.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fmeval.errors import FmevalError
from fmeval.registry import Registry
from fmeval.studies.plan import Cell, Plan, read_state, write_state
from fmeval.studies.state import lock_path, move_aside

Progress = Callable[[Cell, str], None]  # (cell, "done" | "failed" | "skipped" | "running")


def _open_lock(state_dir: Path, cell: Cell):
    """The cell's lock file, opened; a folder in its place (a damaged study) is moved aside with a warning."""
    from fmeval.progress import warn

    state_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(state_dir, cell)
    try:
        return open(path, "a+")
    except IsADirectoryError:
        aside = move_aside(path)
        warn(f"cell {cell.label()}: its lock {path} was a folder (moved aside to {aside}); the cell runs again")
        return open(path, "a+")


@contextlib.contextmanager
def claim(state_dir: Path, cell: Cell, *, wait: bool = False) -> Iterator[bool]:
    """Hold the cell's lock; yields False when another live process has it (``wait``: wait for it).

    The lock is an ``flock``, which the kernel drops when its holder dies, so a
    cell held by a killed process is free again at once: a re-run reclaims it.
    """
    with _open_lock(state_dir, cell) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a live owner: its result is this cell's
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FmevalError) else f"{type(exc).__name__}: {text}"


def run_cell(state_dir: Path, cell: Cell, *, retry_failed: bool = False) -> str:
    """Run one cell unless it is finished (or failed, without ``retry_failed``)."""
    from fmeval.runner import execute

    st = read_state(state_dir, cell)
    if st and (st["status"] == "done" or (st["status"] == "failed" and not retry_failed)):
        return "skipped"
    with claim(state_dir, cell, wait=True) as mine:  # a live owner (another `study run`): wait for its result
        if not mine:
            return "skipped"  # another worker runs it (never with wait=True)
        st = read_state(state_dir, cell)  # it may have finished while we waited
        if st and st["status"] == "done":
            return "skipped"
        attempts = int((st or {}).get("attempts", 0)) + 1
        try:
            result = execute(cell.config, track=cell.track)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed cell is recorded and the study goes on
            write_state(state_dir, cell, status="failed", error=_one_line(exc), attempts=attempts,
                        traceback=None if isinstance(exc, FmevalError) else traceback.format_exc(limit=8))
            return "failed"
        write_state(state_dir, cell, status="done", run_id=result.run_id, report_dir=result.report_dir,  # relative
                    wall_time_s=result.wall_time_s, attempts=attempts)
        return "done"


def run_cells(state_dir: str, cells: list[Cell], retry_failed: bool = False,
              progress: Progress | None = None) -> dict[str, int]:
    """Run ``cells`` in order in this process (frozen cells of a group share one encoder)."""
    from fmeval.pipeline import reuse_adapters

    counts = {"done": 0, "failed": 0, "skipped": 0}
    with reuse_adapters():
        for cell in cells:
            if progress:
                progress(cell, "running")
            status = run_cell(Path(state_dir), cell, retry_failed=retry_failed)
            counts[status] += 1
            if progress:
                progress(cell, status)
    return counts


@dataclass(frozen=True)
class Executor:
    name: str
    run: Callable[..., dict[str, int]]
    description: str


EXECUTORS: Registry[Executor] = Registry("executor")


def _local(plan: Plan, *, jobs: int = 1, retry_failed: bool = False, progress: Progress | None = None,
           dry_run: bool = False, **_: object) -> dict[str, int]:
    if dry_run:
        return {"groups": len(plan.groups()), "cells": len(plan.cells)}
    if jobs <= 1:
        return run_cells(str(plan.state_dir), plan.cells, retry_failed, progress)
    return _parallel(plan, jobs, retry_failed, progress)


def _worker_init(gpus: list[str], counter, parent: int) -> None:
    """Pin each worker to one GPU when there are several (CUDA_VISIBLE_DEVICES); die with the parent."""
    die_with_parent(parent)
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    os.environ.setdefault("FMEVAL_PROGRESS", "0")


def die_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker when ``parent`` dies, even by ``kill -9`` (which runs no clean-up of its own).

    A worker left behind holds ~1 GB and, worse, its cell: a re-run would wait
    for it. On Linux the kernel sends SIGKILL when the parent dies
    (``PR_SET_PDEATHSIG``); elsewhere, and in case the parent died before the
    signal was armed, a daemon thread checks every ``poll_s`` that the parent
    is still this process's parent.
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="fmeval-die-with-parent", daemon=True).start()


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU workers
        return []


def _parallel(plan: Plan, jobs: int, retry_failed: bool, progress: Progress | None) -> dict[str, int]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # no forked torch/BLAS state
    counter = ctx.Value("i", 0)
    totals = {"done": 0, "failed": 0, "skipped": 0}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(_visible_gpus(), counter, os.getpid())) as pool:
        futures = {pool.submit(run_cells, str(plan.state_dir), group, retry_failed): group
                   for group in plan.groups()}
        for fut in as_completed(futures):
            for k, v in fut.result().items():
                totals[k] += v
            if progress:
                for cell in futures[fut]:
                    st = read_state(plan.state_dir, cell)
                    progress(cell, (st or {}).get("status", "skipped"))
    return totals


EXECUTORS.add("local", Executor("local", _local, "this machine: in order, or --jobs N worker processes"),
              "this machine")


# -- Slurm through submitit ----------------------------------------------------------
def slurm_tasks(plan: Plan, cells_per_task: int = 0) -> list[list[Cell]]:
    """The array's tasks: one (model, dataset, size) group each, split into chunks
    of ``cells_per_task`` when asked (0: whole groups)."""
    tasks: list[list[Cell]] = []
    for group in plan.groups():
        if cells_per_task and len(group) > cells_per_task:
            tasks += [group[i:i + cells_per_task] for i in range(0, len(group), cells_per_task)]
        else:
            tasks.append(group)
    return tasks


def slurm_parameters(plan: Plan) -> dict:
    s = plan.spec.executor.slurm
    params = {
        "slurm_partition": s.partition, "gpus_per_node": s.gpus_per_task, "tasks_per_node": 1,
        "cpus_per_task": s.cpus_per_task, "mem_gb": s.mem_gb, "timeout_min": s.time_min,
        "slurm_array_parallelism": s.array_parallelism, "name": f"fmeval-{plan.spec.name}",
    }
    extra = {k: v for k, v in (("account", s.account), ("qos", s.qos)) if v}
    if extra:
        params["slurm_additional_parameters"] = extra
    return {k: v for k, v in params.items() if v is not None}


def _run_task(state_dir: str, cells: list[Cell], retry_failed: bool) -> dict[str, int]:
    os.environ.setdefault("FMEVAL_PROGRESS", "0")
    return run_cells(state_dir, cells, retry_failed)


def _slurm(plan: Plan, *, retry_failed: bool = False, dry_run: bool = False, executor_factory=None,
           progress: Progress | None = None, **_: object) -> dict[str, int]:
    """Submit a job array (one task per group of cells) and wait for it.

    ``executor_factory(folder) -> submitit executor`` is for tests and for other
    clusters: submitit's ``LocalExecutor`` runs the same pickled tasks in local
    subprocesses.
    """
    tasks = [t for t in slurm_tasks(plan, plan.spec.executor.slurm.cells_per_task)
             if any(_pending(plan, c, retry_failed) for c in t)]
    if dry_run:
        return {"tasks": len(tasks), "cells": sum(len(t) for t in tasks)}
    import submitit

    folder = plan.root / "slurm" / "%j"
    if executor_factory is None:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(plan))
    else:
        executor = executor_factory(folder)
    if not tasks:
        return {"done": 0, "failed": 0, "skipped": len(plan.cells)}
    jobs = executor.map_array(_run_task, [str(plan.state_dir)] * len(tasks), tasks, [retry_failed] * len(tasks))
    totals = {"done": 0, "failed": 0, "skipped": 0}
    for job, task in zip(jobs, tasks):
        try:
            counts = job.result()
        except Exception as exc:  # noqa: BLE001 - a dead task: its cells stay pending, the rest counts
            counts = {"failed": 0, "done": 0, "skipped": 0}
            for cell in task:
                if read_state(plan.state_dir, cell) is None:
                    write_state(plan.state_dir, cell, status="failed", error=f"array task died: {_one_line(exc)}",
                                attempts=1)
                    counts["failed"] += 1
        for k, v in counts.items():
            totals[k] += v
        if progress:
            for cell in task:
                progress(cell, (read_state(plan.state_dir, cell) or {}).get("status", "skipped"))
    return totals


def _pending(plan: Plan, cell: Cell, retry_failed: bool) -> bool:
    st = read_state(plan.state_dir, cell)
    return st is None or (st["status"] == "failed" and retry_failed)


EXECUTORS.add("slurm", Executor("slurm", _slurm, "a Slurm job array through submitit"), "Slurm cluster")
