"""Correlation sums over token chunks, for analysis sets too large to hold (``CrossMoments``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .columns import DEFAULT_BLOCK_ELEMS
from .engine import _numba_usable
from .kernels import HAVE_NUMBA

if HAVE_NUMBA:
    from .kernels import _nb_cross_sums, _nb_csc_chunk


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

