"""Feature splitting across dictionary sizes: links, the splitting forest, fates, families, universality.

"Towards Monosemanticity" trains dictionaries of growing size on the same activations and links a
feature of a smaller one (the parent) to a feature of a larger one (the child) by a *masked
activation cosine*: the cosine of the two activation vectors restricted to the tokens where the
parent fires, and restricted to the tokens where the child fires, the larger of the two kept; about
0.4 makes a link. A parent with several children has split; a child with several parents is a merge,
so the structure is a DAG, not a strict tree.

Inputs are per-size feature activations over the same ``n_tokens`` analysis tokens,
``scipy.sparse`` ``[n_tokens, n]`` (ReLU outputs, so non-negative), decoder rows
``W_dec: [n, d_mlp]`` for the decoder cosine, and optionally twin labels, token ids and logit
effects for the listings. Everything here returns arrays, DataFrames and networkx graphs.

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

Fates (per size step, stated with their parameters in the forest's graph attributes):

* parent side (features of the smaller size): ``vanishes`` (no child at or above the threshold),
  ``persists`` (exactly one child, similar both ways: ``min(cos_on_parent, cos_on_child) >=
  persist_cos``, default 0.8), ``splits`` (two or more children whose supports together carry at
  least ``split_cover`` of the parent's activation mass, default 0.5, "most"), ``partial`` (linked
  but neither: one child that is not similar both ways, or children covering less than
  ``split_cover``);
* child side (features of the larger size): ``novel`` (no parent), ``merges`` (two or more
  parents), ``inherits`` (one parent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

try:  # numba is a dependency of umap-learn, so normally present; scipy is the fallback
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - only where numba is missing
    numba = None
    HAVE_NUMBA = False

__all__ = [
    "LINK_COLUMNS",
    "PARENT_FATES",
    "CHILD_FATES",
    "links",
    "null_masked_cos",
    "threshold_vs_null",
    "decoder_cosine",
    "children_cover",
    "link_family",
    "build_forest",
    "classify_fates",
    "splitting_forest",
    "feature_nodes",
    "step_summary",
    "branching",
    "families",
    "family_listing",
    "split_universality",
]

LINK_COLUMNS = ("parent", "child", "rank", "masked_cos", "cos_on_parent", "cos_on_child", "coverage",
                "parent_share", "n_cofire", "decoder_cos")
PARENT_FATES = ("persists", "splits", "partial", "vanishes")
CHILD_FATES = ("inherits", "merges", "novel")
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


# --------------------------------------------------------------------------------------------
# Links between two sizes
# --------------------------------------------------------------------------------------------


def decoder_cosine(W_parent: np.ndarray, W_child: np.ndarray, parent: np.ndarray, child: np.ndarray,
                   block: int = 1 << 16) -> np.ndarray:
    """float64 ``[n_pairs]``: cosine of decoder rows ``W_parent[parent]`` and ``W_child[child]``.

    ``W_parent: [n_parent, d_mlp]``, ``W_child: [n_child, d_mlp]``; pairs in blocks of ``block``.
    A zero row gives 0.
    """
    W_parent, W_child = np.asarray(W_parent), np.asarray(W_child)
    if W_parent.ndim != 2 or W_child.ndim != 2 or W_parent.shape[1] != W_child.shape[1]:
        raise ValueError(f"W_dec must be [n, d_mlp] with the same d_mlp on both sides, got "
                         f"{W_parent.shape} and {W_child.shape}")
    parent, child = np.asarray(parent, np.int64), np.asarray(child, np.int64)
    out = np.zeros(len(parent))
    for s in range(0, len(parent), block):
        u = W_parent[parent[s:s + block]].astype(np.float64)
        v = W_child[child[s:s + block]].astype(np.float64)
        den = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
        num = np.einsum("ij,ij->i", u, v)
        out[s:s + block] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


def links(acts_parent, acts_child, W_dec_parent: np.ndarray | None = None, W_dec_child: np.ndarray | None = None,
          *, k: int = 16, min_cos: float = 0.0, min_cofire: int = 1, engine: str = "auto",
          chunk_children: int | None = None) -> pd.DataFrame:
    """Candidate links: for every child, its ``k`` best parents by masked activation cosine.

    Args:
        acts_parent: ``[n_tokens, n_parent]`` sparse, non-negative (the smaller dictionary, or any).
        acts_child: ``[n_tokens, n_child]`` sparse over the same tokens.
        W_dec_parent, W_dec_child: ``[n, d_mlp]`` decoder rows; both or neither (decoder_cos NaN).
        k: parents kept per child (pairs that never co-fire are never candidates).
        min_cos: drop pairs whose masked cosine is below this (0 keeps all top-k).
        min_cofire: pairs that co-fire on fewer tokens are no candidates (1, the paper's rule,
            keeps every co-firing pair). On one or two shared tokens the masked cosine is that
            token's share of a norm, which can pass 0.4 by chance (see :func:`null_masked_cos`).
        engine: ``"numba"`` (the default when importable) or ``"scipy"``; same numbers.
        chunk_children: children per chunk (default: from a budget of co-firing pairs).

    Returns:
        DataFrame, one row per (child, kept parent), sorted by child then rank, columns
        ``parent, child`` (int64 feature ids), ``rank`` (0 = the child's best parent),
        ``masked_cos`` (max of the next two), ``cos_on_parent`` (restricted to the parent's
        tokens), ``cos_on_child`` (restricted to the child's tokens), ``coverage`` (share of the
        child's activation mass on tokens where the parent fires), ``parent_share`` (share of the
        parent's mass on tokens where the child fires), ``n_cofire`` (tokens where both fire),
        ``decoder_cos``.
    """
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"acts_parent and acts_child must cover the same tokens: {A.shape[0]} != {B.shape[0]}")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if (W_dec_parent is None) != (W_dec_child is None):
        raise ValueError("give both W_dec_parent and W_dec_child, or neither")
    if W_dec_parent is not None:
        for W, n, nm in ((W_dec_parent, A.shape[1], "W_dec_parent"), (W_dec_child, B.shape[1], "W_dec_child")):
            if np.ndim(W) != 2 or np.shape(W)[0] != n:
                raise ValueError(f"{nm} must be [{n}, d_mlp] (one row per feature), got {np.shape(W)}")
    eng = _engine(engine)
    if not (isinstance(min_cofire, (int, np.integer)) and min_cofire >= 1):
        raise ValueError(f"min_cofire must be a positive integer, got {min_cofire!r}")
    idx, stats, norm_a, norm_b = _topk_parents(A, B, int(k), eng, chunk_children, int(min_cofire))
    child, rank = np.nonzero(idx >= 0)
    parent = idx[child, rank]
    st = stats[child, rank]
    cp, cc = _masked_from_stats(st, norm_a[parent], norm_b[child])
    mass_a, mass_b = _col_sums(A, A.shape[1], 1), _col_sums(B, B.shape[1], 1)
    df = pd.DataFrame({
        "parent": parent.astype(np.int64), "child": child.astype(np.int64), "rank": rank.astype(np.int64),
        "masked_cos": np.maximum(cp, cc), "cos_on_parent": cp, "cos_on_child": cc,
        "coverage": st[:, 3] / mass_b[child], "parent_share": st[:, 4] / mass_a[parent],
        "n_cofire": st[:, 5].astype(np.int64),
        "decoder_cos": (decoder_cosine(W_dec_parent, W_dec_child, parent, child) if W_dec_parent is not None
                        else np.full(len(parent), np.nan)),
    }, columns=list(LINK_COLUMNS))
    if min_cos > 0:
        df = df[df["masked_cos"] >= min_cos].reset_index(drop=True)
    return df


def null_masked_cos(acts_parent, acts_child, *, seed: int = 0, n_children: int | None = None,
                    min_cofire: int = 1, engine: str = "auto") -> np.ndarray:
    """Chance level of the masked cosine: each child's best value against token-shuffled parents.

    The parent's rows (tokens) are permuted with ``seed``, which keeps every feature's density and
    activation values but breaks any relation to the child. ``n_children`` samples that many
    children (seeded) to make the baseline cheap at large sizes. Returns float64 ``[n_children]``:
    the best masked cosine of each sampled child (0 where it co-fires with no parent).
    """
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"acts_parent and acts_child must cover the same tokens: {A.shape[0]} != {B.shape[0]}")
    rng = np.random.default_rng(seed)
    A_shuf = A[rng.permutation(A.shape[0])]
    if n_children is not None:
        if not 1 <= n_children:
            raise ValueError(f"n_children must be >= 1 or None, got {n_children}")
        if n_children < B.shape[1]:
            B = B[:, np.sort(rng.choice(B.shape[1], n_children, replace=False))]
    df = links(A_shuf, B, k=1, min_cofire=min_cofire, engine=engine)
    best = np.zeros(B.shape[1])
    best[df["child"].to_numpy()] = df["masked_cos"].to_numpy()
    return best


def threshold_vs_null(link_df: pd.DataFrame, null: np.ndarray, n_child: int, threshold: float = 0.4) -> dict:
    """How the link threshold sits against chance: real vs shuffled shares of linked children.

    ``link_df`` from :func:`links`, ``null`` from :func:`null_masked_cos`, ``n_child`` the child
    dictionary's size. Returns ``threshold``, ``share_linked`` (children with a parent at or above
    it), ``null_share_linked`` (the same under shuffling), the null's ``null_q50/q90/q99/q999`` and
    ``null_max``, and ``n_null``.
    """
    best = link_df.loc[link_df["rank"] == 0, "masked_cos"].to_numpy()
    null = np.asarray(null, np.float64)
    q = np.quantile(null, [0.5, 0.9, 0.99, 0.999]) if len(null) else [np.nan] * 4
    return {
        "threshold": float(threshold),
        "share_linked": float((best >= threshold).sum() / max(n_child, 1)),
        "null_share_linked": float((null >= threshold).mean()) if len(null) else float("nan"),
        "null_q50": float(q[0]), "null_q90": float(q[1]), "null_q99": float(q[2]), "null_q999": float(q[3]),
        "null_max": float(null.max()) if len(null) else float("nan"),
        "n_null": int(len(null)),
    }


def children_cover(acts_parent, acts_child, parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """float64 ``[n_parent]``: share of each parent's activation mass on tokens where at least one
    of its linked children fires (the union of the children's supports; 0 for a parent with no
    link or no mass). ``parent, child``: the links' feature ids, one pair per link."""
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    parent, child = np.asarray(parent, np.int64), np.asarray(child, np.int64)
    n_p, n_c = A.shape[1], B.shape[1]
    M = sp.csr_matrix((np.ones(len(parent), np.float32), (child, parent)), shape=(n_c, n_p))
    Bpos = sp.csr_matrix((np.ones(B.nnz, np.float32), B.indices, B.indptr), shape=B.shape)
    U = Bpos @ M  # [n_tokens, n_parent]: how many linked children of each parent fire at each token
    U.data[:] = 1.0
    covered = _col_sums(A.multiply(U).tocsr(), n_p, 1)
    mass = _col_sums(A, n_p, 1)
    return np.divide(covered, mass, out=np.zeros(n_p), where=mass > 0)


# --------------------------------------------------------------------------------------------
# The forest
# --------------------------------------------------------------------------------------------


def _sorted_sizes(d: Mapping) -> list[int]:
    sizes = sorted(int(s) for s in d)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct, got {list(d)}")
    return sizes


def link_family(acts: Mapping[int, sp.spmatrix], W_dec: Mapping[int, np.ndarray] | None = None, *, k: int = 16,
                min_cofire: int = 1, engine: str = "auto", threshold: float | None = None
                ) -> dict[tuple[int, int], pd.DataFrame]:
    """Links between consecutive sizes of one family: ``{(size, next_size): links DataFrame}``.

    ``acts[size]``: ``[n_tokens, size-th n]``; ``W_dec[size]``: ``[n, d_mlp]``. With ``threshold``,
    each frame also gets the parents' ``children_cover`` in ``frame.attrs["children_cover"]``
    (float64 ``[n_parent]``, over the links at or above it).
    """
    sizes = _sorted_sizes(acts)
    out = {}
    for lo, hi in zip(sizes[:-1], sizes[1:]):
        Wp = None if W_dec is None else W_dec[lo]
        Wc = None if W_dec is None else W_dec[hi]
        df = links(acts[lo], acts[hi], Wp, Wc, k=k, min_cofire=min_cofire, engine=engine)
        if threshold is not None:
            sel = df["masked_cos"] >= threshold
            df.attrs["children_cover"] = children_cover(acts[lo], acts[hi], df.loc[sel, "parent"].to_numpy(),
                                                        df.loc[sel, "child"].to_numpy())
        out[(lo, hi)] = df
    return out


def _node(run: str, size: int, feature: int) -> str:
    return f"{run}/{size}/{feature}"


def _twin_groups(labels: np.ndarray | None, n: int) -> np.ndarray:
    """int64 ``[n]``: the representative (lowest feature id) of each feature's twin cluster."""
    rep = np.arange(n, dtype=np.int64)
    if labels is None:
        return rep
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"twin labels must be [n] = [{n}] (one label per feature, -1 = no twin), got {labels.shape}")
    lab = labels.astype(np.int64)
    sel = lab >= 0
    if sel.any():
        # the lowest feature id of every label: first occurrence after sorting by label
        ids = np.nonzero(sel)[0]
        uniq, first = np.unique(lab[ids], return_index=True)
        rep_of_label = dict(zip(uniq.tolist(), ids[first].tolist()))
        rep[ids] = np.array([rep_of_label[v] for v in lab[ids].tolist()], np.int64)
    return rep


def build_forest(step_links: Mapping[tuple[int, int], pd.DataFrame], densities: Mapping[int, np.ndarray], *,
                 run: str = "A", threshold: float = 0.4, twins: Mapping[int, np.ndarray] | None = None,
                 cover: Mapping[int, np.ndarray] | None = None) -> nx.DiGraph:
    """The splitting forest of one run: a DAG over every feature of every size.

    Args:
        step_links: ``{(size, next_size): links DataFrame}`` between consecutive sizes (from
            :func:`link_family`); every child keeps all its parents at or above ``threshold``.
        densities: ``{size: float [n]}`` firing densities; their keys are the sizes and their
            lengths the dictionary sizes.
        run: run label used in node ids ``"{run}/{size}/{feature}"``.
        twins: optional ``{size: int [n]}`` twin-cluster labels within one dictionary (equal
            labels = twins, -1 = none). Each cluster becomes one node named by its lowest feature
            id, with ``count`` members; an edge between clusters keeps the best member pair's
            link values (and ``n_pairs``, the member pairs linked).
        cover: optional ``{size: float [n]}`` children_cover of that size's features towards the
            next size (a collapsed node gets its members' maximum). Needed for ``splits``.

    Node attributes: ``run, size, feature, density`` (a cluster's maximum), ``count``, ``members``
    (comma-separated feature ids), ``children_cover``. Edge attributes: the link columns and
    ``n_pairs``. Graph attributes: ``run, sizes, threshold, twins_collapsed, twin_rule``.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sizes = _sorted_sizes(densities)
    steps = list(zip(sizes[:-1], sizes[1:]))
    missing = [s for s in steps if s not in step_links]
    if missing:
        raise ValueError(f"step_links lacks the consecutive steps {missing}; link every (size, next_size) pair")
    g = nx.DiGraph(run=run, sizes=",".join(map(str, sizes)), threshold=float(threshold),
                   twins_collapsed=twins is not None,
                   twin_rule=("in-dictionary twins (labels given) collapsed into one node; edge = best member pair"
                              if twins is not None else "none"))
    reps = {}
    for s in sizes:
        dens = np.asarray(densities[s], np.float64)
        n = len(dens)
        rep = _twin_groups(None if twins is None or s not in twins else twins[s], n)
        reps[s] = rep
        cov = np.zeros(n) if cover is None or s not in cover else np.asarray(cover[s], np.float64)
        if cov.shape != (n,):
            raise ValueError(f"cover[{s}] must be [{n}], got {cov.shape}")
        order = np.argsort(rep, kind="stable")
        r_sorted = rep[order]
        starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
        ends = np.r_[starts[1:], n]
        dmax = np.maximum.reduceat(dens[order], starts) if n else dens
        cmax = np.maximum.reduceat(cov[order], starts) if n else cov
        for u, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            f = int(r_sorted[a])
            mem = order[a:b]
            g.add_node(_node(run, s, f), run=run, size=int(s), feature=f, density=float(dmax[u]), count=int(b - a),
                       members=",".join(map(str, mem.tolist())), children_cover=float(cmax[u]))
    for lo, hi in steps:
        df = step_links[(lo, hi)]
        df = df[df["masked_cos"] >= threshold]
        if not len(df):
            continue
        pr = reps[lo][df["parent"].to_numpy()]
        cr = reps[hi][df["child"].to_numpy()]
        d = df.assign(_p=pr, _c=cr).sort_values(["_p", "_c", "masked_cos"], ascending=[True, True, False],
                                                 kind="stable")
        npairs = d.groupby(["_p", "_c"], sort=False).size().to_numpy()
        best = d.drop_duplicates(["_p", "_c"], keep="first")
        cols = [c for c in LINK_COLUMNS if c not in ("parent", "child", "rank")]
        vals = {c: best[c].to_numpy() for c in cols}
        for r, (p, c) in enumerate(zip(best["_p"].tolist(), best["_c"].tolist())):
            attrs = {col: (int(vals[col][r]) if col == "n_cofire" else float(vals[col][r])) for col in cols}
            attrs["n_pairs"] = int(npairs[r])
            g.add_edge(_node(run, lo, p), _node(run, hi, c), **attrs)
    return g


def classify_fates(forest: nx.DiGraph, *, persist_cos: float = 0.8, split_cover: float = 0.5) -> nx.DiGraph:
    """Label every node's fate in place (and return the forest); see the module docstring.

    Adds node attributes ``fate_out`` (parent side: persists, splits, partial, vanishes; "" at
    the largest size), ``fate_in`` (child side: inherits, merges, novel; "" at the smallest),
    ``n_children``, ``n_parents``; and graph attributes ``persist_cos``, ``split_cover``.
    """
    if not 0 < split_cover <= 1 or not 0 < persist_cos <= 1:
        raise ValueError(f"persist_cos and split_cover must be in (0, 1], got {persist_cos}, {split_cover}")
    sizes = [int(s) for s in forest.graph["sizes"].split(",")] if forest.graph.get("sizes") else []
    lo_size, hi_size = (sizes[0], sizes[-1]) if sizes else (None, None)
    for v, a in forest.nodes(data=True):
        out = forest.out_degree(v)
        inn = forest.in_degree(v)
        a["n_children"], a["n_parents"] = int(out), int(inn)
        if a["size"] == hi_size:
            a["fate_out"] = ""
        elif out == 0:
            a["fate_out"] = "vanishes"
        elif out == 1:
            e = forest.edges[v, next(iter(forest.successors(v)))]
            a["fate_out"] = "persists" if min(e["cos_on_parent"], e["cos_on_child"]) >= persist_cos else "partial"
        else:
            a["fate_out"] = "splits" if a.get("children_cover", 0.0) >= split_cover else "partial"
        if a["size"] == lo_size:
            a["fate_in"] = ""
        else:
            a["fate_in"] = "novel" if inn == 0 else ("inherits" if inn == 1 else "merges")
    forest.graph["persist_cos"] = float(persist_cos)
    forest.graph["split_cover"] = float(split_cover)
    return forest


def splitting_forest(acts: Mapping[int, sp.spmatrix], densities: Mapping[int, np.ndarray] | None = None,
                     W_dec: Mapping[int, np.ndarray] | None = None, *, run: str = "A", threshold: float = 0.4,
                     k: int = 16, persist_cos: float = 0.8, split_cover: float = 0.5,
                     twins: Mapping[int, np.ndarray] | None = None, min_cofire: int = 1, engine: str = "auto"
                     ) -> tuple[nx.DiGraph, dict[tuple[int, int], pd.DataFrame]]:
    """Links, forest and fates of one run in one call: ``(forest, step_links)``.

    ``acts[size]``: ``[n_tokens, n]`` sparse; ``densities`` default to each feature's share of
    tokens with a nonzero activation. The forest carries fates (:func:`classify_fates`) and
    families (:func:`families`, node attribute ``family``).
    """
    sizes = _sorted_sizes(acts)
    if densities is None:
        densities = {s: _col_sums(_as_acts(acts[s], f"acts[{s}]"), acts[s].shape[1], 0) / acts[s].shape[0]
                     for s in sizes}
    step_links = link_family(acts, W_dec, k=k, min_cofire=min_cofire, engine=engine, threshold=threshold)
    cover = {lo: df.attrs["children_cover"] for (lo, _), df in step_links.items()}
    forest = build_forest(step_links, densities, run=run, threshold=threshold, twins=twins, cover=cover)
    classify_fates(forest, persist_cos=persist_cos, split_cover=split_cover)
    families(forest)
    return forest, step_links


def feature_nodes(forest: nx.DiGraph) -> dict[tuple[int, int], str]:
    """``{(size, feature): node id}`` for every feature, twins mapped to their cluster's node."""
    out = {}
    for v, a in forest.nodes(data=True):
        for f in str(a.get("members", a["feature"])).split(","):
            out[(int(a["size"]), int(f))] = v
    return out


# --------------------------------------------------------------------------------------------
# Per-step summaries and families
# --------------------------------------------------------------------------------------------


def step_summary(forest: nx.DiGraph, twin_share: Mapping[int, float] | None = None) -> pd.DataFrame:
    """One row per size step: the share of each fate and the branching.

    Columns: ``size, next_size, n_parents, n_children, n_edges``, ``share_<fate>`` for every
    parent fate (over the parents' nodes) and child fate (over the children's nodes),
    ``mean_children`` (over linked parents), ``max_children``, and ``twin_share_parent`` /
    ``twin_share_child`` when ``twin_share`` (``{size: share of features that have a twin}``) is
    given, or computed from the nodes' ``count`` when the forest collapsed twins. Call
    :func:`classify_fates` first.
    """
    sizes = [int(s) for s in forest.graph["sizes"].split(",")]
    by_size: dict[int, list] = {s: [] for s in sizes}
    for v, a in forest.nodes(data=True):
        by_size[a["size"]].append(a)
    if twin_share is None and forest.graph.get("twins_collapsed"):
        counts = {s: np.array([a["count"] for a in by_size[s]]) for s in sizes}
        twin_share = {s: float(c[c > 1].sum() / max(c.sum(), 1)) for s, c in counts.items()}
    rows = []
    for lo, hi in zip(sizes[:-1], sizes[1:]):
        P, C = by_size[lo], by_size[hi]
        row = {"size": lo, "next_size": hi, "n_parents": len(P), "n_children": len(C),
               "n_edges": int(sum(a["n_children"] for a in P))}
        for f in PARENT_FATES:
            row[f"share_{f}"] = sum(a["fate_out"] == f for a in P) / max(len(P), 1)
        for f in CHILD_FATES:
            row[f"share_{f}"] = sum(a["fate_in"] == f for a in C) / max(len(C), 1)
        nch = np.array([a["n_children"] for a in P if a["n_children"] > 0])
        row["mean_children"] = float(nch.mean()) if len(nch) else 0.0
        row["max_children"] = int(nch.max()) if len(nch) else 0
        if twin_share is not None:
            row["twin_share_parent"] = float(twin_share.get(lo, np.nan))
            row["twin_share_child"] = float(twin_share.get(hi, np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def branching(forest: nx.DiGraph) -> pd.DataFrame:
    """Branching-factor distribution per step: columns ``size, next_size, n_children, n_parents``
    (how many parents of ``size`` have exactly ``n_children`` children at ``next_size``)."""
    sizes = [int(s) for s in forest.graph["sizes"].split(",")]
    nxt = dict(zip(sizes[:-1], sizes[1:]))
    cnt: dict[tuple[int, int], int] = {}
    for _, a in forest.nodes(data=True):
        if a["size"] in nxt:
            key = (a["size"], forest.out_degree(_))
            cnt[key] = cnt.get(key, 0) + 1
    rows = [{"size": s, "next_size": nxt[s], "n_children": b, "n_parents": c} for (s, b), c in sorted(cnt.items())]
    return pd.DataFrame(rows, columns=["size", "next_size", "n_children", "n_parents"])


def families(forest: nx.DiGraph) -> pd.DataFrame:
    """Connected lineages (weak components over all sizes); sets node attribute ``family``.

    Families are numbered 0, 1, ... by decreasing node count (ties: the lowest node id first).
    Returns one row per family: ``family, n_nodes, n_features`` (twin members counted),
    ``n_edges, depth`` (number of sizes it spans), ``min_size, max_size, n_roots`` (nodes at its
    smallest size), ``root`` (its first root's node id).
    """
    comps = []
    for comp in nx.weakly_connected_components(forest):
        nodes = sorted(comp)
        comps.append((-len(nodes), nodes[0], nodes))
    comps.sort()
    rows = []
    for fam, (_, _, nodes) in enumerate(comps):
        sz = [forest.nodes[v]["size"] for v in nodes]
        lo = min(sz)
        for v in nodes:
            forest.nodes[v]["family"] = fam
        roots = [v for v, s in zip(nodes, sz) if s == lo]
        rows.append({"family": fam, "n_nodes": len(nodes),
                     "n_features": int(sum(forest.nodes[v].get("count", 1) for v in nodes)),
                     "n_edges": forest.subgraph(nodes).number_of_edges(), "depth": len(set(sz)),
                     "min_size": lo, "max_size": max(sz), "n_roots": len(roots), "root": roots[0]})
    return pd.DataFrame(rows, columns=["family", "n_nodes", "n_features", "n_edges", "depth", "min_size",
                                       "max_size", "n_roots", "root"])


def _top_tokens(col: sp.csc_matrix, j: int, token_ids: np.ndarray, n_top: int) -> tuple[int, ...]:
    """The token ids carrying most of feature ``j``'s activation mass (summed per token id)."""
    s, e = col.indptr[j], col.indptr[j + 1]
    if s == e:
        return ()
    ids = token_ids[col.indices[s:e]]
    uniq, inv = np.unique(ids, return_inverse=True)
    mass = np.bincount(inv, weights=col.data[s:e].astype(np.float64))
    top = np.lexsort((uniq, -mass))[:n_top]
    return tuple(int(t) for t in uniq[top])


def family_listing(forest: nx.DiGraph, acts: Mapping[int, sp.spmatrix], token_ids: np.ndarray, *,
                   logit_effects: Mapping[int, np.ndarray] | None = None, n_families: int = 10,
                   n_top: int = 5, decode: Callable[[int], str] | None = None) -> pd.DataFrame:
    """The largest families, node by node, with their top activating and top promoted tokens.

    ``acts[size]``: ``[n_tokens, n]``; ``token_ids``: ``[n_tokens]`` ints (the analysis tokens);
    ``logit_effects[size]``: ``[n, vocab]``. Top activating tokens are the token ids with the
    most activation mass (summed over their positions); top promoted ones the largest logit
    effects. Columns: ``family, node, size, feature, count, density, fate_in, fate_out,
    n_children, n_parents, top_tokens, top_promoted`` (tuples of token ids; empty without logit
    effects) and, with ``decode``, ``top_tokens_text`` and ``top_promoted_text``.
    Call :func:`families` (and :func:`classify_fates`) first.
    """
    token_ids = np.asarray(token_ids)
    if any(a.get("family") is None for _, a in forest.nodes(data=True)):
        families(forest)
    want: dict[int, list] = {}
    for v, a in forest.nodes(data=True):
        if a["family"] < n_families:
            want.setdefault(a["size"], []).append(v)
    rows = []
    for s, nodes in sorted(want.items()):
        A = _as_acts(acts[s], f"acts[{s}]")
        if A.shape[0] != len(token_ids):
            raise ValueError(f"token_ids must be [n_tokens] = [{A.shape[0]}], got {len(token_ids)}")
        feats = np.array([forest.nodes[v]["feature"] for v in nodes], np.int64)
        cols = A[:, feats].tocsc()
        cols.sort_indices()
        L = None if logit_effects is None else np.asarray(logit_effects[s])
        for u, v in enumerate(nodes):
            a = forest.nodes[v]
            promoted = () if L is None else tuple(int(t) for t in np.argsort(-L[a["feature"]], kind="stable")[:n_top])
            row = {"family": a["family"], "node": v, "size": a["size"], "feature": a["feature"],
                   "count": a.get("count", 1), "density": a.get("density", np.nan),
                   "fate_in": a.get("fate_in", ""), "fate_out": a.get("fate_out", ""),
                   "n_children": forest.out_degree(v), "n_parents": forest.in_degree(v),
                   "top_tokens": _top_tokens(cols, u, token_ids, n_top), "top_promoted": promoted}
            if decode is not None:
                row["top_tokens_text"] = " | ".join(decode(t) for t in row["top_tokens"])
                row["top_promoted_text"] = " | ".join(decode(t) for t in promoted)
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["family", "size", "feature"], kind="stable").reset_index(drop=True)
    return df


# --------------------------------------------------------------------------------------------
# Universality of the splits
# --------------------------------------------------------------------------------------------


def _edge_share(edges_a, node_b: dict, forest_b: nx.DiGraph, match: Mapping[int, np.ndarray]):
    hit = mapped = 0
    for (sp_, fp), (sc, fc) in edges_a:
        mp, mc = match[sp_][fp], match[sc][fc]
        if mp < 0 or mc < 0:
            continue
        mapped += 1
        hit += forest_b.has_edge(node_b[(sp_, int(mp))], node_b[(sc, int(mc))])
    return hit, mapped


def _children_corr(parents_a, forest_a, forest_b, node_b, match) -> float:
    x, y = [], []
    for v, s, f in parents_a:
        m = match[s][f]
        if m >= 0:
            x.append(forest_a.out_degree(v))
            y.append(forest_b.out_degree(node_b[(s, int(m))]))
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def split_universality(forest_a: nx.DiGraph, forest_b: nx.DiGraph, matches: Mapping[int, np.ndarray], *,
                       n_shuffles: int = 20, seed: int = 0) -> dict:
    """Are A's splits also B's? The share of A's forest edges whose matched ends are a B edge.

    ``matches[size]``: int ``[n_A features]``, the matched B feature of each A feature of that
    size (-1 = unmatched). An A edge ``p -> c`` (each node standing for its representative
    feature) counts as mapped when both ends have a match, and as a hit when
    ``m(p) -> m(c)`` is an edge of B's forest. The baseline repeats this with each size's matches
    shuffled among A's features (seeded permutations, ``n_shuffles`` repeats).

    Returns ``share, n_hit, n_mapped, n_edges, shuffled_mean, shuffled_std, shuffled`` (list),
    ``children_corr`` (Pearson, over matched A parents below the largest size, between a parent's
    number of children in A and its match's in B), ``children_corr_shuffled_mean`` and
    ``n_parents``.
    """
    sizes = [int(s) for s in forest_a.graph["sizes"].split(",")]
    match = {}
    for s in sizes:
        if s not in matches:
            raise ValueError(f"matches lacks size {s}; give the A->B matching of every size of the forest")
        m = np.asarray(matches[s], np.int64)
        n_a = sum(a.get("count", 1) for _, a in forest_a.nodes(data=True) if a["size"] == s)
        if m.shape != (n_a,):
            raise ValueError(f"matches[{s}] must be [{n_a}] (one B feature per A feature, -1 = none), got {m.shape}")
        match[s] = m
    node_b = feature_nodes(forest_b)
    for s in sizes:
        bad = [int(x) for x in match[s] if x >= 0 and (s, int(x)) not in node_b][:3]
        if bad:
            raise ValueError(f"matches[{s}] names B features {bad} that B's forest does not have at size {s}")
    fa = forest_a.nodes
    edges_a = [((fa[u]["size"], fa[u]["feature"]), (fa[v]["size"], fa[v]["feature"])) for u, v in forest_a.edges]
    parents_a = [(v, a["size"], a["feature"]) for v, a in forest_a.nodes(data=True) if a["size"] != sizes[-1]]
    hit, mapped = _edge_share(edges_a, node_b, forest_b, match)
    rng = np.random.default_rng(seed)
    shuf, shuf_corr = [], []
    for _ in range(n_shuffles):
        mm = {s: match[s][rng.permutation(len(match[s]))] for s in sizes}
        h, m_ = _edge_share(edges_a, node_b, forest_b, mm)
        shuf.append(h / m_ if m_ else float("nan"))
        shuf_corr.append(_children_corr(parents_a, forest_a, forest_b, node_b, mm))
    fin = np.array([x for x in shuf if np.isfinite(x)])
    fin_corr = np.array([x for x in shuf_corr if np.isfinite(x)])
    return {
        "share": hit / mapped if mapped else float("nan"),
        "n_hit": int(hit), "n_mapped": int(mapped), "n_edges": len(edges_a),
        "shuffled_mean": float(fin.mean()) if len(fin) else float("nan"),
        "shuffled_std": float(fin.std()) if len(fin) else float("nan"),
        "shuffled": [float(x) for x in shuf],
        "children_corr": _children_corr(parents_a, forest_a, forest_b, node_b, match),
        "children_corr_shuffled_mean": float(fin_corr.mean()) if len(fin_corr) else float("nan"),
        "n_parents": len(parents_a),
        "n_shuffles": int(n_shuffles), "seed": int(seed),
    }
