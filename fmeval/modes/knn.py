"""kNN on frozen features: several k in one pass, k chosen on validation."""

from __future__ import annotations

from dataclasses import dataclass

from fmeval.data import is_multilabel
from fmeval.modes.base import MODES, Timer, finish_frozen, metric_labels, target_tensor
from fmeval.pipeline import EvalConfig, prepare_frozen
from fmeval.probes.knn import KNN_RULES, knn_predict


@dataclass
class KnnConfig(EvalConfig):
    ks: tuple[int, ...] = (1, 5, 11, 20, 50)
    rule: str = "cosine"
    temperature: float = 0.07
    select_metric: str = "auc"


@MODES.register("knn", "k-nearest neighbours on frozen features")
def run_knn(cfg: KnnConfig):
    """Sweep k on the validation split, report the chosen k on test.

    Selecting k on val (not test) keeps the test estimate honest; every k's
    test score is still recorded in the report for inspection.
    """
    from fmeval.metrics import METRICS

    KNN_RULES.get(cfg.rule)
    metric_fn = METRICS.get(cfg.select_metric)
    timer = Timer()
    fz = prepare_frozen(cfg)
    task, info = fz.data.task, fz.data.info
    ml = is_multilabel(task)
    y_train = target_tensor(task, fz.labels["train"], fz.device)
    ks = tuple(k for k in sorted(set(cfg.ks)) if k <= len(y_train))
    common = dict(n_classes=info.n_classes, rule=cfg.rule, temperature=cfg.temperature, multilabel=ml)
    val_scores = knn_predict(fz.features["train"], y_train, fz.features["val"], ks, **common)
    test_scores = knn_predict(fz.features["train"], y_train, fz.features["test"], ks, **common)
    y_val = metric_labels(task, fz.labels["val"])
    y_test = metric_labels(task, fz.labels["test"])
    sweep = []
    for k in ks:
        sweep.append({
            "k": k,
            f"val_{cfg.select_metric}": float(metric_fn(task, y_val, val_scores[k].cpu().numpy())),
            "test_acc": float(METRICS.get("acc")(task, y_test, test_scores[k].cpu().numpy())),
            "test_auc": float(METRICS.get("auc")(task, y_test, test_scores[k].cpu().numpy())),
        })
    sign = 1.0 if getattr(METRICS.entry(cfg.select_metric), "tags", {}).get("better", "higher") == "higher" else -1.0
    best = max(sweep, key=lambda r: (sign * _nan_low(r[f"val_{cfg.select_metric}"]), -r["k"]))
    k = best["k"]
    return finish_frozen(
        fz, mode="knn", test_scores=test_scores[k], val_scores=val_scores[k],
        extras={"k": k, "k_sweep": sweep}, timer=timer,
    )


def _nan_low(v: float) -> float:
    return float("-inf") if v != v else v
