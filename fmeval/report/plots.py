"""Plots of one run (matplotlib is imported only when a report is written).

Figures are drawn on the Agg canvas without pyplot (no global backend switch,
no GUI, safe in worker processes) and saved atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from fmeval.io import atomic_path
from fmeval.metrics import MetricsReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(w: float, h: float) -> "Figure":
    """A Figure on the Agg canvas without pyplot: no global backend switch, no GUI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: "Figure", path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_confusion(rep: MetricsReport, path: Path) -> None:
    cm = np.asarray(rep.confusion, dtype=np.float64)
    k = cm.shape[0]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * k
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    names = [_short(c) for c in rep.class_names]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(f"Confusion matrix (n = {rep.n})")
    save_png(fig, path)


def plot_reliability(rep: MetricsReport, path: Path) -> None:
    rel = rep.reliability
    edges = np.asarray(rel["edges"], dtype=np.float64)
    acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=np.float64)
    count = np.asarray(rel["count"], dtype=np.float64)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = new_figure(5, 5.5)
    ax, axh = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centers, np.nan_to_num(acc), width=width, edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ece = rep.metrics.get("ece")
    ax.set_title("Reliability diagram" + (f" (ECE = {ece.value:.3f})" if ece and math.isfinite(ece.value) else ""))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    axh.bar(centers, count, width=width, color="gray")
    axh.set_xlabel("confidence (probability of the predicted label)")
    axh.set_ylabel("count")
    axh.set_xlim(0, 1)
    save_png(fig, path)


def _numeric_series(curves: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, values in curves.items():
        try:
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 1 and arr.size:
            out[str(key)] = arr
    return out


def plot_curves(curves: Mapping[str, Any], path: Path) -> bool:
    """Losses on the left panel, everything else (AUC, ACC, lr...) on the right."""
    series = _numeric_series(curves)
    x_key = next((k for k in ("epoch", "step", "iteration") if k in series), None)
    x = series.pop(x_key) if x_key else None
    if not series:
        return False
    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [p for p in (losses, others) if p]
    fig = new_figure(5 * len(panels), 4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        for key, y in panel.items():
            xs = x[: y.size] if x is not None and x.size >= y.size else np.arange(y.size)
            ax.plot(xs, y, marker="o" if y.size <= 30 else None, label=key)
        ax.set_xlabel(x_key or "index")
        ax.legend()
        ax.grid(alpha=0.3)
    save_png(fig, path)
    return True


def plot_bars(rows: list[Mapping[str, Any]], label_key: str, metrics: tuple[str, ...], path: Path,
              *, title: str, baseline: float | None = None) -> None:
    """Grouped bars with CI whiskers (``<m>_ci`` = [lo, hi]) per row: prompt styles and the like."""
    fig = new_figure(max(6, 0.6 * len(rows) + 3), 4)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / max(len(metrics), 1)
    for j, m in enumerate(metrics):
        vals = np.array([float(r.get(m) if r.get(m) is not None else np.nan) for r in rows])
        ci = [r.get(f"{m}_ci") or [np.nan, np.nan] for r in rows]
        lo = np.array([float(c[0]) if c[0] is not None else np.nan for c in ci])
        hi = np.array([float(c[1]) if c[1] is not None else np.nan for c in ci])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        err = np.nan_to_num(err)
        ax.bar(x + (j - (len(metrics) - 1) / 2) * width, vals, width, yerr=err, capsize=2, label=m)
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color="gray", ls="--", lw=1, label="majority ACC")
    ax.set_xticks(x, [str(r[label_key]) for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_png(fig, path)
