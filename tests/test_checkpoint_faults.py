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
