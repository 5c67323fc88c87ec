"""kNN on frozen features: every k of a sweep in one pass, k chosen on validation."""

from __future__ import annotations

from fmeval.config import RunConfig
from fmeval.data import is_multilabel
from fmeval.errors import ConfigError
from fmeval.modes.base import Timer, frozen_result, metric_labels, register_mode, target_tensor
from fmeval.pipeline import prepare_frozen, split_sizes
from fmeval.probes.knn import KNN_RULES, knn_predict


def select_k(sweep: list[dict], metric: str) -> dict:
    """The sweep row with the best validation ``metric`` (ties: the smaller k)."""
    from fmeval.metrics import higher_is_better

    sign = 1.0 if higher_is_better(metric) else -1.0
    key = f"val_{metric}"
    return max(sweep, key=lambda r: (_nan_low(sign * r[key]), -r["k"]))


def _nan_low(v: float) -> float:
    return float("-inf") if v != v else v


def sweep_ks(ks: tuple[int, ...], n_train: int) -> tuple[tuple[int, ...], list[str]]:
    """The k values to sweep, and a note when some were left out.

    The built-in sweep (1,5,11,20,50) drops values larger than a small
    training set, and says so; a sweep the user (or a protocol) chose must fit
    whole: none of its values is dropped silently.
    """
    from fmeval.config import KnnSettings

    if tuple(ks) == KnnSettings().ks:
        kept = tuple(k for k in ks if k <= n_train)
        if kept and len(kept) < len(ks):
            return kept, [f"k > {n_train} training samples left out of the default k sweep"]
    check_ks(ks, n_train)
    return tuple(ks), []


def check_ks(ks: tuple[int, ...], n_train: int) -> None:
    """Every k of the sweep must fit the training set (none is silently dropped)."""
    from fmeval.config import KnnSettings

    if tuple(ks) == KnnSettings().ks and min(ks) <= n_train:
        return  # the default sweep is trimmed (sweep_ks), not refused
    too_big = [k for k in ks if k > n_train]
    if too_big:
        raise ConfigError(
            f"--k {','.join(map(str, too_big))} exceeds the {n_train} training samples."
        )


@register_mode("knn", sections=("knn",), frozen=True,
               description="k-nearest neighbours on frozen features (k chosen on validation)")
def run_knn(cfg: RunConfig):
    """Sweep k on the validation split; score test only for the chosen k.

    Per-k numbers are kept for validation only, so nothing invites choosing k
    on test.
    """
    from fmeval.metrics import METRICS

    s = cfg.knn
    KNN_RULES.get(s.rule)
    metric_fn = METRICS.get(s.select_metric)
    timer = Timer()
    fz = prepare_frozen(cfg, check=lambda data: check_ks(s.ks, split_sizes(cfg, data, ("train",))["train"]))
    task, info = fz.data.task, fz.data.info
    y_train = target_tensor(task, fz.labels["train"], fz.device)
    ks, notes = sweep_ks(tuple(sorted(set(s.ks))), len(y_train))
    common = dict(n_classes=info.n_classes, rule=s.rule, temperature=s.temperature,
                  multilabel=is_multilabel(task))
    val_scores = knn_predict(fz.features["train"], y_train, fz.features["val"], ks, **common)
    y_val = metric_labels(task, fz.labels["val"])
    sweep = [{"k": k, f"val_{s.select_metric}": float(metric_fn(task, y_val, val_scores[k].cpu().numpy()))}
             for k in ks]
    k = select_k(sweep, s.select_metric)["k"]
    test_scores = knn_predict(fz.features["train"], y_train, fz.features["test"], (k,), **common)[k]
    return frozen_result(
        fz, test_scores=test_scores, val_scores=val_scores[k], extras={"k_sweep": sweep},
        selection={"k": k, "select_metric": s.select_metric}, timer=timer, warnings=notes,
    )
