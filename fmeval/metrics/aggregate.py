"""Numbers across runs of one sweep: few-shot draws per K, corruptions per severity.

A few-shot result is only meaningful as mean ± std over draws (one 1-shot
draw can be lucky by 20 points), and a robustness result only next to the
clean number it degrades from. These helpers are pure (dicts in, dataclasses
out) so the reporter, the leaderboard and the tests share one definition:

* :func:`aggregate_draws` / :func:`fewshot_summary`: mean, sample std
  (``ddof=1``; NaN with one draw) and the per-draw values of every metric.
* :func:`summarize_robustness`: per metric, the corrupted value of each
  (corruption, severity), the mean over severities per corruption, the mean
  over corruptions per severity, the overall mean (mean of the per-corruption
  means, so every corruption weighs the same), and the drop from clean,
  absolute and relative, signed so that a positive drop is always a loss
  (for lower-is-better metrics such as ECE it is the relative increase).
* :func:`medmnistc_errors`: MedMNIST-C's own summary (balanced error
  normalised by its AlexNet baseline, BE and relative BE), for comparison
  with the paper; the baselines were measured at 224 px.

Non-finite values (an AUC undefined on one draw) are left out of means and
counted in ``n``; they are never treated as zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Number = float | int | None


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std of one metric over draws; ``values`` keeps every draw (NaN kept)."""

    mean: float
    std: float
    n: int  # finite values behind mean/std
    values: tuple[float, ...]

    def fmt(self, digits: int = 4) -> str:
        if not math.isfinite(self.mean):
            return "–"
        if not math.isfinite(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        fin = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no NaN
        return {"mean": fin(self.mean), "std": fin(self.std), "n": self.n, "values": [fin(v) for v in self.values]}


def _float(v: Number) -> float:
    try:
        return float("nan") if v is None else float(v)
    except (TypeError, ValueError):
        return float("nan")


def stat(values: Sequence[Number]) -> Stat:
    arr = np.array([_float(v) for v in values], dtype=np.float64)
    fin = arr[np.isfinite(arr)]
    mean = float(fin.mean()) if fin.size else float("nan")
    std = float(fin.std(ddof=1)) if fin.size >= 2 else float("nan")
    return Stat(mean, std, int(fin.size), tuple(arr.tolist()))


def aggregate_draws(per_draw: Sequence[Mapping[str, Number]]) -> dict[str, Stat]:
    """Mean ± std of every metric over draws (a metric missing from a draw counts as NaN)."""
    names: list[str] = []
    for d in per_draw:
        names += [k for k in d if k not in names]
    return {name: stat([d.get(name) for d in per_draw]) for name in names}


def fewshot_summary(per_k: Mapping[int, Sequence[Mapping[str, Number]]]) -> dict[int, dict[str, Stat]]:
    """``{K: {metric: Stat}}`` in increasing K: one point of the few-shot curve per K."""
    return {int(k): aggregate_draws(per_k[k]) for k in sorted(per_k)}


def fewshot_table(
    curves: Mapping[str, Mapping[int, Mapping[str, Stat]]], metric: str, digits: int = 3
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per model, one column per K) of ``metric`` as "mean ± std"."""
    shots = sorted({int(k) for per_k in curves.values() for k in per_k})
    rows = []
    for model, per_k in curves.items():
        cells = [per_k[k][metric].fmt(digits) if k in per_k and metric in per_k[k] else "–" for k in shots]
        rows.append([model, *cells])
    return ["model", *[f"K={k}" for k in shots]], rows


# ---------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------
def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


@dataclass(frozen=True)
class RobustnessSummary:
    metric: str
    higher_is_better: bool
    clean: float
    corrupted: dict[str, dict[int, float]]  # corruption -> severity -> value
    per_corruption: dict[str, float]  # mean over severities
    per_severity: dict[int, float]  # mean over corruptions
    mean_corrupted: float  # mean of per_corruption
    drop: float  # clean - mean (higher-is-better) or mean - clean: positive = worse
    relative_drop: float  # drop / |clean|
    relative_drop_per_corruption: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean_nan(obj: Any) -> Any:
            if isinstance(obj, dict):
                return {str(k): clean_nan(v) for k, v in obj.items()}
            return obj if not isinstance(obj, float) or math.isfinite(obj) else None

        return clean_nan(asdict(self))


def summary_from_dict(d: Mapping[str, Any]) -> RobustnessSummary:
    """Inverse of :meth:`RobustnessSummary.to_dict` (JSON keys are strings, NaN is null)."""
    f = _float

    def per_sev(m: Mapping[str, Any]) -> dict[int, float]:
        return {int(k): f(v) for k, v in m.items()}

    return RobustnessSummary(
        metric=str(d["metric"]), higher_is_better=bool(d["higher_is_better"]), clean=f(d.get("clean")),
        corrupted={c: per_sev(v) for c, v in (d.get("corrupted") or {}).items()},
        per_corruption={c: f(v) for c, v in (d.get("per_corruption") or {}).items()},
        per_severity=per_sev(d.get("per_severity") or {}),
        mean_corrupted=f(d.get("mean_corrupted")), drop=f(d.get("drop")), relative_drop=f(d.get("relative_drop")),
        relative_drop_per_corruption={c: f(v) for c, v in (d.get("relative_drop_per_corruption") or {}).items()},
    )


def _default_direction(metric: str) -> bool:
    from fmeval.metrics import METRICS, higher_is_better

    return higher_is_better(metric) if metric in METRICS else True


def _loss(clean: float, value: float, higher: bool) -> float:
    return clean - value if higher else value - clean


def _relative(drop: float, clean: float) -> float:
    return drop / abs(clean) if math.isfinite(clean) and clean != 0 else float("nan")


def summarize_robustness(
    clean: Mapping[str, Number],
    corrupted: Mapping[str, Mapping[int, Mapping[str, Number]]],
    metrics: Sequence[str] | None = None,
    higher_is_better: Callable[[str], bool] | None = None,
) -> dict[str, RobustnessSummary]:
    """Clean vs corrupted, per metric. ``corrupted[corruption][severity] = {metric: value}``."""
    direction = higher_is_better or _default_direction
    names = list(metrics) if metrics is not None else [m for m in clean]
    out = {}
    for m in names:
        c = _float(clean.get(m))
        higher = direction(m)
        table = {corr: {int(s): _float(per_sev[s].get(m)) for s in sorted(per_sev)} for corr, per_sev in corrupted.items()}
        per_corr = {corr: _nanmean(list(t.values())) for corr, t in table.items()}
        severities = sorted({s for t in table.values() for s in t})
        per_sev = {s: _nanmean([t.get(s, float("nan")) for t in table.values()]) for s in severities}
        mean = _nanmean(list(per_corr.values()))
        drop = _loss(c, mean, higher)
        out[m] = RobustnessSummary(
            metric=m,
            higher_is_better=higher,
            clean=c,
            corrupted=table,
            per_corruption=per_corr,
            per_severity=per_sev,
            mean_corrupted=mean,
            drop=drop,
            relative_drop=_relative(drop, c),
            relative_drop_per_corruption={k: _relative(_loss(c, v, higher), c) for k, v in per_corr.items()},
        )
    return out


def medmnistc_errors(
    dataset: str, clean_balanced_acc: float, balanced_acc: Mapping[str, Mapping[int, float]]
) -> dict[str, Any]:
    """MedMNIST-C's summary (``medmnistc.eval.Evaluator.populate_summary``), from balanced accuracies.

    Error = 1 - balanced accuracy, averaged over severities per corruption;
    ``be`` = error / AlexNet's error; ``rbe`` = (error - clean error) /
    (AlexNet's error - AlexNet's clean error); the overall values are the means
    over corruptions. AlexNet's baselines come from ``medmnistc`` (224 px).
    """
    from fmeval.data.corruptions import CorruptionError, _corruptions_ds

    _corruptions_ds()  # one-line error when medmnistc is missing
    from medmnistc.utils.baselines import BASELINES

    if dataset not in BASELINES:
        raise CorruptionError(f"medmnistc has no AlexNet baseline for {dataset!r}.")
    base = BASELINES[dataset]
    clean_err = 1.0 - float(clean_balanced_acc)
    be, rbe = {}, {}
    for corr, per_sev in balanced_acc.items():
        if corr not in base["raw_scores"]:
            raise CorruptionError(f"medmnistc has no AlexNet baseline for {dataset}/{corr}.")
        err = float(np.mean([1.0 - float(v) for v in per_sev.values()]))
        alex = base["raw_scores"][corr]
        be[corr] = err / alex
        rbe[corr] = (err - clean_err) / (alex - base["clean_score"])
    return {
        "clean_error": clean_err,
        "be": be,
        "rbe": rbe,
        "mean_be": float(np.mean(list(be.values()))),
        "mean_rbe": float(np.mean(list(rbe.values()))),
        "baseline": "AlexNet (medmnistc 224 px)",
    }
