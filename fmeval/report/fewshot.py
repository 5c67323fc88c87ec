"""Few-shot views: the episode section of one run, and the summary over a sweep's runs.

Every (K, draw) of a few-shot sweep is an ordinary run with its own report;
its ``extras["fewshot"]`` (episode record, selection rule) is rendered by the
``fewshot`` section registered here. A sweep (``--shots 1,2,4 --draws 5``) or
``fmeval fewshot report`` then groups runs into *curves* - one per model x
mode x selection rule (x any other config difference, shown as a variant) -
and writes ``<reports>/fewshot-<stamp>/summary.{json,md,png}`` atomically:
mean ± sample std over draws per K, every draw's metrics with its run id,
and the few-shot curve (metric against K, a ±std band, the majority-class
baseline as a dashed line). In a study, each seed is one draw (the
episode is a function of seed and draw), so the study's runs group the
same way.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fmeval.io import atomic_write_json, atomic_write_text
from fmeval.report.fmt import fmt, md_table
from fmeval.report.sections import SECTIONS, Section

if TYPE_CHECKING:
    from rich.console import Console

    from fmeval.metrics.aggregate import Stat
    from fmeval.report.schema import RunResult

CURVE_METRICS = ("auc", "acc", "balanced_acc")
SUMMARY_FILES = ("summary.json", "summary.md", "summary.png")


# -- the per-run section ------------------------------------------------------------
def _counts(fs: dict) -> str:
    ep = fs.get("episode") or {}
    return ", ".join(f"{k} {v}" for k, v in (ep.get("counts") or {}).items())


def _fewshot_md(fs: Any, r: "RunResult") -> list[str]:
    if not isinstance(fs, dict):
        return []
    ep, vep = fs.get("episode") or {}, fs.get("val_episode") or {}
    rows = [
        ["K (training images per class)", fs.get("shots")],
        ["draw / seed", f"{fs.get('draw')} / {fs.get('seed')}"],
        ["training images", f"{fs.get('n_train')} ({_counts(fs)})"],
        ["episode indices sha256", f"`{str(ep.get('sha256', ''))[:16]}`"],
        ["sampling rule", ep.get("rule", "")],
        ["selection", f"{fs.get('selection')}: {fs.get('selection_rule')}"],
        ["validation images used", fs.get("n_val_used")],
    ]
    if vep:
        rows.append(["validation draw sha256", f"`{str(vep.get('sha256', ''))[:16]}`"])
    if ep.get("short"):
        rows.append(["classes with fewer than K images", ", ".join(ep["short"])])
    return ["## Few-shot episode", "", md_table(["", ""], rows), "",
            "The episode's training indices (in the original split) are in results.json, extras.fewshot.", ""]


def _fewshot_term(fs: Any, r: "RunResult", console: "Console") -> None:
    if isinstance(fs, dict):
        console.print(f"few-shot: K={fs.get('shots')} draw {fs.get('draw')} seed {fs.get('seed')}: "
                      f"{fs.get('n_train')} training images ({_counts(fs)}); selection {fs.get('selection')} "
                      f"({fs.get('n_val_used')} validation images used)", highlight=False, markup=False)


SECTIONS.add("fewshot", Section("few-shot episode", markdown=_fewshot_md, terminal=_fewshot_term))


# -- curves over runs -----------------------------------------------------------------
@dataclass
class FewShotCurve:
    """The runs of one model x mode x selection x variant, by K; each run is one draw."""

    model: str
    mode: str
    dataset: str
    size: Any
    selection: str
    variant: str
    baseline: dict[str, float] = field(default_factory=dict)
    draws: list[dict[str, Any]] = field(default_factory=list)  # {shots, draw, seed, run_id, metrics}
    label: str = ""

    def stats(self) -> dict[int, dict[str, "Stat"]]:
        from fmeval.metrics.aggregate import fewshot_summary

        per_k: dict[int, list[dict]] = {}
        for d in self.draws:
            per_k.setdefault(int(d["shots"]), []).append(d["metrics"])
        return fewshot_summary(per_k)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "mode": self.mode, "dataset": self.dataset,
                "size": self.size, "selection": self.selection, "variant": self.variant,
                "baseline": self.baseline,
                "per_k": {str(k): {m: s.to_dict() for m, s in per.items()} for k, per in self.stats().items()},
                "draws": sorted(self.draws, key=lambda d: (d["shots"], d["seed"], d["draw"]))}


#: What a few-shot curve varies along (everything else is its variant).
CURVE_AXES = ("mode", "model", "dataset", "size", "seed", "fewshot.shots", "fewshot.draw", "fewshot.selection")


def _variant(r: "RunResult") -> str:
    """What the run computes beyond model, mode, dataset, size, K, draw and seed (8 hex digits)."""
    from fmeval.config import variant_digest

    return variant_digest(r.config, r.mode, CURVE_AXES)


def fewshot_curves(runs: Iterable["RunResult"]) -> list[FewShotCurve]:
    """Group few-shot runs (those with ``extras["fewshot"]``) into curves, labelled unambiguously."""
    curves: dict[tuple, FewShotCurve] = {}
    for r in runs:
        fs = r.extras.get("fewshot")
        if not isinstance(fs, dict) or fs.get("shots") is None:
            continue
        sel = str(fs.get("selection"))
        key = (r.dataset_flag, str(r.dataset.get("size")), r.model_name, r.mode, sel, _variant(r))
        c = curves.get(key)
        if c is None:
            c = curves[key] = FewShotCurve(r.model_name, r.mode, r.dataset_flag, r.dataset.get("size"), sel, key[-1],
                                           baseline={m: v for m, v in r.test.baseline.items()})
        c.draws.append({"shots": int(fs["shots"]), "draw": int(fs.get("draw", 0)), "seed": int(fs.get("seed", r.seed)),
                        "run_id": r.run_id, "n_train": fs.get("n_train"),
                        "episode_sha256": (fs.get("episode") or {}).get("sha256"),
                        "metrics": {m: mv.value for m, mv in r.test.metrics.items()}})
    out = sorted(curves.values(), key=lambda c: (c.dataset, str(c.size), c.model, c.mode, c.selection, c.variant))
    _label(out)
    return out


def _label(curves: list[FewShotCurve]) -> None:
    groups = {(c.dataset, str(c.size)) for c in curves}
    sels = {}
    variants = {}
    for c in curves:
        sels.setdefault((c.dataset, c.size, c.model, c.mode), set()).add(c.selection)
        variants.setdefault((c.dataset, c.size, c.model, c.mode, c.selection), set()).add(c.variant)
    for c in curves:
        label = f"{c.model} · {c.mode}"
        if len(sels[(c.dataset, c.size, c.model, c.mode)]) > 1:
            label += f" · {c.selection}"
        if len(variants[(c.dataset, c.size, c.model, c.mode, c.selection)]) > 1:
            label += f" [{c.variant}]"
        if len(groups) > 1:
            label += f" ({c.dataset}@{c.size})"
        c.label = label


# -- the summary files ----------------------------------------------------------------
def _reference(curves: list[FewShotCurve], metric: str) -> dict[str, float]:
    values = {c.baseline.get(metric) for c in curves}
    return {"majority class": values.pop()} if len(values) == 1 and None not in values else {}


def summary_markdown(curves: list[FewShotCurve], metric: str, image: str | None) -> str:
    from fmeval.metrics.aggregate import fewshot_table

    n_draws = sorted({len([d for d in c.draws if d["shots"] == k]) for c in curves for k in c.stats()})
    lines = ["# Few-shot summary", "",
             f"{len(curves)} curve(s), {sum(len(c.draws) for c in curves)} runs; draws per K: "
             f"{', '.join(map(str, n_draws))}. Values: mean ± sample std (ddof 1) of the test metric over "
             "draws; each draw is its own run and report. Selection rules: "
             f"{', '.join(sorted({c.selection for c in curves}))}.", ""]
    stats = {c.label: c.stats() for c in curves}
    for m in dict.fromkeys([metric, *CURVE_METRICS]):
        header, rows = fewshot_table(stats, m, digits=3)
        base = _reference(curves, m)
        note = f" (majority-class baseline {fmt(base['majority class'], 3)})" if base else ""
        lines += [f"## {m}{note}", "", md_table(header, rows), ""]
    if image:
        lines += [f"![few-shot curve]({image})", ""]
    header = ["curve", "K", "draw", "seed", *CURVE_METRICS, "episode sha256", "run"]
    rows = [[c.label, d["shots"], d["draw"], d["seed"], *[fmt(d["metrics"].get(m), 4) for m in CURVE_METRICS],
             f"`{str(d.get('episode_sha256') or '')[:12]}`", f"`{d['run_id']}`"]
            for c in curves for d in c.to_dict()["draws"]]
    lines += ["## Every draw", "", md_table(header, rows), ""]
    return "\n".join(lines)


def write_fewshot_summary(curves: list[FewShotCurve], root: str | Path, *, metric: str = "auc") -> Path:
    """Write ``<root>/fewshot-<stamp>/summary.{json,png,md}`` (atomically); returns the folder."""
    from fmeval.report.sweep_plots import plot_fewshot_curve

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(root) / f"fewshot-{stamp}_{secrets.token_hex(2)}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "summary.json", {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metric": metric,
        "curves": [c.to_dict() for c in curves]})
    image = None
    try:
        plot_fewshot_curve({c.label: c.stats() for c in curves}, metric, folder / "summary.png",
                           reference=_reference(curves, metric))
        image = "summary.png"
    except ImportError:  # matplotlib is a dependency; a summary must not die for a plot
        pass
    atomic_write_text(folder / "summary.md", summary_markdown(curves, metric, image))
    return folder


def print_fewshot_summary(curves: list[FewShotCurve], console: "Console", *, metric: str = "auc",
                          folder: Path | None = None) -> None:
    from rich.table import Table

    from fmeval.metrics.aggregate import fewshot_table

    header, rows = fewshot_table({c.label: c.stats() for c in curves}, metric, digits=3)
    t = Table(title=f"few-shot {metric} (test; mean ± std over draws)")
    for h in header:
        t.add_column(h, justify="left" if h == "model" else "right", no_wrap=h == "model")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    base = _reference(curves, metric)
    if base:
        console.print(f"majority-class baseline {metric}: {fmt(base['majority class'], 3)}", highlight=False)
    if folder is not None:
        console.print(f"summary: {folder}", style="bold", markup=False, highlight=False)
