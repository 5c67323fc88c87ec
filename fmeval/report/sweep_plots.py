"""Plots of sweeps: the few-shot curve and metric-versus-severity under corruptions.

Figures come from the run report's own :func:`fmeval.report.plots.new_figure`
(matplotlib's Agg canvas without pyplot: no global backend switch, safe in
threads and headless CI) and are written atomically by its ``save_png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from fmeval.metrics.aggregate import RobustnessSummary, Stat
from fmeval.report.plots import new_figure, save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _save(fig: "Figure", path: str | Path) -> Path:
    path = Path(path)
    save_png(fig, path)
    return path


def plot_fewshot_curve(
    curves: Mapping[str, Mapping[int, Mapping[str, Stat]]],
    metric: str,
    path: str | Path,
    *,
    reference: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """``metric`` against K (log2 axis) per model, mean line with a ±std band.

    ``curves[model][K][metric]`` as :func:`fmeval.metrics.aggregate.fewshot_summary`
    returns per model. ``reference``: horizontal dashed lines, e.g. the
    full-training-set value of each model or the majority-class baseline.
    """
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    shots: set[int] = set()
    for i, (model, per_k) in enumerate(curves.items()):
        ks = sorted(k for k in per_k if metric in per_k[k])
        if not ks:
            continue
        shots.update(ks)
        mean = np.array([per_k[k][metric].mean for k in ks], dtype=np.float64)
        std = np.array([per_k[k][metric].std for k in ks], dtype=np.float64)
        n = max(per_k[k][metric].n for k in ks)
        color = f"C{i % 10}"
        ax.plot(ks, mean, "o-", color=color, label=f"{model} (n = {n} draws)")
        band = np.isfinite(std) & np.isfinite(mean)
        if band.any():
            ax.fill_between(np.array(ks)[band], (mean - std)[band], (mean + std)[band], color=color, alpha=0.2, lw=0)
    for j, (name, value) in enumerate((reference or {}).items()):
        if value is not None and math.isfinite(value):
            ax.axhline(value, ls="--", lw=1, color=f"C{(len(curves) + j) % 10}", label=name)
    if shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(shots), [str(k) for k in sorted(shots)])
        ax.minorticks_off()
    ax.set_xlabel("K (labelled training images per class)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Few-shot curve: {metric} (mean ± std over draws)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_robustness(summary: RobustnessSummary, path: str | Path, *, title: str | None = None) -> Path:
    """One line per corruption from the clean value (severity 0) through severities 1..5."""
    fig = new_figure(7.6, 4.4)
    ax = fig.add_subplot()
    severities = sorted({s for t in summary.corrupted.values() for s in t})
    for i, (corr, per_sev) in enumerate(summary.corrupted.items()):
        xs = [0, *sorted(per_sev)]
        ys = [summary.clean, *(per_sev[s] for s in sorted(per_sev))]
        style = "o-" if i < 10 else "s--"  # more corruptions than colours: vary the line too
        ax.plot(xs, ys, style, color=f"C{i % 10}", ms=4, lw=1.2, label=corr)
    if summary.per_severity:
        xs = [0, *sorted(summary.per_severity)]
        ys = [summary.clean, *(summary.per_severity[s] for s in sorted(summary.per_severity))]
        ax.plot(xs, ys, "k-", lw=2.5, label="mean over corruptions")
    ax.axhline(summary.clean, color="gray", ls=":", lw=1)
    ax.set_xticks([0, *severities], ["clean", *map(str, severities)])
    ax.set_xlabel("severity")
    ax.set_ylabel(summary.metric + (" (higher is better)" if summary.higher_is_better else " (lower is better)"))
    drop = summary.relative_drop
    drop_s = f"; mean relative drop {drop:.1%}" if math.isfinite(drop) else ""
    ax.set_title(title or f"{summary.metric} under corruptions{drop_s}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
