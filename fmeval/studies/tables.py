"""Study tables: one ranked table per dataset x size, and the mean over datasets.

A :class:`Table` holds display text and a sort value per cell, so the
Markdown file and the HTML page (sortable) render the same numbers. Tables
rank entries of one group only (see :mod:`fmeval.studies.cells`); the
summary averages an explicit list of datasets and says which.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from fmeval.metrics import rank_order
from fmeval.report.fmt import csv_num, fmt, fmt_ci, md_table
from fmeval.studies.cells import Entry, EntryKey, GroupKey, ambiguous_variants, csv_columns, variant_label

DIGITS = 4  # AUC saturates near 1 on some datasets: 3 decimals hide differences
TABLE_METRICS = ("auc", "acc", "balanced_acc")
SHORT = {"auc": "AUC", "acc": "ACC", "balanced_acc": "bACC", "f1_macro": "F1"}

POOLING_NOTE = ("With several seeds a value is the mean over seeds ± the sample standard deviation "
                "across seeds (ddof 1; min-max in leaderboard.csv) and the 95% CI a bootstrap of that mean that "
                "resamples the seeds and the test images together; with one seed, that run's value and "
                "bootstrap CI.")


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None  # None: sort by text

    @classmethod
    def num(cls, v: Any, digits: int = DIGITS) -> "Cell":
        ok = isinstance(v, (int, float)) and math.isfinite(v)
        return cls(fmt(v, digits) if not isinstance(v, int) else str(v), float(v) if ok else None)


@dataclass
class Table:
    """A titled table with notes; ``rows`` are already in their ranked order."""

    id: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self, level: int = 2) -> str:
        out = [f"{'#' * level} {self.title}", ""]
        out += [n for note in self.notes for n in (note, "")]
        out.append(md_table(self.columns, [[c.text for c in row] for row in self.rows]) if self.rows else "(no rows)")
        return "\n".join(out) + "\n"


def mean_sd(p) -> Cell:
    """'0.8123 ± 0.0100' over several seeds, '0.8123' from one; sorts by the mean."""
    cell = Cell.num(p.mean)
    if p.n > 1 and math.isfinite(p.sd):
        return Cell(f"{cell.text} ± {fmt(p.sd, DIGITS)}", cell.sort)
    return cell


def rank_key(metric: str):
    """Entries best first, by the one ranking rule (:func:`fmeval.metrics.rank_order`)."""
    return lambda e: rank_order(metric, e.value(metric), e.key)


def _md5_note(entries: list[Entry]) -> str:
    flags = {r.get("md5_official") for e in entries for r in e.rows}
    if flags == {True}:
        return "official data file"
    return "NOT the official data file" if False in flags else "MD5 not checked"


def _label_columns(entries: Sequence[Entry]) -> tuple[bool, set]:
    return any(e.key.style for e in entries), ambiguous_variants(list(entries))


def _key_cells(key: EntryKey, show_style: bool, ambiguous: dict) -> list[Cell]:
    cells = [Cell(key.model), Cell(key.mode)]
    if show_style:
        cells.append(Cell(key.style or "–"))
    if ambiguous:
        cells.append(Cell(variant_label(key, ambiguous)))
    return cells


def _key_header(show_style: bool, ambiguous: dict) -> list[str]:
    return ["model", "mode"] + (["style"] if show_style else []) + (["variant"] if ambiguous else [])


def group_table(group: GroupKey, entries: list[Entry], metric: str, *, show_style: bool,
                ambiguous: dict) -> Table:
    """One dataset x size: entries ranked by ``metric`` (mean over seeds)."""
    entries = sorted(entries, key=rank_key(metric))
    metrics = list(dict.fromkeys([metric, *TABLE_METRICS]))
    header = ["#", *_key_header(show_style, ambiguous), "seeds"]
    for m in metrics:
        name = SHORT.get(m, m)
        header += [f"{name} (± sd)", f"{name} 95% CI"] if m in ("auc", "acc", metric) else [f"{name} (± sd)"]
    header += ["majority ACC", "protocol", "input", "weights", "precision"]
    rows = []
    for i, e in enumerate(entries, 1):
        cells = [Cell(str(i), i), *_key_cells(e.key, show_style, ambiguous), Cell(str(len(e.seeds)), len(e.seeds))]
        for m in metrics:
            p = e.metrics[m]
            cells.append(mean_sd(p))
            if m in ("auc", "acc", metric):
                cells.append(Cell(fmt_ci(p.ci_low, p.ci_high, DIGITS), p.ci_low if math.isfinite(p.ci_low) else None))
        cells += [Cell.num(e.metrics["baseline_acc"].mean, 3), Cell(e.describe("protocol") or "-"),
                  Cell(e.describe("input_size")), Cell(e.describe("weights")), Cell(e.describe("precision"))]
        rows.append(cells)
    n_test = sorted({str(r["n_test"]) for e in entries for r in e.rows})
    deviating = sorted({d for e in entries for r in e.rows for d in str(r.get("deviations") or "").split(";") if d})
    notes = [f"n_test {', '.join(n_test)}; {_md5_note(entries)}; ranked by {SHORT.get(metric, metric)}."]
    if deviating:
        notes.append("`*` after a protocol: deviations from it: " + ", ".join(f"`{d}`" for d in deviating) + ".")
    return Table(f"group-{group.label}", group.title, header, rows, notes)


def group_tables(entries: list[Entry], metric: str) -> list[Table]:
    show_style, ambiguous = _label_columns(entries)
    by_group: dict[GroupKey, list[Entry]] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
    return [group_table(g, es, metric, show_style=show_style, ambiguous=ambiguous)
            for g, es in sorted(by_group.items())]


# ---------------------------------------------------------------------------
# Summary: the mean over datasets
# ---------------------------------------------------------------------------
@dataclass
class Summary:
    """Mean over ``datasets`` at one size (and test subset) per entry key."""

    size: int
    limit: int
    datasets: list[str]
    chosen_by: str  # "study" (summary_datasets) | "default"
    left_out: list[str]  # datasets with runs at this size that are not averaged
    rows: list[dict[str, Any]]  # key, per_dataset {flag: {metric: mean}}, mean {metric: value}, missing


def summary_metrics(metric: str) -> tuple[str, ...]:
    """What a summary averages: the study's ranking metric first (ECE or NLL too), then the table metrics."""
    return tuple(dict.fromkeys([metric, *TABLE_METRICS]))


def default_datasets(entries: list[Entry]) -> list[str]:
    """The datasets on which every model of these entries has at least one run."""
    per_model: dict[str, set[str]] = {}
    for e in entries:
        per_model.setdefault(e.key.model, set()).add(e.group.dataset)
    sets = list(per_model.values())
    return sorted(set.intersection(*sets)) if sets else []


def summarise(entries: list[Entry], summary_datasets: Sequence[str] | None,
              metrics: Sequence[str] = TABLE_METRICS) -> list[Summary]:
    by_size: dict[tuple[int, int], list[Entry]] = {}
    for e in entries:
        by_size.setdefault((e.group.size, e.group.limit), []).append(e)
    out = []
    for (size, limit), es in sorted(by_size.items()):
        present = sorted({e.group.dataset for e in es})
        chosen = list(summary_datasets) if summary_datasets is not None else default_datasets(es)
        rows = []
        for key in sorted({e.key for e in es}):
            per = {e.group.dataset: {m: e.value(m) for m in metrics} for e in es if e.key == key}
            missing = [d for d in chosen if d not in per or not all(math.isfinite(per[d][m]) for m in metrics)]
            mean = {m: (math.fsum(per[d][m] for d in chosen) / len(chosen)) if chosen and not missing else math.nan
                    for m in metrics}
            rows.append({"key": key, "per_dataset": per, "mean": mean, "missing": missing})
        out.append(Summary(size, limit, chosen, "study" if summary_datasets is not None else "default",
                           [d for d in present if d not in chosen], rows))
    return out


def summary_table(s: Summary, metric: str, *, show_style: bool, ambiguous: dict) -> Table:
    metrics = list(summary_metrics(metric))

    def key(row):
        return rank_order(metric, row["mean"].get(metric, math.nan), row["key"])

    rows = []
    for i, row in enumerate(sorted(s.rows, key=key), 1):
        cells = [Cell(str(i), i), *_key_cells(row["key"], show_style, ambiguous)]
        cells += [Cell.num(row["mean"].get(m, math.nan)) for m in metrics]
        cells.append(Cell(f"{len(s.datasets) - len(row['missing'])}/{len(s.datasets)}",
                          len(s.datasets) - len(row["missing"])))
        cells.append(Cell(", ".join(row["missing"]) or "–"))
        rows.append(cells)
    header = ["#", *_key_header(show_style, ambiguous), *[f"mean {SHORT.get(m, m)}" for m in metrics],
              "datasets", "missing"]
    subset = f", --limit {s.limit} subsets" if s.limit else ""
    why = ("the study's summary_datasets" if s.chosen_by == "study"
           else "by default, every dataset on which each model of the study has runs at this size")
    notes = [f"Unweighted mean over {len(s.datasets)} dataset(s) ({why}): "
             + (", ".join(s.datasets) or "none") + ". Each dataset's value is its mean over seeds.",
             "Not averaged: " + (", ".join(s.left_out) or "none") + ". A row missing a dataset has no mean "
             "(a partial mean would rank it on easier data)."]
    return Table(f"summary-{s.size}" + (f"-limit{s.limit}" if s.limit else ""),
                 f"Summary @ {s.size} px{subset}: mean over {len(s.datasets)} dataset(s)", header, rows, notes)


def summary_tables(entries: list[Entry], summaries: list[Summary], metric: str) -> list[Table]:
    show_style, ambiguous = _label_columns(entries)
    return [summary_table(s, metric, show_style=show_style, ambiguous=ambiguous) for s in summaries]


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def leaderboard_markdown(name: str, metric: str, summaries: list[Table], groups: list[Table]) -> str:
    head = [f"# Study {name}: leaderboard", "",
            f"Ranked by {SHORT.get(metric, metric)} within one dataset × size × test set per table; runs of "
            "different tables are never ranked together. " + POOLING_NOTE, ""]
    body = [t.to_markdown(2) for t in summaries] + [t.to_markdown(2) for t in groups]
    return "\n".join(head + body)


def _csv_text(columns: list[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([csv_num(v) if isinstance(v, float) else ("" if v is None else v)
                    for v in (row.get(c, "") for c in columns)])
    return buf.getvalue()


def cells_csv(rows: list[dict[str, Any]]) -> str:
    """One line per run (every cell of the study), long format for pandas."""
    ordered = sorted(rows, key=lambda r: (r["dataset"], str(r["size"]), r["model"], r["mode"], r["style"],
                                          str(r["seed"]), r["run_id"]))
    return _csv_text(csv_columns(rows), ordered)


def entries_csv(entries: list[Entry]) -> str:
    """One line per entry (runs pooled over seeds): mean, sd, min, max, CI and n per metric."""
    metrics = [m for m in (entries[0].metrics if entries else {})]
    cols = ["dataset", "size", "limit", "model", "mode", "style", "variant", "n_seeds", "seeds"]
    cols += [f"{m}_{s}" for m in metrics for s in ("mean", "sd", "min", "max", "ci_low", "ci_high")]
    rows = []
    for e in entries:
        row: dict[str, Any] = {"dataset": e.group.dataset, "size": e.group.size, "limit": e.group.limit or "",
                               "model": e.key.model, "mode": e.key.mode, "style": e.key.style,
                               "variant": e.key.variant, "n_seeds": len(e.seeds),
                               "seeds": " ".join(map(str, e.seeds))}
        for m, p in e.metrics.items():
            row.update({f"{m}_mean": p.mean, f"{m}_sd": p.sd, f"{m}_min": p.lo, f"{m}_max": p.hi,
                        f"{m}_ci_low": p.ci_low, f"{m}_ci_high": p.ci_high})
        rows.append(row)
    return _csv_text(cols, rows)


def summary_csv(summaries: list[Summary]) -> str:
    cols = ["size", "limit", "model", "mode", "style", "variant", "n_datasets", "datasets", "missing"]
    metrics = list(TABLE_METRICS)
    cols += [f"mean_{m}" for m in metrics]
    rows = []
    for s in summaries:
        for r in s.rows:
            k = r["key"]
            rows.append({"size": s.size, "limit": s.limit or "", "model": k.model, "mode": k.mode, "style": k.style,
                         "variant": k.variant, "n_datasets": len(s.datasets), "datasets": " ".join(s.datasets),
                         "missing": " ".join(r["missing"]),
                         **{f"mean_{m}": r["mean"].get(m, math.nan) for m in metrics}})
    return _csv_text(cols, rows)
