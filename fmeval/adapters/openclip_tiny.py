"""Tiny open_clip builds of the real architectures, for offline tests and ``--tiny``.

Same classes as the published models (open_clip's native ViT towers; BiomedCLIP's
timm ViT-B/16 trunk and BERT text tower), shrunk in width, depth and resolution only,
so every offline test runs the construction code a pretrained build runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from fmeval.adapters.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from fmeval.adapters.text_offline import scratch_dir, write_wordpiece_vocab
from fmeval.errors import ModelError

# Tiny same-architecture builds for offline tests (32 px, width 32, 2 layers).
TINY_IMAGE_SIZE = 32
TINY_WIDTH = 32
TINY_LAYERS = 2
TINY_HEAD_WIDTH = 16
TINY_TIMM_ENTRYPOINT = "fmeval_tiny_vit_base_patch16_224"

#: BiomedCLIP's published ``open_clip_config.json`` (hub). Only the tiny build reads
#: this copy; pretrained and full-size builds always use the hub's own file.
BIOMEDCLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)},
}


# --------------------------------------------------------------------------- #
# Tiny configs of the same architectures
# --------------------------------------------------------------------------- #
def _tiny_builtin_config(arch: str) -> dict:
    """The builtin config of ``arch`` shrunk in width/depth/resolution only."""
    import open_clip

    base = open_clip.get_model_config(arch)
    if base is None:
        raise ModelError(f"open_clip has no model config named {arch!r}.")
    vision, text = base["vision_cfg"], base["text_cfg"]
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)) \
            or "hf_model_name" in text:
        raise ModelError(f"no tiny recipe for open_clip {arch!r} (native ViT towers only).")
    vision.update(
        image_size=TINY_IMAGE_SIZE, width=TINY_WIDTH, layers=TINY_LAYERS,
        head_width=TINY_HEAD_WIDTH, patch_size=max(2, int(vision.get("patch_size", 16)) // 4),
    )
    text.update(width=TINY_WIDTH, heads=TINY_WIDTH // TINY_HEAD_WIDTH, layers=TINY_LAYERS)
    base["embed_dim"] = TINY_WIDTH
    return base


def _ensure_tiny_timm_vit() -> str:
    """Register a timm entrypoint for a tiny ``vit_base_patch16_224`` (same class).

    open_clip's ``TimmModel`` forwards no size kwargs to timm, so the only way to
    shrink BiomedCLIP's timm trunk through open_clip is a named timm model.
    """
    import timm
    from timm.models import register_model

    if TINY_TIMM_ENTRYPOINT in timm.list_models(TINY_TIMM_ENTRYPOINT):
        return TINY_TIMM_ENTRYPOINT

    def fmeval_tiny_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        return timm.create_model(
            "vit_base_patch16_224", pretrained=False, img_size=TINY_IMAGE_SIZE,
            patch_size=4, embed_dim=TINY_WIDTH, depth=TINY_LAYERS,
            num_heads=TINY_WIDTH // TINY_HEAD_WIDTH, **kwargs,
        )

    register_model(fmeval_tiny_vit_base_patch16_224)
    return TINY_TIMM_ENTRYPOINT


def tiny_biomedclip_folder() -> Path:
    """A local BiomedCLIP-shaped model folder: open_clip config + tiny BERT + vocab.

    Built exactly like a downloaded BiomedCLIP snapshot is consumed (the folder
    route), with a timm ViT-B/16 trunk and a BERT text tower shrunk to width 32.
    """
    from transformers import BertConfig


    folder = scratch_dir() / "tiny-biomedclip"
    if (folder / "open_clip_config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_wordpiece_vocab(folder, lowercase=True)
    BertConfig(
        vocab_size=vocab_size, hidden_size=TINY_WIDTH, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_WIDTH // TINY_HEAD_WIDTH, intermediate_size=2 * TINY_WIDTH,
        max_position_embeddings=512,
    ).save_pretrained(folder)
    config = copy.deepcopy(BIOMEDCLIP_CONFIG)
    config["model_cfg"]["embed_dim"] = TINY_WIDTH
    config["model_cfg"]["vision_cfg"].update(
        timm_model_name=TINY_TIMM_ENTRYPOINT, image_size=TINY_IMAGE_SIZE
    )
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    return folder
