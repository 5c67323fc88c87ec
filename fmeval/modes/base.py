"""The mode registry and what every mode shares: turning scores into a RunResult.

A mode is one registered :class:`Mode`: a ``run(config) -> RunResult``
function that writes no files (the reporter does), the config sections it
reads (they define the run's hash), and whether it works on cached frozen
features (the study planner groups those so features are extracted once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from fmeval.errors import ConfigError
from fmeval.registry import Registry

if TYPE_CHECKING:
    from fmeval.config import RunConfig
    from fmeval.report import RunResult


@dataclass(frozen=True)
class Mode:
    name: str
    run: Callable[["RunConfig"], "RunResult"]
    sections: tuple[str, ...]  # RunConfig sections this mode reads (part of the run's hash)
    frozen: bool  # works on cached frozen features
    description: str = ""
    needs_text: bool = False


MODES: Registry[Mode] = Registry("mode", ConfigError)


@dataclass
class FittedHead:
    """A classifier fitted (and selected) on frozen features, ready to score any features.

    The frozen modes build one and score the clean test split with it;
    ``fmeval robustness`` scores corrupted test features with the very same
    head, so its clean numbers are exactly the clean run's.
    """

    score: Callable[[torch.Tensor], torch.Tensor]  # features [N, D] -> class scores [N, C]
    selection: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    val_scores: Any = None  # None: no validation data was used
    split_scorer: Callable[[str], torch.Tensor] | None = None  # a split's scores when not score(features)
    warnings: list[str] = field(default_factory=list)  # notes for the report (e.g. a trimmed k sweep)

    def score_split(self, fz, split: str) -> torch.Tensor:
        """Scores of one of ``fz``'s splits (zero-shot on volumes pools per-slice logits)."""
        return self.split_scorer(split) if self.split_scorer is not None else self.score(fz.features[split])


def register_mode(name: str, *, frozen: bool, description: str, needs_text: bool = False):
    """Register ``run`` under ``name``; the sections it reads are the config's
    :data:`~fmeval.config.MODE_SECTIONS` entry (one list for the hash, the variant digest
    and the mode)."""
    from fmeval.config import MODE_SECTIONS

    if name not in MODE_SECTIONS:
        raise ValueError(f"mode {name!r} has no entry in fmeval.config.MODE_SECTIONS")

    def deco(fn):
        MODES.add(name, Mode(name, fn, MODE_SECTIONS[name], frozen, description, needs_text), description)
        return fn

    return deco


def target_tensor(task: str, labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """A probe's training targets on ``device`` (:func:`fmeval.tasks.targets`)."""
    from fmeval.tasks import targets

    return torch.as_tensor(targets(task, labels), device=device)


def scores_np(s: Any) -> np.ndarray:
    return s.detach().float().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def protocol_record(cfg: "RunConfig") -> dict | None:
    if not cfg.protocol:
        return None
    from fmeval.protocols import load_protocol

    p = load_protocol(cfg.protocol)
    rec = p.describe(cfg.deviations, mode=cfg.mode, model=cfg.model)
    if cfg.protocol_variant:
        rec["variant"] = cfg.protocol_variant
    return rec


def _precision_rule(fz) -> str:
    from fmeval.device import precision_rule

    return precision_rule(fz.config.precision, fz.device, fz.adapter.family)


def build_result(
    cfg: "RunConfig",
    *,
    model: dict,
    dataset: dict,
    task: str,
    class_names: list[str],
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    test_scores: Any,
    transform: dict,
    precision: str,
    selection: dict | None = None,
    val_labels: np.ndarray | None = None,
    val_scores: Any = None,
    extras: dict | None = None,
    warnings: list[str] | None = None,
    wall_time_s: float = 0.0,
    run_id: str | None = None,
    test_indices: np.ndarray | None = None,
) -> "RunResult":
    """Score test (with bootstrap CIs) and validation, and assemble the typed result.

    The majority baseline is the class prior of the *training* labels: it is
    what a model that learned nothing but the training distribution scores.
    ``run_id`` lets a run that already owns an id (a fine-tuning run's adapter
    folder) report under the same name. Writes nothing.
    """
    from fmeval.metrics import class_prior, compute_metrics
    from fmeval.provenance import collect_provenance
    from fmeval.report import RunResult, new_run_id

    n_cls = len(class_names)
    prior = class_prior(task, train_labels, n_cls)
    test_np = scores_np(test_scores)
    test = compute_metrics(
        task, test_labels, test_np,
        class_names=class_names, n_boot=cfg.n_boot, seed=cfg.seed, prior=prior,
    )
    val = None
    if val_scores is not None and val_labels is not None:
        val = compute_metrics(
            task, val_labels, scores_np(val_scores),
            class_names=class_names, n_boot=0, seed=cfg.seed, prior=prior,
        )
    sections = MODES.get(cfg.mode).sections if cfg.mode in MODES else ()
    result = RunResult(
        run_id=run_id or new_run_id(cfg.mode, model["name"], dataset["flag"], dataset["size"]),
        mode=cfg.mode,
        model=model,
        dataset=dataset,
        geometry=cfg.geometry,
        seed=cfg.seed,
        config=cfg.to_dict(),
        config_hash=cfg.digest(sections),
        protocol=protocol_record(cfg),
        transform=transform,
        precision=precision,
        selection=dict(selection or {}),
        test=test,
        val=val,
        extras=extras or {},
        provenance=collect_provenance(),
        warnings=list(dict.fromkeys(list(warnings or []) + list(test.warnings))),
        wall_time_s=wall_time_s,
    )
    result.test_scores = test_np
    result.test_indices = test_indices
    return result


def run_frozen(cfg, prepare: Callable, fit_head: Callable) -> "RunResult":
    """The body every frozen-feature mode shares: features, a head fitted and selected
    without test, the test split scored once. The timer starts before the features."""
    timer = Timer()
    fz = prepare(cfg)
    head = fit_head(cfg, fz)
    return result_of(fz, test_scores=head.score_split(fz, "test"), val_scores=head.val_scores,
                     extras=head.extras, selection=head.selection, timer=timer, warnings=head.warnings)


def result_of(p, *, test_scores, val_scores, extras: dict, selection: dict, timer: Timer,
              warnings: list[str] = (), run_id: str | None = None) -> "RunResult":
    """The one :func:`build_result` call of every mode that ran :func:`fmeval.pipeline.prepare`.

    ``p`` is the pipeline's :class:`~fmeval.pipeline.Prepared`; everything but the
    scores, the selection record and the mode's extras comes from it.
    ``val_scores`` None: the run used no validation data (few-shot with fixed
    hyper-parameters) and reports none. A few-shot run's episode record goes
    into ``extras["fewshot"]`` and its selection rule into ``selection``; a frozen
    run records which splits came from the feature cache.
    """
    if p.fewshot is not None:
        extras = {**extras, "fewshot": p.fewshot}
        selection = {**selection, "fewshot_selection": p.fewshot["selection"]}
    if p.frozen:
        extras = {**extras, "cache_hits": p.cache_hits}
        notes = [*p.data.warnings, *(p.cache.events if p.cache is not None else []), *warnings,
                 *p.fewshot_warnings]
    else:
        notes = [*p.data.warnings, *p.fewshot_warnings, *warnings]
    extras = {**extras, "precision_rule": _precision_rule(p)}  # which precision rule applied
    return build_result(
        p.config,
        model=p.adapter.describe(),
        dataset=p.dataset_record(),
        task=p.data.task,
        class_names=list(p.data.info.labels),
        train_labels=p.prior_labels(),
        test_labels=p.labels["test"],
        test_scores=test_scores,
        val_labels=p.labels.get("val"),
        val_scores=val_scores,
        transform=p.transform_record(),
        precision=p.precision,
        selection=selection,
        extras=extras,
        warnings=notes,
        wall_time_s=timer.seconds,
        run_id=run_id,
        test_indices=p.indices.get("test"),
    )
