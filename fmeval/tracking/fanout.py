"""One run, mirrored to every requested tracker; a tracker's failure never reaches the run.

:func:`tracked_run` opens the trackers, makes :func:`step_callbacks` return
the fan-out's ``log`` for the training loops of this run (a context variable,
so the modes need no new parameter), and closes the trackers as failed when
the run raises. Every call into a tracker goes through :meth:`FanOut._call`:
an exception becomes one warning line naming the tracker, and that tracker is
not called again - the run goes on, its files complete and unchanged.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from fmeval.tracking.base import TRACKERS, StepCallback, Tracker, TrackerContext


class FanOut:
    """The trackers of one run, each called until its first failure."""

    def __init__(self, names: Sequence[str], ctx: TrackerContext) -> None:
        self.names: list[str] = []
        self._trackers: list[Tracker | None] = []
        self.failed: dict[str, str] = {}
        self.last_step = 0
        for name in names:
            self.names.append(name)
            self._trackers.append(None)
            self._call(len(self.names) - 1, "open", lambda n=name: self._open(n, ctx))

    def _open(self, name: str, ctx: TrackerContext) -> None:
        self._trackers[self.names.index(name)] = TRACKERS.get(name).factory(ctx)

    def _call(self, i: int, what: str, fn) -> None:
        name = self.names[i]
        if name in self.failed:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a tracker must never fail the run
            from fmeval.progress import warn

            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.failed[name] = reason
            self._trackers[i] = None
            warn(f"tracking: {name} failed ({what}: {type(exc).__name__}: {reason}); the run goes on without it")

    def _each(self, what: str, method: str, *args: Any, **kwargs: Any) -> None:
        for i, tracker in enumerate(self._trackers):
            if tracker is not None:
                self._call(i, what, lambda t=tracker: getattr(t, method)(*args, **kwargs))

    @property
    def active(self) -> list[str]:
        return [n for n, t in zip(self.names, self._trackers) if t is not None]

    def start(self, params: Mapping[str, Any]) -> None:
        self._each("start", "start", params)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """A training loop's callback: finite values only (a NaN validation loss without validation data)."""
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if not clean:
            return
        self.last_step = max(self.last_step, int(step))
        self._each("log", "log", int(step), clean)

    def finish(self, metrics: Mapping[str, float], artefacts: Sequence[Path], *, ok: bool = True,
               run_id: str | None = None) -> None:
        self._each("finish", "finish", dict(metrics), list(artefacts), ok=ok, run_id=run_id)
        self._trackers = [None] * len(self._trackers)


_ACTIVE: ContextVar[FanOut | None] = ContextVar("fmeval_tracking_active", default=None)


def step_callbacks() -> list[StepCallback]:
    """The callbacks a training loop of the current run calls (empty when the run is not tracked)."""
    fan = _ACTIVE.get()
    return [fan.log] if fan is not None and fan.active else []


@contextlib.contextmanager
def tracked_run(names: Sequence[str], ctx: TrackerContext, params: Mapping[str, Any]) -> Iterator[FanOut | None]:
    """Trackers open for the body; closed as failed if it raises. ``names`` empty: no-op (yields None)."""
    if not names:
        yield None
        return
    fan = FanOut(names, ctx)
    fan.start(params)
    token = _ACTIVE.set(fan)
    try:
        yield fan
    except BaseException:
        fan.finish({}, [], ok=False)
        raise
    finally:
        _ACTIVE.reset(token)
    fan.finish({}, [])  # no-op when the body already finished it
