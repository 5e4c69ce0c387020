"""The field's other yardstick: how many features have a one-to-one counterpart by decoder direction.

Later work on seed dependence (Paulo and Belrose 2025) matches the latents of two dictionaries
one to one by the cosine of their decoder (and encoder) directions and reports the share whose
matched cosine clears a threshold. :func:`decoder_cosine_share` gives that figure for our
dictionaries, beside the activation-correlation ones, so the two kinds of number can be set side
by side. Decoder rows are compared in the neuron basis of each run's own LM: for two LMs of
different seeds the neuron bases differ, so this yardstick is meaningful for two dictionaries on
the same activations (SAE seeds on one LM) and only a lower bound across LM seeds, where the paper's
activation correlation is the right measure. Both uses are reported as such.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from ..correlation import assign_dense

# Past this many pairs the full cosine matrix is not formed: the assignment runs on each row's top-k.
DENSE_PAIRS = 1 << 24


def _unit_rows(W: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"{name} must be [n_features, d], got shape {W.shape}")
    norm = np.linalg.norm(W, axis=1)
    alive = norm > 0
    out = np.zeros_like(W)
    out[alive] = W[alive] / norm[alive, None]
    return out, alive


def matched_decoder_cosine(W_dec_a: np.ndarray, W_dec_b: np.ndarray, *, k: int = 16,
                           dense_pairs: int = DENSE_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (Hungarian) assignment of A's decoder rows to B's, maximising the total cosine.

    ``W_dec_a: [n_a, d]``, ``W_dec_b: [n_b, d]`` (rows are feature directions). Returns
    ``assign_b: int64 [n_a]`` (-1 = unassigned: a zero row, or more A rows than B rows) and
    ``cos: float64 [n_a]`` (NaN where unassigned). Past ``dense_pairs`` pairs the assignment uses
    each row's ``k`` best cosines both ways (a sparse full matching; rows left out get -1).
    """
    A, alive_a = _unit_rows(W_dec_a, "W_dec_a")
    B, alive_b = _unit_rows(W_dec_b, "W_dec_b")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"W_dec_a and W_dec_b must have the same width, got {A.shape[1]} and {B.shape[1]}")
    n_a, n_b = len(A), len(B)
    if n_a * n_b <= dense_pairs:
        C = A @ B.T  # [n_a, n_b]
        C[~alive_a] = np.nan
        C[:, ~alive_b] = np.nan
        return assign_dense(C)
    # top-k edges both ways, in row blocks: never the full [n_a, n_b] matrix
    rows, cols, vals = [], [], []
    k = min(k, n_a, n_b)
    for X, Y, swap in ((A, B, False), (B, A, True)):
        for r0 in range(0, len(X), 2048):
            S = X[r0 : r0 + 2048] @ Y.T
            idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
            r = np.repeat(np.arange(r0, r0 + len(S)), k)
            c = idx.reshape(-1)
            v = S[np.arange(len(S))[:, None], idx].reshape(-1)
            rows.append(c if swap else r)
            cols.append(r if swap else c)
            vals.append(v)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    _, first = np.unique(r * n_b + c, return_index=True)  # a pair found both ways is one edge
    r, c, v = r[first], c[first], v[first]
    G = sp.csr_matrix((2.0 - v, (r, c)), shape=(n_a, n_b))  # costs > 0, so every stored entry is an edge
    assign = np.full(n_a, -1, np.int64)
    cos = np.full(n_a, np.nan)
    try:
        ra, cb = min_weight_full_bipartite_matching(G)
    except ValueError:  # no full matching in the top-k graph: fall back to a greedy pass on its edges
        order = np.argsort(-v, kind="stable")
        used_a, used_b = set(), set()
        for i in order:
            if r[i] not in used_a and c[i] not in used_b:
                used_a.add(r[i]), used_b.add(c[i])
                assign[r[i]] = c[i]
        ra = np.flatnonzero(assign >= 0)
        cb = assign[ra]
    assign[ra] = cb
    cos[ra] = np.einsum("ij,ij->i", A[ra], B[cb])
    dead = ~alive_a | (assign >= 0) & ~alive_b[np.maximum(assign, 0)]
    assign[dead], cos[dead] = -1, np.nan
    return assign, cos


def decoder_cosine_share(W_dec_a: np.ndarray, W_dec_b: np.ndarray, threshold: float = 0.7, **kwargs) -> dict:
    """Share of A's features whose one-to-one decoder match in B has cosine above ``threshold``.

    Returns ``{"share_above": float, "median_cos": float, "threshold": float, "n": int}`` over A's
    non-zero rows (an unassigned row counts as below the threshold).
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    assign, cos = matched_decoder_cosine(W_dec_a, W_dec_b, **kwargs)
    alive = np.linalg.norm(np.asarray(W_dec_a, dtype=np.float64), axis=1) > 0
    c = np.where(np.isnan(cos), -1.0, cos)[alive]
    return {"share_above": float((c > threshold).mean()) if c.size else float("nan"),
            "median_cos": float(np.median(c)) if c.size else float("nan"),
            "threshold": float(threshold), "n": int(alive.sum())}
