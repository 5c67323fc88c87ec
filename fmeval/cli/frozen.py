"""Commands on frozen features: features, knn, linprobe."""

from __future__ import annotations

from fmeval.cli.app import app, console, user_defaults
from fmeval.cli.fewshot import run_with_shots
from fmeval.cli.options import COMMON, FEWSHOT, KNN, LINPROBE, Given, command


# features writes the feature cache only: no report, so no --reports-dir, --bootstrap or --track
FEATURES = tuple(o for o in COMMON if o.name not in ("reports_dir", "bootstrap", "track"))


@app.command()
@command(FEATURES)
def features(opts: Given) -> None:
    """Extract frozen features of train/val/test into the feature cache (once)."""
    from fmeval.pipeline import prepare_frozen
    from fmeval.runner import make_config

    from fmeval.validation import check_inputs

    cfg = make_config("knn", opts.explicit(), user=user_defaults())
    check_inputs(cfg)
    fz = prepare_frozen(cfg)
    for split, feats in fz.features.items():
        state = "cached" if fz.cache_hits[split] else "extracted"
        console.print(f"{split:>5}: {tuple(feats.shape)} {state}", highlight=False)
    console.print(f"weights: {fz.adapter.weights_id}   input: {fz.transform.describe()}   "
                  f"precision: {fz.precision}   cache: {fz.cache.root}", markup=False, highlight=False)


@app.command()
@command(COMMON, KNN, FEWSHOT)
def knn(opts: Given) -> None:
    """kNN classification on frozen features; k is chosen on validation.

    --shots K[,K...] --draws N: few-shot, one run per K and draw on seeded
    K-per-class episodes, then a few-shot summary (see --fewshot-selection).
    """
    run_with_shots("knn", opts)


@app.command()
@command(COMMON, LINPROBE, FEWSHOT)
def linprobe(opts: Given) -> None:
    """Linear probe on frozen features: the lr x wd grid trains in parallel, selected on validation.

    --shots K[,K...] --draws N: few-shot, one run per K and draw on seeded
    K-per-class episodes, then a few-shot summary (see --fewshot-selection).
    """
    run_with_shots("linprobe", opts)
