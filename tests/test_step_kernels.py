"""The step's numba kernels (splitkit.train.kernels) give what the torch ops they replace give."""

import numpy as np
import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import kernels, sae_step

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not installed")]
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _sae(n=200, d=32, seed=1):
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.5 - 0.8)
        sae.W_dec.mul_(torch.rand(n, 1, generator=g) + 0.5)  # non-unit rows: decnorm maths matter
    return sae


def _step(sae, x, recipe, mm_dtype, density_max, chunk_elems, use_kernels, monkeypatch):
    with monkeypatch.context() as mp:
        if not use_kernels:
            mp.setattr(kernels, "usable", lambda *t: False)
        for p in PARAMS:
            getattr(sae, p).grad = None
        st = sae_step(sae, x, recipe=recipe, l1_coeff=0.02, mm_dtype=mm_dtype, sparse_density_max=density_max,
                      chunk_elems=chunk_elems)
    return st, {p: getattr(sae, p).grad.clone() for p in PARAMS}


@pytest.mark.parametrize("recipe", ["paper", "l1_decnorm", "l1_log"])
@pytest.mark.parametrize("mm_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("chunked", [False, True])
def test_kernels_match_torch_ops(recipe, mm_dtype, path, chunked, monkeypatch):
    sae = _sae()
    x = torch.randn(150, 32, generator=torch.Generator().manual_seed(2)) * 2
    args = (recipe, mm_dtype, 0.0 if path == "dense" else 1.0, 200 * 40 if chunked else 1 << 26)
    st_k, g_k = _step(sae, x, *args, True, monkeypatch)
    st_t, g_t = _step(sae, x, *args, False, monkeypatch)
    assert st_k.sparse == st_t.sparse == (path == "sparse")
    assert torch.equal(st_k.fire_counts, st_t.fire_counts)  # the same active pairs
    assert 0 < int(st_k.fire_counts.sum()) < 150 * 200
    torch.testing.assert_close(st_k.loss, st_t.loss, rtol=1e-6, atol=0)
    for p in PARAMS:  # only the order of fp32 sums differs
        rel = ((g_k[p] - g_t[p]).norm() / g_t[p].norm()).item()
        assert rel < 1e-5, (p, rel)


def test_dense_kernels_are_bitwise_torch_bf16():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(130, 700, generator=g).to(torch.bfloat16)
    pre[0, :5] = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.0])
    bias = (torch.randn(700, generator=g) * 0.3).to(torch.bfloat16)
    f_ref = pre.clone().add_(bias).relu_()
    f, counts, f_sum = pre.clone(), torch.zeros(700), torch.zeros(700)
    kernels.dense_relu_(f, bias.float(), counts, f_sum, block=64)
    assert torch.equal(f, f_ref)
    assert torch.equal(counts, (f_ref > 0).float().sum(0))
    torch.testing.assert_close(f_sum, f_ref.float().sum(0), rtol=1e-6, atol=1e-5)
    G = torch.randn(130, 700, generator=g).to(torch.bfloat16)
    c = (torch.rand(700, generator=g) * 0.01).to(torch.bfloat16)
    G_ref = (G.clone().add_(c)).mul_(f_ref > 0)
    db = torch.zeros(700)
    kernels.dense_grad_mask_(G, f, c.float(), db, block=64)
    assert torch.equal(G, G_ref)  # the same bf16 rounding of G + c
    torch.testing.assert_close(db, G_ref.float().sum(0), rtol=1e-6, atol=1e-5)


def test_sparse_kernels_on_a_hand_made_case():
    # pre (fp32) and bias: active iff z > -b and z + b > 0.
    z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -0.1]])
    b = torch.tensor([-0.5, 1.0, 0.2])
    counts = torch.zeros(2, dtype=torch.long)
    kernels.active_pairs_chunk(z, b, -b, counts, 0)
    assert counts.tolist() == [2, 2]  # row 0: cols 0 (0.5), 2 (0.7); row 1: cols 1 (4.0), 2 (0.1)
    crow = torch.tensor([0, 2, 4])
    cols, vals, rows = torch.empty(4, dtype=torch.long), torch.empty(4), torch.empty(4, dtype=torch.long)
    kernels.fill_pairs_chunk(z, b, -b, crow, 0, cols, vals, rows, 10)
    assert cols.tolist() == [0, 2, 1, 2]
    assert rows.tolist() == [10, 10, 11, 11]
    torch.testing.assert_close(vals, torch.tensor([0.5, 0.7, 4.0, 0.1]))
    ccol, perm = kernels.csc_order(cols, 3)
    assert ccol.tolist() == [0, 1, 2, 4]
    assert perm.tolist() == np.argsort(cols.numpy(), kind="stable").tolist()
