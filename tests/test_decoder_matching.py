"""The decoder-cosine yardstick: 1 for a permuted copy, near 0 for an unrelated dictionary."""

import numpy as np
import pytest

from splitkit.analyses.decoder_matching import decoder_cosine_share, matched_decoder_cosine


def _dict(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_permuted_copy_matches_fully_dense_and_sparse():
    W = _dict(300, 64, 0)
    perm = np.random.default_rng(1).permutation(300)
    W_b = W[perm] * 3.0  # scale must not matter
    for dense_pairs in (1 << 24, 10):  # the full matrix, then the top-k graph
        assign, cos = matched_decoder_cosine(W, W_b, dense_pairs=dense_pairs)
        assert np.array_equal(perm[assign], np.arange(300))
        assert np.allclose(cos, 1.0)
        assert decoder_cosine_share(W, W_b, dense_pairs=dense_pairs)["share_above"] == 1.0


def test_unrelated_dictionary_shares_nothing():
    s = decoder_cosine_share(_dict(300, 64, 2), _dict(300, 64, 3))
    assert s["share_above"] == 0.0 and s["median_cos"] < 0.5


def test_half_shared_and_dead_rows():
    W = _dict(200, 64, 4)
    W_b = np.concatenate([W[:100] + 0.05 * _dict(100, 64, 5), _dict(100, 64, 6)])
    W[150] = 0  # a dead feature: left out of the share's denominator
    s = decoder_cosine_share(W, W_b)
    assert s["n"] == 199 and abs(s["share_above"] - 100 / 199) < 1e-12
    assign, cos = matched_decoder_cosine(W, W_b)
    assert assign[150] == -1 and np.isnan(cos[150])


def test_permuted_noisy_copy_matches_fully_and_random_dictionaries_do_not():
    W = _dict(256, 64, 7)
    perm = np.random.default_rng(8).permutation(256)
    W_b = W[perm] + 0.02 * _dict(256, 64, 9)  # noise cosine ~0.02 * 8 / 8: matched cosines stay ~0.9998
    for dense_pairs in (1 << 24, 10):
        assign, cos = matched_decoder_cosine(W, W_b, dense_pairs=dense_pairs)
        assert np.array_equal(perm[assign], np.arange(256)) and cos.min() > 0.99
        assert decoder_cosine_share(W, W_b, dense_pairs=dense_pairs)["share_above"] == 1.0
    # two Gaussian decoders, n = 256, d = 64: a pair's cosine has sd 1/8, so a cosine above 0.7 is a
    # 5.6-sigma event (P < 1e-8 per pair, < 1e-3 over all 65,536 pairs): the share is 0, and the
    # one-to-one median sits near the expected best of a few hundred draws (~0.3), far below 0.7
    s = decoder_cosine_share(W, _dict(256, 64, 10))
    assert s["share_above"] == 0.0 and 0.15 < s["median_cos"] < 0.45


def test_two_by_two_by_hand():
    # cos(a_i, b_j) = [[0.8, 0.6], [0.6, -0.8]]: the best match of a_0 is b_0 (0.8), but one to one the
    # total 0.6 + 0.6 = 1.2 beats 0.8 - 0.8 = 0, so each a is matched at cosine 0.6 and none clears 0.7
    A = np.eye(2)
    B = np.array([[0.8, 0.6], [0.6, -0.8]])
    for dense_pairs in (1 << 24, 1):
        assign, cos = matched_decoder_cosine(A, B, dense_pairs=dense_pairs, k=2)
        assert assign.tolist() == [1, 0] and np.allclose(cos, [0.6, 0.6])
    s = decoder_cosine_share(A, B)
    assert s["share_above"] == 0.0 and abs(s["median_cos"] - 0.6) < 1e-12
    assert decoder_cosine_share(A, B, threshold=0.5)["share_above"] == 1.0
    # more A rows than B rows: one is left unassigned and counts as below the threshold
    assign, cos = matched_decoder_cosine(np.array([[1.0, 0], [0, 1.0], [0.6, 0.8]]), np.eye(2))
    assert sorted(assign.tolist()) == [-1, 0, 1]
    assert decoder_cosine_share(np.array([[1.0, 0], [0, 1.0], [0.6, 0.8]]), np.eye(2))["share_above"] == 2 / 3


def test_across_neuron_bases_the_least_squares_map_recovers_shared_features():
    """Two 'LMs' whose neurons are a rotation (or a permutation) of each other, the same 128 features."""
    import scipy.sparse as sp

    from splitkit.analyses.decoder_matching import decoder_yardstick, neuron_basis_map

    rng = np.random.default_rng(11)
    D = rng.standard_normal((128, 32))
    F = (rng.random((8000, 128)) < 0.05) * rng.random((8000, 128))  # [tokens, features]
    for kind in ("rotation", "permutation"):
        Q = np.linalg.qr(rng.standard_normal((32, 32)))[0] if kind == "rotation" else np.eye(32)[rng.permutation(32)]
        M, r2 = neuron_basis_map(sp.csr_matrix(F @ D), F @ D @ Q)
        assert r2 > 0.999
        y = decoder_yardstick(D, D @ Q, M, map_r2=r2)
        assert y["features"]["share_above"] == 1.0 and y["random"]["share_above"] == 0.0
        # neurons match one to one only when the bases differ by a permutation
        assert y["neurons"]["share_above"] == (1.0 if kind == "permutation" else 0.0)
        if kind == "rotation":
            assert y["features_unmapped"]["share_above"] < 0.1
    with pytest.raises(ValueError, match="same tokens"):
        neuron_basis_map(F[:10] @ D, F[:11] @ D)
