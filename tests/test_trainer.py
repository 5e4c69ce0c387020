"""Tests for splitkit.train on planted structure: gradients, recovery, resampling, resume, families."""

import json

import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import ActivationSource, FamilyTrainer, TensorSource, TrainerConfig, sae_step, train_family
from splitkit.train.member import Member
from splitkit.train.recipes import geometric_median
from splitkit.train.resample import resample

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def planted(n_true=256, d=64, n=32768, mean_active=4.0, alpha=0.5, seed=0):
    """x = sum of ~mean_active unit directions (power-law frequencies, magnitudes U(0.5, 1.5))."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    p = (torch.arange(n_true) + 1.0) ** -alpha
    p = p / p.sum() * mean_active
    active = torch.rand(n, n_true, generator=g) < p
    mags = torch.rand(n, n_true, generator=g) + 0.5
    return (active * mags) @ D, D


def recovery(sae, D):
    """Mean over true directions of the best cosine with a decoder row."""
    W = sae.W_dec.detach()
    W = W / W.norm(dim=1, keepdim=True)
    return (D @ W.t()).max(1).values.mean().item()


def reference_loss(sae, x, recipe, lam, dead=None, aux_k=None, aux_coeff=1 / 32):
    """The recipes' losses written with autograd on the module's own encode/decode."""
    pre = sae.pre_activations(x)
    f = sae.encode(x)
    x_hat = sae.decode(f)
    mse = (x_hat - x).pow(2).mean()
    if recipe == "paper":
        return mse + lam * f.sum(1).mean()
    if recipe == "l1_decnorm":
        return mse + lam * (f * sae.W_dec.norm(dim=1)).sum(1).mean()
    loss = mse
    if dead is not None and dead.any():
        di = dead.nonzero().squeeze(1)
        kaux = min(aux_k or x.shape[1] // 2, di.numel())
        vals, idx = pre[:, di].topk(kaux, dim=1)
        f_aux = torch.zeros(x.shape[0], di.numel()).scatter(1, idx, vals.relu())
        e = (x - x_hat).detach()
        # Gao et al.'s normalised MSE: divided by the residual's variance over the batch (a constant)
        loss = loss + aux_coeff * (f_aux @ sae.W_dec[di] - e).pow(2).mean() / (e - e.mean(0)).pow(2).mean()
    return loss


def _random_sae(arch, n=96, d=24, seed=1):
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, architecture=arch, k=6 if arch == "topk" else None,
                                      seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.5)
        sae.W_dec.mul_(torch.rand(n, 1, generator=g) + 0.5)  # non-unit rows exercise decnorm maths
    return sae


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("recipe", ["paper", "l1_decnorm", "topk"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("chunked", [False, True])
def test_manual_backward_matches_autograd(recipe, path, chunked):
    arch = "topk" if recipe == "topk" else "relu"
    sae = _random_sae(arch)
    x = torch.randn(80, 24, generator=torch.Generator().manual_seed(2)) * 2
    dead = (torch.arange(96) % 3 == 0) if arch == "topk" else None
    st = sae_step(sae, x, recipe=recipe, l1_coeff=0.02, sparse_density_max=0.0 if path == "dense" else 1.0,
                  chunk_elems=96 * 24 if chunked else 1 << 26, dead_mask=dead, aux_k=5)
    assert st.sparse == (path == "sparse" or arch == "topk")
    manual = {p: getattr(sae, p).grad.clone() for p in PARAMS}
    for p in PARAMS:
        getattr(sae, p).grad = None
    loss = reference_loss(sae, x, recipe, 0.02, dead, aux_k=5)
    loss.backward()
    torch.testing.assert_close(st.loss, loss.detach(), rtol=1e-5, atol=0)
    for p in PARAMS:
        ref = getattr(sae, p).grad
        rel = ((manual[p] - ref).norm() / ref.norm()).item()
        assert rel < 1e-4, (p, rel)
    f = sae.encode(x)
    assert torch.equal(st.fire_counts, (f > 0).sum(0))


def test_bf16_matmuls_stay_close_to_fp32():
    sae = _random_sae("relu")
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(3))
    grads = {}
    for dt in (torch.float32, torch.bfloat16):
        for path in (0.0, 1.0):
            sae_step(sae, x, recipe="paper", l1_coeff=0.01, mm_dtype=dt, sparse_density_max=path)
            grads[(dt, path)] = {p: getattr(sae, p).grad.clone() for p in PARAMS}
    for path in (0.0, 1.0):
        for p in PARAMS:
            ref, low = grads[(torch.float32, path)][p], grads[(torch.bfloat16, path)][p]
            assert ((low - ref).norm() / ref.norm()).item() < 0.05, (path, p)


# ------------------------------------------------------------------ planted truth
@pytest.mark.parametrize("recipe, steps", [("paper", 800), ("topk", 300)])
def test_planted_directions_are_recovered(recipe, steps):
    X, D = planted()
    arch = "topk" if recipe == "topk" else "relu"
    sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=512, architecture=arch, k=4 if arch == "topk" else None))
    cfg = TrainerConfig(recipe=recipe, n_steps=steps, l1_coeff=5e-3, lr=1e-2, batch_size=512, resample_n_inputs=8192)
    res = train_family([sae], TensorSource(X, 512, seed=0), cfg, progress=False)
    assert recovery(sae, D) >= 0.9
    # Unit-norm decoder rows after training (paper and topk).
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(512), rtol=0, atol=1e-5)
    log = res["saes"]["sae_512"]["log"]
    assert log["mse"][-1] < 0.25 * X.pow(2).mean().item()
    assert res["tokens"] == steps * 512
    if recipe == "topk":
        assert max(log["l0"]) <= 4
    else:
        assert log["sparse"][-1] and log["l0"][-1] < 40  # the run ends in the sparse regime


def test_geometric_median_resists_outliers():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(500, 5, generator=g) * 0.1 + torch.tensor([1.0, 2, 3, 4, 5])
    pts[:40] += 100.0  # 8% far outliers drag the mean, not the median
    med = geometric_median(pts)
    assert (med - torch.tensor([1.0, 2, 3, 4, 5])).norm() < 0.05
    assert (pts.mean(0) - torch.tensor([1.0, 2, 3, 4, 5])).norm() > 5


# ------------------------------------------------------------------ resampling
def test_resampling_revives_features_that_never_fire():
    X, _ = planted(n=1024, seed=3)
    X = X + 2.0  # inputs far from the origin: b_dec (geometric median) is clearly nonzero
    src = TensorSource(X, 512, seed=0)  # a tiny source: two batches, fewer than resample_n_inputs
    sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=128, seed=4))
    never = torch.arange(0, 128, 4)  # 32 features made dead by a huge negative bias
    with torch.no_grad():
        sae.b_enc[never] = -1e4
    cfg = TrainerConfig(n_steps=30, resample_steps=(12,), dead_window=10, resample_n_inputs=65536,
                        l1_coeff=1e-3, lr=1e-3, batch_size=512)
    trainer = FamilyTrainer([sae], src, cfg)
    while trainer.step < 12:
        trainer.train_step()
    m = trainer.members[0]
    assert sae.b_dec.norm() > 5  # the case the peers' resampler got wrong
    assert (m.steps_since_fired[never] >= 10).all()
    while trainer.step < cfg.n_steps:
        trainer.train_step()
    (rec,) = m.resamples
    assert rec["step"] == 12 and rec["dead_before"] >= 32 and rec["n_resampled"] == rec["dead_before"]
    assert rec["dead_after"] == 0
    # Every once-dead feature fired on some token in the 18 steps after the resample.
    assert (m.window_counts[never] + m.last_window_counts[never] > 0).all()
    assert (sae.b_enc[never] > -1).all()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128), rtol=0, atol=1e-5)


def test_resample_sets_directions_and_resets_adam_moments():
    X, _ = planted(n=2048, seed=5)
    src = TensorSource(X + 1.0, 256, seed=1)
    sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=64, seed=2))
    cfg = TrainerConfig(n_steps=100, l1_coeff=1e-3, batch_size=256, resample_n_inputs=1024)
    trainer = FamilyTrainer([sae], src, cfg)
    for _ in range(5):
        trainer.train_step()
    m: Member = trainer.members[0]
    dead = torch.tensor([3, 17, 40])
    m.steps_since_fired.zero_()
    m.steps_since_fired[dead] = 1000
    live = torch.ones(64, dtype=torch.bool)
    live[dead] = False
    live_norm = sae.W_enc[:, live].norm(dim=0).mean()
    rec = resample(m, src, 5, cfg, torch.device("cpu"))
    assert rec["n_resampled"] == 3
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(sae.W_enc[:, dead].norm(dim=0), torch.full((3,), 0.2 * live_norm.item()))
    torch.testing.assert_close(sae.W_enc[:, dead].t() / (0.2 * live_norm), sae.W_dec[dead])
    assert (sae.b_enc[dead] == 0).all()
    for pname, p in m.params.items():
        st = m.opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            if pname == "W_enc":
                assert (st[key][:, dead] == 0).all() and (st[key][:, live] != 0).any()
            elif pname in ("W_dec", "b_enc"):
                assert (st[key][dead] == 0).all() and (st[key][live] != 0).any()


# ------------------------------------------------------------------ resume, family, files
def _small_run_cfg(**kw):
    base = dict(n_steps=40, l1_coeff=3e-3, lr=3e-3, batch_size=256, resample_steps=(10, 30), dead_window=5,
                resample_n_inputs=1024, log_every=5, sparse_density_max=0.3)
    return TrainerConfig(**{**base, **kw})


def _weights(sae):
    return {p: getattr(sae, p).detach().clone() for p in PARAMS}


@pytest.mark.parametrize("recipe", ["paper", "topk"])
def test_resume_is_bitwise_identical(tmp_path, recipe):
    X, _ = planted(n=4096, seed=7)
    arch = "topk" if recipe == "topk" else "relu"

    def make():
        return [SparseAutoencoder(SAEConfig(d_in=64, n_features=n, architecture=arch, k=4 if arch == "topk" else None,
                                            seed=11)) for n in (96, 160)]

    cfg = _small_run_cfg(recipe=recipe, checkpoint_every=20)
    straight = make()
    res_a = train_family(straight, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "a", progress=False)

    first = make()
    trainer = FamilyTrainer(first, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b")
    for _ in range(20):
        trainer.train_step()  # "crash" after the checkpoint at step 20
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 20
    resumed = make()  # fresh objects: everything must come from the checkpoint
    res_b = train_family(resumed, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b", progress=False)
    for a, b in zip(straight, resumed):
        for p in PARAMS:
            assert torch.equal(getattr(a, p), getattr(b, p)), p
    for name in res_a["saes"]:
        assert res_a["saes"][name]["log"] == res_b["saes"][name]["log"]
        assert res_a["saes"][name]["resamples"] == res_b["saes"][name]["resamples"]
    assert res_b["tokens"] == 40 * 256
    if recipe == "paper":
        assert [r["step"] for r in res_b["saes"]["sae_96"]["resamples"]] == [10, 30]
    # A finished run resumes to nothing and stays identical.
    again = make()
    train_family(again, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b", progress=False)
    assert all(torch.equal(getattr(a, p), getattr(b, p)) for a, b in zip(again, resumed) for p in PARAMS)


def test_resume_refuses_a_different_config(tmp_path):
    X, _ = planted(n=2048, seed=8)
    cfg = _small_run_cfg(n_steps=10, checkpoint_every=5, resample_steps=(5,))
    train_family([SparseAutoencoder(SAEConfig(d_in=64, n_features=96))], TensorSource(X, 256), cfg,
                 out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="l1_coeff"):
        train_family([SparseAutoencoder(SAEConfig(d_in=64, n_features=96))], TensorSource(X, 256),
                     _small_run_cfg(n_steps=10, checkpoint_every=5, resample_steps=(5,), l1_coeff=1.0),
                     out_dir=tmp_path, progress=False)


def test_family_members_equal_their_solo_runs():
    X, _ = planted(n=4096, seed=9)
    cfg = _small_run_cfg(n_steps=30, resample_steps=(12,))
    sizes = (80, 200)
    family = [SparseAutoencoder(SAEConfig(d_in=64, n_features=n, seed=2)) for n in sizes]
    res = train_family(family, TensorSource(X, 256, seed=5), cfg, progress=False)
    for n, member in zip(sizes, family):
        solo = SparseAutoencoder(SAEConfig(d_in=64, n_features=n, seed=2))
        res_solo = train_family([solo], TensorSource(X, 256, seed=5), cfg, progress=False)
        assert all(torch.equal(getattr(solo, p), getattr(member, p)) for p in PARAMS)
        assert res_solo["saes"][f"sae_{n}"]["log"] == res["saes"][f"sae_{n}"]["log"]


def test_snapshots_final_and_density_files(tmp_path):
    X, _ = planted(n=2048, seed=10)
    cfg = _small_run_cfg(n_steps=20, snapshot_steps=(5, 20), resample_steps=(), dead_window=4)
    saes = [SparseAutoencoder(SAEConfig(d_in=64, n_features=n)) for n in (64, 128)]
    res = train_family(saes, TensorSource(X, 256), cfg, out_dir=tmp_path, progress=False)
    for step in (5, 20):
        for n in (64, 128):
            snap = SparseAutoencoder.load(tmp_path / "snapshots" / f"step_{step}" / f"sae_{n}", expect_d_in=64)
            assert snap.n_features == n
    for sae in saes:
        final = SparseAutoencoder.load(tmp_path / "final" / f"sae_{sae.n_features}")
        assert all(torch.equal(getattr(final, p), getattr(sae, p)) for p in PARAMS)
    from safetensors.torch import load_file

    dens = load_file(str(tmp_path / "final" / "sae_128" / "density.safetensors"))
    assert dens["last_window_tokens"].item() == 4 * 256
    assert dens["last_window_counts"].shape == (128,)
    assert dens["last_window_counts"].sum() > 0 and dens["last_window_counts"].max() <= 4 * 256
    assert json.loads((tmp_path / "train_log.json").read_text())["tokens"] == res["tokens"] == 20 * 256
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_l1_decnorm_recipe_schedules_and_free_decoder():
    X, _ = planted(n=4096, seed=12)
    cfg = TrainerConfig(recipe="l1_decnorm", n_steps=60, l1_coeff=5e-3, lr=3e-3, batch_size=256)
    assert cfg.l1_at(0) == pytest.approx(cfg.l1_coeff / 3)  # warm-up over 5% of 60 steps = 3 steps
    assert cfg.l1_at(1) < cfg.l1_coeff == cfg.l1_at(2) == cfg.l1_at(59)
    assert cfg.lr_at(47) == cfg.lr and cfg.lr_at(54) == pytest.approx(cfg.lr / 2) and cfg.lr_at(60) == 0
    sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=128))
    res = train_family([sae], TensorSource(X, 256), cfg, progress=False)
    log = res["saes"]["sae_128"]["log"]
    assert log["mse"][-1] < 0.5 * X.var(0).sum().item() / 64
    norms = sae.W_dec.norm(dim=1)
    assert (norms - 1).abs().max() > 0.05  # no unit-norm constraint in this recipe
    assert res["saes"]["sae_128"]["resamples"] == []


# ------------------------------------------------------------------ recipes as objects
def test_a_new_recipe_is_one_registered_class():
    """A recipe registered from outside the package trains through the unchanged step and loop: one
    whose penalty doubles lambda must give, bit for bit, the paper recipe at twice the lambda."""
    from splitkit.train import recipes

    @recipes.register
    class DoubledL1(recipes.PaperRecipe):
        name = "test_doubled_l1"

        def penalty(self, W_dec, l1_coeff, batch):
            return recipes.L1Penalty(2 * l1_coeff, batch)

    try:
        assert "test_doubled_l1" in recipes.recipe_names()
        X, _ = planted(n=4096, seed=4)
        run = {}
        for name, lam in (("test_doubled_l1", 2e-3), ("paper", 4e-3)):
            sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=96, seed=3))
            cfg = TrainerConfig(recipe=name, n_steps=30, l1_coeff=lam, lr=3e-3, batch_size=256, resample_steps=(15,),
                                dead_window=5, resample_n_inputs=1024)
            res = train_family([sae], TensorSource(X, 256, seed=2), cfg, progress=False)
            run[name] = (_weights(sae), res["saes"]["sae_96"]["log"]["l1"])
        for p in PARAMS:
            assert torch.equal(run["test_doubled_l1"][0][p], run["paper"][0][p]), p
        assert run["test_doubled_l1"][1] == run["paper"][1]
        with pytest.raises(ValueError, match="taken"):
            recipes.register(DoubledL1)
    finally:
        recipes._REGISTRY.pop("test_doubled_l1", None)
    with pytest.raises(ValueError, match="recipe"):
        TrainerConfig(recipe="test_doubled_l1")


# ------------------------------------------------------------------ sources and config
def test_tensor_source_is_a_deterministic_permutation_per_epoch():
    X = torch.arange(10 * 3, dtype=torch.float32).view(10, 3)
    src = TensorSource(X, 4, seed=1)
    assert isinstance(src, ActivationSource)
    assert (src.d, src.batch_size, src.n_tokens) == (3, 4, 10)
    ep0 = torch.cat([src.get_batch(0), src.get_batch(1)])[:, 0] // 3
    assert len(set(ep0.tolist())) == 8  # no row twice within an epoch
    again = TensorSource(X, 4, seed=1)
    assert torch.equal(again.get_batch(3), src.get_batch(3)) and torch.equal(again.get_batch(0), src.get_batch(0))
    assert not torch.equal(src.get_batch(0), src.get_batch(2))  # epoch 1 is a fresh permutation
    with pytest.raises(ValueError, match="batch_size"):
        TensorSource(X, 11)


def test_trainer_config_validation_and_round_trip():
    cfg = TrainerConfig(n_steps=1000, snapshot_steps=(100, 1000))
    assert TrainerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.resolved_resample_steps == (50, 100, 150, 200) and cfg.resolved_dead_window == 25
    assert TrainerConfig(recipe="topk").resolved_resample_steps == ()
    for kwargs, word in [(dict(recipe="adam"), "recipe"), (dict(matmul_dtype="fp8"), "matmul_dtype"),
                         (dict(snapshot_steps=(0,)), "snapshot_steps"), (dict(n_steps=0), "n_steps"),
                         (dict(resample_steps=(5000,)), "resample_steps")]:
        with pytest.raises(ValueError, match=word) as err:
            TrainerConfig(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown keys \['momentum'\]"):
        TrainerConfig.from_dict({"momentum": 0.9})


def test_train_family_rejects_mismatched_inputs():
    X = torch.randn(512, 16)
    with pytest.raises(ValueError, match="d_in"):
        train_family([SparseAutoencoder(SAEConfig(d_in=8, n_features=32))], TensorSource(X, 64),
                     TrainerConfig(n_steps=2), progress=False)
    with pytest.raises(ValueError, match="topk"):
        train_family([SparseAutoencoder(SAEConfig(d_in=16, n_features=32))], TensorSource(X, 64),
                     TrainerConfig(recipe="topk", n_steps=2), progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        train_family([SparseAutoencoder(SAEConfig(d_in=16, n_features=32))], TensorSource(X, 64),
                     TrainerConfig(n_steps=2, snapshot_steps=(1,)), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run where a GPU is lent)")
@pytest.mark.parametrize("recipe", ["paper", "l1_decnorm", "topk"])
def test_cpu_and_cuda_steps_agree(recipe):
    """The same fp32 training steps on CPU and on CUDA give the same weights to float rounding.

    No resampling here: its draws come from a generator on the training device, and CUDA's stream of
    random numbers differs from the CPU's (a resampled run is deterministic per device, not across)."""
    arch = "topk" if recipe == "topk" else "relu"
    x, _ = planted(n=8192)
    cfg = TrainerConfig(recipe=recipe, n_steps=12, batch_size=1024, l1_coeff=1e-3, k=8 if arch == "topk" else None,
                        matmul_dtype="float32", resample_steps=())
    out = {}
    for dev in ("cpu", "cuda"):
        sae = SparseAutoencoder(SAEConfig(d_in=64, n_features=512, architecture=arch, k=cfg.k, seed=0))
        train_family([sae], TensorSource(x, 1024, seed=0), cfg, device=dev, progress=False)
        out[dev] = {p: getattr(sae, p).detach().cpu() for p in PARAMS}
    for p in PARAMS:
        torch.testing.assert_close(out["cuda"][p], out["cpu"][p], rtol=1e-3, atol=1e-4)
