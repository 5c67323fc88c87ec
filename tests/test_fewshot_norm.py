"""Issue 22 item 10: a few-shot linear probe does not standardise with a tiny K-shot episode's own
statistics; below fewshot.standardize_min_shots it uses L2-normalised features, stated and recorded.
Each test failed on the code that standardised at every K."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fmeval.config import RunConfig
from fmeval.config.run import MODE_SECTIONS
from fmeval.modes.linprobe import feature_norm_used

from test_fewshot_runs import TINY, _data, _one


def _cfg(**values):
    return RunConfig(mode="linprobe", model="x", dataset="pneumoniamnist").with_values(values)


@pytest.mark.parametrize("shots,norm,used", [(1, "standardize", "l2"), (15, "standardize", "l2"),
                                             (16, "standardize", "standardize"), (None, "standardize", "standardize"),
                                             (1, "none", "none"), (1, "l2", "l2")])
def test_the_rule_at_the_threshold_edges(shots, norm, used):
    got = feature_norm_used(_cfg(**{"fewshot.shots": shots, "linprobe.feature_norm": norm}))
    assert got["requested"] == norm and got["used"] == used
    assert ("rule" in got) == (used != norm)
    assert feature_norm_used(_cfg(**{"fewshot.shots": 1, "fewshot.standardize_min_shots": 0}))["used"] == "standardize"


def test_the_rule_is_in_the_hash_of_few_shot_probes_only():
    a, b = _cfg(**{"fewshot.shots": 1}), _cfg(**{"fewshot.shots": 1, "fewshot.standardize_min_shots": 0})
    assert a.digest(MODE_SECTIONS["linprobe"]) != b.digest(MODE_SECTIONS["linprobe"])
    knn = RunConfig(mode="knn", model="x", dataset="d").with_values({"fewshot.shots": 1})
    knn0 = knn.with_values({"fewshot.standardize_min_shots": 0})
    assert knn.digest(MODE_SECTIONS["knn"]) == knn0.digest(MODE_SECTIONS["knn"])


def test_one_shot_probe_uses_l2_and_equals_an_explicit_l2_run(capsys, tmp_path):
    data = _data(tmp_path)
    args = ("linprobe", "--model", "resnet18", "--epochs", "5", "--shots", "1")
    auto = _one(capsys, tmp_path, data, "auto", *args)
    l2 = _one(capsys, tmp_path, data, "l2", *args, "--feature-norm", "l2")
    assert auto["extras"]["feature_norm"]["used"] == "l2" and "K=1 < 16" in auto["extras"]["feature_norm"]["rule"]
    assert auto["test"]["metrics"]["auc"]["value"] == pytest.approx(l2["test"]["metrics"]["auc"]["value"], abs=1e-9)
    assert auto["selection"] == l2["selection"]


def test_why_one_shot_standardisation_collapses_on_a_synthetic_check():
    """The defect itself, computed independently of fmeval's probe: with one image per class, a
    feature's standardised value is +-1 everywhere it differs between the two images, so every
    nuisance feature weighs as much as the signal; the L2 rule keeps the signal's scale."""
    rng = np.random.default_rng(0)
    d, n = 256, 2000
    scale = np.exp(rng.normal(0, 1.5, size=d))  # features of very different scales, as a backbone's are
    w = np.zeros(d)
    w[:8] = 1.0  # 8 large-scale signal features
    scale[:8] = 20.0
    aucs = {"standardize": [], "l2": []}
    for draw in range(30):
        y = rng.integers(0, 2, size=n)
        x = rng.normal(size=(n, d)) * scale + np.outer(2 * y - 1, w) * 20.0
        i0, i1 = np.flatnonzero(y == 0)[draw], np.flatnonzero(y == 1)[draw]
        tr = x[[i0, i1]]
        mu, sd = tr.mean(0), tr.std(0) + 1e-6
        z = (x - mu) / sd  # the episode's own statistics
        aucs["standardize"].append(roc_auc_score(y, z @ ((z[[i1]] - z[[i0]]).ravel())))
        u = F.normalize(torch.tensor(x), dim=1).numpy()
        aucs["l2"].append(roc_auc_score(y, u @ ((u[[i1]] - u[[i0]]).ravel())))
    assert np.mean(aucs["l2"]) > np.mean(aucs["standardize"]) + 0.05
