"""Dictionary folders that are not what they claim: one-line SAEFormatError naming the file."""

import json

import pytest
import torch

from splitkit.sae import CFG_FILENAME, WEIGHTS_FILENAME, SAEConfig, SAEFormatError, SparseAutoencoder


@pytest.fixture
def saved(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_features=16))
    sae.save(tmp_path / "own")
    sae.to_saelens(tmp_path / "lens")
    return tmp_path


@pytest.mark.parametrize("text, pattern", [("[1, 2]", "expected a JSON object"), ("{not json", "not valid JSON"),
                                           ('"x"', "expected a JSON object")])
def test_cfg_json_not_an_object(saved, text, pattern):
    for sub, loader in (("own", SparseAutoencoder.load), ("lens", SparseAutoencoder.from_saelens)):
        (saved / sub / CFG_FILENAME).write_text(text)
        with pytest.raises(SAEFormatError, match=pattern) as e:
            loader(saved / sub)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("field", ["d_in", "d_sae"])
def test_saelens_config_missing_fields(saved, field):
    p = saved / "lens" / CFG_FILENAME
    raw = json.loads(p.read_text())
    del raw[field]
    p.write_text(json.dumps(raw))
    with pytest.raises(SAEFormatError, match=f"lacks \\['{field}'\\]"):
        SparseAutoencoder.from_saelens(saved / "lens")


def test_weights_of_another_width_under_a_matching_cfg(saved):
    other = SparseAutoencoder(SAEConfig(d_in=8, n_features=32))
    other.save(saved / "wide")
    (saved / "own" / WEIGHTS_FILENAME).write_bytes((saved / "wide" / WEIGHTS_FILENAME).read_bytes())
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \(8, 32\), expected \(8, 16\)"):
        SparseAutoencoder.load(saved / "own")
    with pytest.raises(SAEFormatError, match="another width"):
        SparseAutoencoder.load(saved / "wide", expect_d_in=512)


def test_truncated_weights(saved):
    p = saved / "own" / WEIGHTS_FILENAME
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SAEFormatError, match="unreadable safetensors") as e:
        SparseAutoencoder.load(saved / "own")
    assert "\n" not in str(e.value)


def test_round_trip_still_exact(saved):
    a = SparseAutoencoder.load(saved / "own")
    b = SparseAutoencoder.from_saelens(saved / "lens")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name))
