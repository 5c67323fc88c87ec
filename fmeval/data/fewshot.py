"""Few-shot runs: the K-shot training episode, and the validation data selection may use.

The plan (which rows train, which select) is data; the pipeline applies it to features
or images (:func:`fmeval.pipeline.apply_fewshot`).

When ``cfg.fewshot.shots`` is set, every training mode (kNN, linear probe,
fine-tuning) trains on the episode :func:`fmeval.data.episodes.make_episode`
draws from the run's training split: a function of (labels, K, draw, seed)
only, so every model and every mode with the same seed trains on the same
images. Frozen features are loaded from the cache for the whole split and
*subset in memory* (an episode never causes an extraction).

Choosing hyper-parameters on the full validation split would give a K-shot
model thousands of labels it is not supposed to have. ``fewshot.selection``
says what selection may look at:

* ``fixed`` (default): nothing. No validation data is loaded at all; kNN uses
  the first ``--k`` (clipped to the episode size), the linear probe trains
  one head (the first ``--lr`` and ``--wd``) for all epochs and keeps the
  last, fine-tuning keeps its last epoch. No early stopping.
* ``kshot-val``: a K-shot validation draw
  (:func:`fmeval.data.episodes.sample_validation`, a stream independent of
  the training draw) is the validation set for every choice.
* ``full-val``: the full validation split, as a full-data run uses it; the
  user asks for it explicitly.

The report records the rule, the episode (shots, draw, seed, counts, digest
and the training indices in the original split) and the validation draw.
The majority baseline stays the full training split's: the same reference
line for every K.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from fmeval.config import RunConfig
from fmeval.data.episodes import Episode, check_shots_fit, make_episode, shortfall_warnings

#: Modes that train on an episode (a study's ``shots`` axis applies to these).
FEWSHOT_MODES = ("knn", "linprobe", "finetune-lora", "finetune-full")

SELECTION_TEXT = {
    "fixed": "fixed hyper-parameters, last epoch (no validation data used)",
    "kshot-val": "K-shot validation draw",
    "full-val": "full validation split",
}


@dataclass(frozen=True, eq=False)
class FewShotPlan:
    """Positions to keep in a run's train (and val) arrays, and the record for its report.

    ``val``: positions in the run's validation arrays (a K-shot draw), or None
    to keep them all; ``use_val`` is False under ``fixed`` (no validation set).
    """

    train: np.ndarray
    val: np.ndarray | None
    use_val: bool
    record: dict[str, Any]
    warnings: list[str]


def is_fewshot(cfg: RunConfig) -> bool:
    return cfg.fewshot.shots is not None


def uses_validation(cfg: RunConfig) -> bool:
    """False only for a few-shot run with fixed hyper-parameters: it never reads validation data."""
    return not is_fewshot(cfg) or cfg.fewshot.selection != "fixed"


def training_splits(cfg: RunConfig) -> tuple[str, ...]:
    return ("train", "val", "test") if uses_validation(cfg) else ("train", "test")


def _in_split(ep: Episode, ids: np.ndarray | None) -> Episode:
    """The episode with its indices in the original split (a ``--limit`` run draws from its subset)."""
    return ep if ids is None else replace(ep, indices=np.asarray(ids)[ep.indices])


def plan_fewshot(cfg: RunConfig, task: str, class_names: Sequence[str], train_labels: np.ndarray,
                 val_labels: np.ndarray | None, train_ids: np.ndarray | None = None,
                 val_ids: np.ndarray | None = None) -> FewShotPlan | None:
    """The episode of ``cfg`` (None when the run is not few-shot).

    ``*_ids``: the split indices of the run's rows (``--limit`` subsets), so
    the recorded indices always refer to the original split.
    """
    fs = cfg.fewshot
    if fs.shots is None:
        return None
    check_shots_fit(train_labels, task, fs.shots, class_names)
    ep = make_episode(train_labels, task, fs.shots, fs.draw, cfg.seed, class_names, "train")
    val_ep = None
    if fs.selection == "kshot-val":
        if val_labels is None:
            raise ValueError("kshot-val selection needs the validation labels")  # a caller bug
        val_ep = make_episode(val_labels, task, fs.shots, fs.draw, cfg.seed, class_names, "val")
    n_val = None if val_labels is None else len(val_labels)
    validation = {"fixed": 0, "kshot-val": None if val_ep is None else val_ep.size, "full-val": n_val}[fs.selection]
    record = {
        "shots": fs.shots,
        "draw": fs.draw,
        "seed": cfg.seed,
        "selection": fs.selection,
        "selection_rule": SELECTION_TEXT[fs.selection],
        "n_train": ep.size,
        "n_val_used": validation,
        "episode": _in_split(ep, train_ids).to_dict(include_indices=True),
        "val_episode": None if val_ep is None else _in_split(val_ep, val_ids).to_dict(include_indices=True),
    }
    eps = [ep] + ([val_ep] if val_ep is not None else [])
    return FewShotPlan(ep.indices, None if val_ep is None else val_ep.indices,
                       fs.selection != "fixed", record, shortfall_warnings(eps))


def take_indices(ids: np.ndarray | None, n: int, positions: np.ndarray) -> np.ndarray:
    """Split indices of the rows kept (``ids`` None: the rows are the split itself)."""
    base = np.arange(n) if ids is None else np.asarray(ids)
    return base[positions]
