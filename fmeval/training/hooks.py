"""The training loop's one callback point: observers of every optimiser step and every epoch.

Experiment trackers (W&B, MLflow, TensorBoard) and anything else that watches a
fine-tuning run subscribe here; the loops (:func:`fmeval.training.loop.fit`,
:func:`fmeval.training.multidomain.fit_multidomain`) call them and never know
what they are. An observer only watches: it receives copies of plain numbers,
and an exception in one is one warning line, after which that observer is
dropped for the rest of the run, so a broken tracker can never fail or change
a run (its own files are complete either way). ``KeyboardInterrupt`` is not
caught: stopping a run stays possible from inside an observer.

Where they are called (grep ``hooks.step`` / ``hooks.epoch``):

- ``step(step, metrics)``: after every optimiser step; ``step`` is the 1-based
  global step (``epoch * steps_per_epoch + b + 1``); ``metrics`` holds
  ``epoch`` (1-based), ``train_loss`` (this step's minibatch loss) and ``lr``;
  multi-domain runs add ``domain`` (the dataset of the step).
- ``epoch(epoch, metrics)``: after every epoch is scored and checkpointed;
  ``epoch`` is 1-based; ``metrics`` holds ``train_loss``, ``val_loss``,
  ``val_<select_metric>``, ``lr``, ``best_epoch``, ``epoch_time_s``;
  multi-domain runs add ``val_loss/<dataset>`` and ``val_<metric>/<dataset>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fmeval.tracking import StepCallback, step_callbacks


@dataclass
class TrainHooks:
    """The observers of one run (empty lists: nothing is called, nothing costs)."""

    on_step: list[StepCallback] = field(default_factory=list)
    on_epoch: list[StepCallback] = field(default_factory=list)

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        self._call(self.on_step, step, metrics)

    def epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._call(self.on_epoch, epoch, metrics)

    def _call(self, callbacks: list[StepCallback], n: int, metrics: dict[str, Any]) -> None:
        for cb in list(callbacks):
            try:
                cb(n, dict(metrics))
            except Exception as exc:  # an observer never fails the run
                from fmeval.progress import warn

                callbacks.remove(cb)
                name = getattr(cb, "__qualname__", type(cb).__name__)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                warn(f"training observer {name} failed ({first}); it is off for the rest of this run.")


def with_trackers(hooks: TrainHooks | None = None) -> TrainHooks | None:
    """``hooks`` plus the experiment trackers of the current run (:mod:`fmeval.tracking`), if any.

    Trackers log on one step axis: optimiser steps as ``train/step_loss`` and ``train/lr``;
    an epoch's numbers as ``train/<name>`` at the epoch's last step (``train_loss`` becomes
    ``train/loss``, the epoch's ``lr`` ``train/lr_epoch``, plus ``train/epoch``), so a resumed run
    continues the numbering. Non-numeric values (a multi-domain step's dataset) are not logged.
    """
    callbacks = step_callbacks()
    if not callbacks:
        return hooks
    hooks = hooks if hooks is not None else TrainHooks()
    last = [0]  # the last optimiser step seen: where an epoch's numbers are logged

    def on_step(step: int, m: dict[str, Any]) -> None:
        last[0] = step
        for cb in callbacks:
            cb(step, {"train/step_loss": float(m["train_loss"]), "train/lr": float(m["lr"])})

    def on_epoch(epoch: int, m: dict[str, Any]) -> None:
        renamed = {"train_loss": "loss", "lr": "lr_epoch"}
        out = {f"train/{renamed.get(k, k)}": float(v) for k, v in m.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["train/epoch"] = float(epoch)
        for cb in callbacks:
            cb(last[0], out)

    hooks.on_step.append(on_step)
    hooks.on_epoch.append(on_epoch)
    return hooks

