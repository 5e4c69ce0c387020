"""A resume checkpoint cut short is set aside and training restarts, to the same weights."""

import numpy as np
import torch

from splitkit.config import LMTrainConfig, ModelConfig
from splitkit.lm import train_lm

TINY = ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_ctx=8)


def _train(tmp, stop=None):
    tokens = (np.arange(4000) % 40).astype(np.uint16)
    cfg = LMTrainConfig(n_tokens=8 * 8 * 20, batch_size=8, lr=1e-2, checkpoint_every=5, dtype="float32")
    return train_lm(TINY, cfg, 40, tokens, 2, tmp, progress=False, stop_after_steps=stop)


def test_truncated_lm_checkpoint_restarts_to_identical_weights(tmp_path, capsys):
    full, _ = _train(tmp_path / "full")
    _train(tmp_path / "cut", stop=7)
    ck = tmp_path / "cut" / "checkpoint.safetensors"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 3])
    again, meta = _train(tmp_path / "cut")
    err = capsys.readouterr().err
    assert "resume checkpoint unreadable" in err and "restarts from step 0" in err
    assert (tmp_path / "cut" / "checkpoint.safetensors.unreadable").exists()
    assert meta["step"] == meta["n_steps"]
    for (k, v1), v2 in zip(full.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_truncated_family_checkpoint_restarts_to_identical_weights(tmp_path, capsys):
    from splitkit.sae import SAEConfig, SparseAutoencoder
    from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, train_family
    from splitkit.train.member import PARAMS

    g = torch.Generator().manual_seed(0)
    X = torch.relu(torch.randn(2048, 32, generator=g))
    cfg = TrainerConfig(n_steps=20, l1_coeff=3e-3, lr=3e-3, batch_size=256, resample_steps=(8,), dead_window=4,
                        resample_n_inputs=512, log_every=5, checkpoint_every=10)

    def make():
        return [SparseAutoencoder(SAEConfig(d_in=32, n_features=n, seed=4)) for n in (48, 64)]

    straight = make()
    train_family(straight, TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "a", progress=False)
    trainer = FamilyTrainer(make(), TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "b")
    for _ in range(12):
        trainer.train_step()  # a crash after the checkpoint at step 10 ...
    ck = next((tmp_path / "b").glob("checkpoint_step*")) / "sae_64" / "optimizer.safetensors"
    ck.write_bytes(ck.read_bytes()[:50])  # ... that cut one of its files short
    again = make()
    train_family(again, TensorSource(X, 256, seed=1), cfg, out_dir=tmp_path / "b", progress=False)
    assert "resume checkpoint unreadable" in capsys.readouterr().err
    assert list((tmp_path / "b").glob("*.unreadable"))
    for a, b in zip(straight, again):
        for p in PARAMS:
            assert torch.equal(getattr(a, p), getattr(b, p)), p
