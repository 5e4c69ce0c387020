"""The L0 controller: lambda steered until a dictionary's mean L0 reaches its target, resumable bit for bit."""

import json

import pytest
import torch

from splitkit.config import ConfigError, get_preset
from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, train_family

from test_trainer import PARAMS, planted

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOL = 0.10  # the mean L0 over the frozen end of the run is within 10% of the target


def _run(recipe, target, steps=300, out_dir=None):
    X, _ = planted(n_true=256, d=64, n=32768, mean_active=8.0, seed=0)
    saes = [SparseAutoencoder(SAEConfig(d_in=64, n_features=n, seed=1)) for n in (128, 256)]
    cfg = TrainerConfig(recipe=recipe, n_steps=steps, l1_coeff=3e-3, lr=3e-3, batch_size=512, target_l0=target,
                        resample_n_inputs=4096, log_every=1)
    return train_family(saes, TensorSource(X, 512, seed=0), cfg, out_dir=out_dir, progress=False), cfg


@pytest.mark.parametrize("recipe", ["l1_decnorm", "paper"])
def test_controller_reaches_two_targets(recipe, tmp_path):
    final = {}
    for target in (4.0, 12.0):
        res, cfg = _run(recipe, target, out_dir=tmp_path / f"t{target:g}")
        for name, m in res["saes"].items():
            lam, l0 = m["log"]["lambda"], m["log"]["l0"]
            rec = m["l0_control"]
            frozen = rec["active_steps"][1]
            assert 0 < frozen < cfg.n_steps
            tail = l0[frozen:]  # the steps trained at the frozen lambda
            mean_tail = sum(tail) / len(tail)
            assert abs(mean_tail - target) <= TOL * target, (recipe, target, name, mean_tail)
            assert abs(rec["l0_ema"] - target) <= TOL * target
            # lambda moved away from its start, then stayed put over the frozen end
            assert len(set(lam[frozen + 1:])) == 1 and abs(lam[-1] / cfg.l1_coeff - 1) > 0.2
            assert rec["final_lambda"] == pytest.approx(lam[-1], rel=1e-12)
            saved = json.loads((tmp_path / f"t{target:g}" / "final" / name / "l0_control.json").read_text())
            assert saved["final_lambda"] == rec["final_lambda"] and saved["target_l0"] == target
            final[target, name] = rec["final_lambda"]
    for name in ("sae_128", "sae_256"):
        assert final[4.0, name] > 1.3 * final[12.0, name]  # sparser target, larger lambda
    assert final[4.0, "sae_128"] != final[4.0, "sae_256"]  # each member its own lambda


def test_resume_with_the_controller_is_bitwise_identical(tmp_path):
    X, _ = planted(n=4096, seed=7)

    def make():
        return [SparseAutoencoder(SAEConfig(d_in=64, n_features=n, seed=11)) for n in (96, 160)]

    cfg = TrainerConfig(recipe="l1_decnorm", n_steps=40, l1_coeff=3e-3, lr=3e-3, batch_size=256, log_every=1,
                        checkpoint_every=20, target_l0=5.0, l0_gain=0.05)
    straight = make()
    res_a = train_family(straight, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "a", progress=False)
    first = make()
    trainer = FamilyTrainer(first, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b")
    for _ in range(20):
        trainer.train_step()  # "crash" after the checkpoint at step 20, with the controller mid-way
    assert trainer.members[0].l0ctl.log_scale != 0.0
    resumed = make()
    res_b = train_family(resumed, TensorSource(X, 256, seed=3), cfg, out_dir=tmp_path / "b", progress=False)
    for a, b in zip(straight, resumed):
        for p in PARAMS:
            assert torch.equal(getattr(a, p), getattr(b, p)), p
    for name in res_a["saes"]:
        assert res_a["saes"][name]["log"] == res_b["saes"][name]["log"]  # lambda and L0 of every step
        assert res_a["saes"][name]["l0_control"] == res_b["saes"][name]["l0_control"]
        assert len(set(res_a["saes"][name]["log"]["lambda"])) > 10


def test_without_a_target_nothing_changes():
    X, _ = planted(n=2048, seed=8)
    cfg = TrainerConfig(recipe="l1_decnorm", n_steps=12, l1_coeff=3e-3, lr=3e-3, batch_size=256, log_every=1)
    res = train_family([SparseAutoencoder(SAEConfig(d_in=64, n_features=64))], TensorSource(X, 256), cfg,
                       progress=False)
    m = res["saes"]["sae_64"]
    assert "l0_control" not in m and "lambda" not in m["log"]


def test_target_l0_is_validated_and_leaves_the_default_keys_alone():
    cfg = get_preset("default")
    assert cfg.dict.target_l0 is None and "target_l0" not in cfg.dict.key_dict()
    assert cfg.with_overrides(dict={"target_l0": 16.0}).dict.key_dict()["target_l0"] == 16.0
    for bad in ({"target_l0": 0.0}, {"target_l0": -3.0}, {"recipe": "topk", "target_l0": 16.0}):
        with pytest.raises(ConfigError, match="target_l0"):
            cfg.with_overrides(dict=bad)
    with pytest.raises(ValueError, match="target_l0"):
        TrainerConfig(recipe="topk", target_l0=8.0)
    assert TrainerConfig.from_dict(TrainerConfig(target_l0=8.0).to_dict()).target_l0 == 8.0
