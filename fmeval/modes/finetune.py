"""Fine-tuning modes (``finetune-lora``, ``finetune-full``) and reloading a trained adapter.

Both modes run the same code: build the adapter, let the method choose what
trains, :func:`fmeval.training.fit`, save the weights to the run folder, then
score val/test and hand the scores to :func:`finish_run` - the same reporter
as the frozen modes, so fine-tuned and probed numbers are comparable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fmeval.data import SPLITS, MedMNIST
from fmeval.device import resolve_device
from fmeval.errors import ConfigError, FmevalError
from fmeval.modes.base import MODES, Timer, finish_run
from fmeval.pipeline import EvalConfig, build_adapter, open_data, subset_indices
from fmeval.training.checkpoint import (
    RUN_FILE,
    check_resume,
    dataclass_from_record,
    new_run_dir,
    read_run_record,
    write_run_record,
)
from fmeval.training.lora import LoraSettings, count_parameters
from fmeval.training.loop import FitResult, TrainConfig, TrainData, fit, predict
from fmeval.training.methods import METHODS, Classifier, Method

#: Test hook: stop (as if the process died) right after this epoch was checkpointed.
STOP_ENV = "FMEVAL_FT_STOP_AFTER_EPOCH"


class TrainingInterrupted(FmevalError):
    """Training stopped before the end; ``run_dir`` can be resumed."""

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class FinetuneConfig(EvalConfig):
    method: str = "lora"  # a key of fmeval.training.METHODS
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    resume: str | None = None  # run folder of an interrupted run

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "FinetuneConfig":
        d = dict(d)
        train = dataclass_from_record(TrainConfig, d.pop("train", {}), f"{where}.train")
        lora = dataclass_from_record(LoraSettings, d.pop("lora", {}), f"{where}.lora")
        return dataclass_from_record(cls, {**d, "train": train, "lora": lora}, where)


@dataclass
class Prepared:
    """Data subsets, device and the classifier of one run."""

    data: MedMNIST
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    device: torch.device
    model: Classifier
    method: Method

    def dataset_record(self, limit: int | None) -> dict:
        rec = self.data.describe()
        if limit:
            rec["limit"] = limit
            rec.update({f"n_{s}": len(self.labels[s]) for s in self.labels})
        return rec


def _n_outputs(data: MedMNIST) -> int:
    return data.info.n_classes


def prepare(cfg: FinetuneConfig, *, train_method: bool = True) -> Prepared:
    """Open data (validated first: a bad dataset never costs a model build) and the model.

    ``train_method``: let the method mark trainable parameters and insert its
    layers (training); ``False`` builds the bare classifier for reloading.
    """
    method = METHODS.get(cfg.method)
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError("--limit must be a positive number of samples.")
    data = open_data(cfg)
    images, labels = {}, {}
    for s in SPLITS:
        sp = data.split(s)
        idx = subset_indices(len(sp), cfg.limit, cfg.seed)
        images[s] = sp.images if idx is None else sp.images[idx]
        labels[s] = sp.labels if idx is None else sp.labels[idx]
    device = resolve_device(cfg.device)
    adapter = build_adapter(cfg, device)
    # LoRA init and head init are seeded on their own, independent of what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if train_method:
            method.prepare(adapter, cfg.lora)
        else:
            for p in adapter.parameters():
                p.requires_grad_(False)
        model = Classifier(adapter, _n_outputs(data)).to(device)
    return Prepared(data, images, labels, device, model, method)


def _classifier_params(model: Classifier) -> tuple[int, int]:
    """(trainable, total) over the image classifier: backbone + head (no text tower)."""
    t_b, n_b = count_parameters(model.backbone)
    t_h, n_h = count_parameters(model.head)
    return t_b + t_h, n_b + n_h


def scores_digest(scores: torch.Tensor) -> str:
    """Fingerprint of a score matrix: a reloaded adapter must reproduce it bit for bit."""
    arr = np.ascontiguousarray(scores.detach().float().cpu().numpy())
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _stop_hook():
    raw = os.environ.get(STOP_ENV)
    if not raw:
        return None
    stop_at = int(raw)

    def hook(epoch: int, state) -> None:
        if epoch == stop_at and not state.done:
            raise TrainingInterrupted(f"training stopped after epoch {epoch} ({STOP_ENV}={raw}).")

    return hook


def run_finetune(cfg: FinetuneConfig, *, on_epoch_end=None, write: bool = True):
    """Fine-tune ``cfg.model`` on ``cfg.dataset`` and write the report; returns the RunResult."""
    timer = Timer()
    METHODS.get(cfg.method)
    cfg.train.validate()
    run_dir: Path | None = None
    if cfg.resume:
        run_dir = Path(cfg.resume).expanduser()
        rec = read_run_record(run_dir)
        check_resume(rec["config"], cfg.to_dict(), run_dir)
    p = prepare(cfg)
    model, data = p.model, p.data
    trainable, total = _classifier_params(model)
    if run_dir is None:
        run_dir = new_run_dir(cfg.method, cfg.model, data.flag, data.size)
    record = {
        "run_id": run_dir.name,
        "mode": f"finetune-{cfg.method}",
        "method": cfg.method,
        "status": "training",
        "config": cfg.to_dict(),
        "model": model.adapter.describe(),
        "dataset": {"flag": data.flag, "size": data.size, "task": data.task,
                    "classes": list(data.info.labels), "md5": data.md5},
        "geometry": cfg.geometry,
        "input_size": model.adapter.preprocess.input_size,
        "n_outputs": _n_outputs(data),
        "params": {"trainable": trainable, "total": total},
    }
    write_run_record(run_dir, record)
    tdata = TrainData(p.images["train"], p.labels["train"], p.images["val"], p.labels["val"],
                      data.task, _n_outputs(data))
    hook = on_epoch_end or _stop_hook()
    try:
        res = fit(
            model, tdata, cfg.train, method=p.method, preprocess=model.adapter.preprocess,
            geometry=cfg.geometry, device=p.device, seed=cfg.seed, eval_batch_size=cfg.batch_size,
            run_dir=run_dir, resume=bool(cfg.resume), on_epoch_end=hook,
            description=f"{cfg.method} {cfg.model} {data.flag}",
        )
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(
            f"{exc} Continue with: fmeval finetune <same options> --resume {run_dir}", run_dir
        ) from None
    p.method.save(model, cfg.lora, run_dir)
    scores = {s: predict(model, p.images[s], task=data.task, preprocess=model.adapter.preprocess,
                         geometry=cfg.geometry, device=p.device, batch_size=cfg.batch_size)
              for s in ("val", "test")}
    record.update(status="done", result=_fit_summary(res),
                  test_scores_sha256=scores_digest(scores["test"]))
    write_run_record(run_dir, record)
    extras = _extras(res, trainable, total, run_dir, cfg)
    return _report(cfg, p, scores, extras, timer, write, run_id=run_dir.name)


def _fit_summary(res: FitResult) -> dict:
    return {
        "best_epoch": res.best_epoch, "best_val_metric": res.best_metric,
        "epochs_run": res.epochs_run, "stopped_early": res.stopped_early,
    }


def _extras(res: FitResult, trainable: int, total: int, run_dir: Path, cfg: FinetuneConfig) -> dict:
    sel = f"val_{cfg.train.select_metric}"
    times = res.epoch_times
    return {
        "method": cfg.method,
        "curves": {k: res.curves[k] for k in ("epoch", "train_loss", "val_loss", sel)},
        "lr_per_epoch": res.curves.get("lr", []),
        "params": {"trainable": trainable, "total": total,
                   "trainable_fraction": trainable / max(total, 1)},
        "best_epoch": res.best_epoch,
        "best_val_metric": {cfg.train.select_metric: res.best_metric},
        "epochs_run": res.epochs_run,
        "stopped_early": res.stopped_early,
        "resumed_at_epoch": res.resumed_at_epoch,
        "steps_per_epoch": res.steps_per_epoch,
        "train_time_s": sum(times),
        "time_per_epoch_s": sum(times) / len(times) if times else 0.0,
        "epoch_times_s": times,
        "peak_memory": res.peak_memory,
        "adapter_path": str(run_dir),
    }


def _report(cfg: FinetuneConfig, p: Prepared, scores: dict[str, torch.Tensor], extras: dict,
            timer: Timer, write: bool, run_id: str | None = None, warnings: list[str] = ()):
    data = p.data
    return finish_run(
        mode=f"finetune-{cfg.method}",
        model=p.model.adapter.describe(),
        dataset=p.dataset_record(cfg.limit),
        task=data.task,
        class_names=list(data.info.labels),
        train_labels=p.labels["train"],
        test_labels=p.labels["test"],
        test_scores=scores["test"],
        val_labels=p.labels["val"],
        val_scores=scores["val"],
        config=cfg.to_dict(),
        geometry=cfg.geometry,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        extras=extras,
        warnings=[*data.warnings, *warnings],
        wall_time_s=timer.seconds,
        reports_dir=cfg.reports_dir,
        write=write,
        run_id=run_id,
    )


def load_finetuned(folder: str | Path, **overrides) -> tuple[FinetuneConfig, Prepared]:
    """Rebuild a finished run's classifier (base adapter + its saved weights).

    ``overrides``: EvalConfig fields that may differ from the run (data_root,
    device, reports_dir, n_boot, ...).
    """
    folder = Path(folder).expanduser()
    rec = read_run_record(folder)
    if rec.get("status") != "done":
        raise ConfigError(
            f"{folder} holds an unfinished run (status {rec.get('status')!r}); "
            "finish it with `fmeval finetune ... --resume` first."
        )
    cfg = FinetuneConfig.from_dict(rec["config"], f"{folder / RUN_FILE}: config")
    cfg = replace(cfg, resume=None, **{k: v for k, v in overrides.items() if v is not None})
    p = prepare(cfg, train_method=False)
    p.method.load(p.model, folder)
    p.model.eval()
    return cfg, p


def evaluate_adapter(folder: str | Path, *, write: bool = True, **overrides):
    """Score a saved fine-tuned adapter on val and test and write a report.

    Predictions are computed exactly as at the end of training, so the test
    metrics equal the run's; a differing score fingerprint is reported as a
    warning (e.g. another device or library version).
    """
    timer = Timer()
    folder = Path(folder).expanduser()
    cfg, p = load_finetuned(folder, **overrides)
    rec = read_run_record(folder)
    pre = p.model.adapter.preprocess
    scores = {s: predict(p.model, p.images[s], task=p.data.task, preprocess=pre,
                         geometry=cfg.geometry, device=p.device, batch_size=cfg.batch_size)
              for s in ("val", "test")}
    digest = scores_digest(scores["test"])
    trainable, total = _classifier_params(p.model)
    extras = {
        "method": cfg.method,
        "evaluated_from": str(folder),
        "adapter_path": str(folder),
        "params": rec.get("params", {"trainable": trainable, "total": total}),
        "training": rec.get("result", {}),
        "test_scores_sha256": digest,
        "reproduces_training_scores": digest == rec.get("test_scores_sha256"),
    }
    mismatch = [] if extras["reproduces_training_scores"] else [
        "test scores differ from those at the end of training (different device, batch "
        "size or library versions?)"
    ]
    return _report(cfg, p, scores, extras, timer, write, warnings=mismatch)


def _register(method: str) -> None:
    def runner(cfg: FinetuneConfig, **kw):
        return run_finetune(replace(cfg, method=method), **kw)

    MODES.add(f"finetune-{method}", runner, METHODS.entry(method).description)


for _m in METHODS.names():
    _register(_m)
