"""Linear probing on frozen features (hyper-parameters and epoch selected on validation).

``linprobe.feature_norm`` is its own recorded choice (``standardize`` with
training statistics, ``l2``, or ``none``), so comparing a zero-initialised
probe with one started from the zero-shot classifier (``init=zeroshot``,
which needs L2-normalised features, where that classifier is exactly linear)
changes one thing at a time. The unchanged zero-shot head competes with the
trained heads on validation.

A few-shot run with fixed hyper-parameters (``fewshot.selection=fixed``)
sees no validation data: it trains one head (the first ``--lr`` and ``--wd``)
for all ``--epochs`` and keeps the last epoch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from fmeval.config import RunConfig
from fmeval.data import is_multilabel
from fmeval.modes.base import FittedHead, register_mode, run_frozen, target_tensor
from fmeval.data.fewshot import training_splits
from fmeval.pipeline import prepare_frozen
from fmeval.probes.linear import train_linear_probe
from fmeval.tracking import step_callbacks


def _zeroshot_init(cfg: RunConfig, fz, bank) -> torch.Tensor:
    from fmeval.modes.zeroshot import text_features
    from fmeval.zeroshot import text_classifier_weights

    z = cfg.zeroshot
    text = text_features(fz.adapter, bank, z.style or bank.default_style, fz.cache, z.text_batch_size, fz.device)
    return text_classifier_weights(text, ensemble="mean-embedding") * float(fz.adapter.logit_scale)


def _bank(cfg: RunConfig):
    if cfg.linprobe.init != "zeroshot":
        return None
    from fmeval.prompts import resolve_bank

    return resolve_bank(cfg.zeroshot.prompts, cfg.dataset)


def prepare(cfg: RunConfig):
    if cfg.linprobe.backbone == "train":  # reached by robustness only (run_linprobe dispatches first)
        from fmeval.errors import ConfigError

        raise ConfigError("a robustness linprobe head scores cached eval-mode features; "
                          "--probe-backbone train is not available there.")
    bank = _bank(cfg)  # validated before any model loads
    return prepare_frozen(cfg, splits=training_splits(cfg), require_text=bank is not None)


def feature_norm_used(cfg: RunConfig) -> dict[str, str]:
    """The feature normalisation the probe trains with, and why when it is not the requested one.

    ``standardize`` takes the mean and std of the training split; a K-shot episode's split is
    K images per class, and below ``fewshot.standardize_min_shots`` those statistics are noise
    (at K = 1 every feature's std comes from one image per class, and the probe falls to chance).
    There the probe uses L2-normalised features, which need no statistics.
    """
    asked, k, floor = cfg.linprobe.feature_norm, cfg.fewshot.shots, cfg.fewshot.standardize_min_shots
    if asked == "standardize" and k is not None and k < floor:
        return {"requested": asked, "used": "l2",
                "rule": f"K={k} < {floor} shots: an episode's mean/std are too noisy to standardise with"}
    return {"requested": asked, "used": asked}


def fit_head(cfg: RunConfig, fz) -> FittedHead:
    """Train the lr x wd grid (or the one fixed head) and return the selected head."""
    bank = _bank(cfg)
    task, info = fz.data.task, fz.data.info
    norm_used = feature_norm_used(cfg)
    l2 = norm_used["used"] == "l2"

    def norm(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1) if l2 else x

    feats = {k: norm(v) for k, v in fz.features.items()}
    has_val = "val" in feats
    probe_cfg = cfg.probe if has_val else replace(cfg.probe, lrs=cfg.probe.lrs[:1],
                                                  weight_decays=cfg.probe.weight_decays[:1])
    probe = train_linear_probe(
        feats["train"],
        target_tensor(task, fz.labels["train"], fz.device),
        feats.get("val"),
        target_tensor(task, fz.labels["val"], fz.device) if has_val else None,
        n_outputs=info.n_classes,
        multilabel=is_multilabel(task),
        config=probe_cfg,
        init_weight=_zeroshot_init(cfg, fz, bank) if bank is not None else None,
        standardize=norm_used["used"] == "standardize",
        seed=cfg.seed,
        description=f"linear probe {cfg.model} {info.flag}",
        precision=fz.precision if fz.precision == "bf16" else "fp32",  # the run's resolved precision
        callbacks=step_callbacks(),  # experiment trackers of this run (fmeval.tracking)
    )
    extras = {"grid": probe.grid, "curves": probe.curves, "epochs_run": probe.epochs_run, "feature_norm": norm_used}
    if bank is not None:
        style = cfg.zeroshot.style or bank.default_style
        extras["prompt_bank"] = bank.describe(style)
        extras["prompt_bank_hash"] = bank.content_hash
    if has_val:
        selection = {"lr": probe.lr, "weight_decay": probe.weight_decay, "best_epoch": probe.best_epoch,
                     "val_loss": probe.val_loss}
    else:
        selection = {"lr": probe.lr, "weight_decay": probe.weight_decay, "epoch": probe.best_epoch,
                     "epoch_rule": "last epoch (fixed, no early stopping)"}
    return FittedHead(lambda x: probe.predict_proba(norm(x)), selection, extras,
                      val_scores=probe.predict_proba(feats["val"]) if has_val else None)


@register_mode("linprobe", frozen=True,
               description="linear probe on frozen features (lr x wd grid, selected on validation)")
def run_linprobe(cfg: RunConfig):
    from fmeval.modes.linprobe_train import run_trainmode_probe, train_mode

    if train_mode(cfg):  # the MedMNIST+ reference's probe: train()-mode backbone, no feature cache
        return run_trainmode_probe(cfg)
    return run_frozen(cfg, prepare, fit_head)
