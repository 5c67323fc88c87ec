"""Study plots: metric against resolution, per-model box plots across datasets,
metric against training-set size with a linear fit, prompt-style comparisons.

Each plot function returns a :class:`PlotOutcome`: the file it wrote, or why
the study has nothing to show in it (one size only, one dataset only, no
zero-shot cells that differ by style). Figures are drawn on the Agg canvas
without pyplot and saved atomically (:mod:`fmeval.report.plots`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fmeval.report.plots import new_figure, save_png
from fmeval.studies.cells import Entry, EntryKey, GroupKey, ambiguous_variants, entry_label
from fmeval.studies.tables import SHORT, Summary

MAX_PANELS = 12


@dataclass
class PlotOutcome:
    name: str
    title: str
    path: Path | None  # None: skipped
    caption: str  # what is drawn, or why it was skipped

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "file": self.path.name if self.path else None,
                "caption": self.caption}


def _grid(n: int, w: float = 4.2, h: float = 3.4, *, legend: bool = False):
    cols = min(3, n)
    rows = -(-n // cols)
    fig = new_figure(w * cols + (2.5 if legend else 0.0), h * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _full_test_sets(entries: list[Entry]) -> list[Entry]:
    full = [e for e in entries if not e.group.limit]
    return full or entries


def _err(e: Entry, metric: str) -> tuple[float, float, float]:
    p = e.metrics[metric]
    lo = p.mean - p.ci_low if math.isfinite(p.ci_low) else 0.0
    hi = p.ci_high - p.mean if math.isfinite(p.ci_high) else 0.0
    return p.mean, max(lo, 0.0), max(hi, 0.0)


def _colors(keys: list[EntryKey]) -> dict[EntryKey, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(sorted(keys))}


def plot_resolution(entries: list[Entry], metric: str, path: Path) -> PlotOutcome:
    """One panel per dataset: metric (mean over seeds, 95% CI bars) against image size, a line per model."""
    title = f"{SHORT.get(metric, metric)} against resolution"
    entries = _full_test_sets(entries)
    by_ds: dict[str, list[Entry]] = {}
    for e in entries:
        by_ds.setdefault(e.group.dataset, []).append(e)
    multi = {ds: es for ds, es in by_ds.items() if len({e.group.size for e in es}) > 1}
    if not multi:
        return plot_input_size(entries, metric, path)
    ambiguous = ambiguous_variants(entries)
    shown = sorted(multi)[:MAX_PANELS]
    colors = _colors(list({e.key for ds in shown for e in multi[ds]}))
    fig, axes = _grid(len(shown), legend=True)
    for ax, ds in zip(axes, shown):
        by_key: dict[EntryKey, list[Entry]] = {}
        for e in multi[ds]:
            by_key.setdefault(e.key, []).append(e)
        for key, es in sorted(by_key.items()):
            es = sorted(es, key=lambda e: e.group.size)
            pts = np.array([_err(e, metric) for e in es])
            ax.errorbar([e.group.size for e in es], pts[:, 0], yerr=pts[:, 1:].T, marker="o", capsize=3,
                        color=colors[key], label=entry_label(key, ambiguous))
        sizes = sorted({e.group.size for e in multi[ds]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(ds)
        ax.set_xlabel("image size (px)")
        ax.set_ylabel(SHORT.get(metric, metric))
        ax.grid(alpha=0.3)
    seen: dict = {}  # label -> handle over all panels (a model may be missing from some)
    for ax in axes[: len(shown)]:
        handles, labels = ax.get_legend_handles_labels()
        seen.update(zip(labels, handles))
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize=8)
    save_png(fig, path)
    more = f" (first {len(shown)} of {len(multi)} datasets)" if len(multi) > len(shown) else ""
    return PlotOutcome("resolution", title, path,
                       f"Mean over seeds with the mean per-seed 95% bootstrap CI as bars; one panel per dataset{more}.")


def _input_size(e: Entry) -> int:
    sizes = {_int_or_0(r.get("input_size")) for r in e.rows}
    return sizes.pop() if len(sizes) == 1 else 0


def _int_or_0(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def plot_input_size(entries: list[Entry], metric: str, path: Path) -> PlotOutcome:
    """The resolution plot of a study that varies the *encoder input size* at one image size.

    One panel per dataset @ size, a line per model / mode / style through its
    input sizes. A line is drawn only where each input size is one entry (one
    variant): two variants at one input size differ by something else, and
    joining them would mix configurations.
    """
    title = f"{SHORT.get(metric, metric)} against encoder input size"
    panels: dict[GroupKey, dict[tuple[str, str, str], list[Entry]]] = {}
    for e in entries:
        if _input_size(e):
            panels.setdefault(e.group, {}).setdefault((e.key.model, e.key.mode, e.key.style), []).append(e)
    lines = {g: {k: sorted(es, key=_input_size) for k, es in by.items()
                 if len(es) > 1 and len({_input_size(e) for e in es}) == len(es)}
             for g, by in panels.items()}
    lines = {g: by for g, by in lines.items() if by}
    if not lines:
        return PlotOutcome("resolution", title, None,
                           "skipped: every dataset was run at one image size and one encoder input size only.")
    shown = sorted(lines, key=lambda g: g.label)[:MAX_PANELS]
    keys = sorted({k for g in shown for k in lines[g]})
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    colors = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    fig, axes = _grid(len(shown), legend=True)
    for ax, g in zip(axes, shown):
        for k, es in sorted(lines[g].items()):
            pts = np.array([_err(e, metric) for e in es])
            label = " / ".join(x for x in k if x)
            ax.errorbar([_input_size(e) for e in es], pts[:, 0], yerr=pts[:, 1:].T, marker="o", capsize=3,
                        color=colors[k], label=label)
        sizes = sorted({_input_size(e) for es in lines[g].values() for e in es})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(g.title)
        ax.set_xlabel("encoder input size (px)")
        ax.set_ylabel(SHORT.get(metric, metric))
        ax.grid(alpha=0.3)
    seen: dict = {}
    for ax in axes[: len(shown)]:
        handles, labels = ax.get_legend_handles_labels()
        seen.update(zip(labels, handles))
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize=8)
    save_png(fig, path)
    return PlotOutcome("resolution", title, path,
                       "The images at one size, resized to each encoder input size; mean over seeds with the mean "
                       "per-seed 95% bootstrap CI as bars; one panel per dataset @ image size.")


def _per_dataset(entries: list[Entry], summary: Summary, metric: str) -> dict[EntryKey, dict[str, float]]:
    """entry key -> {dataset: mean over seeds} over the summary's datasets at the summary's size."""
    out: dict[EntryKey, dict[str, float]] = {}
    for e in entries:
        if e.group.size == summary.size and e.group.limit == summary.limit and e.group.dataset in summary.datasets:
            v = e.value(metric)
            if math.isfinite(v):
                out.setdefault(e.key, {})[e.group.dataset] = v
    return out


def _summaries_with(entries: list[Entry], summaries: list[Summary], metric: str,
                    ok: Callable[[dict[str, float]], bool]) -> list[tuple[Summary, dict]]:
    out = []
    for s in summaries:
        data = {k: v for k, v in _per_dataset(entries, s, metric).items() if ok(v)}
        if data:
            out.append((s, data))
    return out[:MAX_PANELS]


def plot_boxes(entries: list[Entry], summaries: list[Summary], metric: str, path: Path) -> PlotOutcome:
    """Per model (x mode), the spread of its per-dataset metric over the summary's datasets; one panel per size."""
    title = f"{SHORT.get(metric, metric)} per model across datasets"
    panels = _summaries_with(entries, summaries, metric, lambda v: len(v) >= 2)
    if not panels:
        return PlotOutcome("boxes", title, None, "skipped: no model has results on two or more summary datasets.")
    ambiguous = ambiguous_variants(entries)
    n_keys = max(len(d) for _, d in panels)
    fig = new_figure(max(6.0, 0.9 * n_keys + 2), 3.8 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, squeeze=False)).ravel()
    rng = np.random.default_rng(0)
    for ax, (s, data) in zip(axes, panels):
        keys = sorted(data, key=lambda k: -float(np.median(list(data[k].values()))))
        values = [list(data[k].values()) for k in keys]
        ax.boxplot(values, tick_labels=[entry_label(k, ambiguous) for k in keys], showmeans=True)
        for i, v in enumerate(values, 1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=12, color="black", alpha=0.6, zorder=3)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_ylabel(SHORT.get(metric, metric))
        ax.set_title(f"{s.size} px: {len(s.datasets)} dataset(s)")
        ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)
    return PlotOutcome("boxes", title, path, "One point per dataset (mean over seeds) over the summary's datasets; "
                       "green triangle: mean; models ordered by median.")


def _n_train(entries: list[Entry], s: Summary) -> dict[str, float]:
    out = {}
    for e in entries:
        if e.group.size == s.size and e.group.limit == s.limit:
            for r in e.rows:
                try:
                    out[e.group.dataset] = float(r.get("n_train"))
                except (TypeError, ValueError):
                    pass
    return out


def _plain_log_ticks(ax, values: list[float]) -> None:
    """Training-set sizes as plain numbers: ticks at the sizes themselves when few, else 10^k."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if len(values) <= 6:
        ax.set_xticks(values)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def plot_train_size(entries: list[Entry], summaries: list[Summary], metric: str, path: Path) -> PlotOutcome:
    """Metric against the training-set size (log axis) per dataset, with a least-squares line per model."""
    title = f"{SHORT.get(metric, metric)} against training-set size"
    panels = []
    for s, data in _summaries_with(entries, summaries, metric, lambda v: len(v) >= 2):
        n = _n_train(entries, s)
        data = {k: v for k, v in data.items() if len({n.get(d) for d in v if n.get(d)}) >= 2}
        if data:
            panels.append((s, data, n))
    if not panels:
        return PlotOutcome("train_size", title, None,
                           "skipped: no model has results on two datasets of different training-set sizes.")
    ambiguous = ambiguous_variants(entries)
    colors = _colors(list({k for _, d, _ in panels for k in d}))
    fig, axes = _grid(len(panels), 5.0, 3.8)
    for ax, (s, data, n) in zip(axes, panels):
        for key, per in sorted(data.items()):
            ds = [d for d in per if n.get(d)]
            x, y = np.log10([n[d] for d in ds]), np.array([per[d] for d in ds])
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 20)
            ax.scatter(10 ** x, y, color=colors[key], s=18)
            ax.plot(10 ** xs, icpt + slope * xs, color=colors[key],
                    label=f"{entry_label(key, ambiguous)} ({slope:+.3f}/decade)")
        ax.set_xscale("log")
        _plain_log_ticks(ax, sorted({v for v in n.values()}))
        ax.set_xlabel("training images")
        ax.set_ylabel(SHORT.get(metric, metric))
        ax.set_title(f"{s.size} px")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, path)
    return PlotOutcome("train_size", title, path, "One point per summary dataset (mean over seeds); lines: least "
                       f"squares fit of {SHORT.get(metric, metric)} on log10(training images) per model.")


def plot_prompt_styles(entries: list[Entry], metric: str, path: Path) -> PlotOutcome:
    """Zero-shot cells that differ only by prompt style: bars with 95% CIs, one panel per model x dataset x size."""
    title = f"Prompt styles ({SHORT.get(metric, metric)}, zero-shot)"
    by_panel: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.key.style:
            by_panel.setdefault((e.key.model, e.key.mode, e.group), []).append(e)
    panels = [(k, es) for k, es in sorted(by_panel.items()) if len({e.key.style for e in es}) >= 2]
    if not panels:
        return PlotOutcome("prompt_styles", title, None, "skipped: no zero-shot cells that differ by prompt style.")
    shown = panels[:MAX_PANELS]
    fig, axes = _grid(len(shown), 4.2, 3.6)
    for ax, ((model, mode, group), es) in zip(axes, shown):
        es = sorted(es, key=lambda e: e.key.style)
        pts = np.array([_err(e, metric) for e in es])
        x = np.arange(len(es))
        ax.bar(x, pts[:, 0], yerr=pts[:, 1:].T, capsize=3, color="#4c72b0")
        base = es[0].metrics["baseline_acc"].mean
        if metric == "acc" and math.isfinite(base):
            ax.axhline(base, color="gray", ls="--", lw=1, label="majority ACC")
        if metric == "auc":
            ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.set_xticks(x, [e.key.style for e in es], rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{model} · {group.title}", fontsize=9)
        ax.set_ylabel(SHORT.get(metric, metric))
    save_png(fig, path)
    more = f" (first {len(shown)} of {len(panels)} panels)" if len(panels) > len(shown) else ""
    return PlotOutcome("prompt_styles", title, path,
                       f"Mean over seeds with the mean per-seed 95% bootstrap CI; dotted line: chance AUC{more}.")
