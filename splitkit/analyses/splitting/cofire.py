"""Co-firing sums of two sizes' features and each child's top-k parents: the engines behind :mod:`.linking`.

Masked cosine. ``a_i`` is zero off its own support, so restricting both vectors to ``supp(i)``
leaves ``<a_i, a_j>`` unchanged and only shrinks ``a_j``::

    cos_on_parent(i, j) = S_ij / (||a_i|| * sqrt(Q_ij)),   Q_ij = sum_{t in supp i} a_tj^2
    cos_on_child(i, j)  = S_ij / (||a_j|| * sqrt(R_ij)),   R_ij = sum_{t in supp j} a_ti^2
    masked_cos = max(cos_on_parent, cos_on_child),        S_ij = sum_t a_ti a_tj

``S = A^T B``, ``Q = 1[A>0]^T (B∘B)`` and ``R = (A∘A)^T 1[B>0]`` are all sums over the tokens where
both fire, so one pass over the co-firing entries gives them (plus the coverage sums). The numba
engine walks, for each child column (tokens from a CSC copy of B), the parent rows of A at those
tokens and accumulates into a per-thread ``[n_parent, 5]`` array, keeping the top-k parents of that
child; cost is the number of co-firing (token, parent, child) triples and memory is the inputs plus
``n_threads * n_parent`` accumulators and ``[n_child, k]`` results. The scipy engine computes the
same sums as sparse products over column chunks of B. Neither ever holds a dense
``[n_parent, n_child]`` matrix; only pairs that co-fire on at least one token exist at all.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

try:  # numba is a dependency of umap-learn, so normally present; scipy is the fallback
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - only where numba is missing
    numba = None
    HAVE_NUMBA = False

ENGINES = ("auto", "numba", "scipy")

#: children per scipy chunk are chosen so one chunk's co-firing pairs stay under this many
DEFAULT_CHUNK_PAIRS = 1 << 21


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_acts(acts, name: str) -> sp.csr_matrix:
    """Canonical float32 CSR without explicit zeros; rejects negative or non-finite entries."""
    if not sp.issparse(acts):
        raise ValueError(f"{name} must be a scipy.sparse matrix [n_tokens, n], got {type(acts).__name__}")
    m = sp.csr_matrix(acts, dtype=np.float32, copy=False)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_tokens, n], got shape {m.shape}")
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    if m.nnz and (not np.isfinite(m.data).all() or m.data.min() < 0):
        raise ValueError(f"{name} must be finite and non-negative (ReLU activations); clip or fix it first")
    if m.nnz and (m.data == 0).any():
        m = m.copy()
        m.eliminate_zeros()
    return m


def _col_sums(m: sp.csr_matrix, n: int, power: int) -> np.ndarray:
    """float64 ``[n]``: per-column sum of ``data ** power`` (power 0 counts entries)."""
    w = None if power == 0 else np.asarray(m.data, np.float64) ** power
    return np.bincount(m.indices, weights=w, minlength=n).astype(np.float64)


def _engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "numba" and not HAVE_NUMBA:
        raise ValueError("engine 'numba' needs numba installed; use 'scipy' or 'auto'")
    if engine == "auto":
        return "numba" if HAVE_NUMBA else "scipy"
    return engine


# --------------------------------------------------------------------------------------------
# Co-firing sums: numba and scipy engines. Both return, for children [c0, c1), the top-k parents
# by masked cosine and the six sums (S, Q, R, C, P, count) of each kept pair.
# --------------------------------------------------------------------------------------------

_N_STATS = 6  # S = sum a b, Q = sum b^2, R = sum a^2, C = sum b, P = sum a, count (all over co-firing tokens)

if HAVE_NUMBA:

    @numba.njit(cache=True, parallel=True)
    def _nb_links(a_ptr, a_idx, a_val, b_ptr, b_tok, b_val, c0, c1, n_parent, norm_a, norm_b, n_blocks,
                  min_cofire, out_idx, out_stats):  # fmt: skip
        """Top-k parents of children [c0, c1) of B (CSC arrays) against A (CSR arrays).

        out_idx ``[c1 - c0, k]`` int64 prefilled with -1; out_stats ``[c1 - c0, k, 6]`` float64.
        Children are dealt to ``n_blocks`` blocks in an interleaved order so neighbouring (similarly
        costly) children land on different threads; each block owns its accumulators.
        """
        width = c1 - c0
        k = out_idx.shape[1]
        for blk in numba.prange(n_blocks):
            acc = np.zeros((n_parent, 5), np.float64)
            cnt = np.zeros(n_parent, np.int64)
            touched = np.empty(n_parent, np.int64)
            top_m = np.empty(k, np.float64)
            top_i = np.empty(k, np.int64)
            for jj in range(blk, width, n_blocks):
                j = c0 + jj
                nt = 0
                for p in range(b_ptr[j], b_ptr[j + 1]):
                    t = b_tok[p]
                    b = np.float64(b_val[p])
                    bb = b * b
                    for q in range(a_ptr[t], a_ptr[t + 1]):
                        i = a_idx[q]
                        a = np.float64(a_val[q])
                        if cnt[i] == 0:
                            touched[nt] = i
                            nt += 1
                        cnt[i] += 1
                        acc[i, 0] += a * b
                        acc[i, 1] += bb
                        acc[i, 2] += a * a
                        acc[i, 3] += b
                        acc[i, 4] += a
                nk = 0
                for u in range(nt):
                    i = touched[u]
                    if cnt[i] < min_cofire:
                        continue
                    s = acc[i, 0]
                    m = max(s / (norm_a[i] * math.sqrt(acc[i, 1])), s / (norm_b[j] * math.sqrt(acc[i, 2])))
                    # insertion into the top-k list: larger cosine first, ties to the lower parent id
                    if nk == k and (m < top_m[k - 1] or (m == top_m[k - 1] and i > top_i[k - 1])):
                        continue
                    pos = nk if nk < k else k - 1
                    while pos > 0 and (top_m[pos - 1] < m or (top_m[pos - 1] == m and top_i[pos - 1] > i)):
                        if pos < k:
                            top_m[pos] = top_m[pos - 1]
                            top_i[pos] = top_i[pos - 1]
                        pos -= 1
                    top_m[pos] = m
                    top_i[pos] = i
                    if nk < k:
                        nk += 1
                for r in range(nk):
                    i = top_i[r]
                    out_idx[jj, r] = i
                    for s_ in range(5):
                        out_stats[jj, r, s_] = acc[i, s_]
                    out_stats[jj, r, 5] = cnt[i]
                for u in range(nt):
                    i = touched[u]
                    cnt[i] = 0
                    for s_ in range(5):
                        acc[i, s_] = 0.0


def _masked_from_stats(st: np.ndarray, norm_p: np.ndarray, norm_c: np.ndarray):
    """(cos_on_parent, cos_on_child) from stats ``[..., 6]`` and the pair's norms (broadcast)."""
    s = st[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        cp = s / (norm_p * np.sqrt(st[..., 1]))
        cc = s / (norm_c * np.sqrt(st[..., 2]))
    return cp, cc


def _scipy_parent_side(A: sp.csr_matrix):
    """``A^T``, ``1[A>0]^T`` and ``(A∘A)^T`` as float64 CSR ``[n_parent, n_tokens]``, made once."""
    At64 = A.T.tocsr().astype(np.float64)
    Apos = At64.copy()
    Apos.data[:] = 1.0
    A2 = At64.copy()
    A2.data **= 2
    return At64, Apos, A2


def _scipy_links(parent_side, n_parent: int, Bc: sp.csc_matrix, c0: int, c1: int, k: int, norm_a, norm_b,
                 min_cofire: int):
    """The same result as the numba kernel for children [c0, c1), by sparse products."""
    At64, Apos, A2 = parent_side
    B64 = Bc[:, c0:c1].astype(np.float64)
    B2 = B64.copy()
    B2.data **= 2
    Bpos = B64.copy()
    Bpos.data = np.ones_like(Bpos.data)
    # all six products have the co-firing pattern (every stored value is > 0), so they align
    prods = [At64 @ B64, Apos @ B2, A2 @ Bpos, Apos @ B64, At64 @ Bpos, Apos @ Bpos]
    coos = [sp.coo_matrix(p) for p in prods]
    keys = [c.col.astype(np.int64) * n_parent + c.row for c in coos]
    order = [np.argsort(kk, kind="stable") for kk in keys]
    for kk, o in zip(keys[1:], order[1:]):
        assert np.array_equal(kk[o], keys[0][order[0]]), "co-firing patterns differ"
    row = coos[0].row[order[0]].astype(np.int64)
    col = coos[0].col[order[0]].astype(np.int64)
    st = np.stack([c.data[o] for c, o in zip(coos, order)], axis=1)
    ok = st[:, 5] >= min_cofire
    row, col, st = row[ok], col[ok], st[ok]
    cp, cc = _masked_from_stats(st, norm_a[row], norm_b[col + c0])
    m = np.maximum(cp, cc)
    srt = np.lexsort((row, -m, col))  # by child, best first, ties to the lower parent id
    row, col, st = row[srt], col[srt], st[srt]
    starts = np.searchsorted(col, np.arange(c1 - c0))
    rank = np.arange(len(col)) - starts[col]
    keep = rank < k
    out_idx = np.full((c1 - c0, k), -1, np.int64)
    out_stats = np.zeros((c1 - c0, k, _N_STATS))
    out_idx[col[keep], rank[keep]] = row[keep]
    out_stats[col[keep], rank[keep]] = st[keep]
    return out_idx, out_stats


def _topk_parents(A: sp.csr_matrix, B: sp.csr_matrix, k: int, engine: str, chunk_children: int | None,
                  min_cofire: int = 1):
    """Top-k parents of every child: (idx ``[n_child, k]``, stats ``[n_child, k, 6]``, norm_a, norm_b)."""
    n_p, n_c = A.shape[1], B.shape[1]
    norm_a = np.sqrt(_col_sums(A, n_p, 2))
    norm_b = np.sqrt(_col_sums(B, n_c, 2))
    Bc = B.tocsc()
    Bc.sort_indices()
    idx = np.full((n_c, k), -1, np.int64)
    stats = np.zeros((n_c, k, _N_STATS))
    if n_c == 0 or n_p == 0:
        return idx, stats, norm_a, norm_b
    if chunk_children is None:
        # a chunk's co-firing pairs bound the scipy engine's memory; estimate from entry counts
        nnz_row_a = np.diff(A.indptr).mean() if A.shape[0] else 0.0
        pairs_per_child = max(1.0, (Bc.nnz / max(n_c, 1)) * max(nnz_row_a, 1.0))
        chunk_children = int(max(64, min(n_c, DEFAULT_CHUNK_PAIRS // pairs_per_child)))
        if engine == "numba":
            chunk_children = max(chunk_children, 4096)
    if chunk_children < 1:
        raise ValueError(f"chunk_children must be >= 1, got {chunk_children}")
    if engine == "numba":
        n_blocks = 4 * numba.get_num_threads()
        a_ptr, b_ptr = A.indptr.astype(np.int64, copy=False), Bc.indptr.astype(np.int64, copy=False)
        for c0 in range(0, n_c, chunk_children):
            c1 = min(n_c, c0 + chunk_children)
            _nb_links(a_ptr, A.indices, A.data, b_ptr, Bc.indices, Bc.data,
                      c0, c1, n_p, norm_a, norm_b, n_blocks, int(min_cofire), idx[c0:c1], stats[c0:c1])
    else:
        parent_side = _scipy_parent_side(A)
        for c0 in range(0, n_c, chunk_children):
            c1 = min(n_c, c0 + chunk_children)
            idx[c0:c1], stats[c0:c1] = _scipy_links(parent_side, n_p, Bc, c0, c1, k, norm_a, norm_b, min_cofire)
    return idx, stats, norm_a, norm_b
