"""Everything a finished study writes under ``reports/studies/<name>/``.

:func:`write_study_outputs` reads nothing but the runs' ``results.json`` (as
loaded :class:`RunResult`) and ``predictions.csv`` files, plus the test
labels and images of the datasets, so the outputs can be regenerated at any
time from the run folders:

- ``leaderboard.md``: the summary (mean over named datasets) and one ranked
  table per dataset x size; ``leaderboard.csv`` (runs pooled over seeds),
  ``summary.csv`` and ``cells.csv`` (one row per run, for pandas);
- ``plot_*.png``: metric against resolution, box plots across datasets,
  metric against training-set size, prompt styles (each only when the study
  has something to show in it);
- ``paired.md`` / ``paired.csv``: paired bootstrap comparisons of models;
- ``misclassified_<dataset>-<size>.csv`` / ``.png``: the test images every run got wrong;
- ``index.html``: all of it on one self-contained page, with each run's provenance;
- ``outputs.json``: what was written and what was skipped, and why.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from fmeval.errors import FmevalError
from fmeval.io import atomic_write_json, atomic_write_text
from fmeval.metrics import METRICS
from fmeval.report.schema import RunResult, slug
from fmeval.studies import cells as C
from fmeval.studies import tables as T
from fmeval.studies.cells import StudyOutputError
from fmeval.studies.samples import RunScores

PLOTS = ("resolution", "boxes", "train_size", "prompt_styles")
MAX_SHEET_IMAGES = 64


def check_summary_datasets(names: Sequence[str] | None, present: set[str]) -> list[str] | None:
    """Lower-cased names; an unknown dataset name fails in one line with a suggestion."""
    if names is None:
        return None
    from fmeval.data.info import flags_2d
    from fmeval.registry import Registry

    known: Registry[str] = Registry("summary dataset", StudyOutputError)
    for flag in sorted(set(flags_2d()) | present):
        known.add(flag, flag)
    out = [known.get(str(n).strip()) for n in names]
    if len(set(out)) != len(out):
        raise StudyOutputError(f"summary_datasets lists a dataset twice: {', '.join(out)}.")
    return out


def _per_sample(rows: list[dict[str, Any]], data_root: str | None):
    """A loader of each run's scores (read once) that raises one-line errors."""
    from fmeval.studies.samples import load_run_scores

    cache: dict[str, RunScores | FmevalError] = {}

    def scores_of(row: dict[str, Any]) -> RunScores:
        rid = str(row["run_id"])
        if rid not in cache:
            try:
                cache[rid] = load_run_scores(row, data_root)
            except FmevalError as exc:
                cache[rid] = exc
        got = cache[rid]
        if isinstance(got, FmevalError):
            raise got
        return got

    return scores_of


def _write_plots(out: Path, entries, summaries, metric: str) -> list:
    from fmeval.studies import plots as P

    makers = {
        "resolution": lambda p: P.plot_resolution(entries, metric, p),
        "boxes": lambda p: P.plot_boxes(entries, summaries, metric, p),
        "train_size": lambda p: P.plot_train_size(entries, summaries, metric, p),
        "prompt_styles": lambda p: P.plot_prompt_styles(entries, metric, p),
    }
    outcomes = []
    for name in PLOTS:
        path = out / f"plot_{name}.png"
        try:
            outcome = makers[name](path)
        except ImportError as exc:  # matplotlib is a dependency, but the tables must not die for a plot
            outcome = P.PlotOutcome(name, name, None, f"skipped: {exc}")
        if outcome.path is None:
            path.unlink(missing_ok=True)  # a stale plot of an earlier call must not pass for this study's
        outcomes.append(outcome)
    return outcomes


def _write_misclassified(out: Path, entries, scores_of, data_root: str | None, notes: list[str],
                         max_images: int) -> tuple[list, dict[str, Path]]:
    from fmeval.studies.samples import find_misclassified, misclassified_csv, source_of, write_sheet

    by_group: dict[C.GroupKey, list[dict[str, Any]]] = {}
    for e in entries:
        by_group.setdefault(e.group, []).extend(e.rows)
    shown, files = [], {}
    for group, rows in sorted(by_group.items()):
        loaded = []
        for row in rows:
            try:
                loaded.append((row, scores_of(row)))
            except FmevalError as exc:
                notes.append(f"misclassified images of {group.title}: run {row['run_id']} left out: {exc}")
        if not loaded:
            continue
        m = find_misclassified(group, loaded)
        stem = f"misclassified_{slug(group.label, 80)}"
        atomic_write_text(out / f"{stem}.csv", misclassified_csv(m))
        files[f"{stem}.csv"] = out / f"{stem}.csv"
        sheet: Path | None = out / f"{stem}.png"
        try:
            n_shown = write_sheet(m, sheet, source_of(loaded[0][0], data_root), max_images=max_images)
        except (FmevalError, ImportError, OSError) as exc:
            n_shown = 0
            notes.append(f"contact sheet of {group.title} skipped: {exc}")
        if n_shown:
            files[f"{stem}.png"] = sheet
        else:
            sheet.unlink(missing_ok=True)
            sheet = None
        text = (f"{m.indices.size} of the {m.n_common} test images scored by all {m.n_runs} runs "
                f"(every model, mode, prompt style and seed) were misclassified by every one of them.")
        shown.append((m, text, sheet, f"{stem}.csv"))
    return shown, files


def _overview(name: str, rows: list[dict[str, Any]], metric: str) -> list[tuple[str, Any]]:
    def distinct(col: str) -> str:
        return ", ".join(sorted({str(r[col]) for r in rows if str(r.get(col, "")) != ""}, key=lambda s: (len(s), s)))

    return [("study", name), ("runs", len(rows)), ("models", distinct("model")), ("modes", distinct("mode")),
            ("datasets", distinct("dataset")), ("sizes", distinct("size")), ("seeds", distinct("seed")),
            ("prompt styles", distinct("style") or "–"), ("ranked by", T.SHORT.get(metric, metric))]


def _write_tables(out: Path, name: str, metric: str, rows, entries, summaries) -> tuple[list, list, dict]:
    sum_tables, grp_tables = T.summary_tables(entries, summaries, metric), T.group_tables(entries, metric)
    texts = {"leaderboard.md": T.leaderboard_markdown(name, metric, sum_tables, grp_tables),
             "cells.csv": T.cells_csv(rows), "leaderboard.csv": T.entries_csv(entries),
             "summary.csv": T.summary_csv(summaries)}
    for fname, text in texts.items():
        atomic_write_text(out / fname, text)
    return sum_tables, grp_tables, {fname: out / fname for fname in texts}


def _manifest(name: str, metric: str, n_runs: int, n_boot: int, summaries, plots, pairs, pair_notes, mis,
              notes: list[str], files: dict[str, Path]) -> dict[str, Any]:
    return {
        "study": name, "metric": metric, "n_runs": n_runs, "n_boot": n_boot,
        "summaries": [{"size": s.size, "limit": s.limit, "datasets": s.datasets, "chosen_by": s.chosen_by,
                       "left_out": s.left_out} for s in summaries],
        "plots": [p.to_dict() for p in plots],
        "paired": {"pairs": len(pairs), "significant": sum(p.significant for p in pairs), "notes": pair_notes},
        "misclassified": {m.group.label: {"n": int(m.indices.size), "n_runs": m.n_runs, "n_common": m.n_common}
                          for m, *_ in mis},
        "notes": notes,
        "files": sorted([*files, "outputs.json"]),
    }


def write_study_outputs(name: str, runs: list[RunResult], out_dir: Path, *,
                        summary_datasets: list[str] | None = None, metric: str = "auc",
                        data_root: str | None = None, n_boot: int = 1000,
                        max_sheet_images: int = MAX_SHEET_IMAGES) -> dict[str, Path]:
    """Write the study's tables, plots, paired comparisons, misclassified images and HTML page.

    ``summary_datasets``: the datasets the summary averages (default: every
    dataset each model has runs on, per size). ``data_root``: where the test
    labels and images are (default: each run's own ``config.data_root``).
    Returns file name -> path of everything written (``outputs.json`` lists
    the skipped parts too, and why).
    """
    from fmeval.metrics import MetricWarning
    from fmeval.studies.html import render_page
    from fmeval.studies.paired import compare_pairs, paired_csv, paired_markdown, paired_table

    metric = METRICS.entry(metric).name  # a typo fails loudly, with suggestions
    if not runs:
        raise StudyOutputError(f"study {name!r} has no finished runs to report.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [C.cell_row(r) for r in runs]
    chosen = check_summary_datasets(summary_datasets, {str(r["dataset"]) for r in rows})
    entries = C.pool_entries(rows)
    scores_of = _per_sample(rows, data_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        ci_notes = C.resample_pooled_cis(entries, scores_of, n_boot=n_boot)
    summaries = T.summarise(entries, chosen, T.summary_metrics(metric))
    notes = [f"summary dataset {d} has no runs at {s.size} px: no summary row is complete."
             for s in summaries for d in s.datasets
             if d not in {e.group.dataset for e in entries if e.group.size == s.size}] + ci_notes
    sum_tables, grp_tables, files = _write_tables(out, name, metric, rows, entries, summaries)

    with warnings.catch_warnings():  # a class absent from a bootstrap resample is expected, not news
        warnings.simplefilter("ignore", MetricWarning)
        plots = _write_plots(out, entries, summaries, metric)
        files.update({f"plot_{p.name}.png": p.path for p in plots if p.path})
        pairs, pair_notes = compare_pairs(entries, scores_of, metric=metric, n_boot=n_boot)
        atomic_write_text(out / "paired.md", paired_markdown(name, pairs, pair_notes, metric))
        atomic_write_text(out / "paired.csv", paired_csv(pairs))
        files.update({"paired.md": out / "paired.md", "paired.csv": out / "paired.csv"})
        for stale in out.glob("misclassified_*"):  # groups of an earlier call may be gone
            stale.unlink()
        mis, mis_files = _write_misclassified(out, entries, scores_of, data_root, notes, max_sheet_images)
        files.update(mis_files)

    style_of = {r.run_id: C.style_of(r) for r in runs}
    order = sorted(runs, key=lambda r: (r.dataset_flag, str(r.dataset.get("size")), r.model_name, r.mode,
                                        style_of[r.run_id], r.seed, r.run_id))
    page = render_page(
        name, overview=_overview(name, rows, metric), summary_tables=sum_tables, group_tables=grp_tables,
        plots=[(p.title, p.path, p.caption) for p in plots], paired=paired_table(pairs, metric),
        paired_notes=pair_notes, misclassified=[(m.group.title, text, sheet, csv) for m, text, sheet, csv in mis],
        runs=[(r, style_of[r.run_id]) for r in order], notes=notes)
    files["index.html"] = out / "index.html"
    atomic_write_text(files["index.html"], page)
    manifest = _manifest(name, metric, len(runs), n_boot, summaries, plots, pairs, pair_notes, mis, notes, files)
    files["outputs.json"] = out / "outputs.json"
    atomic_write_json(files["outputs.json"], manifest)
    return files
