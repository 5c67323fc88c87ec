"""The multi-domain classifier: one shared encoder, one linear head per dataset.

Label spaces are not unified (mm-PT): a binary dataset keeps its own two-output
head, RetinaMNIST its five, a multi-label dataset one output per finding. The
model trains and predicts one dataset at a time: :meth:`MultiHeadClassifier.use`
selects the head (and, with per-domain BatchNorm, that dataset's running
statistics), and ``forward(x)`` is then an ordinary classifier, so the one
inference helper (:func:`fmeval.features.batched_inference`) and the fine-tuning
methods (LoRA, full; their ``save``/``load``/``state_keys``) work on it unchanged:
the heads live under ``head.<key>``, exactly where a single-dataset classifier
keeps its one head.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from fmeval.adapters.base import Adapter
from fmeval.errors import ConfigError

_NOT_KEY = re.compile(r"[^A-Za-z0-9_]")


def head_key(flag: str) -> str:
    """The head's name for a dataset (a ModuleDict key: no dots)."""
    return _NOT_KEY.sub("_", flag)


class DomainBatchNorm:
    """Per-dataset running statistics for every BatchNorm layer of a module (``--domain-bn``).

    The affine weights stay shared (they are trained parameters of the backbone);
    only the running mean/variance and batch counter are kept per dataset, as extra
    buffers ``running_mean__<key>`` ... of each BatchNorm layer (so they are saved,
    checkpointed and restored with the model). :meth:`use` points the layer's own
    ``running_mean``/``running_var``/``num_batches_tracked`` at one dataset's buffers
    (the same tensors, so BatchNorm's in-place updates land in that dataset's slot);
    it is called before every forward pass, which also re-binds them after the model
    moved to another device.
    """

    STATS = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, module: nn.Module, keys: list[str]) -> None:
        self.layers = [m for m in module.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.keys = list(keys)
        for m in self.layers:
            for key in self.keys:
                for stat in self.STATS:
                    m.register_buffer(f"{stat}__{key}", getattr(m, stat).detach().clone())

    def use(self, key: str) -> None:
        for m in self.layers:
            for stat in self.STATS:
                m._buffers[stat] = m._buffers[f"{stat}__{key}"]


class MultiHeadClassifier(nn.Module):
    """An adapter's image features followed by the active dataset's linear head."""

    def __init__(self, adapter: Adapter, outputs: dict[str, int], *, domain_bn: bool = False) -> None:
        super().__init__()
        if not outputs:
            raise ConfigError("a multi-domain model needs at least one dataset.")
        self.adapter = adapter
        self.head = nn.ModuleDict({key: nn.Linear(adapter.feature_dim, n) for key, n in outputs.items()})
        self.active = next(iter(outputs))
        self.domain_bn = DomainBatchNorm(adapter.backbone, list(outputs)) if domain_bn else None
        if domain_bn and not self.domain_bn.layers:
            raise ConfigError(f"--domain-bn: {adapter.name} has no BatchNorm layer (it applies to CNNs "
                              "such as resnet18).")

    @property
    def backbone(self) -> nn.Module:
        return self.adapter.backbone

    def use(self, key: str) -> "MultiHeadClassifier":
        """Make ``key``'s head (and BatchNorm statistics) the active ones."""
        if key not in self.head:
            raise KeyError(key)
        self.active = key
        if self.domain_bn is not None:
            self.domain_bn.use(key)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[self.active](self.adapter.encode_image(x))
