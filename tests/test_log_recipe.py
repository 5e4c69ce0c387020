"""Tests for the ``l1_log`` recipe: the log penalty's hand-written gradient, the merge step, resume."""

import json

import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, sae_step, train_family
from splitkit.train.member import Member
from splitkit.train.merge import merge_step
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
