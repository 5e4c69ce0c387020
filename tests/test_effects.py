"""Logit effects kept whole or as top-k rows, and the cached ``effects`` stage."""

import numpy as np
import pytest

from splitkit import effects as E


def test_top_of_keeps_the_largest_magnitudes_in_order():
    L = np.array([[0.1, -3.0, 2.0, 0.5], [1.0, 1.0, -1.0, 0.0]], np.float32)
    idx, val = E.top_of(L, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]  # ties by lower token id
    np.testing.assert_array_equal(val, [[-3.0, 2.0], [1.0, 1.0]])


def test_top_effects_equals_top_of_the_whole_matrix():
    rng = np.random.default_rng(3)
    W_dec, W_out, W_U = rng.normal(size=(37, 6)), rng.normal(size=(6, 5)), rng.normal(size=(5, 50))
    g = rng.uniform(0.5, 2.0, 5)
    whole = E.logit_effects(W_dec, W_out, W_U, g)
    idx, val = E.top_effects(W_dec, W_out, W_U, g, k=7, rows=8)  # several row blocks
    want_idx, want_val = E.top_of(whole, 7)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)
    assert (np.abs(val[:, :-1]) >= np.abs(val[:, 1:])).all()


@pytest.mark.heavy
def test_effects_stage_equals_the_direct_path(smoke_cfg, monkeypatch):
    from splitkit import pipeline as P

    n = smoke_cfg.dict.sizes[0]
    fe = P.get_logit_effects(smoke_cfg, 0, n, progress=False)
    model = P.get_lm(smoke_cfg, 0, progress=False).model()
    path = {k: v.numpy() for k, v in model.direct_path().items()}
    W_dec = P.get_family(smoke_cfg, 0, progress=False).sae(n).W_dec.detach().numpy()
    want = E.logit_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"])
    np.testing.assert_array_equal(fe.matrix(), want)
    neurons = P.get_logit_effects(smoke_cfg, 0, None, progress=False).matrix()
    np.testing.assert_array_equal(neurons, E.logit_effects(np.eye(smoke_cfg.model.d_mlp), path["W_out"],
                                                           path["W_U"], path["ln_scale"]))
    assert P.get_logit_effects(smoke_cfg, 0, n, progress=False).key == fe.key  # cached: same artifact
    # past the size limit only top-k rows are kept, and they are the whole matrix's top-k
    monkeypatch.setattr(E, "DENSE_LIMIT", 10)
    small = P.get_logit_effects(smoke_cfg, 0, n, progress=False, k=5)
    with pytest.raises(P.PipelineError, match="top-5"):
        small.matrix()
    idx, val = small.top()
    want_idx, want_val = E.top_of(want, 5)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)
