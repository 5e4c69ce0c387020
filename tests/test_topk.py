"""The topk recipe keeps its latents alive (issue 21, item 4): AuxK as Gao et al. 2024 define it and
Adam moments zeroed when a latent goes dead, on planted data with a known dictionary."""

import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import TensorSource, TrainerConfig, get_recipe, train_family
from splitkit.train.member import Member

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

D_IN, N_TRUE, N_LATENTS, K = 64, 1024, 1024, 8


def planted(n_tokens: int, seed: int, dict_seed: int = 0) -> torch.Tensor:
    """x = sum of ~K of N_TRUE fixed unit directions (power-law frequencies, magnitudes U(0.5, 1.5))."""
    D = torch.randn(N_TRUE, D_IN, generator=torch.Generator().manual_seed(dict_seed))
    D /= D.norm(dim=1, keepdim=True)
    p = (torch.arange(N_TRUE) + 1.0) ** -0.5
    p = p / p.sum() * K
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(0, n_tokens, 8192):  # [8192, N_TRUE] at a time
        active = torch.rand(8192, N_TRUE, generator=g) < p
        parts.append((active * (torch.rand(8192, N_TRUE, generator=g) + 0.5)) @ D)
    return torch.cat(parts)[:n_tokens]


def dead_share_after_training(aux_coeff: float) -> tuple[float, int]:
    """Train 1,024 latents (k 8) for 200 steps of 512 tokens (dead window 10 steps = 5,120 tokens);
    return the share of latents that fire on none of 32,768 fresh tokens and the trainer's dead count."""
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_features=N_LATENTS, architecture="topk", k=K))
    cfg = TrainerConfig(recipe="topk", n_steps=200, batch_size=512, lr=1e-3, dead_window=10, aux_coeff=aux_coeff)
    res = train_family([sae], TensorSource(planted(32768, seed=0), 512, seed=0), cfg, progress=False)
    with torch.no_grad():
        fired = (sae.encode(planted(32768, seed=1)) > 0).any(0)
    return 1.0 - fired.float().mean().item(), res["saes"][f"sae_{N_LATENTS}"]["dead"]


def test_auxk_keeps_latents_alive_on_planted_data():
    dead, dead_in_training = dead_share_after_training(1.0 / 32.0)
    assert dead < 0.05, dead
    assert dead_in_training < 0.05 * N_LATENTS, dead_in_training
    # The same run without AuxK: the data and schedule do kill latents (so the figure above can fail).
    dead_without, _ = dead_share_after_training(0.0)
    assert dead_without > 0.10, dead_without


def test_latents_that_go_dead_get_fresh_adam_moments():
    d, n = 8, 16
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, architecture="topk", k=2))
    cfg = TrainerConfig(recipe="topk", n_steps=40, batch_size=32, dead_window=5)
    m = Member(sae, "sae_16", cfg, torch.device("cpu"))
    for p in m.params.values():  # Adam state as after a few steps: every moment non-zero
        p.grad = torch.ones_like(p)
    m.opt.step()
    recipe = get_recipe("topk")
    # 3 just went dead (window reached this step), 4 has been dead for a while, the rest fired recently.
    m.steps_since_fired[:] = torch.tensor([0, 1, 4, 5, 9] + [2] * (n - 5))
    before = {p: {k: v.clone() for k, v in m.opt.state[t].items()} for p, t in m.params.items()}
    recipe.before_step(m, None, 10, cfg)
    st = m.opt.state
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(st[sae.W_enc][key][:, 3]) == 0
        assert torch.count_nonzero(st[sae.W_dec][key][3]) == 0
        assert st[sae.b_enc][key][3] == 0
        others = [i for i in range(n) if i != 3]
        assert torch.equal(st[sae.W_enc][key][:, others], before["W_enc"][key][:, others])
        assert torch.equal(st[sae.W_dec][key][others], before["W_dec"][key][others])
        assert torch.equal(st[sae.b_dec][key], before["b_dec"][key])
    # Without AuxK there is nothing to hand the latent to, and its moments are left alone.
    m.steps_since_fired[2] = 5
    recipe.before_step(m, None, 11, TrainerConfig(recipe="topk", n_steps=40, batch_size=32, dead_window=5,
                                                  aux_coeff=0.0))
    assert torch.count_nonzero(st[sae.W_dec]["exp_avg"][2]) == d


def test_topk_takes_k_aux_32_unless_the_config_names_one(monkeypatch):
    from splitkit.train import recipes

    seen = []
    monkeypatch.setattr(recipes, "sae_step", lambda *a, **kw: seen.append(kw["aux_k"]))
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, n_features=64, architecture="topk", k=5))
    recipe = get_recipe("topk")
    x = torch.zeros(4, D_IN)
    for aux_k in (None, 7):
        cfg = TrainerConfig(recipe="topk", n_steps=10, batch_size=4, aux_k=aux_k)
        recipe.step(sae, x, cfg, l1_coeff=0.0, mm_dtype=torch.float32, dead_mask=None, buffers=None)
    assert seen == [32, 7]  # 32 by default (docs/recipes.md: d_in / 2 left half the latents dead)
