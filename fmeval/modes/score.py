"""Scoring an external model's predictions file as an ordinary run.

``fmeval score PREDICTIONS.csv --dataset D --size S`` reads a CSV of
per-sample class probabilities (:mod:`fmeval.predictions`: the MedMNIST+
submission format, which every fmeval run also writes as ``predictions.csv``)
and produces the same report as any run: every metric with bootstrap CIs,
the majority baseline from the training labels, per-class tables, and
provenance that includes the file's SHA-256. The model is named
``external:<file stem>`` with weights id ``external:sha256:<digest>``, so the
leaderboard lists it as an external model (weights kind ``external``).

Scoring an fmeval run's own ``predictions.csv`` with the run's seed and
``--bootstrap`` reproduces its test metrics and CIs exactly: the file holds
the scores at full precision and the metrics are the same code.
"""

from __future__ import annotations

from pathlib import Path

from fmeval.config import RunConfig
from fmeval.errors import ConfigError
from fmeval.modes.base import Timer, build_result, register_mode

EXTERNAL_PREFIX = "external:"


def external_model_name(path: str | Path) -> str:
    return f"{EXTERNAL_PREFIX}{Path(path).stem}"


@register_mode("score", frozen=False,
               description="score an external model's predictions file (per-sample class probabilities)")
def run_score(cfg: RunConfig):
    from fmeval.pipeline import open_data
    from fmeval.predictions import load_predictions

    timer = Timer()
    sc = cfg.score
    if not sc.predictions:
        raise ConfigError("score needs a predictions file (fmeval score PREDICTIONS.csv --dataset D --size S).")
    data = open_data(cfg)  # 3D datasets too: one row per test volume
    labels = data.labels(sc.split)
    names = list(data.info.labels)
    preds = load_predictions(sc.predictions, task=data.task, n_expected=len(labels), class_names=names)
    model = {
        "name": cfg.model,
        "family": "external",
        "weights_id": f"{EXTERNAL_PREFIX}sha256:{preds.sha256}",
        "feature_dim": None,
        "predictions_file": str(Path(sc.predictions).expanduser()),
        "predictions_sha256": preds.sha256,
    }
    dataset = {**data.describe(), "scored_split": sc.split}
    result = build_result(
        cfg, model=model, dataset=dataset, task=data.task, class_names=names,
        train_labels=data.labels("train"), test_labels=labels, test_scores=preds.scores,
        transform={}, precision="external", selection={},
        extras={"predictions": {**preds.provenance(), "split": sc.split}},
        warnings=list(data.warnings) + ([] if sc.split == "test" else [
            f"scored the {sc.split} split: the 'test' metrics of this report are {sc.split} metrics, "
            "kept off the leaderboard ranking"]),
        wall_time_s=timer.seconds,
    )
    result.provenance["predictions"] = preds.provenance()
    return result
