"""k-nearest-neighbour classification on feature tensors.

Two named rules:
* ``cosine`` - DINOv2's weighted kNN: cosine similarity, votes weighted by
  ``exp(sim / T)``; yields class probabilities (hence AUC and calibration).
* ``euclidean-majority`` - the MedMNIST+ protocol (Doerrich et al.): Euclidean
  distance, unweighted majority vote; probabilities are vote fractions and
  ties go to the lowest class index, as in scikit-learn.

Test points are processed in chunks (one fused matmul + a two-stage top-k
each), so memory is bounded by a fixed budget for the ``[rows, n_train]`` score
chunk and there is no per-sample Python loop; nothing of size
``[n_train, D]`` is copied. Euclidean candidates are re-ranked in float64, so
neighbour sets match an exact (scikit-learn) computation. All k of a sweep
come out of one pass: neighbours are sorted, so the votes of the first k are
a prefix of the same neighbour list.
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
        # ``test`` is normalised; ``train_sq`` holds 1/||train row||, applied to the
        # columns of the score chunk instead of normalising a copy of ``train``
        sc = test @ train.T
        return sc.mul_(train_sq) if train_sq is not None else sc

    def weights(self, near, temperature):
        return (near / temperature).exp()


class EuclideanMajorityRule(KnnRule):
    def scores(self, test, train, train_sq):
        # squared distances up to a per-row constant: ||b||^2 - 2ab (||a||^2 does not change
        # ranks), as one fused GEMM
        return torch.addmm(train_sq.unsqueeze(0), test, train.T, alpha=-2.0)

    def weights(self, near, temperature):
        return torch.ones_like(near)


KNN_RULES: Registry[KnnRule] = Registry("kNN rule", ConfigError)
KNN_RULES.add("cosine", CosineRule("cosine", largest=True), "DINOv2 temperature-weighted cosine votes")
KNN_RULES.add(
    "euclidean-majority",
    EuclideanMajorityRule("euclidean-majority", largest=False),
    "MedMNIST+ protocol: Euclidean distance, majority vote",
)


# Rows of the score matrix per chunk are capped so that it stays this many
# elements (64 MiB of float32 on CPU, where it must not thrash the caches and
# RAM; 512 MiB on GPU) whatever ``chunk`` says.
_SCORE_BUDGET = {"cpu": 1 << 24, "cuda": 1 << 27}
_BLOCK = 64  # block width of the two-stage top-k
_RERANK_MARGIN = 4  # extra float32 candidates re-ranked in float64 (euclidean), + k/8


def _topk(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact sorted top-k along dim 1, in two stages for wide rows.

    A full ``topk`` over 100k columns costs as much as the GEMM that made them.
    Instead: the best element of each block of ``_BLOCK`` columns (one
    vectorised reduction), the k best blocks, then top-k among their
    ``k * _BLOCK`` members. Exact: an element of the true top-k lies in one of
    the k best blocks, otherwise those blocks would hold k better elements.
    """
    rows, n = scores.shape
    nb = n // _BLOCK
    if nb < 4 * k:
        return scores.topk(k, dim=1, largest=largest, sorted=True)
    body = scores[:, : nb * _BLOCK].view(rows, nb, _BLOCK)
    best = body.amax(dim=2) if largest else body.amin(dim=2)
    blocks = best.topk(k, dim=1, largest=largest, sorted=False).indices  # [rows, k]
    offs = torch.arange(_BLOCK, device=scores.device)
    cand = (blocks.unsqueeze(-1) * _BLOCK + offs).view(rows, k * _BLOCK)
    if nb * _BLOCK < n:  # the ragged tail is always a candidate
        tail = torch.arange(nb * _BLOCK, n, device=scores.device).expand(rows, -1)
        cand = torch.cat([cand, tail], dim=1)
    near, j = scores.gather(1, cand).topk(k, dim=1, largest=largest, sorted=True)
    return near, cand.gather(1, j)


def _row_sq_norms(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Squared L2 norm of every row, in chunks (no [N, D] temporary)."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        c = x[i : i + chunk]
        out[i : i + chunk] = (c * c).sum(1)
    return out


def _exact_euclidean(test: torch.Tensor, train: torch.Tensor, idx: torch.Tensor, k: int, sub: int = 64):
    """Re-rank float32 candidates ``idx`` [c, m] by float64 squared distance; keep k.

    ``||b||^2 - 2 a.b`` in float64 (the ranking of scikit-learn's float64
    computation), ``sub`` test rows at a time so the float64 copies stay small.
    """
    nears, idxs = [], []
    for i in range(0, len(test), sub):
        cand = idx[i : i + sub]
        c64 = train[cand].double()  # [s, m, D]
        d2 = (c64 * c64).sum(-1) - 2.0 * torch.bmm(c64, test[i : i + sub].double().unsqueeze(2)).squeeze(2)
        near, j = d2.topk(k, dim=1, largest=False, sorted=True)
        nears.append(near.float())
        idxs.append(cand.gather(1, j))
    return torch.cat(nears), torch.cat(idxs)


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
    for single-label; per-label positive fractions for multi-label).

    ``chunk`` is the most test rows scored at once; it is lowered further so
    that one chunk's ``[rows, n_train]`` score matrix stays within a fixed
    memory budget. Euclidean neighbours are found on float32 scores and the
    best few candidates re-ranked in float64, so the neighbour sets (and the
    majority votes) are those of an exact float64 computation such as
    scikit-learn's.
    """
    r = KNN_RULES.get(rule)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError("k must be positive.")
    kmax = min(ks[-1], train.shape[0])
    if ks[-1] > train.shape[0]:
        raise ConfigError(f"k={ks[-1]} exceeds the {train.shape[0]} training samples.")
    train = train.float()
    test = test.float().to(train.device)
    n_train, dev = train.shape[0], train.device
    exact = not r.largest  # a distance rule: re-rank its candidates in float64
    train_sq = _row_sq_norms(train)
    if rule == "cosine":  # as F.normalize: x / max(||x||, 1e-12), without a copy of train
        test = F.normalize(test, dim=1)
        train_sq = 1.0 / train_sq.sqrt_().clamp_min_(1e-12)
    n_cand = min(n_train, kmax + _RERANK_MARGIN + kmax // 8) if exact else kmax
    budget = _SCORE_BUDGET["cuda" if dev.type == "cuda" else "cpu"]
    rows = max(1, min(int(chunk), budget // max(1, n_train)))
    labels = train_labels.to(dev)
    targets = _targets(labels, n_classes, multilabel) if multilabel else None
    labels = labels.long().view(-1) if not multilabel else None
    out = {k: torch.empty((test.shape[0], n_classes), dtype=torch.float32, device=dev) for k in ks}
    k_idx = torch.tensor([k - 1 for k in ks], device=dev)
    for start in range(0, test.shape[0], rows):
        t = test[start : start + rows]
        sc = r.scores(t, train, train_sq)
        near, idx = _topk(sc, n_cand, r.largest)
        del sc
        if exact:
            near, idx = _exact_euclidean(t, train, idx, kmax)
        w = r.weights(near, temperature)  # [c, kmax]
        if targets is not None:  # multi-label: per-label weighted fractions
            votes = targets[idx] * w.unsqueeze(-1)  # [c, kmax, L]
            cum = votes.cumsum(dim=1)[:, k_idx]  # [c, len(ks), L]
            norm = w.cumsum(dim=1)[:, k_idx].unsqueeze(-1)
            probs = cum / norm
            for j, k in enumerate(ks):
                out[k][start : start + rows] = probs[:, j]
            continue
        lab = labels[idx]  # [c, kmax]
        for k in ks:  # scatter the votes: no [c, k, n_classes] one-hot
            wk = w[:, :k]
            votes = torch.zeros((len(t), n_classes), dtype=torch.float32, device=dev)
            votes.scatter_add_(1, lab[:, :k], wk)
            out[k][start : start + rows] = votes / wk.sum(1, keepdim=True)
    return out
