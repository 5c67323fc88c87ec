"""Exact k-nearest-neighbour search: fast approximate scores, a proven candidate set, exact re-rank.

Scoring every test row against every training row is one GEMM; it is done in
a fast precision (bf16 on hardware that multiplies bf16 natively: AMX CPUs,
tensor-core GPUs; fp32 elsewhere), which gives every score an error. For each
test row the error is bounded from above by ``E`` (rounding of the inputs to the
GEMM precision, fp32 accumulation over ``D`` terms, rounding of the output and
of the final additions; by Cauchy-Schwarz on the actual residual norms, times
a safety factor of 2). Then, with the top ``M`` candidates by approximate
score sorted and ``s_(k)``, ``s_(M)`` the k-th and M-th of them, every
non-candidate ``j`` satisfies ``s_j >= s~_(M) - E`` while the k-th best true
score among the candidates is ``<= s~_(k) + E``. So if ``s~_(M) - s~_(k) > 2E``
the true k nearest neighbours are all among the candidates, and exactly those
within ``2E`` of the k-th need re-ranking. Re-ranking is in float64 (the
ranking of scikit-learn's float64 computation), ties to the lower training
index. A row whose gap is too small is scored again in fp32 and, failing
that too (exact duplicates at the k-th place), in float64 over all training
rows. So the neighbour sets are those of an exact computation, whatever the
scoring precision; only the time depends on it.

bf16 scores use centred vectors (training mean subtracted; Euclidean distance
is translation invariant, and cosine similarity splits into a centred dot
product plus a per-column term), so the bf16 products do not cancel
catastrophically when all features share a large common component.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

U32 = 2.0**-24  # unit roundoff of float32
U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
SAFETY = 2.0  # on top of the rigorous bound: GEMM kernels may round partial sums more often
_BLOCK = 64  # block width of the two-stage top-k
_SUB = 64  # test rows per float64 re-rank batch
_FALLBACK_ROWS = 16  # test rows per full float64 scoring batch
_NORM_CHUNK = 4096


def _gamma(d: int) -> float:
    """Error factor of a d-term float32 dot product (any summation order)."""
    return d * U32 / (1.0 - d * U32)


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


@dataclass
class Scorer:
    """Approximate scores of test rows against all training rows, with an error bound.

    ``score_j = col_j + alpha * <t', mat_j>`` (the dot times ``col_scale_j`` when
    set), where ``t'`` is the test row normalised (cosine) and centred by
    ``shift``. The norms and residual maxima of the training side, measured
    once, turn a test row's own norms into the bound on all its scores.
    """

    precision: str  # fp32 | bf16
    mat: torch.Tensor  # [N, D] GEMM operand
    col: torch.Tensor | None  # [N] additive column term (fp32)
    col_scale: torch.Tensor | None  # [N] multiplicative column term (fp32)
    alpha: float
    normalise: bool
    shift: torch.Tensor | None  # [D]
    b_max: float  # max ||row of the exact transformed train||
    bt_max: float  # max ||row of mat||
    rb_max: float  # max ||mat row - exact transformed row||
    col_err: float  # bound on the error of col (absolute)
    col_max: float  # max |col|
    out_u: float  # unit roundoff of the GEMM output
    extra_err: float = 0.0  # absolute error independent of the row (normalisation of b)

    def transform(self, t: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            t = F.normalize(t, dim=1)
        return t - self.shift if self.shift is not None else t

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [rows, N] float32, error bound [rows] float32)."""
        a = self.transform(t.float())
        at = a.to(self.mat.dtype)
        if self.col is not None and self.col_scale is None and at.dtype == torch.float32:
            sc = torch.addmm(self.col.unsqueeze(0), at, self.mat.T, alpha=self.alpha)  # one fused GEMM
        else:
            dot = _mm(at, self.mat)
            if self.col_scale is not None:
                dot = dot.float().mul_(self.col_scale)
            if self.col is not None:  # one pass: float32 result of bf16 products + column term
                sc = torch.add(self.col, dot, alpha=self.alpha)
            else:
                sc = dot.float() if self.alpha == 1.0 else dot.float().mul_(self.alpha)
        a_n = a.norm(dim=1).double()
        at_n = at.float().norm(dim=1).double()
        ra = (a - at.float()).norm(dim=1).double()
        d = a.shape[1]
        g = _gamma(d)
        prod = at_n * self.bt_max
        err_dot = ra * self.b_max + at_n * self.rb_max + (g + self.out_u * (1 + g)) * prod \
            + 4 * U32 * a_n * self.b_max
        if self.col_scale is not None:  # dot of unit-scaled columns: relative error of the scale
            err_dot = err_dot + 4 * U32 * a_n
        err = abs(self.alpha) * err_dot + self.col_err \
            + 2 * U32 * (self.col_max + abs(self.alpha) * prod * (1 + self.out_u + g)) + self.extra_err
        return sc, (SAFETY * err).float()


_MM_OUT_DTYPE: dict[str, bool] = {}


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T; bf16 on CUDA with a float32 output where torch offers it."""
    if a.dtype == torch.bfloat16 and a.device.type == "cuda":
        key = str(a.device)
        if _MM_OUT_DTYPE.get(key, True):
            try:
                out = torch.mm(a, b.T, out_dtype=torch.float32)
                _MM_OUT_DTYPE[key] = True
                return out
            except (TypeError, RuntimeError, NotImplementedError):
                _MM_OUT_DTYPE[key] = False
    return a @ b.T


def bf16_output_roundoff(device: torch.device) -> float:
    """Unit roundoff of a bf16 GEMM's output on ``device`` (0 where it is float32)."""
    if device.type == "cuda" and _MM_OUT_DTYPE.get(str(device), True):
        try:
            z = torch.zeros(1, 8, dtype=torch.bfloat16, device=device)
            torch.mm(z, z.T, out_dtype=torch.float32)
            _MM_OUT_DTYPE[str(device)] = True
            return 0.0
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE[str(device)] = False
    return U_BF16


def _transformed_stats(train: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                       copy_dtype: torch.dtype | None):
    """Row norms of ``train * scale - shift`` (and a ``copy_dtype`` copy of it), chunk by chunk.

    Returns (sq_norms [N] fp32, copy [N, D] or None, max norm, max copy norm, max residual norm).
    """
    n = train.shape[0]
    sq = torch.empty(n, dtype=torch.float32, device=train.device)
    copy = torch.empty(train.shape, dtype=copy_dtype, device=train.device) if copy_dtype else None
    b_max = bt_max = rb_max = 0.0
    for i in range(0, n, _NORM_CHUNK):
        c = train[i : i + _NORM_CHUNK].float()
        if scale is not None:
            c = c * scale[i : i + _NORM_CHUNK, None]
        if shift is not None:
            c = c - shift
        s = (c * c).sum(1)
        sq[i : i + _NORM_CHUNK] = s
        b_max = max(b_max, float(s.max().sqrt()) if len(s) else 0.0)
        if copy is not None:
            q = c.to(copy_dtype)
            copy[i : i + _NORM_CHUNK] = q
            qf = q.float()
            bt_max = max(bt_max, float(qf.norm(dim=1).max()))
            rb_max = max(rb_max, float((c - qf).norm(dim=1).max()))
    if copy is None:
        bt_max = b_max
    return sq, copy, b_max, bt_max, rb_max


def _mean_rows(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _NORM_CHUNK):
        c = x[i : i + _NORM_CHUNK].float()
        if scale is not None:
            c = c * scale[i : i + _NORM_CHUNK, None]
        total += c.sum(0, dtype=torch.float64)
    return (total / max(1, x.shape[0])).float()


def inverse_norms(train: torch.Tensor) -> torch.Tensor:
    """1 / max(||row||, 1e-12), as ``F.normalize`` divides (chunked, no [N, D] temporary)."""
    sq, *_ = _transformed_stats(train, None, None, None)
    return 1.0 / sq.sqrt_().clamp_min_(1e-12)


def euclidean_scorer(train: torch.Tensor, precision: str) -> Scorer:
    """Scores ``||b||^2 - 2 a.b`` (squared distance less the row's ``||a||^2``)."""
    d = train.shape[1]
    if precision == "fp32":
        sq, _, b_max, _, _ = _transformed_stats(train, None, None, None)
        return Scorer("fp32", train, sq, None, -2.0, False, None, b_max, b_max, 0.0,
                      _gamma(d) * b_max**2, b_max**2, 0.0)
    mu = _mean_rows(train)
    sq, copy, b_max, bt_max, rb_max = _transformed_stats(train, None, mu, torch.bfloat16)
    return Scorer("bf16", copy, sq, None, -2.0, False, mu, b_max, bt_max, rb_max,
                  (_gamma(d) + 2 * U32) * b_max**2, b_max**2, bf16_output_roundoff(train.device))


def cosine_scorer(train: torch.Tensor, precision: str, inv_norm: torch.Tensor) -> Scorer:
    """Scores the cosine similarity (less a per-row constant for bf16)."""
    d = train.shape[1]
    if precision == "fp32":
        # inv_norm is itself rounded: a relative error of gamma/2 + 2u on every similarity
        return Scorer("fp32", train, None, inv_norm, 1.0, True, None, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
                      _gamma(d) + 4 * U32)
    mu = _mean_rows(train, inv_norm)  # mean of the unit rows
    _, copy, b_max, bt_max, rb_max = _transformed_stats(train, inv_norm, mu, torch.bfloat16)
    col = torch.empty(train.shape[0], dtype=torch.float32, device=train.device)
    for i in range(0, train.shape[0], _NORM_CHUNK):  # col_j = mu . unit(b_j)
        col[i : i + _NORM_CHUNK] = (train[i : i + _NORM_CHUNK].float() @ mu) * inv_norm[i : i + _NORM_CHUNK]
    mu_n = float(mu.norm())
    col_err = (_gamma(d) + 6 * U32) * mu_n * 1.0
    return Scorer("bf16", copy, col, None, 1.0, True, mu, b_max, bt_max, rb_max, col_err,
                  float(col.abs().max()) if len(col) else 0.0, bf16_output_roundoff(train.device),
                  _gamma(d) + 4 * U32)


@contextlib.contextmanager
def _exact_cuda_reductions(device: torch.device):
    """cuBLAS may reduce bf16 partial sums in bf16; the error bound assumes float32."""
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    saved = m.allow_bf16_reduced_precision_reduction, m.allow_tf32
    m.allow_bf16_reduced_precision_reduction, m.allow_tf32 = False, False
    try:
        yield
    finally:
        m.allow_bf16_reduced_precision_reduction, m.allow_tf32 = saved


def exact_values(test: torch.Tensor, train: torch.Tensor, cand: torch.Tensor, cosine: bool) -> torch.Tensor:
    """float64 scores of ``test`` rows [s, D] against their candidates ``cand`` [s, m].

    Euclidean: ``||b||^2 - 2 a.b`` (the row's ``||a||^2`` does not change ranks);
    cosine: ``a.b / (||a|| ||b||)``.
    """
    c64 = train[cand].double()  # [s, m, D]
    t64 = test.double()
    dots = torch.bmm(c64, t64.unsqueeze(2)).squeeze(2)
    if cosine:
        bn = c64.norm(dim=2).clamp_min(1e-12)
        an = t64.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return dots / bn / an
    return (c64 * c64).sum(-1) - 2.0 * dots


def _stable_top(values: torch.Tensor, cand: torch.Tensor, k: int, largest: bool):
    """Top k by value, ties to the lower training index: sort by index, then stably by value."""
    cand, order = cand.sort(dim=1)
    values = values.gather(1, order)
    v, j = values.sort(dim=1, descending=largest, stable=True)
    return v[:, :k], cand.gather(1, j[:, :k])


def _full_exact(test: torch.Tensor, train: torch.Tensor, k: int, largest: bool, cosine: bool):
    """The last resort: float64 scores against every training row, stable sort."""
    n = train.shape[0]
    vals_out, idx_out = [], []
    for i in range(0, len(test), _FALLBACK_ROWS):
        t = test[i : i + _FALLBACK_ROWS]
        cols = []
        for j in range(0, n, _NORM_CHUNK):
            cand = torch.arange(j, min(n, j + _NORM_CHUNK), device=train.device).expand(len(t), -1)
            cols.append(exact_values(t, train, cand, cosine))
        vals = torch.cat(cols, dim=1)
        v, idx = vals.sort(dim=1, descending=largest, stable=True)
        vals_out.append(v[:, :k])
        idx_out.append(idx[:, :k])
    return torch.cat(vals_out), torch.cat(idx_out)


@dataclass
class SearchStats:
    """How many test rows each stage settled (for benchmarks and tests)."""

    rows: int = 0
    by_precision: dict[str, int] | None = None
    full_exact: int = 0
    reranked: int = 0  # candidates re-ranked in float64, summed over rows
    switched_to_fp32: bool = False  # bf16 settled too few rows; later chunks scored in fp32

    def add(self, precision: str, n: int) -> None:
        self.by_precision = self.by_precision or {}
        self.by_precision[precision] = self.by_precision.get(precision, 0) + n


def search(test: torch.Tensor, train: torch.Tensor, scorers: list[Scorer], k: int, margin: int,
           largest: bool, cosine: bool, stats: SearchStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (values float64, training indices) of ``test`` rows; see the module doc."""
    n = train.shape[0]
    near = torch.empty(len(test), k, dtype=torch.float64, device=test.device)
    idx = torch.empty(len(test), k, dtype=torch.long, device=test.device)
    todo = torch.arange(len(test), device=test.device)
    with _exact_cuda_reductions(test.device):
        for scorer in scorers:
            if len(todo) == 0:
                break
            m = min(n, k + margin)
            sc, err = scorer(test[todo])
            top, cand = _topk(sc, m, largest)
            del sc
            kth = top[:, k - 1 : k]
            window = (top >= kth - 2 * err[:, None]) if largest else (top <= kth + 2 * err[:, None])
            need = window.sum(1)
            ok = need < m if m < n else torch.ones_like(need, dtype=torch.bool)
            rows = todo[ok]
            stats.add(scorer.precision, int(ok.sum()))
            cand_ok, need_ok = cand[ok], need[ok]
            for i in range(0, len(rows), _SUB):
                r = rows[i : i + _SUB]
                w = int(need_ok[i : i + _SUB].max())
                c = cand_ok[i : i + _SUB, :w]
                stats.reranked += len(r) * w
                v = exact_values(test[r], train, c, cosine)
                near[r], idx[r] = _stable_top(v, c, k, largest)
            todo = todo[~ok]
        if len(todo):
            stats.full_exact += len(todo)
            near[todo], idx[todo] = _full_exact(test[todo], train, k, largest, cosine)
    return near, idx
