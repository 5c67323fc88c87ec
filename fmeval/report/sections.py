"""Mode-specific parts of a report, registered by the ``extras`` key they render.

A mode puts its facts into ``RunResult.extras`` (a k sweep, a probe grid,
training curves, a prompt-style comparison, few-shot draws, ...); the one
reporter renders every key that has a registered section - in Markdown, on
the terminal and as plots - so no mode writes files or prints on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fmeval.registry import Registry
from fmeval.report.fmt import fmt, fmt_ci, md_table

if TYPE_CHECKING:
    from rich.console import Console

    from fmeval.report.schema import RunResult

MarkdownFn = Callable[[Any, "RunResult"], list[str]]
TerminalFn = Callable[[Any, "RunResult", "Console"], None]
PlotFn = Callable[[Any, "RunResult", Path], list[str]]


@dataclass(frozen=True)
class Section:
    title: str
    markdown: MarkdownFn | None = None
    terminal: TerminalFn | None = None
    plot: PlotFn | None = None


SECTIONS: Registry[Section] = Registry("report section")


def _md(title: str, header: list[str], rows: list[list[Any]], notes: list[str] = ()) -> list[str]:
    return [f"## {title}", "", md_table(header, rows), "", *notes, ""] if rows else []


# -- kNN: k chosen on validation ---------------------------------------------
def _k_sweep_md(sweep: Any, r: "RunResult") -> list[str]:
    metric = r.selection.get("select_metric", "auc")
    rows = [[row.get("k"), fmt(row.get(f"val_{metric}"), 4)] for row in sweep or []]
    return _md("k sweep (validation)", ["k", f"val {metric}"], rows,
               [f"Selected k = {r.selection.get('k')} on validation; test reported for that k only."])


SECTIONS.add("k_sweep", Section("k sweep", markdown=_k_sweep_md))


# -- linear probe grid ----------------------------------------------------------
def _grid_md(grid: Any, r: "RunResult") -> list[str]:
    rows = [[g.get("lr"), g.get("weight_decay"), fmt(g.get("val_loss")), g.get("best_epoch")] for g in grid or []]
    sel = r.selection
    if "best_epoch" not in sel and "epoch" in sel:  # few-shot, fixed: one head, no validation
        return _md("Probe (fixed hyper-parameters, no validation data)", ["lr", "weight decay", "val loss", "epoch"],
                   rows, [f"One head, lr {sel.get('lr')}, weight decay {sel.get('weight_decay')}, trained for all "
                          f"epochs; the last epoch ({sel.get('epoch')}) is kept."])
    return _md("Probe grid (validation loss)", ["lr", "weight decay", "val loss", "best epoch"], rows,
               [f"Selected lr {sel.get('lr')}, weight decay {sel.get('weight_decay')}, epoch "
                f"{sel.get('best_epoch')} (0 = the unchanged initial head)."])


SECTIONS.add("grid", Section("probe grid", markdown=_grid_md))


# -- training curves ------------------------------------------------------------
def _curves_plot(curves: Any, r: "RunResult", run_dir: Path) -> list[str]:
    from fmeval.report.plots import plot_curves

    return ["curves.png"] if isinstance(curves, dict) and plot_curves(curves, run_dir / "curves.png") else []


SECTIONS.add("curves", Section("training curves", plot=_curves_plot))


# -- fine-tuning summary ----------------------------------------------------------
def _training_md(t: Any, r: "RunResult") -> list[str]:
    if not isinstance(t, dict):
        return []
    p = t.get("params") or {}
    rows = [
        ["trainable / total parameters", f"{p.get('trainable', '?'):,} / {p.get('total', '?'):,}"
         if isinstance(p.get("trainable"), int) else "?"],
        ["best epoch (validation)", t.get("best_epoch")],
        ["epochs run", f"{t.get('epochs_run')}" + (" (early stop)" if t.get("stopped_early") else "")],
        ["time per epoch", f"{fmt(t.get('time_per_epoch_s'), 1)} s"],
        ["peak memory", ", ".join(f"{k} {v}" for k, v in (t.get("peak_memory") or {}).items())],
        ["adapter folder", t.get("adapter_path", "")],
    ]
    return _md("Training", ["", ""], rows)


def _training_term(t: Any, r: "RunResult", console: "Console") -> None:
    p = (t or {}).get("params") or {}
    if p:
        console.print(f"trainable params: {p.get('trainable', 0):,} / {p.get('total', 0):,}", highlight=False)
    if (t or {}).get("adapter_path"):
        console.print(f"adapter: {t['adapter_path']}", highlight=False, markup=False)


SECTIONS.add("training", Section("training", markdown=_training_md, terminal=_training_term))


# -- prompt-style comparison ------------------------------------------------------
def _comparison_md(rows: Any, r: "RunResult") -> list[str]:
    split = "test" if r.config.get("zeroshot", {}).get("test_all") else "val"
    body = []
    for row in rows or []:
        mark = " (selected)" if row.get("style") == r.selection.get("style") else ""
        body.append([f"{row.get('style')}{mark}", row.get("n_prompts"),
                     fmt(row.get("acc"), 3), fmt(row.get("balanced_acc"), 3),
                     f"{fmt(row.get('auc'), 3)} {fmt_ci(*(row.get('auc_ci') or [None, None]), 3)}"])
        if row.get("delta_auc_vs_selected") is not None:
            body[-1].append(f"{fmt(row['delta_auc_vs_selected'], 3)} "
                            f"{fmt_ci(*(row.get('delta_auc_ci') or [None, None]), 3)}")
    header = ["style", "prompts", "ACC", "bal. ACC", "AUC (95% CI)"]
    if body and len(body[0]) > len(header):
        header.append("ΔAUC vs selected (paired 95% CI)")
    return _md(f"Prompt styles ({split} split)", header, body,
               [f"Style chosen on validation AUC: `{r.selection.get('style')}`; the test metrics above "
                "are that style's."])


def _comparison_term(rows: Any, r: "RunResult", console: "Console") -> None:
    from rich.markup import escape
    from rich.table import Table

    split = "test" if r.config.get("zeroshot", {}).get("test_all") else "val"
    t = Table(title=f"prompt styles ({split})")
    for c in ("style", "n", "ACC", "bACC", "AUC", "95% CI"):
        t.add_column(c)
    for row in rows or []:
        sel = "* " if row.get("style") == r.selection.get("style") else ""
        t.add_row(escape(sel + str(row.get("style"))), str(row.get("n_prompts")), fmt(row.get("acc"), 3),
                  fmt(row.get("balanced_acc"), 3), fmt(row.get("auc"), 3),
                  fmt_ci(*(row.get("auc_ci") or [None, None]), 3))
    console.print(t)
    vals = [row.get("auc") for row in rows or [] if isinstance(row.get("auc"), float)]
    if vals:
        console.print(f"spread (best-worst) AUC {max(vals) - min(vals):.3f}; * = chosen on val", highlight=False)


def _comparison_plot(rows: Any, r: "RunResult", run_dir: Path) -> list[str]:
    from fmeval.report.plots import plot_bars

    if not rows:
        return []
    plot_bars(rows, "style", ("acc", "balanced_acc", "auc"), run_dir / "prompt_styles.png",
              title=f"{r.model_name} zero-shot on {r.dataset_flag}: prompt styles",
              baseline=r.test.baseline.get("acc"))
    return ["prompt_styles.png"]


SECTIONS.add("comparison", Section("prompt styles", markdown=_comparison_md, terminal=_comparison_term,
                                   plot=_comparison_plot))


# -- a scored predictions file (fmeval score) ----------------------------------------
def _predictions_md(p: Any, r: "RunResult") -> list[str]:
    if not isinstance(p, dict):
        return []
    rows = [["file", f"`{p.get('predictions_file')}`"], ["sha256", f"`{p.get('predictions_sha256')}`"],
            ["rows", p.get("n")], ["split scored", p.get("split", "test")],
            ["header", ", ".join(p.get("header") or []) or "none (MedMNIST Evaluator layout)"]]
    return _md("Scored predictions file", ["", ""], rows)


def _predictions_term(p: Any, r: "RunResult", console: "Console") -> None:
    if isinstance(p, dict):
        console.print(f"predictions: {p.get('predictions_file')} (sha256 {str(p.get('predictions_sha256'))[:16]}, "
                      f"{p.get('n')} rows, {p.get('split', 'test')} split)", highlight=False, markup=False)


SECTIONS.add("predictions", Section("scored predictions file", markdown=_predictions_md, terminal=_predictions_term))

# Sections that live in their own modules register themselves on import.
from fmeval.report import fewshot as _fewshot, robustness as _robustness  # noqa: E402,F401


# -- multi-domain training (issue 24) ----------------------------------------------
def _multidomain_md(m: Any, r: "RunResult") -> list[str]:
    if not isinstance(m, dict):
        return []
    flag = r.dataset.get("flag", "")
    tb, vb = (m.get("train_batches") or {}), (m.get("val_batches") or {})
    rows = [
        ["multi-domain run (shared by its per-dataset reports)", f"`{m.get('run_id')}`"],
        ["datasets trained together", ", ".join(m.get("datasets") or [])],
        ["head of this dataset", f"`{m.get('head')}`"],
        ["steps per epoch (all datasets)", m.get("steps_per_epoch")],
        ["batches of this dataset (train / val)", f"{tb.get(flag, '?')} / {vb.get(flag, '?')}"],
        ["loss weighting", f"{m.get('domain_weights')} (this dataset: train x{fmt(m.get('train_weight'), 4)}, "
                           f"val x{fmt(m.get('val_weight'), 4)})"],
        ["per-dataset BatchNorm statistics", "yes" if m.get("domain_bn") else "no (shared)"],
        ["ordinal loss", m.get("ordinal_loss") or "cross-entropy over the grades"],
    ]
    return _md("Multi-domain training", ["", ""], rows,
               ["One backbone with one linear head per dataset, trained on all the datasets above at once; "
                "the best epoch was chosen on their validation splits together. This report scores this "
                "dataset's head on its own test split."])


def _multidomain_term(m: Any, r: "RunResult", console: "Console") -> None:
    if isinstance(m, dict):
        console.print(f"multi-domain run {m.get('run_id')}: {len(m.get('datasets') or [])} datasets, "
                      f"head {m.get('head')}", highlight=False, markup=False, soft_wrap=True)


SECTIONS.add("multidomain", Section("multi-domain training", markdown=_multidomain_md, terminal=_multidomain_term))
