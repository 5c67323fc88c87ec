"""Paired comparisons: "A beats B" only with a paired bootstrap CI that excludes 0.

Two runs are paired when they share dataset, size, test set, mode, prompt
style and seed, and scored exactly the same test indices. Both are evaluated
on the same bootstrap resamples (:func:`fmeval.metrics.paired_difference`), so
the interval measures the difference between the models rather than the
noise of the test set either would show alone.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Callable

import numpy as np

from fmeval.metrics import higher_is_better, paired_difference
from fmeval.report.fmt import csv_num, fmt, fmt_ci
from fmeval.studies.cells import Entry, ambiguous_variants, variant_label
from fmeval.studies.samples import RunScores
from fmeval.studies.tables import DIGITS, SHORT, Cell, Table


@dataclass
class Pair:
    dataset: str
    size: int
    limit: int
    mode: str
    style: str
    seed: int
    a: str  # the better of the two on the full test set
    b: str
    metric: str
    a_value: float
    b_value: float
    diff: float  # metric(a) - metric(b)
    ci_low: float
    ci_high: float
    p_boot: float
    n_boot: int
    n_test: int
    a_run: str
    b_run: str

    @property
    def significant(self) -> bool:
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            return False
        return self.ci_low > 0 if higher_is_better(self.metric) else self.ci_high < 0

    @property
    def verdict(self) -> str:
        return f"{self.a} beats {self.b}" if self.significant else "no clear difference (CI includes 0)"


def _candidates(entries: list[Entry]) -> dict[tuple, list[tuple[str, dict[str, Any]]]]:
    """(group, mode, style, seed) -> [(contender label, run row)]."""
    ambiguous = ambiguous_variants(entries)
    out: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
    for e in entries:
        variant = variant_label(e.key, ambiguous)
        label = e.key.model + (f" [{variant}]" if variant else "")
        for row in e.rows:
            out.setdefault((e.group, e.key.mode, e.key.style, int(row["seed"])), []).append((label, row))
    return out


def compare_pairs(entries: list[Entry], scores_of: Callable[[dict[str, Any]], RunScores], *,
                  metric: str = "auc", n_boot: int = 1000) -> tuple[list[Pair], list[str]]:
    """Every pair of contenders of every (group, mode, style, seed); notes say what was skipped and why.

    ``scores_of(row)`` loads a run's scores (and raises a ``FmevalError`` when it cannot).
    """
    from fmeval.errors import FmevalError

    pairs, notes = [], []
    better = higher_is_better(metric)
    for (group, mode, style, seed), runs in sorted(_candidates(entries).items()):
        if len(runs) < 2:
            continue
        loaded: list[tuple[str, dict[str, Any], RunScores]] = []
        for label, row in sorted(runs, key=lambda lr: lr[0]):
            try:
                loaded.append((label, row, scores_of(row)))
            except FmevalError as exc:
                notes.append(f"{group.title}, {mode}, seed {seed}: {label} left out of paired comparisons: {exc}")
        for (la, ra, sa), (lb, rb, sb) in combinations(loaded, 2):
            if not np.array_equal(sa.indices, sb.indices):
                notes.append(f"{group.title}, {mode}, seed {seed}: {la} and {lb} scored different test indices; "
                             "not paired.")
                continue
            va, vb = float(ra.get(metric, math.nan)), float(rb.get(metric, math.nan))
            if (vb > va) if better else (vb < va):  # A is the better one, so a CI excluding 0 means "A beats B"
                (la, ra, sa), (lb, rb, sb), (va, vb) = (lb, rb, sb), (la, ra, sa), (vb, va)
            d = paired_difference(str(ra["task"]), sa.labels, sa.scores, sb.scores, metric, n_boot=n_boot, seed=seed,
                                  n_classes=sa.scores.shape[1] if sa.labels.ndim == 1 else None)
            pairs.append(Pair(group.dataset, group.size, group.limit, mode, style, seed, la, lb, metric, va, vb,
                              d["diff"], d["ci_low"], d["ci_high"], d["p_boot"], int(d["n_boot"]), int(sa.indices.size),
                              str(ra["run_id"]), str(rb["run_id"])))
    return pairs, notes


def paired_table(pairs: list[Pair], metric: str) -> Table:
    name = SHORT.get(metric, metric)
    show_style = any(p.style for p in pairs)
    header = ["dataset", "size", "mode"] + (["style"] if show_style else []) + [
        "seed", "A", "B", f"Δ{name} (A − B)", "95% CI", "p_boot", "n_test", "verdict"]
    rows = []
    for p in pairs:
        cells = [Cell(p.dataset), Cell(str(p.size) + (f" (limit {p.limit})" if p.limit else ""), p.size), Cell(p.mode)]
        cells += [Cell(p.style or "–")] if show_style else []
        cells += [Cell(str(p.seed), p.seed), Cell(p.a), Cell(p.b), Cell.num(p.diff),
                  Cell(fmt_ci(p.ci_low, p.ci_high, DIGITS), p.ci_low if math.isfinite(p.ci_low) else None),
                  Cell(fmt(p.p_boot, 3), p.p_boot if math.isfinite(p.p_boot) else None), Cell(str(p.n_test), p.n_test),
                  Cell(p.verdict)]
        rows.append(cells)
    notes = [f"Paired bootstrap ({pairs[0].n_boot if pairs else 0} resamples, seeded by the cell's seed) of "
             f"{name}(A) − {name}(B) on the same test images; A is the better of the two on the full test set. "
             "\"A beats B\" only when the 95% CI excludes 0; p_boot = twice the share of resamples where the "
             "difference changes sign."]
    return Table("paired", f"Paired comparisons ({name})", header, rows, notes)


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

