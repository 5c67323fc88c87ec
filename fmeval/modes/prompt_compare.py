"""Prompt-engineering comparison: every style of a bank on the same features.

The image features are extracted (or loaded from the cache) once; each style
(and, optionally, each single template) only costs its text embeddings and a
matmul. Output: one row per style with ACC, balanced ACC, AUC (+ CIs), the
best-worst spread, as JSON/CSV/Markdown and a bar plot, with provenance.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from fmeval.modes.base import MODES, Timer, metric_labels
from fmeval.modes.zeroshot import ZeroshotConfig, load_bank_for, text_features, zeroshot_scores
from fmeval.pipeline import prepare_frozen

COLUMNS = ("acc", "balanced_acc", "auc", "f1_macro")


@dataclass
class CompareConfig(ZeroshotConfig):
    styles: tuple[str, ...] | None = None  # None: every style of the bank
    per_template: bool = False  # also score each single template on its own
    split: str = "test"


@dataclass
class Comparison:
    run_id: str
    dataset: str
    model: dict
    bank: dict
    ensemble: str
    split: str
    rows: list[dict] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    out_dir: str = ""

    def spread(self, metric: str = "auc") -> float:
        vals = [r[metric] for r in self.rows if r[metric] == r[metric]]
        return max(vals) - min(vals) if vals else float("nan")

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["spread"] = {m: self.spread(m) for m in COLUMNS}
        return d

    def to_markdown(self) -> str:
        head = ["style", "prompts", "ACC", "bal. ACC", "AUC (95% CI)", "macro-F1"]
        lines = [
            f"# Prompt comparison: {self.model['name']} on {self.dataset} ({self.split})",
            "",
            f"Bank `{self.bank['bank']}` (sha256 `{self.bank['content_hash'][:16]}`), "
            f"ensemble `{self.ensemble}`, weights `{self.model['weights_id']}`.",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for r in self.rows:
            lines.append(
                f"| {r['style']} | {r['n_prompts']} | {r['acc']:.3f} | {r['balanced_acc']:.3f} | "
                f"{r['auc']:.3f} ({r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f}) | {r['f1_macro']:.3f} |"
            )
        b = self.baseline
        lines += [
            f"| majority class | - | {b.get('acc', float('nan')):.3f} | {b.get('balanced_acc', float('nan')):.3f} | "
            f"{b.get('auc', float('nan')):.3f} | {b.get('f1_macro', float('nan')):.3f} |",
            "",
            "Spread (best - worst): " + ", ".join(f"{m} {self.spread(m):.3f}" for m in COLUMNS),
        ]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["style", "n_prompts", *COLUMNS, "auc_ci_low", "auc_ci_high"])
        for r in self.rows:
            w.writerow([r["style"], r["n_prompts"], *(r[m] for m in COLUMNS), *r["auc_ci"]])
        return buf.getvalue()


def _write(cmp: Comparison, root: Path | None) -> Path:
    from fmeval.io import atomic_path, atomic_write_json, atomic_write_text
    from fmeval.report import reports_dir

    out = (root or reports_dir()) / cmp.run_id
    cmp.out_dir = str(out)
    atomic_write_json(out / "prompts_compare.json", cmp.to_dict())
    atomic_write_text(out / "prompts_compare.md", cmp.to_markdown())
    atomic_write_text(out / "prompts_compare.csv", cmp.to_csv())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cmp.rows) + 3), 4))
    names = [r["style"] for r in cmp.rows]
    x = range(len(names))
    width = 0.27
    for j, m in enumerate(("acc", "balanced_acc", "auc")):
        ax.bar([i + (j - 1) * width for i in x], [r[m] for r in cmp.rows], width, label=m)
    if "balanced_acc" in cmp.baseline:
        ax.axhline(cmp.baseline["acc"], color="gray", ls="--", lw=1, label="majority ACC")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"{cmp.model['name']} zero-shot on {cmp.dataset}: prompt styles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "prompts_compare.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


@MODES.register("prompts-compare", "compare prompt styles of a bank on the same image features")
def run_prompt_compare(cfg: CompareConfig) -> Comparison:
    from fmeval.metrics import class_prior, compute_metrics
    from fmeval.provenance import collect_provenance
    from fmeval.report import new_run_id

    timer = Timer()
    bank = load_bank_for(cfg)
    styles = list(cfg.styles or bank.styles)
    for s in styles:  # unknown styles fail before any model is loaded
        bank.pairs(s) if bank.multi_label else bank.prompts(s)
    if cfg.per_template:
        styles += [t for s in list(styles) for t in bank.single_templates(s)]
    fz = prepare_frozen(cfg, splits=(cfg.split,), require_text=True)
    task, info = fz.data.task, fz.data.info
    y = metric_labels(task, fz.labels[cfg.split])
    prior = class_prior(task, metric_labels(task, fz.data.split("train").labels), info.n_classes)
    rows, baseline = [], {}
    for style in styles:
        text = text_features(fz.adapter, bank, style, fz.cache, cfg.text_batch_size, fz.device)
        scores = zeroshot_scores(fz.adapter, fz.features[cfg.split], text, cfg.ensemble).cpu().numpy()
        rep = compute_metrics(task, y, scores, class_names=list(info.labels), n_boot=cfg.n_boot,
                              seed=cfg.seed, prior=prior, metrics=COLUMNS)
        m = rep.metrics
        n_prompts = sum(len(t[0]) + len(t[1]) for t in text) if bank.multi_label else sum(len(t) for t in text)
        rows.append({
            "style": style,
            "n_prompts": n_prompts,
            **{k: float(m[k].value) for k in COLUMNS},
            "auc_ci": [m["auc"].ci_low, m["auc"].ci_high],
            "warnings": rep.warnings,
        })
        baseline = {k: float(v) for k, v in rep.baseline.items() if k in COLUMNS}
    cmp = Comparison(
        run_id=new_run_id("prompts-compare", fz.adapter.name, info.flag, fz.data.size),
        dataset=info.flag,
        model=fz.adapter.describe(),
        bank=bank.describe(),
        ensemble=cfg.ensemble,
        split=cfg.split,
        rows=rows,
        baseline=baseline,
        provenance=collect_provenance(),
        config=cfg.to_dict(),
        wall_time_s=timer.seconds,
    )
    _write(cmp, Path(cfg.reports_dir) if cfg.reports_dir else None)
    return cmp
