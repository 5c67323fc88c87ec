"""Which dataset each step of a multi-domain epoch trains on, and the per-dataset loss weights.

The reference (mm-PT, after MedIMeta) keeps one shuffled loader per dataset and,
at every step, draws the dataset with probability ``remaining_d / remaining_total``
(its batches not yet used this epoch over all batches not yet used), so an epoch
uses every batch of every dataset exactly once and small datasets are spread over
the whole epoch instead of coming first or last. :func:`domain_schedule` draws the
epoch's sequence exactly that way, as a pure function of (seed, epoch), so a
resumed run replays the same order without saving any RNG state.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from fmeval.errors import ConfigError
from fmeval.registry import Registry


def batch_counts(n: int, batch_size: int, cap: int | None = None) -> tuple[int, bool]:
    """(batches per epoch, whether the last batch joins the one before) for ``n`` samples.

    Every sample is used (no ``drop_last``); a last batch of one sample joins
    the batch before it, as in the single-dataset loop (BatchNorm cannot train
    on one sample). ``cap`` (``--max-steps-per-epoch``): at most this many batches of
    each dataset per epoch (quick looks; recorded as a deviation).
    """
    nb = math.ceil(n / batch_size)
    merge = n > 1 and n % batch_size == 1
    if merge:
        nb -= 1
    if cap:
        if nb > cap:
            return cap, False
    return nb, merge


def domain_schedule(seed: int, epoch: int, n_batches: Sequence[int]) -> np.ndarray:
    """The dataset index of every step of one epoch: ``sum(n_batches)`` draws, each with
    probability proportional to that dataset's remaining batches.

    (The sequence is a uniformly random arrangement of the multiset {d repeated
    n_batches[d] times}; drawn step by step here so the code reads as the reference's rule.)
    """
    counts = np.asarray(n_batches, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("n_batches must be non-negative counts, one per dataset")
    total = int(counts.sum())
    rng = np.random.default_rng([seed, epoch, 0x6D6D7074])  # "mmpt": its own stream
    u = rng.random(total)
    remaining = counts.astype(np.float64)
    out = np.empty(total, dtype=np.int64)
    for t in range(total):
        cum = np.cumsum(remaining)
        d = int(np.searchsorted(cum, u[t] * cum[-1], side="right"))
        out[t] = d
        remaining[d] -= 1
    return out


def domain_order(seed: int, epoch: int, domain: int, n: int) -> np.ndarray:
    """The shuffled sample order of one dataset in one epoch (its own loader's shuffle)."""
    return np.random.default_rng([seed, epoch, 1 + domain]).permutation(n)


def batch_rows(order: np.ndarray, k: int, batch_size: int, n_batches: int, merge_last: bool) -> np.ndarray:
    """Rows of the ``k``-th batch of a dataset (the merged last batch takes the remainder)."""
    if merge_last and k == n_batches - 1:
        return order[k * batch_size:]
    return order[k * batch_size:(k + 1) * batch_size]


def size_weights(n_batches: Sequence[int]) -> np.ndarray:
    """``--domain-weights size``: ``n_batches(smallest) / n_batches(d)`` per dataset.

    The reference computes them separately from the train and from the
    validation loaders, and multiplies each batch's loss by its dataset's
    weight; the weighted validation loss is what early stopping watches.
    """
    nb = np.asarray(n_batches, dtype=np.float64)
    if nb.size == 0 or (nb < 1).any():
        raise ValueError("every dataset needs at least one batch")
    return nb.min() / nb


DOMAIN_WEIGHTINGS: Registry[Callable[[Sequence[int]], np.ndarray]] = Registry("domain loss weighting", ConfigError)
DOMAIN_WEIGHTINGS.add("none", lambda n_batches: np.ones(len(n_batches)), "every dataset's loss x 1 (mm-PT)")
DOMAIN_WEIGHTINGS.add("size", size_weights, "n_batches(smallest) / n_batches(d) (mm-PT 'weighted')")


def domain_weights(name: str | None, n_batches: Sequence[int]) -> np.ndarray:
    """The loss weight of each dataset under ``--domain-weights`` (None: unweighted)."""
    return DOMAIN_WEIGHTINGS.get(name or "none")(n_batches)
