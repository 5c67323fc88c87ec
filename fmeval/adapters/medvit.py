"""MedViT (Manzari et al., 2023) as an fmeval adapter: the released checkpoints, the encoder, registration.

MedViT is not on PyPI; the network is rebuilt in :mod:`fmeval.adapters.medvit_net` with
the module and parameter names of the authors' reference code, so the released ImageNet-1K
checkpoints (``MedViT_{small,base,large}_im1k.pth``, state dict under ``model``) load
strictly. Only the 1000-class ``proj_head`` is dropped, explicitly: fmeval puts its own
head on the pooled features.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fmeval.adapters.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Adapter,
    AdapterConfig,
    LoadReport,
    Preprocess,
    checkpoint_weights_id,
    load_state_dict_file,
    load_weights,
    random_weights_id,
    register_adapter,
)
from fmeval.adapters.medvit_net import TINY_INPUT, VARIANTS, MedViT, MedViTConfig, build_medvit
from fmeval.errors import ConfigError, ModelError

CHECKPOINT_SOURCE = "https://github.com/Omid-Nejati/MedViT"
HEAD_KEYS = ("proj_head.0.weight", "proj_head.0.bias")  # the 1000-class ImageNet head


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a MedViT checkpoint (state dict under ``model``).

    DeiT-style training scripts also pickle ``args`` (an ``argparse.Namespace``),
    which torch's weights-only loader rejects; that one class is allow-listed,
    nothing else is unpickled.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        return load_state_dict_file(path)


# -- adapter ------------------------------------------------------------------

# Attention (E-MHSA q/k/v/out, MHCA's 1x1 output) and the LFFN's two 1x1 convs.
# Suffixes, matched by peft against module names inside ``backbone``.
MEDVIT_LORA = (
    "e_mhsa.q", "e_mhsa.k", "e_mhsa.v", "e_mhsa.proj",
    "mhca.projection", "conv.conv.0", "conv.conv.7",
)


class MedViTAdapter(Adapter):
    code_version = "1"
    family = "medvit"
    lora_targets = MEDVIT_LORA

    def __init__(self, variant: str, cfg: AdapterConfig) -> None:
        super().__init__()
        arch = f"MedViT_{variant}"
        if cfg.pretrained and cfg.weights is None:
            raise ModelError(
                f"{arch} needs its ImageNet-1K checkpoint ({arch}_im1k.pth, linked from the "
                f"README of {CHECKPOINT_SOURCE}): run `fmeval weights fetch medvit-{variant}`, or "
                "download it and pass --weights PATH, or pass --random-init to train from "
                "scratch (as in the MedMNIST paper)."
            )
        # Read the checkpoint before building: a bad file fails in milliseconds.
        sd = read_checkpoint(cfg.weights) if cfg.weights is not None else None
        self.model = build_medvit(variant, tiny=cfg.tiny, num_classes=0)
        self.load_report: LoadReport | None = None
        if cfg.weights is not None:
            self.load_report = load_weights(
                self.model, sd, strict=cfg.strict, source=str(cfg.weights), ignore=HEAD_KEYS,
                allow_partial=cfg.allow_partial,
            )
            if not self.load_report.clean:  # only reachable with strict=False
                warnings.warn(
                    f"{arch}: weights {cfg.weights} loaded non-strictly "
                    f"({self.load_report.summary()}); unmatched parameters keep random values.",
                    stacklevel=2,
                )
            self.weights_id = checkpoint_weights_id(cfg.weights, self.load_report, cfg)
        else:
            self.weights_id = random_weights_id(cfg, arch)
        self.arch = arch
        self.feature_dim = self.model.num_features
        size = cfg.input_size or (TINY_INPUT if cfg.tiny else 224)
        self.preprocess = Preprocess(
            input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
        )

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _register(variant: str, description: str) -> None:
    def factory(cfg: AdapterConfig) -> Adapter:
        if cfg.input_size is not None and cfg.input_size < 8:
            raise ConfigError(f"input size {cfg.input_size} is too small.")
        return MedViTAdapter(variant, cfg)

    register_adapter(f"medvit-{variant}", description, family="medvit", text="no",
                     weights=f"medvit-{variant} (fmeval weights fetch)",
                     asset=f"medvit-{variant}")(factory)


_register("small", "MedViT-S hybrid CNN-Transformer (Manzari et al. 2023), depths 3-4-10-3")
_register("base", "MedViT-B hybrid CNN-Transformer (Manzari et al. 2023), depths 3-4-20-3")
_register("large", "MedViT-L hybrid CNN-Transformer (Manzari et al. 2023), depths 3-4-30-3")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__: Sequence[str] = (
    "MedViT", "MedViTConfig", "MedViTAdapter", "VARIANTS", "build_medvit", "count_parameters",
)
