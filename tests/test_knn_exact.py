"""kNN with bf16 (or fp32) candidate scoring finds exactly scikit-learn's neighbours.

The scoring precision only decides which rows a proven error bound settles
cheaply; the neighbour sets must be those of an exact float64 computation,
on real features and on data built to have near-ties and exact ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from fmeval.probes.knn import knn_predict, resolve_scoring
from fmeval.probes.knn_search import SearchStats
from fmeval.errors import ConfigError


def _sklearn(xtr, ytr, xte, k):
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(xtr.numpy(), ytr.numpy())
    return clf.predict(xte.numpy()), clf.predict_proba(xte.numpy())


def _exact_cosine(xtr, ytr, xte, k, n_classes, temperature=0.07):
    """float64 reference of the cosine rule: stable sort, ties to the lower index."""
    sims = torch.nn.functional.normalize(xte.double(), dim=1) @ torch.nn.functional.normalize(xtr.double(), dim=1).T
    v, idx = sims.sort(dim=1, descending=True, stable=True)
    w = (v[:, :k].float() / temperature).exp()
    votes = torch.zeros(len(xte), n_classes).scatter_add_(1, ytr[idx[:, :k]], w)
    return votes / w.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def real_features(pneumonia_root):
    """Features of a tiny random ViT on the real PneumoniaMNIST (train / test)."""
    from fmeval.adapters.base import create_adapter
    from fmeval.features import extract_features

    z = np.load(pneumonia_root / "pneumoniamnist.npz")
    adapter = create_adapter("vit-s16", tiny=True, pretrained=False)
    xtr = extract_features(adapter, z["train_images"][:3000], batch_size=500)
    xte = extract_features(adapter, z["test_images"], batch_size=500)
    return xtr, torch.from_numpy(z["train_labels"][:3000, 0]).long(), xte


@pytest.mark.parametrize("scoring", ["bf16", "fp32"])
def test_real_features_match_sklearn(real_features, scoring):
    xtr, ytr, xte = real_features
    stats = SearchStats()
    ours = knn_predict(xtr, ytr, xte, [1, 11], n_classes=2, rule="euclidean-majority",
                       scoring=scoring, stats=stats)
    for k in (1, 11):
        pred, proba = _sklearn(xtr, ytr, xte, k)
        np.testing.assert_array_equal(ours[k].argmax(1).numpy(), pred)
        np.testing.assert_allclose(ours[k].numpy(), proba, atol=1e-6)
    assert stats.rows == len(xte) == sum(stats.by_precision.values()) + stats.full_exact


def test_bf16_settles_separated_data_and_matches_sklearn():
    """Where neighbours are separated beyond bf16's error bound, the bf16 pass settles most rows."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 2
    ytr = torch.randint(0, 3, (3000,), generator=g)
    xtr = centres[ytr] + torch.randn(3000, 8, generator=g)
    xte = centres[torch.randint(0, 3, (300,), generator=g)] + torch.randn(300, 8, generator=g)
    stats = SearchStats()
    ours = knn_predict(xtr, ytr, xte, [11], n_classes=3, rule="euclidean-majority", scoring="bf16",
                       stats=stats)[11]
    pred, proba = _sklearn(xtr, ytr, xte, 11)
    np.testing.assert_array_equal(ours.argmax(1).numpy(), pred)
    np.testing.assert_allclose(ours.numpy(), proba, atol=1e-6)
    assert stats.by_precision["bf16"] > 0.5 * len(xte) and not stats.switched_to_fp32


def test_real_features_cosine_matches_float64_reference(real_features):
    xtr, ytr, xte = real_features
    ref = _exact_cosine(xtr, ytr, xte, 11, 2)
    for scoring in ("bf16", "fp32"):
        ours = knn_predict(xtr, ytr, xte, [11], n_classes=2, rule="cosine", scoring=scoring)[11]
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        assert torch.equal(ours.argmax(1), ref.argmax(1))


def _near_ties(n=2000, d=24, seed=0):
    """Training points on shells around the test points, radii equal to ~1e-7 relative:
    far below bf16 (and at the edge of fp32) resolution, plus exact duplicates."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, d, generator=g) * 3
    dirs = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    which = torch.randint(0, 40, (n,), generator=g)
    radius = 2.0 * (1 + torch.randint(-3, 4, (n,), generator=g).float() * 1e-7)
    xtr = centres[which] + radius[:, None] * dirs
    ytr = torch.randint(0, 3, (n,), generator=g)
    # exact duplicates (same label: which copy counts is then immaterial; scikit-learn's
    # choice among exact ties depends on its chunking)
    xtr[n // 2 : n // 2 + 200], ytr[n // 2 : n // 2 + 200] = xtr[:200], ytr[:200]
    xte = centres[torch.arange(200) % 40] + 1e-4 * torch.randn(200, d, generator=g)
    return xtr.float(), ytr, xte.float()


@pytest.mark.parametrize("scoring", ["bf16", "fp32"])
def test_near_ties_match_sklearn(scoring):
    xtr, ytr, xte = _near_ties()
    stats = SearchStats()
    ours = knn_predict(xtr, ytr, xte, [5, 11], n_classes=3, rule="euclidean-majority",
                       scoring=scoring, stats=stats)
    for k in (5, 11):
        pred, proba = _sklearn(xtr, ytr, xte, k)
        np.testing.assert_array_equal(ours[k].argmax(1).numpy(), pred)
        np.testing.assert_allclose(ours[k].numpy(), proba, atol=1e-6)
    # the bound refused to settle these rows cheaply: they went down the fallback chain
    assert stats.full_exact + stats.by_precision.get("fp32", 0) * (scoring == "bf16") > 0


def test_exact_duplicates_go_to_the_lower_index():
    x = torch.zeros(10, 4)
    x[:, 0] = 1.0
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 2, 2, 2])
    for scoring in ("bf16", "fp32"):
        p = knn_predict(x, y, torch.zeros(1, 4), [3], n_classes=3, rule="euclidean-majority",
                        scoring=scoring)[3]
        torch.testing.assert_close(p, torch.tensor([[0.0, 1.0, 0.0]]))  # indices 0, 1, 2


def test_scoring_resolution(monkeypatch):
    import fmeval.device as fd

    monkeypatch.setattr(fd, "cpu_flags", lambda path=fd.CPUINFO: frozenset({"amx_bf16"}))
    assert resolve_scoring("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(fd, "cpu_flags", lambda path=fd.CPUINFO: frozenset({"avx512f"}))
    assert resolve_scoring("auto", torch.device("cpu")) == "fp32"
    assert resolve_scoring("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="kNN scoring"):
        resolve_scoring("int8", torch.device("cpu"))


def _shells(cosine: bool, n_test=40, d=48, competitors=24, seed=0):
    """Per test row, ``competitors`` training rows at distances (angles) 0.02 % apart, far below
    bf16's resolution (the rows sit 100 away from the training mean); the nearest one alone has
    label 1. The other rows' shells are far apart, so the bf16 pass can still prove its candidates."""
    g = torch.Generator().manual_seed(seed)
    xte = torch.nn.functional.normalize(torch.randn(n_test, d, generator=g), dim=1) * 100
    rows, labels = [], []
    for a in xte:
        u = torch.nn.functional.normalize(torch.randn(competitors, d, generator=g), dim=1)
        steps = 1 + 2e-4 * torch.randperm(competitors, generator=g).double()
        if cosine:  # angle theta_j from a: b = cos(t) a^ + sin(t) v, v orthogonal to a
            ah = a.double() / a.double().norm()
            v = u.double() - (u.double() @ ah)[:, None] * ah
            v = v / v.norm(dim=1, keepdim=True)
            th = 0.3 * steps
            b = (th.cos()[:, None] * ah + th.sin()[:, None] * v) * (1 + torch.rand(competitors, 1, generator=g) * 3)
        else:
            b = a.double() + steps[:, None] * u.double()
        rows.append(b.float())
        labels.append((steps == steps.min()).long())
    return torch.cat(rows), torch.cat(labels), xte


@pytest.mark.parametrize("cosine", [False, True])
def test_bf16_near_ties_are_settled_by_the_exact_rerank(cosine):
    """bf16 rounding reorders these neighbours (checked below on the raw bf16 scan): the
    predictions equal the float64 reference only because the bf16 path re-ranks its window
    exactly, and the bf16 pass does settle every row (no fallback did the work)."""
    from fmeval.probes.knn_search import cosine_scorer, euclidean_scorer, inverse_norms, scan

    xtr, ytr, xte = _shells(cosine)
    rule = "cosine" if cosine else "euclidean-majority"
    stats = SearchStats()
    ours = knn_predict(xtr, ytr, xte, [1], n_classes=2, rule=rule, scoring="bf16", stats=stats)[1]
    if cosine:
        ref = _exact_cosine(xtr, ytr, xte, 1, 2)
    else:
        ref = torch.from_numpy(_sklearn(xtr, ytr, xte, 1)[1]).float()
    assert torch.equal(ours.argmax(1), ref.argmax(1)) and bool((ref.argmax(1) == 1).all())
    assert stats.by_precision == {"bf16": len(xte)} and stats.full_exact == 0
    # the same bf16 scores without the re-rank pick another nearest neighbour for many rows
    sc = cosine_scorer(xtr, "bf16", inverse_norms(xtr)) if cosine else euclidean_scorer(xtr, "bf16")
    _, cand = scan(sc, sc.prepare(xte, 1), 33, SearchStats())
    assert (ytr[cand[:, 0]] != 1).sum() >= len(xte) // 4


@pytest.mark.parametrize("scoring", ["bf16", "fp32"])
@pytest.mark.parametrize("rule", ["euclidean-majority", "cosine"])
def test_many_small_tiles_with_a_ragged_tail_match_the_reference(monkeypatch, scoring, rule):
    """Tiles of 96 training rows (blocks of 16) over 1,013 rows: the running top-m merges
    across tiles, a ragged last block, k = 20 and 50 of a sweep from one pass."""
    import fmeval.probes.knn_search as ks

    monkeypatch.setattr(ks, "_TILE", 96)
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(4, 16, generator=g) * 3
    ytr = torch.randint(0, 4, (1013,), generator=g)
    xtr = centres[ytr] + torch.randn(1013, 16, generator=g)
    xte = centres[torch.randint(0, 4, (90,), generator=g)] + torch.randn(90, 16, generator=g)
    ours = knn_predict(xtr, ytr, xte, [1, 20, 50], n_classes=4, rule=rule, scoring=scoring, chunk=32)
    for k in (1, 20, 50):
        if rule == "cosine":
            torch.testing.assert_close(ours[k], _exact_cosine(xtr, ytr, xte, k, 4), atol=1e-5, rtol=0)
        else:
            np.testing.assert_allclose(ours[k].numpy(), _sklearn(xtr, ytr, xte, k)[1], atol=1e-6)


def test_thread_choice_is_restored_and_follows_the_timings():
    from fmeval.probes.threads import ThreadChooser

    before = torch.get_num_threads()
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(300) % 3
    for threads in (None, 1):
        stats = SearchStats()
        knn_predict(x, y, x[:10], [3], n_classes=3, rule="euclidean-majority", stats=stats, threads=threads)
        assert torch.get_num_threads() == before
    tc = ThreadChooser(4, every=5)
    tc.current = 4
    for sec in (1.0, 1.0, 1.0, 1.0):  # all threads, then one trial of one thread (tile 4)
        tc.pick()
        tc.record(sec, 100)
    tc.pick()
    assert tc.last == 1  # the periodic trial of the other option
    tc.record(0.2, 100)  # one thread is 5x faster now (a shared machine): switch
    tc.pick()
    assert tc.last == 1 and tc.current == 1
    torch.set_num_threads(before)
