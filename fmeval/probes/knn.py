"""k-nearest-neighbour classification on feature tensors.

Two named rules:
* ``cosine`` - DINOv2's weighted kNN: cosine similarity, votes weighted by
  ``exp(sim / T)``; yields class probabilities (hence AUC and calibration).
* ``euclidean-majority`` - the MedMNIST+ protocol (Doerrich et al.): Euclidean
  distance, unweighted majority vote; probabilities are vote fractions and
  ties go to the lowest class index, as in scikit-learn.

Test points are processed in chunks (one matmul + top-k each), so memory is
bounded by ``chunk x n_train`` and there is no per-sample Python loop. All k
of a sweep come out of one pass: neighbours are sorted, so the votes of the
first k are a prefix sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fmeval.errors import ConfigError
from fmeval.registry import Registry


@dataclass(frozen=True)
class KnnRule:
    name: str
    largest: bool  # True: similarity (bigger is nearer); False: distance

    def scores(self, test: torch.Tensor, train: torch.Tensor, train_sq: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def weights(self, near: torch.Tensor, temperature: float) -> torch.Tensor:
        raise NotImplementedError


class CosineRule(KnnRule):
    def scores(self, test, train, train_sq):
        return test @ train.T

    def weights(self, near, temperature):
        return (near / temperature).exp()


class EuclideanMajorityRule(KnnRule):
    def scores(self, test, train, train_sq):
        # squared distances up to a per-row constant: ||b||^2 - 2ab (||a||^2 does not change ranks)
        return train_sq[None, :] - 2.0 * (test @ train.T)

    def weights(self, near, temperature):
        return torch.ones_like(near)


KNN_RULES: Registry[KnnRule] = Registry("kNN rule", ConfigError)
KNN_RULES.add("cosine", CosineRule("cosine", largest=True), "DINOv2 temperature-weighted cosine votes")
KNN_RULES.add(
    "euclidean-majority",
    EuclideanMajorityRule("euclidean-majority", largest=False),
    "MedMNIST+ protocol: Euclidean distance, majority vote",
)


def _targets(labels: torch.Tensor, n_classes: int, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return labels.float()
    return F.one_hot(labels.long().view(-1), n_classes).float()


@torch.inference_mode()
def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    ks: list[int] | tuple[int, ...],
    *,
    n_classes: int,
    rule: str = "cosine",
    temperature: float = 0.07,
    multilabel: bool = False,
    chunk: int = 1024,
) -> dict[int, torch.Tensor]:
    """Return {k: scores [n_test, n_classes]} - probabilities (rows sum to 1
    for single-label; per-label positive fractions for multi-label)."""
    r = KNN_RULES.get(rule)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError("k must be positive.")
    kmax = min(ks[-1], train.shape[0])
    if ks[-1] > train.shape[0]:
        raise ConfigError(f"k={ks[-1]} exceeds the {train.shape[0]} training samples.")
    train = train.float()
    test = test.float().to(train.device)
    if rule == "cosine":
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    train_sq = (train * train).sum(1) if not r.largest else None
    targets = _targets(train_labels.to(train.device), n_classes, multilabel)
    out = {k: torch.empty((test.shape[0], n_classes), dtype=torch.float32, device=train.device) for k in ks}
    k_idx = torch.tensor([k - 1 for k in ks], device=train.device)
    for start in range(0, test.shape[0], chunk):
        sc = r.scores(test[start : start + chunk], train, train_sq)
        near, idx = sc.topk(kmax, dim=1, largest=r.largest, sorted=True)
        w = r.weights(near, temperature)  # [c, kmax]
        votes = targets[idx] * w.unsqueeze(-1)  # [c, kmax, C]
        cum = votes.cumsum(dim=1)[:, k_idx]  # [c, len(ks), C]
        norm = w.cumsum(dim=1)[:, k_idx].unsqueeze(-1)
        probs = cum / norm
        for j, k in enumerate(ks):
            out[k][start : start + chunk] = probs[:, j]
    return out
