"""Logit effects of feature directions, their correlations and attribution vectors.

A feature's logit effect is the direct effect of its decoder direction on the next-token logits
(decoder direction -> MLP output weights -> final layer norm -> unembedding): ``[n_features,
vocab]``. Two matched features act alike when their effects correlate over the vocabulary; the
attribution view weighs each activation by the effect on the token that actually comes next.
The cached stage ``pipeline.get_logit_effects`` stores the matrices these functions compute (the
whole matrix up to ``DENSE_LIMIT`` entries, each row's top-k by magnitude past it).

The final layer norm's mean-centring is applied to the direction and its gain per dimension; its
1/sigma is a positive scalar per position, which no correlation can see, so it is left out.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .correlation import TopK, max_correlation, paired_correlation

#: largest ``[n, vocab]`` matrix of logit effects kept whole (float32: 256 MiB); larger ones keep top-k rows
DENSE_LIMIT = 1 << 26


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
        c = sp.csr_matrix(acts)
        # float64 values on the input's own index arrays (shared, not copied: 8 instead of 12 bytes an entry)
        m = sp.csr_matrix((c.data.astype(np.float64), c.indices, c.indptr), shape=c.shape, copy=False)
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



def top_of(L, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` entries of largest magnitude of each row of ``L [n, vocab]``: int32 ``index [n, k]``
    (largest first; ties by lower token id) and float32 ``value [n, k]``."""
    L = _as2d(L, "L")
    k = min(int(k), L.shape[1])
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    cand = np.argpartition(-np.abs(L), k - 1, axis=1)[:, :k]
    mag = np.abs(np.take_along_axis(L, cand, 1))
    order = np.lexsort((cand, -mag), axis=1)
    idx = np.take_along_axis(cand, order, 1)
    return idx.astype(np.int32), np.take_along_axis(L, idx, 1).astype(np.float32)


def top_effects(W_dec, W_out, W_U, ln_scale=None, *, k: int = 256, rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_of` of :func:`logit_effects` without the whole ``[n, vocab]`` matrix: ``rows``
    directions at a time (same arguments as :func:`logit_effects`)."""
    W_dec = _as2d(W_dec, "W_dec")
    parts = [top_of(logit_effects(W_dec[r0 : r0 + rows], W_out, W_U, ln_scale), k)
             for r0 in range(0, W_dec.shape[0], rows)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
