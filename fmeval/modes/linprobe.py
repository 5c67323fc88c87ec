"""Linear probing on frozen features (hyper-parameters and epoch selected on validation).

``linprobe.feature_norm`` is its own recorded choice (``standardize`` with
training statistics, ``l2``, or ``none``), so comparing a zero-initialised
probe with one started from the zero-shot classifier (``init=zeroshot``,
which needs L2-normalised features, where that classifier is exactly linear)
changes one thing at a time. The unchanged zero-shot head competes with the
trained heads on validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmeval.config import RunConfig
from fmeval.data import is_multilabel
from fmeval.modes.base import Timer, frozen_result, register_mode, target_tensor
from fmeval.pipeline import prepare_frozen
from fmeval.probes.linear import train_linear_probe


def _zeroshot_init(cfg: RunConfig, fz, bank) -> torch.Tensor:
    from fmeval.modes.zeroshot import text_features
    from fmeval.zeroshot import text_classifier_weights

    z = cfg.zeroshot
    text = text_features(fz.adapter, bank, z.style or bank.default_style, fz.cache, z.text_batch_size, fz.device)
    return text_classifier_weights(text, ensemble="mean-embedding") * float(fz.adapter.logit_scale)


@register_mode("linprobe", sections=("probe", "linprobe", "zeroshot"), frozen=True,
               description="linear probe on frozen features (lr x wd grid, selected on validation)")
def run_linprobe(cfg: RunConfig):
    timer = Timer()
    bank = None
    if cfg.linprobe.init == "zeroshot":
        from fmeval.prompts import resolve_bank

        bank = resolve_bank(cfg.zeroshot.prompts, cfg.dataset)  # validated before any model loads
    fz = prepare_frozen(cfg, require_text=bank is not None)
    task, info = fz.data.task, fz.data.info
    feats = dict(fz.features)
    if cfg.linprobe.feature_norm == "l2":
        feats = {k: F.normalize(v.float(), dim=1) for k, v in feats.items()}
    init_weight = _zeroshot_init(cfg, fz, bank) if bank is not None else None
    probe = train_linear_probe(
        feats["train"],
        target_tensor(task, fz.labels["train"], fz.device),
        feats["val"],
        target_tensor(task, fz.labels["val"], fz.device),
        n_outputs=info.n_classes,
        multilabel=is_multilabel(task),
        config=cfg.probe,
        init_weight=init_weight,
        standardize=cfg.linprobe.feature_norm == "standardize",
        seed=cfg.seed,
        description=f"linear probe {cfg.model} {info.flag}",
    )
    extras = {"grid": probe.grid, "curves": probe.curves, "epochs_run": probe.epochs_run}
    if bank is not None:
        style = cfg.zeroshot.style or bank.default_style
        extras["prompt_bank"] = bank.describe(style)
        extras["prompt_bank_hash"] = bank.content_hash
    selection = {"lr": probe.lr, "weight_decay": probe.weight_decay, "best_epoch": probe.best_epoch,
                 "val_loss": probe.val_loss}
    return frozen_result(
        fz, test_scores=probe.predict_proba(feats["test"]), val_scores=probe.predict_proba(feats["val"]),
        extras=extras, selection=selection, timer=timer,
    )
