"""The trackers: Weights & Biases, MLflow and TensorBoard, each local unless the user says otherwise.

- ``wandb``: offline run folders under ``<root>/wandb/`` (``WANDB_MODE`` and
  ``WANDB_DIR``, when the user set them, are wandb's to read); the study is the
  run's *group*; the report folder is a ``fmeval-report`` artefact. Read back
  offline with ``wandb leet inspect --summary --json <run folder>``, upload
  later with ``wandb sync``.
- ``mlflow``: a SQLite store ``<root>/mlflow.db`` with artefacts in
  ``<root>/mlartifacts/`` (MLflow's file store is deprecated), unless
  ``MLFLOW_TRACKING_URI`` is set; the study is the *experiment* (default
  ``fmeval``). ``mlflow ui --backend-store-uri sqlite:///<root>/mlflow.db``.
- ``tensorboard``: event files in ``<root>/tensorboard/<study>/<run_id>/``
  (``tensorboard --logdir <root>/tensorboard``); scalars are float32 there,
  the config and ``report.md`` are text summaries (TensorBoard has no artefacts).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fmeval.tracking.base import TrackerContext, register_tracker
from fmeval.tracking.flatten import flat_params


@register_tracker("wandb", modules=("wandb",), extra="track-wandb",
                  description="Weights & Biases (offline run folders unless WANDB_MODE is set)")
class WandbTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        self.ctx, self.run = ctx, None

    def start(self, params: Mapping[str, Any]) -> None:
        import wandb

        folder = self.ctx.root
        folder.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if "WANDB_MODE" not in os.environ:  # offline by default; the user's WANDB_MODE wins
            kwargs["mode"] = "offline"
        if "WANDB_DIR" not in os.environ:
            kwargs["dir"] = str(folder)
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                  save_code=False)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "fmeval", group=self.ctx.group,
                              name=self.ctx.name, config=dict(params), reinit="create_new", settings=settings,
                              **kwargs)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, metrics: Mapping[str, float], artefacts: Sequence[Path], *, ok: bool = True,
               run_id: str | None = None) -> None:
        import wandb

        try:
            if run_id:
                self.run.name = run_id
                self.run.config.update({"fmeval_run_id": run_id}, allow_val_change=True)
            if metrics:
                self.run.summary.update(dict(metrics))
            files = [Path(a) for a in artefacts if Path(a).is_file()]
            if files:
                art = wandb.Artifact(f"report-{run_id or self.ctx.name}", type="fmeval-report")
                for f in files:
                    art.add_file(str(f), name=f.name)
                self.run.log_artifact(art)
        finally:
            self.run.finish(exit_code=0 if ok else 1)


@register_tracker("mlflow", modules=("mlflow", "sqlalchemy", "alembic"), extra="track-mlflow",
                  description="MLflow (a SQLite store under the reports folder unless MLFLOW_TRACKING_URI is set)")
class MlflowTracker:
    _BATCH = 1000  # metrics per log_batch call (MLflow's limit)
    _PARAMS = 100  # params per log_batch call (MLflow's limit)

    def __init__(self, ctx: TrackerContext) -> None:
        self.ctx, self.client, self.run_id, self.step = ctx, None, None, 0
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")

    @contextlib.contextmanager
    def _turn(self):
        """Writers of one local store take turns (``flock``): the parallel workers of a study would
        otherwise race to create its tables and meet "database is locked"."""
        if not self.local:
            yield
            return
        import fcntl

        self.ctx.root.mkdir(parents=True, exist_ok=True)
        with open(self.ctx.root / ".mlflow.lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _client(self):
        import logging

        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            lg = logging.getLogger(noisy)
            if lg.level == logging.NOTSET:  # quiet MLflow's one-off "creating tables" lines, unless configured
                lg.setLevel(logging.WARNING)
        if not self.local:
            return MlflowClient(), None
        uri = f"sqlite:///{(self.ctx.root / 'mlflow.db').resolve()}"
        return MlflowClient(tracking_uri=uri), (self.ctx.root / "mlartifacts").resolve().as_uri()

    def _experiment(self, artifacts: str | None) -> str:
        name = self.ctx.group_or_default
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # noqa: BLE001 - created meanwhile by a parallel study worker
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        with self._turn():
            self.client, artifacts = self._client()
            tags = {"fmeval.study": self.ctx.group or ""}
            run = self.client.create_run(self._experiment(artifacts), run_name=self.ctx.name, tags=tags)
            self.run_id = run.info.run_id
            flat = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
            for i in range(0, len(flat), self._PARAMS):
                self.client.log_batch(self.run_id, params=flat[i:i + self._PARAMS])

    def _metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        with self._turn():
            for i in range(0, len(rows), self._BATCH):
                self.client.log_batch(self.run_id, metrics=rows[i:i + self._BATCH])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.step = max(self.step, step)
        self._metrics(step, metrics)

    def finish(self, metrics: Mapping[str, float], artefacts: Sequence[Path], *, ok: bool = True,
               run_id: str | None = None) -> None:
        try:
            if metrics:
                self._metrics(self.step, metrics)
            with self._turn():
                if run_id:
                    self.client.set_tag(self.run_id, "mlflow.runName", run_id)
                    self.client.set_tag(self.run_id, "fmeval.run_id", run_id)
                for f in artefacts:
                    if Path(f).is_file():
                        self.client.log_artifact(self.run_id, str(f), artifact_path="report")
        finally:
            with self._turn():
                self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


@register_tracker("tensorboard", modules=("tensorboard",), extra="track-tensorboard",
                  description="TensorBoard event files under the reports folder, one folder per study")
class TensorboardTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        self.ctx, self.writer, self.step = ctx, None, 0

    def start(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.ctx.root / "tensorboard" / self.ctx.group_or_default / self.ctx.name
        self.writer = SummaryWriter(log_dir=str(folder))
        text = json.dumps(params, indent=2, sort_keys=True, default=str)
        self.writer.add_text("fmeval/params", "```\n" + text + "\n```", 0)
        self.writer.flush()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.step = max(self.step, step)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def finish(self, metrics: Mapping[str, float], artefacts: Sequence[Path], *, ok: bool = True,
               run_id: str | None = None) -> None:
        try:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, self.step)
            for f in artefacts:
                if Path(f).name == "report.md":
                    self.writer.add_text("fmeval/report", Path(f).read_text(encoding="utf-8"), self.step)
            self.writer.add_text("fmeval/status", "finished" if ok else "failed", self.step)
        finally:
            self.writer.close()
        folder = Path(self.writer.log_dir)
        if run_id and not (folder.parent / run_id).exists():  # the folder takes the report's name
            folder.rename(folder.parent / run_id)
