"""The MedMNIST+ reference's linear probe: the frozen backbone runs in ``train()`` mode.

The reference (Doerrich et al. 2025, ``train.py``) "linear-probes" by freezing every backbone
parameter and training the classifier with the whole model in ``model.train()``: BatchNorm
layers normalise each batch with its own statistics and update their running statistics to
the dataset, and dropout stays on while the head trains; validation and test run in
``eval()`` with the adapted running statistics. For a backbone without BatchNorm or active
dropout (the ViTs) this equals a probe on eval-mode features; for the CNNs it does not, so
``linprobe.backbone = "train"`` (``--probe-backbone train``; the ``medmnist-plus`` protocol sets
it for its BatchNorm/dropout CNNs) reproduces it here.

The features change with every batch, so nothing is cached: every epoch runs the backbone over
the training split (no gradients into it: its parameters are frozen) and over validation. The
head is trained by the fine-tuning loop (:func:`fmeval.training.fit`) with the probe's
hyper-parameters (``probe.*``: lr x wd grid, epochs, batch size, patience, schedule, and
``decay_bias``: the protocol decays the bias too, as ``timm.optim.AdamW(model.parameters())``),
best epoch by validation loss. Each grid point starts from the same backbone state (running statistics restored).
"""

from __future__ import annotations

import math
import torch

from fmeval import pipeline
from fmeval.config import RunConfig, TrainConfig
from fmeval.data.fewshot import training_splits
from fmeval.errors import ConfigError
from fmeval.modes.base import Timer, result_of
from fmeval.training.loop import RunSetup, TrainData, fit, predict
from fmeval.training.methods import Classifier, Method

WHY = ("the frozen backbone ran in train() mode while the head trained (BatchNorm running statistics "
       "adapted to the training split, dropout on), as the MedMNIST+ reference; features not cached")


def probe_train_config(cfg: RunConfig, lr: float, wd: float) -> TrainConfig:
    """The fine-tuning loop's settings for one grid point of the probe."""
    p = cfg.probe
    return TrainConfig(epochs=p.epochs, lr=lr, optimizer="adamw", weight_decay=wd,
                       decay_scope="all" if p.decay_bias else "matrices",
                       batch_size=p.batch_size, schedule=p.schedule, warmup_epochs=0.0, patience=p.patience,
                       select_metric="loss")


def _head_and_buffers(model: Classifier) -> list[str]:
    """What changes while this probe trains: the head, and the backbone's buffers (running stats)."""
    buffers = {f"adapter.{n}" for n, _ in model.adapter.named_buffers()}
    return [k for k in model.state_dict() if k.startswith("head.") or k in buffers]


def _no_save(*_a) -> None:  # pragma: no cover - a probe run writes no adapter folder
    raise ConfigError("a train-mode probe has no adapter folder to save or load.")


def _train_all(model: Classifier) -> None:
    model.train()


def _eval_backbone(model: Classifier) -> None:
    """Control for measurements: the same loop with the backbone in eval() (the cached-features probe)."""
    model.train()
    model.adapter.eval()


def _method(backbone_train: bool) -> Method:
    return Method("probe-train" if backbone_train else "probe-eval", lambda *_a: None,
                  _train_all if backbone_train else _eval_backbone, _head_and_buffers, _no_save, _no_save)


def run_trainmode_probe(cfg: RunConfig, *, backbone_train: bool = True):
    """Train the probe through the frozen backbone; score val/test in eval() mode.

    ``backbone_train=False`` runs the very same loop with the backbone in eval() (used to
    measure what train() mode changes; not reachable from the CLI).
    """
    timer = Timer()
    cfg.linprobe.check_train_backbone()
    if cfg.fewshot.shots is not None:
        raise ConfigError("--probe-backbone train is not available for few-shot runs (a K-shot episode's "
                          "batches are too small for train-mode BatchNorm); use --probe-backbone eval.")
    p = pipeline.prepare(cfg, training_splits(cfg), frozen=False)
    adapter, data = p.adapter, p.data
    for w in adapter.parameters():
        w.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Classifier(adapter, data.info.n_classes).to(p.device)
    setup = RunSetup(transform=p.transform, device=p.device, precision=p.precision,
                     eval_batch_size=cfg.batch_size)
    tdata = TrainData(p.images["train"], p.labels["train"], p.images.get("val"), p.labels.get("val"),
                      data.task, data.info.n_classes)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method = _method(backbone_train)
    grid, best, best_state, best_res = [], None, None, None
    probe_grid = cfg.probe.grid() if tdata.has_val else cfg.probe.grid()[:1]
    for lr, wd in probe_grid:
        model.load_state_dict(start)  # every grid point from the same head init and running statistics
        res = fit(model, tdata, probe_train_config(cfg, lr, wd), method=method, setup=setup, seed=cfg.seed,
                  description=f"linear probe ({'train' if backbone_train else 'eval'}-mode backbone) "
                              f"{cfg.model} {data.flag} lr={lr:g} wd={wd:g}")
        val_loss = res.best_metric if tdata.has_val else math.nan
        grid.append({"lr": lr, "weight_decay": wd, "val_loss": val_loss, "best_epoch": res.best_epoch,
                     "epochs_run": res.epochs_run})
        if best is None or val_loss < best[2]:
            best, best_res = (lr, wd, val_loss), res
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    scores = {s: predict(model, p.images[s], task=data.task, setup=setup) for s in ("val", "test")
              if p.images.get(s) is not None}
    lr, wd, val_loss = best
    if tdata.has_val:
        selection = {"lr": lr, "weight_decay": wd, "best_epoch": best_res.best_epoch, "val_loss": val_loss}
    else:
        selection = {"lr": lr, "weight_decay": wd, "epoch": best_res.best_epoch,
                     "epoch_rule": "last epoch (fixed, no early stopping)"}
    extras = {"grid": grid, "curves": best_res.curves, "epochs_run": best_res.epochs_run,
              "feature_norm": {"requested": cfg.linprobe.feature_norm, "used": cfg.linprobe.feature_norm},
              "head_init": model.head_init,
              "probe_backbone": {"mode": "train" if backbone_train else "eval", "cached_features": False,
                                 "rule": WHY if backbone_train else "control: eval() backbone, same loop"}}
    return result_of(p, test_scores=scores["test"], val_scores=scores.get("val"), extras=extras,
                     selection=selection, timer=timer)


def train_mode(cfg: RunConfig) -> bool:
    return cfg.linprobe.backbone == "train"
