"""Loss and output rule per task type, looked up in a registry.

Binary, multi-class and ordinal MedMNIST tasks train a softmax head with
cross-entropy (binary keeps two columns, so scores have the shape the metrics
and ``medmnist.Evaluator`` expect: positive = last column). Multi-label
(ChestMNIST) trains one sigmoid per finding with BCE-with-logits, where a
positive-class weight is the usual remedy for labels that are positive in
0.2-18 % of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fmeval.data.info import BINARY, MULTICLASS, MULTILABEL, ORDINAL
from fmeval.errors import ConfigError
from fmeval.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaskRule:
    """How a task maps logits to a loss and to the scores metrics take."""

    name: str
    multilabel: bool

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        """Stored [N, W] int labels -> loss targets (class index or float multi-hot)."""
        if self.multilabel:
            return torch.as_tensor(labels, dtype=torch.float32)
        return torch.as_tensor(labels[:, 0], dtype=torch.long)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def loss_fn(
        self,
        labels: np.ndarray,
        n_outputs: int,
        *,
        class_weights: str | None,
        pos_weight: float | None,
        device: torch.device,
    ) -> LossFn:
        """The training loss; weights are computed from the *training* labels."""
        weights = WEIGHTINGS.get(class_weights or "none")(labels, n_outputs, self.multilabel)
        if self.multilabel:
            pw = weights
            if pos_weight is not None:
                pw = torch.full((n_outputs,), float(pos_weight))
            pw = pw.to(device) if pw is not None else None
            return lambda z, y: F.binary_cross_entropy_with_logits(z.float(), y, pos_weight=pw)
        if pos_weight is not None:
            if n_outputs != 2:
                raise ConfigError(
                    "--pos-weight applies to binary and multi-label tasks; use --class-weights "
                    "balanced for a multi-class task."
                )
            base = weights if weights is not None else torch.ones(2)
            weights = base * torch.tensor([1.0, float(pos_weight)])
        w = weights.to(device) if weights is not None else None
        return lambda z, y: F.cross_entropy(z.float(), y, weight=w)


TASK_RULES: dict[str, TaskRule] = {
    BINARY: TaskRule("ce", multilabel=False),
    MULTICLASS: TaskRule("ce", multilabel=False),
    ORDINAL: TaskRule("ce", multilabel=False),  # as in MedMNIST: ordinal grades as classes
    MULTILABEL: TaskRule("bce", multilabel=True),
}


def task_rule(task: str) -> TaskRule:
    try:
        return TASK_RULES[task]
    except KeyError:
        raise ConfigError(f"fine-tuning does not support task {task!r}.") from None


Weighting = Callable[[np.ndarray, int, bool], "torch.Tensor | None"]
WEIGHTINGS: Registry[Weighting] = Registry("class weighting", ConfigError)


@WEIGHTINGS.register("none", "unweighted loss")
def _no_weights(labels: np.ndarray, n_outputs: int, multilabel: bool) -> torch.Tensor | None:
    return None


@WEIGHTINGS.register("balanced", "inverse class frequency (multi-label: negatives/positives per label)")
def _balanced(labels: np.ndarray, n_outputs: int, multilabel: bool) -> torch.Tensor:
    if multilabel:
        pos = labels.sum(axis=0).astype(np.float64)
        neg = len(labels) - pos
        return torch.as_tensor(neg / np.maximum(pos, 1.0), dtype=torch.float32)
    counts = np.bincount(labels[:, 0], minlength=n_outputs).astype(np.float64)
    w = len(labels) / (n_outputs * np.maximum(counts, 1.0))
    return torch.as_tensor(w, dtype=torch.float32)
