"""Tests of splitkit.correlation and splitkit.effects on planted data: exact references, permutations, duplicates."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from splitkit import correlation as M
from splitkit import effects as E
from splitkit.correlation import engine

SPARSE_ENGINES = ["numba", "scipy", "dense"] if M.HAVE_NUMBA else ["scipy", "dense"]


def sparse_acts(rng, n_tokens, n, lo=3e-3, hi=0.2, dtype=np.float32):
    """Nonnegative sparse activations ``[n_tokens, n]`` with log-uniform densities in [lo, hi]."""
    dens = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    fire = rng.random((n_tokens, n)) < dens
    vals = rng.exponential(1.0, (n_tokens, n)) + 0.05
    return sp.csr_matrix((vals * fire).astype(dtype))


def with_dead(m, zero_cols=(), const_cols=()):
    """Copy of ``m`` with columns set to zero (never fire) or to a nonzero constant."""
    d = m.toarray()
    for c in zero_cols:
        d[:, c] = 0
    for c in const_cols:
        d[:, c] = 0.1  # not exactly representable: its computed variance is rounding noise
    return sp.csr_matrix(d)


def reference(a, b):
    """Dense float64 Pearson matrix via np.corrcoef; NaN for zero-variance columns."""
    a = np.asarray(a.toarray() if sp.issparse(a) else a, np.float64)
    b = np.asarray(b.toarray() if sp.issparse(b) else b, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        C = np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1] :]
    C[(a == a[0]).all(0)] = np.nan
    C[:, (b == b[0]).all(0)] = np.nan
    return C


def check_topk(tk, C, k):
    """TopK values equal the k largest of each row of C (1e-5); indices point at those values."""
    n_a, n_b = C.shape
    assert tk.index.shape == (n_a, k) and tk.value.shape == (n_a, k)
    assert tk.index.dtype == np.int64 and tk.value.dtype == np.float32
    R = np.where(np.isnan(C), -np.inf, C)
    want = -np.sort(-R, axis=1)
    want = np.concatenate([want, np.full((n_a, max(0, k - n_b)), -np.inf)], 1)[:, :k]
    want[~np.isfinite(want)] = np.nan
    np.testing.assert_array_equal(np.isnan(tk.value), np.isnan(want))
    np.testing.assert_allclose(tk.value, want, atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(tk.index < 0, np.isnan(want))
    rows, cols = np.nonzero(tk.index >= 0)
    got = C[rows, tk.index[rows, cols]]
    np.testing.assert_allclose(got, tk.value[rows, cols], atol=1e-5)
    # each row lists distinct partners, best first
    for r in range(n_a):
        live = tk.index[r][tk.index[r] >= 0]
        assert len(set(live.tolist())) == live.size
    assert np.all(np.diff(np.nan_to_num(tk.value, nan=-9), axis=1) <= 1e-7)


@pytest.fixture(scope="module")
def pair_with_dead():
    rng = np.random.default_rng(0)
    a = with_dead(sparse_acts(rng, 600, 23), zero_cols=[2, 9], const_cols=[5])
    b = with_dead(sparse_acts(rng, 600, 31), zero_cols=[0, 17])
    # plant some real correlation so top values are not all noise
    bd = b.toarray()
    bd[:, 3] = a.toarray()[:, 4] * 2.0 + bd[:, 3] * 0.1
    return a, sp.csr_matrix(bd)


@pytest.mark.parametrize("engine", SPARSE_ENGINES)
@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("k", [1, 4, 40])
def test_sparse_topk_equals_corrcoef(pair_with_dead, engine, chunk, k):
    a, b = pair_with_dead
    C = reference(a, b)
    fwd, rev = M.max_correlation_both(a, b, k=k, chunk=chunk, engine=engine)
    check_topk(fwd, C, k)
    check_topk(rev, C.T, k)
    assert fwd.n_dead_a == 3 and fwd.n_dead_b == 2
    np.testing.assert_array_equal(fwd.dead_a, np.isnan(C).all(1))
    assert (fwd.index[fwd.dead_a] == -1).all() and np.isnan(fwd.value[fwd.dead_a]).all()
    # dead B columns are never offered as a match
    assert not np.isin(fwd.index, np.flatnonzero(fwd.dead_b)).any()
    one = M.max_correlation(a, b, k=k, chunk=chunk, engine=engine)
    np.testing.assert_array_equal(one.index, fwd.index)


def test_without_numba_falls_back_to_scipy(pair_with_dead, monkeypatch):
    monkeypatch.setattr(engine, "HAVE_NUMBA", False)
    monkeypatch.setattr(engine, "_NUMBA_OK", None)
    a, b = pair_with_dead
    tk = M.max_correlation(a, b, k=3, chunk=5)
    assert tk.meta["engine"] == "scipy"
    check_topk(tk, reference(a, b), 3)
    with pytest.raises(ValueError, match="numba"):
        M.max_correlation(a, b, engine="numba")


def test_small_chunk_nnz_many_chunks(pair_with_dead):
    a, b = pair_with_dead
    C = reference(a, b)
    check_topk(M.max_correlation(a, b, k=3, chunk_nnz=50), C, 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_inputs_equal_corrcoef(dtype):
    rng = np.random.default_rng(1)
    # neuron-like: dense ReLU activations with a large mean (cancellation in the raw formula)
    x = np.maximum(rng.normal(3.0, 1.0, (2000, 12)), 0) + 50.0
    y = np.maximum(rng.normal(0.0, 1.0, (2000, 9)), 0)
    y[:, 2] = x[:, 1] * 0.5 + y[:, 2]
    y[:, 4] = 0.7  # constant: zero variance
    C = reference(x, y)
    tk = M.max_correlation(x.astype(np.float32), y.astype(np.float32), k=3, chunk=5, dtype=dtype)
    check_topk(tk, C, 3)
    assert tk.n_dead_b == 1 and tk.meta["engine"] == "dense"


def test_mixed_and_float64_inputs(pair_with_dead):
    a, b = pair_with_dead
    C = reference(a, b)
    check_topk(M.max_correlation(a.toarray(), b, k=2), C, 2)  # dense A, sparse B
    check_topk(M.max_correlation(a.astype(np.float64), b.astype(np.float64), k=2), C, 2)
    check_topk(M.max_correlation(sp.csc_matrix(a), sp.coo_matrix(b), k=2), C, 2)
    np.testing.assert_allclose(M.correlation_matrix(a, b), C, atol=1e-9, equal_nan=True)


def test_unsorted_and_duplicate_entries_are_summed():
    rng = np.random.default_rng(2)
    d = sparse_acts(rng, 300, 6).toarray()
    coo = sp.coo_matrix(d)
    # split every entry into two halves stored twice, in shuffled order
    r = np.concatenate([coo.row, coo.row])
    c = np.concatenate([coo.col, coo.col])
    v = np.concatenate([coo.data / 2, coo.data / 2])
    p = rng.permutation(r.size)
    messy = sp.csr_matrix((v[p], (r[p], c[p])), shape=d.shape)
    messy.has_canonical_format = False
    C = reference(d, d)
    check_topk(M.max_correlation(messy, sp.csr_matrix(d), k=2), C, 2)


def noisy_permutation(rng, n_tokens=3000, n=120):
    """A sparse; B's column perm[i] is A's column i with jitter, dropout and spurious firing."""
    a = sparse_acts(rng, n_tokens, n, lo=5e-3, hi=0.1).toarray()
    perm = rng.permutation(n)
    b = np.zeros_like(a)
    jitter = np.exp(rng.normal(0, 0.3, a.shape))
    keep = rng.random(a.shape) > 0.1
    b[:, perm] = a * jitter * keep
    spurious = rng.random(a.shape) < 0.002
    b += spurious * rng.exponential(1.0, a.shape)
    return sp.csr_matrix(a.astype(np.float32)), sp.csr_matrix(b.astype(np.float32)), perm


@pytest.mark.parametrize("assignment", ["dense", "topk", "greedy"])
def test_noisy_permutation_is_recovered(assignment):
    a, b, perm = noisy_permutation(np.random.default_rng(3))
    df = M.match(a, b, k=4, assignment=assignment)
    assert isinstance(df, pd.DataFrame) and len(df) == a.shape[1]
    assert (df["best_b"].to_numpy() == perm).mean() >= 0.95
    assert (df["assign_b"].to_numpy() == perm).mean() >= 0.95
    assert df["mutual"].mean() >= 0.95
    assert df.attrs["assignment"] == assignment
    # the reverse best of the best match points back for mutual rows
    mut = df[df.mutual]
    assert (mut.best_a_of_b == mut.a).all()
    np.testing.assert_allclose(df.density_a, (a.toarray() != 0).mean(0))
    np.testing.assert_allclose(df.density_b, (b.toarray() != 0).mean(0)[df.best_b])


def test_topk_hungarian_equals_dense_hungarian_when_k_suffices():
    rng = np.random.default_rng(4)
    a, b, perm = noisy_permutation(rng, n_tokens=2000, n=60)
    # conflicts: B column perm[i] mixes A features i and i+1 and B column perm[i+1] keeps only
    # half of feature i+1's firing, so A i+1's best match is taken by A i and the one-to-one
    # optimum has to differ from the best matches
    bd = b.toarray()
    ad = a.toarray()
    for i in range(0, 20, 2):
        bd[:, perm[i]] = ad[:, i] + ad[:, i + 1]
        bd[:, perm[i + 1]] = ad[:, i + 1] * (rng.random(ad.shape[0]) < 0.5)
    b = sp.csr_matrix(bd)
    C = reference(a, b)
    dense_b, dense_v = M.assign_dense(C)
    # ranks of the dense optimum's partners within each row and column
    rank_row = (C > C[np.arange(60), dense_b][:, None]).sum(1).max()
    rank_col = (C.T[dense_b] > dense_v[:, None]).sum(1).max()
    k = int(max(rank_row, rank_col)) + 1
    fwd, rev = M.max_correlation_both(a, b, k=k)
    assert len(np.unique(fwd.best)) < 60  # best matches collide ...
    assert (dense_b != fwd.best).sum() >= 5  # ... and the assignment resolves it
    sparse_b, sparse_v = M.assign_topk(fwd, rev)
    np.testing.assert_array_equal(sparse_b, dense_b)
    np.testing.assert_allclose(sparse_v, dense_v, atol=1e-6)
    # and match() agrees across the two assignment methods
    d1 = M.match(a, b, k=k, assignment="dense")
    d2 = M.match(a, b, k=k, assignment="topk")
    np.testing.assert_array_equal(d1.assign_b, d2.assign_b)
    # greedy is a valid one-to-one assignment but not better than the optimum
    g_b, g_v = M.assign_topk(fwd, rev, method="greedy")
    assert len(set(g_b[g_b >= 0].tolist())) == (g_b >= 0).sum()
    assert np.nansum(g_v) <= np.nansum(dense_v) + 1e-5


def test_assign_topk_leaves_unmatchable_rows_unassigned():
    # 3 A columns whose only top-1 edge is the same B column: one can be assigned
    idx = np.array([[0], [0], [0]])
    val = np.array([[0.9], [0.8], [0.7]], np.float32)
    tk = M.TopK(idx, val, np.zeros(3, bool), np.zeros(2, bool), 100)
    b, v = M.assign_topk(tk)
    np.testing.assert_array_equal(b, [0, -1, -1])
    np.testing.assert_allclose(v[0], 0.9, atol=1e-6)
    # a full matching must win over leaving a row out, even through a negative edge, as the
    # dense Hungarian does: A0-B1 + A1-B0 (0.1 - 0.6) rather than A0-B0 and A1 unassigned
    C = np.array([[0.9, 0.1], [-0.6, np.nan]])
    idx = np.array([[0, 1], [0, -1]])
    tk = M.TopK(idx, np.where(idx >= 0, C, np.nan).astype(np.float32), np.zeros(2, bool), np.zeros(2, bool), 9)
    b, v = M.assign_topk(tk)
    np.testing.assert_array_equal(b, [1, 0])
    np.testing.assert_array_equal(M.assign_dense(np.where(np.isnan(C), -2.0, C))[0], [1, 0])


def test_shuffled_baseline_is_chance_level():
    rng = np.random.default_rng(5)
    a, b, perm = noisy_permutation(rng, n_tokens=5000, n=80)
    real = M.max_correlation(a, b, k=1)
    chance = M.shuffled_baseline(a, b, seed=1, k=1)
    assert np.median(real.value[:, 0]) > 0.7
    assert np.median(chance.value[:, 0]) < 0.1
    assert chance.meta["shuffled_seed"] == 1
    again = M.shuffled_baseline(a, b, seed=1, k=1)
    np.testing.assert_array_equal(again.index, chance.index)


def test_duplicate_dictionary_scores_low_one_to_one():
    rng = np.random.default_rng(6)
    n = 50
    a = sparse_acts(rng, 3000, n, lo=0.02, hi=0.1).toarray()
    base = a[:, 0]
    # B: A's feature 0 repeated n times (tiny independent jitter so the copies are not identical)
    b = np.stack([base * np.exp(rng.normal(0, 0.01, base.shape)) for _ in range(n)], 1)
    a, b = sp.csr_matrix(a.astype(np.float32)), sp.csr_matrix(b.astype(np.float32))
    for assignment in ["dense", "topk"]:
        df = M.match(b, a, k=4, assignment=assignment)  # every B copy finds A's feature 0
        s = M.summarize(df)
        assert s["median_corr"] > 0.99  # a best-match score is fooled ...
        assert s["frac_assign_gt_0.5"] <= 1.0 / n + 1e-9  # ... the one-to-one score is not
        assert s["frac_mutual"] <= 1.0 / n + 1e-9
    fwd = M.summarize(M.match(a, b, k=4))
    assert fwd["frac_corr_gt_0.5"] <= 1.0 / n + 1e-9


@pytest.mark.parametrize("engine", SPARSE_ENGINES)
def test_matrix_submatch_equals_a_match_of_the_subsets(pair_with_dead, engine):
    """A matching of column subsets read from the kept matrix is the table a fresh pass gives, bit for bit
    (dead columns, ties from an exact copy and a subset of one column included)."""
    a, b = pair_with_dead
    bd = b.toarray()
    bd[:, 20] = bd[:, 3]  # an exact copy: equal correlations, the lower index wins in both
    b = sp.csr_matrix(bd)
    full, mat = M.match_with_matrix(a, b, k=4, engine=engine)
    pd.testing.assert_frame_equal(full, M.match(a, b, k=4, assignment="dense", engine=engine))
    assert full.attrs == M.match(a, b, k=4, assignment="dense", engine=engine).attrs
    np.testing.assert_allclose(mat.C, reference(a, b), atol=1e-6, equal_nan=True)
    rng = np.random.default_rng(11)
    for ia, ib in [(np.arange(23), np.arange(31)), (np.sort(rng.choice(23, 12, replace=False)), np.array([0, 3, 17, 20])),
                   (np.array([2, 4, 9]), np.sort(rng.choice(31, 19, replace=False))), (np.array([4]), np.array([3, 20]))]:
        got = mat.match(ia, ib, k=4)
        want = M.match(a[:, ia], b[:, ib], k=4, assignment="dense", engine=engine)
        pd.testing.assert_frame_equal(got, want)
        for key in ("k", "assignment", "n_tokens", "n_a", "n_b", "n_dead_a", "n_dead_b"):
            assert got.attrs[key] == want.attrs[key], key
    assert mat.match([4], [3, 20]).best_b.tolist() == [0]  # the copy at 20 ties with 3 and loses


def test_summarize_mask_and_dead_counts(pair_with_dead):
    a, b = pair_with_dead
    df = M.match(a, b, k=2)
    s = M.summarize(df)
    assert s["n"] == 23 and s["n_dead"] == 3 and s["n_live"] == 20
    corr = df["corr"].to_numpy()
    assert s["median_corr"] == pytest.approx(np.nanmedian(corr))
    assert s["frac_corr_gt_0.5"] == pytest.approx((corr[~np.isnan(corr)] > 0.5).mean())
    dense_enough = df.density_a.to_numpy() >= 0.05
    # the constant column fires everywhere yet has no variance: still counted as dead
    assert M.summarize(df, mask=dense_enough)["n_dead"] == 1
    mask = dense_enough & ~df.dead_a.to_numpy()
    sm = M.summarize(df, mask=mask)
    assert sm["n_included"] == mask.sum() and sm["n_dead"] == 0
    assert sm["median_corr"] == pytest.approx(np.median(corr[mask]))
    st = M.summarize(M.max_correlation(a, b, k=1))
    assert st["median_corr"] == pytest.approx(s["median_corr"], abs=1e-6)


def test_paired_correlation_and_attribution():
    rng = np.random.default_rng(7)
    a = with_dead(sparse_acts(rng, 400, 8), zero_cols=[1])
    b = sparse_acts(rng, 400, 5)
    C = reference(a, b)
    ia = np.array([0, 1, 3, 7, -1])
    ib = np.array([4, 2, 0, 3, 1])
    got = M.paired_correlation(a, b, ia, ib)
    want = np.array([C[0, 4], np.nan, C[3, 0], C[7, 3], np.nan])
    np.testing.assert_allclose(got, want, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(M.paired_correlation(a.toarray(), b, ia, ib), want, atol=1e-9, equal_nan=True)
    L_a = rng.normal(size=(8, 11))
    L_b = rng.normal(size=(5, 11))
    nxt = rng.integers(0, 11, 400)
    xa = E.attribution_vectors(a, L_a, nxt)
    explicit = np.array([[a[t, i] * L_a[i, nxt[t]] for i in range(8)] for t in range(400)])
    np.testing.assert_allclose(xa.toarray(), explicit, atol=1e-6)
    np.testing.assert_allclose(E.attribution_vectors(a.toarray(), L_a, nxt), explicit, atol=1e-6)
    sim = E.attribution_similarity(a, b, L_a, L_b, nxt, ia, ib)
    xb = E.attribution_vectors(b, L_b, nxt)
    np.testing.assert_allclose(sim, M.paired_correlation(xa, xb, ia, ib), equal_nan=True)


def test_logit_effects_equal_explicit_composition():
    rng = np.random.default_rng(8)
    n, d_mlp, d_model, vocab = 7, 6, 5, 9
    W_dec = rng.normal(size=(n, d_mlp))
    W_out = rng.normal(size=(d_mlp, d_model))
    W_U = rng.normal(size=(d_model, vocab))
    g = rng.uniform(0.5, 2.0, d_model)
    plain = E.logit_effects(W_dec, W_out, W_U)
    with_ln = E.logit_effects(W_dec, W_out, W_U, ln_scale=g)
    for f in range(n):
        v = np.array([sum(W_dec[f, m] * W_out[m, d] for m in range(d_mlp)) for d in range(d_model)])
        np.testing.assert_allclose(plain[f], v @ W_U, rtol=1e-5, atol=1e-5)
        centred = (v - v.mean()) * g
        want = np.array([sum(centred[d] * W_U[d, t] for d in range(d_model)) for t in range(vocab)])
        np.testing.assert_allclose(with_ln[f], want, rtol=1e-5, atol=1e-5)
    neurons = E.logit_effects(np.eye(d_mlp), W_out, W_U)
    np.testing.assert_allclose(neurons, W_out @ W_U, rtol=1e-5, atol=1e-5)
    assert plain.shape == (n, vocab) and plain.dtype == np.float32


def test_rowwise_corr_and_logit_effect_match():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(6, 40))
    Y = X * 0.5 + rng.normal(size=(6, 40))
    Y[3] = 2.0  # constant row
    r = E.rowwise_corr(X, Y)
    for i in range(6):
        if i == 3:
            assert np.isnan(r[i])
        else:
            assert r[i] == pytest.approx(np.corrcoef(X[i], Y[i])[0, 1], abs=1e-12)
    LA = rng.normal(size=(10, 50))
    LB = np.concatenate([LA[::-1] + 0.3 * rng.normal(size=(10, 50)), rng.normal(size=(4, 50))])
    tk = E.logit_effect_match(LA, LB, k=3)
    check_topk(tk, np.corrcoef(LA, LB)[:10, 10:], 3)
    np.testing.assert_array_equal(tk.index[:, 0], np.arange(10)[::-1])


def test_bad_inputs_raise_value_error(pair_with_dead):
    a, b = pair_with_dead
    with pytest.raises(ValueError, match="same tokens"):
        M.max_correlation(a, b[:-1])
    for k in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            M.max_correlation(a, b, k=k)
    with pytest.raises(ValueError, match="2-D"):
        M.max_correlation(np.zeros(10), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="2-D"):
        M.max_correlation(np.zeros((10, 2, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="engine"):
        M.max_correlation(a, b, engine="gpu")
    with pytest.raises(ValueError, match="sparse inputs"):
        M.max_correlation(a.toarray(), b, engine="scipy")
    with pytest.raises(ValueError, match="non-finite"):
        M.max_correlation(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="assignment"):
        M.match(a, b, assignment="best")
    with pytest.raises(ValueError, match="disagree"):
        E.logit_effects(np.zeros((3, 4)), np.zeros((5, 6)), np.zeros((6, 7)))
    with pytest.raises(ValueError, match="ln_scale"):
        E.logit_effects(np.zeros((3, 4)), np.zeros((4, 6)), np.zeros((6, 7)), ln_scale=np.ones(5))
    with pytest.raises(ValueError, match="mask"):
        M.summarize(M.match(a, b, k=1), mask=np.ones(3, bool))
