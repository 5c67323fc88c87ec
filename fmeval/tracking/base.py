"""What a tracker is, and the one registry of them.

A tracker mirrors a run into an experiment tracker (W&B, MLflow, TensorBoard)
while fmeval's own files stay the source of truth: it is *fed* - by the
training loops' step callbacks and by the runner once the reporter has written
the run - and never read back by fmeval. Three calls make a tracked run:
``start(params)`` (the resolved config, protocol and deviations),
``log(step, metrics)`` any number of times, and ``finish(metrics, artefacts)``
(the final test metrics with their CIs, the report files). Everything a
tracker needs to know about *where* (its local store, the study's group, the
run's name) is given to its constructor as a :class:`TrackerContext`.

A tracker may raise anywhere: :mod:`fmeval.tracking.fanout` turns that into one
warning line and stops calling it, so a tracker can never fail or change a run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from fmeval.errors import ConfigError
from fmeval.registry import Registry

#: What a training loop calls after a step or an epoch: ``(global step, {name: value})``.
StepCallback = Callable[[int, Mapping[str, float]], None]


class Tracker(Protocol):
    """One run in one experiment tracker."""

    def start(self, params: Mapping[str, Any]) -> None:
        """Open the run and record its parameters (a nested dict: the resolved config and more)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record metrics at a global step (training loss, learning rate, validation metrics)."""

    def finish(self, metrics: Mapping[str, float], artefacts: Sequence[Path], *, ok: bool = True,
               run_id: str | None = None) -> None:
        """Record the final metrics and the report files, and close the run (``ok=False``: the run failed).

        ``run_id``: fmeval's run id (the report folder's name), known only now: the tracker-side run
        takes it as its name, so each tracked run points at its report."""


@dataclass(frozen=True)
class TrackerContext:
    """Where and under which names a run is tracked.

    ``root``: the folder for local stores (W&B offline runs, the MLflow SQLite
    store, TensorBoard event files); ``group``: the study the run belongs to
    (None: a run typed by hand); ``name``: the tracker-side run name.
    """

    root: Path
    group: str | None
    name: str

    @property
    def group_or_default(self) -> str:
        return self.group or "fmeval"


@dataclass(frozen=True)
class TrackerKind:
    """A registered tracker: how to build it and what it needs installed."""

    name: str
    factory: Callable[[TrackerContext], Tracker]
    modules: tuple[str, ...]  # importable modules the tracker needs
    extra: str  # the optional extra that installs them

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def check_installed(self) -> None:
        """One line naming the extra when a package is missing (a usage error, exit 2)."""
        missing = self.missing()
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise ConfigError(f"--track {self.name} needs the {self.extra} extra ({', '.join(missing)} "
                              f"{verb} not installed): pip install 'fmeval[{self.extra}]'.")


TRACKERS: Registry[TrackerKind] = Registry("tracker", ConfigError)


def register_tracker(name: str, *, modules: tuple[str, ...], extra: str, description: str):
    """Register a tracker class (constructed with a :class:`TrackerContext`)."""

    def deco(factory):
        TRACKERS.add(name, TrackerKind(name, factory, modules, extra), description)
        return factory

    return deco
