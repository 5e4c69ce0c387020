"""Tests for the ``l1_log`` recipe: the log penalty's hand-written gradient, the merge step, resume."""


import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, sae_step, train_family
from splitkit.train.member import Member
from splitkit.train.merge import distinct_picks, merge_step
from splitkit.train.recipes import get_recipe

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
S = get_recipe("l1_log").penalty_scale

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _random_sae(n=96, d=24, seed=1):
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.5)
        sae.W_dec.mul_((torch.rand(n, 1, generator=g) + 0.5) * 0.1)  # norms ~0.1: u spans phi's bend
    return sae


def log_loss(sae, x, lam, s=S):
    """MSE + lambda/B sum_t sum_i s log(1 + f_ti ||d_i|| / s), with autograd."""
    f = sae.encode(x)
    u = f * sae.W_dec.norm(dim=1)
    return (sae.decode(f) - x).pow(2).mean() + lam * (s * torch.log1p(u / s)).sum(1).mean()


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("chunked", [False, True])
def test_log_penalty_gradient_matches_autograd(path, chunked):
    sae = _random_sae()
    x = torch.randn(80, 24, generator=torch.Generator().manual_seed(2)) * 2
    lam = 0.05
    st = sae_step(sae, x, recipe="l1_log", l1_coeff=lam, sparse_density_max=0.0 if path == "dense" else 1.0,
                  chunk_elems=96 * 24 if chunked else 1 << 26)
    assert st.sparse == (path == "sparse")
    manual = {p: getattr(sae, p).grad.clone() for p in PARAMS}
    for p in PARAMS:
        getattr(sae, p).grad = None
    loss = log_loss(sae, x, lam)
    loss.backward()
    torch.testing.assert_close(st.loss, loss.detach(), rtol=1e-5, atol=0)
    # the penalty matters here: the L1 gradient would be far off (u/s is of order 1)
    u = sae.encode(x) * sae.W_dec.norm(dim=1)
    assert (u[u > 0] / S).median() > 0.3
    for p in PARAMS:
        ref = getattr(sae, p).grad
        rel = ((manual[p] - ref).norm() / ref.norm()).item()
        assert rel < 1e-5, (p, rel)


# ------------------------------------------------------------------ the merge step
def _twin_share(sae, X, corr=0.9, min_count=10):
    """Share of the features firing on >= min_count rows of X with another such feature above corr."""
    f = sae.encode(X).detach()
    ok = (f > 0).sum(0) >= min_count
    C = torch.corrcoef(f[:, ok].t().double())
    C.fill_diagonal_(0.0)
    return (C.nan_to_num(0.0) > corr).any(1).double().mean().item(), int(ok.sum())


def _planted_copies(n=24, d=32, seed=0):
    """A dictionary of n distinct random features, then 1 := copy of 0 and 3, 4 := copies of 2."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(n, d, generator=g) * 0.1)
        sae.W_enc.copy_(torch.randn(d, n, generator=g))
        sae.b_enc.copy_(torch.rand(n, generator=g) * -0.5)
        for j, r in ((1, 0), (3, 2), (4, 2)):
            sae.W_dec[j] = sae.W_dec[r]
            sae.W_enc[:, j] = sae.W_enc[:, r]
            sae.b_enc[j] = sae.b_enc[r]
    return sae


def test_merge_step_merges_planted_copies_and_reinitialises_the_rest():
    sae = _planted_copies()
    X = torch.randn(4 * 256, 32, generator=torch.Generator().manual_seed(5))
    source = TensorSource(X, 256, seed=1)
    m = Member(sae, "sae_24", TrainerConfig(recipe="l1_log", n_steps=100, batch_size=256), torch.device("cpu"))
    W_dec0, W_enc0, b_enc0 = sae.W_dec.detach().clone(), sae.W_enc.detach().clone(), sae.b_enc.detach().clone()
    share0, _ = _twin_share(sae, X)
    assert share0 == pytest.approx(5 / 24)  # features 0-4 have an exact twin
    m.steps_since_fired.fill_(7)
    rec = merge_step(m, source, step=4, seed=0, n_batches=4)
    assert rec["groups"] == 2 and rec["n_resampled"] == 3
    share1, n_ok = _twin_share(sae, X)
    assert share1 == 0.0 and n_ok >= 20
    # the kept member (lowest index of equal counts) carries its copies' output: c_j = 1 for exact copies
    torch.testing.assert_close(sae.W_dec[0].detach(), 2 * W_dec0[0])
    torch.testing.assert_close(sae.W_dec[2].detach(), 3 * W_dec0[2])
    # the copies are re-initialised: input directions at the median live decoder norm, b_enc = 0
    others = [i for i in range(24) if i not in (1, 3, 4)]
    live_norm = sae.W_dec.detach()[others].norm(dim=1).median()
    for j in (1, 3, 4):
        assert sae.b_enc[j].item() == 0.0
        assert sae.W_dec[j].norm().item() == pytest.approx(live_norm.item(), rel=1e-5)
        assert abs(torch.nn.functional.cosine_similarity(sae.W_dec[j], W_dec0[j], dim=0).item()) < 0.9
        assert m.steps_since_fired[j].item() == 0
    # nothing else moved
    keep = torch.tensor([i for i in range(24) if i not in (0, 1, 2, 3, 4)])
    assert torch.equal(sae.W_dec.detach()[keep], W_dec0[keep])
    assert torch.equal(sae.W_enc.detach()[:, keep], W_enc0[:, keep])
    assert torch.equal(sae.b_enc.detach()[keep], b_enc0[keep])
    assert m.steps_since_fired[keep].eq(7).all()


def test_merge_step_sparse_path_merges_as_the_dense_one(monkeypatch):
    """Large dictionaries encode the merge's inputs in row chunks into a sparse matrix (no dense
    [M, n] array): on the planted copies that path makes the same merge as the dense one."""
    from splitkit.train import merge as merge_mod

    X = torch.randn(4 * 256, 32, generator=torch.Generator().manual_seed(5))
    out = {}
    for path in ("dense", "sparse"):
        if path == "sparse":
            monkeypatch.setattr(merge_mod, "DENSE_MAX_ELEMS", 0)
            monkeypatch.setattr(merge_mod, "_CHUNK_ELEMS", 24 * 100)  # 100 rows a chunk: 11 chunks
        sae = _planted_copies()
        m = Member(sae, "sae_24", TrainerConfig(recipe="l1_log", n_steps=100, batch_size=256), torch.device("cpu"))
        rec = merge_step(m, TensorSource(X, 256, seed=1), step=4, seed=0, n_batches=4)
        out[path] = (rec, {p: getattr(sae, p).detach().clone() for p in PARAMS})
    assert out["sparse"][0] == out["dense"][0] and out["dense"][0]["n_resampled"] == 3
    for p in PARAMS:
        torch.testing.assert_close(out["sparse"][1][p], out["dense"][1][p], rtol=1e-5, atol=1e-7)
    # the chunked encoder gives the dense activations exactly, and the error is the dense forward's
    sae = _random_sae()
    Xr = torch.randn(300, 24, generator=torch.Generator().manual_seed(2)) * 2
    f_csr = merge_mod._encode_csr(sae, Xr)
    assert f_csr.shape == (300, 96) and 0 < f_csr.nnz < 300 * 96
    assert torch.equal(torch.from_numpy(f_csr.toarray()), sae.encode(Xr).detach())
    torch.testing.assert_close(merge_mod._decode_sq_err(f_csr, sae, Xr).float(),
                               (sae(Xr) - Xr).pow(2).sum(1).detach(), rtol=1e-5, atol=1e-6)


def test_merge_encoder_bf16_path_takes_the_training_steps_pairs():
    """The sparse path's bf16 encoder (the trainer's precision, on the CPU kernels) gives the
    activations of a bf16 GEMM plus the fp32 bias: within bf16 rounding of the fp32 ones, and the
    same pairs except within that margin of the threshold."""
    from splitkit.train import kernels
    from splitkit.train import merge as merge_mod

    if not kernels.HAVE_NUMBA:
        pytest.skip("numba not installed: the sparse path encodes in fp32")
    sae = _random_sae(n=200, d=24)
    X = torch.randn(700, 24, generator=torch.Generator().manual_seed(3)) * 2
    f = merge_mod._encode_csr(sae, X, torch.bfloat16).toarray()
    ref = sae.encode(X).detach().numpy()
    z = ((X - sae.b_dec).bfloat16() @ sae.W_enc.bfloat16()).float() + sae.b_enc  # the same sum by torch
    exact = torch.relu(z).detach().numpy()
    both = (f > 0) & (exact > 0)
    assert ((f > 0) == (exact > 0)).mean() > 0.999 and both.sum() > 1000
    assert abs(f[both] - exact[both]).max() < 1e-6
    assert ((f > 0) == (ref > 0)).mean() > 0.99  # and close to fp32
    assert abs(f[both] - ref[both]).max() < 0.05 * abs(ref).max()


def _cluster_inputs(M=200, d=16, seed=0):
    """Unit directions of M inputs: the first half near-copies of one direction u, drawn 100x as often."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    V = torch.randn(M, d, generator=g)
    V[: M // 2] = u + 0.01 * V[: M // 2]
    V = torch.nn.functional.normalize(V, dim=1)
    w = torch.ones(M, dtype=torch.float64)
    w[: M // 2] = 100.0
    return V, w, u


def test_distinct_picks_spread_over_inputs_the_paper_rule_piles_on_one():
    V, w, u = _cluster_inputs()
    n_pick = 6
    # the premise: drawn by weight alone, most picks land in the cluster
    plain = torch.multinomial(w, n_pick, replacement=False, generator=torch.Generator().manual_seed(3))
    assert (V[plain] @ u > 0.9).sum() >= 4
    pick = distinct_picks(w, V, torch.empty(0, 16), n_pick, torch.Generator().manual_seed(3), max_cos=0.7)
    assert pick.shape == (n_pick,) and len(set(pick.tolist())) == n_pick
    S = V[pick] @ V[pick].t()
    assert (S - torch.eye(n_pick)).max() <= 0.7
    assert (V[pick] @ u > 0.9).sum() == 1  # one pick may take the cluster's direction
    # a direction the dictionary already has is not picked again
    pick2 = distinct_picks(w, V, u[None], n_pick, torch.Generator().manual_seed(3), max_cos=0.7)
    assert (V[pick2] @ u).max() <= 0.7
    # deterministic in the generator
    assert torch.equal(pick2, distinct_picks(w, V, u[None], n_pick, torch.Generator().manual_seed(3), max_cos=0.7))


def test_distinct_picks_fall_back_to_the_drawn_order_when_inputs_are_all_alike():
    V = torch.nn.functional.normalize(torch.ones(50, 8), dim=1)
    pick = distinct_picks(torch.ones(50, dtype=torch.float64), V, torch.empty(0, 8), 5, torch.Generator().manual_seed(0))
    assert pick.shape == (5,) and len(set(pick.tolist())) == 5
    few = distinct_picks(torch.ones(3, dtype=torch.float64), V[:3], torch.empty(0, 8), 5, torch.Generator().manual_seed(0))
    assert few.shape == (5,)  # more features to place than inputs: drawn with replacement


def test_merge_schedule():
    r = get_recipe("l1_log")
    assert [k for k in range(488) if r.merge_due(k, 488)] == list(range(100, 376, 25))


# ------------------------------------------------------------------ resume
def test_l1_log_resume_is_bitwise_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(type(get_recipe("l1_log")), "merge_every", 10)  # merges at 10, 20, 30 of 40
    X = torch.randn(4096, 32, generator=torch.Generator().manual_seed(7))

    def make():
        sae = SparseAutoencoder(SAEConfig(d_in=32, n_features=64, seed=11))
        with torch.no_grad():
            sae.W_dec[1::2] = sae.W_dec[0::2]  # exact copies stay copies under any penalty: merges must act
        return [sae]

    cfg = TrainerConfig(recipe="l1_log", n_steps=40, batch_size=256, l1_coeff=1e-3, checkpoint_every=20, seed=4)
    straight = make()
    res_a = train_family(straight, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "a", progress=False)
    merges = res_a["saes"]["sae_64"]["resamples"]
    assert [r["step"] for r in merges] == [10, 20, 30] and merges[0]["n_resampled"] >= 16
    trainer = FamilyTrainer(make(), TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b")
    for _ in range(20):
        trainer.train_step()  # "crash" after the checkpoint at step 20, just before a merge
    resumed = make()
    res_b = train_family(resumed, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b", progress=False)
    for p in PARAMS:
        assert torch.equal(getattr(straight[0], p), getattr(resumed[0], p)), p
    assert res_a["saes"]["sae_64"]["log"] == res_b["saes"]["sae_64"]["log"]
    assert res_a["saes"]["sae_64"]["resamples"] == res_b["saes"]["sae_64"]["resamples"]
