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

from ..correlation import TopK, assign_dense, assign_topk

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


def _topk_both_ways(A: np.ndarray, B: np.ndarray, k: int, block_elems: int) -> tuple[TopK, TopK]:
    """Each unit row's ``k`` best cosines in the other set, both ways (``A [n_a, d]``, ``B [n_b, d]``
    unit rows), in row blocks of at most ``block_elems`` cosines: never the full matrix."""
    out = []
    for X, Y in ((A, B), (B, A)):
        kk = min(k, len(Y))
        index = np.empty((len(X), kk), np.int64)
        value = np.empty((len(X), kk), np.float32)
        step = max(1, block_elems // max(1, len(Y)))
        for r0 in range(0, len(X), step):
            S = X[r0 : r0 + step] @ Y.T  # [rows, n_other]
            idx = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            v = np.take_along_axis(S, idx, 1)
            order = np.argsort(-v, axis=1, kind="stable")
            index[r0 : r0 + len(S)] = np.take_along_axis(idx, order, 1)
            value[r0 : r0 + len(S)] = np.take_along_axis(v, order, 1)
        out.append(TopK(index=index, value=value, dead_a=np.zeros(len(X), bool), dead_b=np.zeros(len(Y), bool),
                        n_tokens=0, meta={"what": "decoder cosine", "k": kk}))
    return out[0], out[1]


def matched_decoder_cosine(W_dec_a: np.ndarray, W_dec_b: np.ndarray, *, k: int = 16,
                           dense_pairs: int = DENSE_PAIRS, block_elems: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (Hungarian) assignment of A's decoder rows to B's, maximising the total cosine.

    ``W_dec_a: [n_a, d]``, ``W_dec_b: [n_b, d]`` (rows are feature directions; zero rows are dead and
    left out). Returns ``assign_b: int64 [n_a]`` (-1 = unassigned: a zero row, or more A rows than B
    rows) and ``cos: float64 [n_a]`` (NaN where unassigned).

    Up to ``dense_pairs`` pairs (2^24: 4,096 x 4,096, a 128 MB cosine matrix) it is the exact
    Hungarian assignment (``linear_sum_assignment``) on the full matrix. Above, the full matrix is
    never formed (16k x 16k would be 2 GB): each row's ``k`` best cosines both ways are found in
    blocks of ``block_elems`` and the assignment is the maximum-weight one on that graph
    (``correlation.assign_topk``: LAPJVsp, a maximum-cardinality matching with private dummies), which
    equals the dense optimum whenever the optimum uses only top-k edges; a row it cannot place is -1.
    """
    A, alive_a = _unit_rows(W_dec_a, "W_dec_a")
    B, alive_b = _unit_rows(W_dec_b, "W_dec_b")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"W_dec_a and W_dec_b must have the same width, got {A.shape[1]} and {B.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1 partners per row, got {k}")
    n_a, n_b = len(A), len(B)
    assign = np.full(n_a, -1, np.int64)
    cos = np.full(n_a, np.nan)
    ia, ib = np.flatnonzero(alive_a), np.flatnonzero(alive_b)
    if not ia.size or not ib.size:
        return assign, cos
    if ia.size * ib.size <= dense_pairs:
        sub_assign, _ = assign_dense(A[ia] @ B[ib].T)  # [live a, live b]
    else:
        sub_assign, _ = assign_topk(*_topk_both_ways(A[ia], B[ib], k, block_elems))
    ok = sub_assign >= 0
    assign[ia[ok]] = ib[sub_assign[ok]]
    r = ia[ok]
    cos[r] = np.einsum("ij,ij->i", A[r], B[assign[r]])
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


#: the cosine above which two matched decoder directions count as the same feature (the field's usual 0.7)
THRESHOLD = 0.7
#: analysis tokens the least-squares map between the two LMs' neuron bases is fitted on
MAP_TOKENS = 1_000_000


def neuron_basis_map(acts_a, acts_b, ridge: float = 1e-3) -> tuple[np.ndarray, float]:
    """The least-squares linear map from run A's neuron activations onto run B's on the same tokens.

    ``acts_a: [n_tokens, d_a]``, ``acts_b: [n_tokens, d_b]`` (CSR or dense). Returns ``M [d_a, d_b]``
    minimising ``||(X_a - mean) M - (X_b - mean)||^2 + ridge * mean(diag G) * ||M||^2`` (``G`` A's
    covariance; the ridge keeps never-firing neurons at an exact zero row) and the share of B's
    centred variance it explains (R^2). Two LMs of different seeds have unrelated neuron bases, so a
    decoder row of A is compared with B's only after this map: if a feature adds ``f d_a`` to A's
    neurons and ``f d_b`` to B's on the same tokens, ``d_a M`` estimates ``d_b``.
    """
    if acts_a.shape[0] != acts_b.shape[0]:
        raise ValueError(f"acts_a and acts_b must cover the same tokens, got {acts_a.shape[0]} and {acts_b.shape[0]} rows")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    n = acts_a.shape[0]
    if n < 2:
        raise ValueError(f"neuron_basis_map needs at least 2 tokens, got {n}")

    def gram(X, Y):  # centred X^T Y in float64, without a dense copy of a sparse input
        X = X.astype(np.float64) if hasattr(X, "tocsr") else np.asarray(X, np.float64)
        Y = Y.astype(np.float64) if hasattr(Y, "tocsr") else np.asarray(Y, np.float64)
        mx, my = np.asarray(X.mean(0)).ravel(), np.asarray(Y.mean(0)).ravel()
        XtY = X.T @ Y
        XtY = XtY.toarray() if hasattr(XtY, "toarray") else np.asarray(XtY)
        return XtY - n * np.outer(mx, my)

    G, C, V = gram(acts_a, acts_a), gram(acts_a, acts_b), gram(acts_b, acts_b)
    lam = ridge * max(float(np.mean(np.diag(G))), 1e-12)
    M = np.linalg.solve(G + lam * np.eye(len(G)), C)
    resid = np.trace(V) - 2.0 * np.sum(M * C) + np.sum(M * (G @ M))
    return M, float(1.0 - resid / np.trace(V)) if np.trace(V) > 0 else float("nan")


def decoder_yardstick(W_dec_a: np.ndarray, W_dec_b: np.ndarray, M: np.ndarray | None, *,
                      neurons_alive_a: np.ndarray | None = None, neurons_alive_b: np.ndarray | None = None,
                      map_r2: float | None = None, threshold: float = THRESHOLD, seed: int = 0, unmapped: bool = True,
                      **kwargs) -> dict:
    """The decoder-cosine yardstick of one pair of dictionaries, with its neuron baseline and chance level.

    ``W_dec_a [n_a, d_a]``, ``W_dec_b [n_b, d_b]``: the two decoders; ``M [d_a, d_b]``: the map from
    A's neuron basis to B's (:func:`neuron_basis_map`; None when both dictionaries read the same
    activations, e.g. two SAE seeds on one LM, where rows compare as they are). Returns
    ``{"threshold", "features", "neurons", "random", "features_unmapped", "map_r2", "how"}``, each
    figure block a :func:`decoder_cosine_share` dict (``share_above``, ``median_cos``, ``n``):
    ``features``: A's rows (mapped) matched one to one with B's; ``neurons``: A's neurons as
    directions (rows of M) against B's alive neurons (the basis vectors), the figure the features beat
    or not; ``random``: A's rows against a Gaussian decoder of B's shape (seeded), the chance level;
    ``features_unmapped``: the rows compared in their own bases (meaningful only without a map; with
    one, a second chance level; ``unmapped=False`` skips it).
    """
    if threshold is None or not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    W_a = np.asarray(W_dec_a, np.float64)
    W_b = np.asarray(W_dec_b, np.float64)
    d_b = W_b.shape[1]
    if M is not None and M.shape != (W_a.shape[1], d_b):
        raise ValueError(f"M must be [d_a, d_b] = [{W_a.shape[1]}, {d_b}], got {M.shape}")
    mapped = W_a if M is None else W_a @ M
    rand = np.random.default_rng(seed).standard_normal(W_b.shape)
    out = {"threshold": float(threshold),
           "features": decoder_cosine_share(mapped, W_b, threshold, **kwargs),
           "random": decoder_cosine_share(mapped, rand, threshold, **kwargs)}
    if M is not None:
        alive_a = np.ones(len(M), bool) if neurons_alive_a is None else np.asarray(neurons_alive_a, bool)
        alive_b = np.ones(d_b, bool) if neurons_alive_b is None else np.asarray(neurons_alive_b, bool)
        out["neurons"] = decoder_cosine_share(M * alive_a[:, None], np.diag(alive_b.astype(np.float64)), threshold,
                                              **kwargs)
        if unmapped and W_a.shape[1] == d_b:
            out["features_unmapped"] = decoder_cosine_share(W_a, W_b, threshold, **kwargs)
    out["map_r2"] = map_r2
    out["how"] = (f"one-to-one (Hungarian) assignment of decoder rows by cosine; share of A's features whose match "
                  f"has cosine > {threshold:g}, median of the matched cosines (unmatched as -1)"
                  + ("; A's rows first mapped into B's neuron basis by the least-squares map between the two LMs' "
                     "neuron activations (neurons: A's neurons mapped the same way, against B's basis vectors)"
                     if M is not None else "; both dictionaries in the same basis")
                  + "; random: against a Gaussian decoder of B's shape")
    return out
