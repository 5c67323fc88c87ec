"""Fine-tuning modes (``finetune-lora``, ``finetune-full``) and reloading a trained adapter.

Both modes run the same code: build the adapter, let the method choose what
trains, :func:`fmeval.training.fit`, save the weights to the run folder, then
score val/test and build the same typed result as the frozen modes, so
fine-tuned and probed numbers are comparable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fmeval.config import RunConfig
from fmeval.data import SPLITS, MedMNIST
from fmeval.data.augment import augment_policy
from fmeval.device import resolve_device, resolve_precision, use_channels_last
from fmeval.errors import ConfigError, FmevalError
from fmeval.modes.base import Timer, build_result, register_mode
from fmeval.pipeline import (
    build_adapter,
    check_dimensions,
    dataset_record,
    is_volume_model,
    open_data,
    run_transform,
    subset_indices,
)
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
from fmeval.training.loop import FitResult, RunSetup, TrainData, fit, predict
from fmeval.training.methods import METHODS, Classifier, Method

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
class Prepared:
    """Data subsets, execution setup and the classifier of one run."""

    data: MedMNIST
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    setup: RunSetup
    model: Classifier
    method: Method
    indices: dict[str, np.ndarray | None]
    fewshot: dict | None = None  # the episode record of a few-shot run
    full_labels: dict[str, np.ndarray] | None = None  # labels before few-shot subsetting
    warnings: list[str] | None = None

    def has(self, split: str) -> bool:
        return self.images.get(split) is not None


def apply_fewshot(cfg: RunConfig, p: Prepared) -> None:
    """Keep only the episode's training images (and the validation data selection may use).

    Under ``fewshot.selection=fixed`` the validation split is dropped: the run
    trains for all epochs and keeps the last (no early stopping).
    """
    from fmeval.modes.fewshot import plan_fewshot, take_indices

    plan = plan_fewshot(cfg, p.data.task, list(p.data.info.labels), p.labels["train"], p.labels["val"],
                        p.indices["train"], p.indices["val"])
    if plan is None:
        return
    p.full_labels = dict(p.labels)
    for split, pos in (("train", plan.train), ("val", plan.val)):
        if pos is not None:
            p.indices[split] = take_indices(p.indices[split], len(p.labels[split]), pos)
            p.images[split], p.labels[split] = p.images[split][pos], p.labels[split][pos]
    if not plan.use_val:
        p.images["val"] = p.labels["val"] = None
    p.fewshot, p.warnings = plan.record, plan.warnings


def prepare(cfg: RunConfig, *, train_method: bool = True) -> Prepared:
    """Open data (validated first: a bad dataset never costs a model build) and the model.

    ``train_method``: let the method mark trainable parameters and insert its
    layers (training); ``False`` builds the bare classifier for reloading.
    """
    method = METHODS.get(method_of(cfg))
    data = open_data(cfg)
    check_dimensions(cfg, data)
    if data.info.is_volume and not is_volume_model(cfg.model):
        raise ConfigError(
            f"fine-tuning on the volumes of {data.flag} needs a 3D model (resnet18-acs, resnet18-3d, "
            "resnet18-2.5d, vit3d, ...); a 2D encoder sees volumes through --volume-view in knn, "
            "linprobe and zeroshot."
        )
    images, labels, indices = {}, {}, {}
    for s in SPLITS:
        sp = data.split(s)
        if len(sp) == 0:
            raise ConfigError(f"the {s} split of {data.path.name} is empty.")
        idx = subset_indices(len(sp), cfg.limit, cfg.seed)
        images[s] = sp.images if idx is None else sp.images[idx]
        labels[s] = sp.labels if idx is None else sp.labels[idx]
        indices[s] = idx
    device = resolve_device(cfg.device)
    adapter = build_adapter(cfg, device, data)
    transform = run_transform(adapter, cfg, data)
    precision = resolve_precision(cfg.precision, device, adapter.family)
    setup = RunSetup(transform=transform, device=device, precision=precision,
                     channels_last=use_channels_last(adapter.family, device, precision),
                     eval_batch_size=cfg.batch_size,
                     augment=None if data.info.is_volume else augment_policy(data.flag))
    # LoRA init and head init are seeded on their own, independent of what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if train_method:
            method.prepare(adapter, cfg.lora)
        else:
            for p in adapter.parameters():
                p.requires_grad_(False)
        model = Classifier(adapter, data.info.n_classes).to(device)
    return Prepared(data, images, labels, setup, model, method, indices)


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


def _run_record(cfg: RunConfig, p: Prepared, run_dir: Path, trainable: int, total: int) -> dict:
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


def _resume_hint(run_dir: Path) -> str:
    """The command that continues this run as typed (its options are read from run.json)."""
    import shlex

    return f"fmeval finetune --resume {shlex.quote(str(run_dir))}"


def run_finetune(cfg: RunConfig, *, on_epoch_end=None):
    """Fine-tune ``cfg.model`` on ``cfg.dataset``; returns the RunResult (the reporter writes it)."""
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
    apply_fewshot(cfg, p)
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
    try:
        res = fit(model, tdata, cfg.train, method=p.method, setup=p.setup, seed=cfg.seed, run_dir=run_dir,
                  resume=bool(cfg.resume), on_epoch_end=hook,
                  description=f"{method_of(cfg)} {cfg.model} {data.flag}")
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"{exc} Continue with: {_resume_hint(run_dir)}", run_dir) from None
    except KeyboardInterrupt:
        progress_console.print(f"interrupted; continue with: {_resume_hint(run_dir)}", markup=False,
                               highlight=False, soft_wrap=True)
        raise
    p.method.save(model, cfg.lora, run_dir)
    scores = _scores(p)
    record.update(status="done", result=_fit_summary(res), test_scores_sha256=scores_digest(scores["test"]))
    write_run_record(run_dir, record)
    extras = {"training": _training(res, trainable, total, run_dir), "curves": _curves(res, cfg)}
    if p.has("val"):
        selection = {"best_epoch": res.best_epoch, "select_metric": cfg.train.select_metric,
                     f"val_{cfg.train.select_metric}": res.best_metric}
    else:
        selection = {"epoch": res.best_epoch, "epoch_rule": "last epoch (fixed, no early stopping)"}
    return _result(cfg, p, scores, extras, selection, timer, run_id=run_dir.name)


def _scores(p: Prepared) -> dict[str, torch.Tensor]:
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


def _result(cfg: RunConfig, p: Prepared, scores: dict[str, torch.Tensor], extras: dict, selection: dict,
            timer: Timer, run_id: str | None = None, warnings: list[str] = ()):
    data = p.data
    labels = p.full_labels or p.labels  # split sizes and the majority baseline: before few-shot subsetting
    if p.fewshot is not None:
        extras = {**extras, "fewshot": p.fewshot}
        selection = {**selection, "fewshot_selection": p.fewshot["selection"]}
    return build_result(
        cfg,
        model=p.model.adapter.describe(),
        dataset=dataset_record(data, cfg, labels),
        task=data.task,
        class_names=list(data.info.labels),
        train_labels=labels["train"],
        test_labels=p.labels["test"],
        test_scores=scores["test"],
        val_labels=p.labels["val"],
        val_scores=scores.get("val"),
        transform=p.setup.transform.as_dict(),
        precision=p.setup.precision,
        selection=selection,
        extras=extras,
        warnings=[*data.warnings, *(p.warnings or []), *warnings],
        wall_time_s=timer.seconds,
        run_id=run_id,
        test_indices=p.indices.get("test"),
    )


def load_finetuned(folder: str | Path, **overrides) -> tuple[RunConfig, Prepared]:
    """Rebuild a finished run's classifier (base adapter + its saved weights).

    ``overrides``: fields that may differ from the run (data_root - used only
    when the run's own data folder is gone -, device, precision, reports_dir,
    n_boot, ...). Without a ``precision`` override the
    run's own resolved precision (run.json ``precision``) is used, so an
    ``auto`` run trained in bf16 on a GPU is evaluated in bf16 elsewhere too.
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
    cfg = replace(cfg, resume=None, **overrides)
    p = prepare(cfg, train_method=False)
    apply_fewshot(cfg, p)  # the same episode and validation data as in training
    p.method.load(p.model, folder)
    p.model.eval()
    return cfg, p


def evaluate_adapter(folder: str | Path, **overrides):
    """Score a saved fine-tuned adapter on val and test (the reporter writes the result).

    Predictions are computed exactly as at the end of training, so the test
    metrics equal the run's; a differing score fingerprint is reported as a
    warning (e.g. another device or library version).
    """
    timer = Timer()
    folder = Path(folder).expanduser()
    cfg, p = load_finetuned(folder, **overrides)
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
    return _result(cfg, p, scores, extras, selection, timer, warnings=mismatch)


def _register(method: str) -> None:
    sections = ("train", "lora", "fewshot") if method == "lora" else ("train", "fewshot")
    register_mode(f"finetune-{method}", sections=sections,
                  frozen=False, description=METHODS.entry(method).description)(run_finetune)


for _m in METHODS.names():
    _register(_m)
