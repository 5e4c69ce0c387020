"""The logit-effect and attribution views of a match: how alike two matched units' effects on the
next token are (raw and centred effects; attributions over the tokens they fire on)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ... import effects


def centred_effects(L: np.ndarray) -> np.ndarray:
    """Logit effects ``L [n, vocab]`` minus the mean effect vector over all ``n`` units of that basis.

    The component every unit of a basis shares (e.g. a direction the MLP output always pushes the
    logits along) makes any two units' raw effects correlate; this removes it before correlating.
    """
    L = np.asarray(L, np.float64)
    return L - L.mean(0, keepdims=True)


def _pair_logit_corr(LA, LB, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Row correlations of ``LA[ia[m]]`` with ``LB[ib[m]]`` (NaN where an index is -1): ``[m]``."""
    out = np.full(len(ia), np.nan)
    ok = (ia >= 0) & (ib >= 0)
    if ok.any():
        out[ok] = effects.rowwise_corr(LA[ia[ok]], LB[ib[ok]])
    return out


def _attr_corr_dense(XA, XB, LA, LB, nxt, ia, ib, chunk: int = 32768) -> np.ndarray:
    """Attribution correlation of pairs (``ia[m]``, ``ib[m]``) for activations ``[n_tokens, n]`` of few
    units (neurons; dense, or CSR densified a chunk at a time), summed over token chunks so no ``[n_tokens, m]`` float64 matrix is formed."""
    ia, ib = np.asarray(ia), np.asarray(ib)
    out = np.full(len(ia), np.nan)
    ok = np.flatnonzero((ia >= 0) & (ib >= 0))
    if not ok.size:
        return out
    a, b = ia[ok], ib[ok]
    s = {k: np.zeros(ok.size) for k in ("x", "y", "xx", "yy", "xy")}
    n = 0
    for t0 in range(0, len(nxt), chunk):
        t1 = min(len(nxt), t0 + chunk)
        nx = nxt[t0:t1]
        xa, xb = XA[t0:t1], XB[t0:t1]
        xa = xa.toarray() if sp.issparse(xa) else xa  # CSR neurons: one chunk dense at a time
        xb = xb.toarray() if sp.issparse(xb) else xb
        x = np.asarray(xa[:, a], np.float64) * np.asarray(LA, np.float64)[a][:, nx].T  # [c, m]
        y = np.asarray(xb[:, b], np.float64) * np.asarray(LB, np.float64)[b][:, nx].T
        s["x"] += x.sum(0); s["y"] += y.sum(0)
        s["xx"] += (x * x).sum(0); s["yy"] += (y * y).sum(0); s["xy"] += (x * y).sum(0)
        n += t1 - t0
    cov = s["xy"] - s["x"] * s["y"] / n
    vx = s["xx"] - s["x"] ** 2 / n
    vy = s["yy"] - s["y"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    r[(vx <= 0) | (vy <= 0)] = np.nan
    out[ok] = np.clip(r, -1, 1)
    return out


def _rows_of(X, rows: np.ndarray):
    """Rows ``rows`` of ``X [n_tokens, n]``: a view when they are the prefix ``0 .. len(rows) - 1`` of a
    CSR matrix (no copy of its entries), else a copy as ``X[rows]``."""
    rows = np.asarray(rows)
    m = rows.size
    if sp.issparse(X) and X.format == "csr" and (m == 0 or (rows[0] == 0 and rows[-1] == m - 1 and m <= X.shape[0]
                                            and (m < 2 or bool(np.all(np.diff(rows) == 1))))):
        p = X.indptr[m]
        return sp.csr_matrix((X.data[:p], X.indices[:p], X.indptr[: m + 1]), shape=(m, X.shape[1]), copy=False)
    return X[rows]


def _scaled_rows(X, w: np.ndarray):
    """Rows of ``X [n_tokens, n]`` (sparse or dense) times ``w [n_tokens]``."""
    import scipy.sparse as sp

    if sp.issparse(X):
        return sp.diags(np.asarray(w, np.float64)) @ sp.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, np.float64) * np.asarray(w, np.float64)[:, None]
