"""Tests for splitkit.sae: config validation, the maths, and every file layout round trip."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from splitkit.sae import SAEConfig, SparseAutoencoder

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _perturbed(cfg: SAEConfig) -> SparseAutoencoder:
    """A dictionary with nonzero biases and non-unit rows, so round trips test every value."""
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(cfg.n_features, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(cfg.d_in, generator=g))
        sae.W_enc.mul_(1.7)
    return sae


def _same(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    return a.cfg == b.cfg and all(torch.equal(getattr(a, p), getattr(b, p)) for p in PARAMS)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(architecture="gated"), "architecture"),
        (dict(architecture="topk"), "k"),
        (dict(architecture="topk", k=0), "k"),
        (dict(architecture="topk", k=65), "k"),
        (dict(k=3), "k"),
        (dict(d_in=0), "d_in"),
        (dict(n_features=1.5), "n_features"),
    ],
)
def test_config_rejects_bad_values_in_one_line(kwargs, words):
    base = dict(d_in=16, n_features=64)
    with pytest.raises(ValueError) as err:
        SAEConfig(**{**base, **kwargs})
    msg = str(err.value)
    assert words in msg and "\n" not in msg


def test_config_dict_round_trip_and_unknown_keys():
    cfg = SAEConfig(d_in=16, n_features=64, architecture="topk", k=4, seed=9)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        SAEConfig.from_dict({**cfg.to_dict(), "colour": "red"})


# ------------------------------------------------------------------ maths
def test_init_unit_decoder_rows_encoder_transpose_and_seeded():
    sae = SparseAutoencoder(SAEConfig(d_in=32, n_features=100, seed=5))
    assert sae.W_enc.shape == (32, 100) and sae.W_dec.shape == (100, 32)
    assert sae.b_enc.shape == (100,) and sae.b_dec.shape == (32,)
    assert all(getattr(sae, p).dtype == torch.float32 for p in PARAMS)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(100), rtol=0, atol=1e-6)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t() * min(1.0, 2 * 32 / 100), rtol=0, atol=0)
    again = SparseAutoencoder(SAEConfig(d_in=32, n_features=100, seed=5))
    other = SparseAutoencoder(SAEConfig(d_in=32, n_features=100, seed=6))
    assert torch.equal(again.W_dec, sae.W_dec) and not torch.equal(other.W_dec, sae.W_dec)
    # Kaiming-uniform before normalising: rows are not axis-aligned, directions are spread out.
    cos = sae.W_dec @ sae.W_dec.t() - torch.eye(100)
    assert cos.abs().max() < 0.8


def test_encode_decode_match_the_papers_formula():
    sae = _perturbed(SAEConfig(d_in=8, n_features=20))
    x = torch.randn(3, 5, 8)  # leading dims are kept
    f = sae.encode(x)
    assert f.shape == (3, 5, 20)
    expected_f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(f, expected_f)
    torch.testing.assert_close(sae.decode(f), f @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(sae(x), sae.decode(f))


def test_topk_keeps_at_most_k_largest_relu():
    sae = _perturbed(SAEConfig(d_in=8, n_features=30, architecture="topk", k=3))
    x = torch.randn(50, 8)
    f = sae.encode(x)
    pre = sae.pre_activations(x)
    assert ((f > 0).sum(1) <= 3).all()
    top = pre.topk(3, dim=1)
    torch.testing.assert_close(f.gather(1, top.indices), top.values.relu())
    assert (f >= 0).all()


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_save_load_round_trip_is_exact(tmp_path, arch):
    cfg = SAEConfig(d_in=12, n_features=40, architecture=arch, k=5 if arch == "topk" else None, seed=3)
    sae = _perturbed(cfg)
    sae.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    raw = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert raw["format_version"] == 1 and raw["n_features"] == 40
    back = SparseAutoencoder.load(tmp_path / "d", expect_d_in=12)
    assert _same(back, sae)


def test_load_with_wrong_width_is_a_one_line_value_error(tmp_path):
    SparseAutoencoder(SAEConfig(d_in=12, n_features=40)).save(tmp_path / "d")
    with pytest.raises(ValueError) as err:
        SparseAutoencoder.load(tmp_path / "d", expect_d_in=512)
    assert "d_in=12" in str(err.value) and "512" in str(err.value) and "\n" not in str(err.value)
    SparseAutoencoder(SAEConfig(d_in=12, n_features=40)).to_saelens(tmp_path / "s")
    with pytest.raises(ValueError, match="expected d_in=13"):
        SparseAutoencoder.from_saelens(tmp_path / "s", expect_d_in=13)


def test_load_rejects_inconsistent_weights(tmp_path):
    SparseAutoencoder(SAEConfig(d_in=12, n_features=40)).save(tmp_path / "d")
    w = load_file(str(tmp_path / "d" / "sae_weights.safetensors"))
    w["W_dec"] = w["W_dec"][:30]
    save_file(w, str(tmp_path / "d" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="W_dec has shape"):
        SparseAutoencoder.load(tmp_path / "d")


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_saelens_layout_round_trip_is_exact(tmp_path, arch):
    cfg = SAEConfig(d_in=12, n_features=40, architecture=arch, k=5 if arch == "topk" else None, seed=7)
    sae = _perturbed(cfg)
    sae.to_saelens(tmp_path / "s")
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert raw["d_in"] == 12 and raw["d_sae"] == 40
    assert raw["architecture"] == ("standard" if arch == "relu" else "topk")
    assert raw["apply_b_dec_to_input"] is True and raw["normalize_activations"] == "none"
    assert raw["dtype"] == "float32" and raw["device"] == "cpu"
    if arch == "topk":
        assert raw["k"] == 5 and raw["rescale_acts_by_decoder_norm"] is False
    w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (12, 40), "b_enc": (40,), "W_dec": (40, 12), "b_dec": (12,)}
    assert _same(SparseAutoencoder.from_saelens(tmp_path / "s"), sae)
    with pytest.raises(ValueError, match="from_saelens"):
        SparseAutoencoder.load(tmp_path / "s")


def test_from_saelens_folds_b_dec_when_not_applied_to_input(tmp_path):
    d, n = 6, 10
    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(d, n, generator=g), "b_enc": torch.randn(n, generator=g),
         "W_dec": torch.randn(n, d, generator=g), "b_dec": torch.randn(d, generator=g)}
    (tmp_path / "s").mkdir()
    save_file(w, str(tmp_path / "s" / "sae_weights.safetensors"))
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(
        {"d_in": d, "d_sae": n, "architecture": "standard", "apply_b_dec_to_input": False, "dtype": "float32"}))
    sae = SparseAutoencoder.from_saelens(tmp_path / "s")
    x = torch.randn(20, d, generator=g)
    saelens_f = torch.relu(x @ w["W_enc"] + w["b_enc"])  # SAELens' encode without b_dec at the input
    torch.testing.assert_close(sae.encode(x), saelens_f, rtol=1e-5, atol=1e-5)
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": n, "architecture": "jumprelu"}))
    with pytest.raises(ValueError, match="jumprelu"):
        SparseAutoencoder.from_saelens(tmp_path / "s")


def test_real_saelens_reads_ours_and_we_read_theirs(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    for cfg in (SAEConfig(d_in=12, n_features=40, seed=1), SAEConfig(d_in=12, n_features=40, architecture="topk", k=4)):
        ours = _perturbed(cfg)
        ours.to_saelens(tmp_path / f"ours_{cfg.architecture}")
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / f"ours_{cfg.architecture}"))
        x = torch.randn(30, 12)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
        theirs.save_model(str(tmp_path / f"theirs_{cfg.architecture}"))
        back = SparseAutoencoder.from_saelens(tmp_path / f"theirs_{cfg.architecture}", expect_d_in=12)
        assert back.cfg.architecture == cfg.architecture and back.cfg.k == cfg.k
        assert all(torch.equal(getattr(back, p), getattr(ours, p)) for p in PARAMS)
