"""kNN on frozen features: every k of a sweep in one pass, k chosen on validation."""

from __future__ import annotations

from fmeval.config import RunConfig
from fmeval.data import is_multilabel
from fmeval.errors import ConfigError
from fmeval.modes.base import FittedHead, register_mode, run_frozen, target_tensor
from fmeval.data.fewshot import training_splits
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


def prepare(cfg: RunConfig):
    """Frozen features of the splits the run may use; k is checked against the
    training set before any model work (a few-shot episode clips k instead)."""
    KNN_RULES.get(cfg.knn.rule)
    check = None
    if cfg.fewshot.shots is None:
        def check(data):
            check_ks(tuple(sorted(set(cfg.knn.ks))), split_sizes(cfg, data, ("train",))["train"])
    return prepare_frozen(cfg, splits=training_splits(cfg), check=check)


def _candidate_ks(cfg: RunConfig, n_train: int) -> tuple[tuple[int, ...], list[str]]:
    """The k values to try, and notes. A few-shot episode is small by design: k is
    clipped to its size (recorded), whereas on a full training split a k beyond
    it is a mistake (except the built-in sweep, trimmed with a note)."""
    ks = tuple(sorted(set(cfg.knn.ks)))
    if cfg.fewshot.shots is not None:
        return tuple(sorted({min(k, n_train) for k in ks})), []
    return sweep_ks(ks, n_train)


def fit_head(cfg: RunConfig, fz) -> FittedHead:
    """Choose k on validation (or take the first ``--k`` when no validation data may be used).

    Per-k numbers are kept for validation only, so nothing invites choosing k
    on test.
    """
    from fmeval.metrics import METRICS

    s = cfg.knn
    metric_fn = METRICS.get(s.select_metric)
    task, info = fz.data.task, fz.data.info
    train = fz.features["train"]
    y_train = target_tensor(task, fz.labels["train"], fz.device)
    ks, notes = _candidate_ks(cfg, len(y_train))
    common = dict(n_classes=info.n_classes, rule=s.rule, temperature=s.temperature, multilabel=is_multilabel(task))

    def score(x):
        return knn_predict(train, y_train, x, (k,), **common)[k]

    if "val" not in fz.features:  # few-shot, fixed: the first --k, nothing selected
        k = min(s.ks[0], len(y_train))
        return FittedHead(score, {"k": k, "k_rule": "first --k, clipped to the episode"})
    val_scores = knn_predict(train, y_train, fz.features["val"], ks, **common)
    y_val = fz.labels["val"]
    sweep = [{"k": k, f"val_{s.select_metric}": float(metric_fn(task, y_val, val_scores[k].cpu().numpy()))}
             for k in ks]
    k = select_k(sweep, s.select_metric)["k"]
    selection = {"k": k, "select_metric": s.select_metric}
    return FittedHead(score, selection, {"k_sweep": sweep}, val_scores=val_scores[k], warnings=notes)


@register_mode("knn", frozen=True,
               description="k-nearest neighbours on frozen features (k chosen on validation)")
def run_knn(cfg: RunConfig):
    """Sweep k on the validation split; score test only for the chosen k."""
    return run_frozen(cfg, prepare, fit_head)
