"""LoRA target modules of an architecture fmeval was not told about.

Registered encoders name their targets (``TimmSpec.lora_targets``); a model
given by spec (``timm:``, ``hf:``, ``torchvision:``, user code) gets them from
its module *types*, never from its names, which vary across libraries:

1. attention linears: every ``nn.Linear`` inside a module whose class name
   ends in ``Attention`` (timm ``Attention`` q/k/v + proj, transformers
   ``ViTAttention`` query/key/value + ``output.dense``, ``SiglipAttention``,
   ``CLIPAttention``...), named by their path from the outermost such module, so
   an MLP's ``output.dense`` is never caught by a suffix;
2. else ``nn.MultiheadAttention`` modules themselves (peft wraps in-proj and
   out-proj together; LoRA on ``out_proj`` alone is never applied, see
   fmeval.adapters.openclip);
3. else (CNNs) every ungrouped ``Conv2d`` (depthwise ones are left out: peft's
   conv LoRA needs the rank to divide ``groups``).

The rule that applied is returned with the targets, printed at LoRA time and
recorded in the report; ``--lora-targets`` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fmeval.adapters.base import ungrouped_conv_names


@dataclass(frozen=True)
class LoraChoice:
    targets: tuple[str, ...]
    rule: str  # "family default", "attention linears by module type", ...


def _attention_linear_patterns(model: nn.Module) -> tuple[str, ...]:
    attn_roots: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            continue  # its out_proj alone is never applied: rule 2 wraps the whole module
        if name and type(mod).__name__.endswith("Attention") and not any(
                name.startswith(r + ".") for r in attn_roots):
            attn_roots.append(name)
    patterns: list[str] = []
    for root in attn_roots:
        local = root.rsplit(".", 1)[-1]
        for sub, mod in model.get_submodule(root).named_modules():
            if sub and isinstance(mod, nn.Linear) and not _in_mha(model.get_submodule(root), sub):
                pat = f"{local}.{sub}"
                if pat not in patterns:
                    patterns.append(pat)
    if not patterns:
        return ()
    # a pattern must not also match a linear outside attention (peft matches by suffix)
    inside = {f"{r}.{s}" for r in attn_roots for s, m in model.get_submodule(r).named_modules()
              if s and isinstance(m, nn.Linear) and not _in_mha(model.get_submodule(r), s)}
    matched = {n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(n == p or n.endswith("." + p) for p in patterns)}
    return tuple(patterns) if matched == inside else tuple(sorted(inside))


def _in_mha(root: nn.Module, sub: str) -> bool:
    parts = sub.split(".")
    return any(isinstance(root.get_submodule(".".join(parts[:i])), nn.MultiheadAttention)
               for i in range(1, len(parts)))


def find_lora_targets(model: nn.Module) -> LoraChoice:
    """Targets by module type (see the module docstring for the rules, in order)."""
    linears = _attention_linear_patterns(model)
    if linears:
        return LoraChoice(linears, "attention linears found by module type")
    mha = tuple(n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention))
    if mha:
        return LoraChoice(mha, "nn.MultiheadAttention modules found by type")
    convs = ungrouped_conv_names(model)
    if convs:
        return LoraChoice(convs, "ungrouped Conv2d layers (CNN)")
    return LoraChoice((), "no attention or convolution found")
