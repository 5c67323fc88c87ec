"""The task types of MedMNIST-style classification: one home for their names.

MedMNIST's ``INFO[flag]["task"]`` strings, used as-is so a dataset's metadata,
the metrics, the losses and the reports agree without translation.
"""

from __future__ import annotations

BINARY = "binary-class"
MULTICLASS = "multi-class"
MULTILABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (BINARY, MULTICLASS, MULTILABEL, ORDINAL)


def is_multilabel(task: str) -> bool:
    return task == MULTILABEL


def targets(task: str, labels):
    """Stored labels ``[N, W]`` as training targets: ``[N]`` class indices, or ``[N, L]``
    rows for multi-label. (The metrics take stored labels as they are.)"""
    return labels if is_multilabel(task) else labels[:, 0]
