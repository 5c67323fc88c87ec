"""Zero-shot classification from prompt banks.

Image features come from the same feature cache as kNN and linear probing;
text embeddings are cached the same way (keyed by the text tower and the exact
prompts), so comparing prompt styles re-encodes nothing that was seen before.
"""

from __future__ import annotations

import torch

from fmeval.adapters.base import Adapter
from fmeval.cache import FeatureCache
from fmeval.config import RunConfig
from fmeval.errors import ConfigError
from fmeval.modes.base import FittedHead, register_mode, run_frozen
from fmeval.pipeline import prepare_frozen, text_feature_key

FROZEN_SPLITS = ("val", "test")


def load_bank_for(cfg: RunConfig):
    """Validate the bank (and style) against the dataset before any model is loaded."""
    from fmeval.prompts import resolve_bank
    from fmeval.zeroshot import ENSEMBLES

    ENSEMBLES.get(cfg.zeroshot.ensemble)
    bank = resolve_bank(cfg.zeroshot.prompts, cfg.dataset)
    if cfg.zeroshot.style is not None:  # an unknown style fails here, naming the known ones
        bank.style_groups(cfg.zeroshot.style)
    return bank


def text_features(adapter: Adapter, bank, style: str | None, cache: FeatureCache,
                  batch_size: int, device: torch.device):
    """Per-class prompt embeddings (pairs for multi-label), cached per style.

    Prompts of all classes are encoded together, except for adapters whose
    text pooling depends on padding (MedCLIP), which ask for per-class batches.
    """
    from fmeval.zeroshot import encode_prompts

    if not adapter.supports_text:
        raise ConfigError(
            f"model {adapter.name!r} has no text encoder; zero-shot needs a vision-language model "
            "(clip-vit-b32, clip-vit-b16, biomedclip, medclip)."
        )
    per_class = bool(getattr(adapter, "per_class_text", False))
    groups = bank.style_groups(style)
    flat = [list(g) for pair in groups for g in pair] if bank.multi_label else [list(g) for g in groups]
    key = text_feature_key(adapter, flat, per_class)

    def compute() -> torch.Tensor:
        with torch.inference_mode():
            feats = encode_prompts(adapter.encode_text, flat, batch_size, per_class=per_class)
        return torch.cat(feats).float()

    stacked, _ = cache.get_or_compute("text", key, compute, device=device,
                                      expect_rows=sum(len(g) for g in flat))
    parts = list(torch.split(stacked, [len(g) for g in flat]))
    if bank.multi_label:
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(len(groups))]
    return parts


def scoring_of(adapter: Adapter) -> dict:
    """The adapter's own zero-shot scoring rule (fmeval.zeroshot.SCORINGS) and bias."""
    return {"scoring": getattr(adapter, "zeroshot_scoring", "softmax"),
            "logit_bias": float(getattr(adapter, "logit_bias", 0.0))}


def zeroshot_scores(adapter: Adapter, image_feats: torch.Tensor, text_feats, ensemble: str) -> torch.Tensor:
    from fmeval.zeroshot import zeroshot_probs

    return zeroshot_probs(image_feats, text_feats, logit_scale=adapter.logit_scale, ensemble=ensemble,
                          **scoring_of(adapter))


def split_scores(fz, split: str, text_feats, ensemble: str) -> torch.Tensor:
    """Zero-shot scores of a split; volumes seen through a 2D encoder pool the
    per-slice logits of each volume (the view's pooling) before the softmax."""
    from fmeval.zeroshot import zeroshot_probs

    if fz.view is None:
        return zeroshot_scores(fz.adapter, fz.features[split], text_feats, ensemble)
    pool = lambda z: fz.view.pool_scores(z, fz.n_slices, kind="logits")  # noqa: E731
    return zeroshot_probs(fz.slice_features[split], text_feats, logit_scale=fz.adapter.logit_scale,
                          ensemble=ensemble, pool_logits=pool, **scoring_of(fz.adapter))


def bank_extras(bank, style: str, adapter: Adapter, ensemble: str) -> dict:
    return {"prompt_bank": bank.describe(style), "prompt_bank_hash": bank.content_hash, "style": style,
            "ensemble": ensemble, "logit_scale": float(adapter.logit_scale), **scoring_of(adapter)}


def prepare(cfg: RunConfig):
    load_bank_for(cfg)  # a bad bank or style fails before any model loads
    return prepare_frozen(cfg, splits=FROZEN_SPLITS, require_text=True)


def fit_head(cfg: RunConfig, fz) -> FittedHead:
    """The prompt bank's classifier: nothing is fitted or selected (the style is the config's)."""
    bank = load_bank_for(cfg)
    z = cfg.zeroshot
    style = z.style or bank.default_style
    text = text_features(fz.adapter, bank, style, fz.cache, z.text_batch_size, fz.device)
    return FittedHead(
        lambda x: zeroshot_scores(fz.adapter, x, text, z.ensemble), {},
        bank_extras(bank, style, fz.adapter, z.ensemble),
        val_scores=split_scores(fz, "val", text, z.ensemble),
        split_scorer=lambda split: split_scores(fz, split, text, z.ensemble),
    )


@register_mode("zeroshot", frozen=True, needs_text=True,
               description="zero-shot classification with a prompt bank")
def run_zeroshot(cfg: RunConfig):
    return run_frozen(cfg, prepare, fit_head)
