"""``report.md``: the human-readable view of one ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from fmeval.metrics import METRICS, MetricsReport, higher_is_better
from fmeval.report.fmt import fmt, fmt_ci, md_escape, md_table
from fmeval.report.schema import RunResult, jsonable
from fmeval.report.sections import SECTIONS


def protocol_line(r: RunResult) -> str:
    p = r.protocol
    if not p:
        recipe = (r.config or {}).get("recipe")
        return (f"none; the model's own recipe `{recipe}` as its defaults" if recipe
                else "none (explicit settings)")
    dev = r.deviations
    text = f"`{p.get('name')}` v{p.get('version')} (sha256 `{str(p.get('sha256', ''))[:12]}`)"
    text += f", deviating in: {', '.join(dev)}" if dev else ", no deviations"
    return text + "".join(f". Known difference from the source: {c}" for c in p.get("caveats") or [])


def weights_line(m: dict) -> str:
    text = f"`{m.get('weights_id', '?')}`"
    load = m.get("weights_load")
    if isinstance(load, dict) and load:
        text += f" ({load.get('loaded', '?')}/{load.get('total', '?')} tensors loaded)"
    return text


def _header_md(r: RunResult) -> list[str]:
    m, d, p = r.model, r.dataset, r.provenance
    git = p.get("git") or {}
    commit = git.get("commit")
    commit_s = "not a git checkout" if not commit else f"`{commit[:12]}`" + (" (dirty)" if git.get("dirty") else "")
    pk = p.get("packages") or {}
    libs = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    dev = p.get("device") or {}
    device = dev.get("cuda_device") or ("CPU" if dev else "?")
    md5 = d.get("md5")
    md5_s = f"`{md5}`" + (" (official)" if d.get("md5_verified") else " (not the official file)" if d.get(
        "md5_verified") is False else " (not checked)") if md5 else "–"
    t = r.transform or {}
    return [
        f"# {r.mode} · {r.model_name} · {r.dataset_flag}" + (f" ({d['size']} px)" if d.get("size") else ""),
        "",
        f"- **run id**: `{r.run_id}` · config hash `{r.config_hash[:12] or '–'}`",
        f"- **created**: {r.created} · wall time {r.wall_time_s:.1f} s",
        f"- **protocol**: {protocol_line(r)}",
        f"- **model**: {r.model_name} (family {m.get('family', '?')}), weights {weights_line(m)}, "
        f"feature dim {m.get('feature_dim', '?')}",
        f"- **dataset**: {r.dataset_flag}, task {d.get('task', r.test.task)}, size {d.get('size', '?')}, "
        f"train/val/test {d.get('n_train', '?')}/{d.get('n_val', '?')}/{d.get('n_test', r.test.n)}, md5 {md5_s}",
        f"- **input**: {r.geometry}, input size {t.get('input_size', '?')}, canvas {t.get('canvas') or '–'}, "
        f"pad fill {t.get('pad_fill') or '–'}, interpolation {t.get('interpolation', '?')}, "
        f"norm {t.get('norm', '?')} (mean {t.get('mean', '?')}, std {t.get('std', '?')})",
        f"- **precision**: {r.precision or '?'} · **seed**: {r.seed}",
        f"- **selected on validation**: {', '.join(f'{k}={v}' for k, v in r.selection.items()) or '–'}",
        f"- **fmeval** {p.get('fmeval_version', '?')}, commit {commit_s}; python {p.get('python', '?')}, "
        f"{p.get('platform', '?')}; device {device}",
        f"- **libraries**: {libs or '?'}",
    ]


def metrics_md(rep: MetricsReport, title: str) -> list[str]:
    pct = f"{rep.ci:.0%}"
    ci_note = f"{pct} percentile bootstrap over {rep.n_boot} resamples" if rep.n_boot else "no bootstrap"
    rows = []
    for name, mv in rep.metrics.items():
        arrow = "↑" if name not in METRICS or higher_is_better(name) else "↓"
        rows.append([f"{name} {arrow}", fmt(mv.value), fmt_ci(mv.ci_low, mv.ci_high), fmt(rep.baseline.get(name))])
    return [f"## {title} (n = {rep.n}; {ci_note})", "",
            md_table(["metric", "value", f"{pct} CI", "majority baseline"], rows), ""]


def _per_class_md(rep: MetricsReport) -> list[str]:
    what = "label" if rep.confusion is None else "class"
    cols = ["support", "prevalence", "sensitivity", "specificity", "precision", "f1", "auc", "pred_rate"]
    rows = [[name] + [fmt(row.get(c), 3) for c in cols] for name, row in rep.per_class.items()]
    header = [what, "support", "prevalence", "sensitivity (recall)", "specificity", "precision", "F1", "AUC",
              "predicted rate"]
    return [f"## Per-{what} (test)", "", md_table(header, rows), ""]


def _confusion_md(rep: MetricsReport) -> list[str]:
    if rep.confusion is None:
        return []
    rows = [[name] + list(r) for name, r in zip(rep.class_names, rep.confusion)]
    return ["## Confusion matrix (test; rows = true, columns = predicted)", "",
            md_table(["true \\ predicted"] + list(rep.class_names), rows), ""]


def render_markdown(r: RunResult, images: Sequence[str] = ()) -> str:
    from fmeval.report.terminal import imbalance_note

    note = imbalance_note(r)
    lines = _header_md(r) + [""] + ([f"> **{note}**", ""] if note else []) + metrics_md(r.test, "Test metrics")
    warns = r.all_warnings()
    lines += ["## Warnings", ""] + ([f"- ⚠ {md_escape(w)}" for w in warns] or ["none"]) + [""]
    if r.val is not None:
        lines += metrics_md(r.val, "Validation metrics")
    lines += _per_class_md(r.test) + _confusion_md(r.test)
    for key, value in r.extras.items():
        if key in SECTIONS and SECTIONS.get(key).markdown is not None:
            lines += SECTIONS.get(key).markdown(value, r)
    if images:
        lines += ["## Plots", ""] + [f"![{Path(img).stem}]({img})" for img in images] + [""]
    extras = {k: v for k, v in r.extras.items() if k != "curves"}  # curves are plotted and kept in JSON
    for title, block in (("Config", r.config), ("Extras", extras), ("Provenance", r.provenance)):
        if block:
            lines += [f"## {title}", "", "```json", json.dumps(jsonable(block), indent=2), "```", ""]
    return "\n".join(lines)
