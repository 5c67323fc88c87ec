"""Paired comparisons: "A beats B" only when the paired CI excludes 0 after a family-wise correction.

Two contenders are paired when they share dataset, size, test set, mode and
prompt style, and every run of both scored exactly the same test indices. A
contender's runs over training seeds are pooled: the bootstrap resamples the
seeds and the test images together
(:func:`fmeval.metrics.paired_difference_over_seeds`), so the interval holds
the seed-to-seed variance as well as the test-set noise, and both models are
evaluated on the same image resamples, so it measures their difference. The
p-values of all pairs of the study are one family, corrected with Holm's
step-down method (:func:`fmeval.metrics.holm`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Callable

import numpy as np

from fmeval.metrics import CORRECTION, higher_is_better, holm, paired_difference_over_seeds
from fmeval.report.fmt import csv_num, fmt, fmt_ci
from fmeval.studies.cells import Entry, ambiguous_variants, variant_label
from fmeval.studies.samples import RunScores
from fmeval.studies.tables import DIGITS, SHORT, Cell, Table


ALPHA = 0.05  # family-wise error rate of the study's verdicts


@dataclass
class Pair:
    dataset: str
    size: int
    limit: int
    mode: str
    style: str
    seeds: str  # the training seeds pooled, "a_seeds | b_seeds" when the two differ
    a: str  # the better of the two on the full test set (mean over its seeds)
    b: str
    metric: str
    a_value: float
    b_value: float
    diff: float  # mean metric(a) - mean metric(b)
    ci_low: float
    ci_high: float
    p_boot: float
    p_adj: float  # p_boot after the correction over the study's family of comparisons
    correction: str
    n_boot: int
    n_test: int
    a_run: str  # run ids, ";"-joined, one per seed
    b_run: str

    @property
    def significant(self) -> bool:
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high) and math.isfinite(self.p_adj)):
            return False
        excludes = self.ci_low > 0 if higher_is_better(self.metric) else self.ci_high < 0
        return excludes and self.p_adj < ALPHA

    @property
    def verdict(self) -> str:
        return f"{self.a} beats {self.b}" if self.significant else "no clear difference"


def _candidates(entries: list[Entry]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """(group, mode, style) -> contender label -> its run rows (one per seed)."""
    ambiguous = ambiguous_variants(entries)
    out: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for e in entries:
        variant = variant_label(e.key, ambiguous)
        label = e.key.model + (f" [{variant}]" if variant else "")
        cell = out.setdefault((e.group, e.key.mode, e.key.style), {})
        cell.setdefault(label, []).extend(sorted(e.rows, key=lambda r: int(r["seed"])))
    return out


def _seeds(rows: list[dict[str, Any]]) -> str:
    return ",".join(str(r["seed"]) for r in rows)


def _load(title: str, mode: str, label: str, rows: list[dict[str, Any]],
          scores_of: Callable[[dict[str, Any]], RunScores], notes: list[str]) -> list[RunScores] | None:
    """Every seed's scores of one contender on the same test indices, or None (with a note)."""
    from fmeval.errors import FmevalError

    try:
        loaded = [scores_of(r) for r in rows]
    except FmevalError as exc:
        notes.append(f"{title}, {mode}: {label} left out of paired comparisons: {exc}")
        return None
    if any(not np.array_equal(x.indices, loaded[0].indices) for x in loaded):
        notes.append(f"{title}, {mode}: {label}'s seeds scored different test indices; not paired.")
        return None
    return loaded


def compare_pairs(entries: list[Entry], scores_of: Callable[[dict[str, Any]], RunScores], *,
                  metric: str = "auc", n_boot: int = 1000) -> tuple[list[Pair], list[str]]:
    """Every pair of contenders of every (group, mode, style), pooled over their training seeds,
    with Holm-adjusted p-values over the whole family; notes say what was skipped and why.

    Each pair's interval resamples seeds and test images together
    (:func:`fmeval.metrics.paired_difference_over_seeds`; the image stream is seeded by the
    smallest seed of the cell, so a one-seed pair is the plain paired bootstrap of that seed).
    ``scores_of(row)`` loads a run's scores (and raises a ``FmevalError`` when it cannot).
    """
    pairs, notes = [], []
    better = higher_is_better(metric)
    for (group, mode, style), contenders in sorted(_candidates(entries).items(), key=lambda kv: kv[0]):
        if len(contenders) < 2:
            continue
        loaded = []
        for label in sorted(contenders):
            got = _load(group.title, mode, label, contenders[label], scores_of, notes)
            if got is not None:
                loaded.append((label, contenders[label], got))
        for (la, ra, sa), (lb, rb, sb) in combinations(loaded, 2):
            if not np.array_equal(sa[0].indices, sb[0].indices):
                notes.append(f"{group.title}, {mode}: {la} and {lb} scored different test indices; not paired.")
                continue
            va = float(np.mean([float(r.get(metric, math.nan)) for r in ra]))
            vb = float(np.mean([float(r.get(metric, math.nan)) for r in rb]))
            if (vb > va) if better else (vb < va):  # A is the better one, so a CI excluding 0 means "A beats B"
                (la, ra, sa), (lb, rb, sb), (va, vb) = (lb, rb, sb), (la, ra, sa), (vb, va)
            stream = min(int(r["seed"]) for r in ra + rb)
            d = paired_difference_over_seeds(
                str(ra[0]["task"]), sa[0].labels, [x.scores for x in sa], [x.scores for x in sb], metric,
                n_boot=n_boot, seed=stream, n_classes=sa[0].scores.shape[1] if sa[0].labels.ndim == 1 else None)
            seeds = _seeds(ra) if _seeds(ra) == _seeds(rb) else f"{_seeds(ra)} | {_seeds(rb)}"
            pairs.append(Pair(group.dataset, group.size, group.limit, mode, style, seeds, la, lb, metric, va, vb,
                              d["diff"], d["ci_low"], d["ci_high"], d["p_boot"], math.nan, CORRECTION,
                              int(d["n_boot"]), int(sa[0].indices.size), ";".join(str(r["run_id"]) for r in ra),
                              ";".join(str(r["run_id"]) for r in rb)))
    for p, adj in zip(pairs, holm([p.p_boot for p in pairs])):
        p.p_adj = adj
    return pairs, notes


def paired_table(pairs: list[Pair], metric: str) -> Table:
    name = SHORT.get(metric, metric)
    show_style = any(p.style for p in pairs)
    header = ["dataset", "size", "mode"] + (["style"] if show_style else []) + [
        "seeds", "A", "B", f"Δ{name} (A − B)", "95% CI", "p_boot", f"p ({CORRECTION})", "n_test", "verdict"]
    rows = []
    for p in pairs:
        cells = [Cell(p.dataset), Cell(str(p.size) + (f" (limit {p.limit})" if p.limit else ""), p.size), Cell(p.mode)]
        cells += [Cell(p.style or "–")] if show_style else []
        cells += [Cell(p.seeds), Cell(p.a), Cell(p.b), Cell.num(p.diff),
                  Cell(fmt_ci(p.ci_low, p.ci_high, DIGITS), p.ci_low if math.isfinite(p.ci_low) else None),
                  Cell(fmt(p.p_boot, 3), p.p_boot if math.isfinite(p.p_boot) else None),
                  Cell(fmt(p.p_adj, 3), p.p_adj if math.isfinite(p.p_adj) else None), Cell(str(p.n_test), p.n_test),
                  Cell(p.verdict)]
        rows.append(cells)
    m = sum(math.isfinite(p.p_boot) for p in pairs)
    notes = [f"Paired bootstrap ({pairs[0].n_boot if pairs else 0} resamples) of {name}(A) − {name}(B), each "
             "the mean over its training seeds, on the same test images: every resample draws the test images "
             "and, for each model independently, its seeds with replacement, so the 95% CI holds the seed-to-seed "
             "variance too. A is the better of the two on the full test set. p_boot = twice the share of "
             f"resamples where the difference changes sign; p ({CORRECTION}) = p_boot after {CORRECTION}'s "
             f"step-down correction over the {m} comparisons of this study (family-wise error {ALPHA:g}). "
             f"\"A beats B\" only when the 95% CI excludes 0 and p ({CORRECTION}) < {ALPHA:g}."]
    return Table("paired", f"Paired comparisons ({name}, {CORRECTION}-corrected)", header, rows, notes)


def paired_csv(pairs: list[Pair]) -> str:
    cols = [*Pair.__dataclass_fields__, "significant", "verdict"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for p in pairs:
        d = {**asdict(p), "significant": p.significant, "verdict": p.verdict}
        w.writerow([csv_num(d[c]) if isinstance(d[c], float) else d[c] for c in cols])
    return buf.getvalue()


def paired_markdown(name: str, pairs: list[Pair], notes: list[str], metric: str) -> str:
    out = [f"# Study {name}: paired comparisons", "", paired_table(pairs, metric).to_markdown(2)]
    if notes:
        out += ["## Not compared", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)

