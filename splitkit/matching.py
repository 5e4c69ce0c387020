"""Cross-run matching of features (and neurons) by activation and logit-effect correlation.

The universality study of "Towards Monosemanticity" matches every feature of a dictionary trained
on transformer A to the feature of a dictionary trained on transformer B (another seed) whose
activations, over the same tokens, have the highest Pearson correlation; the same matching on the
MLP neurons is the baseline. This module computes those matches exactly and at scale.

Inputs are activations over the same ``n_tokens`` analysis tokens for side A and side B, either a
``scipy.sparse`` matrix ``[n_tokens, n]`` (feature activations; CSR preferred, float32) or a dense
``np.ndarray [n_tokens, n]`` (neurons).

Correlation (exact, population moments)::

    corr(a, b) = (S_ab - N * mu_a * mu_b) / (N * sd_a * sd_b),   S_ab = sum_t a_t * b_t

Engines (``engine=``):

* ``"numba"`` (default for sparse x sparse when numba is importable): A is cut into column chunks,
  each chunk turned into CSC (``A_chunk^T``) without densifying; for every A column a per-thread
  float64 accumulator of length ``n_b`` receives ``a_ti * B[t, :]`` for every token ``t`` where
  ``a_i`` fires (a row-by-row sparse product, cost = the number of co-firing (a, b) entries), then
  the whole row of correlations is formed, its top-k kept, and the reverse (B -> A) top-k updated.
  Products of float32 values are exact in float64, so the result is exact to float64 rounding.
  Threads: ``numba.get_num_threads()``; columns are dealt to threads by estimated cost.
  Memory: the inputs, one CSC chunk of A (``chunk_nnz`` entries), ``n_threads * n_b`` floats and
  the reverse top-k state ``n_threads * n_b * k``; never a dense ``[n_tokens, n]`` nor ``[n_a, n_b]``.
* ``"scipy"`` (fallback without numba): the same chunks, ``A_chunk^T @ B`` by scipy's single-threaded
  sparse product in float64, then a dense ``[chunk, n_b]`` block of correlations.
* ``"dense"`` (used when either side is a dense array): token blocks are densified and centred, their
  cross products ``A_blk^T B_blk`` computed by BLAS in ``dtype`` and summed in float64. Centring
  removes the cancellation of the uncentred formula, so ``dtype=np.float32`` stays within ~1e-6;
  the default is float64.

Why this design (measured on the project's 2-core AVX2 CPU, see ``bench/matching.py`` and
``docs/bench/matching.json``): the sparse work is a scatter of B rows fetched in random token order,
so the kernel prefetches the rows a few tokens ahead (2-4x faster than without); it then costs
~3-4 ns of CPU per co-firing pair (2 threads), about 4x less than scipy's or torch's sparse product
``A^T B`` alone (4096 x 4096 over 100k tokens: 0.9 s against 3.4 s and 3.0 s), and is exact;
16384 x 16384 over 1M tokens at 1.06% mean density took 103 s wall, 3.2 GB peak with the 2.9 GB
inputs, on a loaded machine. Dense GEMM (fp32 ~150 GFLOP/s here; bf16 ~10 GFLOP/s without AMX) costs ``2N``
flops per pair against ``~2.5 ns * N * d_a * d_b`` sparse, so it only pays when both features fire
on more than ~7% of tokens; sparse inputs therefore never take the dense route unless asked.

One-to-one assignment (``match``): the Hungarian algorithm (``linear_sum_assignment``) on the full
matrix while ``n_a * n_b`` is small, else LAPJVsp (``min_weight_full_bipartite_matching``) on the
graph of A->B and B->A top-k edges, which gives the same assignment whenever the optimum's edges are
in that graph (tested), or a greedy pass on the same edges.

Zero-variance columns (features that never fire, or constant columns) have no correlation: they
get ``value = NaN`` and ``index = -1``, are never offered as a match, and are counted in
``TopK.dead_a`` / ``TopK.dead_b``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

try:  # numba is a dependency of umap-learn, so normally present; scipy is the fallback.
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    HAVE_NUMBA = False

__all__ = [
    "TopK",
    "prepare",
    "max_correlation",
    "max_correlation_both",
    "correlation_matrix",
    "paired_correlation",
    "match",
    "assign_dense",
    "assign_topk",
    "shuffled_baseline",
    "logit_effects",
    "rowwise_corr",
    "logit_effect_match",
    "attribution_vectors",
    "attribution_similarity",
    "summarize",
]

ENGINES = ("auto", "numba", "scipy", "dense")
ASSIGNMENTS = ("auto", "dense", "topk", "greedy", "none")

#: default budget of one CSC chunk of A, in stored entries (8-12 bytes each)
DEFAULT_CHUNK_NNZ = 1 << 25
#: default budget of one dense block (token block or correlation block), in float64 entries
DEFAULT_BLOCK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TopK:
    """The k best partners of every column of one side.

    Attributes:
        index: int64 ``[n_a, k]`` column of the other side, best first; -1 where there is none
            (a dead row, or fewer than k live partners).
        value: float32 ``[n_a, k]`` Pearson correlation, sorted descending; NaN where index is -1.
        dead_a: bool ``[n_a]`` zero-variance columns of this side (rows of ``index``).
        dead_b: bool ``[n_b]`` zero-variance columns of the other side (never offered).
        n_tokens: number of tokens the correlations were computed over.
        meta: how it was computed (``engine``, ``k``, ``shuffled_seed`` for a baseline).
    """

    index: np.ndarray
    value: np.ndarray
    dead_a: np.ndarray
    dead_b: np.ndarray
    n_tokens: int
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    @property
    def n_dead_a(self) -> int:
        return int(self.dead_a.sum())

    @property
    def n_dead_b(self) -> int:
        return int(self.dead_b.sum())

    @property
    def best(self) -> np.ndarray:
        """int64 ``[n_a]``: the best partner (-1 for dead rows)."""
        return self.index[:, 0]

    @property
    def best_value(self) -> np.ndarray:
        """float32 ``[n_a]``: the correlation with the best partner (NaN for dead rows)."""
        return self.value[:, 0]


# --------------------------------------------------------------------------------------------
# Input preparation and column statistics
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Side:
    """One side's activations plus the column statistics every engine needs."""

    kind: str  # "sparse" (CSR) or "dense" (ndarray)
    mat: object
    n_tokens: int
    n_cols: int
    mean: np.ndarray  # float64 [n]
    sd: np.ndarray  # float64 [n], population standard deviation
    nnz: np.ndarray  # int64 [n], tokens where the column is nonzero
    dead: np.ndarray  # bool [n]
    nnz_stored: np.ndarray | None = None  # int64 [n], stored entries per column (sparse only)

    @property
    def density(self) -> np.ndarray:
        return self.nnz / float(self.n_tokens)

    @property
    def inv_sd(self) -> np.ndarray:
        out = np.zeros(self.n_cols)
        np.divide(1.0, self.sd, out=out, where=~self.dead)
        return out

    def block(self, t0: int, t1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        """Dense float64 ``[t1 - t0, c1 - c0]`` block, centred by the column means."""
        c1 = self.n_cols if c1 is None else c1
        if self.kind == "sparse":
            blk = self.mat[t0:t1]
            if c0 != 0 or c1 != self.n_cols:
                blk = blk[:, c0:c1]
            out = blk.toarray().astype(np.float64, copy=False)
        else:
            out = np.array(self.mat[t0:t1, c0:c1], dtype=np.float64)
        out -= self.mean[c0:c1]
        return out


def prepare(acts, name: str = "acts") -> _Side:
    """Validate ``acts [n_tokens, n]`` and compute its column statistics once.

    Every function here accepts the result in place of the array, so a caller that matches the same
    activations several times (best match, chance level, assignment) pays for one pass, not one
    per call: for the neurons over 4M analysis tokens that pass reads 4 GB.
    """
    return _prepare(acts, name)


def _prepare(acts, name: str) -> _Side:
    if isinstance(acts, _Side):
        return acts
    if sp.issparse(acts):
        if acts.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n_tokens, n], got ndim={acts.ndim}")
        mat = sp.csr_matrix(acts)  # no copy when already CSR matrix
        if mat.dtype not in (np.float32, np.float64):
            mat = mat.astype(np.float64)
        if not mat.has_canonical_format:
            mat = mat.copy()
            mat.sum_duplicates()  # also sorts indices; duplicates would corrupt sums of squares
        n_tokens, n_cols = mat.shape
        if n_tokens < 2 or n_cols < 1:
            raise ValueError(f"{name} needs >= 2 tokens and >= 1 column, got shape {mat.shape}")
        mean, ss, nnz, stored, finite = _sparse_col_stats(mat, n_tokens)
        if not finite:
            raise ValueError(f"{name} has non-finite values")
        kind = "sparse"
    else:
        if hasattr(acts, "detach"):  # torch tensor
            acts = acts.detach().cpu().numpy()
        mat = acts if isinstance(acts, np.ndarray) else np.asarray(acts)
        if mat.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n_tokens, n], got ndim={mat.ndim}")
        # float16 (e.g. an activation store's memory map) stays as it is: every engine reads it in
        # token blocks converted to float64, so a large store is never copied whole
        if mat.dtype not in (np.float16, np.float32, np.float64):
            mat = mat.astype(np.float64)
        n_tokens, n_cols = mat.shape
        if n_tokens < 2 or n_cols < 1:
            raise ValueError(f"{name} needs >= 2 tokens and >= 1 column, got shape {mat.shape}")
        mean, ss, nnz = _dense_col_stats(mat, name)
        stored = None
        kind = "dense"
    sd = np.sqrt(ss / n_tokens)
    # zero variance, allowing for float64 rounding of a constant nonzero column
    dead = ~(sd > 1e-9 * np.abs(mean))
    return _Side(kind, mat, int(n_tokens), int(n_cols), mean, sd, nnz, dead, stored)


def _sparse_col_stats(mat: sp.csr_matrix, n_tokens: int):
    """Column mean, centred sum of squares (exact, no cancellation), nonzero and stored counts,
    and whether all values are finite; no temporary of the size of the matrix."""
    n_cols = mat.shape[1]
    if HAVE_NUMBA:
        return _nb_col_stats(mat.indices, mat.data, n_cols, n_tokens)
    s = np.zeros(n_cols)
    cnt = np.zeros(n_cols, np.int64)
    stored = np.zeros(n_cols, np.int64)
    finite = True
    step = 1 << 22
    for p0 in range(0, mat.nnz, step):
        idx = mat.indices[p0 : p0 + step]
        val = mat.data[p0 : p0 + step].astype(np.float64)
        finite = finite and bool(np.isfinite(val).all())
        s += np.bincount(idx, weights=val, minlength=n_cols)
        cnt += np.bincount(idx[val != 0], minlength=n_cols)
        stored += np.bincount(idx, minlength=n_cols)
    mean = s / n_tokens
    ss = np.zeros(n_cols)
    for p0 in range(0, mat.nnz, step):
        idx = mat.indices[p0 : p0 + step]
        val = mat.data[p0 : p0 + step].astype(np.float64)
        d = np.where(val != 0, val - mean[idx], 0.0)
        ss += np.bincount(idx, weights=d * d, minlength=n_cols)
    ss += (n_tokens - cnt) * mean * mean
    return mean, ss, cnt, stored, finite


def _dense_col_stats(mat: np.ndarray, name: str):
    n_tokens, n_cols = mat.shape
    step = max(1, DEFAULT_BLOCK_ELEMS // max(n_cols, 1))
    s = np.zeros(n_cols)
    cnt = np.zeros(n_cols, np.int64)
    for t0 in range(0, n_tokens, step):
        blk = np.asarray(mat[t0 : t0 + step], dtype=np.float64)
        if not np.isfinite(blk).all():
            raise ValueError(f"{name} has non-finite values")
        s += blk.sum(0)
        cnt += (blk != 0).sum(0)
    mean = s / n_tokens
    ss = np.zeros(n_cols)
    for t0 in range(0, n_tokens, step):
        blk = np.asarray(mat[t0 : t0 + step], dtype=np.float64) - mean
        ss += np.einsum("tn,tn->n", blk, blk)
    return mean, ss, cnt


def _check_pair(acts_a, acts_b, k: int | None = None) -> tuple[_Side, _Side]:
    if k is not None and (not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    A = _prepare(acts_a, "acts_a")
    B = _prepare(acts_b, "acts_b")
    if A.n_tokens != B.n_tokens:
        raise ValueError(f"acts_a and acts_b must cover the same tokens: n_tokens {A.n_tokens} != {B.n_tokens}")
    return A, B


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

if HAVE_NUMBA:
    from llvmlite import binding as _llvm_binding
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    # LLVM >= 15 has opaque pointers: the prefetch intrinsic is mangled on "p0", before on "p0i8"
    _PREFETCH_NAME = "llvm.prefetch.p0" if _llvm_binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

    @_intrinsic
    def _prefetch(typingctx, arr, idx):
        """Hint the CPU to fetch ``arr[idx]`` into cache (read, high locality); no effect on values."""
        sig = _types.void(arr, idx)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            i8p = _ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            i32 = _ir.IntType(32)
            fnty = _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32])
            fn = _cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
            builder.call(fn, [ptr, _ir.Constant(i32, 0), _ir.Constant(i32, 3), _ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(cache=True, nogil=True)
    def _nb_col_stats(indices, data, n_cols, n_tokens):
        s = np.zeros(n_cols)
        cnt = np.zeros(n_cols, np.int64)
        stored = np.zeros(n_cols, np.int64)
        finite = True
        for p in range(indices.shape[0]):
            v = np.float64(data[p])
            c = indices[p]
            stored[c] += 1
            if not np.isfinite(v):
                finite = False
            elif v != 0.0:
                s[c] += v
                cnt[c] += 1
        mean = s / n_tokens
        ss = np.zeros(n_cols)
        for p in range(indices.shape[0]):
            v = np.float64(data[p])
            if v != 0.0:
                c = indices[p]
                d = v - mean[c]
                ss[c] += d * d
        for c in range(n_cols):
            ss[c] += (n_tokens - cnt[c]) * mean[c] * mean[c]
        return mean, ss, cnt, stored, finite

    @numba.njit(cache=True, nogil=True)
    def _nb_csc_chunk(indptr, indices, data, c0, c1, nnz_chunk, tok_dtype_probe):
        """Columns [c0, c1) of a canonical CSR matrix as CSC arrays (tokens ascending)."""
        n_tokens = indptr.shape[0] - 1
        width = c1 - c0
        ptr = np.zeros(width + 1, np.int64)
        lo = np.empty(n_tokens, np.int64)
        hi = np.empty(n_tokens, np.int64)
        for t in range(n_tokens):
            a = indptr[t]
            b = indptr[t + 1]
            row = indices[a:b]
            l = a + np.searchsorted(row, c0)
            h = a + np.searchsorted(row, c1)
            lo[t] = l
            hi[t] = h
            for p in range(l, h):
                ptr[indices[p] - c0 + 1] += 1
        for c in range(width):
            ptr[c + 1] += ptr[c]
        tok = np.empty(nnz_chunk, tok_dtype_probe.dtype)
        val = np.empty(nnz_chunk, data.dtype)
        fill = ptr[:-1].copy()
        for t in range(n_tokens):
            for p in range(lo[t], hi[t]):
                c = indices[p] - c0
                q = fill[c]
                tok[q] = t
                val[q] = data[p]
                fill[c] = q + 1
        return ptr, tok, val

    @numba.njit(cache=True, parallel=True)
    def _nb_col_cost(a_ptr, a_tok, b_ptr, n_b):
        """Work estimate per chunk column: co-firing B entries plus the row scan of length n_b."""
        width = a_ptr.shape[0] - 1
        cost = np.empty(width, np.float64)
        for i in numba.prange(width):
            s = 0
            for p in range(a_ptr[i], a_ptr[i + 1]):
                t = a_tok[p]
                s += b_ptr[t + 1] - b_ptr[t]
            cost[i] = s + 0.5 * n_b
        return cost

    @numba.njit(cache=True, parallel=True)
    def _nb_corr_kernel(
        a_ptr, a_tok, a_val, order, block_ptr,
        b_ptr, b_idx, b_val, step_idx, step_val, pf,
        n_tokens, mu_a, isd_a, alive_a, mu_b, isd_b, neg_b,
        out_val, out_idx, rev_val, rev_idx, rev_min, a_offset, full,
    ):  # fmt: skip
        """Correlation rows of one A chunk against all of B; top-k per row, reverse top-k, opt. full.

        a_*: CSC of the chunk (``width`` columns); order/block_ptr: columns dealt to blocks (one
        per thread). out_val/out_idx ``[width, k]``; rev_val/rev_idx ``[n_blocks, n_b, k]`` with
        neg_b ``[n_b]`` is 0 for live B columns and -inf for dead ones.
        rev_min ``[n_blocks, n_b]`` the current k-th value (n_b = 0 to skip); full
        ``[width, n_b]`` (0 rows to skip). step_*: entries of b_idx / b_val per cache line;
        pf: prefetch distance in tokens.
        """
        n_b = mu_b.shape[0]
        k = out_val.shape[1]
        n_blocks = block_ptr.shape[0] - 1
        do_rev = rev_val.shape[1] > 0
        do_full = full.shape[0] > 0
        n = np.float64(n_tokens)
        nt = a_tok.shape[0]
        for blk in numba.prange(n_blocks):
            acc = np.zeros(n_b, np.float64)
            cbuf = np.empty(n_b, np.float64)
            tv = np.empty(k, np.float64)
            ti = np.empty(k, np.int64)
            for pos in range(block_ptr[blk], block_ptr[blk + 1]):
                i = order[pos]
                if not alive_a[i]:
                    for r in range(k):
                        out_val[i, r] = np.nan
                        out_idx[i, r] = -1
                    if do_full:
                        for j in range(n_b):
                            full[i, j] = np.nan
                    continue
                # acc[j] = sum_t a[t, i] * b[t, j]   (float32 products are exact in float64).
                # B rows are fetched in a random order: prefetch the rows pf tokens ahead (2x-4x).
                for p in range(a_ptr[i], a_ptr[i + 1]):
                    if p + 2 * pf < nt:
                        _prefetch(b_ptr, a_tok[p + 2 * pf])
                    if p + pf < nt:
                        tf = a_tok[p + pf]
                        e = b_ptr[tf + 1]
                        for qq in range(b_ptr[tf], e, step_idx):
                            _prefetch(b_idx, qq)
                        for qq in range(b_ptr[tf], e, step_val):
                            _prefetch(b_val, qq)
                    t = a_tok[p]
                    av = np.float64(a_val[p])
                    for q in range(b_ptr[t], b_ptr[t + 1]):
                        acc[b_idx[q]] += av * np.float64(b_val[q])
                nm = n * mu_a[i]
                sa = isd_a[i] / n
                gi = i + a_offset
                # correlations of the whole row (a simple loop numba vectorises); dead B: -inf
                for j in range(n_b):
                    c = (acc[j] - nm * mu_b[j]) * (sa * isd_b[j])
                    acc[j] = 0.0
                    c = min(max(c, -1.0), 1.0)
                    cbuf[j] = c + neg_b[j]
                if do_full:
                    for j in range(n_b):
                        c = cbuf[j]
                        full[i, j] = c if c > -np.inf else np.nan
                for r in range(k):
                    tv[r] = -np.inf
                    ti[r] = -1
                thr = -np.inf
                for j in range(n_b):
                    c = cbuf[j]
                    if c > thr:  # j ascending: ties keep the lower index
                        r = k - 1
                        while r > 0 and tv[r - 1] < c:
                            tv[r] = tv[r - 1]
                            ti[r] = ti[r - 1]
                            r -= 1
                        tv[r] = c
                        ti[r] = j
                        thr = tv[k - 1]
                    if do_rev and c >= rev_min[blk, j] and c > -np.inf:
                        if c > rev_val[blk, j, k - 1] or gi < rev_idx[blk, j, k - 1]:
                            r = k - 1
                            while r > 0 and (
                                rev_val[blk, j, r - 1] < c
                                or (rev_val[blk, j, r - 1] == c and rev_idx[blk, j, r - 1] > gi)
                            ):
                                rev_val[blk, j, r] = rev_val[blk, j, r - 1]
                                rev_idx[blk, j, r] = rev_idx[blk, j, r - 1]
                                r -= 1
                            rev_val[blk, j, r] = c
                            rev_idx[blk, j, r] = gi
                            rev_min[blk, j] = rev_val[blk, j, k - 1]
                for r in range(k):
                    if ti[r] < 0:
                        out_val[i, r] = np.nan
                    else:
                        out_val[i, r] = tv[r]
                    out_idx[i, r] = ti[r]


# --------------------------------------------------------------------------------------------
# top-k helpers shared by the engines
# --------------------------------------------------------------------------------------------


def _merge_topk(val: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k best of each row of candidates ``val/idx [n, m]`` (NaN or idx -1 = none).

    Order: value descending, ties by lower index. Returns float64 ``[n, k]`` and int64 ``[n, k]``.
    """
    n, m = val.shape
    v = np.where((idx < 0) | np.isnan(val), -np.inf, val)
    ix = np.where(np.isfinite(v), idx, np.iinfo(np.int64).max)
    order = np.lexsort((ix, -v), axis=1)[:, :k]
    v = np.take_along_axis(v, order, 1)
    ix = np.take_along_axis(ix, order, 1)
    if v.shape[1] < k:
        pad = k - v.shape[1]
        v = np.concatenate([v, np.full((n, pad), -np.inf)], 1)
        ix = np.concatenate([ix, np.full((n, pad), -1, np.int64)], 1)
    none = ~np.isfinite(v)
    ix = np.where(none, -1, ix).astype(np.int64)
    v = np.where(none, np.nan, v)
    return v, ix


def _topk_rows(C: np.ndarray, k: int, col_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of a dense correlation block ``C [m, n]`` (NaN = not a candidate)."""
    m, n = C.shape
    X = np.where(np.isnan(C), -np.inf, C)
    if k < n:
        cand = np.argpartition(-X, k - 1, axis=1)[:, :k]
        # ties at the cut: argpartition may pick any of equal values; values are what matter
    else:
        cand = np.broadcast_to(np.arange(n), (m, n))
    vals = np.take_along_axis(X, cand, 1)
    return _merge_topk(vals, cand.astype(np.int64) + col_offset, k)


class _TopKState:
    """Accumulates forward top-k rows, reverse top-k per B column and optionally the full matrix."""

    def __init__(self, n_a: int, n_b: int, k: int, want_rev: bool, want_full: bool):
        self.k = k
        self.val = np.full((n_a, k), np.nan)
        self.idx = np.full((n_a, k), -1, np.int64)
        self.rev_val = np.full((n_b, k), np.nan) if want_rev else None
        self.rev_idx = np.full((n_b, k), -1, np.int64) if want_rev else None
        self.full = np.full((n_a, n_b), np.nan) if want_full else None

    def consume(self, C: np.ndarray, a0: int) -> None:
        """Take the dense correlation block ``C [m, n_b]`` of A columns ``a0 .. a0 + m``."""
        m = C.shape[0]
        v, i = _topk_rows(C, self.k)
        self.val[a0 : a0 + m] = v
        self.idx[a0 : a0 + m] = i
        if self.rev_val is not None:
            rv, ri = _topk_rows(C.T, self.k, col_offset=a0)
            self.rev_val, self.rev_idx = _merge_topk(
                np.concatenate([self.rev_val, rv], 1), np.concatenate([self.rev_idx, ri], 1), self.k
            )
        if self.full is not None:
            self.full[a0 : a0 + m] = C


def _corr_block(S: np.ndarray, A: _Side, B: _Side, a0: int, a1: int, centred: bool) -> np.ndarray:
    """Correlations from cross products ``S [a1 - a0, n_b]`` (centred or raw), NaN for dead."""
    n = float(A.n_tokens)
    if not centred:
        S = S - n * np.outer(A.mean[a0:a1], B.mean)
    C = S * (A.inv_sd[a0:a1, None] / n) * B.inv_sd[None, :]
    np.clip(C, -1.0, 1.0, out=C)
    C[A.dead[a0:a1]] = np.nan
    C[:, B.dead] = np.nan
    return C


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


def _column_chunks(A: _Side, chunk: int | None, chunk_nnz: int) -> list[tuple[int, int]]:
    """Contiguous A column ranges: at most ``chunk`` columns and about ``chunk_nnz`` entries each."""
    n = A.n_cols
    max_cols = n if chunk is None else int(chunk)
    if max_cols < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    cum = np.concatenate([[0], np.cumsum(A.nnz_stored if A.nnz_stored is not None else A.nnz)])
    out = []
    c0 = 0
    while c0 < n:
        c1 = int(np.searchsorted(cum, cum[c0] + chunk_nnz, side="right")) - 1
        c1 = min(max(c1, c0 + 1), c0 + max_cols, n)
        out.append((c0, c1))
        c0 = c1
    return out


def _deal_blocks(cost: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Deal columns to ``n_blocks`` blocks of similar total cost (greedy, most expensive first)."""
    order = np.argsort(-cost, kind="stable")
    if n_blocks == 1:
        return np.sort(order).astype(np.int64), np.array([0, order.size], np.int64)
    load = np.zeros(n_blocks)
    owner = np.empty(order.size, np.int64)
    # greedy LPT on the most expensive columns, snake dealing of the long tail (cheap, balanced)
    head = min(order.size, 64 * n_blocks)
    for pos in range(head):
        b = int(np.argmin(load))
        owner[pos] = b
        load[b] += cost[order[pos]]
    tail = np.arange(order.size - head)
    rnd, off = np.divmod(tail, n_blocks)
    snake = np.where(rnd % 2 == 0, off, n_blocks - 1 - off)
    # start the snake at the lightest block
    rank = np.argsort(load)
    owner[head:] = rank[snake]
    cols = []
    ptr = [0]
    for b in range(n_blocks):
        cb = np.sort(order[owner == b])
        cols.append(cb)
        ptr.append(ptr[-1] + cb.size)
    return np.concatenate(cols).astype(np.int64), np.array(ptr, np.int64)


def _run_numba(A: _Side, B: _Side, k: int, chunk, chunk_nnz: int, want_rev: bool, want_full: bool):
    n_b = B.n_cols
    n_threads = numba.get_num_threads()
    out_val = np.full((A.n_cols, k), np.nan)
    out_idx = np.full((A.n_cols, k), -1, np.int64)
    n_rev = n_b if want_rev else 0
    rev_val = np.full((n_threads, n_rev, k), -np.inf)
    rev_idx = np.full((n_threads, n_rev, k), -1, np.int64)
    rev_min = np.full((n_threads, n_rev), -np.inf)
    full = np.full((A.n_cols, n_b), np.nan) if want_full else None
    a = A.mat
    b = B.mat
    tok_probe = np.zeros(0, np.int32 if A.n_tokens < 2**31 else np.int64)
    step_idx = max(1, 64 // b.indices.itemsize)
    step_val = max(1, 64 // b.data.itemsize)
    # prefetch far enough ahead to cover ~200 B entries (a DRAM latency of row work), 2..16 tokens
    pf = int(np.clip(round(200.0 * B.n_tokens / max(b.nnz, 1)), 2, 16))
    mu_a, isd_a, alive_a = A.mean, A.inv_sd, ~A.dead
    mu_b, isd_b, neg_b = B.mean, B.inv_sd, np.where(B.dead, -np.inf, 0.0)
    for c0, c1 in _column_chunks(A, chunk, chunk_nnz):
        nnz_chunk = int(A.nnz_stored[c0:c1].sum())
        a_ptr, a_tok, a_val = _nb_csc_chunk(a.indptr, a.indices, a.data, c0, c1, nnz_chunk, tok_probe)
        cost = _nb_col_cost(a_ptr, a_tok, b.indptr, n_b)
        order, block_ptr = _deal_blocks(cost, n_threads)
        fl = full[c0:c1] if want_full else np.empty((0, 0))
        _nb_corr_kernel(
            a_ptr, a_tok, a_val, order, block_ptr,
            b.indptr, b.indices, b.data, step_idx, step_val, pf,
            A.n_tokens, mu_a[c0:c1], isd_a[c0:c1], alive_a[c0:c1], mu_b, isd_b, neg_b,
            out_val[c0:c1], out_idx[c0:c1], rev_val, rev_idx, rev_min, c0, fl,
        )  # fmt: skip
        del a_ptr, a_tok, a_val
    rv = ri = None
    if want_rev:
        rv, ri = _merge_topk(
            rev_val.transpose(1, 0, 2).reshape(n_b, -1), rev_idx.transpose(1, 0, 2).reshape(n_b, -1), k
        )
    return out_val, out_idx, rv, ri, full


def _run_scipy(A: _Side, B: _Side, k: int, chunk, chunk_nnz: int, want_rev: bool, want_full: bool):
    state = _TopKState(A.n_cols, B.n_cols, k, want_rev, want_full)
    b64 = B.mat.astype(np.float64)
    a_csc = None
    # a dense [chunk, n_b] block of correlations is formed per chunk: bound its size too
    max_cols = max(1, DEFAULT_BLOCK_ELEMS // max(B.n_cols, 1))
    chunk = max_cols if chunk is None else min(int(chunk), max_cols)
    for c0, c1 in _column_chunks(A, chunk, chunk_nnz):
        if HAVE_NUMBA:
            nnz_chunk = int(A.nnz_stored[c0:c1].sum())
            ptr, tok, val = _nb_csc_chunk(A.mat.indptr, A.mat.indices, A.mat.data, c0, c1, nnz_chunk, np.zeros(0, np.int64))
            at = sp.csr_matrix((val.astype(np.float64), tok, ptr), shape=(c1 - c0, A.n_tokens))
        else:
            if a_csc is None:
                a_csc = A.mat.tocsc()
            at = a_csc[:, c0:c1].T.tocsr().astype(np.float64)
        S = (at @ b64).toarray()
        state.consume(_corr_block(S, A, B, c0, c1, centred=False), c0)
    return state


def _run_dense(A: _Side, B: _Side, k: int, chunk, dtype, want_rev: bool, want_full: bool):
    state = _TopKState(A.n_cols, B.n_cols, k, want_rev, want_full)
    n_b = B.n_cols
    max_cols = max(1, DEFAULT_BLOCK_ELEMS // max(n_b, 1))
    width = max_cols if chunk is None else max(1, min(int(chunk), max_cols))
    for a0 in range(0, A.n_cols, width):
        a1 = min(a0 + width, A.n_cols)
        S = np.zeros((a1 - a0, n_b))
        tb = max(256, DEFAULT_BLOCK_ELEMS // (a1 - a0 + n_b))
        for t0 in range(0, A.n_tokens, tb):
            t1 = min(t0 + tb, A.n_tokens)
            xa = A.block(t0, t1, a0, a1).astype(dtype, copy=False)
            xb = B.block(t0, t1).astype(dtype, copy=False)
            S += xa.T @ xb
        state.consume(_corr_block(S, A, B, a0, a1, centred=True), a0)
    return state


_NUMBA_OK: bool | None = None


def _numba_usable() -> bool:
    """Compile (or load from cache) and run the kernels once on a tiny input; False if that fails
    (e.g. an LLVM that names the prefetch intrinsic differently), so "auto" can fall back to scipy."""
    global _NUMBA_OK
    if _NUMBA_OK is None:
        if not HAVE_NUMBA:
            _NUMBA_OK = False
        else:
            try:
                x = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], np.float32))
                side = _prepare(x, "probe")
                _run_numba(side, side, 1, None, DEFAULT_CHUNK_NNZ, True, False)
                _NUMBA_OK = True
            except Exception as err:  # pragma: no cover - depends on the numba/LLVM build
                warnings.warn(f"splitkit.matching: numba engine unavailable ({err!r}); using scipy", stacklevel=3)
                _NUMBA_OK = False
    return _NUMBA_OK


def _resolve_engine(A: _Side, B: _Side, engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        if A.kind == "dense" or B.kind == "dense":
            return "dense"
        return "numba" if _numba_usable() else "scipy"
    if engine in ("numba", "scipy") and (A.kind == "dense" or B.kind == "dense"):
        raise ValueError(f"engine {engine!r} needs sparse inputs on both sides; use 'dense' or 'auto'")
    if engine == "numba" and not HAVE_NUMBA:
        raise ValueError("engine 'numba' needs numba installed; use 'scipy' or 'auto'")
    return engine


def _compute(acts_a, acts_b, k, chunk, dtype, engine, want_rev, want_full, chunk_nnz=DEFAULT_CHUNK_NNZ):
    A, B = _check_pair(acts_a, acts_b, k)
    if dtype not in (np.float32, np.float64, "float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype = np.dtype(dtype)
    eng = _resolve_engine(A, B, engine)
    if eng == "numba":
        val, idx, rv, ri, full = _run_numba(A, B, k, chunk, chunk_nnz, want_rev, want_full)
    else:
        st = _run_scipy(A, B, k, chunk, chunk_nnz, want_rev, want_full) if eng == "scipy" else _run_dense(
            A, B, k, chunk, dtype, want_rev, want_full
        )
        val, idx, rv, ri, full = st.val, st.idx, st.rev_val, st.rev_idx, st.full
    meta = {"engine": eng, "k": k}
    fwd = TopK(idx, val.astype(np.float32), A.dead.copy(), B.dead.copy(), A.n_tokens, meta)
    rev = None
    if want_rev:
        ri = np.where(B.dead[:, None], -1, ri)
        rv = np.where(B.dead[:, None], np.nan, rv)
        rev = TopK(ri, rv.astype(np.float32), B.dead.copy(), A.dead.copy(), A.n_tokens, dict(meta))
    return A, B, fwd, rev, full


# --------------------------------------------------------------------------------------------
# Public API: correlations
# --------------------------------------------------------------------------------------------


def max_correlation(acts_a, acts_b, k: int = 8, *, chunk: int | None = None, dtype=np.float64,
                    engine: str = "auto", chunk_nnz: int = DEFAULT_CHUNK_NNZ) -> TopK:  # fmt: skip
    """For every column of A, the k columns of B with the highest exact Pearson correlation.

    Args:
        acts_a: ``[n_tokens, n_a]`` scipy.sparse (CSR preferred, float32) or dense ndarray.
        acts_b: ``[n_tokens, n_b]`` same tokens, same row order.
        k: partners kept per A column (>= 1; more than ``n_b`` pads with -1 / NaN).
        chunk: at most this many A columns per chunk (default: sized by ``chunk_nnz`` for the
            sparse engines, by a 128 MiB block for the others).
        dtype: GEMM dtype of the dense engine (float64 default; float32 ~2x faster, ~1e-6).
        engine: "auto", "numba", "scipy" or "dense" (see the module docstring).
        chunk_nnz: stored entries of A per CSC chunk (memory of the sparse engines).

    Returns:
        ``TopK`` with ``index [n_a, k]`` (int64, -1 = none) and ``value [n_a, k]`` (float32, NaN =
        none), zero-variance columns flagged in ``dead_a`` / ``dead_b``.
    """
    return _compute(acts_a, acts_b, k, chunk, dtype, engine, False, False, chunk_nnz)[2]


def max_correlation_both(acts_a, acts_b, k: int = 8, *, chunk: int | None = None, dtype=np.float64,
                         engine: str = "auto", chunk_nnz: int = DEFAULT_CHUNK_NNZ) -> tuple[TopK, TopK]:  # fmt: skip
    """Top-k A -> B and B -> A in one pass over the data (same arguments as ``max_correlation``).

    Returns:
        ``(fwd, rev)``: ``fwd.index [n_a, k]`` are B columns, ``rev.index [n_b, k]`` are A columns.
    """
    _, _, fwd, rev, _ = _compute(acts_a, acts_b, k, chunk, dtype, engine, True, False, chunk_nnz)
    return fwd, rev


def correlation_matrix(acts_a, acts_b, *, chunk: int | None = None, dtype=np.float64,
                       engine: str = "auto") -> np.ndarray:  # fmt: skip
    """The full float64 ``[n_a, n_b]`` Pearson matrix (NaN rows/columns for zero variance).

    Only for sizes where ``n_a * n_b`` float64 fit in memory; computed chunk by chunk like
    ``max_correlation``.
    """
    return _compute(acts_a, acts_b, 1, chunk, dtype, engine, False, True)[4]


def paired_correlation(acts_a, acts_b, a_idx, b_idx, *, pairs_per_chunk: int = 4096) -> np.ndarray:
    """Exact Pearson correlation of column ``a_idx[m]`` of A with column ``b_idx[m]`` of B.

    Args:
        acts_a, acts_b: ``[n_tokens, n_a]``, ``[n_tokens, n_b]`` sparse or dense.
        a_idx, b_idx: int ``[m]`` column pairs; a pair with an index < 0 gives NaN.

    Returns:
        float64 ``[m]``; NaN where either column has zero variance.
    """
    A, B = _check_pair(acts_a, acts_b)
    a_idx = np.asarray(a_idx, np.int64).reshape(-1)
    b_idx = np.asarray(b_idx, np.int64).reshape(-1)
    if a_idx.shape != b_idx.shape:
        raise ValueError(f"a_idx and b_idx must have the same length, got {a_idx.size} and {b_idx.size}")
    if (a_idx >= A.n_cols).any() or (b_idx >= B.n_cols).any():
        raise ValueError(f"pair index out of range: n_a={A.n_cols}, n_b={B.n_cols}")
    out = np.full(a_idx.size, np.nan)
    ok = (a_idx >= 0) & (b_idx >= 0)
    ok[ok] = ~A.dead[a_idx[ok]] & ~B.dead[b_idx[ok]]
    sel = np.flatnonzero(ok)
    n = float(A.n_tokens)
    for s0 in range(0, sel.size, pairs_per_chunk):
        ps = sel[s0 : s0 + pairs_per_chunk]
        ia, ib = a_idx[ps], b_idx[ps]
        if A.kind == "sparse" and B.kind == "sparse":
            xa = A.mat[:, ia].astype(np.float64)
            xb = B.mat[:, ib].astype(np.float64)
            S = np.asarray(xa.multiply(xb).sum(axis=0)).ravel()
            cov = S - n * A.mean[ia] * B.mean[ib]
        else:
            cov = np.zeros(ps.size)
            tb = max(256, DEFAULT_BLOCK_ELEMS // (2 * ps.size))
            for t0 in range(0, A.n_tokens, tb):
                t1 = min(t0 + tb, A.n_tokens)
                xa = _gather_cols(A, t0, t1, ia)
                xb = _gather_cols(B, t0, t1, ib)
                cov += np.einsum("tm,tm->m", xa, xb)
        out[ps] = np.clip(cov / (n * A.sd[ia] * B.sd[ib]), -1.0, 1.0)
    return out


def _gather_cols(S: _Side, t0: int, t1: int, cols: np.ndarray) -> np.ndarray:
    if S.kind == "sparse":
        x = S.mat[t0:t1][:, cols].toarray().astype(np.float64)
    else:
        x = np.asarray(S.mat[t0:t1][:, cols], dtype=np.float64)
    return x - S.mean[cols]


def shuffled_baseline(acts_a, acts_b, seed: int = 0, k: int = 1, **kwargs) -> TopK:
    """Chance level: ``max_correlation`` with B's token rows randomly permuted.

    The permutation breaks every real co-firing while keeping each column's density and value
    distribution, so its best-match correlations are what a matching finds by chance (close to 0
    for many tokens; rare features can still reach high values by coincidence).

    Args:
        acts_a, acts_b: as for ``max_correlation``; seed: permutation seed; k and ``**kwargs``
            passed on to ``max_correlation``.
    """
    A, B = _check_pair(acts_a, acts_b, k)
    perm = np.random.default_rng(seed).permutation(B.n_tokens)
    # permuting rows leaves every column statistic as it was: reuse them instead of another pass
    shuffled = dataclasses.replace(B, mat=B.mat[perm])
    out = max_correlation(A, shuffled, k, **kwargs)
    out.meta["shuffled_seed"] = seed
    return out


# --------------------------------------------------------------------------------------------
# Streaming: correlation sums over token chunks, for analysis sets too large to hold
# --------------------------------------------------------------------------------------------

if HAVE_NUMBA:

    @numba.njit(cache=True, parallel=True)
    def _nb_cross_sums(a_ptr, a_tok, a_val, b_ptr, b_idx, b_val, b_rows, S):
        """``S[i, j] += sum_t a[t, i] * b[b_rows[t], j]`` from A's CSC and B's CSR.

        One A column per iteration: its row of S stays in cache while B's rows at its tokens are
        scattered into it (the access pattern of ``_nb_corr_kernel``).
        """
        width = a_ptr.shape[0] - 1
        for i in numba.prange(width):
            for p in range(a_ptr[i], a_ptr[i + 1]):
                t = b_rows[a_tok[p]]
                av = np.float64(a_val[p])
                for q in range(b_ptr[t], b_ptr[t + 1]):
                    S[i, b_idx[q]] += av * np.float64(b_val[q])


class CrossMoments:
    """Pearson correlation of every column of A with every column of B, summed chunk by chunk.

    For analysis sets whose activations do not fit in memory or on disk: call :meth:`update` with
    ``a: [t, n_a]`` and ``b: [t, n_b]`` over the same ``t`` tokens (scipy CSR or dense), once per
    chunk; :meth:`correlation` and :meth:`max_correlation` then hold over every token seen, as if
    ``correlation_matrix`` had run on the concatenated chunks (float64 sums; exact up to rounding).

    ``b_rows`` in :meth:`update` pairs A's token ``t`` with B's token ``b_rows[t]`` of the same chunk:
    a permutation gives the shuffled chance level without copying B.

    Dense inputs are summed after subtracting the first chunk's column means, so a column with a
    large mean and a small spread keeps its digits (the shift cancels exactly in the covariance);
    sparse inputs are summed as they are (their zeros must stay zeros). Memory: ``8 * n_a * n_b``
    bytes (134 MB for 4096 x 4096).
    """

    def __init__(self, n_a: int, n_b: int):
        if n_a < 1 or n_b < 1:
            raise ValueError(f"CrossMoments needs n_a, n_b >= 1, got {n_a}, {n_b}")
        self.n_a, self.n_b = int(n_a), int(n_b)
        self.n_tokens = 0
        self.S = np.zeros((self.n_a, self.n_b))  # sum_t (a - shift_a)(b - shift_b)
        self._sum = [np.zeros(self.n_a), np.zeros(self.n_b)]
        self._sq = [np.zeros(self.n_a), np.zeros(self.n_b)]
        self._nnz = [np.zeros(self.n_a, np.int64), np.zeros(self.n_b, np.int64)]
        self._shift: list[np.ndarray | None] = [None, None]

    # -- accumulation ------------------------------------------------------------------------------

    def _side(self, x, which: int, name: str):
        n_cols = (self.n_a, self.n_b)[which]
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            if not x.has_canonical_format:
                x = x.copy()
                x.sum_duplicates()
            if x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float64)
            if not np.isfinite(x.data).all():
                raise ValueError(f"{name} has non-finite values")
        else:
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            x = np.asarray(x)
            if x.dtype == np.float16:
                x = x.astype(np.float32)  # numpy's float16 arithmetic is emulated: widen once
            elif x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float64)
            if x.ndim != 2 or not np.isfinite(x).all():
                raise ValueError(f"{name} must be a finite 2-D [n_tokens, n] array")
        if x.shape[1] != n_cols:
            raise ValueError(f"{name} has {x.shape[1]} columns; this CrossMoments was made for {n_cols}")
        if self._shift[which] is None:
            if sp.issparse(x):
                self._shift[which] = np.zeros(n_cols)
            else:
                self._shift[which] = np.asarray(x, np.float64).mean(0)
        return x

    def _stats(self, x, which: int) -> None:
        shift = self._shift[which]
        if sp.issparse(x):
            v = x.data.astype(np.float64)
            n_cols = x.shape[1]
            self._sum[which] += np.bincount(x.indices, weights=v, minlength=n_cols)
            self._sq[which] += np.bincount(x.indices, weights=v * v, minlength=n_cols)
            self._nnz[which] += np.bincount(x.indices[v != 0], minlength=n_cols)
        else:
            step = max(1, DEFAULT_BLOCK_ELEMS // max(x.shape[1], 1))
            for t0 in range(0, x.shape[0], step):
                blk = np.array(x[t0 : t0 + step], np.float64)  # a copy: the caller's array stays as it was
                self._nnz[which] += (blk != 0).sum(0)
                blk -= shift
                self._sum[which] += blk.sum(0)
                self._sq[which] += np.einsum("tn,tn->n", blk, blk)

    def update(self, a, b, b_rows: np.ndarray | None = None) -> "CrossMoments":
        """Add one chunk: ``a: [t, n_a]``, ``b: [t, n_b]``; ``b_rows: [t]`` optional row map of B."""
        a = self._side(a, 0, "a")
        b = self._side(b, 1, "b")
        t = a.shape[0]
        if b.shape[0] != t:
            raise ValueError(f"a and b must cover the same tokens: {t} != {b.shape[0]} rows")
        if b_rows is not None:
            b_rows = np.asarray(b_rows, np.int64)
            if b_rows.shape != (t,) or (t and (b_rows.min() < 0 or b_rows.max() >= t)):
                raise ValueError(f"b_rows must be {t} row indices of b")
        self._stats(a, 0)
        self._stats(b, 1)  # a row map permutes B's rows: its column sums are unchanged
        if sp.issparse(a) and sp.issparse(b):
            rows = np.arange(t, dtype=np.int64) if b_rows is None else b_rows
            if HAVE_NUMBA and _numba_usable():
                probe = np.zeros(0, np.int32 if t < 2**31 else np.int64)
                ptr, tok, val = _nb_csc_chunk(a.indptr, a.indices, a.data, 0, self.n_a, a.nnz, probe)
                _nb_cross_sums(ptr, tok, val, b.indptr, b.indices, b.data, rows, self.S)
            else:
                self.S += (a.T.tocsr().astype(np.float64) @ b[rows].astype(np.float64)).toarray()
        else:
            step = max(256, DEFAULT_BLOCK_ELEMS // (self.n_a + self.n_b))
            for t0 in range(0, t, step):
                t1 = min(t0 + step, t)
                xa = self._dense_block(a, 0, np.arange(t0, t1))
                xb = self._dense_block(b, 1, np.arange(t0, t1) if b_rows is None else b_rows[t0:t1])
                # float32 products per block, float64 across blocks: ~1e-6 relative
                self.S += (xa.T @ xb).astype(np.float64)
        self.n_tokens += t
        return self

    def _dense_block(self, x, which: int, rows: np.ndarray) -> np.ndarray:
        blk = x[rows].toarray() if sp.issparse(x) else np.asarray(x[rows])
        return (blk.astype(np.float64) - self._shift[which]).astype(np.float32)

    # -- results -------------------------------------------------------------------------------

    @property
    def nnz_a(self) -> np.ndarray:
        """``[n_a]`` tokens on which each A column was nonzero."""
        return self._nnz[0].copy()

    @property
    def nnz_b(self) -> np.ndarray:
        return self._nnz[1].copy()

    def _moments(self, which: int):
        n = float(self.n_tokens)
        m = self._sum[which] / n  # mean of the shifted column
        var = np.maximum(self._sq[which] / n - m * m, 0.0)
        sd = np.sqrt(var)
        scale = np.abs(m + self._shift[which]) + np.sqrt(self._sq[which] / n)
        dead = ~(sd > 1e-7 * scale)  # zero variance up to float64 cancellation
        return m, sd, dead

    def correlation(self, rows: slice = slice(None)) -> np.ndarray:
        """float64 ``[n_a, n_b]`` (or the A rows ``rows``); NaN where either column has zero variance."""
        if self.n_tokens < 2:
            raise ValueError("CrossMoments needs at least 2 tokens before correlations exist")
        n = float(self.n_tokens)
        ma, sda, deada = self._moments(0)
        mb, sdb, deadb = self._moments(1)
        ma, sda, deada = ma[rows], sda[rows], deada[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            C = (self.S[rows] / n - np.outer(ma, mb)) / np.outer(sda, sdb)
        np.clip(C, -1.0, 1.0, out=C)
        C[deada] = np.nan
        C[:, deadb] = np.nan
        return C

    def max_correlation(self, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Best B partner of every A column: ``value [n_a]`` float64 (NaN if none), ``index [n_a]`` (-1)."""
        val = np.full(self.n_a, np.nan)
        idx = np.full(self.n_a, -1, np.int64)
        for r0 in range(0, self.n_a, block):
            C = self.correlation(slice(r0, r0 + block))
            ok = ~np.isnan(C).all(1)
            if ok.any():
                j = np.nanargmax(np.where(np.isnan(C[ok]), -np.inf, C[ok]), axis=1)
                idx[r0:r0 + C.shape[0]][ok] = j
                val[r0:r0 + C.shape[0]][ok] = C[ok][np.arange(j.size), j]
        return val, idx


# --------------------------------------------------------------------------------------------
# Assignment (one-to-one)
# --------------------------------------------------------------------------------------------


def assign_dense(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian one-to-one assignment maximising the total correlation of a dense matrix.

    Args:
        C: float ``[n_a, n_b]`` correlations, NaN rows/columns (dead) are left out.

    Returns:
        ``assign_b`` int64 ``[n_a]`` (-1 = unassigned) and ``assign_corr`` float64 ``[n_a]``.
    """
    C = np.asarray(C, dtype=np.float64)
    n_a, n_b = C.shape
    rows = np.flatnonzero(~np.isnan(C).all(1))
    cols = np.flatnonzero(~np.isnan(C).all(0))
    assign = np.full(n_a, -1, np.int64)
    val = np.full(n_a, np.nan)
    if rows.size and cols.size:
        sub = C[np.ix_(rows, cols)]
        sub = np.where(np.isnan(sub), -2.0, sub)  # NaN inside live rows/cols: worse than any corr
        r, c = linear_sum_assignment(sub, maximize=True)
        assign[rows[r]] = cols[c]
        val[rows[r]] = sub[r, c]
    return assign, val


def assign_topk(fwd: TopK, rev: TopK | None = None, method: str = "topk") -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment restricted to the top-k edges (A's top-k, plus B's top-k if given).

    ``method="topk"``: ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp) on the
    edge graph, with cost ``2 - corr`` and one private dummy partner per A column at a cost above
    any real matching's spread. The result is a maximum-cardinality matching of the top-k graph,
    and among those one of maximum total correlation; it equals the dense Hungarian whenever the
    dense optimum only uses top-k edges. A columns left to their dummy get -1.
    ``method="greedy"``: edges by descending correlation, taken when both ends are free.

    Returns:
        ``assign_b`` int64 ``[n_a]`` (-1 = unassigned) and ``assign_corr`` float64 ``[n_a]``.
    """
    if method not in ("topk", "greedy"):
        raise ValueError(f"method must be 'topk' or 'greedy', got {method!r}")
    n_a = fwd.index.shape[0]
    n_b = fwd.dead_b.shape[0]
    ii = [np.repeat(np.arange(n_a), fwd.k)]
    jj = [fwd.index.ravel()]
    vv = [fwd.value.ravel().astype(np.float64)]
    if rev is not None:
        ii.append(rev.index.ravel())
        jj.append(np.repeat(np.arange(n_b), rev.k))
        vv.append(rev.value.ravel().astype(np.float64))
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    v = np.concatenate(vv)
    ok = (i >= 0) & (j >= 0) & ~np.isnan(v)
    i, j, v = i[ok], j[ok], v[ok]
    # deduplicate edges (an edge can be in both top-k lists)
    key = i * n_b + j
    key, first = np.unique(key, return_index=True)
    i, j, v = i[first], j[first], v[first]
    assign = np.full(n_a, -1, np.int64)
    val = np.full(n_a, np.nan)
    if i.size == 0:
        return assign, val
    if method == "greedy":
        order = np.lexsort((j, i, -v))
        used_a = np.zeros(n_a, bool)
        used_b = np.zeros(n_b, bool)
        for e in order:
            a, b = i[e], j[e]
            if not used_a[a] and not used_b[b]:
                used_a[a] = used_b[b] = True
                assign[a] = b
                val[a] = v[e]
        return assign, val
    rows = np.unique(i)
    r_of = np.full(n_a, -1, np.int64)
    r_of[rows] = np.arange(rows.size)
    m = rows.size
    big = 3.0 * m + 10.0  # > the cost spread of any real matching: dummies only when unavoidable
    r = np.concatenate([r_of[i], np.arange(m)])
    c = np.concatenate([j, n_b + np.arange(m)])
    w = np.concatenate([2.0 - v, np.full(m, big)])
    G = sp.csr_matrix((w, (r, c)), shape=(m, n_b + m))
    rr, cc = min_weight_full_bipartite_matching(G)
    real = cc < n_b
    a_sel = rows[rr[real]]
    assign[a_sel] = cc[real]
    val[a_sel] = 2.0 - np.asarray(G[rr[real], cc[real]]).ravel()
    return assign, val


# --------------------------------------------------------------------------------------------
# match
# --------------------------------------------------------------------------------------------


def match(acts_a, acts_b, k: int = 8, *, assignment: str = "auto", dense_limit: int = 1 << 24,
          chunk: int | None = None, dtype=np.float64, engine: str = "auto") -> pd.DataFrame:  # fmt: skip
    """Best match of every A column in B, the reverse best, mutuality and a one-to-one assignment.

    Args:
        acts_a, acts_b: ``[n_tokens, n_a]``, ``[n_tokens, n_b]`` (see ``max_correlation``).
        k: partners kept per column in each direction (top-k graph of the sparse assignment).
        assignment: "dense" (Hungarian, ``linear_sum_assignment`` on the full matrix), "topk"
            (LAPJVsp on the A->B and B->A top-k edges, see ``assign_topk``), "greedy" (greedy on
            the same edges), "none", or "auto": "dense" when ``n_a * n_b <= dense_limit``, else
            "topk".

    Returns:
        DataFrame, one row per A column: ``a``, ``best_b`` (-1 if a is dead), ``corr`` (NaN if
        dead), ``best_a_of_b`` (B's best A partner for best_b), ``corr_b`` (its correlation),
        ``mutual`` (a and best_b are each other's best), ``density_a``, ``density_b`` (of best_b,
        NaN if none), ``dead_a``, ``assign_b`` (-1 = unassigned), ``assign_corr``.
        ``df.attrs`` records engine, k, assignment method, n_tokens and dead counts.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    A, B = _check_pair(acts_a, acts_b, k)
    if assignment == "auto":
        assignment = "dense" if A.n_cols * B.n_cols <= dense_limit else "topk"
    want_full = assignment == "dense"
    _, _, fwd, rev, full = _compute(A, B, k, chunk, dtype, engine, True, want_full)
    best_b = fwd.index[:, 0]
    has = best_b >= 0
    best_a_of_b = np.full(A.n_cols, -1, np.int64)
    corr_b = np.full(A.n_cols, np.nan)
    best_a_of_b[has] = rev.index[best_b[has], 0]
    corr_b[has] = rev.value[best_b[has], 0]
    mutual = has & (best_a_of_b == np.arange(A.n_cols))
    density_b = np.full(A.n_cols, np.nan)
    density_b[has] = B.density[best_b[has]]
    if assignment == "dense":
        assign_b, assign_corr = assign_dense(full)
    elif assignment in ("topk", "greedy"):
        assign_b, assign_corr = assign_topk(fwd, rev, method=assignment)
    else:
        assign_b, assign_corr = np.full(A.n_cols, -1, np.int64), np.full(A.n_cols, np.nan)
    df = pd.DataFrame(
        {
            "a": np.arange(A.n_cols),
            "best_b": best_b,
            "corr": fwd.value[:, 0].astype(np.float64),
            "best_a_of_b": best_a_of_b,
            "corr_b": corr_b,
            "mutual": mutual,
            "density_a": A.density,
            "density_b": density_b,
            "dead_a": A.dead,
            "assign_b": assign_b,
            "assign_corr": assign_corr,
        }
    )
    df.attrs.update(
        engine=fwd.meta["engine"], k=k, assignment=assignment, n_tokens=A.n_tokens,
        n_a=A.n_cols, n_b=B.n_cols, n_dead_a=int(A.dead.sum()), n_dead_b=int(B.dead.sum()),
    )  # fmt: skip
    return df


# --------------------------------------------------------------------------------------------
# Logit effects and attribution
# --------------------------------------------------------------------------------------------


def _as2d(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    return x


def logit_effects(W_dec, W_out, W_U, ln_scale=None, *, dtype=np.float32) -> np.ndarray:
    """Direct effect of each feature direction on the next-token logits.

    ``effects = LN(W_dec @ W_out) @ W_U`` where, with a final layer norm, ``LN(v) = (v - mean(v))
    * ln_scale``: the LN's mean-centring is applied to the direction and its ``1 / sigma`` is frozen,
    folded with the LN gain into the per-dimension ``ln_scale`` the caller passes (e.g. ``gamma /
    typical_sigma``). With ``ln_scale=None`` the model has no final LN: no centring, no scale.

    Args:
        W_dec: ``[n, d_mlp]`` feature directions in neuron space (rows); the identity
            ``[d_mlp, d_mlp]`` gives the neurons' own effects.
        W_out: ``[d_mlp, d_model]`` MLP output weights.
        W_U: ``[d_model, vocab]`` unembedding.
        ln_scale: ``[d_model]`` or None.

    Returns:
        ``[n, vocab]`` in ``dtype``.
    """
    W_dec = _as2d(W_dec, "W_dec").astype(np.float64)
    W_out = _as2d(W_out, "W_out").astype(np.float64)
    W_U = _as2d(W_U, "W_U").astype(np.float64)
    if W_dec.shape[1] != W_out.shape[0]:
        raise ValueError(f"W_dec [n, d_mlp] and W_out [d_mlp, d_model] disagree: {W_dec.shape} vs {W_out.shape}")
    if W_out.shape[1] != W_U.shape[0]:
        raise ValueError(f"W_out [d_mlp, d_model] and W_U [d_model, vocab] disagree: {W_out.shape} vs {W_U.shape}")
    v = W_dec @ W_out  # [n, d_model]
    if ln_scale is not None:
        g = np.asarray(ln_scale.detach().cpu().numpy() if hasattr(ln_scale, "detach") else ln_scale, np.float64)
        if g.shape != (W_U.shape[0],):
            raise ValueError(f"ln_scale must have shape ({W_U.shape[0]},), got {g.shape}")
        v = (v - v.mean(1, keepdims=True)) * g
    return (v @ W_U).astype(dtype)


def rowwise_corr(X, Y) -> np.ndarray:
    """Pearson correlation of row ``X[i]`` with row ``Y[i]``: ``[m, v], [m, v] -> float64 [m]``.

    A row with zero variance gives NaN.
    """
    X = _as2d(X, "X").astype(np.float64)
    Y = _as2d(Y, "Y").astype(np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {X.shape} and {Y.shape}")
    X = X - X.mean(1, keepdims=True)
    Y = Y - Y.mean(1, keepdims=True)
    nx = np.sqrt(np.einsum("mv,mv->m", X, X))
    ny = np.sqrt(np.einsum("mv,mv->m", Y, Y))
    num = np.einsum("mv,mv->m", X, Y)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / (nx * ny)
    r[(nx == 0) | (ny == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def logit_effect_match(LA, LB, k: int = 8, **kwargs) -> TopK:
    """Best matches by logit-effect correlation alone: rows of ``LA [n_a, v]`` vs ``LB [n_b, v]``.

    The correlation is over the vocabulary (the rows are treated as columns of ``[v, n]``); same
    ``TopK`` machinery (dense engine) as ``max_correlation``.
    """
    LA = _as2d(LA, "LA")
    LB = _as2d(LB, "LB")
    if LA.shape[1] != LB.shape[1]:
        raise ValueError(f"LA and LB must share the vocabulary, got {LA.shape[1]} and {LB.shape[1]}")
    return max_correlation(LA.T, LB.T, k, **kwargs)


def attribution_vectors(acts, logit_eff, next_tokens):
    """Per-position attribution ``acts[t, i] * logit_eff[i, next_tokens[t]]`` (the paper's third view).

    Args:
        acts: ``[n_tokens, n]`` sparse (kept sparse, same pattern) or dense.
        logit_eff: ``[n, vocab]`` from ``logit_effects``.
        next_tokens: int ``[n_tokens]`` the token that actually follows each position (drop the
            positions without one before calling).

    Returns:
        ``[n_tokens, n]`` float64, CSR if ``acts`` is sparse else ndarray.
    """
    L = _as2d(logit_eff, "logit_eff")
    nxt = np.asarray(next_tokens).reshape(-1)
    n_tokens, n = acts.shape
    if nxt.size != n_tokens:
        raise ValueError(f"next_tokens must have n_tokens={n_tokens} entries, got {nxt.size}")
    if L.shape[0] != n:
        raise ValueError(f"logit_eff must have {n} rows (one per column of acts), got {L.shape[0]}")
    if nxt.size and (nxt.min() < 0 or nxt.max() >= L.shape[1]):
        raise ValueError(f"next_tokens must lie in [0, {L.shape[1]})")
    if sp.issparse(acts):
        m = sp.csr_matrix(acts).astype(np.float64)  # astype copies: float64 data, same pattern
        step = max(1, (1 << 22) // max(1, int(m.nnz / max(n_tokens, 1))))  # ~4M entries per block
        for t0 in range(0, n_tokens, step):
            t1 = min(t0 + step, n_tokens)
            p0, p1 = m.indptr[t0], m.indptr[t1]
            rows = np.repeat(np.arange(t0, t1), np.diff(m.indptr[t0 : t1 + 1]))
            m.data[p0:p1] *= L[m.indices[p0:p1], nxt[rows]]
        return m
    a = _as2d(acts, "acts").astype(np.float64)
    return a * L[:, nxt].T


def attribution_similarity(acts_a, acts_b, logit_a, logit_b, next_tokens, a_idx, b_idx) -> np.ndarray:
    """Correlation over positions of the attribution vectors of pairs (``a_idx[m]``, ``b_idx[m]``).

    Returns float64 ``[m]`` (NaN where a pair has no attribution variance or an index < 0).
    """
    xa = attribution_vectors(acts_a, logit_a, next_tokens)
    xb = attribution_vectors(acts_b, logit_b, next_tokens)
    return paired_correlation(xa, xb, a_idx, b_idx)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize(matches, mask=None, thresholds=(0.5, 0.7)) -> dict:
    """Headline figures of a matching, over the columns selected by ``mask``.

    Args:
        matches: DataFrame from ``match`` or a ``TopK`` (e.g. ``shuffled_baseline``).
        mask: bool ``[n_a]`` columns to include (e.g. ``~df.dead_a & (df.density_a >= 1e-6)``);
            None includes all. Callers should report with and without their exclusions.
        thresholds: for the fractions above each threshold.

    Returns:
        dict: ``n`` (all columns), ``n_included``, ``n_dead`` (included columns with NaN
        correlation: zero variance, never matched), ``n_live``; over the live included columns:
        ``median_corr``, ``mean_corr``, ``frac_corr_gt_{t}``; for a DataFrame also ``frac_mutual``,
        ``median_assign_corr``, ``mean_assign_corr`` (unassigned count as 0) and
        ``frac_assign_gt_{t}``. Fractions have the live included columns as denominator.
    """
    if isinstance(matches, TopK):
        corr = matches.value[:, 0].astype(np.float64)
        df = None
    elif isinstance(matches, pd.DataFrame):
        if "corr" not in matches:
            raise ValueError("matches must have a 'corr' column (a DataFrame from match())")
        df = matches
        corr = df["corr"].to_numpy(np.float64)
    else:
        raise ValueError(f"matches must be a DataFrame from match() or a TopK, got {type(matches).__name__}")
    n = corr.size
    inc = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if inc.size != n:
        raise ValueError(f"mask must have {n} entries, got {inc.size}")
    live = inc & ~np.isnan(corr)
    c = corr[live]
    nl = int(live.sum())
    out = {
        "n": int(n),
        "n_included": int(inc.sum()),
        "n_dead": int((inc & np.isnan(corr)).sum()),
        "n_live": nl,
        "median_corr": float(np.median(c)) if nl else math.nan,
        "mean_corr": float(np.mean(c)) if nl else math.nan,
    }
    for t in thresholds:
        out[f"frac_corr_gt_{t}"] = float((c > t).mean()) if nl else math.nan
    if df is not None:
        if "mutual" in df:
            out["frac_mutual"] = float(df["mutual"].to_numpy(bool)[live].mean()) if nl else math.nan
        if "assign_corr" in df:
            ac = np.nan_to_num(df["assign_corr"].to_numpy(np.float64)[live], nan=0.0)
            out["median_assign_corr"] = float(np.median(ac)) if nl else math.nan
            out["mean_assign_corr"] = float(np.mean(ac)) if nl else math.nan
            for t in thresholds:
                out[f"frac_assign_gt_{t}"] = float((ac > t).mean()) if nl else math.nan
    return out
