"""k-nearest-neighbour classification on feature tensors.

Two named rules:
* ``cosine`` - DINOv2's weighted kNN: cosine similarity, votes weighted by
  ``exp(sim / T)``; yields class probabilities (hence AUC and calibration).
* ``euclidean-majority`` - the MedMNIST+ protocol (Doerrich et al.): Euclidean
  distance, unweighted majority vote; probabilities are vote fractions and
  ties go to the lowest class index, as in scikit-learn.

Neighbours are found by :mod:`fmeval.probes.knn_search`: GEMMs over cache-sized
tiles of training rows in a fast precision (``scoring``: bf16 where the
hardware multiplies bf16 natively, else fp32), each tile reduced at once to
the candidates that can still be among the best (no ``[rows, n_train]`` score
matrix), a candidate set proven by an error bound to hold the true k nearest,
and a float64 re-rank of the candidates that could still change places. So
neighbour sets (and the majority votes) are those of an exact float64
computation such as scikit-learn's whatever the scoring precision. Memory: one
score tile plus, for bf16, one half-size copy of the training features; no
per-sample Python loop. The fp32 GEMM runs on the faster of torch's and
numpy's BLAS (``probes.blas``); its thread count is chosen per tile (all
threads vs one, ``probes.threads``) and every thread setting is restored
afterwards. All k of a sweep come out of one pass: neighbours are
sorted, so the votes of the first k are a prefix of the same neighbour list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmeval.errors import ConfigError
from fmeval.probes import blas
from fmeval.probes.blas import TORCH
from fmeval.probes.knn_search import (
    _TILE,
    Scorer,
    SearchStats,
    _norms64,
    cosine_scorer,
    euclidean_scorer,
    inverse_norms,
    search,
)
from fmeval.probes.threads import ThreadChooser, runqueue
from fmeval.registry import Registry

SCORINGS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class KnnRule:
    name: str
    largest: bool  # True: similarity (bigger is nearer); False: distance
    cosine: bool

    def scorer(self, train: torch.Tensor, precision: str, norms64: torch.Tensor | None = None,
               copy: bool = False, gemm=TORCH) -> Scorer:
        norms64 = norms64 if norms64 is not None else _norms64(train, self.cosine)
        if self.cosine:
            return cosine_scorer(train, precision, inverse_norms(train), norms64, copy=copy, gemm=gemm)
        return euclidean_scorer(train, precision, norms64, copy=copy, gemm=gemm)

    def weights(self, near: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.cosine:
            return (near / temperature).exp()
        return torch.ones_like(near)


KNN_RULES: Registry[KnnRule] = Registry("kNN rule", ConfigError)
KNN_RULES.add("cosine", KnnRule("cosine", largest=True, cosine=True),
              "DINOv2 temperature-weighted cosine votes")
KNN_RULES.add(
    "euclidean-majority",
    KnnRule("euclidean-majority", largest=False, cosine=False),
    "MedMNIST+ protocol: Euclidean distance, majority vote",
)


# Test rows per chunk are capped so that one score tile ([_TILE training rows,
# rows]) stays this many elements (16 MiB of float32 on CPU, about a shared L3
# cache; 512 MiB on GPU) whatever ``chunk`` says.
_SCORE_BUDGET = {"cpu": 1 << 21, "cuda": 1 << 27}
# extra candidates beyond k whose scores bound the rest: small for fp32
# (its error is ~1e-5 relative), wider for bf16 (~1e-2)
_MARGIN = {"fp32": lambda k: 4 + k // 8, "bf16": lambda k: 32 + k}
# below this fraction of a chunk's rows settled by bf16, the remaining chunks use fp32
_MIN_SETTLED = 0.5


# below this many multiply-adds (n_train x n_test x D) ``auto`` scores in fp32 on a CPU: the bf16
# path's set-up (a bf16 copy of the training rows, the per-chunk estimate of the k-th score, a
# wider re-rank) outweighs its faster GEMM. Measured on an AMD EPYC with avx512_bf16, 2 cores,
# 2,000 test rows: 2k train 0.18 s bf16 vs 0.14 s fp32, 10k train 0.32-0.39 vs 0.33-0.35;
# 10k x 10k: 1.07 vs 1.43 s.
BF16_MIN_WORK = 3e10


def resolve_scoring(scoring: str, device: torch.device, work: float | None = None) -> str:
    """``auto`` -> bf16 where bf16 GEMMs are native (CUDA, AMX/AVX-512-BF16 CPUs), else fp32.

    ``work`` (n_train x n_test x D, optional): a CPU search smaller than
    ``BF16_MIN_WORK`` scores in fp32 under ``auto``. Only the time depends on it.
    """
    from fmeval.device import native_bf16

    key = scoring.lower()
    if key not in SCORINGS:
        raise ConfigError(f"unknown kNN scoring {scoring!r}; choose one of {', '.join(SCORINGS)}.")
    if key == "auto":
        small = device.type == "cpu" and work is not None and work < BF16_MIN_WORK
        return "bf16" if native_bf16(device) and not small else "fp32"
    return key


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
    scoring: str = "auto",
    stats: SearchStats | None = None,
    threads: int | None = None,
) -> dict[int, torch.Tensor]:
    """Return {k: scores [n_test, n_classes]} - probabilities (rows sum to 1
    for single-label; per-label positive fractions for multi-label).

    ``chunk`` is the most test rows scored at once; it is lowered further so
    that one score tile (``[_TILE training rows, rows]``) stays within a fixed
    memory budget. ``scoring`` is the precision of the candidate GEMM
    (``auto``: bf16 where native); the neighbours are exact either way.
    ``stats`` (optional) counts how the rows were settled. ``threads``: the
    GEMM's threads for the search (default: chosen per tile, all of torch's
    threads vs one; see ``ThreadChooser``); torch's and numpy's BLAS's
    settings are restored afterwards.
    """
    r = KNN_RULES.get(rule)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError("k must be positive.")
    kmax = ks[-1]
    if kmax > train.shape[0]:
        raise ConfigError(f"k={kmax} exceeds the {train.shape[0]} training samples.")
    train = train.float()
    test = test.float().to(train.device)
    dev = train.device
    precision = resolve_scoring(scoring, dev, float(train.shape[0]) * test.shape[0] * train.shape[1])
    stats = stats if stats is not None else SearchStats()
    stats.precision = precision
    stats.rows += test.shape[0]
    labels = train_labels.to(dev)
    targets = labels.float() if multilabel else None  # [N, L] 0/1: the vote is a weighted mean
    labels = labels.long().view(-1) if not multilabel else None
    out = {k: torch.empty((test.shape[0], n_classes), dtype=torch.float32, device=dev) for k in ks}
    k_idx = torch.tensor([k - 1 for k in ks], device=dev)
    for start, near, idx in _neighbour_chunks(train, test, r, kmax, precision, chunk, stats, threads):
        rows = len(near)
        w = r.weights(near.float(), temperature)  # [c, kmax]
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
            votes = torch.zeros((rows, n_classes), dtype=torch.float32, device=dev)
            votes.scatter_add_(1, lab[:, :k], wk)
            out[k][start : start + rows] = votes / wk.sum(1, keepdim=True)
    return out


def _neighbour_chunks(train: torch.Tensor, test: torch.Tensor, r: KnnRule, kmax: int, precision: str,
                      chunk: int, stats: SearchStats, threads: int | None):
    """Yield (start, near [c, kmax] float64, idx [c, kmax]) chunk by chunk of test rows.

    Scorers are built once (the fp32 fallback only if a row needs it); the
    primary fp32 scorer copies the training rows only for numpy's BLAS, whose
    tiles must be plain GEMMs (one more training matrix: within the 1.5x
    memory bound, which a bf16 copy plus an fp32 one would not be); the GEMM
    backend is the faster BLAS here (``probes.blas``, timed on the dot length
    both multiply: torch's fused ``addmm`` runs on the rows themselves), its
    thread count chosen per tile on CPU; every thread setting is restored.
    """
    n_train, dev = train.shape[0], train.device
    budget = _SCORE_BUDGET["cuda" if dev.type == "cuda" else "cpu"]
    rows = max(1, min(int(chunk), budget // min(_TILE, max(1, n_train))))
    saved = torch.get_num_threads()
    work = float(n_train) * test.shape[0] * train.shape[1]
    gemm, probe = blas.fastest(dev, precision, int(threads or saved), train.shape[1], rows,
                               min(_TILE, n_train), work)
    stats.gemm, stats.gemm_probe = gemm.name, probe or None
    saved_gemm = gemm.threads()
    chooser = None
    if dev.type == "cpu":
        if gemm is not TORCH:  # torch's own ops between the GEMMs: one thread (see probes.blas)
            torch.set_num_threads(1)
        if threads:
            gemm.set_threads(int(threads))
        elif work >= blas.MIN_WORK_TO_TIME / 10:  # well under a second: timing would cost more than it saves
            chooser = ThreadChooser(saved, gemm=gemm, runqueue=runqueue)
            chooser.probe()
            stats.probe = {t: round(v, 5) for t, v in chooser.probed.items()}
    norms64 = _norms64(train, r.cosine)
    made: dict[str, Scorer] = {}

    def maker(p: str):
        def make() -> Scorer:
            if p not in made:
                primary = p == precision
                # numpy's BLAS has no fused epilogue: its fp32 tiles are plain GEMMs on a copy
                made[p] = r.scorer(train, p, norms64, copy=primary and gemm is not TORCH,
                                   gemm=gemm if primary else TORCH)
            return made[p]
        return make

    scorers = [maker(precision)] + ([maker("fp32")] if precision != "fp32" else [])
    margin = {p: _MARGIN[p](kmax) for p in _MARGIN}
    try:
        for start in range(0, test.shape[0], rows):
            t = test[start : start + rows]
            before = stats.by_precision.get(precision, 0) if stats.by_precision else 0
            near, idx = search(t, train, scorers, kmax, margin, stats, chooser)
            settled = (stats.by_precision or {}).get(precision, 0) - before
            if len(scorers) > 1 and settled < _MIN_SETTLED * len(t):
                # bf16 cannot separate these neighbours (dense clusters): every row paid the
                # bf16 pass for nothing, so score the rest in fp32 directly
                scorers = scorers[1:]
                stats.switched_to_fp32 = True
            yield start, near, idx
    finally:
        gemm.set_threads(saved_gemm)
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
