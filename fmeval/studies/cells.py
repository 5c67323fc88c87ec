"""The cells of a finished study: one row per run, and runs that differ only by seed pooled.

Every study view (tables, plots, paired comparisons, the HTML page) reads
these rows, so the same grouping rules hold everywhere:

- a *group* is what may be ranked together: one dataset at one image size on
  one test set (a ``--limit`` subset is another test set);
- an *entry* is one contender inside a group: model x mode x prompt style x
  config variant; its runs differ only by seed and are pooled (mean over seeds,
  sample SD and min-max across seeds; the 95% CI of the mean over seeds resamples seeds and test
  images together, :func:`resample_pooled_cis`).

The *variant* is a short digest of everything the run computes except the
study's axes (model, mode, dataset, size, seed, prompt style), so two cells
of one model and mode that a study configured differently (a per-axis
override) are never averaged together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fmeval.errors import FmevalError
from fmeval.report.leaderboard import LEADERBOARD_METRICS, row_of
from fmeval.report.schema import RunResult


class StudyOutputError(FmevalError):
    """The runs of a study cannot be turned into its outputs."""


# cells.csv columns, in this order (metric columns are inserted after ``n_train``).
ID_COLUMNS = ("model", "mode", "dataset", "size", "seed", "style", "protocol", "deviations", "input_size",
              "precision", "weights", "weights_id", "geometry", "n_test", "n_train", "limit", "md5_official")
TAIL_COLUMNS = ("baseline_acc", "n_warnings", "variant", "config_hash", "run_id", "run_dir")


def style_of(r: RunResult) -> str:
    """The prompt style a zero-shot run used ('' for modes without prompts)."""
    style = r.extras.get("style") or ((r.config.get("zeroshot") or {}).get("style") if r.mode == "zeroshot" else None)
    return str(style) if style else ""


# Config fields a study crosses (or that follow from them): left out of the variant.
AXES = ("mode", "model", "dataset", "size", "seed", "limit", "protocol_variant", "zeroshot.style")


def variant_of(r: RunResult) -> str:
    """8 hex digits of what the run computes beyond the study's axes (see module docstring).

    Two runs of one model and mode whose variants differ were configured
    differently (an override), so they are never pooled or summarised together.
    """
    from fmeval.config import variant_digest

    return variant_digest(r.config, r.mode, AXES)


def cell_row(r: RunResult) -> dict[str, Any]:
    """``row_of`` (the leaderboard's row) plus what a study needs to pool and pair runs."""
    row = row_of(r)
    row.update(style=style_of(r), n_train=r.dataset.get("n_train", ""), variant=variant_of(r),
               run_dir=r.report_dir or "", task=r.dataset.get("task", ""),
               classes=list(r.test.class_names or r.dataset.get("classes") or []),
               data_root=r.config.get("data_root") or "", data_source=_data_source(r))
    return row


def _data_source(r: RunResult):
    """(address, split options) of a user dataset, so per-sample outputs reopen its test split; None for MedMNIST."""
    from fmeval.data.sources import reopen

    return reopen(r.dataset)


def metric_names(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The leaderboard metrics first, then any other metric some run reported."""
    names = list(LEADERBOARD_METRICS)
    for row in rows:
        names += [k[: -len("_ci_low")] for k in row if k.endswith("_ci_low")]
    return list(dict.fromkeys(names))


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    metric_cols = [c for m in metric_names(rows) for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    return [*ID_COLUMNS, *metric_cols, *TAIL_COLUMNS]


@dataclass(frozen=True, order=True)
class GroupKey:
    """What may be ranked together: one dataset, one image size, one test set."""

    dataset: str
    size: int
    limit: int = 0  # 0: the full test split

    @property
    def label(self) -> str:
        return f"{self.dataset}-{self.size}" + (f"-limit{self.limit}" if self.limit else "")

    @property
    def title(self) -> str:
        return f"{self.dataset} @ {self.size} px" + (f" (test subset, --limit {self.limit})" if self.limit else "")


@dataclass(frozen=True, order=True)
class EntryKey:
    """One contender of a group; runs with the same key differ only by seed."""

    model: str
    mode: str
    style: str = ""
    variant: str = ""


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def group_of(row: dict[str, Any]) -> GroupKey:
    return GroupKey(str(row["dataset"]), _int(row["size"]), _int(row.get("limit") or 0))


def entry_of(row: dict[str, Any]) -> EntryKey:
    return EntryKey(str(row["model"]), str(row["mode"]), str(row.get("style") or ""), str(row.get("variant") or ""))


@dataclass
class Pooled:
    """One metric of an entry over its seeds."""

    mean: float
    sd: float  # sample SD across seeds (ddof 1); NaN with one seed
    lo: float  # min over seeds
    hi: float  # max over seeds
    # With one seed: that run's 95% bootstrap CI. With several: NaN from ``pool`` (the per-run bounds
    # cannot be pooled), filled in by :func:`resample_pooled_cis` (seeds and test images resampled).
    ci_low: float
    ci_high: float
    n: int  # seeds with a finite value


def pool(values: list[float], lows: list[float], highs: list[float]) -> Pooled:
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return Pooled(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    vo = v[ok]
    lo_ci = np.asarray(lows, dtype=np.float64)[ok]
    hi_ci = np.asarray(highs, dtype=np.float64)[ok]
    ci_ok = np.isfinite(lo_ci) & np.isfinite(hi_ci)
    return Pooled(
        mean=float(vo.mean()),
        sd=float(vo.std(ddof=1)) if vo.size > 1 else math.nan,
        lo=float(vo.min()), hi=float(vo.max()),
        ci_low=float(lo_ci[ci_ok][0]) if vo.size == 1 and ci_ok.any() else math.nan,
        ci_high=float(hi_ci[ci_ok][0]) if vo.size == 1 and ci_ok.any() else math.nan,
        n=int(vo.size),
    )


def _joined(rows: list[dict[str, Any]], col: str) -> str:
    return ", ".join(dict.fromkeys(str(r.get(col, "")) for r in rows if str(r.get(col, "")) != ""))


@dataclass
class Entry:
    """An entry of a group with its runs pooled over seeds."""

    group: GroupKey
    key: EntryKey
    rows: list[dict[str, Any]]
    metrics: dict[str, Pooled] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted({_int(r["seed"]) for r in self.rows})

    def value(self, metric: str) -> float:
        p = self.metrics.get(metric)
        return p.mean if p else math.nan

    def describe(self, col: str) -> str:
        """The runs' common value of a column (several values are joined: a sign to look closer)."""
        return _joined(self.rows, col)


def pool_entries(rows: list[dict[str, Any]]) -> list[Entry]:
    """Rows -> entries, sorted by group then entry key (ranking is the tables' job)."""
    by_key: dict[tuple[GroupKey, EntryKey], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((group_of(row), entry_of(row)), []).append(row)
    names = metric_names(rows)
    out = []
    for (g, k), rs in sorted(by_key.items()):
        rs = sorted(rs, key=lambda r: (_int(r["seed"]), str(r["run_id"])))
        pooled = {m: pool([r.get(m, math.nan) for r in rs], [r.get(f"{m}_ci_low", math.nan) for r in rs],
                          [r.get(f"{m}_ci_high", math.nan) for r in rs]) for m in names}
        base = [r.get("baseline_acc", math.nan) for r in rs]
        pooled["baseline_acc"] = pool(base, [math.nan] * len(rs), [math.nan] * len(rs))
        out.append(Entry(g, k, rs, pooled))
    return out


# Row columns that often tell variants apart, with their short names in labels.
_VARIANT_FIELDS = {"input_size": "input", "precision": "", "geometry": "", "protocol": "", "deviations": "",
                   "weights": "weights"}


def ambiguous_variants(entries: list[Entry]) -> dict[tuple[str, str, str], dict[str, str]]:
    """(model, mode, style) that occur with more than one variant -> {variant: its label}.

    Their labels must show the variant. The label says in words what differs
    (``input 64``, ``bf16``) when the recorded columns tell the variants
    apart; otherwise it is the variant's digest (an override the columns do
    not show; ``cells.csv`` has the full config hash of each run).
    """
    seen: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for e in entries:
        seen.setdefault((e.key.model, e.key.mode, e.key.style), {}).setdefault(e.key.variant, e.rows[0])
    out: dict[tuple[str, str, str], dict[str, str]] = {}
    for k, rows in seen.items():
        if len(rows) > 1:
            out[k] = _variant_labels(rows)
    return out


def _variant_labels(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    fields = [f for f in _VARIANT_FIELDS if len({str(r.get(f, "")) for r in rows.values()}) > 1]

    def words(r: dict[str, Any]) -> str:
        return ", ".join(f"{_VARIANT_FIELDS[f]} {r.get(f, '') or '-'}".strip() for f in fields)

    labels = {v: words(r) for v, r in rows.items()}
    if fields and len(set(labels.values())) == len(labels):
        return labels
    return {v: f"{labels[v]} · {v}" if labels[v] else v for v in rows}


def variant_label(key: EntryKey, ambiguous: dict[tuple[str, str, str], dict[str, str]]) -> str:
    """The variant's label when its (model, mode, style) has several variants, else ''."""
    labels = ambiguous.get((key.model, key.mode, key.style))
    return labels.get(key.variant, key.variant) if labels else ""


def entry_label(key: EntryKey, ambiguous: dict, *, with_mode: bool = True) -> str:
    """'model / mode / style [variant]', leaving out what does not distinguish anything."""
    parts = [key.model] + ([key.mode] if with_mode else []) + ([key.style] if key.style else [])
    label = " / ".join(parts)
    if variant := variant_label(key, ambiguous):
        label += f" [{variant}]"
    return label


def run_dir_of(row: dict[str, Any]) -> Path | None:
    return Path(row["run_dir"]) if row.get("run_dir") else None


def resample_pooled_cis(entries: list[Entry], scores_of, *, n_boot: int = 1000) -> list[str]:
    """Give every multi-seed entry the CI of its mean over seeds, seeds and test images resampled together.

    ``pool`` cannot: it sees only each run's CI bounds, and their mean leaves out the spread
    between training runs (:func:`fmeval.metrics.comparisons.mean_over_seeds_ci`). ``scores_of(row)``
    loads a run's test scores (:func:`fmeval.studies.samples.load_run_scores`). An entry whose
    scores cannot be loaded, or whose seeds scored different test images, gets no pooled CI
    (NaN, never the mean of bounds) and a note. The image stream is seeded by the entry's
    smallest seed. Returns the notes.
    """
    from fmeval.metrics.comparisons import mean_over_seeds_ci

    notes = []
    for e in entries:
        if len(e.rows) < 2:
            continue
        names = [m for m, p in e.metrics.items() if m != "baseline_acc" and p.n > 0]
        label = f"{e.group.title}, {entry_label(e.key, {})}"
        try:
            loaded = [scores_of(r) for r in e.rows]
        except FmevalError as exc:
            loaded, why = None, str(exc)
        else:
            why = "its seeds scored different test images"
            if any(not np.array_equal(x.indices, loaded[0].indices) for x in loaded):
                loaded = None
        if loaded is None:
            for m in names:
                e.metrics[m].ci_low = e.metrics[m].ci_high = math.nan
            notes.append(f"{label}: no CI over seeds ({why}).")
            continue
        multilabel = loaded[0].labels.ndim > 1
        cis = mean_over_seeds_ci(str(e.rows[0].get("task")), loaded[0].labels, [x.scores for x in loaded], names,
                                 n_boot=n_boot, seed=min(e.seeds),
                                 n_classes=None if multilabel else loaded[0].scores.shape[1])
        for m, (lo, hi) in cis.items():
            e.metrics[m].ci_low, e.metrics[m].ci_high = lo, hi
    return notes
