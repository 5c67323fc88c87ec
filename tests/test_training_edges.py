"""Values on the edges, expectations by hand (issue 22 item 12): the LR warm-up's first value, gradient
accumulation scaling, the class-balanced sampler, and ECE's right-closed bin edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import BatchRecorder, fit_on_indices


def _fit(monkeypatch, labels, **cfg):
    from fmeval.training import loop

    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    model = BatchRecorder(head_value=0.1)
    config = loop.TrainConfig(**{"patience": 0, "warmup_epochs": 0, **cfg})
    steps: list[dict] = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        steps.append({"lr": self.param_groups[0]["lr"],
                      "grad": [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]})
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    fit_on_indices(model, labels, config)
    return model, steps


def test_warmup_starts_at_lr_over_steps_plus_one_then_cosine_to_zero(monkeypatch):
    """8 images, batch 2: 4 steps per epoch; warm-up 1 epoch = 4 steps, 3 epochs = 12 steps.
    Step s < 4: lr (s+1)/5; then 0.5 (1 + cos(pi (s-4)/8))."""
    _, steps = _fit(monkeypatch, [0, 1] * 4, lr=0.1, batch_size=2, epochs=3, warmup_epochs=1.0, schedule="cosine")
    want = [0.1 * (s + 1) / 5 for s in range(4)] + [0.1 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8))
                                                   for s in range(4, 12)]
    assert [st["lr"] for st in steps] == pytest.approx(want, rel=1e-12)
    assert steps[0]["lr"] == pytest.approx(0.02)  # not 0 (a wasted step) and not the full 0.1


def _mean_loss_grad(indices: list[int], labels: list[int]) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy over ``indices`` at the toy's initial head (by autograd here)."""
    head = nn.Linear(1, 2)
    torch.nn.init.constant_(head.weight, 0.1)
    torch.nn.init.constant_(head.bias, 0.0)
    x = torch.tensor(indices, dtype=torch.float32)[:, None]
    loss = F.cross_entropy(head(x), torch.tensor([labels[i] for i in indices]))
    loss.backward()
    return [head.weight.grad, head.bias.grad]


@pytest.mark.parametrize("bs,accum", [(2, 2), (1, 4)])
def test_accumulated_gradient_is_the_mean_over_the_effective_batch(monkeypatch, bs, accum):
    labels = [0, 1, 1, 0, 1, 0, 0, 1]
    model, steps = _fit(monkeypatch, labels, lr=0.01, batch_size=bs, accum_steps=accum, epochs=1, schedule="constant")
    assert len(steps) == 8 // (bs * accum)  # one optimiser step per effective batch
    first = [i for b in model.batches[:accum] for i in b]  # the images of the first optimiser step
    want = _mean_loss_grad(first, labels)
    for got, exp in zip(steps[0]["grad"][-2:], want):  # the head's weight and bias
        torch.testing.assert_close(got.reshape(exp.shape), exp, rtol=1e-5, atol=1e-7)


def test_balanced_sampler_weights_and_draws(monkeypatch):
    from fmeval.training.loop import balanced_sample_weights, epoch_order

    labels = np.array([[0]] * 18 + [[1]] * 2)
    w = balanced_sample_weights(labels)
    assert w[:18] == pytest.approx([1 / 18] * 18) and w[18:] == pytest.approx([1 / 2] * 2)
    order = epoch_order(7, 3, 20, w)  # a second implementation of the draw
    want = np.random.default_rng([7, 3]).choice(20, size=20, replace=True, p=np.r_[[1 / 36] * 18, [1 / 4] * 2])
    np.testing.assert_array_equal(order, want)
    # through the loop: the 2 minority images make up about half of all draws
    model, _ = _fit(monkeypatch, labels[:, 0].tolist(), lr=0.01, batch_size=5, epochs=40, sampler="balanced",
                    schedule="constant")
    drawn = np.array([i for b in model.batches for i in b])
    assert drawn.size == 800 and 0.44 < np.mean(drawn >= 18) < 0.56
    # the plain shuffle draws each image exactly once per epoch
    model, _ = _fit(monkeypatch, labels[:, 0].tolist(), lr=0.01, batch_size=5, epochs=1, schedule="constant")
    assert sorted(i for b in model.batches for i in b) == list(range(20))


def test_ece_bins_are_right_closed_at_the_edges():
    """15 bins (k/15, (k+1)/15]. p = 0.6 = 9/15 sits ON an edge: it belongs to (8/15, 9/15], apart from
    p = 0.62 in (9/15, 10/15]. Right-closed: |0 - 0.6| / 2 + |1 - 0.62| / 2 = 0.49 (left-closed bins
    would pool them: |0.5 - 0.61| = 0.11)."""
    from fmeval.metrics import METRICS, compute_metrics, reliability_bins

    y = np.array([0, 1])
    s = np.array([[0.4, 0.6], [0.38, 0.62]])  # both predicted positive; the first is wrong
    assert METRICS.get("ece")("binary-class", y, s) == pytest.approx(0.49)
    bins = reliability_bins("binary-class", y, s)
    assert bins["count"][8] == 1 and bins["count"][9] == 1
    # 1.0 in the last bin, a confidence of exactly 1/3 = 5/15 in (4/15, 5/15] (multi-class, 3 classes)
    y3 = np.array([0, 1])
    s3 = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    b3 = reliability_bins("multi-class", y3, s3)
    assert b3["count"][14] == 1 and b3["count"][4] == 1
    # the bootstrap's batched ECE agrees with the point ECE on the original sample
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 200)
    p = np.round(rng.random(200) * 15) / 15  # every value on an edge
    ss = np.stack([1 - p, p], 1)
    rep = compute_metrics("binary-class", yy, ss, class_names=["a", "b"], n_boot=0, seed=0)
    edges = np.arange(16) / 15
    conf = np.where(p > 0.5, p, 1 - p)
    correct = (p > 0.5).astype(int) == yy
    idx = np.searchsorted(edges, conf, side="left") - 1  # right-closed, second implementation
    idx = np.clip(idx, 0, 14)
    want = sum(abs(correct[idx == k].mean() - conf[idx == k].mean()) * (idx == k).sum() for k in range(15)
               if (idx == k).any()) / 200
    assert rep.metrics["ece"].value == pytest.approx(want, abs=1e-12)


def test_warmup_cosine_edges_by_hand():
    from fmeval.training.optim import WarmupCosine

    one = WarmupCosine(warmup_steps=1, total_steps=3)
    assert one(0) == pytest.approx(0.5)  # (0 + 1) / (1 + 1)
    assert [one(s) for s in (1, 2)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 2))])
    short = WarmupCosine(warmup_steps=4, total_steps=5)  # a one-step cosine: 1 at its start, 0 after it
    assert short(4) == pytest.approx(1.0) and short(5) == pytest.approx(0.0) and short(9) == pytest.approx(0.0)
    none = WarmupCosine(warmup_steps=0, total_steps=4)
    assert none(0) == pytest.approx(1.0) and none(2) == pytest.approx(0.5)
