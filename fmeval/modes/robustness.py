"""Robustness under MedMNIST-C corruptions: one head, the clean and the corrupted test split.

The head is fitted and selected exactly as its clean run does it (the kNN,
linear-probe or zero-shot mode's own ``fit_head``, on clean train/val), or is
a fine-tuned adapter reloaded from its run folder. Then the *test* split is
scored clean and under every requested corruption x severity
(:func:`fmeval.data.corruptions.corrupt`, the authors' ``medmnistc``).

The result is one ordinary :class:`~fmeval.report.RunResult`: its ``test``
metrics are the clean test metrics (bootstrap CIs as usual), and
``extras["robustness"]`` holds the table: per corruption and severity every
metric (point estimates: 65 bootstraps of 1000 resamples would cost more than
the corruptions and say little about a mean drop), the mean over severities
and over corruptions, and the drop from clean, absolute and relative
(:func:`fmeval.metrics.aggregate.summarize_robustness`). The registered report
section renders it (Markdown, terminal, plot).

Corrupted test features are cached like clean ones, under the clean test
split's key plus :func:`~fmeval.data.corruptions.corruption_key` (corruption,
severity, its parameter, seed, medmnistc version), so a corrupted entry can
never be served for the clean split or the other way round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from fmeval.config import RunConfig
from fmeval.errors import ConfigError
from fmeval.modes.base import Timer, build_result, result_of, register_mode, scores_np
from fmeval.registry import Registry

#: Metrics of the robustness table (every registered metric is computed; these are shown first).
SHOWN_METRICS = ("auc", "acc", "balanced_acc")


@dataclass(frozen=True)
class Head:
    prepare: Callable[[RunConfig], Any]
    fit: Callable[[RunConfig, Any], Any]


def _head(module: ModuleType) -> Head:
    return Head(module.prepare, module.fit_head)


@functools.lru_cache(maxsize=1)
def _heads() -> Registry[Head]:
    from fmeval.modes import knn, linprobe, zeroshot

    reg: Registry[Head] = Registry("robustness head", ConfigError)
    reg.add("knn", _head(knn), "kNN on frozen features, k chosen on clean validation")
    reg.add("linprobe", _head(linprobe), "linear probe trained and selected on clean train/val")
    reg.add("zeroshot", _head(zeroshot), "zero-shot classifier of the prompt bank")
    return reg


def corruption_set(cfg: RunConfig):
    """Whose MedMNIST-C corruptions apply (:class:`fmeval.data.corruptions.CorruptionSet`):
    a MedMNIST dataset's own, a user dataset's card's ``corruptions_like``."""
    from fmeval.data.sources import corruption_set as of_spec

    return of_spec(cfg.dataset)


def _own(cfg: RunConfig):
    """The dataset's own MedMNIST-C set (callers that resolved nothing: a MedMNIST name)."""
    from fmeval.data.corruptions import CorruptionSet

    flag = cfg.dataset.strip().lower()
    return CorruptionSet(flag, f"{flag}'s own MedMNIST-C corruptions")


def resolve_corruptions(cfg: RunConfig, cset=None) -> tuple[str, ...]:
    """The corruptions to apply (default: all of the dataset's), checked before any model loads.

    Fails in one line when ``medmnistc`` is missing (naming the install
    script), for a user dataset whose card names no ``corruptions_like``, for a
    name that is not one of the dataset's corruptions, or for one that needs
    larger images.
    """
    from fmeval.data.corruptions import MIN_SIZE, CorruptionError, corruptions_for

    cset = cset or corruption_set(cfg)
    try:
        known = corruptions_for(cset.like)
    except CorruptionError as exc:
        if cset.like == cfg.dataset.strip().lower():
            raise
        raise CorruptionError(f"{cset.rule}: {exc}") from None
    wanted = cfg.robustness.corruptions or known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise CorruptionError(f"--corruptions {', '.join(unknown)}: not MedMNIST-C corruption(s) of "
                              f"{cset.like}; use any of: {', '.join(known)}.")
    small = [c for c in wanted if cfg.size < MIN_SIZE.get(c, 0)]
    if small:
        raise CorruptionError(f"{', '.join(small)} need(s) images of at least "
                              f"{max(MIN_SIZE[c] for c in small)} px; --size {cfg.size} is too small "
                              "(leave them out with --corruptions, or use a larger --size).")
    return tuple(wanted)


def corrupted_features(fz, images: np.ndarray, ids: np.ndarray, corruption: str,
                       severity: int, like: str | None = None) -> tuple[torch.Tensor, bool]:
    """Test features of ``images`` under one corruption/severity, through the feature cache.
    ``like``: the MedMNIST-C dataset whose parameters apply (default: the dataset itself)."""
    from fmeval.data.corruptions import corrupt, corruption_key
    from fmeval.features import extract_features
    from fmeval.pipeline import feature_key

    cfg = fz.config
    like = like or fz.data.flag
    key = {**feature_key(fz.adapter, fz.data, "test", cfg, fz.transform, fz.precision, fz.view),
           "corruption": corruption_key(like, corruption, severity, cfg.seed)}

    def compute() -> torch.Tensor:
        bad = corrupt(images, like, corruption, severity, cfg.seed, indices=ids)
        return extract_features(fz.adapter, bad, transform=fz.transform, batch_size=cfg.batch_size,
                                device=fz.device, precision=fz.precision,
                                description=f"{cfg.model} {fz.data.flag} test {corruption}@{severity}")

    return fz.cache.get_or_compute("image", key, compute, device=fz.device, expect_rows=len(ids))


def _values(task: str, labels: np.ndarray, scores: Any, class_names: list[str], prior: np.ndarray,
            seed: int) -> dict[str, float]:
    """Every metric's point estimate on one corrupted test set (no bootstrap)."""
    from fmeval.metrics import class_prior, compute_metrics

    rep = compute_metrics(task, labels, scores_np(scores), class_names=class_names,
                          n_boot=0, seed=seed, prior=class_prior(task, prior, len(class_names)))
    return {name: mv.value for name, mv in rep.metrics.items()}


def robustness_record(clean: dict[str, float], table: dict[str, dict[int, dict[str, float]]], *,
                      cfg: RunConfig, head: str, cache: dict[str, int], cset=None) -> dict[str, Any]:
    """``extras["robustness"]``: the table, its summary per metric, and what made the images
    (``corruptions_like``: whose MedMNIST-C corruptions and parameters, and by which rule)."""
    from fmeval.metrics.aggregate import summarize_robustness
    from fmeval.data.corruptions import SCHEME_VERSION, medmnistc_version, severity_params

    names = [m for m in SHOWN_METRICS if m in clean] + [m for m in clean if m not in SHOWN_METRICS]
    summary = summarize_robustness(clean, table, metrics=names)
    cset = cset or _own(cfg)
    return {
        "head": head,
        "corruptions": list(table),
        "severities": list(cfg.robustness.severities),
        "seed": cfg.seed,
        "medmnistc": medmnistc_version(),
        "scheme": SCHEME_VERSION,
        "corruptions_like": cset.as_dict(),
        "severity_params": {c: severity_params(cset.like, c) for c in table},
        "metrics": names,
        "clean": clean,
        "table": {c: {str(s): v for s, v in per.items()} for c, per in table.items()},
        "summary": {m: summary[m].to_dict() for m in names},
        "medmnistc_errors": medmnistc_comparison(cfg, clean, table, cset),
        "cache": cache,
        "note": "corrupted sets: point estimates (no bootstrap); relative drop = (clean - mean corrupted) / "
                "clean, signed so that positive is worse (for ECE: the relative increase)",
    }


def medmnistc_comparison(cfg: RunConfig, clean: dict[str, float],
                         table: dict[str, dict[int, dict[str, float]]], cset=None) -> dict[str, Any]:
    """MedMNIST-C's balanced error (BE) and relative balanced error (rBE), normalised to AlexNet,
    so a robustness run compares with the MedMNIST-C paper's tables; or why they cannot be given.

    The AlexNet reference is never run here: it is the error table the ``medmnistc`` package
    ships (MedMNIST-C's AlexNet at 224 px, all five severities), said so in the record.
    """
    from fmeval.errors import FmevalError
    from fmeval.metrics.aggregate import medmnistc_errors

    if "balanced_acc" not in clean:
        return {"unavailable": "no balanced accuracy for this task"}
    cset = cset or _own(cfg)
    if cset.like != cfg.dataset.strip().lower():  # AlexNet's errors are on that MedMNIST dataset, not this one
        return {"unavailable": f"MedMNIST-C's AlexNet reference exists for MedMNIST datasets only; this run "
                               f"applied {cset.like}'s corruptions to another dataset"}
    try:
        out = medmnistc_errors(cfg.dataset, clean["balanced_acc"],
                               {c: {s: v["balanced_acc"] for s, v in per.items()} for c, per in table.items()})
    except FmevalError as exc:
        return {"unavailable": str(exc)}
    caveats = []
    if tuple(cfg.robustness.severities) != (1, 2, 3, 4, 5):
        caveats.append("MedMNIST-C averages severities 1-5; this run used "
                       + ",".join(map(str, cfg.robustness.severities)))
    if cfg.size != 224:
        caveats.append(f"the AlexNet reference is at 224 px, this run at {cfg.size} px")
    return {**out, "reference": "AlexNet errors published with MedMNIST-C (the medmnistc package's baselines, "
                                "224 px, severities 1-5); AlexNet was not run here",
            "caveats": caveats}


def _sweep(corruptions: tuple[str, ...], severities: tuple[int, ...],
           score: Callable[[str, int], Any], values: Callable[[Any], dict[str, float]]):
    table: dict[str, dict[int, dict[str, float]]] = {}
    for c in corruptions:
        table[c] = {s: values(score(c, s)) for s in severities}
    return table


def _run_frozen(cfg: RunConfig, corruptions: tuple[str, ...], timer: Timer, cset):
    head_name = cfg.robustness.head
    head = _heads().get(head_name)
    fz = head.prepare(cfg)
    fitted = head.fit(cfg, fz)
    images = fz.data.split("test").images
    idx = fz.indices.get("test")
    ids = np.arange(len(images)) if idx is None else np.asarray(idx)
    images = images if idx is None else images[idx]
    names = list(fz.data.info.labels)
    hits = {"hit": 0, "miss": 0}

    def score(c: str, s: int):
        feats, hit = corrupted_features(fz, images, ids, c, s, like=cset.like)
        hits["hit" if hit else "miss"] += 1
        return fitted.score(feats)

    table = _sweep(corruptions, cfg.robustness.severities, score,
                   lambda sc: _values(fz.data.task, fz.labels["test"], sc, names, fz.prior_labels(), cfg.seed))
    result = result_of(fz, test_scores=fitted.score_split(fz, "test"), val_scores=fitted.val_scores,
                           extras=fitted.extras, selection=fitted.selection, timer=timer)
    clean = {name: mv.value for name, mv in result.test.metrics.items()}
    result.extras["robustness"] = robustness_record(clean, table, cfg=cfg, head=head_name, cache=hits, cset=cset)
    result.wall_time_s = timer.seconds
    return result


def _run_adapter(cfg: RunConfig, corruptions: tuple[str, ...], timer: Timer, cset):
    """A fine-tuned adapter: its test images are corrupted and classified end to end."""
    from fmeval.data.corruptions import corrupt
    from fmeval.modes.finetune import load_finetuned
    from fmeval.pipeline import dataset_record
    from fmeval.training.loop import predict

    ft_cfg, p = load_finetuned(cfg.robustness.adapter, data_root=cfg.data_root, device=cfg.device)
    data, task = p.data, p.data.task
    images, idx = p.images["test"], p.indices.get("test")
    ids = np.arange(len(images)) if idx is None else np.asarray(idx)
    names = list(data.info.labels)
    prior = (p.full_labels or p.labels)["train"]

    def score(c: str, s: int):
        return predict(p.model, corrupt(images, cset.like, c, s, cfg.seed, indices=ids), task=task, setup=p.setup)

    table = _sweep(corruptions, cfg.robustness.severities, score,
                   lambda sc: _values(task, p.labels["test"], sc, names, prior, cfg.seed))
    result = build_result(
        cfg, model=p.model.adapter.describe(), dataset=dataset_record(data, ft_cfg, p.full_labels or p.labels),
        task=task, class_names=names, train_labels=prior, test_labels=p.labels["test"],
        test_scores=predict(p.model, images, task=task, setup=p.setup), transform=p.setup.transform.as_dict(),
        precision=p.setup.precision, selection={"adapter_run": ft_cfg.mode},
        extras={"adapter": str(cfg.robustness.adapter), "adapter_config_hash": ft_cfg.digest(("train", "lora"))},
        warnings=list(data.warnings), wall_time_s=timer.seconds, test_indices=idx,
    )
    clean = {name: mv.value for name, mv in result.test.metrics.items()}
    result.extras["robustness"] = robustness_record(clean, table, cfg=cfg, head=f"adapter ({ft_cfg.mode})",
                                                    cache={"hit": 0, "miss": 0}, cset=cset)
    return result


@register_mode("robustness", frozen=True,
               description="clean-trained head (or fine-tuned adapter) on MedMNIST-C corrupted test images")
def run_robustness(cfg: RunConfig):
    timer = Timer()
    cset = corruption_set(cfg)
    corruptions = resolve_corruptions(cfg, cset)
    if cfg.robustness.adapter:
        return _run_adapter(cfg, corruptions, timer, cset)
    _heads().get(cfg.robustness.head)  # a typo fails before any model loads
    return _run_frozen(cfg, corruptions, timer, cset)
