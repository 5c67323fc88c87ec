"""What every mode shares: the mode registry and turning scores into a report."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from fmeval.errors import ConfigError
from fmeval.registry import Registry

ModeRunner = Callable[[Any], Any]
MODES: Registry[ModeRunner] = Registry("mode", ConfigError)


def metric_labels(task: str, labels: np.ndarray) -> np.ndarray:
    """[N, W] stored labels -> what the metrics take ([N] or [N, L])."""
    from fmeval.data import is_multilabel

    return labels if is_multilabel(task) else labels[:, 0]


def target_tensor(task: str, labels: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(metric_labels(task, labels), device=device)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def finish_run(
    *,
    mode: str,
    model: dict,
    dataset: dict,
    task: str,
    class_names: list[str],
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    test_scores: torch.Tensor | np.ndarray,
    config: dict,
    geometry: str,
    seed: int,
    n_boot: int,
    val_labels: np.ndarray | None = None,
    val_scores: torch.Tensor | np.ndarray | None = None,
    extras: dict | None = None,
    warnings: list[str] | None = None,
    wall_time_s: float = 0.0,
    reports_dir: str | None = None,
    write: bool = True,
    run_id: str | None = None,
):
    """Score, build the typed result, write JSON/CSV/Markdown/plots.

    ``run_id`` lets a run that already owns an id (a fine-tuning run's adapter
    folder) report under the same name.
    """
    from fmeval.metrics import class_prior, compute_metrics
    from fmeval.provenance import collect_provenance
    from fmeval.report import RunResult, new_run_id, write_report

    def scores_np(s):
        return s.detach().float().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)

    n_cls = len(class_names)
    prior = class_prior(task, metric_labels(task, train_labels), n_cls)
    test = compute_metrics(
        task, metric_labels(task, test_labels), scores_np(test_scores),
        class_names=class_names, n_boot=n_boot, seed=seed, prior=prior,
    )
    val = None
    if val_scores is not None and val_labels is not None:
        val = compute_metrics(
            task, metric_labels(task, val_labels), scores_np(val_scores),
            class_names=class_names, n_boot=0, seed=seed, prior=prior,
        )
    result = RunResult(
        run_id=run_id or new_run_id(mode, model["name"], dataset["flag"], dataset["size"]),
        mode=mode,
        model=model,
        dataset=dataset,
        geometry=geometry,
        seed=seed,
        config=config,
        test=test,
        val=val,
        extras=extras or {},
        provenance=collect_provenance(),
        warnings=list(warnings or []) + list(test.warnings),
        wall_time_s=wall_time_s,
    )
    if write:
        from pathlib import Path

        result.extras["report_dir"] = str(
            write_report(result, Path(reports_dir) if reports_dir else None)
        )
    return result


def finish_frozen(fz, *, mode: str, test_scores, val_scores, extras: dict, timer: Timer):
    """:func:`finish_run` for the frozen-feature modes (they share everything but scores)."""
    cfg = fz.config
    train_labels = fz.labels["train"] if "train" in fz.labels else fz.data.split("train").labels
    return finish_run(
        mode=mode,
        model=fz.adapter.describe(),
        dataset=fz.dataset_record(),
        task=fz.data.task,
        class_names=list(fz.data.info.labels),
        train_labels=train_labels,
        test_labels=fz.labels["test"],
        test_scores=test_scores,
        val_labels=fz.labels["val"],
        val_scores=val_scores,
        config=cfg.to_dict(),
        geometry=cfg.geometry,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        extras={**extras, "cache_hits": fz.cache_hits},
        warnings=[*fz.data.warnings, *(fz.cache.events if fz.cache is not None else [])],
        wall_time_s=timer.seconds,
        reports_dir=cfg.reports_dir,
    )
