"""Multi-domain training (issue 24): the mm-PT sampler, loss weights, heads, BatchNorm and stopping.

Unit level, on tiny random models and small arrays: the schedule uses every batch
of every dataset once per epoch and draws each step with probability proportional
to the remaining batches (checked against the exact expectations over many
epochs); the loss weights follow n_batches(smallest) / n_batches(d) from the train
and the validation loaders; a step changes the backbone and the active head only
(the other heads are bit-identical, with AdamW weight decay on); per-domain
BatchNorm statistics move only for the active dataset; the total validation loss
is the reference's and early stopping / best epoch follow it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmeval.config import MultiDomainSettings, TrainConfig
from fmeval.errors import ConfigError
from fmeval.training.multidomain import Domain, MultiHeadClassifier, batch_counts, domain_schedule, size_weights
from fmeval.training.multidomain.losses import sord_loss, sord_targets
from fmeval.training.multidomain.sampler import batch_rows, domain_order, domain_weights


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


# -- the schedule ----------------------------------------------------------------------------
def test_every_batch_of_every_dataset_is_used_once_per_epoch():
    counts = [17, 1, 9, 3]
    for epoch in range(5):
        s = domain_schedule(7, epoch, counts)
        assert len(s) == sum(counts)
        np.testing.assert_array_equal(np.bincount(s, minlength=4), counts)
    # a pure function of (seed, epoch): a resumed run replays it; other epochs and seeds differ
    np.testing.assert_array_equal(domain_schedule(7, 3, counts), domain_schedule(7, 3, counts))
    assert not np.array_equal(domain_schedule(7, 3, counts), domain_schedule(7, 4, counts))
    assert not np.array_equal(domain_schedule(7, 3, counts), domain_schedule(8, 3, counts))


def test_each_batch_of_a_dataset_is_drawn_once_in_its_shuffled_order():
    n, bs = 130, 32  # 4 full batches + 2 left over: 5 batches, the last of 2 images
    nb, merge = batch_counts(n, bs)
    assert (nb, merge) == (5, False)
    order = domain_order(0, 0, 0, n)
    rows = np.concatenate([batch_rows(order, k, bs, nb, merge) for k in range(nb)])
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    nb, merge = batch_counts(129, 32)  # a last batch of one image joins the one before
    assert (nb, merge) == (4, True)
    order = domain_order(0, 0, 0, 129)
    assert len(batch_rows(order, 3, 32, nb, merge)) == 33
    assert batch_counts(1000, 10, cap=3) == (3, False)


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


def test_each_step_draws_its_dataset_in_proportion_to_the_remaining_batches():
    """Over 6,000 epochs: the first draw is d with n_d / N; the second, given the first was
    d0, is d with (n_d - [d = d0]) / (N - 1); and each later step (drawing in proportion to
    what remains makes every arrangement of the batches equally likely) is d with n_d / N."""
    counts = np.array([6, 3, 1])
    total = counts.sum()
    draws = np.stack([domain_schedule(seed, 0, counts) for seed in range(6000)])
    first = draws[:, 0]
    for d in range(3):
        assert _binomial_ok(int((first == d).sum()), len(first), counts[d] / total), d
    for d0 in range(3):
        after = draws[first == d0, 1]
        rem = counts - (np.arange(3) == d0)
        for d in range(3):
            assert _binomial_ok(int((after == d).sum()), len(after), rem[d] / (total - 1)), (d0, d)
    for t in (4, total - 1):
        for d in range(3):
            assert _binomial_ok(int((draws[:, t] == d).sum()), len(draws), counts[d] / total), (t, d)


def test_size_weights_are_smallest_over_own_batch_count():
    np.testing.assert_allclose(size_weights([10, 5, 2]), [0.2, 0.4, 1.0])
    np.testing.assert_allclose(domain_weights(None, [10, 5, 2]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(domain_weights("size", [74, 9, 17]), [9 / 74, 1.0, 9 / 17])
    with pytest.raises(ConfigError):
        domain_weights("sqrt", [1, 2])


# -- the model and one trainer -----------------------------------------------------------------
def _adapter(model: str = "resnet18", seed: int = 0):
    from fmeval.adapters import create_adapter

    return create_adapter(model, pretrained=False, tiny=True, seed=seed, input_size=32, device="cpu")


def _domains(rng: np.random.Generator, spec=(("a", "binary-class", 2, 50), ("b", "multi-class", 3, 20),
                                              ("c", "multi-label, binary-class", 4, 30))) -> list[Domain]:
    out = []
    for key, task, k, n in spec:
        def labels(m):
            if task.startswith("multi-label"):
                return (rng.random((m, k)) < 0.4).astype(np.uint8)
            return rng.integers(0, k, size=(m, 1)).astype(np.uint8)

        out.append(Domain(key, key, task, k, rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), labels(n),
                          rng.integers(0, 255, (n // 2 + 3, 28, 28), dtype=np.uint8), labels(n // 2 + 3)))
    return out


def _trainer(adapter, domains, *, domain_bn=False, weights=None, **train):
    from fmeval.data.transforms import resolve_transform
    from fmeval.training.loop import RunSetup
    from fmeval.training.methods import METHODS
    from fmeval.training.multidomain.trainer import MultiDomainTrainer

    method = METHODS.get("full")
    method.prepare(adapter, None)
    model = MultiHeadClassifier(adapter, {d.key: d.n_outputs for d in domains}, domain_bn=domain_bn)
    setup = RunSetup(transform=resolve_transform(adapter.preprocess, geometry="resize", image_size=28),
                     device=torch.device("cpu"), eval_batch_size=64)
    cfg = TrainConfig(**{"batch_size": 8, "lr": 1e-2, "weight_decay": 0.1, "decay_scope": "all",
                         "warmup_epochs": 0, "epochs": 2, **train})
    md = MultiDomainSettings(datasets=tuple(d.flag for d in domains), domain_weights=weights, domain_bn=domain_bn)
    return MultiDomainTrainer(model, domains, cfg, md, method, setup, seed=3), model


def _heads(model) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().clone() for n, t in h.state_dict().items()} for k, h in model.head.items()}


def test_a_step_updates_the_backbone_and_the_active_head_only():
    """Every step of an epoch (each head already has AdamW state from its earlier steps, and
    weight decay is 0.1 on every parameter): the other heads come out bit-identical."""
    from fmeval.training.hooks import TrainHooks

    tr, model = _trainer(_adapter(), _domains(np.random.default_rng(0)))
    seen: list[str] = []
    before = {"heads": _heads(model), "backbone": [p.detach().clone() for p in model.backbone.parameters()]}

    def check(step: int, metrics: dict) -> None:
        active = metrics["domain"]
        now = _heads(model)
        for key, tensors in now.items():
            for name, t in tensors.items():
                same = torch.equal(t, before["heads"][key][name])
                assert same == (key != active), (step, key, active, name)
        moved = [not torch.equal(a, b) for a, b in zip(model.backbone.parameters(), before["backbone"])]
        assert any(moved), step
        before["heads"] = now
        before["backbone"] = [p.detach().clone() for p in model.backbone.parameters()]
        seen.append(active)

    tr.hooks = TrainHooks(on_step=[check])
    for epoch in range(2):
        tr.train_epoch(epoch, lambda *a, **k: None)
    assert len(seen) == 2 * tr.n_batches and set(seen) == {"a", "b", "c"}
    assert tr.plan()["train_batches"] == {"a": 7, "b": 3, "c": 4}


def test_domain_batchnorm_keeps_statistics_per_dataset():
    tr, model = _trainer(_adapter(), _domains(np.random.default_rng(1)), domain_bn=True)
    bn = model.domain_bn.layers[0]
    stats = lambda key: bn._buffers[f"running_mean__{key}"].clone()  # noqa: E731
    before = {k: stats(k) for k in "abc"}
    from fmeval.training.hooks import TrainHooks

    def check(step, metrics):
        active = metrics["domain"]
        for k in "abc":
            assert torch.equal(stats(k), before[k]) == (k != active), (step, k, active)
            before[k] = stats(k)
        assert bn.running_mean is bn._buffers[f"running_mean__{active}"]

    tr.hooks = TrainHooks(on_step=[check])
    tr.train_epoch(0, lambda *a, **k: None)
    # the statistics are part of the saved state: a snapshot restores every dataset's
    keys = [k for k in tr.snapshot() if "running_mean__" in k]
    assert len(keys) == 3 * len(model.domain_bn.layers)


def test_domain_bn_on_a_model_without_batchnorm_is_one_clear_error():
    with pytest.raises(ConfigError, match="no BatchNorm"):
        MultiHeadClassifier(_adapter("vit-s16"), {"a": 2}, domain_bn=True)


def test_loss_weights_come_from_train_and_val_loaders_and_weigh_the_total_val_loss():
    domains = _domains(np.random.default_rng(2))
    tr, model = _trainer(_adapter(), domains, weights="size")
    plan = tr.plan()
    nb_train = [math.ceil(len(d.train_labels) / 8) for d in domains]  # 7, 3, 4
    nb_val = [math.ceil(len(d.val_labels) / 8) for d in domains]  # 4, 2, 3
    assert list(plan["train_weights"].values()) == pytest.approx([min(nb_train) / n for n in nb_train])
    assert list(plan["val_weights"].values()) == pytest.approx([min(nb_val) / n for n in nb_val])
    # the total validation loss: sum over every validation batch of weight x batch loss / number of batches
    val_loss, selected = tr.validate()
    total, n = 0.0, 0
    model.eval()
    for i, d in enumerate(domains):
        model.use(d.key)
        with torch.no_grad():
            z = model(tr.setup.transform.prepare(d.val_images, "cpu"))
        y = tr.rules[i].targets(d.val_labels)
        for s in range(0, len(y), 8):
            total += plan["val_weights"][d.flag] * float(tr.loss_fns[i](z[s:s + 8], y[s:s + 8]))
            n += 1
    assert val_loss == pytest.approx(total / n, rel=1e-4)
    # the default --select-metric auc: the mean of the datasets' validation AUCs selects
    aucs = [tr.last[f"val_auc/{d.flag}"] for d in domains]
    assert len(aucs) == 3 and selected == pytest.approx(float(np.mean(aucs)))
    tr.by_loss = True  # --select-metric loss (the protocol's): the total is what selects
    assert tr.validate() == (pytest.approx(val_loss), pytest.approx(val_loss))


def test_early_stopping_and_best_epoch_follow_the_total_validation_loss(monkeypatch):
    from fmeval.training.loop import run_epochs
    from fmeval.training.multidomain.trainer import MultiDomainTrainer

    tr, model = _trainer(_adapter(), _domains(np.random.default_rng(3)), epochs=8, patience=2,
                         select_metric="loss")
    script = iter([1.0, 0.8, 0.9, 0.85, 0.1, 0.05])
    monkeypatch.setattr(MultiDomainTrainer, "validate", lambda self: (lambda v: (v, v))(next(script)))
    res = run_epochs(tr, model, tr.cfg, setup=tr.setup, run_dir=None, resume=False, on_epoch_end=None,
                     description="t")
    assert res.epochs_run == 4 and res.stopped_early  # epochs 3 and 4 did not beat 0.8: patience 2
    assert res.best_epoch == 2 and res.best_metric == pytest.approx(0.8)
    assert res.curves["val_loss"] == [1.0, 0.8, 0.9, 0.85]


def test_multi_domain_training_refuses_gradient_accumulation():
    with pytest.raises(ConfigError, match="accum-steps"):
        _trainer(_adapter(), _domains(np.random.default_rng(4)), accum_steps=2)


# -- the ordinal loss ----------------------------------------------------------------------------
def test_sord_soft_labels_and_loss_prefer_neighbouring_grades():
    q = sord_targets(torch.tensor([0, 2, 4]), 5)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert q.argmax(1).tolist() == [0, 2, 4]
    assert torch.allclose(q[1, 1], q[1, 3])  # symmetric around the true grade
    expected = torch.softmax(-(torch.arange(5.0) - 2) ** 2, 0)
    assert torch.allclose(q[1], expected)
    loss = sord_loss(5)
    y = torch.tensor([2])
    near = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0]])  # confident in grade 3
    far = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])  # confident in grade 0
    assert loss(near, y) < loss(far, y)
