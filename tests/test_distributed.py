"""splitkit.distributed: a family trained over two processes (gloo on CPU, loopback only) against one process."""

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from splitkit.distributed import DataParallelReducer, deal_sizes, train_family_distributed
from studies.dictionaries import main
from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, sae_step, train_family

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
ROOT = Path(__file__).resolve().parents[1]
D, SIZES, BATCH = 32, (64, 96), 256
# Mode "sizes": resampling, snapshots and checkpoints all happen, and the first attempt is cut off
# at step 17, so the second one resumes from the step-10 checkpoints of both processes.
SIZES_CFG = TrainerConfig(n_steps=30, batch_size=BATCH, lr=3e-3, l1_coeff=3e-3, resample_steps=(12,), dead_window=4,
                          resample_n_inputs=2048, checkpoint_every=10, snapshot_steps=(15, 30), log_every=5)
# Mode "data": fp32 GEMMs (the tolerance below is an fp32 one); cut off at step 13, resumed from 10.
DATA_CFG = TrainerConfig(n_steps=20, batch_size=BATCH, lr=1e-3, l1_coeff=3e-3, resample_steps=(8,), dead_window=4,
                         resample_n_inputs=2048, checkpoint_every=5, log_every=5, matmul_dtype="float32")
STOP_AT = {"sizes": 17, "data": 13}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _data(n=4096, n_true=128, seed=0):
    """Sparse sums of unit directions ``[n, D]``: a few true features active per row."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_true, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    active = torch.rand(n, n_true, generator=g) < 3.0 / n_true
    return (active * (torch.rand(n, n_true, generator=g) + 0.5)) @ dirs


def _family():
    saes = [SparseAutoencoder(SAEConfig(d_in=D, n_features=n, seed=3)) for n in SIZES]
    with torch.no_grad():
        for s in saes:
            s.b_enc[::8] = -100.0  # features that never fire, so the paper recipe's resampling has work to do
    return saes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stop(Exception):
    """A crash between two checkpoints."""


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own sockets on the loopback interface too
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    tmp = Path(tmp)
    try:
        X = _data()
        for mode, cfg in (("sizes", SIZES_CFG), ("data", DATA_CFG)):
            out = tmp / mode
            step_once = FamilyTrainer.train_step

            def stopping(self, write=None, _stop=STOP_AT[mode], _step=step_once):
                if self.step == _stop:
                    raise _Stop
                return _step(self, write)

            FamilyTrainer.train_step = stopping
            try:
                train_family_distributed(_family(), TensorSource(X, BATCH, seed=5), cfg, out_dir=out,
                                         progress=False, mode=mode)
                raise AssertionError("the first attempt was meant to stop early")
            except _Stop:
                pass
            finally:
                FamilyTrainer.train_step = step_once
            first = []  # the step the second attempt starts from: a resume, not a fresh start

            def recording(self, write=None, _step=step_once):
                if not first:
                    first.append(self.step)
                return _step(self, write)

            FamilyTrainer.train_step = recording
            saes = _family()
            try:
                res = train_family_distributed(saes, TensorSource(X, BATCH, seed=5), cfg, out_dir=out,
                                               progress=False, mode=mode)
            finally:
                FamilyTrainer.train_step = step_once
            res["resumed_from"] = first[0]
            save_file({f"{s.n_features}.{p}": getattr(s, p).detach().contiguous() for s in saes for p in PARAMS},
                      str(tmp / f"{mode}_rank{rank}.safetensors"))
            (tmp / f"{mode}_rank{rank}.json").write_text(json.dumps(res))
        # One reduced step on its own: the averaged gradients must be the whole batch's.
        sae = _family()[1]
        red = DataParallelReducer()
        st = red.reduce(sae, sae_step(sae, red.shard(TensorSource(X, BATCH, seed=5).get_batch(0)),
                                      recipe="paper", l1_coeff=3e-3, mm_dtype=torch.float32))
        save_file({**{p: getattr(sae, p).grad.contiguous() for p in PARAMS}, "fire_counts": st.fire_counts,
                   "terms": torch.stack([st.loss, st.mse, st.l1, st.aux])}, str(tmp / f"grads_rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
    # Everything is written and the group is gone. Leave without interpreter finalisation: with torch
    # 2.13's gloo, about one exit in ten here ended in "terminate called without an active exception"
    # (SIGABRT, no Python frame) after destroy_process_group had returned on both ranks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both modes, each with an interrupted first attempt, run once by two gloo processes."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    return tmp


def _weights(path):
    return load_file(str(path))


def test_deal_sizes_balances_and_covers_every_dictionary():
    sizes = [512 * 2 ** i for i in range(9)]  # the paper's 512 .. 131072
    shares = deal_sizes(sizes, 4)
    assert sorted(i for s in shares for i in s) == list(range(9))
    loads = sorted(sum(sizes[i] for i in s) for s in shares)
    assert loads == [32256, 32768, 65536, 131072]  # the largest alone; no process above it
    assert deal_sizes(sizes, 4) == shares and deal_sizes([64, 96], 2) == [[1], [0]]
    assert deal_sizes([64], 3) == [[0], [], []]
    with pytest.raises(ValueError, match="world"):
        deal_sizes([64], 0)


def test_sizes_mode_is_bitwise_equal_to_one_process(two_ranks, tmp_path):
    saes = _family()
    ref = train_family(saes, TensorSource(_data(), BATCH, seed=5), SIZES_CFG, out_dir=tmp_path, progress=False)
    out = two_ranks / "sizes"
    for rank in (0, 1):
        # gather=True: every process ends with the whole trained family, like train_family leaves it
        w = _weights(two_ranks / f"sizes_rank{rank}.safetensors")
        for s in saes:
            for p in PARAMS:
                assert torch.equal(w[f"{s.n_features}.{p}"], getattr(s, p)), (rank, s.n_features, p)
        res = json.loads((two_ranks / f"sizes_rank{rank}.json").read_text())
        assert res["saes"] == ref["saes"]  # logs, resampling records, dead counts
        assert (res["step"], res["tokens"], res["matmul_dtype"]) == (ref["step"], ref["tokens"], ref["matmul_dtype"])
        assert res["distributed"] == {"mode": "sizes", "world_size": 2, "rank_of": {"sae_64": 1, "sae_96": 0}}
        assert res["resumed_from"] == 10  # each process resumed from its own step-10 checkpoint
    assert any(r["n_resampled"] for s in ref["saes"].values() for r in s["resamples"])  # resampling did happen
    # The files: same layout and bytes of weights and firing counts as one process writes.
    for sub in ("final", "snapshots/step_15", "snapshots/step_30"):
        for n in SIZES:
            for f in ("sae_weights.safetensors", "density.safetensors"):
                got, want = _weights(out / sub / f"sae_{n}" / f), _weights(tmp_path / sub / f"sae_{n}" / f)
                assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), (sub, n, f)
    log = json.loads((out / "train_log.json").read_text())
    assert log["saes"] == ref["saes"] and log["tokens"] == ref["tokens"]
    assert json.loads((out / "snapshots" / "step_15" / "snapshot.json").read_text())["step"] == 15
    # Each process resumed from its own checkpoint folder.
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["sae_64", "sae_96"]
    for part in ("sae_64", "sae_96"):
        assert json.loads((out / "parts" / part / "checkpoint.json").read_text())["step"] == 30


def test_data_mode_matches_one_process_and_ranks_agree(two_ranks):
    init = _family()
    saes = _family()
    ref = train_family(saes, TensorSource(_data(), BATCH, seed=5), DATA_CFG, progress=False)
    w0 = _weights(two_ranks / "data_rank0.safetensors")
    w1 = _weights(two_ranks / "data_rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the processes never drift apart
    for s, s0 in zip(saes, init):
        for p in PARAMS:
            got, want = w0[f"{s.n_features}.{p}"], getattr(s, p).detach()
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            assert p == "b_enc" or (want - getattr(s0, p)).abs().max() > 1e-2  # training moved far beyond atol
    res = json.loads((two_ranks / "data_rank0.json").read_text())
    assert res["distributed"] == {"mode": "data", "world_size": 2} and res["tokens"] == ref["tokens"]
    # both processes resumed from the step-10 checkpoint that process 0 wrote
    assert [json.loads((two_ranks / f"data_rank{r}.json").read_text())["resumed_from"] for r in (0, 1)] == [10, 10]
    for name, r in ref["saes"].items():
        got = res["saes"][name]
        assert got["log"]["step"] == r["log"]["step"] and got["tokens_seen"] == r["tokens_seen"]
        # the logged loss terms are the whole batch's means, not one process's
        for key in ("loss", "mse", "l1", "l0"):
            assert got["log"][key] == pytest.approx(r["log"][key], rel=1e-4), (name, key)
        assert [x["step"] for x in got["resamples"]] == [x["step"] for x in r["resamples"]] == [8]
    # process 0 wrote the files (and both resumed from its step-10 checkpoint)
    out = two_ranks / "data"
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 20
    for n in SIZES:
        final = SparseAutoencoder.load(out / "final" / f"sae_{n}")
        assert all(torch.equal(getattr(final, p), w0[f"{n}.{p}"]) for p in PARAMS)
    assert json.loads((out / "train_log.json").read_text())["distributed"]["mode"] == "data"


def test_reduced_gradients_are_the_whole_batch_gradients(two_ranks):
    sae = _family()[1]
    st = sae_step(sae, TensorSource(_data(), BATCH, seed=5).get_batch(0), recipe="paper", l1_coeff=3e-3,
                  mm_dtype=torch.float32)
    for rank in (0, 1):
        got = _weights(two_ranks / f"grads_rank{rank}.safetensors")
        for p in PARAMS:
            torch.testing.assert_close(got[p], getattr(sae, p).grad, rtol=1e-4, atol=1e-8)
        assert torch.equal(got["fire_counts"], st.fire_counts)
        torch.testing.assert_close(got["terms"], torch.stack([st.loss, st.mse, st.l1, st.aux]), rtol=1e-5, atol=0)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    for argv, needle in ((["--sizes", "64,x"], "--sizes"), (["--timeout-min", "0"], "--timeout-min"),
                         (["--backend", "nccl"], "--device cuda")):
        with pytest.raises(SystemExit) as e:
            main(["--preset", "smoke", "--cache", str(tmp_path), "--quiet", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not list(tmp_path.iterdir())  # nothing was built


@pytest.mark.heavy
def test_torchrun_cli_builds_the_cached_family(smoke_cfg, monkeypatch):
    from splitkit import pipeline as P
    from splitkit import train as T
    from splitkit.activations import StoreSource

    cfg = smoke_cfg.with_overrides(dict={"sizes": (48, 80)})  # a family no other test trains
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "studies.dictionaries", "--preset", "smoke", "--seed", "0", "--sizes", "48,80", "--mode", "sizes",
           "--cache", cfg.cache_dir, "--quiet", "--no-report"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    def no_training(*args, **kwargs):
        raise AssertionError("get_family retrained a family that torchrun had built")

    monkeypatch.setattr(T, "train_family", no_training)
    fam = P.get_family(cfg, 0, progress=False)
    assert str(fam.folder) in run.stdout
    assert fam.train_summary["distributed"]["world_size"] == 2
    assert not (fam.folder / "parts").exists() and not list(fam.folder.glob("checkpoint*"))
    monkeypatch.undo()
    # ... and it is, bit for bit, the family that one process trains on the same store
    store = P.get_acts(cfg, 0, progress=False)
    tcfg = P.trainer_config(cfg)
    saes = [SparseAutoencoder(SAEConfig(d_in=store.d, n_features=n, seed=cfg.dict.seed)) for n in (48, 80)]
    ref = train_family(saes, StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed), tcfg, progress=False)
    for s in saes:
        got = fam.sae(s.n_features)
        assert all(torch.equal(getattr(got, p), getattr(s, p)) for p in PARAMS), s.n_features
    # the logs too; a loss logged on a dense step is a float32 sum over the batch, whose last bits
    # depend on the thread count (torchrun's processes run one thread each), so those to 1e-6
    want = json.loads(json.dumps(ref["saes"]))
    for name, rec in fam.train_summary["saes"].items():
        assert {k: v for k, v in rec.items() if k != "log"} == {k: v for k, v in want[name].items() if k != "log"}
        assert rec["log"].keys() == want[name]["log"].keys()
        for key, vals in rec["log"].items():
            assert vals == pytest.approx(want[name]["log"][key], rel=1e-6, abs=1e-12), (name, key)
