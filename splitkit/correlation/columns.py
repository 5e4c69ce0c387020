"""Inputs of the correlation engine: validation, column statistics and the result type ``TopK``.

Activations over ``n_tokens`` tokens come as a ``scipy.sparse`` matrix ``[n_tokens, n]`` (feature
activations; CSR preferred, float32) or a dense ``np.ndarray [n_tokens, n]`` (neurons).
:func:`prepare` validates them and computes each column's mean, standard deviation and firing
count once; every function of the package accepts its result in place of the array.

Zero-variance columns (features that never fire, or constant columns) have no correlation: they
get ``value = NaN`` and ``index = -1``, are never offered as a match, and are counted in
``TopK.dead_a`` / ``TopK.dead_b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .kernels import HAVE_NUMBA

if HAVE_NUMBA:
    from .kernels import _nb_col_stats

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
