"""Exact Pearson correlation between the columns of two activation matrices, at scale.

For every column of A (``[n_tokens, n_a]``) the k columns of B (``[n_tokens, n_b]``, the same
tokens) with the highest correlation, the reverse top-k, the full matrix where it fits, the
correlation of given column pairs, and the chance level of a shuffled B. Universality matches
features across seeds with it; splitting links and automaton edges use the same calls.

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

"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.sparse as sp

from .columns import DEFAULT_BLOCK_ELEMS, DEFAULT_CHUNK_NNZ, TopK, _check_pair, _prepare, _Side
from .kernels import HAVE_NUMBA

if HAVE_NUMBA:
    import numba

    from .kernels import _nb_col_cost, _nb_corr_kernel, _nb_csc_chunk

ENGINES = ("auto", "numba", "scipy", "dense")


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
                warnings.warn(f"splitkit.correlation: numba engine unavailable ({err!r}); using scipy", stacklevel=3)
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


def paired_correlation(acts_a, acts_b, a_idx, b_idx, *, pairs_per_chunk: int = 4096,
                       chunk_nnz: int = DEFAULT_CHUNK_NNZ // 2) -> np.ndarray:
    """Exact Pearson correlation of column ``a_idx[m]`` of A with column ``b_idx[m]`` of B.

    Args:
        acts_a, acts_b: ``[n_tokens, n_a]``, ``[n_tokens, n_b]`` sparse or dense.
        a_idx, b_idx: int ``[m]`` column pairs; a pair with an index < 0 gives NaN.
        pairs_per_chunk: most pairs per chunk; sparse chunks also stop at ``chunk_nnz`` stored
            entries of the selected columns (both sides), so the float64 copies of a chunk stay
            bounded (each pair's sum runs over its columns' entries in token order whatever the
            chunk, so the chunking never changes a result).

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
    for ps in _pair_chunks(A, B, a_idx, b_idx, sel, pairs_per_chunk, chunk_nnz):
        ia, ib = a_idx[ps], b_idx[ps]
        if A.kind == "sparse" and B.kind == "sparse":
            xa = A.mat[:, ia].astype(np.float64, copy=False)  # the column selection is a copy already
            xb = B.mat[:, ib].astype(np.float64, copy=False)
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


def _pair_chunks(A: _Side, B: _Side, a_idx, b_idx, sel: np.ndarray, max_pairs: int, chunk_nnz: int):
    """Consecutive runs of the pairs ``sel``: at most ``max_pairs`` each and, for two sparse sides, at
    most ``chunk_nnz`` stored entries in their selected columns (a run holds one pair at least)."""
    if A.kind != "sparse" or B.kind != "sparse":
        for s0 in range(0, sel.size, max_pairs):
            yield sel[s0 : s0 + max_pairs]
        return
    cost = np.cumsum(A.nnz_stored[a_idx[sel]] + B.nnz_stored[b_idx[sel]])
    s0 = 0
    while s0 < sel.size:
        base = cost[s0 - 1] if s0 else 0
        s1 = int(np.searchsorted(cost, base + chunk_nnz, side="right"))
        s1 = min(max(s1, s0 + 1), s0 + max_pairs, sel.size)
        yield sel[s0:s1]
        s0 = s1


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

