"""Each head's loss: the task's own rule, or the optional ordinal loss.

Binary, multi-class and ordinal heads train with cross-entropy and multi-label
heads with BCE-with-logits (:mod:`fmeval.training.losses`, the single-dataset
rule, class weights included). ``--ordinal-loss sord`` replaces cross-entropy on
ordinal datasets (RetinaMNIST's 5 grades) with SORD, soft ordinal labels (Diaz &
Marathe, CVPR 2019): the one-hot target becomes ``softmax(-(i - y)^2)`` over the
grades ``i``, so predicting a neighbouring grade costs less than a distant one.
The head keeps one output per grade and its scores stay a softmax, so every
metric reads them exactly as before. The reference (mm-PT) trains RetinaMNIST as
plain 5-class: SORD is off in the ``mm-pt`` protocol.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fmeval.data.info import ORDINAL
from fmeval.errors import ConfigError
from fmeval.registry import Registry
from fmeval.training.losses import LossFn, task_rule


def sord_targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Soft ordinal labels [N, C]: ``softmax_i(-(i - y)^2)`` (squared distance, as in SORD)."""
    grades = torch.arange(n_classes, device=y.device, dtype=torch.float32)
    return torch.softmax(-(grades[None, :] - y[:, None].float()) ** 2, dim=1)


def sord_loss(n_classes: int) -> LossFn:
    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -(sord_targets(y, n_classes) * F.log_softmax(z.float(), dim=1)).sum(dim=1).mean()

    return loss


OrdinalLoss = Callable[[int], LossFn]
ORDINAL_LOSSES: Registry[OrdinalLoss] = Registry("ordinal loss", ConfigError)
ORDINAL_LOSSES.add("sord", sord_loss, "soft ordinal labels softmax(-(i-y)^2), cross-entropy (Diaz & Marathe 2019)")


def head_loss(task: str, train_labels: np.ndarray, n_outputs: int, *, ordinal_loss: str | None,
              class_weights: str | None, pos_weight: float | None, device: torch.device) -> LossFn:
    """The loss of one dataset's head (weights, if any, from that dataset's training labels)."""
    if task == ORDINAL and ordinal_loss is not None:
        return ORDINAL_LOSSES.get(ordinal_loss)(n_outputs)
    return task_rule(task).loss_fn(train_labels, n_outputs, class_weights=class_weights,
                                   pos_weight=pos_weight, device=device)
