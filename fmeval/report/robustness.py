"""The report section of ``fmeval robustness``: clean vs MedMNIST-C corrupted test metrics.

Renders ``extras["robustness"]`` (written by :mod:`fmeval.modes.robustness`)
in the run's Markdown report, on the terminal and as one plot per shown
metric (a line per corruption from clean through severities 1..5, and the
mean over corruptions).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmeval.report.fmt import fmt, md_table
from fmeval.report.sections import SECTIONS, Section

if TYPE_CHECKING:
    from rich.console import Console

    from fmeval.report.schema import RunResult

PLOTTED = ("auc", "acc")
SHOWN = ("auc", "acc", "balanced_acc")  # on the terminal; the Markdown report has every metric


def _pct(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) or v != v else f"{100 * v:+.1f}%"


def _summaries(rob: dict) -> dict[str, dict]:
    return {m: s for m, s in (rob.get("summary") or {}).items() if isinstance(s, dict)}


def severity_rows(s: dict, severities: list) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one metric: a row per corruption (severity columns, mean, relative drop)."""
    header = ["corruption", *[f"sev {v}" for v in severities], "mean", "rel. drop"]
    rows = []
    for c, per in (s.get("corrupted") or {}).items():
        rows.append([c, *[fmt(per.get(str(v)), 3) for v in severities], fmt((s.get("per_corruption") or {}).get(c), 3),
                     _pct((s.get("relative_drop_per_corruption") or {}).get(c))])
    per_sev = s.get("per_severity") or {}
    rows.append(["**mean over corruptions**", *[fmt(per_sev.get(str(v)), 3) for v in severities],
                 fmt(s.get("mean_corrupted"), 3), _pct(s.get("relative_drop"))])
    return header, rows


def _overview_rows(rob: dict) -> list[list[str]]:
    return [[m, fmt(s.get("clean"), 4), fmt(s.get("mean_corrupted"), 4), fmt(s.get("drop"), 4),
             _pct(s.get("relative_drop"))] for m, s in _summaries(rob).items()]


def _markdown(rob: Any, r: "RunResult") -> list[str]:
    if not isinstance(rob, dict):
        return []
    sev = rob.get("severities") or []
    lines = [f"## Robustness under MedMNIST-C corruptions (test split; head {rob.get('head')}, "
             f"corruption seed {rob.get('seed')}, medmnistc {rob.get('medmnistc')})", "",
             f"{len(rob.get('corruptions') or [])} corruptions x severities {', '.join(map(str, sev))}. "
             f"The test metrics above are the clean ones. {rob.get('note', '')}."
             + (f" Corruption set: {rob['corruptions_like']['rule']}."
                if isinstance(rob.get("corruptions_like"), dict) else "")
             + (f" MedMNIST-C defines its severities on 224 px images; at {r.dataset.get('size')} px the same "
                "parameters act on fewer pixels, so compare robustness only at one size."
                if r.dataset.get("size") not in (None, 224) else ""), "",
             md_table(["metric", "clean", "mean corrupted", "drop", "relative drop"], _overview_rows(rob)), ""]
    lines += _medmnistc_lines(rob)
    for m, s in _summaries(rob).items():
        if m in PLOTTED:
            header, rows = severity_rows(s, sev)
            lines += [f"### {m} per corruption and severity (clean {fmt(s.get('clean'), 3)})", "",
                      md_table(header, rows), ""]
    return lines


def _medmnistc_lines(rob: dict) -> list[str]:
    """MedMNIST-C's balanced error (BE) and relative BE vs AlexNet beside the balanced accuracy drop,
    so the run reads against the MedMNIST-C paper's tables."""
    e = rob.get("medmnistc_errors")
    if not isinstance(e, dict):
        return []
    if "unavailable" in e:
        return [f"MedMNIST-C balanced error vs AlexNet: not available ({e['unavailable']}).", ""]
    drop = ((_summaries(rob).get("balanced_acc") or {}).get("relative_drop_per_corruption") or {})
    rows = [[c, _pct(drop.get(c)), fmt(e["be"].get(c), 3), fmt((e.get("rbe") or {}).get(c), 3)] for c in e["be"]]
    rows.append(["**mean over corruptions**", _pct((_summaries(rob).get("balanced_acc") or {}).get("relative_drop")),
                 fmt(e.get("mean_be"), 3), fmt(e.get("mean_rbe"), 3)])
    caveats = "".join(f" Not strictly comparable: {c}." for c in e.get("caveats") or [])
    return [f"### MedMNIST-C balanced error vs AlexNet (clean error {fmt(e.get('clean_error'), 3)})", "",
            f"BE = error / AlexNet's error and rBE = (error - clean error) / (AlexNet's error - AlexNet's clean "
            f"error), error = 1 - balanced accuracy averaged over severities; below 1: more robust than AlexNet. "
            f"Reference: {e.get('reference')}.{caveats}", "",
            md_table(["corruption", "bACC rel. drop", "BE", "rBE"], rows), ""]


def _terminal(rob: Any, r: "RunResult", console: "Console") -> None:
    from rich.table import Table

    if not isinstance(rob, dict):
        return
    sev = rob.get("severities") or []
    s = _summaries(rob).get("auc") or next(iter(_summaries(rob).values()), None)
    if s is not None:
        header, rows = severity_rows(s, sev)
        t = Table(title=f"{s.get('metric')} under MedMNIST-C corruptions (clean {fmt(s.get('clean'), 3)})")
        for h in header:
            t.add_column(h, justify="left" if h == "corruption" else "right")
        for row in rows:
            t.add_row(*[c.replace("**", "") for c in row])
        console.print(t)
    for m, clean, mean, _, rel in _overview_rows(rob):
        if m not in SHOWN:
            continue
        console.print(f"{m}: clean {clean}, mean corrupted {mean}, relative drop {rel}", highlight=False)
    e = rob.get("medmnistc_errors")
    if isinstance(e, dict) and "mean_be" in e:
        console.print(f"MedMNIST-C: mean BE {fmt(e['mean_be'], 3)}, mean rBE {fmt(e['mean_rbe'], 3)} "
                      "(vs AlexNet as published with MedMNIST-C, not run here)", highlight=False)


def _plot(rob: Any, r: "RunResult", run_dir: Path) -> list[str]:
    from fmeval.metrics.aggregate import summary_from_dict
    from fmeval.report.sweep_plots import plot_robustness

    if not isinstance(rob, dict):
        return []
    out = []
    for m, s in _summaries(rob).items():
        if m in PLOTTED:
            name = f"robustness_{m}.png"
            plot_robustness(summary_from_dict(s), run_dir / name,
                            title=f"{r.model_name} ({rob.get('head')}) on {r.dataset_flag}: {m} under corruptions")
            out.append(name)
    return out


SECTIONS.add("robustness", Section("robustness under corruptions", markdown=_markdown, terminal=_terminal,
                                   plot=_plot))
