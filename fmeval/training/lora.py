"""LoRA through peft, applied in place to an adapter's ``backbone``.

``peft.inject_adapter_in_model`` swaps the target layers of a plain
``nn.Module`` for LoRA layers without wrapping it in a ``PeftModel``, so the
adapter's own ``encode_image`` keeps working unchanged for every encoder
(timm ViTs and CNNs, MedViT, open_clip towers, MedCLIP's Swin). Saved adapters
use peft's on-disk format (``adapter_config.json`` +
``adapter_model.safetensors``), readable by peft itself.
"""

from __future__ import annotations


from pathlib import Path

from torch import nn

from fmeval.adapters.base import Adapter
from fmeval.config import LoraSettings
from fmeval.errors import ConfigError, ModelError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def lora_config(adapter: Adapter, settings: LoraSettings):
    from peft import LoraConfig

    targets = tuple(settings.targets or adapter.lora_targets)
    if not targets:
        raise ConfigError(
            f"model {adapter.name!r} declares no LoRA target modules (lora_targets); "
            "use --full fine-tuning, or add lora_targets to its adapter."
        )
    return LoraConfig(
        target_modules=list(targets), r=settings.r, lora_alpha=settings.alpha,
        lora_dropout=settings.dropout, bias="none",
    )


def apply_lora(adapter: Adapter, settings: LoraSettings) -> nn.Module:
    """Inject LoRA layers into ``adapter.backbone``; freeze everything else.

    Returns the backbone (modified in place). Raises a ConfigError when no
    target module matches, rather than training a head on a frozen encoder
    while calling it LoRA.
    """
    from peft import inject_adapter_in_model

    cfg = lora_config(adapter, settings)
    announce_targets(adapter, settings)
    backbone = adapter.backbone
    try:
        inject_adapter_in_model(cfg, backbone)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(f"LoRA on {adapter.name}: {str(exc).splitlines()[0]}") from None
    for p in adapter.parameters():
        p.requires_grad_(False)
    keep_input_dtype(backbone)
    n = 0
    for name, p in backbone.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            n += 1
    if n == 0:
        raise ConfigError(f"LoRA targets {cfg.target_modules} matched nothing in {adapter.name}.")
    return backbone


def announce_targets(adapter: Adapter, settings: LoraSettings) -> None:
    """Record (on the adapter, hence in the report's model record) and print which
    modules LoRA wraps when they were not the family's own declared choice."""
    import sys

    if settings.targets:
        adapter.lora_targets, adapter.lora_rule = tuple(settings.targets), "--lora-targets"
    if adapter.lora_rule != "family default":
        shown = ", ".join(adapter.lora_targets[:8]) + (" ..." if len(adapter.lora_targets) > 8 else "")
        print(f"LoRA targets of {adapter.name} ({adapter.lora_rule}): {shown}", file=sys.stderr)


def keep_input_dtype(module: nn.Module) -> None:
    """Stop peft casting each LoRA layer's input to the LoRA weights' dtype.

    Under bf16 autocast peft would copy every (bf16) LoRA input to float32 only
    for autocast to cast it back to bf16 for the matmul; in fp32 it is a no-op.
    """
    for m in module.modules():
        if hasattr(m, "cast_input_dtype_enabled") and hasattr(m, "lora_A"):
            m.cast_input_dtype_enabled = False


def save_lora(adapter: Adapter, settings: LoraSettings, folder: Path) -> None:
    """Write peft's adapter_config.json + adapter_model.safetensors into ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from fmeval.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    lora_config(adapter, settings).save_pretrained(str(folder))
    sd = get_peft_model_state_dict(adapter.backbone)
    with atomic_path(folder / PEFT_WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp),
                  metadata={"format": "pt"})


def load_lora(adapter: Adapter, folder: Path) -> None:
    """Inject the saved LoRA config into a freshly built adapter and load its weights."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from fmeval.training.checkpoint import read_safetensors

    if not (folder / PEFT_CONFIG).exists() or not (folder / PEFT_WEIGHTS).exists():
        raise ModelError(f"{folder} holds no peft LoRA adapter ({PEFT_CONFIG}, {PEFT_WEIGHTS}).")
    sd = read_safetensors(folder / PEFT_WEIGHTS)  # before touching the model: fail cheaply
    try:
        cfg = LoraConfig.from_pretrained(str(folder))
        inject_adapter_in_model(cfg, adapter.backbone)
        keep_input_dtype(adapter.backbone)
        result = set_peft_model_state_dict(adapter.backbone, sd)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(
            f"cannot load the LoRA adapter in {folder} ({type(exc).__name__}: {first})."
        ) from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise ModelError(
            f"LoRA weights in {folder} do not match {adapter.name}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys "
            f"(e.g. {(missing + unexpected)[:3]})."
        )
    for p in adapter.parameters():
        p.requires_grad_(False)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def freeze_norm_stats(module: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed (eval mode) while the rest trains.

    LoRA freezes the backbone; letting BN buffers drift would change the
    encoder outside the saved LoRA weights, and a reloaded adapter would no
    longer reproduce the run.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

