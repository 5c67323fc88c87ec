"""The training loop's callback point (fmeval.training.hooks): what observers receive, and
that a failing observer never fails or changes a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmeval.config import TrainConfig
from fmeval.training.hooks import TrainHooks


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def _fit(hooks):
    from fmeval.adapters import create_adapter
    from fmeval.data.transforms import resolve_transform
    from fmeval.training.loop import RunSetup, TrainData, fit
    from fmeval.training.methods import METHODS, Classifier

    torch.manual_seed(0)
    adapter = create_adapter("resnet18", pretrained=False, tiny=True, seed=0, input_size=32, device="cpu")
    method = METHODS.get("full")
    method.prepare(adapter, None)
    model = Classifier(adapter, 2)
    rng = np.random.default_rng(0)
    data = TrainData(rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), rng.integers(0, 2, (40, 1)).astype(np.uint8),
                     rng.integers(0, 255, (20, 28, 28), dtype=np.uint8), rng.integers(0, 2, (20, 1)).astype(np.uint8),
                     "binary-class", 2)
    setup = RunSetup(transform=resolve_transform(adapter.preprocess, geometry="resize", image_size=28),
                     device=torch.device("cpu"))
    cfg = TrainConfig(epochs=2, batch_size=16, patience=0, warmup_epochs=0)
    res = fit(model, data, cfg, method=method, setup=setup, seed=1, hooks=hooks)
    return res, [p.detach().clone() for p in model.parameters()]


def test_observers_see_every_step_and_epoch_and_a_failing_one_changes_nothing():
    steps, epochs = [], []
    res, weights = _fit(TrainHooks(on_step=[lambda s, m: steps.append((s, m))],
                                   on_epoch=[lambda e, m: epochs.append((e, m))]))
    assert [s for s, _ in steps] == list(range(1, 2 * res.steps_per_epoch + 1))
    assert {"epoch", "train_loss", "lr"} <= set(steps[0][1]) and steps[-1][1]["epoch"] == 2
    assert [e for e, _ in epochs] == [1, 2]
    assert [m["val_loss"] for _, m in epochs] == res.curves["val_loss"]
    assert [m["val_auc"] for _, m in epochs] == res.curves["val_auc"]

    def broken(*_):
        raise RuntimeError("tracker offline")

    res2, weights2 = _fit(TrainHooks(on_step=[broken], on_epoch=[broken]))
    assert res2.curves == res.curves
    assert all(torch.equal(a, b) for a, b in zip(weights, weights2))


def test_trackers_subscribe_through_the_hooks_on_one_step_axis(monkeypatch):
    """Experiment trackers see optimiser steps and, at each epoch's last step, the epoch's numbers
    renamed for the trackers (train_loss -> train/loss); a multi-domain step's dataset is not a number."""
    import fmeval.training.hooks as hooks_mod

    assert hooks_mod.with_trackers(None) is None  # no tracked run: nothing subscribes, nothing costs
    seen: list[tuple[int, dict]] = []
    monkeypatch.setattr(hooks_mod, "step_callbacks", lambda: [lambda step, m: seen.append((step, dict(m)))])
    hooks = hooks_mod.with_trackers(None)
    hooks.step(1, {"epoch": 1, "train_loss": 0.75, "lr": 1e-3, "domain": "breastmnist"})
    hooks.step(2, {"epoch": 1, "train_loss": 0.5, "lr": 5e-4})
    hooks.epoch(1, {"train_loss": 0.625, "val_loss": 0.7, "val_auc": 0.81, "lr": 5e-4, "best_epoch": 1,
                    "val_loss/breastmnist": 0.9})
    assert seen == [
        (1, {"train/step_loss": 0.75, "train/lr": 1e-3}),
        (2, {"train/step_loss": 0.5, "train/lr": 5e-4}),
        (2, {"train/loss": 0.625, "train/val_loss": 0.7, "train/val_auc": 0.81, "train/lr_epoch": 5e-4,
             "train/best_epoch": 1.0, "train/val_loss/breastmnist": 0.9, "train/epoch": 1.0}),
    ]
