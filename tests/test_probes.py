"""kNN and linear probe: agreement with scikit-learn, learning on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from fmeval.errors import ConfigError, FmevalError
from fmeval.probes.knn import knn_predict
from fmeval.probes.linear import ProbeConfig, train_linear_probe


def _blobs(n, d=16, c=3, seed=0, shift=2.0):
    """Gaussian blobs; the class centres are the same for every seed."""
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * shift
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def test_euclidean_majority_matches_sklearn():
    xtr, ytr = _blobs(600, shift=0.7)
    xte, _ = _blobs(300, seed=1, shift=0.7)
    ours = knn_predict(xtr, ytr, xte, [11], n_classes=3, rule="euclidean-majority", chunk=64)[11]
    sk = KNeighborsClassifier(n_neighbors=11).fit(xtr.numpy(), ytr.numpy())
    np.testing.assert_array_equal(ours.argmax(1).numpy(), sk.predict(xte.numpy()))
    np.testing.assert_allclose(ours.numpy(), sk.predict_proba(xte.numpy()), atol=1e-6)


def test_cosine_knn_is_weighted_probability_and_sweeps_k():
    xtr, ytr = _blobs(500)
    xte, yte = _blobs(200, seed=1)
    out = knn_predict(xtr, ytr, xte, [1, 5, 20], n_classes=3)
    for k, p in out.items():
        assert p.shape == (200, 3)
        torch.testing.assert_close(p.sum(1), torch.ones(200))
    # k=1 puts all mass on the single nearest neighbour's label
    nn1 = (torch.nn.functional.normalize(xte, dim=1) @ torch.nn.functional.normalize(xtr, dim=1).T).argmax(1)
    assert torch.equal(out[1].argmax(1), ytr[nn1])
    # hand-computed weights for k=5 on the first test point
    sims = torch.nn.functional.normalize(xte[:1], dim=1) @ torch.nn.functional.normalize(xtr, dim=1).T
    top, idx = sims.topk(5)
    w = (top / 0.07).exp()[0]
    expect = torch.zeros(3).index_add_(0, ytr[idx[0]], w) / w.sum()
    torch.testing.assert_close(out[5][0], expect)


def test_knn_multilabel_and_bad_k():
    x = torch.randn(50, 8)
    y = (torch.rand(50, 4) > 0.5).long()
    p = knn_predict(x, y, x[:5], [3], n_classes=4, multilabel=True, rule="euclidean-majority")[3]
    assert p.shape == (5, 4) and float(p.min()) >= 0 and float(p.max()) <= 1
    with pytest.raises(ConfigError, match="exceeds"):
        knn_predict(x, y[:, 0], x, [51], n_classes=2)
    with pytest.raises(ConfigError, match="unknown kNN rule"):
        knn_predict(x, y[:, 0], x, [3], n_classes=2, rule="manhattan")


def test_linear_probe_learns_separable_data_and_selects_on_val():
    xtr, ytr = _blobs(800, shift=1.0)
    xva, yva = _blobs(200, seed=1, shift=1.0)
    xte, yte = _blobs(400, seed=2, shift=1.0)
    probe = train_linear_probe(xtr * 50 + 3, ytr, xva * 50 + 3, yva, n_outputs=3, multilabel=False,
                               config=ProbeConfig(epochs=60))
    acc = float((probe.predict_proba(xte * 50 + 3).argmax(1) == yte).float().mean())
    assert acc > 0.85  # chance is 1/3; scale/offset handled by standardisation
    assert probe.val_loss == min(r["val_loss"] for r in probe.grid)
    assert len(probe.grid) == 12 and len(probe.curves["val_loss"]) == probe.epochs_run


def test_linear_probe_multilabel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, :3] > 0).long()
    probe = train_linear_probe(x[:400], y[:400], x[400:500], y[400:500], n_outputs=3, multilabel=True,
                               config=ProbeConfig(epochs=80))
    p = probe.predict_proba(x[500:])
    assert min(roc_auc_score(y[500:, j], p[:, j]) for j in range(3)) > 0.95


def test_linear_probe_rejects_nan():
    x = torch.randn(20, 4)
    x[3, 1] = float("nan")
    with pytest.raises(FmevalError, match="NaN"):
        train_linear_probe(x, torch.zeros(20, dtype=torch.long), x, torch.zeros(20, dtype=torch.long),
                           n_outputs=2, multilabel=False)


def test_linear_probe_zero_shot_init_starts_from_that_classifier():
    xtr, ytr = _blobs(300, d=8, c=2)
    init = torch.randn(2, 8)
    probe = train_linear_probe(xtr, ytr, xtr, ytr, n_outputs=2, multilabel=False, init_weight=init,
                               config=ProbeConfig(lrs=(1e-9,), weight_decays=(0.0,), epochs=1))
    torch.testing.assert_close(probe.weight, init.T, atol=1e-4, rtol=1e-4)
