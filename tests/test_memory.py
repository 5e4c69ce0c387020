"""The analysis' memory cuts change no figure: chunked pair correlations and row views are bit for bit
the arithmetic they replace."""

import numpy as np
import scipy.sparse as sp

from splitkit import correlation as C
from splitkit import effects as E
from splitkit.analyses.universality import _rows_of


def _acts(seed, n_tok=6000, n=60, density=0.06):
    return sp.random(n_tok, n, density=density, format="csr", random_state=seed, dtype=np.float32)


def test_paired_correlation_is_the_same_whatever_the_chunk():
    a, b = _acts(1), _acts(2, n=40)
    rng = np.random.default_rng(0)
    ia, ib = rng.integers(-1, 60, 500), rng.integers(0, 40, 500)
    whole = C.paired_correlation(a, b, ia, ib, chunk_nnz=1 << 40)
    # against the explicit definition, so a chunking that dropped or shifted pairs would show
    da, db = a.toarray().astype(np.float64), b.toarray().astype(np.float64)
    ok = ia >= 0
    want = np.array([np.corrcoef(da[:, i], db[:, j])[0, 1] for i, j in zip(ia[ok], ib[ok])])
    np.testing.assert_allclose(whole[ok], want, atol=1e-12)
    assert np.isnan(whole[~ok]).all()
    for nnz in (1, 700, 5000):  # one pair a chunk, a few pairs, many
        np.testing.assert_array_equal(C.paired_correlation(a, b, ia, ib, chunk_nnz=nnz), whole)


def test_row_prefix_is_a_view_with_the_same_attribution():
    a, b = _acts(3), _acts(4)
    rng = np.random.default_rng(1)
    L_a, L_b = rng.normal(size=(60, 50)).astype(np.float32), rng.normal(size=(60, 50)).astype(np.float32)
    rows = np.arange(a.shape[0] - 1)
    nxt = rng.integers(0, 50, rows.size)
    v = _rows_of(a, rows)
    assert np.shares_memory(v.data, a.data) and (v != a[rows]).nnz == 0
    assert not np.shares_memory(_rows_of(a, rows[1:]).data, a.data)  # not a prefix: a copy
    np.testing.assert_array_equal(_rows_of(a, np.array([5, 9])).toarray(), a[[5, 9]].toarray())
    x = E.attribution_vectors(v, L_a, nxt)
    assert np.shares_memory(x.indices, a.indices) and x.dtype == np.float64
    ref = a[rows].toarray().astype(np.float64) * L_a[:, nxt].T
    np.testing.assert_array_equal(x.toarray(), ref)
    ia = np.arange(60)
    ib = rng.integers(0, 60, 60)
    old = E.attribution_similarity(a[rows], b[rows], L_a, L_b, nxt, ia, ib)
    XA = C.prepare(E.attribution_vectors(v, L_a, nxt))
    XB = C.prepare(E.attribution_vectors(_rows_of(b, rows), L_b, nxt))
    np.testing.assert_array_equal(C.paired_correlation(XA, XB, ia, ib, chunk_nnz=900), old)
