"""Linear probing on frozen features (hyper-parameters selected on validation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fmeval.data import is_multilabel
from fmeval.modes.base import MODES, Timer, finish_run, target_tensor
from fmeval.pipeline import EvalConfig, prepare_frozen
from fmeval.probes.linear import ProbeConfig, train_linear_probe


@dataclass
class LinprobeConfig(EvalConfig):
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # Optional [C, D] initial classifier (e.g. zero-shot text weights); set by
    # the zero-shot mode, never from the command line directly.
    init_from_zeroshot: str | None = None


@MODES.register("linprobe", "linear probe on frozen features")
def run_linprobe(cfg: LinprobeConfig, init_weight=None):
    timer = Timer()
    fz = prepare_frozen(cfg)
    task, info = fz.data.task, fz.data.info
    ml = is_multilabel(task)
    probe = train_linear_probe(
        fz.features["train"],
        target_tensor(task, fz.labels["train"], fz.device),
        fz.features["val"],
        target_tensor(task, fz.labels["val"], fz.device),
        n_outputs=info.n_classes,
        multilabel=ml,
        config=cfg.probe,
        init_weight=init_weight,
        description=f"linear probe {cfg.model} {info.flag}",
    )
    extras = {
        "selected": {"lr": probe.lr, "weight_decay": probe.weight_decay,
                     "best_epoch": probe.best_epoch, "val_loss": probe.val_loss},
        "epochs_run": probe.epochs_run,
        "grid": probe.grid,
        "curves": probe.curves,
        "cache_hits": fz.cache_hits,
        "init": "zeroshot-text" if init_weight is not None else "zeros",
    }
    return finish_run(
        mode="linprobe",
        model=fz.adapter.describe(),
        dataset=fz.dataset_record(),
        task=task,
        class_names=list(info.labels),
        train_labels=fz.labels["train"],
        test_labels=fz.labels["test"],
        test_scores=probe.predict_proba(fz.features["test"]),
        val_labels=fz.labels["val"],
        val_scores=probe.predict_proba(fz.features["val"]),
        config=cfg.to_dict(),
        geometry=cfg.geometry,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        extras=extras,
        warnings=fz.data.warnings,
        wall_time_s=timer.seconds,
        reports_dir=cfg.reports_dir,
    )
