"""Tests for the matryoshka recipe: the nested step's gradient, planted coarse-to-fine structure,
prefix dictionaries on disk, resume, and the recipe's name in the configs and command lines."""


import pytest
import torch

from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, train_family
from splitkit.train.nested import block_ends, nested_step, prefix_dictionary

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def nested_reference(sae, x, prefixes, lam):
    """The stated loss with autograd: the sum over prefixes of each prefix's MSE, plus l1_decnorm's penalty."""
    f = sae.encode(x)
    ends = block_ends(sae.n_features, prefixes)
    mses = [(f[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).mean() for m in ends]
    return sum(mses) + lam * (f * sae.W_dec.norm(dim=1)).sum(1).mean(), mses[-1]


def _random_sae(n=96, d=24, seed=1):
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.5)
        sae.W_dec.mul_(torch.rand(n, 1, generator=g) + 0.5)  # non-unit rows exercise decnorm maths
    return sae


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("prefixes", [(8, 24, 60), (8, 24, 60, 96), ()])
def test_nested_step_matches_autograd(path, chunked, prefixes):
    sae = _random_sae()
    x = torch.randn(80, 24, generator=torch.Generator().manual_seed(2)) * 2
    st = nested_step(sae, x, prefixes=prefixes, recipe="matryoshka", l1_coeff=0.02,
                     sparse_density_max=0.0 if path == "dense" else 1.0, chunk_elems=96 * 24 if chunked else 1 << 26)
    assert st.sparse == (path == "sparse")
    manual = {p: getattr(sae, p).grad.clone() for p in PARAMS}
    for p in PARAMS:
        getattr(sae, p).grad = None
    loss, mse_full = nested_reference(sae, x, prefixes, 0.02)
    loss.backward()
    torch.testing.assert_close(st.loss, loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(st.mse, mse_full.detach(), rtol=1e-5, atol=0)
    for p in PARAMS:
        ref = getattr(sae, p).grad
        rel = ((manual[p] - ref).norm() / ref.norm()).item()
        assert rel < 1e-4, (p, rel)
    assert torch.equal(st.fire_counts, (sae.encode(x) > 0).sum(0))


def test_one_prefix_is_the_l1_decnorm_step():
    """With the whole dictionary as the only prefix the nested loss is l1_decnorm's: same gradients."""
    from splitkit.train import sae_step

    x = torch.randn(80, 24, generator=torch.Generator().manual_seed(4)) * 2
    grads = []
    for fn in (lambda s: nested_step(s, x, prefixes=(96,), recipe="matryoshka", l1_coeff=0.02, sparse_density_max=1.0),
               lambda s: sae_step(s, x, recipe="l1_decnorm", l1_coeff=0.02, sparse_density_max=1.0)):
        sae = _random_sae()
        fn(sae)
        grads.append({p: getattr(sae, p).grad.clone() for p in PARAMS})
    for p in PARAMS:
        torch.testing.assert_close(grads[0][p], grads[1][p], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ planted coarse-to-fine structure
def hierarchy(n=16384, d=32, n_coarse=8, n_child=4, p=0.15, seed=0):
    """Coarse directions C (magnitudes U(1, 2)) each refined, when on, by one of its children (U(0.3, 0.6)
    along a random unit direction): the coarse ones carry most of the variance."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(n_coarse, d, generator=g)
    C /= C.norm(dim=1, keepdim=True)
    R = torch.randn(n_coarse, n_child, d, generator=g)
    R /= R.norm(dim=2, keepdim=True)
    on = torch.rand(n, n_coarse, generator=g) < p
    a = (torch.rand(n, n_coarse, generator=g) + 1.0) * on
    child = torch.randint(n_child, (n, n_coarse), generator=g)
    b = (torch.rand(n, n_coarse, generator=g) * 0.3 + 0.3) * on
    return a @ C + torch.einsum("nc,ncd->nd", b, R[torch.arange(n_coarse), child]), C


def _best_cos(sae, C, m):
    W = sae.W_dec.detach()[:m]
    return (C @ (W / W.norm(dim=1, keepdim=True)).t()).max(1).values  # [n_coarse]


def test_first_prefix_recovers_the_coarse_directions():
    X, C = hierarchy()
    saes = {}
    for recipe in ("matryoshka", "l1_decnorm"):
        sae = SparseAutoencoder(SAEConfig(d_in=32, n_features=64, seed=0))
        cfg = TrainerConfig(recipe=recipe, n_steps=600, l1_coeff=2e-3, lr=3e-3, batch_size=512,
                            prefixes=(8, 64) if recipe == "matryoshka" else ())
        train_family([sae], TensorSource(X, 512, seed=0), cfg, progress=False)
        saes[recipe] = sae
    # Matryoshka: every coarse direction has one of the first 8 features.
    assert _best_cos(saes["matryoshka"], C, 8).min() > 0.9
    # l1_decnorm learns them too, somewhere in the dictionary, but its first 8 features are arbitrary.
    assert _best_cos(saes["l1_decnorm"], C, 64).min() > 0.9
    assert (_best_cos(saes["l1_decnorm"], C, 8) > 0.9).sum() <= 4


# ------------------------------------------------------------------ prefixes on disk, resume
def _fvu(sae, X):
    return ((sae(X) - X).pow(2).sum() / (X - X.mean(0)).pow(2).sum()).item()


def test_prefix_dictionaries_are_saved_and_reconstruct_on_their_own(tmp_path):
    X, _ = hierarchy(n=8192, seed=1)
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_features=64, seed=0))
    cfg = TrainerConfig(recipe="matryoshka", n_steps=200, l1_coeff=2e-3, lr=3e-3, batch_size=512, prefixes=(8, 24, 64),
                        snapshot_steps=(100,))
    train_family([sae], TensorSource(X, 512, seed=0), cfg, out_dir=tmp_path, progress=False)
    fvus = []
    for m in (8, 24, 64):
        loaded = SparseAutoencoder.load(tmp_path / "final" / f"sae_{m}", expect_d_in=32)
        assert loaded.n_features == m
        ref = prefix_dictionary(sae, m)
        for p in PARAMS:
            assert torch.equal(getattr(loaded, p), getattr(ref, p)), (m, p)
        assert torch.equal(loaded.W_dec, sae.W_dec[:m]) and torch.equal(loaded.b_dec, sae.b_dec)
        assert SparseAutoencoder.load(tmp_path / "snapshots" / "step_100" / f"sae_{m}").n_features == m
        fvus.append(_fvu(loaded, X))
    assert fvus[0] > fvus[1] > fvus[2] and fvus[0] < 0.6  # each prefix reconstructs, better as it grows
    from safetensors.torch import load_file

    full = load_file(str(tmp_path / "final" / "sae_64" / "density.safetensors"))
    small = load_file(str(tmp_path / "final" / "sae_8" / "density.safetensors"))
    assert torch.equal(small["last_window_counts"], full["last_window_counts"][:8])
    assert small["last_window_tokens"] == full["last_window_tokens"]


def test_matryoshka_resume_is_bitwise_identical(tmp_path):
    X, _ = hierarchy(n=4096, seed=2)
    cfg = TrainerConfig(recipe="matryoshka", n_steps=40, l1_coeff=1e-2, lr=1e-2, batch_size=256, prefixes=(8, 24, 64),
                        checkpoint_every=20, log_every=5, sparse_density_max=0.3)

    def make():
        return [SparseAutoencoder(SAEConfig(d_in=32, n_features=64, seed=3))]

    straight = make()
    res_a = train_family(straight, TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "a", progress=False)
    trainer = FamilyTrainer(make(), TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "b")
    for _ in range(20):
        trainer.train_step()  # "crash" after the checkpoint at step 20
    resumed = make()
    res_b = train_family(resumed, TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "b", progress=False)
    for p in PARAMS:
        assert torch.equal(getattr(straight[0], p), getattr(resumed[0], p)), p
    assert res_a["saes"]["sae_64"]["log"] == res_b["saes"]["sae_64"]["log"]
    assert set(res_a["saes"]["sae_64"]["log"]["sparse"]) == {False, True}  # both paths ran
    for m in (8, 24):
        a = SparseAutoencoder.load(tmp_path / "a" / "final" / f"sae_{m}")
        b = SparseAutoencoder.load(tmp_path / "b" / "final" / f"sae_{m}")
        assert all(torch.equal(getattr(a, p), getattr(b, p)) for p in PARAMS)


# ------------------------------------------------------------------ the name everywhere the registry is read
def test_matryoshka_is_a_choice_of_configs_and_command_lines():
    from splitkit.config import DictConfig
    from splitkit.train import recipe_names
    from studies._common import add_dict_args, base_parser, dict_overrides

    assert "matryoshka" in recipe_names()
    assert DictConfig(recipe="matryoshka", sizes=(512, 4096)).recipe == "matryoshka"
    p = base_parser("test")
    add_dict_args(p)
    assert dict_overrides(p.parse_args(["--recipe", "matryoshka"]))["recipe"] == "matryoshka"
    with pytest.raises(ValueError, match="prefixes"):
        TrainerConfig(recipe="matryoshka", prefixes=(64, 8))


def test_pipeline_family_is_one_dictionary_read_as_prefixes(smoke_cfg, monkeypatch):
    """get_family with the matryoshka recipe trains one dictionary of the largest size, and every size
    of the family loads as its prefix."""
    from splitkit import pipeline as P

    cfg = smoke_cfg.with_overrides(dict={"recipe": "matryoshka", "sizes": (32, 64, 128)})
    assert [s.n_features for s in P.new_family(cfg, 16)] == [128]
    assert P.trainer_config(cfg).prefixes == (32, 64, 128)
    assert P.trainer_config(smoke_cfg).prefixes == ()  # other recipes: unchanged
    fam = P.get_family(cfg, 0, progress=False)
    assert list(fam.train_summary["saes"]) == ["sae_128"]
    full = fam.sae(128)
    for m in (32, 64):
        sae = fam.sae(m)
        assert sae.n_features == m
        assert torch.equal(sae.W_enc, full.W_enc[:, :m]) and torch.equal(sae.b_enc, full.b_enc[:m])
        assert torch.equal(sae.W_dec, full.W_dec[:m]) and torch.equal(sae.b_dec, full.b_dec)
    X = torch.from_numpy(P.get_acts(cfg, 0, progress=False).head(4096).astype("float32"))  # training activations
    fvus = [_fvu(fam.sae(m), X) for m in (32, 64, 128)]
    assert fvus[0] > fvus[1] > fvus[2]
    # The recipe's own version is in its families' key (and only theirs).
    from splitkit.train.recipes import MatryoshkaRecipe

    store = P.get_acts(cfg, 0, progress=False)
    key, other = P.family_artifact(cfg, store).key, P.family_artifact(smoke_cfg, store).key
    monkeypatch.setattr(MatryoshkaRecipe, "version", MatryoshkaRecipe.version + 1)
    assert P.family_artifact(cfg, store).key != key and P.family_artifact(smoke_cfg, store).key == other


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run where a GPU is lent)")
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_nested_step_cpu_and_cuda_agree(path):
    x = torch.randn(80, 24, generator=torch.Generator().manual_seed(5)) * 2
    grads = {}
    for dev in ("cpu", "cuda"):
        sae = _random_sae().to(dev)
        nested_step(sae, x.to(dev), prefixes=(8, 24, 60), recipe="matryoshka", l1_coeff=0.02,
                    sparse_density_max=0.0 if path == "dense" else 1.0)
        grads[dev] = {p: getattr(sae, p).grad.detach().cpu() for p in PARAMS}
    for p in PARAMS:
        torch.testing.assert_close(grads["cuda"][p], grads["cpu"][p], rtol=1e-4, atol=1e-5)
