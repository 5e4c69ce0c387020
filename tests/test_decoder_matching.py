"""The decoder-cosine yardstick: 1 for a permuted copy, near 0 for an unrelated dictionary."""

import numpy as np

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
