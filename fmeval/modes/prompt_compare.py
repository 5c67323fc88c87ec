"""Prompt-style comparison: every style of a bank on the same cached image features.

Styles are compared on the *validation* split; the style with the best
validation AUC is the run's choice and only its test metrics are reported, so
the comparison cannot turn into choosing a prompt on test. With
``zeroshot.test_all`` (asked for explicitly) every style's test metrics are
reported too, each with a paired bootstrap CI of its AUC difference to the
chosen style on the same resamples. The result is an ordinary RunResult,
finished by the one reporter (table and bar plot through the ``comparison``
report section), so prompt comparisons reach the leaderboard like any run.
"""

from __future__ import annotations

import numpy as np

from fmeval.config import RunConfig
from fmeval.modes.base import Timer, result_of, register_mode, scores_np
from fmeval.modes.zeroshot import bank_extras, load_bank_for, split_scores, text_features
from fmeval.pipeline import prepare_frozen

COLUMNS = ("acc", "balanced_acc", "auc", "f1_macro")


def _row(style: str, text, bank, task: str, y, scores, class_names, cfg: RunConfig) -> dict:
    from fmeval.metrics import compute_metrics

    rep = compute_metrics(task, y, scores, class_names=class_names, n_boot=cfg.n_boot, seed=cfg.seed,
                          metrics=COLUMNS)
    n_prompts = sum(len(t[0]) + len(t[1]) for t in text) if bank.multi_label else sum(len(t) for t in text)
    row = {"style": style, "n_prompts": n_prompts}
    for k in COLUMNS:
        mv = rep.metrics[k]
        row[k] = float(mv.value)
        row[f"{k}_ci"] = [mv.ci_low, mv.ci_high]
    return row


def _better(a: float, b: float) -> bool:
    return (a == a) and (b != b or a > b)


@register_mode("prompts-compare", frozen=True, needs_text=True,
               description="compare prompt styles on validation; test for the style chosen there")
def run_prompt_compare(cfg: RunConfig):
    from fmeval.metrics import paired_difference

    timer = Timer()
    z = cfg.zeroshot
    bank = load_bank_for(cfg)
    styles = list(z.styles or bank.styles)
    for s in styles:  # unknown styles fail before any model is loaded
        bank.style_groups(s)
    if z.per_template:
        styles += [t for s in list(styles) for t in bank.single_templates(s)]
    fz = prepare_frozen(cfg, splits=("val", "test"), require_text=True)
    task, names = fz.data.task, list(fz.data.info.labels)
    y = {s: fz.labels[s] for s in ("val", "test")}
    scores: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    rows, best = [], None
    for style in styles:
        text = text_features(fz.adapter, bank, style, fz.cache, z.text_batch_size, fz.device)
        for split in ("val", "test"):
            scores[split][style] = scores_np(split_scores(fz, split, text, z.ensemble))
        rows.append(_row(style, text, bank, task, y["val"], scores["val"][style], names, cfg))
        if best is None or _better(rows[-1]["auc"], best["auc"]):
            best = rows[-1]
    chosen = best["style"]
    if z.test_all:
        rows = []
        for style in styles:
            text = text_features(fz.adapter, bank, style, fz.cache, z.text_batch_size, fz.device)
            row = _row(style, text, bank, task, y["test"], scores["test"][style], names, cfg)
            d = paired_difference(task, y["test"], scores["test"][style], scores["test"][chosen], "auc",
                                  n_boot=cfg.n_boot, seed=cfg.seed, n_classes=len(names))
            row["delta_auc_vs_selected"] = d["diff"]
            row["delta_auc_ci"] = [d["ci_low"], d["ci_high"]]
            rows.append(row)
    vals = [r["auc"] for r in rows if r["auc"] == r["auc"]]
    extras = {**bank_extras(bank, chosen, fz.adapter, z.ensemble), "comparison": rows,
              "comparison_split": "test" if z.test_all else "val",
              "spread_auc": (max(vals) - min(vals)) if vals else None}
    return result_of(
        fz, test_scores=scores["test"][chosen], val_scores=scores["val"][chosen], extras=extras,
        selection={"style": chosen, "select_metric": "auc"}, timer=timer,
    )
