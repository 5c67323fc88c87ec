"""Selection never sees test, as an invariant (issue 14).

Every mode runs twice on the same synthetic PneumoniaMNIST: once as written,
once with the *test* split's labels replaced by garbage (seeded random labels).
Every choice a run makes (k, lr/weight decay/epoch of the probe, fine-tuning
epoch, prompt style, few-shot episode, protocol settings), every validation
number behind it and the test *scores* themselves must come out identical;
only the test metrics may move. Tiny random encoders on CPU, ~30 s in all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmeval.data.synthetic import synthetic_arrays
from fmeval.io import atomic_path
from fmeval.runner import execute, make_config

N = (40, 20, 30)


def _write(root: Path, arrays: dict) -> str:
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "pneumoniamnist.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return str(root)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("labels")
    arrays = synthetic_arrays("pneumoniamnist", 28, N, seed=0)
    garbage = dict(arrays)
    rng = np.random.default_rng(99)
    garbage["test_labels"] = rng.integers(0, 2, size=arrays["test_labels"].shape).astype(np.uint8)
    assert (garbage["test_labels"] != arrays["test_labels"]).mean() > 0.3
    return {"clean": _write(base / "clean", arrays), "garbage": _write(base / "garbage", garbage)}


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


#: extras that hold choices or validation numbers (timings and cache hits are left out)
CHOICE_EXTRAS = ("k_sweep", "grid", "curves", "epochs_run", "comparison", "comparison_split", "spread_auc",
                 "style", "prompt_bank_hash", "fewshot", "best_epoch", "stopped_early")


def _choices(r) -> dict:
    config = dict(r.config)
    config.pop("data_root")
    training = {k: v for k, v in (r.extras.get("training") or {}).items()
                if k in ("params", "best_epoch", "epochs_run", "stopped_early", "resumed_at_epoch",
                         "steps_per_epoch")}
    return {
        "selection": r.selection,
        "val": None if r.val is None else r.val.to_dict(),
        "extras": {k: r.extras[k] for k in CHOICE_EXTRAS if k in r.extras},
        "training": training,
        "config": config,
        "config_hash": r.config_hash,
        "protocol": r.protocol,
        "transform": r.transform,
        "n_train": r.dataset.get("n_train"),
    }


def _both(roots, mode: str, explicit: dict, tmp_path: Path):
    out = {}
    for name, root in roots.items():
        cfg = make_config(mode, {"model": "resnet18", "dataset": "pneumoniamnist", "tiny": True, "pretrained": False,
                                 "n_boot": 20, "batch_size": 16, **explicit, "data_root": root})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / f"adapters-{name}"))
            out[name] = execute(cfg, write=False)
    return out["clean"], out["garbage"]


def _assert_test_labels_unused(clean, garbage):
    assert _choices(clean) == _choices(garbage)
    np.testing.assert_array_equal(clean.test_scores, garbage.test_scores)  # not a single test score moved
    # ... while the test split itself did change: the run really scored the garbage labels
    assert clean.test.to_dict()["confusion"] != garbage.test.to_dict()["confusion"]


CASES = {
    "knn": ("knn", {"knn.ks": (1, 3, 5, 11)}),
    "knn-euclidean-auc": ("knn", {"knn.ks": (1, 5, 11), "knn.rule": "euclidean-majority", "knn.select_metric": "acc"}),
    # the protocol's settings (k=11, Euclidean majority, zero-padding), on a 32 px canvas to stay fast
    "knn-protocol-medmnist-plus": ("knn", {"protocol": "medmnist-plus", "canvas": 32, "input_size": 32}),
    "knn-fewshot-kshot-val": ("knn", {"knn.ks": (1, 3), "fewshot.shots": 3, "fewshot.selection": "kshot-val"}),
    "linprobe": ("linprobe", {"probe.lrs": (0.001, 0.1), "probe.weight_decays": (0.0, 0.01), "probe.epochs": 15,
                              "probe.patience": 3}),
    "linprobe-fewshot-full-val": ("linprobe", {"probe.lrs": (0.01, 0.1), "probe.epochs": 5, "fewshot.shots": 4,
                                               "fewshot.selection": "full-val"}),
    "finetune-full": ("finetune-full", {"train.epochs": 3, "train.patience": 1, "train.lr": 0.003,
                                        "train.batch_size": 16, "train.max_steps_per_epoch": 2}),
    "finetune-lora": ("finetune-lora", {"model": "vit-b16", "train.epochs": 3, "train.patience": 0,
                                        "train.lr": 0.003, "train.batch_size": 16,
                                        "train.max_steps_per_epoch": 2}),
    "zeroshot": ("zeroshot", {"model": "clip-vit-b32", "zeroshot.prompts": "pneumonia"}),
    "prompts-compare": ("prompts-compare", {"model": "clip-vit-b32", "zeroshot.prompts": "pneumonia"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_garbage_test_labels_change_no_choice_and_no_validation_number(roots, tmp_path, case):
    mode, explicit = CASES[case]
    clean, garbage = _both(roots, mode, explicit, tmp_path)
    _assert_test_labels_unused(clean, garbage)
    if case == "knn-protocol-medmnist-plus":
        assert clean.protocol["name"] == "medmnist-plus" and clean.selection["k"] == 11
        assert clean.config["knn"]["rule"] == "euclidean-majority" and clean.transform["geometry"] == "pad"
    if mode == "knn":
        assert "k" in clean.selection
    elif mode == "linprobe":
        assert {"lr", "weight_decay", "best_epoch"} <= set(clean.selection)
    elif mode.startswith("finetune"):
        assert clean.extras["curves"]["val_auc"] and clean.val is not None
    elif mode == "prompts-compare":
        assert clean.selection["style"] in {r["style"] for r in clean.extras["comparison"]}
        assert clean.extras["comparison_split"] == "val" and len(clean.extras["comparison"]) > 1
