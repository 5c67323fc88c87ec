"""Fine-tuning modes (``finetune-lora``, ``finetune-full``) and reloading a trained adapter.

Both modes run the same code: build the adapter, let the method choose what
trains, :func:`fmeval.training.fit`, save the weights to the run folder, then
score val/test and build the same typed result as the frozen modes, so
fine-tuned and probed numbers are comparable.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from fmeval.config import RunConfig
from fmeval.data import MedMNIST
from fmeval.data.augment import augment_policy
from fmeval.device import use_channels_last
from fmeval.errors import ConfigError, FmevalError
from fmeval.modes.base import Timer, register_mode, result_of
from fmeval import pipeline
from fmeval.pipeline import Prepared, is_volume_model
from fmeval.progress import console as progress_console
from fmeval.settings import env
from fmeval.training.checkpoint import (
    adapters_root,
    check_resume,
    load_train_state,
    new_run_dir,
    read_run_record,
    write_run_record,
)
from fmeval.training.lora import count_parameters
from fmeval.training.hooks import with_trackers
from fmeval.training.loop import FitResult, RunSetup, TrainData, fit, predict
from fmeval.training.methods import METHODS, Classifier, Method

if TYPE_CHECKING:
    from fmeval.report.export import Exported, dataset_argument

#: Test hook: stop (as if the process died) right after this epoch was checkpointed.
STOP_ENV = "FMEVAL_FT_STOP_AFTER_EPOCH"


class TrainingInterrupted(FmevalError):
    """Training stopped before the end; ``run_dir`` can be resumed."""

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


def method_of(cfg: RunConfig) -> str:
    return cfg.mode.removeprefix("finetune-")


@dataclass
class Trainable:
    """A fine-tuning run: the pipeline's :class:`~fmeval.pipeline.Prepared` (data, encoder,
    pixels, rows) plus what training adds: execution setup, classifier and method."""

    prepared: Prepared
    setup: RunSetup
    model: Classifier
    method: Method

    # the rows are the pipeline's (few-shot episodes included)
    data = property(lambda self: self.prepared.data)
    images = property(lambda self: self.prepared.images)
    labels = property(lambda self: self.prepared.labels)
    indices = property(lambda self: self.prepared.indices)
    fewshot = property(lambda self: self.prepared.fewshot)
    full_labels = property(lambda self: self.prepared.full_labels)

    def has(self, split: str) -> bool:
        return self.images.get(split) is not None


def _check_trainable(cfg: RunConfig):
    def check(data: MedMNIST) -> None:
        if data.info.is_volume and not is_volume_model(cfg.model):
            raise ConfigError(
                f"fine-tuning on the volumes of {data.flag} needs a 3D model (resnet18-acs, resnet18-3d, "
                "resnet18-2.5d, vit3d, ...); a 2D encoder sees volumes through --volume-view in knn, "
                "linprobe and zeroshot."
            )

    return check


def prepare(cfg: RunConfig, *, train_method: bool = True) -> Trainable:
    """:func:`fmeval.pipeline.prepare` (data validated first: a bad dataset never costs a
    model build; the few-shot episode applied), then the classifier.

    ``train_method``: let the method mark trainable parameters and insert its
    layers (training); ``False`` builds the bare classifier for reloading.
    """
    method = METHODS.get(method_of(cfg))
    p = pipeline.prepare(cfg, frozen=False, check=_check_trainable(cfg))
    adapter, data = p.adapter, p.data
    setup = RunSetup(transform=p.transform, device=p.device, precision=p.precision,
                     channels_last=use_channels_last(adapter.family, p.device, p.precision),
                     eval_batch_size=cfg.batch_size,
                     augment=None if data.info.is_volume else augment_policy(data.flag))
    with seeded_init(cfg, method, adapter, train_method=train_method):
        model = Classifier(adapter, data.info.n_classes, cfg.train.head_init).to(p.device)
    return Trainable(p, setup, model, method)


@contextmanager
def seeded_init(cfg: RunConfig, method, adapter, *, train_method: bool) -> Iterator[None]:
    """The method's layers (LoRA init) and the head(s) built in the block, seeded with ``cfg.seed``
    on their own, independent of what ran before (fine-tuning and multi-domain alike).

    ``train_method``: the method marks trainable parameters and inserts its layers; ``False``
    freezes the backbone (the bare classifier a saved run is reloaded into)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if train_method:
            method.prepare(adapter, cfg.lora)
        else:
            for w in adapter.parameters():
                w.requires_grad_(False)
        yield


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
    raw = env(STOP_ENV)
    if not raw:
        return None
    stop_at = int(raw)

    def hook(epoch: int, state) -> None:
        if epoch == stop_at and not state.done:
            raise TrainingInterrupted(f"training stopped after epoch {epoch} ({STOP_ENV}={raw}).")

    return hook


def _run_record(cfg: RunConfig, p: Trainable, run_dir: Path, trainable: int, total: int) -> dict:
    data = p.data
    return {
        "run_id": run_dir.name,
        "mode": cfg.mode,
        "method": method_of(cfg),
        "status": "training",
        "config": cfg.to_dict(),
        "model": p.model.adapter.describe(),
        "dataset": {"flag": data.flag, "size": data.size, "task": data.task,
                    "classes": list(data.info.labels), "md5": data.md5},
        "transform": p.setup.transform.as_dict(),
        "precision": p.setup.precision,
        "n_outputs": data.info.n_classes,
        "params": {"trainable": trainable, "total": total},
    }


@contextmanager
def resume_hints(run_dir: Path) -> Iterator[None]:
    """An interrupted training (test hook or Ctrl-C) ends with the command that continues it."""
    try:
        yield
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{exc} Continue with: {_resume_hint(run_dir)}", run_dir) from None
    except KeyboardInterrupt:
        progress_console.print(f"interrupted; continue with: {_resume_hint(run_dir)}", markup=False,
                               highlight=False, soft_wrap=True)
        raise


def _resume_hint(run_dir: Path) -> str:
    """The command that continues this run as typed (its options are read from run.json)."""
    import shlex

    return f"fmeval finetune --resume {shlex.quote(str(run_dir))}"


def run_finetune(cfg: RunConfig, *, on_epoch_end=None, hooks=None):
    """Fine-tune ``cfg.model`` on ``cfg.dataset``; returns the RunResult (the reporter writes it).
    ``hooks``: observers of every step and epoch (:class:`fmeval.training.hooks.TrainHooks`)."""
    timer = Timer()
    METHODS.get(method_of(cfg))
    cfg.train.validate()
    run_dir: Path | None = None
    if cfg.adapter_dir and not cfg.resume and (Path(cfg.adapter_dir) / "run.json").exists():
        cfg = replace(cfg, resume=cfg.adapter_dir)  # a study cell killed mid-training continues
    if cfg.resume:
        run_dir = Path(cfg.resume).expanduser()
        rec = read_run_record(run_dir)
        check_resume(rec["config"], cfg.to_dict(), run_dir)
        load_train_state(run_dir)  # a damaged checkpoint fails here, before any work
    else:
        from fmeval.report import check_writable

        check_writable(cfg.adapter_dir or adapters_root(), "adapters folder")
    p = prepare(cfg)
    model, data = p.model, p.data
    trainable, total = _classifier_params(model)
    if run_dir is None and cfg.adapter_dir:
        run_dir = Path(cfg.adapter_dir).expanduser()
        run_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is None:
        run_dir = new_run_dir(method_of(cfg), cfg.model, data.flag, data.size)
    record = _run_record(cfg, p, run_dir, trainable, total)
    write_run_record(run_dir, record)
    progress_console.print(f"run folder: {run_dir}  (if interrupted: {_resume_hint(run_dir)})",
                           markup=False, highlight=False, soft_wrap=True)
    tdata = TrainData(p.images["train"], p.labels["train"], p.images["val"], p.labels["val"],
                      data.task, data.info.n_classes)
    hook = on_epoch_end or _stop_hook()
    with resume_hints(run_dir):
        res = fit(model, tdata, cfg.train, method=p.method, setup=p.setup, seed=cfg.seed, run_dir=run_dir,
                  resume=bool(cfg.resume), on_epoch_end=hook,
                  hooks=with_trackers(hooks),  # observers + the run's experiment trackers (fmeval.tracking)
                  description=f"{method_of(cfg)} {cfg.model} {data.flag}")
    p.method.save(model, cfg.lora, run_dir)
    scores = _scores(p)
    record.update(status="done", result=_fit_summary(res), test_scores_sha256=scores_digest(scores["test"]))
    write_run_record(run_dir, record)
    extras = {"training": {**_training(res, trainable, total, run_dir), "head_init": model.head_init},
              "curves": _curves(res, cfg)}
    if p.has("val"):
        selection = {"best_epoch": res.best_epoch, "select_metric": cfg.train.select_metric,
                     f"val_{cfg.train.select_metric}": res.best_metric}
    else:
        selection = {"epoch": res.best_epoch, "epoch_rule": "last epoch (fixed, no early stopping)"}
    return _result(p, scores, extras, selection, timer, run_id=run_dir.name)


def _scores(p: Trainable) -> dict[str, torch.Tensor]:
    """Scores of val (when the run uses validation data) and test, as at the end of training."""
    return {s: predict(p.model, p.images[s], task=p.data.task, setup=p.setup) for s in ("val", "test") if p.has(s)}


def _fit_summary(res: FitResult) -> dict:
    return {"best_epoch": res.best_epoch, "best_val_metric": res.best_metric,
            "epochs_run": res.epochs_run, "stopped_early": res.stopped_early}


def _curves(res: FitResult, cfg: RunConfig) -> dict:
    sel = f"val_{cfg.train.select_metric}"
    keys = ["epoch", "train_loss", "val_loss"] + ([sel] if sel != "val_loss" else []) + ["lr"]
    return {k: res.curves[k] for k in keys if k in res.curves}


def _training(res: FitResult, trainable: int, total: int, run_dir: Path) -> dict:
    times = res.epoch_times
    return {
        "params": {"trainable": trainable, "total": total, "trainable_fraction": trainable / max(total, 1)},
        "best_epoch": res.best_epoch,
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


def _result(p: Trainable, scores: dict[str, torch.Tensor], extras: dict, selection: dict,
            timer: Timer, run_id: str | None = None, warnings: list[str] = ()):
    return result_of(p.prepared, test_scores=scores["test"], val_scores=scores.get("val"), extras=extras,
                     selection=selection, timer=timer, warnings=warnings, run_id=run_id)


def reload_config(folder: str | Path, **overrides) -> tuple[RunConfig, dict]:
    """A finished run's recorded config, and the values a reload may change in it.

    ``overrides``: fields that may differ from the run (data_root - used only
    when the run's own data folder is gone -, device, precision, reports_dir,
    n_boot, ...). Without a ``precision`` override the
    run's own resolved precision (run.json ``precision``) is used, so an
    ``auto`` run trained in bf16 on a GPU is evaluated in bf16 elsewhere too.
    Returns ``(saved, changes)``: ``fmeval evaluate`` hands both to
    :func:`fmeval.runner.make_config` (``base=saved``), like ``--resume``.
    """
    folder = Path(folder).expanduser()
    rec = read_run_record(folder)
    if rec.get("status") != "done":
        raise ConfigError(
            f"{folder} holds an unfinished run (status {rec.get('status')!r}); "
            "finish it with `fmeval finetune ... --resume` first."
        )
    try:
        cfg = RunConfig.from_dict(rec["config"])
    except ConfigError as exc:
        raise ConfigError(f"{folder / 'run.json'}: config: {exc}") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    # The run's own data folder first: another root (--data-root, FMEVAL_DATA_ROOT, fmeval.toml) is
    # used only when the folder the run read no longer exists, so a reloaded adapter is never
    # silently scored on a different file that happens to share the name.
    if "data_root" in overrides and cfg.data_root and Path(cfg.data_root).expanduser().is_dir():
        overrides.pop("data_root")
    if "precision" not in overrides and rec.get("precision") in ("fp32", "bf16"):
        overrides["precision"] = rec["precision"]
    return cfg, {"resume": None, **overrides}


def load_finetuned(folder: str | Path, cfg: RunConfig | None = None, **overrides) -> tuple[RunConfig, Trainable]:
    """Rebuild a finished run's classifier (base adapter + its saved weights).

    ``cfg``: the reload's config (from :func:`reload_config` through ``make_config``);
    None: the recorded config with ``overrides`` (see :func:`reload_config`).
    """
    folder = Path(folder).expanduser()
    if cfg is None:
        saved, changes = reload_config(folder, **overrides)
        cfg = saved.with_values(changes)
    p = prepare(cfg, train_method=False)  # the same episode and validation data as in training
    p.method.load(p.model, folder)
    p.model.eval()
    if p.setup.channels_last:  # as training left it (fit): bf16 convolutions differ between memory formats
        p.model.to(memory_format=torch.channels_last)
    return cfg, p


def evaluate_adapter(folder: str | Path, cfg: RunConfig | None = None, **overrides):
    """Score a saved fine-tuned adapter on val and test (the reporter writes the result).

    Predictions are computed exactly as at the end of training, so the test
    metrics equal the run's; a differing score fingerprint is reported as a
    warning (e.g. another device or library version).
    """
    timer = Timer()
    folder = Path(folder).expanduser()
    cfg, p = load_finetuned(folder, cfg, **overrides)
    rec = read_run_record(folder)
    scores = _scores(p)
    digest = scores_digest(scores["test"])
    trainable, total = _classifier_params(p.model)
    same = digest == rec.get("test_scores_sha256")
    extras = {
        "evaluated_from": str(folder),
        "training": {**rec.get("result", {}), "params": rec.get("params", {"trainable": trainable, "total": total}),
                     "adapter_path": str(folder)},
        "test_scores_sha256": digest,
        "reproduces_training_scores": same,
    }
    mismatch = [] if same else [
        "test scores differ from those at the end of training (different device, batch "
        "size or library versions?)"
    ]
    selection = {"best_epoch": rec.get("result", {}).get("best_epoch")}
    return _result(p, scores, extras, selection, timer, warnings=mismatch)


def export_adapter(folder: str | Path, out: str | Path, *, header: bool = True, cfg: RunConfig | None = None,
                   **overrides) -> "Exported":
    """Reload a fine-tuned adapter, predict its test split, write the CSV (``cfg``: see
    :func:`load_finetuned`)."""
    from fmeval.predictions import write_predictions
    from fmeval.report.export import Exported, dataset_argument

    cfg, p = load_finetuned(folder, cfg, **overrides)
    scores = predict(p.model, p.images["test"], task=p.data.task, setup=p.setup).float().numpy()
    idx = p.indices.get("test")
    idx = np.arange(len(scores)) if idx is None else np.asarray(idx)
    if not len(scores):
        raise ConfigError(f"{folder}: the test split is empty.")
    sha = write_predictions(out, scores, list(p.data.info.labels), idx, header=header)
    return Exported(Path(out), sha, len(idx), len(p.data.labels("test")), dataset_argument(p.data.describe()),
                    p.data.size, cfg.seed, cfg.n_boot)


def _register(method: str) -> None:
    register_mode(f"finetune-{method}", frozen=False, description=METHODS.entry(method).description)(run_finetune)


for _m in METHODS.names():
    _register(_m)
