"""Seeded few-shot episodes: which K training images per class a run may use.

An episode is a pure function of ``(labels, task, K, draw, seed)``: no global
random state, no dependence on the model, the mode or the order in which
episodes are requested. Every model and every mode (kNN, linear probe, LoRA,
full fine-tuning) that uses the same seed therefore trains on the same K-shot
images, which is what makes a few-shot curve a comparison of models rather
than of samples.

Sampling rule
-------------
Each draw gives every training image a random key (``numpy`` PCG64 seeded by
``SeedSequence([seed, draw, purpose])``); the key does not depend on K.

* **Single-label** (binary, multi-class, ordinal): the K images of each class
  with the smallest keys. A class with fewer than K images contributes all of
  them and is listed in :attr:`Episode.short`. Because the keys do not depend
  on K, episodes are *nested*: the 2-shot episode of a draw contains its
  1-shot episode, so a curve over K adds images instead of resampling them.
* **Multi-label** (ChestMNIST, :data:`MULTILABEL_RULE`): labels are visited
  from the rarest (fewest positives in the pool) to the most common; for each
  label, the unselected positives with the smallest keys are added until the
  episode holds K images positive for that label (images picked for a rarer
  label count, so co-occurring findings do not inflate the episode). Then K
  images with no finding at all are added. Every label thus has at least K
  positives (all of them when it has fewer than K, recorded in ``short``),
  and the all-negative images keep the "no finding" case represented, as it
  is in the test set. Labels can end up with more than K positives through
  co-occurrence; :attr:`Episode.counts` records the real numbers.

The validation draw (:func:`sample_validation`) uses the same rule on the
validation labels with a different ``purpose`` word, so it is independent of
the training draw with the same seed and draw index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fmeval.data.info import is_multilabel
from fmeval.errors import ConfigError, DataError

SCHEME_VERSION = 1  # bump when the sampling rule changes: episode indices change
MULTILABEL_RULE = "rarest-label-first: >= K positives per label (greedy, shared images count) + K all-negative"
SINGLE_LABEL_RULE = "K per class (all of a class with fewer than K)"
NO_FINDING = "none"  # key of the all-negative count in multi-label episodes

# Domain separation: the train and validation streams of one (seed, draw) differ.
_PURPOSE = {"train": 0x7E1A, "val": 0x5A11}


@dataclass(frozen=True, eq=False)  # holds arrays: compare .digest / arrays explicitly
class Episode:
    """One K-shot draw, with what a report needs to show and reproduce it.

    ``counts``: images per class (single-label) or positives per label plus
    ``"none"`` for all-negative images (multi-label), keyed by class name.
    ``short``: classes/labels that had fewer than K images to give.
    """

    split: str
    shots: int
    draw: int
    seed: int
    task: str
    indices: np.ndarray = field(repr=False)
    counts: dict[str, int]
    short: tuple[str, ...]
    rule: str
    scheme: int = SCHEME_VERSION

    @property
    def size(self) -> int:
        return int(self.indices.size)

    @property
    def digest(self) -> str:
        return indices_digest(self.indices)

    def to_dict(self, include_indices: bool = True) -> dict[str, Any]:
        """JSON-ready record; indices may be dropped for long lists (the digest stays)."""
        out: dict[str, Any] = {
            "split": self.split,
            "shots": self.shots,
            "draw": self.draw,
            "seed": self.seed,
            "n": self.size,
            "sha256": self.digest,
            "counts": dict(self.counts),
            "short": list(self.short),
            "rule": self.rule,
            "scheme": self.scheme,
        }
        if include_indices:
            out["indices"] = self.indices.tolist()
        return out


def indices_digest(indices: np.ndarray) -> str:
    """SHA-256 of the sorted indices as little-endian int64 (platform independent)."""
    arr = np.ascontiguousarray(np.sort(np.asarray(indices)).astype("<i8"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------
def _check_args(shots: int, draw: int, seed: int) -> None:
    for name, value, low in (("shots", shots, 1), ("draw", draw, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"--{name} must be an integer >= {low}, got {value!r}.")


def _keys(n: int, draw: int, seed: int, purpose: str) -> np.ndarray:
    """One uniform key per image; a function of (seed, draw, purpose) only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(draw), _PURPOSE[purpose]]))
    return rng.random(n)


def _as_label_matrix(labels: np.ndarray, task: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 0 or y.size == 0:
        raise DataError("few-shot sampling needs a non-empty label array.")
    if is_multilabel(task):
        if y.ndim != 2:
            raise DataError(f"multi-label labels must be [N, n_labels], got shape {tuple(y.shape)}.")
        if not np.isin(y, (0, 1)).all():
            raise DataError("multi-label labels must be 0/1.")
        return y.astype(bool)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"single-label labels must be [N] or [N, 1], got shape {tuple(y.shape)}.")
    if y.dtype.kind not in "iub" or (y.size and y.min() < 0):
        raise DataError("single-label labels must be non-negative integers.")
    return y.astype(np.int64)


def _single_label(y: np.ndarray, shots: int, keys: np.ndarray) -> np.ndarray:
    order = np.lexsort((keys, y))  # grouped by class, smallest key first within a class
    sorted_y = y[order]
    starts = np.searchsorted(sorted_y, sorted_y, side="left")
    rank = np.arange(y.size) - starts  # position within its class
    return np.sort(order[rank < shots])


def _multi_label(y: np.ndarray, shots: int, keys: np.ndarray) -> np.ndarray:
    n, n_labels = y.shape
    by_key = np.argsort(keys, kind="stable")
    chosen = np.zeros(n, dtype=bool)
    positives = y.sum(axis=0)
    for label in np.lexsort((np.arange(n_labels), positives)):  # rarest label first (loop over labels, not images)
        need = shots - int((chosen & y[:, label]).sum())
        if need <= 0:
            continue
        candidates = by_key[y[by_key, label] & ~chosen[by_key]]
        chosen[candidates[:need]] = True
    negatives = by_key[~y[by_key].any(axis=1) & ~chosen[by_key]]
    chosen[negatives[:shots]] = True
    return np.flatnonzero(chosen)


def _sample(labels: np.ndarray, task: str, shots: int, draw: int, seed: int, purpose: str) -> np.ndarray:
    _check_args(shots, draw, seed)
    y = _as_label_matrix(labels, task)
    keys = _keys(len(y), draw, seed, purpose)
    if is_multilabel(task):
        return _multi_label(y, int(shots), keys)
    return _single_label(y, int(shots), keys)


def sample_episode(labels: np.ndarray, task: str, shots: int, draw: int, seed: int) -> np.ndarray:
    """Sorted training indices of the K-shot episode ``draw`` for ``seed`` (see module doc)."""
    return _sample(labels, task, shots, draw, seed, "train")


def sample_validation(labels: np.ndarray, task: str, shots: int, draw: int, seed: int) -> np.ndarray:
    """Sorted validation indices of a K-shot validation draw (independent of the training draw).

    Few-shot model selection must not peek at the full validation set: this is
    the labelled budget a practitioner with K labels per class would also have.
    """
    return _sample(labels, task, shots, draw, seed, "val")


# ---------------------------------------------------------------------------
# Episode records
# ---------------------------------------------------------------------------
def episode_counts(
    labels: np.ndarray, task: str, indices: np.ndarray, class_names: Sequence[str]
) -> dict[str, int]:
    """Images per class (single-label) or positives per label + ``"none"`` (multi-label)."""
    y = _as_label_matrix(labels, task)[np.asarray(indices, dtype=np.int64)]
    if is_multilabel(task):
        counts = {name: int(c) for name, c in zip(class_names, y.sum(axis=0))}
        counts[NO_FINDING] = int((~y.any(axis=1)).sum())
        return counts
    per_class = np.bincount(y, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, per_class)}


def check_shots_fit(labels: np.ndarray, task: str, shots: int, class_names: Sequence[str]) -> None:
    """Refuse a K that no class reaches: the "episode" would be the whole split, unbalanced,
    yet labelled K-shot. (A K only some classes fall short of is allowed: those give all they
    have, and the run says so.) Called before any model work."""
    full = episode_counts(labels, task, np.arange(len(labels)), class_names)
    if class_names and all(full[name] < shots for name in class_names):
        raise ConfigError(f"--shots {shots} is more than any class has in the training split "
                          f"({', '.join(f'{k} {v}' for k, v in full.items())}); every class would be used "
                          f"whole. Use K <= {max(full[name] for name in class_names)}, "
                          "or drop --shots for a full-data run.")


def make_episode(
    labels: np.ndarray,
    task: str,
    shots: int,
    draw: int,
    seed: int,
    class_names: Sequence[str],
    split: str = "train",
) -> Episode:
    """Sample an episode and record its counts and the classes that fell short of K."""
    if split not in _PURPOSE:
        raise ConfigError(f"episodes are drawn from 'train' or 'val', not {split!r}.")
    indices = _sample(labels, task, shots, draw, seed, split)
    counts = episode_counts(labels, task, indices, class_names)
    full = episode_counts(labels, task, np.arange(len(labels)), class_names)
    short = tuple(name for name in class_names if full[name] < shots)
    rule = MULTILABEL_RULE if is_multilabel(task) else SINGLE_LABEL_RULE
    return Episode(split, int(shots), int(draw), int(seed), task, indices, counts, short, rule)


def make_episodes(
    labels: np.ndarray,
    task: str,
    shots: Sequence[int],
    draws: int,
    seed: int,
    class_names: Sequence[str],
    split: str = "train",
) -> list[Episode]:
    """All (K, draw) episodes of a few-shot sweep, K-major (K1 d0, K1 d1, ..., K2 d0, ...)."""
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ConfigError(f"--draws must be an integer >= 1, got {draws!r}.")
    if len(set(shots)) != len(shots):
        raise ConfigError(f"--shots lists a value twice: {list(shots)}.")
    return [
        make_episode(labels, task, k, d, seed, class_names, split)
        for k in sorted(shots)
        for d in range(int(draws))
    ]


def shortfall_warnings(episodes: Sequence[Episode]) -> list[str]:
    """One line per K where some class had fewer than K images (the same for every draw)."""
    out, seen = [], set()
    for ep in episodes:
        if ep.short and (ep.split, ep.shots) not in seen:
            seen.add((ep.split, ep.shots))
            out.append(
                f"{ep.split} {ep.shots}-shot episodes: fewer than {ep.shots} images for "
                f"{', '.join(ep.short)}; all of them were used"
            )
    return out
