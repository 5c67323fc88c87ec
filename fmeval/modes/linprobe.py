"""Linear probing on frozen features (hyper-parameters selected on validation).

With ``init="zeroshot"`` every head starts from the zero-shot classifier of a
prompt bank (text embeddings x logit scale, on L2-normalised image features,
where that classifier is exactly linear), so the probe refines the zero-shot
solution instead of starting from zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fmeval.data import is_multilabel
from fmeval.errors import ConfigError
from fmeval.modes.base import MODES, Timer, finish_frozen, target_tensor
from fmeval.pipeline import EvalConfig, prepare_frozen
from fmeval.probes.linear import ProbeConfig, train_linear_probe

INITS = ("zeros", "zeroshot")


@dataclass
class LinprobeConfig(EvalConfig):
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    init: str = "zeros"  # "zeros" | "zeroshot"
    prompts: str | None = None  # bank for init="zeroshot" (default: the dataset's)
    style: str | None = None


def _zeroshot_init(cfg: LinprobeConfig, fz, bank) -> torch.Tensor:
    from fmeval.modes.zeroshot import text_features
    from fmeval.zeroshot import text_classifier_weights

    text = text_features(fz.adapter, bank, cfg.style or bank.default_style, fz.cache, 256, fz.device)
    return text_classifier_weights(text, ensemble="mean-embedding") * float(fz.adapter.logit_scale)


@MODES.register("linprobe", "linear probe on frozen features")
def run_linprobe(cfg: LinprobeConfig):
    if cfg.init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, not {cfg.init!r}.")
    timer = Timer()
    bank = None
    if cfg.init == "zeroshot":
        from fmeval.prompts import resolve_bank

        bank = resolve_bank(cfg.prompts, cfg.dataset)  # validated before any model loads
    fz = prepare_frozen(cfg, require_text=bank is not None)
    task, info = fz.data.task, fz.data.info
    feats = dict(fz.features)
    init_weight = None
    if bank is not None:
        init_weight = _zeroshot_init(cfg, fz, bank)
        feats = {k: F.normalize(v.float(), dim=1) for k, v in feats.items()}
    probe = train_linear_probe(
        feats["train"],
        target_tensor(task, fz.labels["train"], fz.device),
        feats["val"],
        target_tensor(task, fz.labels["val"], fz.device),
        n_outputs=info.n_classes,
        multilabel=is_multilabel(task),
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
        "init": cfg.init,
    }
    if bank is not None:
        extras["prompt_bank"] = bank.describe(cfg.style or bank.default_style)
        extras["prompt_bank_hash"] = bank.content_hash
    return finish_frozen(
        fz, mode="linprobe", test_scores=probe.predict_proba(feats["test"]),
        val_scores=probe.predict_proba(feats["val"]), extras=extras, timer=timer,
    )
