"""The two fine-tuning methods, registered by name: ``lora`` and ``full``.

A method decides which parameters train, what a training-state checkpoint
must hold to resume, and how the trained weights are saved and reloaded. The
training loop and the mode runner never branch on the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fmeval.adapters.base import Adapter
from fmeval.errors import ConfigError, ModelError
from fmeval.registry import Registry
from fmeval.training.lora import (
    LoraSettings,
    apply_lora,
    freeze_norm_stats,
    load_lora,
    save_lora,
)

HEAD_FILE = "head.safetensors"
MODEL_FILE = "model.safetensors"


class Classifier(nn.Module):
    """An adapter's image features followed by one linear layer."""

    def __init__(self, adapter: Adapter, n_outputs: int, head_init: str = "model") -> None:
        super().__init__()
        self.adapter = adapter
        # the model's own head initialisation (timm's, as the MedMNIST+ reference), else PyTorch's
        own = adapter.classifier_init(n_outputs) if head_init == "model" else None
        self.head_init = "model" if own is not None else "torch-default"
        self.head = own if own is not None else nn.Linear(adapter.feature_dim, n_outputs)

    @property
    def backbone(self) -> nn.Module:
        return self.adapter.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter.encode_image(x))


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    ``prepare`` marks trainable parameters (and inserts LoRA layers);
    ``set_train_mode`` puts the model in training mode the way the method
    needs; ``state_keys`` lists the ``state_dict`` entries that change during
    training (what a checkpoint and a "best" snapshot hold); ``save``/``load``
    write and read the final weights next to ``run.json``.
    """

    name: str
    prepare: Callable[[Adapter, LoraSettings], None]
    set_train_mode: Callable[[Classifier], None]
    state_keys: Callable[[Classifier], list[str]]
    save: Callable[[Classifier, LoraSettings, Path], None]
    load: Callable[[Classifier, Path], None]


METHODS: Registry[Method] = Registry("fine-tuning method", ConfigError)


# -- shared pieces ------------------------------------------------------------
def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    from fmeval.io import atomic_path

    # clone: safetensors refuses tensors that share storage (tied weights)
    data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata={"format": "pt"})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from fmeval.training.checkpoint import read_safetensors

    if not path.exists():
        raise ModelError(f"{path} is missing; is this a fine-tuned adapter folder?")
    return read_safetensors(path)


def _load_strict(module: torch.nn.Module, folder: Path, name: str, what: str) -> None:
    try:
        module.load_state_dict(load_tensors(folder / name), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{what} weights in {folder} do not fit: {str(exc).splitlines()[0]}") from None


def _load_head(model: Classifier, folder: Path) -> None:
    _load_strict(model.head, folder, HEAD_FILE, "head")


def _trainable_keys(model: Classifier) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# -- LoRA ---------------------------------------------------------------------
def _lora_prepare(adapter: Adapter, settings: LoraSettings) -> None:
    apply_lora(adapter, settings)


def _lora_train_mode(model: Classifier) -> None:
    model.train()
    freeze_norm_stats(model.adapter)


def _lora_save(model: Classifier, settings: LoraSettings, folder: Path) -> None:
    save_lora(model.adapter, settings, folder)
    save_tensors(model.head.state_dict(), folder / HEAD_FILE)


def _lora_load(model: Classifier, folder: Path) -> None:
    load_lora(model.adapter, folder)
    _load_head(model, folder)


METHODS.add("lora", Method("lora", _lora_prepare, _lora_train_mode, _trainable_keys,
                           _lora_save, _lora_load),
            "LoRA (peft) on the backbone's lora_targets + linear head")


# -- full fine-tuning -----------------------------------------------------------
def _full_prepare(adapter: Adapter, settings: LoraSettings) -> None:
    # Only the image backbone trains: a CLIP text tower is not part of the classifier.
    for p in adapter.parameters():
        p.requires_grad_(False)
    for p in adapter.backbone.parameters():
        p.requires_grad_(True)


def _full_train_mode(model: Classifier) -> None:
    model.train()


def _full_state_keys(model: Classifier) -> list[str]:
    # Buffers too: BatchNorm running statistics change while training.
    prefix = _backbone_prefix(model)
    return [k for k in model.state_dict() if k.startswith(prefix) or k.startswith("head.")]


def _backbone_prefix(model: Classifier) -> str:
    for name, mod in model.named_modules():
        if mod is model.backbone:
            return f"{name}." if name else ""
    raise ModelError("adapter.backbone is not a submodule of the adapter.")


def _full_save(model: Classifier, settings: LoraSettings, folder: Path) -> None:
    save_tensors(model.backbone.state_dict(), folder / MODEL_FILE)
    save_tensors(model.head.state_dict(), folder / HEAD_FILE)


def _full_load(model: Classifier, folder: Path) -> None:
    _load_strict(model.backbone, folder, MODEL_FILE, "model")
    _load_head(model, folder)
    for p in model.parameters():
        p.requires_grad_(False)


METHODS.add("full", Method("full", _full_prepare, _full_train_mode, _full_state_keys,
                           _full_save, _full_load),
            "all backbone parameters + linear head")
