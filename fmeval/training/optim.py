"""Optimiser, parameter groups, layer-wise LR decay and the LR schedule.

Weight decay is applied to matrices/kernels only (not to biases, norms or
1-D embeddings), as timm and most ViT recipes do: decaying a LayerNorm gain
towards 0 is not regularisation. Layer-wise decay follows BEiT: the head
trains at the base LR and every layer below it at ``decay`` times the LR of
the layer above.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fmeval.errors import ConfigError
from fmeval.probes.linear import cosine_epoch_factor  # noqa: F401  (one home: the probe's schedule)
from fmeval.registry import Registry

_NUMBERED = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def _timm_layer_map(backbone: nn.Module) -> dict[str, int]:
    """timm models know their depth order (``group_matcher``; ViT: ``blocks.<i>.``)."""
    from timm.models import group_parameters

    return group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)


def _numbered_block_map(backbone: nn.Module) -> dict[str, int]:
    """Fallback for non-timm backbones: depth = order of the first numbered block.

    A parameter's block is the shortest name prefix ending in an index
    (``features.3``, ``transformer.resblocks.7``, ``encoder.layers.2``), in the
    order modules register them (forward order for sequential encoders).
    Parameters outside any block go below the first block (embeddings, stems)
    if registered before it, else above the last one (final norms, projections).
    """
    blocks: dict[str, int] = {}
    names = [n for n, _ in backbone.named_parameters()]
    per_param: dict[str, str | None] = {}
    for n in names:
        m = _NUMBERED.match(n)
        key = m.group(1) if m else None
        per_param[n] = key
        if key is not None and key not in blocks:
            blocks[key] = len(blocks) + 1
    if len(blocks) < 2:
        raise ConfigError(
            "--layer-decay needs a backbone made of numbered blocks (timm models, ViTs, "
            "MedViT, CLIP towers); this one has none. Leave --layer-decay unset."
        )
    top = len(blocks) + 1
    out: dict[str, int] = {}
    seen_block = False
    for n in names:
        key = per_param[n]
        if key is not None:
            seen_block = True
            out[n] = blocks[key]
        else:
            out[n] = top if seen_block else 0
    return out


def layer_ids(backbone: nn.Module) -> dict[str, int]:
    """Parameter name -> depth index (0 = input side)."""
    if hasattr(backbone, "group_matcher"):
        try:
            return _timm_layer_map(backbone)
        except Exception:  # a wrapper that only looks like timm: use the generic rule
            pass
    return _numbered_block_map(backbone)


def _decays(name: str, p: torch.Tensor) -> bool:
    return p.ndim > 1 and not name.endswith(".bias")


def param_groups(
    backbone: nn.Module,
    head: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float | None,
    decay_scope: str = "matrices",
) -> list[dict]:
    """AdamW groups with an ``lr_scale`` each (applied by :func:`build_optimizer`)."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError("--layer-decay must be in (0, 1].")
    ids = layer_ids(backbone) if layer_decay is not None else {}
    top = max(ids.values(), default=0) + 1  # the head sits one above the backbone
    groups: dict[tuple[float, bool], dict] = {}

    if decay_scope not in ("matrices", "all"):
        raise ConfigError(f"weight-decay scope must be matrices or all, not {decay_scope!r}.")

    def add(name: str, p: torch.Tensor, scale: float) -> None:
        decay = decay_scope == "all" or _decays(name, p)
        g = groups.setdefault((scale, decay), {
            "params": [], "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0,
        })
        g["params"].append(p)

    for name, p in backbone.named_parameters():
        if p.requires_grad:
            scale = layer_decay ** (top - ids.get(name, top - 1)) if layer_decay else 1.0
            add(name, p, scale)
    for name, p in head.named_parameters():
        add(name, p, 1.0)
    return list(groups.values())


OptimizerFactory = Callable[[list[dict], float], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", ConfigError)
OPTIMIZERS.add("adamw", lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
               "AdamW, decoupled weight decay (MedMNIST+)")
# Adam's weight_decay is L2 added to the gradient (torch semantics); the
# MedMNIST v2 recipe states none, so protocols set weight_decay 0 with it.
OPTIMIZERS.add("adam", lambda groups, lr: torch.optim.Adam(groups, lr=lr),
               "Adam (MedMNIST v2, the resolution study)")


def build_optimizer(groups: list[dict], lr: float, name: str = "adamw") -> torch.optim.Optimizer:
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return OPTIMIZERS.get(name)(groups, lr)


@dataclass
class WarmupCosine:
    """LR factor per optimiser step: linear warm-up, then cosine to 0.

    A callable object (not a lambda) so LambdaLR's state_dict stores it and a
    resumed run continues on the same curve.
    """

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class WarmupMultiStep:
    """LR factor per optimiser step: optional linear warm-up, then x ``gamma``
    at each milestone *epoch* (MedMNIST v2: x0.1 at epochs 50 and 75 of 100).

    Milestones are epochs; ``steps_per_epoch`` converts them, so the drop
    happens exactly when epoch ``m`` (0-based) starts.
    """

    warmup_steps: int
    steps_per_epoch: int
    milestones: tuple[int, ...]
    gamma: float

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        epoch = step // max(1, self.steps_per_epoch)
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)


@dataclass
class CosineEpoch:
    """Per-epoch cosine (see :func:`cosine_epoch_factor`), constant within an epoch."""

    steps_per_epoch: int
    epochs: int

    def __call__(self, step: int) -> float:
        return cosine_epoch_factor(step // max(1, self.steps_per_epoch), self.epochs)


@dataclass
class WarmupConstant:
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return 1.0


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule needs to know about the run, in optimiser steps."""

    warmup_steps: int
    steps_per_epoch: int
    epochs: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


ScheduleFactory = Callable[[ScheduleSpec], Callable[[int], float]]
SCHEDULES: Registry[ScheduleFactory] = Registry("LR schedule", ConfigError)
SCHEDULES.add("cosine", lambda s: WarmupCosine(s.warmup_steps, s.epochs * s.steps_per_epoch),
              "warm-up, then cosine to 0 per step (MedMNIST+)")
SCHEDULES.add("cosine-epoch", lambda s: CosineEpoch(s.steps_per_epoch, s.epochs),
              "cosine per epoch as timm's CosineLRScheduler stepped after each epoch (MedMNIST+ code)")
SCHEDULES.add("multistep", lambda s: WarmupMultiStep(s.warmup_steps, s.steps_per_epoch, s.milestones, s.gamma),
              "x gamma at milestone epochs (MedMNIST v2: x0.1 at 50 and 75)")
SCHEDULES.add("constant", lambda s: WarmupConstant(s.warmup_steps), "constant after warm-up")


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: ScheduleSpec, name: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(name)(spec))
