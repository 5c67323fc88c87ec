"""MedCLIP-ViT rebuilt from transformers' Swin and BERT classes.

The ``medclip`` package (0.0.3) no longer imports under transformers 5 and
hard-codes ``.cuda()``, so the two towers are rebuilt here with the module
names of the original (``vision_model.model`` = Swin-Tiny, ``text_model.model``
= Bio_ClinicalBERT, each followed by a bias-free ``projection_head``) and the
released 4.x state dict is renamed onto transformers 5's Swin layout. Two keys
of that checkpoint are known to be harmless and are dropped by name (BERT's
``position_ids`` and Swin's ``relative_position_index``, both rebuilt as
buffers); any other mismatch fails loudly, because silent non-strict loading is
exactly how users of the original got wrong outputs.

Faithful details that change numbers: the text embedding is the token mean
(padding included, as in the original) of hidden layers 1, 2 and the last,
averaged; the logit scale is clamped to <= 100; images are grayscale.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fmeval.adapters.base import (
    Adapter,
    AdapterConfig,
    Preprocess,
    checkpoint_weights_id,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
)
from fmeval.adapters.text_offline import scratch_dir, write_wordpiece_vocab
from fmeval.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MEDCLIP_MEAN = 0.5862785803043838
MEDCLIP_STD = 0.27950088968644304
MEDCLIP_MAX_LENGTH = 77
MEDCLIP_INPUT_SIZE = 224
MEDCLIP_PROJ_DIM = 512
MEDCLIP_WEIGHTS_URL = "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip"
BIO_CLINICALBERT_URL = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT"
LOGIT_SCALE_INIT = 1 / 0.07
LOGIT_SCALE_MAX = 100.0

#: microsoft/swin-tiny-patch4-window7-224 (MedCLIP's "ViT").
SWIN_TINY: dict[str, Any] = dict(
    image_size=MEDCLIP_INPUT_SIZE, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0, qkv_bias=True,
    drop_path_rate=0.1, layer_norm_eps=1e-5,
)
#: emilyalsentzer/Bio_ClinicalBERT (BERT-base-cased vocabulary).
BIO_CLINICALBERT: dict[str, Any] = dict(
    vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
)
# Tiny builds of the same classes (two Swin stages, three BERT layers so that
# hidden layers 1, 2 and last are distinct).
TINY_INPUT_SIZE = 32
TINY_PROJ_DIM = 32
TINY_SWIN: dict[str, Any] = dict(
    image_size=TINY_INPUT_SIZE, patch_size=4, embed_dim=16, depths=[1, 1],
    num_heads=[1, 2], window_size=4,
)
TINY_BERT: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=128,
)

#: peft targets inside the Swin tower (transformers 5 attention names).
MEDCLIP_LORA = ("q_proj", "k_proj", "v_proj", "o_proj")

SWIN_PREFIX = "vision_model.model."
#: transformers 4.x -> 5.x Swin names, most specific first; one rule per key.
SWIN_RENAMES: tuple[tuple[str, str], ...] = (
    ("attention.self.relative_position_bias_table",
     "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.relative_position_index",
     "attention.relative_position_bias.relative_position_index"),
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
#: Known-harmless extras of the released checkpoint (rebuilt as buffers).
POSITION_IDS_KEY = "text_model.model.embeddings.position_ids"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json")

def load_tokenizer(folder: Path) -> Any:
    """BERT WordPiece tokenizer from a folder's ``vocab.txt``.

    ``from_pretrained`` on the folder honours a ``tokenizer_config.json`` when
    one is there and otherwise uses BERT's defaults, exactly what
    ``AutoTokenizer.from_pretrained('emilyalsentzer/Bio_ClinicalBERT')`` did for
    MedCLIP (that repo ships only ``vocab.txt``).
    """
    from transformers import BertTokenizerFast

    try:
        tok = BertTokenizerFast.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a BERT tokenizer from {folder}: {exc}") from None
    tok.model_max_length = MEDCLIP_MAX_LENGTH
    return tok


def tokenizer_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- #
# Model (module names follow the original so the checkpoint maps 1:1)
# --------------------------------------------------------------------------- #
class MedClipVision(nn.Module):
    """Swin (pooler output) -> Linear(no bias) into the joint space."""

    def __init__(self, swin: dict[str, Any], proj_dim: int) -> None:
        super().__init__()
        from transformers import SwinConfig, SwinModel

        config = SwinConfig(**swin)
        self.model = SwinModel(config, add_pooling_layer=True)
        width = int(config.embed_dim * 2 ** (len(config.depths) - 1))
        self.projection_head = nn.Linear(width, proj_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor, project: bool = True) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat(1, 3, 1, 1)
        pooled = self.model(pixel_values=pixel_values).pooler_output
        return self.projection_head(pooled) if project else pooled


class MedClipText(nn.Module):
    """BERT -> token mean of hidden layers (1, 2, last) averaged -> Linear(no bias)."""

    def __init__(self, bert: dict[str, Any], proj_dim: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(**bert)
        self.model = BertModel(config, add_pooling_layer=True)  # pooler: in the checkpoint
        self.projection_head = nn.Linear(config.hidden_size, proj_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=True)
        hs = out.hidden_states
        layers = torch.stack([hs[1], hs[2], hs[-1]])  # [3, N, T, H]
        # The original averages over *all* positions, padding included.
        return self.projection_head(layers.mean(dim=2).mean(dim=0))


class MedClipModel(nn.Module):
    def __init__(self, swin: dict[str, Any], bert: dict[str, Any], proj_dim: int) -> None:
        super().__init__()
        self.vision_model = MedClipVision(swin, proj_dim)
        self.text_model = MedClipText(bert, proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(LOGIT_SCALE_INIT)))


# --------------------------------------------------------------------------- #
# Checkpoint mapping
# --------------------------------------------------------------------------- #
def rename_key(key: str) -> str:
    """A MedCLIP 4.x key in transformers 5 naming (Swin renames only)."""
    if not key.startswith(SWIN_PREFIX):
        return key
    for old, new in SWIN_RENAMES:
        if old in key:
            return key.replace(old, new, 1)
    return key


def map_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(renamed state dict, keys to drop on purpose) for :func:`load_weights`."""
    mapped = {rename_key(k): v for k, v in sd.items()}
    drop = [k for k in mapped if k == POSITION_IDS_KEY
            or (k.startswith(SWIN_PREFIX) and k.endswith(".relative_position_index"))]
    return mapped, drop


def _resolve_weights(path: Path) -> tuple[Path, Path]:
    """(checkpoint file, folder that should hold the tokenizer files)."""
    if path.is_file():
        return path, path.parent
    for name in ("pytorch_model.bin", "model.safetensors", "pytorch_model.pt"):
        if (path / name).is_file():
            return path / name, path
    raise ModelError(f"no MedCLIP checkpoint (pytorch_model.bin) in {path}.")


def _missing_weights_error() -> ModelError:
    return ModelError(
        "MedCLIP's weights are not on any hub: run `fmeval weights fetch medclip`, or download "
        f"{MEDCLIP_WEIGHTS_URL}, unzip it, put Bio_ClinicalBERT's vocab.txt "
        f"({BIO_CLINICALBERT_URL}) in the same folder and pass --weights FOLDER "
        "(or use --tiny/--random-init for an offline run)"
    )


# --------------------------------------------------------------------------- #
# Adapter
# --------------------------------------------------------------------------- #
class MedClipAdapter(Adapter):
    """MedCLIP-ViT; ``encode_image`` is the 512-d projected embedding."""

    code_version = "1"
    family = "medclip"
    lora_targets = MEDCLIP_LORA
    # Text pooling averages over padding tokens, so an embedding depends on
    # which prompts share a batch: encode each class's prompts together, as
    # MedCLIP's own PromptClassifier does.
    per_class_text = True

    def __init__(self, cfg: AdapterConfig, tokenizer_folder: Path) -> None:
        super().__init__()
        swin = dict(TINY_SWIN if cfg.tiny else SWIN_TINY)
        if cfg.input_size is not None:
            swin["image_size"] = cfg.input_size  # Swin pads to its windows: any size works
        self.tokenizer = load_tokenizer(tokenizer_folder)
        bert = dict(TINY_BERT if cfg.tiny else BIO_CLINICALBERT)
        bert["vocab_size"] = len(self.tokenizer) if cfg.tiny else bert["vocab_size"]
        proj = TINY_PROJ_DIM if cfg.tiny else MEDCLIP_PROJ_DIM
        self.model = MedClipModel(swin, bert, proj)
        self.feature_dim = proj
        self.preprocess = Preprocess(
            input_size=int(swin["image_size"]), mean=(MEDCLIP_MEAN,) * 3,
            std=(MEDCLIP_STD,) * 3, interpolation="bicubic", grayscale=True,
        )
        vocab = tokenizer_digest(tokenizer_folder)
        self.tokenizer_id = f"wordpiece:{vocab}/max{MEDCLIP_MAX_LENGTH}"
        self.weights_id = random_weights_id(cfg, "medclip:swin-t+bio_clinicalbert")
        self.text_id = f"{self.weights_id}|{self.tokenizer_id}"
        self.load_report = None

    def load_checkpoint(self, path: Path, cfg: AdapterConfig) -> None:
        mapped, drop = map_state_dict(load_state_dict_file(path))
        self.load_report = load_weights(
            self.model, mapped, strict=cfg.strict, source=str(path), ignore=drop,
            allow_partial=cfg.allow_partial,
        )
        if not self.load_report.clean:
            log.warning("%s: %s", cfg.name, self.load_report.summary())
        suffix = f"@{cfg.input_size}" if cfg.input_size else ""
        self.weights_id = checkpoint_weights_id(path, self.load_report, cfg, suffix)
        self.text_id = f"{self.weights_id}|{self.tokenizer_id}"

    @property
    def backbone(self) -> nn.Module:
        return self.model.vision_model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(x)

    @property
    def supports_text(self) -> bool:
        return True

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts padded together (MedCLIP pools over padding: batch per class)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=MEDCLIP_MAX_LENGTH, return_tensors="pt")
        device = self.model.logit_scale.device
        return self.model.text_model(enc["input_ids"].to(device),
                                     enc["attention_mask"].to(device))

    @property
    def logit_scale(self) -> float:
        # MedCLIP clamps log-scale to [0, ln 100] before every use.
        scale = self.model.logit_scale.detach().clamp(0.0, math.log(LOGIT_SCALE_MAX)).exp()
        return float(scale.clamp(max=LOGIT_SCALE_MAX))


def _synthetic_tokenizer_folder(tiny: bool) -> Path:
    """Generated vocab for offline builds: small for tiny, 28996 entries for full size."""

    folder = scratch_dir() / ("medclip-vocab-tiny" if tiny else "medclip-vocab-full")
    if not (folder / "vocab.txt").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_wordpiece_vocab(tmp, lowercase=True,
                              size=None if tiny else BIO_CLINICALBERT["vocab_size"])
        tmp.rename(folder)
    return folder


@register_adapter(
    "medclip",
    "MedCLIP-ViT: Swin-Tiny + Bio_ClinicalBERT (MIMIC-CXR/CheXpert)",
    family="medclip", text="yes", weights="medclip (fmeval weights fetch)", asset="medclip",
)
def create_medclip(cfg: AdapterConfig) -> Adapter:
    if cfg.input_size is not None and cfg.input_size < 8:
        raise ConfigError(f"input size {cfg.input_size} is too small.")
    if cfg.weights is None and cfg.pretrained:
        raise _missing_weights_error()
    ckpt = folder = None
    if cfg.weights is not None:
        ckpt, folder = _resolve_weights(cfg.weights)
    if cfg.tiny or cfg.weights is None:
        folder = _synthetic_tokenizer_folder(cfg.tiny)
    elif not (folder / "vocab.txt").is_file():  # type: ignore[operator]
        raise ModelError(
            f"MedCLIP's tokenizer (Bio_ClinicalBERT vocab.txt) is not next to {ckpt}; "
            f"copy vocab.txt from {BIO_CLINICALBERT_URL} into {folder}"
        )
    adapter = MedClipAdapter(cfg, folder)  # type: ignore[arg-type]
    if ckpt is not None:
        adapter.load_checkpoint(ckpt, cfg)
    return adapter
