"""Train/val/test splits of a user dataset: given ones kept, missing ones drawn.

A split is drawn stratified (each class keeps its share in every split; for
multi-label data by iterative stratification, Sechidis et al. 2011), seeded,
and optionally by group (``--group-by patient_id``: one patient's images never
sit in two splits). The result is a list of indices per split whose SHA-256 is
recorded in every report, so two runs on the same data see the same split and
a reader can tell when they did not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from fmeval.data.info import SPLITS
from fmeval.errors import DataError

DEFAULT_RATIOS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class SplitPlan:
    """How missing splits are drawn (the given ones are kept as given)."""

    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    seed: int = 0
    group_by: str | None = None

    def __post_init__(self) -> None:
        r = self.ratios
        if len(r) != 3 or any(x < 0 for x in r) or not np.isclose(sum(r), 1.0, atol=1e-6) or r[0] <= 0:
            raise DataError(f"--split-ratios must be three non-negative train,val,test shares summing to 1 "
                            f"(train > 0), got {','.join(map(str, r))}.")


def split_digest(assignment: dict[str, np.ndarray]) -> str:
    """SHA-256 of the split's indices (canonical JSON: the file fmeval writes)."""
    return hashlib.sha256(split_json(assignment).encode()).hexdigest()


def split_json(assignment: dict[str, np.ndarray]) -> str:
    return json.dumps({s: [int(i) for i in assignment[s]] for s in SPLITS}, separators=(",", ":"))


def assign_splits(given: list[str | None], labels: np.ndarray, multilabel: bool, plan: SplitPlan,
                  groups: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Indices per split and a record of how they were made.

    ``given``: the split of each row as the data says (None: not given). Either
    every row has one, or none does. When val (or val and test) is missing, it is
    drawn from the rows of train (or from all rows) in the plan's proportions.
    """
    n = len(given)
    known = [g for g in given if g is not None]
    if known and len(known) != n:
        raise DataError(f"{n - len(known)} of {n} rows have no split while others do; give every row a split or none.")
    codes = np.array([SPLITS.index(g) if g is not None else -1 for g in given], dtype=np.int64)
    present = {s for s in SPLITS if (codes == SPLITS.index(s)).any()}
    record: dict = {"given": sorted(present, key=SPLITS.index)}
    if present == set(SPLITS):
        record["drawn"] = []
    elif present == {"train", "test"}:
        pool = np.flatnonzero(codes == 0)
        r = plan.ratios
        share = r[1] / (r[0] + r[1])
        sub = _draw(labels[pool], multilabel, (1 - share, share, 0.0), plan.seed, _sub(groups, pool))
        codes[pool] = sub
        record["drawn"] = ["val"]
    elif not present:
        codes = _draw(labels, multilabel, plan.ratios, plan.seed, groups)
        record["drawn"] = ["train", "val", "test"]
    else:
        raise DataError(f"the data gives the split(s) {', '.join(record['given'])}; fmeval draws val (from train) "
                        "when train and test are given, or all three when none is, not other combinations.")
    if record["drawn"]:
        record.update(ratios=list(plan.ratios), seed=plan.seed, group_by=plan.group_by,
                      method="iterative stratification" if multilabel else "stratified")
    out = {s: np.flatnonzero(codes == i) for i, s in enumerate(SPLITS)}
    for s, idx in out.items():
        if len(idx) == 0:
            raise DataError(f"the {s} split is empty after drawing (ratios {','.join(map(str, plan.ratios))}, "
                            f"{n} rows); every evaluation needs train, val and test samples.")
    record["sha256"] = split_digest(out)
    return out, record


def _sub(groups: list[str] | None, idx: np.ndarray) -> list[str] | None:
    return None if groups is None else [groups[i] for i in idx]


def _draw(labels: np.ndarray, multilabel: bool, ratios, seed: int, groups: list[str] | None) -> np.ndarray:
    """A split code (0 train, 1 val, 2 test) per row."""
    rng = np.random.default_rng(seed)
    if groups is None:
        unit_of = np.arange(len(labels))
        unit_labels = labels
    else:
        names, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        unit_labels = _group_labels(labels, unit_of, len(names), multilabel)
    if multilabel:
        unit_codes = _iterative(unit_labels, np.asarray(ratios, float), rng)
    else:
        unit_codes = _stratified(unit_labels[:, 0], ratios, rng)
    return unit_codes[unit_of]


def _group_labels(labels: np.ndarray, unit_of: np.ndarray, n_units: int, multilabel: bool) -> np.ndarray:
    """One label row per group: multi-label, any finding of its images; else its most common class."""
    if multilabel:
        out = np.zeros((n_units, labels.shape[1]), dtype=np.int64)
        np.maximum.at(out, unit_of, labels)
        return out
    n_cls = int(labels.max()) + 1 if len(labels) else 1
    counts = np.zeros((n_units, n_cls), dtype=np.int64)
    np.add.at(counts, (unit_of, labels[:, 0]), 1)
    return counts.argmax(axis=1)[:, None]


def _shares(n: int, ratios) -> np.ndarray:
    """Counts per split for n items: largest remainders, so they sum to n."""
    raw = np.asarray(ratios, float) * n
    base = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - base), kind="stable")[: n - base.sum()]:
        base[i] += 1
    return base


def _stratified(y: np.ndarray, ratios, rng: np.random.Generator) -> np.ndarray:
    codes = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        counts = _shares(len(idx), ratios)
        codes[idx] = np.repeat(np.arange(3), counts)
    return codes


def _iterative(y: np.ndarray, ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011) over 0/1 label rows.

    The rarest label is placed first, each of its rows into the split that still
    wants most of that label; rows without any label fill the splits last.
    """
    n = len(y)
    y = (y > 0).astype(np.int64)
    codes = np.full(n, -1, dtype=np.int64)
    want = np.outer(ratios, y.sum(axis=0)).astype(float)  # [3, L]
    want_total = ratios * n
    left = np.ones(n, dtype=bool)
    while left.any() and y[left].any():
        counts = y[left].sum(axis=0)
        label = int(np.where(counts > 0, counts, np.iinfo(np.int64).max).argmin())
        rows = np.flatnonzero(left & (y[:, label] == 1))
        for i in rng.permutation(rows):
            best = np.flatnonzero(want[:, label] == want[:, label].max())
            if len(best) > 1:
                best = best[want_total[best] == want_total[best].max()]
            s = int(rng.choice(best))
            codes[i], left[i] = s, False
            want[s] -= y[i]
            want_total[s] -= 1
    rest = rng.permutation(np.flatnonzero(left))
    for i in rest:
        s = int(np.argmax(want_total))
        codes[i] = s
        want_total[s] -= 1
    return codes
