"""Numbers that make a benchmark trustworthy, on data built so that the wrong rule gives a different answer.

Each test here guards one choice that a plausible slip would silently change
(issue 14): k chosen on validation, the probe head chosen by validation loss,
standardisation statistics from train, the exported bias, the best fine-tuning
epoch and early stopping, the majority baseline's training prior, the kNN
temperature, the float64 Euclidean re-ranking, argmax ties and the bootstrap
quantiles. They are fast unit tests: ``scripts/mutation.sh`` runs them (with
tests/test_metrics.py and tests/test_probes.py) against every mutant.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from helpers import plain_method

from fmeval.config import KnnSettings, RunConfig
from fmeval.metrics import bootstrap, class_prior, compute_metrics, percentile_ci, predict_labels
from fmeval.modes.base import build_result
from fmeval.modes.knn import fit_head as knn_fit_head, select_k
from fmeval.probes.knn import knn_predict
from fmeval.probes.linear import ProbeConfig, _mean_std, probe_lr_factor, train_linear_probe


# --------------------------------------------------------------------------- #
# kNN: k is chosen on validation, never on test
# --------------------------------------------------------------------------- #
def _knn_frozen(val_labels: list[int], test_labels: list[int]):
    """Frozen features where k=1 and k=5 disagree on every query.

    Query A (x=0): its nearest training point is class 1, the next four class 0;
    query B (x=10): nearest class 0, next four class 1. Validation and test hold
    the *same* queries with opposite labels, so validation prefers k=1 and test k=5.
    """
    xs = [0.1, 0.2, 0.3, 0.4, 0.5, 10.1, 10.2, 10.3, 10.4, 10.5]
    ys = [1, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    train = torch.tensor([[x, 0.0] for x in xs])
    queries = torch.tensor([[0.0, 0.0], [10.0, 0.0]] * 3)
    col = lambda v: np.array(v * 3, dtype=np.int64).reshape(-1, 1)  # noqa: E731
    return SimpleNamespace(
        data=SimpleNamespace(task="binary-class", info=SimpleNamespace(n_classes=2, flag="pneumoniamnist")),
        features={"train": train, "val": queries.clone(), "test": queries.clone()},
        labels={"train": np.array(ys).reshape(-1, 1), "val": col(val_labels), "test": col(test_labels)},
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("metric", ["auc", "acc", "nll"])
def test_knn_k_is_the_validation_best_not_the_test_best(metric):
    fz = _knn_frozen(val_labels=[1, 0], test_labels=[0, 1])  # val: k=1 right; test: k=5 right
    cfg = RunConfig(mode="knn", model="x", dataset="pneumoniamnist",
                    knn=KnnSettings(ks=(1, 5), rule="euclidean-majority", select_metric=metric))
    head = knn_fit_head(cfg, fz)
    assert head.selection == {"k": 1, "select_metric": metric}
    sweep = {r["k"]: r[f"val_{metric}"] for r in head.extras["k_sweep"]}
    assert set(sweep) == {1, 5}
    if metric == "nll":
        assert sweep[1] < sweep[5]
    else:
        assert sweep == {1: 1.0, 5: 0.0}
    # the test split really does prefer k=5: choosing there would have given a different k
    test = {k: s.argmax(1).numpy() for k, s in
            knn_predict(fz.features["train"], torch.tensor([1, 0, 0, 0, 0, 0, 1, 1, 1, 1]), fz.features["test"],
                        (1, 5), n_classes=2, rule="euclidean-majority").items()}
    y_test = fz.labels["test"][:, 0]
    assert (test[5] == y_test).all() and not (test[1] == y_test).any()
    torch.testing.assert_close(head.val_scores, head.score(fz.features["val"]))


def test_knn_k_follows_the_validation_labels():
    """Same features, swapped validation labels: the choice follows validation (and test is ignored)."""
    cfg = RunConfig(mode="knn", model="x", dataset="pneumoniamnist",
                    knn=KnnSettings(ks=(1, 5), rule="euclidean-majority", select_metric="auc"))
    assert knn_fit_head(cfg, _knn_frozen(val_labels=[0, 1], test_labels=[0, 1])).selection["k"] == 5
    assert knn_fit_head(cfg, _knn_frozen(val_labels=[0, 1], test_labels=[1, 0])).selection["k"] == 5


def test_select_k_direction_ties_and_nan():
    rows = [{"k": 1, "val_auc": 0.7}, {"k": 5, "val_auc": 0.9}, {"k": 11, "val_auc": 0.9},
            {"k": 20, "val_auc": float("nan")}]
    assert select_k(rows, "auc")["k"] == 5  # highest; a tie goes to the smaller k; NaN never wins
    assert select_k([{"k": 3, "val_auc": float("nan")}, {"k": 1, "val_auc": 0.1}], "auc")["k"] == 1
    losses = [{"k": 1, "val_nll": 0.3}, {"k": 5, "val_nll": 0.2}, {"k": 11, "val_nll": 0.2},
              {"k": 20, "val_nll": 0.5}]
    assert select_k(losses, "nll")["k"] == 5  # lower is better for a loss; tie -> smaller k
    assert select_k([{"k": 7, "val_auc": float("nan")}], "auc")["k"] == 7


# --------------------------------------------------------------------------- #
# kNN: temperature, neighbours that disagree, float64 re-ranking, ties
# --------------------------------------------------------------------------- #
def _disagreeing():
    """One query; its 3 nearest (cosine) neighbours have similarities 0.9 / 0.8 / 0.7 and labels 0 / 1 / 1."""
    sims = [0.9, 0.8, 0.7, -0.5]
    train = torch.tensor([[s, math.sqrt(1 - s * s)] for s in sims], dtype=torch.float32)
    labels = torch.tensor([0, 1, 1, 0])
    return train, labels, torch.tensor([[1.0, 0.0]])


def _expected_cosine(temperature: float) -> np.ndarray:
    w = np.exp(np.array([0.9, 0.8, 0.7]) / temperature)
    return np.array([w[0], w[1] + w[2]]) / w.sum()


def test_knn_cosine_temperature_weights_disagreeing_neighbours():
    train, labels, query = _disagreeing()
    out = knn_predict(train, labels, query, [3], n_classes=2, temperature=0.07)[3][0].double().numpy()
    np.testing.assert_allclose(out, _expected_cosine(0.07), rtol=1e-5)  # [0.6654, 0.3346]
    assert abs(out[0] - _expected_cosine(0.7)[0]) > 0.1  # T matters on this data
    hot = knn_predict(train, labels, query, [3], n_classes=2, temperature=0.7)[3][0].double().numpy()
    np.testing.assert_allclose(hot, _expected_cosine(0.7), rtol=1e-5)


def test_knn_default_temperature_is_dinov2s_0_07_everywhere():
    train, labels, query = _disagreeing()
    default = knn_predict(train, labels, query, [3], n_classes=2)[3][0].double().numpy()
    np.testing.assert_allclose(default, _expected_cosine(0.07), rtol=1e-5)
    assert KnnSettings().temperature == 0.07
    from fmeval.cli.options import KNN
    from fmeval.runner import make_config

    (opt,) = [o for o in KNN if o.name == "temperature"]
    assert float(opt.default_text) == 0.07  # what --help says
    assert make_config("knn", {"model": "vit-s16", "dataset": "pneumoniamnist"}).knn.temperature == 0.07


def _near_ties(seed: int, n: int = 200, d: int = 8, n_query: int = 40):
    """Training points at distances 1, 1 + 1e-4, 1 + 2e-4, ... from a centre 10 units from the origin:
    float32 ``||b||^2 - 2ab`` cannot rank them, float64 can (as scikit-learn does)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=d) * 10
    dirs = rng.normal(size=(n, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radii = 1.0 + np.arange(n) * 1e-4
    rng.shuffle(radii)
    x = (centre + dirs * radii[:, None]).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    q = (centre + rng.normal(size=(n_query, d)) * 1e-3).astype(np.float32)
    return x, y, q


@pytest.mark.parametrize("seed", [2, 3])
def test_euclidean_near_ties_match_sklearn_exactly(seed):
    x, y, q = _near_ties(seed)
    sk = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(x.astype(np.float64), y)
    ours = knn_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q), [5], n_classes=3,
                       rule="euclidean-majority")[5]
    np.testing.assert_allclose(ours.numpy(), sk.predict_proba(q.astype(np.float64)), atol=1e-6)


def test_euclidean_vote_and_distance_ties_go_to_the_lowest_class_like_sklearn():
    # integer grid: exact distance ties (two points at distance 1 on either side)
    x = np.array([[0, 1], [0, -1], [1, 0], [-1, 0], [3, 3], [3, 4]], dtype=np.float32)
    y = np.array([2, 1, 2, 1, 0, 0])
    q = np.array([[0, 0], [0, 0.25], [3, 3.5]], dtype=np.float32)
    sk = KNeighborsClassifier(n_neighbors=4, algorithm="brute").fit(x.astype(np.float64), y)
    ours = knn_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q), [4], n_classes=3,
                       rule="euclidean-majority")[4].numpy()
    np.testing.assert_allclose(ours, sk.predict_proba(q.astype(np.float64)), atol=1e-6)
    # votes tied 2:2 between classes 1 and 2 -> class 1 (the lower index), as scikit-learn predicts
    assert predict_labels("multi-class", ours).tolist() == sk.predict(q.astype(np.float64)).tolist() == [1, 1, 0]


# --------------------------------------------------------------------------- #
# Metrics: argmax ties, bootstrap quantiles, the majority baseline's prior
# --------------------------------------------------------------------------- #
def test_argmax_ties_go_to_the_lowest_class_index():
    s = np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7]])
    assert predict_labels("multi-class", s).tolist() == [0, 1, 0, 2]
    assert predict_labels("ordinal-regression", s).tolist() == [0, 1, 0, 2]
    assert predict_labels("binary-class", np.array([[0.5, 0.5], [0.4, 0.6]])).tolist() == [0, 1]  # p > 0.5
    assert predict_labels("multi-label, binary-class", np.array([[0.5, 0.51]])).tolist() == [[0, 1]]
    y = np.array([0, 1, 2, 2])
    rep = compute_metrics("multi-class", y, s, class_names=["a", "b", "c"], n_boot=0)
    assert rep.metrics["acc"].value == accuracy_score(y, np.argmax(s, axis=1)) == 0.75
    assert rep.confusion[2] == [1, 0, 1]  # the three-way tie was counted as class 0


def test_percentile_ci_is_2_5_and_97_5():
    assert percentile_ci(np.arange(1001.0), 0.95) == (pytest.approx(25.0), pytest.approx(975.0), 1001)
    assert percentile_ci(np.arange(1001.0), 0.90) == (pytest.approx(50.0), pytest.approx(950.0), 1001)
    lo, hi, k = percentile_ci(np.array([np.nan, 1.0, 3.0, np.inf]), 0.5)
    assert (lo, hi, k) == (pytest.approx(1.5), pytest.approx(2.5), 2)  # undefined resamples are dropped
    assert all(math.isnan(v) for v in percentile_ci(np.array([np.nan, 1.0]), 0.95)[:2])


def test_reported_ci_is_the_2_5_and_97_5_quantile_of_the_resamples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    s = np.stack([1 - p, p], axis=1)
    rep = compute_metrics("binary-class", y, s, class_names=["n", "p"], n_boot=200, seed=3)
    assert rep.ci == 0.95
    boot = bootstrap("binary-class", y, s, ["auc", "acc"], n_boot=200, seed=3)
    for m in ("auc", "acc"):
        lo, hi = np.quantile(boot[m], [0.025, 0.975])
        assert (rep.metrics[m].ci_low, rep.metrics[m].ci_high) == (pytest.approx(lo), pytest.approx(hi))
        assert rep.metrics[m].n_boot == 200


def test_majority_baseline_uses_the_training_prior_not_the_test_labels():
    train = np.array([0] * 8 + [1] * 2).reshape(-1, 1)  # majority: class 0
    test = np.array([0] * 2 + [1] * 8).reshape(-1, 1)  # majority: class 1
    val = np.array([0] * 3 + [1] * 7).reshape(-1, 1)
    scores = np.tile([0.3, 0.7], (10, 1))
    cfg = RunConfig(mode="knn", model="x", dataset="pneumoniamnist", n_boot=0)
    r = build_result(cfg, model={"name": "x"}, dataset={"flag": "pneumoniamnist", "size": 28},
                     task="binary-class", class_names=["normal", "pneumonia"], train_labels=train,
                     test_labels=test, test_scores=scores, val_labels=val, val_scores=scores,
                     transform={}, precision="fp32")
    assert r.test.baseline["acc"] == pytest.approx(0.2)  # "always class 0" on a test set that is 80 % class 1
    assert r.val.baseline["acc"] == pytest.approx(0.3)
    assert r.test.baseline["nll"] == pytest.approx(-(0.2 * math.log(0.8) + 0.8 * math.log(0.2)))
    np.testing.assert_allclose(class_prior("binary-class", train[:, 0]), [0.8, 0.2])


# --------------------------------------------------------------------------- #
# Linear probe: head chosen by validation loss; statistics from train; the exported bias
# --------------------------------------------------------------------------- #
def _overfit_data(seed=0, n=24, d=64):
    """Few samples, many dimensions, labels only half explained by the features: a head without
    weight decay at a large lr memorises the training set (lowest training loss) and is worst on
    validation; the heavily decayed head is best there."""
    g = torch.Generator().manual_seed(seed)
    def draw(m):
        x = torch.randn(m, d, generator=g)
        y = ((x[:, 0] + 1.5 * torch.randn(m, generator=g)) > 0).long()
        return x, y
    return draw(n), draw(200)


def test_linear_probe_keeps_the_validation_best_head_not_the_lowest_training_loss():
    (xtr, ytr), (xva, yva) = _overfit_data()
    cfg = ProbeConfig(lrs=(0.1,), weight_decays=(0.0, 8.0), epochs=40, patience=40)
    probe = train_linear_probe(xtr, ytr, xva, yva, n_outputs=2, multilabel=False, config=cfg)
    alone = {wd: train_linear_probe(xtr, ytr, xva, yva, n_outputs=2, multilabel=False,
                                    config=ProbeConfig(lrs=(0.1,), weight_decays=(wd,), epochs=40, patience=40))
             for wd in (0.0, 8.0)}
    # the data distinguishes the two rules: wd=0 has the lower training loss, wd=8 the lower validation loss
    assert alone[0.0].curves["train_loss"][-1] < alone[8.0].curves["train_loss"][-1]
    assert alone[8.0].val_loss < alone[0.0].val_loss
    assert probe.weight_decay == 8.0 and probe.lr == 0.1
    assert probe.val_loss == min(r["val_loss"] for r in probe.grid)
    assert probe.val_loss == pytest.approx(alone[8.0].val_loss, rel=1e-5)
    by_wd = {r["weight_decay"]: r for r in probe.grid}
    assert by_wd[0.0]["val_loss"] == pytest.approx(alone[0.0].val_loss, rel=1e-5)
    assert probe.best_epoch == alone[8.0].best_epoch == by_wd[8.0]["best_epoch"]
    # what the head predicts is that of the selected head, in raw feature space
    torch.testing.assert_close(probe.logits(xva), alone[8.0].logits(xva), rtol=1e-4, atol=1e-4)


def test_linear_probe_best_epoch_and_early_stopping_follow_validation_loss():
    (xtr, ytr), (xva, yva) = _overfit_data(seed=1)
    probe = train_linear_probe(xtr, ytr, xva, yva, n_outputs=2, multilabel=False,
                               config=ProbeConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=60, patience=3))
    val = probe.curves["val_loss"]
    best = int(np.argmin(val))
    assert probe.best_epoch == best + 1 and probe.val_loss == pytest.approx(val[best])
    assert probe.epochs_run == best + 1 + 3 < 60  # stopped `patience` epochs after the best one
    assert probe.curves["train_loss"][-1] < probe.curves["train_loss"][best]  # it kept fitting train


def test_standardisation_statistics_come_from_train_only():
    (xtr, ytr), (xva, yva) = _overfit_data(seed=2)
    cfg = ProbeConfig(lrs=(0.01,), weight_decays=(0.0,), epochs=5, patience=5)
    a = train_linear_probe(xtr, ytr, xva, yva, n_outputs=2, multilabel=False, config=cfg)
    # validation features on another scale and offset: the training trajectory must not move
    b = train_linear_probe(xtr, ytr, xva * 7 + 3, yva, n_outputs=2, multilabel=False, config=cfg)
    assert a.curves["train_loss"] == b.curves["train_loss"]
    # training features rescaled: standardised training features, hence the trajectory, are the same
    c = train_linear_probe(xtr * 50 - 20, ytr, xva * 50 - 20, yva, n_outputs=2, multilabel=False, config=cfg)
    np.testing.assert_allclose(a.curves["train_loss"], c.curves["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(a.curves["val_loss"], c.curves["val_loss"], rtol=1e-4)


def test_mean_std_matches_torch():
    x = torch.randn(37, 5) * 3 + 2
    mu, sd = _mean_std(x, chunk=8)
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(sd, x.std(0))  # unbiased, as scikit-learn's StandardScaler is not
    mu1, sd1 = _mean_std(x[:1])
    torch.testing.assert_close(mu1, x[0]) and torch.testing.assert_close(sd1, torch.zeros(5))


def test_exported_bias_folds_the_standardisation_back_exactly():
    """A head trained on raw = z * s + m (standardised internally) must give, on raw features, the
    logits of the same head trained on z itself: weight / s and bias - m @ weight."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 6, generator=g)
    z = (z - z.mean(0)) / z.std(0)  # exactly standardised: mean 0, unbiased std 1
    y = (z[:, 0] - z[:, 1] > 0).long()
    s = torch.tensor([2.0, 0.5, 3.0, 1.0, 4.0, 0.25])
    m = torch.tensor([5.0, -3.0, 10.0, 2.0, -7.0, 1.0])
    cfg = ProbeConfig(lrs=(0.05,), weight_decays=(0.0,), epochs=10, patience=10)
    ref = train_linear_probe(z, y, z, y, n_outputs=2, multilabel=False, config=cfg, standardize=False)
    raw = z * s + m
    probe = train_linear_probe(raw, y, raw, y, n_outputs=2, multilabel=False, config=cfg)
    assert float(ref.bias.abs().max()) > 1e-3 and float((m @ probe.weight).abs().max()) > 0.5
    torch.testing.assert_close(probe.weight, ref.weight / s[:, None], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(probe.logits(raw), ref.logits(z), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(probe.bias, ref.bias - m @ probe.weight, rtol=1e-3, atol=1e-3)


def test_zero_shot_initial_head_folds_into_raw_space():
    """The unchanged starting classifier (best epoch 0) comes back exactly, bias included."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g) * 3 + 4
    y = torch.randint(0, 2, (50,), generator=g)
    init = torch.randn(2, 4, generator=g)
    probe = train_linear_probe(x, y, x, 1 - y, n_outputs=2, multilabel=False, init_weight=init,
                               config=ProbeConfig(lrs=(1e-9,), weight_decays=(0.0,), epochs=2, patience=1))
    torch.testing.assert_close(probe.logits(x), x @ init.T, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- #
# Fine-tuning: the best validation epoch is kept; early stopping on validation loss
# --------------------------------------------------------------------------- #
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def _scripted_fit(monkeypatch, val_loss, val_metric, *, patience, epochs=None, select_metric="auc", has_val=True,
                  hook=None):
    """Run the real training loop with epochs and validation scores scripted: after epoch e every
    weight holds e, and validation reports the given curves."""
    from fmeval.training import loop

    epochs = epochs or len(val_loss)
    curve = iter(zip(val_loss, val_metric))

    def train_epoch(self, epoch, tick):
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(epoch + 1)
        return 1.0 / (epoch + 1)  # training loss keeps falling

    monkeypatch.setattr(loop._Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(loop._Trainer, "validate", lambda self: next(curve))
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    model = _Tiny()
    data = loop.TrainData(np.zeros((8, 2), np.uint8), np.array([[0], [1]] * 4),
                          np.zeros((4, 2), np.uint8) if has_val else None,
                          np.array([[0], [1]] * 2) if has_val else None, task="binary-class", n_outputs=2)
    cfg = loop.TrainConfig(epochs=epochs, patience=patience, select_metric=select_metric, batch_size=4)
    fit = loop.fit(model, data, cfg, method=plain_method(),
                   setup=loop.RunSetup(transform=None, device=torch.device("cpu")), seed=0, on_epoch_end=hook)
    held = {float(v) for p in model.parameters() for v in p.detach().flatten()}
    return fit, held


def test_finetune_keeps_the_best_validation_epoch_even_when_it_is_the_first(monkeypatch):
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.6, 0.7, 0.8], [0.9, 0.8, 0.7, 0.6], patience=0)
    assert fit.best_epoch == 1 and fit.best_metric == 0.9 and held == {1.0}  # the model holds epoch 1
    assert fit.epochs_run == 4 and not fit.stopped_early  # patience 0: no early stopping
    assert fit.curves["val_auc"] == [0.9, 0.8, 0.7, 0.6] and fit.curves["epoch"] == [1, 2, 3, 4]


def test_finetune_best_epoch_in_the_middle_and_by_loss(monkeypatch):
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.4, 0.45, 0.6], [0.6, 0.7, 0.9, 0.8], patience=0)
    assert fit.best_epoch == 3 and held == {3.0}  # best AUC, although the loss was best at epoch 2
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.4, 0.45, 0.6], [0.5, 0.4, 0.45, 0.6], patience=0,
                              select_metric="loss")
    assert fit.best_epoch == 2 and held == {2.0} and fit.best_metric == 0.4
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.5, 0.4], [0.7, 0.7, 0.6], patience=0)
    assert fit.best_epoch == 1 and held == {1.0}  # a tie does not replace the earlier epoch


def test_early_stopping_on_rising_validation_loss_with_patience_1(monkeypatch):
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8, 0.9], patience=1)
    assert fit.epochs_run == 2 and fit.stopped_early  # epoch 2 did not improve the loss: stop
    assert fit.best_epoch == 2 and held == {2.0}  # ... but AUC did improve there: the selection keeps it


def test_early_stopping_counts_epochs_since_the_last_loss_improvement(monkeypatch):
    fit, _ = _scripted_fit(monkeypatch, [0.5, 0.6, 0.4, 0.45, 0.5, 0.3, 0.2], [0.5] * 7, patience=2)
    assert fit.epochs_run == 5 and fit.stopped_early and fit.best_epoch == 1
    fit, _ = _scripted_fit(monkeypatch, [0.5, 0.5, 0.5, 0.4], [0.5, 0.6, 0.7, 0.8], patience=2)
    assert fit.epochs_run == 3 and fit.stopped_early  # an equal loss is no improvement
    fit, _ = _scripted_fit(monkeypatch, [0.5, 0.4, 0.3], [0.5, 0.6, 0.7], patience=1)
    assert fit.epochs_run == 3 and not fit.stopped_early and fit.best_epoch == 3


def test_prompt_comparison_prefers_the_higher_validation_auc_and_never_nan():
    from fmeval.modes.prompt_compare import _better

    assert _better(0.8, 0.7) and not _better(0.7, 0.8)
    assert not _better(0.7, 0.7)  # a tie keeps the style met first
    assert _better(0.5, float("nan")) and not _better(float("nan"), 0.5)
    assert not _better(float("nan"), float("nan"))


def test_k_sweep_trimming_and_checks():
    from fmeval.errors import ConfigError
    from fmeval.modes.knn import check_ks, sweep_ks

    default = KnnSettings().ks  # (1, 5, 11, 20, 50)
    assert sweep_ks(default, 100) == (default, [])
    assert sweep_ks(default, 12) == ((1, 5, 11), ["k > 12 training samples left out of the default k sweep"])
    assert sweep_ks(default, 50) == (default, [])  # k == n_train fits
    assert sweep_ks((3, 7), 7) == ((3, 7), [])
    with pytest.raises(ConfigError, match=r"^--k 9,12 exceeds the 8 training samples\.$"):
        sweep_ks((3, 9, 12), 8)  # a chosen sweep is never trimmed silently
    check_ks(default, 1)  # the default sweep is trimmed, not refused, while k=1 fits
    check_ks((2, 4), 4)
    with pytest.raises(ConfigError, match=r"^--k 5 exceeds the 4 training samples\.$"):
        check_ks((2, 5), 4)
    with pytest.raises(ConfigError, match=r"^--k 1,5,11,20,50 exceeds the 0 training samples\.$"):
        check_ks(default, 0)


def test_multilabel_knn_is_the_weighted_positive_fraction_per_label():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]])
    q = torch.tensor([[1.0, 0.05]])
    out = knn_predict(train, y, q, [2, 3], n_classes=3, multilabel=True, rule="euclidean-majority")
    torch.testing.assert_close(out[2][0], torch.tensor([1.0, 0.5, 0.5]))
    torch.testing.assert_close(out[3][0], torch.tensor([2 / 3, 2 / 3, 2 / 3]))
    cos = knn_predict(train, y, q, [2], n_classes=3, multilabel=True, temperature=0.1)[2][0]
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(train[:2], dim=1).T
    w = (sims[0] / 0.1).exp()
    torch.testing.assert_close(cos, (w[:, None] * y[:2].float()).sum(0) / w.sum())


def test_fewshot_episode_clips_k_and_fixed_runs_take_the_first_k():
    from fmeval.config import FewShotSettings
    from fmeval.modes.knn import _candidate_ks

    shots = RunConfig(mode="knn", model="x", dataset="pneumoniamnist", knn=KnnSettings(ks=(11, 1, 5, 5)),
                      fewshot=FewShotSettings(shots=2, selection="kshot-val"))
    assert _candidate_ks(shots, 4) == ((1, 4), [])  # clipped to the episode, no note
    full = RunConfig(mode="knn", model="x", dataset="pneumoniamnist", knn=KnnSettings(ks=(5, 1)))
    assert _candidate_ks(full, 10) == ((1, 5), [])
    fz = _knn_frozen(val_labels=[1, 0], test_labels=[0, 1])
    del fz.features["val"], fz.labels["val"]  # fixed few-shot: no validation data at all
    fixed = RunConfig(mode="knn", model="x", dataset="pneumoniamnist",
                      knn=KnnSettings(ks=(50, 1), rule="euclidean-majority"),
                      fewshot=FewShotSettings(shots=5))
    head = knn_fit_head(fixed, fz)
    assert head.selection == {"k": 10, "k_rule": "first --k, clipped to the episode"} and head.val_scores is None
    torch.testing.assert_close(head.score(fz.features["test"])[:2], torch.tensor([[0.5, 0.5], [0.5, 0.5]]))


def test_multilabel_knn_selection_scores_every_label():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [0.0, 5.0], [0.0, 5.1]])
    y = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]])
    q = torch.tensor([[0.05, 0.0], [5.05, 0.0], [0.0, 5.05], [0.02, 0.0]])
    yq = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    fz = SimpleNamespace(
        data=SimpleNamespace(task="multi-label, binary-class", info=SimpleNamespace(n_classes=3)),
        features={"train": x, "val": q}, labels={"train": y, "val": yq}, device=torch.device("cpu"))
    cfg = RunConfig(mode="knn", model="x", dataset="chestmnist",
                    knn=KnnSettings(ks=(1, 2), rule="euclidean-majority", select_metric="acc"))
    head = knn_fit_head(cfg, fz)
    assert head.val_scores.shape == (4, 3)
    sweep = {r["k"]: r["val_acc"] for r in head.extras["k_sweep"]}
    assert sweep[2] == pytest.approx(np.mean((head.val_scores.numpy() > 0.5) == yq))
    # the head votes per label (weighted positive fraction), not over a flattened label list
    two = knn_fit_head(RunConfig(mode="knn", model="x", dataset="chestmnist",
                                 knn=KnnSettings(ks=(2,), rule="euclidean-majority")), fz)
    torch.testing.assert_close(two.val_scores, torch.tensor(
        [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.0, 1.0], [1.0, 0.0, 0.5]]))
    torch.testing.assert_close(two.score(q), two.val_scores)


def test_knn_fit_head_passes_the_configured_temperature():
    train, labels, query = _disagreeing()
    fz = SimpleNamespace(
        data=SimpleNamespace(task="binary-class", info=SimpleNamespace(n_classes=2)),
        features={"train": train, "val": query.repeat(2, 1)}, device=torch.device("cpu"),
        labels={"train": labels.numpy().reshape(-1, 1), "val": np.array([[0], [1]])})
    cfg = RunConfig(mode="knn", model="x", dataset="pneumoniamnist", knn=KnnSettings(ks=(3,), temperature=0.5))
    head = knn_fit_head(cfg, fz)
    np.testing.assert_allclose(head.val_scores[0].double().numpy(), _expected_cosine(0.5), rtol=1e-5)
    np.testing.assert_allclose(head.score(query)[0].double().numpy(), _expected_cosine(0.5), rtol=1e-5)


def test_finetune_with_an_undefined_validation_metric_keeps_the_first_epoch(monkeypatch):
    """AUC can be undefined (one class in validation): epoch 1 is kept, and a NaN loss is no improvement."""
    nan = float("nan")
    fit, held = _scripted_fit(monkeypatch, [nan, nan, nan], [nan, nan, nan], patience=2)
    assert fit.best_epoch == 1 and held == {1.0}
    assert fit.epochs_run == 2 and fit.stopped_early


def test_finetune_curves_ties_and_the_done_flag(monkeypatch):
    seen = []
    fit, held = _scripted_fit(monkeypatch, [0.5, 0.4, 0.4], [0.5, 0.4, 0.4], patience=0, select_metric="loss",
                              hook=lambda e, st: seen.append((e, st.done, st.bad_epochs)))
    assert fit.best_epoch == 2 and held == {2.0}  # an equal loss later does not replace the best epoch
    assert fit.curves["train_loss"] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert fit.curves["val_loss"] == [0.5, 0.4, 0.4] and fit.curves["val_loss"] == fit.curves["val_loss"]
    assert len(fit.curves["lr"]) == 3 and all(isinstance(v, float) and v > 0 for v in fit.curves["lr"])
    assert seen == [(1, False, 0), (2, False, 0), (3, True, 1)]  # done exactly after the last epoch


def test_finetune_without_validation_runs_every_epoch_and_keeps_the_last(monkeypatch):
    nan = float("nan")
    seen = []
    fit, held = _scripted_fit(monkeypatch, [nan] * 4, [nan] * 4, patience=1, has_val=False,
                              hook=lambda e, st: seen.append((st.done, st.bad_epochs)))
    assert fit.epochs_run == 4 and not fit.stopped_early  # no early stopping without validation data
    assert fit.best_epoch == 4 and held == {4.0}
    assert seen == [(False, 0), (False, 0), (False, 0), (True, 0)]


def test_knn_on_a_large_training_set_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    xtr = torch.randn(3000, 8, generator=g)
    ytr = torch.randint(0, 3, (3000,), generator=g)
    xte = torch.randn(50, 8, generator=g)
    out = knn_predict(xtr, ytr, xte, [1, 7], n_classes=3, rule="euclidean-majority")
    sk = KNeighborsClassifier(n_neighbors=7, algorithm="brute").fit(xtr.double().numpy(), ytr.numpy())
    np.testing.assert_allclose(out[7].numpy(), sk.predict_proba(xte.double().numpy()), atol=1e-6)
    cos = knn_predict(xtr, ytr, xte, [7], n_classes=3)[7]
    sims = torch.nn.functional.normalize(xte, dim=1) @ torch.nn.functional.normalize(xtr, dim=1).T
    top, idx = sims.topk(7, dim=1)
    w = (top / 0.07).exp()
    expect = torch.zeros(50, 3).scatter_add_(1, ytr[idx], w) / w.sum(1, keepdim=True)
    torch.testing.assert_close(cos, expect, rtol=1e-4, atol=1e-5)


def test_knn_default_sweep_trimmed_on_a_small_training_set_says_so():
    fz = _knn_frozen(val_labels=[1, 0], test_labels=[0, 1])
    cfg = RunConfig(mode="knn", model="x", dataset="pneumoniamnist", knn=KnnSettings(rule="euclidean-majority"))
    head = knn_fit_head(cfg, fz)
    assert [r["k"] for r in head.extras["k_sweep"]] == [1, 5] and head.selection["k"] == 1
    assert head.warnings == ["k > 10 training samples left out of the default k sweep"]


# --------------------------------------------------------------------------- #
# Small helpers behind the numbers (mutation-testing survivors)
# --------------------------------------------------------------------------- #
def test_class_prior_shapes_padding_and_errors():
    from fmeval.errors import FmevalError

    np.testing.assert_allclose(class_prior("multi-class", np.array([[0], [2], [2], [0]])), [0.5, 0, 0.5])
    np.testing.assert_allclose(class_prior("multi-class", [0, 1], n_classes=4), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(class_prior("binary-class", [1]), [0.0, 1.0])
    np.testing.assert_allclose(class_prior("binary-class", [0, 0]), [1.0, 0.0])  # never fewer than 2 entries
    ml = class_prior("multi-label, binary-class", np.array([[1, 0, 1], [1, 1, 0]]))
    assert ml.dtype == np.float64 and ml.tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(FmevalError, match=r"^multi-label labels must be 2-D \[N, L\], got shape \(3,\)$"):
        class_prior("multi-label, binary-class", np.array([1, 0, 1]))
    for bad in ([], [0, -1]):
        with pytest.raises(FmevalError, match=r"^labels for a class prior must be non-empty, non-negative"):
            class_prior("multi-class", bad)


def test_majority_scores_pads_absent_top_classes_and_checks_the_prior():
    from fmeval.errors import FmevalError
    from fmeval.metrics import majority_scores

    np.testing.assert_allclose(majority_scores("multi-class", np.array([0.7, 0.3]), 3, n_classes=4),
                               np.tile([0.7, 0.3, 0.0, 0.0], (3, 1)))
    np.testing.assert_allclose(majority_scores("multi-class", [0, 0, 1], 2, n_classes=4),
                               np.tile([2 / 3, 1 / 3, 0.0, 0.0], (2, 1)))
    thirds = np.full(3, 1 / 3, dtype=np.float32)  # sums to 1 only up to float32 rounding: accepted
    assert abs(float(thirds.astype(np.float64).sum()) - 1.0) > 1e-9
    assert majority_scores("multi-class", thirds, 2).shape == (2, 3)
    with pytest.raises(FmevalError, match=r"^class prior must sum to 1, got 0\.5$"):
        majority_scores("multi-class", np.array([0.2, 0.3]), 2)
    with pytest.raises(FmevalError, match=r"^a prior must be 1-D, got shape \(1, 2\)$"):
        majority_scores("binary-class", np.array([[0.5, 0.5]]), 2)
    with pytest.raises(FmevalError, match=r"^prior has 3 entries but there are 2 classes$"):
        majority_scores("multi-class", np.array([0.2, 0.3, 0.5]), 2, n_classes=2)


def test_binary_predictions_accept_a_bare_positive_probability():
    np.testing.assert_array_equal(predict_labels("binary-class", [0.2, 0.7, 0.5]), [0, 1, 0])
    np.testing.assert_array_equal(predict_labels("binary-class", np.array([[0.9], [0.1]])), [1, 0])


def test_bootstrap_weights_draw_every_index_in_bounded_blocks(monkeypatch):
    import fmeval.metrics.resampling as metrics

    w = np.concatenate(list(metrics.bootstrap_weights(3, 300, seed=0)))
    assert w.shape == (300, 3) and (w.sum(axis=1) == 3).all()
    assert (w > 0).any(axis=0).all()  # the first and the last sample are both drawn
    monkeypatch.setattr(metrics, "BOOT_BLOCK_ELEMS", 8)
    assert [b.shape for b in metrics.bootstrap_weights(5, 3, seed=0)] == [(1, 5)] * 3  # n > budget: one row
    assert [b.shape for b in metrics.bootstrap_weights(2, 10, seed=0)] == [(4, 2), (4, 2), (2, 2)]


def test_mean_std_two_rows():
    mu, sd = _mean_std(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert mu.tolist() == [2.0, 5.0] and sd.tolist() == pytest.approx([math.sqrt(2), 0.0])


def test_all_finite():
    from fmeval.probes.linear import _all_finite

    assert _all_finite(torch.empty(0, 3)) and _all_finite(torch.tensor([[1, 2]]))
    assert _all_finite(torch.tensor([[1.0, -2.0]]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not _all_finite(torch.tensor([[1.0, bad], [0.0, 2.0]]))
    assert not _all_finite(torch.tensor([float("inf"), 1.0, 2.0]))


def test_row_sq_norms_in_chunks(monkeypatch):
    """The chunked squared row norms (and the row mean) of the kNN search equal the direct ones."""
    import fmeval.probes.knn_search as ks

    monkeypatch.setattr(ks, "_NORM_CHUNK", 3)  # 10 rows: chunks of 3, 3, 3 and a tail of 1
    x = torch.arange(20.0).view(10, 2)
    sq, copy, b_max, bt_max, _ = ks._transformed_stats(x, None, None, None)
    torch.testing.assert_close(sq.float(), (x * x).sum(1))
    assert copy is None and b_max == pytest.approx(float((x * x).sum(1).max().sqrt())) and bt_max == b_max
    torch.testing.assert_close(ks._mean_rows(x).float(), x.mean(0))


def test_probe_schedule_factor_and_probabilities():
    from fmeval.training.optim import cosine_epoch_factor

    cos = ProbeConfig(schedule="cosine-epoch", epochs=10)
    assert [probe_lr_factor(cos, e) for e in (0, 5, 9)] == [cosine_epoch_factor(e, 10) for e in (0, 5, 9)]
    assert probe_lr_factor(cos, 0) == 1.0 and probe_lr_factor(cos, 5) < 1.0
    assert probe_lr_factor(ProbeConfig(), 7) == 1.0
    (xtr, ytr), _ = _overfit_data()
    probe = train_linear_probe(xtr, ytr, xtr, ytr, n_outputs=2, multilabel=False,
                               config=ProbeConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=3))
    p = probe.predict_proba(xtr)
    torch.testing.assert_close(p.sum(1), torch.ones(len(xtr)))
    torch.testing.assert_close(p, torch.softmax(xtr @ probe.weight + probe.bias, dim=1))


def test_closed_form_probe_gradient_matches_autograd_when_a_class_is_absent():
    from fmeval.probes.linear import _loss_and_grad

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, 3, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0])  # class 2 never occurs
    loss, grad = _loss_and_grad(logits.detach(), y, multilabel=False)
    ref = torch.stack([torch.nn.functional.cross_entropy(logits[:, h], y) for h in range(2)])
    torch.testing.assert_close(loss, ref.detach())
    (auto,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(grad, auto * 6)  # the closed form is not divided by N


# --------------------------------------------------------------------------- #
# Exact kNN internals and the probe's closed-form gradients (mutation survivors)
# --------------------------------------------------------------------------- #
def test_knn_auto_scoring_follows_the_hardware_and_bad_names_fail(monkeypatch):
    import fmeval.device
    from fmeval.errors import ConfigError
    from fmeval.probes.knn import SCORINGS, resolve_scoring

    cpu = torch.device("cpu")
    monkeypatch.setattr(fmeval.device, "native_bf16", lambda device: True)
    assert resolve_scoring("auto", cpu) == "bf16" and resolve_scoring("FP32", cpu) == "fp32"
    monkeypatch.setattr(fmeval.device, "native_bf16", lambda device: False)
    assert resolve_scoring("auto", cpu) == "fp32" and resolve_scoring("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match=rf"^unknown kNN scoring 'fp8'; choose one of {', '.join(SCORINGS)}\.$"):
        resolve_scoring("fp8", cpu)


@pytest.mark.parametrize("rule", ["cosine", "euclidean-majority"])
def test_knn_scorer_scores_in_the_requested_precision(rule):
    from fmeval.probes.knn import KNN_RULES

    train = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        sc = KNN_RULES.get(rule).scorer(train, precision)
        assert sc.precision == precision and sc.mat.dtype == dtype


@pytest.mark.parametrize("cosine", [True, False])
def test_full_exact_search_spans_every_chunk_and_breaks_ties_to_the_lower_index(cosine):
    """The last-resort float64 search, over more training rows than one scoring chunk."""
    from fmeval.probes.knn_search import _NORM_CHUNK, _full_exact

    g = torch.Generator().manual_seed(3)
    n = _NORM_CHUNK + 900
    train = torch.randn(n, 4, generator=g)
    test = torch.randn(5, 4, generator=g)
    train[n - 50] = test[0] * (2.0 if cosine else 1.0)  # the best match sits in the second chunk
    train[n - 40] = train[n - 50]  # and an exact tie after it
    vals, idx = _full_exact(test, train, 3, largest=cosine, cosine=cosine)
    t64, b64 = test.double(), train.double()
    if cosine:
        ref = torch.nn.functional.normalize(t64, dim=1) @ torch.nn.functional.normalize(b64, dim=1).T
    else:
        ref = (b64 * b64).sum(1)[None] - 2 * t64 @ b64.T
    order = np.argsort(-ref.numpy() if cosine else ref.numpy(), axis=1, kind="stable")[:, :3]
    assert idx.tolist() == order.tolist()
    assert idx[0, :2].tolist() == [n - 50, n - 40]
    np.testing.assert_allclose(vals.numpy(), np.take_along_axis(ref.numpy(), order, 1), rtol=1e-12, atol=1e-12)


def test_stable_top_orders_by_value_then_training_index():
    from fmeval.probes.knn_search import _stable_top

    values = torch.tensor([[0.5, 0.9, 0.9, 0.1], [2.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    cand = torch.tensor([[7, 9, 3, 1], [4, 8, 2, 6]])
    v, i = _stable_top(values, cand, 3, largest=True)
    assert i.tolist() == [[3, 9, 7], [6, 4, 2]] and v[0].tolist() == [0.9, 0.9, 0.5]
    v, i = _stable_top(values, cand, 3, largest=False)
    assert i.tolist() == [[1, 7, 3], [2, 8, 4]] and v[1].tolist() == [1.0, 1.0, 2.0]


def test_exact_cosine_values_are_cosines_for_short_test_vectors():
    from fmeval.probes.knn_search import exact_values

    train = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    test = torch.tensor([[0.3, 0.4], [0.05, 0.0]])  # norms 0.5 and 0.05
    cand = torch.tensor([[0, 1, 2], [2, 0, 1]])
    got = exact_values(test, train, cand, cosine=True)
    expect = torch.nn.functional.cosine_similarity(test.double()[:, None], train.double()[cand], dim=2)
    torch.testing.assert_close(got, expect)


def test_softmax_gradient_is_exact_for_rows_of_very_different_scale():
    from fmeval.probes.linear import _loss_and_grad

    logits = torch.tensor([[[1000.0, 999.0, 0.0]], [[0.0, 1.0, 2.0]]])  # [N=2, G=1, C=3]
    y = torch.tensor([1, 0])
    loss, grad = _loss_and_grad(logits, y, multilabel=False)
    ref = logits.double().requires_grad_()
    ref_loss = torch.nn.functional.cross_entropy(ref[:, 0], y, reduction="sum")
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss.detach()[None] / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_multilabel_gradient_has_no_subnormal_floats():
    """A subnormal in the gradient slows the next GEMM several-fold: probabilities are floored."""
    from fmeval.probes.linear import _loss_and_grad

    logits = torch.tensor([[[-88.0, 100.0, 0.0]]])  # float32 sigmoid(-88) = 6e-39 is subnormal
    _, grad = _loss_and_grad(logits, torch.tensor([[0, 1, 1]]), multilabel=True)
    tiny = torch.finfo(torch.float32).tiny
    assert not ((grad != 0) & (grad.abs() < tiny)).any()
    torch.testing.assert_close(grad, torch.tensor([[[0.0, 0.0, -1 / 6]]]), atol=1e-30, rtol=1e-6)


def test_multilabel_predictions_are_integers():
    pred = predict_labels("multi-label, binary-class", np.array([[0.7, 0.2], [0.5, 0.51]]))
    assert pred.dtype == np.int64 and pred.tolist() == [[1, 0], [0, 1]]
