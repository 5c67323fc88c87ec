"""Exact k-nearest-neighbour search: fast approximate scores, a proven candidate set, exact re-rank.

Every test row is scored against every training row by GEMMs in a fast
precision (bf16 where the hardware multiplies bf16 natively, fp32 elsewhere),
one cache-sized tile of training rows at a time: a tile's scores are reduced
to block minima at once (a cheap strided pass, the tile being laid out
``[train rows, test rows]``), only the blocks that can still hold one of the
``M`` best are gathered and merged into a running top-``M``, and no score row
wider than a tile is ever materialised. Scores are *minimised* in one
``scan`` domain ``V = sign * X + offset`` (``X`` the float64 value that ranks
neighbours as scikit-learn does: ``||b||^2 - 2 a.b`` for Euclidean, the cosine
for cosine, ``sign`` -1 for the latter).

Each approximate score has an error bound: ``E`` per test row (rounding of the
inputs to the GEMM precision, fp32 accumulation over the ``K`` terms of any
summation order, the column and centring terms; by Cauchy-Schwarz on the actual
residual norms, times a safety factor of 2), plus the rounding of the GEMM's
output, ``u |V~|`` per element. So ``g(V~) - E <= V <= h(V~) + E`` with ``g``,
``h`` monotone. With ``V~_(M)`` the M-th best approximate score, every
non-candidate has ``V >= g(V~_(M)) - E``; the candidates whose lower bound is
below the k-th smallest upper bound (a prefix of the sorted list) are
re-ranked in float64 (ties to the lower training index), and if the exact
k-th value ``t`` is below ``g(V~_(M)) - E`` the k nearest neighbours are
proven to be those of an exact float64 computation. A row that fails is scored
again in fp32 and, failing that too (exact duplicates at the k-th place), in
float64 over all training rows. Only the time depends on the precision.

bf16 scores use centred vectors (training mean subtracted; Euclidean distance
is translation invariant, and cosine similarity splits into a centred dot
product plus a per-column term), so the bf16 products do not cancel
catastrophically when all features share a large common component. The
column term and a per-row constant ``tau`` (an estimate of the k-th score, from
a small sample of training rows) ride inside the bf16 GEMM as extra
coordinates (the column term split into three bf16 pieces: exact to fp32), so
the bf16 output is ``V`` itself and is small near the decision boundary, where
its relative rounding then costs almost nothing.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fmeval.probes.blas import TORCH
from fmeval.probes.threads import ThreadChooser

U32 = 2.0**-24  # unit roundoff of float32
U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
SAFETY = 2.0  # on top of the rigorous bound: GEMM kernels may round partial sums more often
_SUB = 64  # most test rows per float64 re-rank batch ([rows, m, D] float64 gathered) ...
_SUB_ELEMS = 1 << 21  # ... and at most this many gathered float64 elements (16 MiB)
_FALLBACK_ROWS = 16  # test rows per full float64 scoring batch
_NORM_CHUNK = 1024
_FULL_COLS = 256  # training rows per float64 batch of the last-resort search
_TILE = 4096  # training rows per scoring GEMM tile
_GROUP = 8  # training rows per block minimum of the scan filter
_EXTRA = 4  # GEMM coordinates beyond D: three column-term pieces and tau
_SAMPLE = 256  # training rows that estimate tau


def _gamma(d: int) -> float:
    """Error factor of a d-term float32 dot product (any summation order)."""
    return d * U32 / (1.0 - d * U32)


def _split3(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """float32 ``x`` as three bf16 pieces [.., 3] whose sum is ``x`` (and the largest residual)."""
    hi = x.to(torch.bfloat16)
    r1 = x - hi.float()
    mid = r1.to(torch.bfloat16)
    r2 = r1 - mid.float()
    lo = r2.to(torch.bfloat16)
    res = float((r2 - lo.float()).abs().max()) if x.numel() else 0.0
    return torch.stack([hi, mid, lo], dim=-1), res


@dataclass
class Prepared:
    """One chunk of test rows, ready to be scored against every training tile."""

    op: torch.Tensor  # [r, K] GEMM operand
    err: torch.Tensor  # [r] float64: |V - V~| before the output rounding
    offset: torch.Tensor  # [r] float64: V = sign * X + offset


@dataclass
class Scorer:
    """Approximate scan-domain scores of test rows against all training rows, with an error bound.

    ``mat`` holds the training side of the GEMM (fp32: the features themselves,
    the column term applied after each GEMM, or a copy that makes every tile
    one plain GEMM - Euclidean rows with ``||b||^2`` appended, cosine rows
    normalised; bf16: a centred copy with the column term and a ones column
    appended). The norms and residual maxima of the training side, measured
    once, turn a test row's own norms into the bound on all its scores.
    ``gemm`` (``probes.blas``) multiplies the tiles.
    """

    precision: str  # fp32 | bf16
    mat: torch.Tensor  # [N, K] GEMM operand
    cosine: bool
    col: torch.Tensor | None  # [N] fp32 additive column term (fp32 Euclidean)
    col_scale: torch.Tensor | None  # [N] fp32 multiplicative column term (fp32 cosine)
    shift: torch.Tensor | None  # [D] centring (bf16)
    b_max: float  # max ||row of the exact transformed train||
    bt_max: float  # max ||row of mat's feature part||
    rb_max: float  # max ||mat row - exact transformed row||
    col_err: float  # bound on the error of the column term (absolute)
    col_max: float  # max |column term|
    out_u: float  # unit roundoff of the GEMM output (per element, relative)
    extra_err: float = 0.0  # absolute error independent of the row (normalisation of b)
    split_err: float = 0.0  # largest residual of the three-piece column term
    norms64: torch.Tensor | None = None  # [N] float64 ||b||^2 (Euclidean) or ||b|| (cosine)
    gemm: object = TORCH  # probes.blas backend of the tile GEMMs

    @property
    def n(self) -> int:
        return self.mat.shape[0]

    @property
    def sign(self) -> float:
        return -1.0 if self.cosine else 1.0

    def _transform(self, t: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            t = F.normalize(t, dim=1)
        return t - self.shift if self.shift is not None else t

    def prepare(self, t: torch.Tensor, k: int) -> Prepared:
        t = t.float()
        a = self._transform(t)
        d = a.shape[1]
        a_n = a.norm(dim=1).double()
        if self.precision == "fp32":
            alpha = 2.0 if not self.cosine else 1.0
            op = -alpha * a  # exact: a power of two
            k = self.mat.shape[1]
            if k > d:  # the copy carries ||b||^2 as a last coordinate: times one
                op = torch.cat([op, op.new_ones(len(op), k - d)], dim=1)
            g = _gamma(d)
            err_dot = g * a_n * self.b_max + 4 * U32 * a_n * self.b_max
            if self.cosine:  # dot of unit-scaled columns: relative error of the scale
                err_dot = err_dot + 4 * U32 * a_n
            err = alpha * err_dot + self.col_err + self.extra_err \
                + 2 * U32 * (self.col_max + alpha * a_n * self.b_max) + _gamma(k) * self.col_max
            return Prepared(op.contiguous(), SAFETY * err, torch.zeros_like(a_n))
        at = a.to(torch.bfloat16)
        at_n = at.float().norm(dim=1).double()
        ra = (a - at.float()).norm(dim=1).double()
        alpha = 1.0 if self.cosine else 2.0
        op = torch.zeros(len(t), self.mat.shape[1], dtype=torch.bfloat16, device=t.device)
        op[:, :d] = at * (-1.0 if self.cosine else -2.0)  # exact: a power of two
        op[:, d : d + 3] = -1.0 if self.cosine else 1.0  # times the column-term pieces
        tau = self._tau(op, k)
        op[:, d + 3] = -tau  # times the ones column: V = V0 - tau (tau is a bf16 value)
        t64 = t.double()
        mu = self.shift.double()
        if self.cosine:  # X = a^.b^ = a^_c.b^_c + a^_c.mu + col
            u64 = t64 / t64.norm(dim=1, keepdim=True).clamp_min(1e-12)
            offset = (u64 - mu) @ mu - tau.double()
            scale = 1.0 + mu.norm() ** 2 + tau.double().abs()
        else:  # X + ||a||^2 = ||a - b||^2 = ||a_c||^2 + ||b_c||^2 - 2 a_c.b_c
            sq, sq_c = (t64 * t64).sum(1), ((t64 - mu) ** 2).sum(1)
            offset = sq - sq_c - tau.double()
            scale = sq + sq_c + tau.double().abs()
        g = _gamma(self.mat.shape[1])
        err_dot = ra * self.b_max + at_n * self.rb_max + g * at_n * self.bt_max + 4 * U32 * a_n * self.b_max
        err = alpha * err_dot + self.col_err + self.extra_err + self.split_err \
            + g * 1.02 * (self.col_max + tau.double().abs()) + 1e-12 * scale  # float64 offset
        return Prepared(op, SAFETY * err, offset)

    def _tau(self, op: torch.Tensor, k: int) -> torch.Tensor:
        """Per test row, about the k-th best score (a bf16 value), from a strided sample of training rows."""
        n = self.n
        s = min(n, _SAMPLE)
        rows = torch.linspace(0, n - 1, s, device=op.device).long()
        v0 = (op @ self.mat[rows].T).float()  # [r, s]
        q = max(1, min(s, round(s * k / n)))
        return v0.kthvalue(q, dim=1).values.to(torch.bfloat16)

    def tile(self, op: torch.Tensor, j0: int, j1: int, out: torch.Tensor) -> torch.Tensor:
        """Scan-domain scores [j1 - j0, r] of training rows j0:j1 against the prepared test rows."""
        o, b = out[: j1 - j0], self.mat[j0:j1]
        if self.col is not None and self.gemm is TORCH:  # the column term as addmm's input: one pass
            return torch.addmm(self.col[j0:j1, None], b, op.T, out=o)
        o = self.gemm.mm(b, op, o)
        if self.col is not None:
            o.add_(self.col[j0:j1, None])
        elif self.col_scale is not None:
            o.mul_(self.col_scale[j0:j1, None])
        return o


def _transformed_stats(train: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                       copy: torch.Tensor | None):
    """Row norms of ``train * scale - shift`` (written, rounded, into ``copy[:, :D]``), chunk by chunk.

    Returns (sq_norms [N] fp32, copy or None, max norm, max copy norm, max residual norm).
    ``copy`` may also be a dtype (a new ``[N, D]`` tensor of it) or None.
    """
    n = train.shape[0]
    sq = torch.empty(n, dtype=torch.float32, device=train.device)
    if isinstance(copy, torch.dtype):
        copy = torch.empty(train.shape, dtype=copy, device=train.device)
    d = train.shape[1]
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
            q = c.to(copy.dtype)
            copy[i : i + _NORM_CHUNK, :d] = q
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


def _norms64(train: torch.Tensor, cosine: bool) -> torch.Tensor:
    """float64 ||b||^2 (Euclidean) or ||b|| (cosine) of every training row, for the re-rank."""
    out = torch.empty(train.shape[0], dtype=torch.float64, device=train.device)
    for i in range(0, train.shape[0], _NORM_CHUNK):
        c = train[i : i + _NORM_CHUNK].double()
        out[i : i + _NORM_CHUNK] = (c * c).sum(1)
    return out.sqrt_() if cosine else out


def _augmented_copy(train: torch.Tensor, scale, shift, col: torch.Tensor | None):
    """bf16 ``[N, D + 4]`` GEMM operand: centred rows, the column term in three pieces, ones."""
    n, d = train.shape
    mat = torch.empty(n, d + _EXTRA, dtype=torch.bfloat16, device=train.device)
    sq, _, b_max, bt_max, rb_max = _transformed_stats(train, scale, shift, mat)
    pieces, res = _split3(sq if col is None else col)
    mat[:, d : d + 3] = pieces
    mat[:, d + 3] = 1.0
    return mat, sq, b_max, bt_max, rb_max, res


def euclidean_scorer(train: torch.Tensor, precision: str, norms64: torch.Tensor | None = None,
                     copy: bool = False, gemm=TORCH) -> Scorer:
    """Scores ``||b||^2 - 2 a.b`` (squared distance less the row's ``||a||^2``), shifted by a row constant.

    fp32 with ``copy``: the rows with ``||b||^2`` appended (one more training
    matrix in memory), so each tile is a single GEMM with nothing added after.
    """
    d = train.shape[1]
    norms64 = norms64 if norms64 is not None else _norms64(train, False)
    if precision == "fp32":
        sq, _, b_max, _, _ = _transformed_stats(train, None, None, None)
        mat, col = train, sq
        if copy:  # padded with zero columns to a multiple of 8 (MKL's sgemm was 6% slower at K = 769)
            mat = torch.zeros(train.shape[0], -(-(d + 1) // 8) * 8, dtype=torch.float32, device=train.device)
            mat[:, :d] = train
            mat[:, d] = sq
            col = None
        return Scorer("fp32", mat, False, col, None, None, b_max, b_max, 0.0,
                      _gamma(d) * b_max**2, b_max**2, U32, norms64=norms64, gemm=gemm)
    mu = _mean_rows(train)
    mat, sq, b_max, bt_max, rb_max, res = _augmented_copy(train, None, mu, None)
    return Scorer("bf16", mat, False, None, None, mu, b_max, bt_max, rb_max,
                  (_gamma(d) + 2 * U32) * b_max**2, b_max**2 * (1 + 2 * U32), U_BF16,
                  split_err=res, norms64=norms64)


def cosine_scorer(train: torch.Tensor, precision: str, inv_norm: torch.Tensor,
                  norms64: torch.Tensor | None = None, copy: bool = False, gemm=TORCH) -> Scorer:
    """Scores minus the cosine similarity (plus a row constant for bf16).

    fp32 with ``copy``: a normalised copy of the rows (one more training
    matrix in memory), so each tile is a single GEMM with nothing scaled after.
    """
    d = train.shape[1]
    norms64 = norms64 if norms64 is not None else _norms64(train, True)
    if precision == "fp32":
        # inv_norm is itself rounded: a relative error of gamma/2 + 2u on every similarity;
        # the copy rounds each element once more (a relative u per element: 4u more of slack)
        mat, scale = train, inv_norm
        if copy:
            mat, scale = torch.mul(train, inv_norm[:, None]), None
        return Scorer("fp32", mat, True, None, scale, None, 1.0, 1.0, 0.0, 0.0, 0.0, U32,
                      _gamma(d) + (8 if copy else 4) * U32, norms64=norms64, gemm=gemm)
    mu = _mean_rows(train, inv_norm)  # mean of the unit rows
    col = torch.empty(train.shape[0], dtype=torch.float32, device=train.device)
    for i in range(0, train.shape[0], _NORM_CHUNK):  # col_j = mu . unit(b_j)
        col[i : i + _NORM_CHUNK] = (train[i : i + _NORM_CHUNK].float() @ mu) * inv_norm[i : i + _NORM_CHUNK]
    mat, _, b_max, bt_max, rb_max, res = _augmented_copy(train, inv_norm, mu, col)
    mu_n = float(mu.norm())
    col_err = (_gamma(d) + 6 * U32) * mu_n * 1.0
    return Scorer("bf16", mat, True, None, None, mu, b_max, bt_max, rb_max, col_err,
                  float(col.abs().max()) if len(col) else 0.0, U_BF16, _gamma(d) + 4 * U32,
                  split_err=res, norms64=norms64)


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


def exact_values(test: torch.Tensor, train: torch.Tensor, cand: torch.Tensor, cosine: bool,
                 norms64: torch.Tensor | None = None) -> torch.Tensor:
    """float64 scores of ``test`` rows [s, D] against their candidates ``cand`` [s, m].

    Euclidean: ``||b||^2 - 2 a.b`` (the row's ``||a||^2`` does not change ranks);
    cosine: ``a.b / (||a|| ||b||)``. ``norms64`` (optional): the training rows'
    float64 ``||b||^2`` (Euclidean) or ``||b||`` (cosine), computed once.
    """
    c64 = train.index_select(0, cand.reshape(-1)).view(*cand.shape, -1).double()  # [s, m, D]
    t64 = test.double()
    dots = torch.bmm(c64, t64.unsqueeze(2)).squeeze(2)
    if cosine:
        bn = (norms64[cand] if norms64 is not None else c64.norm(dim=2)).clamp_min(1e-12)
        an = t64.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return dots / bn / an
    return (norms64[cand] if norms64 is not None else (c64 * c64).sum(-1)) - 2.0 * dots


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
        for j in range(0, n, _FULL_COLS):  # [16, 256, D] float64 gathered at a time: 25 MB at D = 768
            cand = torch.arange(j, min(n, j + _FULL_COLS), device=train.device).expand(len(t), -1)
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
    gathered: int = 0  # scan: approximate scores gathered past the block filter
    tiles_by_threads: dict[int, int] | None = None  # scan tiles run with each GEMM thread count
    core_share: float | None = None  # fraction of their ready time the all-threads tiles ran (last reading)
    precision: str = ""  # the scoring precision of the primary pass (fp32 | bf16)
    gemm: str = "torch"  # probes.blas backend of the scan GEMMs
    gemm_probe: dict[str, float] | None = None  # seconds of one tile with each backend (when timed)
    probe: dict[int, float] | None = None  # seconds of the thread probe, per thread count

    def add(self, precision: str, n: int) -> None:
        self.by_precision = self.by_precision or {}
        self.by_precision[precision] = self.by_precision.get(precision, 0) + n


def scan(scorer: Scorer, prep: Prepared, m: int, stats: SearchStats,
         threads: ThreadChooser | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` best approximate scan-domain scores (sorted ascending, float32) and their indices.

    Tile by tile, laid out ``[train rows, test rows]``: block minima of ``_GROUP``
    training rows (a strided, vectorised pass), the blocks whose minimum is not
    above the row's threshold gathered and merged into a running top-``m``.
    The threshold is an upper bound of the m-th best score seen so far (first
    the m-th smallest block minimum: m blocks each hold a score at most that),
    so every score left out is worse than the final m-th: the result is the
    exact top-m of the approximate scores.
    """
    op = prep.op
    r, n, dev = op.shape[0], scorer.n, op.device
    width = min(_TILE, -(-n // _GROUP) * _GROUP)
    buf = torch.empty(width, r, dtype=scorer.mat.dtype, device=dev)
    run_v = torch.full((r, m), math.inf, device=dev)
    run_i = torch.full((r, m), -1, dtype=torch.long, device=dev)
    theta = torch.full((r,), math.inf, device=dev)
    offs = torch.arange(_GROUP, device=dev)
    for j0 in range(0, n, width):
        j1 = min(n, j0 + width)
        w = j1 - j0
        wp = -(-w // _GROUP) * _GROUP
        if threads is not None:
            threads.pick()
            t0 = time.perf_counter()
        scorer.tile(op, j0, j1, buf)
        if wp > w:
            buf[w:wp].fill_(math.inf)
        o = buf[:wp]
        nb = wp // _GROUP
        bmin = o.view(nb, _GROUP, r).amin(1).float()  # [blocks, r]
        if j0 == 0 and nb >= m:
            theta = torch.minimum(theta, bmin.kthvalue(m, dim=0).values)
        blk, rr = (bmin <= theta).nonzero(as_tuple=True)
        if len(blk):
            members = blk[:, None] * _GROUP + offs  # [P, G] rows of the tile
            vals = o[members, rr[:, None]].float()
            stats.gathered += vals.numel()
            _merge(run_v, run_i, theta, rr, vals, members + j0, m)
        if threads is not None:
            threads.record(time.perf_counter() - t0, w)
            stats.tiles_by_threads = stats.tiles_by_threads or {}
            stats.tiles_by_threads[threads.last] = stats.tiles_by_threads.get(threads.last, 0) + 1
            stats.core_share = threads.share
    run_v, order = run_v.sort(dim=1)
    return run_v, run_i.gather(1, order)


def _merge(run_v, run_i, theta, rr, vals, idx, m: int) -> None:
    """Merge gathered blocks (``vals``/``idx`` [P, G] of test rows ``rr``) into the running top-m.

    Only members not above their row's threshold can enter; they are packed
    per row (padded to the busiest row's count) and merged by one top-k.
    """
    keep = vals <= theta[rr][:, None]
    pj, gj = keep.nonzero(as_tuple=True)
    if len(pj) == 0:
        return
    rr, vals, idx = rr[pj], vals[pj, gj], idx[pj, gj]
    r = run_v.shape[0]
    counts = torch.bincount(rr, minlength=r)
    rows = counts.nonzero().squeeze(1)
    order = torch.argsort(rr, stable=True)
    rs = rr[order]
    start = counts.cumsum(0) - counts
    pos = torch.arange(len(rs), device=rr.device) - start[rs]
    compact = torch.full((r,), -1, dtype=torch.long, device=rr.device)
    compact[rows] = torch.arange(len(rows), device=rr.device)
    ci = compact[rs]
    maxc = int(counts.max())
    pv = torch.full((len(rows), maxc), math.inf, device=vals.device)
    pi = torch.full((len(rows), maxc), -1, dtype=torch.long, device=vals.device)
    pv[ci, pos] = vals[order]
    pi[ci, pos] = idx[order]
    cv = torch.cat([run_v[rows], pv], dim=1)
    cidx = torch.cat([run_i[rows], pi], dim=1)
    tv, tj = cv.topk(m, dim=1, largest=False, sorted=False)
    run_v[rows] = tv
    run_i[rows] = cidx.gather(1, tj)
    theta[rows] = tv.amax(dim=1)


def settle(test: torch.Tensor, train: torch.Tensor, scorer: Scorer, prep: Prepared, vals: torch.Tensor,
           cand: torch.Tensor, k: int, stats: SearchStats):
    """Re-rank the candidates that can still be among the k nearest; prove the rest cannot.

    Returns (ok [r] bool, values [r, k] float64, indices [r, k]); rows not ok are
    to be searched again (their values are garbage).
    """
    u = scorer.out_u / (1 - scorer.out_u)
    v = vals.double()
    e = prep.err[:, None]
    lo = v - u * v.abs() - e  # monotone in v: sorted like v
    hi = v + u * v.abs() + e
    m = v.shape[1]
    need = (lo <= hi[:, k - 1 : k]).sum(1)  # a prefix: the k-th smallest upper bound
    near = torch.empty(len(test), k, dtype=torch.float64, device=test.device)
    idx = torch.empty(len(test), k, dtype=torch.long, device=test.device)
    largest = scorer.cosine
    sub = max(1, min(_SUB, _SUB_ELEMS // max(1, int(need.max()) * train.shape[1])))
    for i in range(0, len(test), sub):
        w = int(need[i : i + sub].max())
        c = cand[i : i + sub, :w]
        stats.reranked += c.numel()
        x = exact_values(test[i : i + sub], train, c, scorer.cosine, scorer.norms64)
        near[i : i + sub], idx[i : i + sub] = _stable_top(x, c, k, largest)
    t = scorer.sign * near[:, k - 1] + prep.offset
    ok = lo[:, m - 1] > t
    if m >= scorer.n:
        ok = torch.ones_like(ok)
    return ok, near, idx


def search(test: torch.Tensor, train: torch.Tensor, scorers: Sequence[Callable[[], Scorer]], k: int,
           margin: dict[str, int], stats: SearchStats,
           threads: ThreadChooser | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (values float64, training indices) of ``test`` rows; see the module doc.

    ``scorers`` make the scorers to try in turn (built only when a row needs them).
    """
    n = train.shape[0]
    near = torch.empty(len(test), k, dtype=torch.float64, device=test.device)
    idx = torch.empty(len(test), k, dtype=torch.long, device=test.device)
    todo = torch.arange(len(test), device=test.device)
    cosine = None
    with _exact_cuda_reductions(test.device):
        for make in scorers:
            if len(todo) == 0:
                break
            scorer = make()
            cosine = scorer.cosine
            m = min(n, k + margin[scorer.precision])
            t = test[todo]
            prep = scorer.prepare(t, k)
            vals, cand = scan(scorer, prep, m, stats, threads)
            ok, nv, ni = settle(t, train, scorer, prep, vals, cand, k, stats)
            rows = todo[ok]
            stats.add(scorer.precision, len(rows))
            near[rows], idx[rows] = nv[ok], ni[ok]
            todo = todo[~ok]
        if len(todo):
            stats.full_exact += len(todo)
            near[todo], idx[todo] = _full_exact(test[todo], train, k, cosine, cosine)
    return near, idx
