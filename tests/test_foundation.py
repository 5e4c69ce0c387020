"""Corpus, tokenizer, transformer, LM training and the activation store."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from splitkit import pipeline as P
from splitkit.activations import ActivationStore, StoreSource, harvest
from splitkit.cache import Cache, CacheError, check_manifest
from splitkit.config import (Config, ConfigError, CorpusConfig, DictConfig, LMTrainConfig, ModelConfig, TokenizerConfig,
                             get_preset, parse_sizes)
from splitkit.corpus import CorpusError, load_documents, split_documents
from splitkit.lm import lm_batch, train_lm
from splitkit.model import Transformer
from splitkit.tokenizer import encode_documents, train_tokenizer

UNICODE_SAMPLES = [
    "plain ascii def f(x): return x",
    "Ünïcödé — “quotes” ‘and’ dashes…",
    "中文字符与日本語のテキスト、한국어",
    "emoji 🧪🔬🤖 and ZWJ 👩‍🔬 family 👨‍👩‍👧",
    "RTL: مرحبا بالعالم שלום עולם",
    "tabs\tand\r\nnewlines\n\n  trailing  ",
    "\x00\x01 control \x7f chars \u200b zero-width",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    docs = load_documents(CorpusConfig(max_docs=40))
    return train_tokenizer((d.text for d in docs), TokenizerConfig(vocab_size=400))


def test_tokenizer_round_trips_arbitrary_unicode(tokenizer):
    rng = np.random.default_rng(0)
    random_strings = ["".join(chr(c) for c in rng.integers(1, 0x2FFFF, size=50) if not 0xD800 <= c < 0xE000)
                      for _ in range(20)]
    for s in UNICODE_SAMPLES + random_strings:
        ids = tokenizer.encode(s).ids
        assert tokenizer.decode(ids) == s


def test_encode_documents_separates_with_eot(tokenizer):
    arr, starts = encode_documents(tokenizer, ["abc def", "xyz"])
    assert arr.dtype == np.uint16
    assert (arr[starts] == tokenizer.token_to_id("<|endoftext|>")).all()
    assert tokenizer.decode(arr[starts[0] + 1 : starts[1]].tolist()) == "abc def"


def test_splits_are_deterministic_and_disjoint():
    cfg = CorpusConfig(max_docs=200)
    a = split_documents(load_documents(cfg), cfg)
    b = split_documents(load_documents(cfg), cfg)
    names = {s: [d.name for d in docs] for s, docs in a.items()}
    assert names == {s: [d.name for d in docs] for s, docs in b.items()}
    sets = [set(v) for v in names.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(s) for s in sets) == 200
    # a document's split does not depend on which other documents exist
    small = split_documents(load_documents(cfg)[:100], cfg)
    for s, docs in small.items():
        assert {d.name for d in docs} <= set(names[s])


def test_bad_corpus_is_a_one_line_error(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_documents(CorpusConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no non-empty text"):
        load_documents(CorpusConfig(path=str(tmp_path / "empty")))
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(CorpusError, match="not a UTF-8 text file"):
        load_documents(CorpusConfig(path=str(tmp_path / "bin.dat")))
    (tmp_path / "x.jsonl").write_text('{"body": "hi"}\n')
    with pytest.raises(CorpusError, match="no 'text' field"):
        load_documents(CorpusConfig(path=str(tmp_path / "x.jsonl")))


def test_user_corpus_formats(tmp_path):
    import pandas as pd

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 20}) for i in range(30)))
    assert len(load_documents(CorpusConfig(path=str(tmp_path / "a.jsonl")))) == 30
    pd.DataFrame({"body": [f"row {i}" for i in range(12)]}).to_parquet(tmp_path / "b.parquet")
    assert len(load_documents(CorpusConfig(path=str(tmp_path / "b.parquet"), text_column="body"))) == 12
    (tmp_path / "big.txt").write_text("\n\n".join(f"paragraph {i} " * 400 for i in range(60)))
    assert len(load_documents(CorpusConfig(path=str(tmp_path / "big.txt")))) > 10


def test_parse_sizes():
    assert parse_sizes("512..4096") == (512, 1024, 2048, 4096)
    assert parse_sizes("512,1024") == (512, 1024)
    for bad in ("", "abc", "512..300", "0", "512..1000", "-4"):
        with pytest.raises(ConfigError):
            parse_sizes(bad)


def test_dict_schedule_reaches_the_trainer_and_round_trips():
    cfg = get_preset("default")
    tc = P.trainer_config(cfg)
    # the default replays the first 2M tokens of the scaling grid's 8M run: warm-up over ~400k tokens
    assert abs(tc.resolved_l1_warmup_frac * tc.n_steps * tc.batch_size - 400_000) < 2 * tc.batch_size
    assert tc.resolved_lr_decay_frac == 0.0
    unset = cfg.with_overrides(dict={"l1_warmup_tokens": None, "lr_decay_frac": None})
    assert P.trainer_config(unset).resolved_lr_decay_frac == 0.2  # the recipe's own schedule
    # unset fields stay out of cache keys; set ones are in them; configs survive JSON
    assert "l1_warmup_tokens" not in unset.dict.key_dict() and "l1_warmup_tokens" in cfg.dict.key_dict()
    for c in (cfg, unset, get_preset("paper")):
        assert Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in ({"lr_decay_frac": 1.5}, {"l1_warmup_tokens": -1}):
        with pytest.raises(ConfigError):
            DictConfig(**bad)


def test_unset_lambda_is_the_recipes_own_and_shares_its_cache_key():
    from splitkit.train.recipes import get_recipe

    cfg = get_preset("default")
    assert cfg.dict.l1_coeff is None
    for name in ("l1_log", "l1_decnorm", "paper", "matryoshka"):
        d = cfg.with_overrides(dict={"recipe": name}).dict
        assert d.lam == get_recipe(name).default_l1_coeff > 0
        assert P.trainer_config(cfg.with_overrides(dict={"recipe": name})).l1_coeff == d.lam
        # leaving lambda to the recipe and naming the same value is one cache entry; another value is not
        named = cfg.with_overrides(dict={"recipe": name, "l1_coeff": d.lam}).dict
        assert named.key_dict() == d.key_dict()
        assert cfg.with_overrides(dict={"recipe": name, "l1_coeff": 2 * d.lam}).dict.key_dict() != d.key_dict()
    assert get_recipe("l1_log").default_l1_coeff != get_recipe("l1_decnorm").default_l1_coeff
    assert cfg.with_overrides(dict={"recipe": "topk"}).dict.lam is None
    for bad in (0, -1e-3, "1e-3", True):
        with pytest.raises(ConfigError):
            DictConfig(l1_coeff=bad)


def _tiny_tokens(n=20000, vocab=64, seed=0):
    # A learnable stream: a noisy repeating pattern, so a few steps must lower the loss.
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(vocab), n // vocab + 1)[:n]
    noise = rng.random(n) < 0.1
    base[noise] = rng.integers(0, vocab, noise.sum())
    return base.astype(np.uint16)


TINY = ModelConfig(d_model=32, n_heads=2, d_mlp=64, n_ctx=16)


def _train(tmp, seed, n_tokens=16 * 16 * 30, stop=None, dtype="float32"):
    cfg = LMTrainConfig(n_tokens=n_tokens, batch_size=16, lr=1e-2, checkpoint_every=10, dtype=dtype)
    return train_lm(TINY, cfg, 64, _tiny_tokens(), seed, tmp, progress=False, stop_after_steps=stop)


def test_lm_training_lowers_loss(tmp_path):
    model, meta = _train(tmp_path, seed=0)
    losses = [r["loss"] for r in meta["log"]]
    assert losses[-1] < 0.7 * np.log(64), losses


def test_same_seed_same_weights_different_seed_different(tmp_path):
    m1, _ = _train(tmp_path / "a", seed=3, n_tokens=16 * 16 * 8)
    m2, _ = _train(tmp_path / "b", seed=3, n_tokens=16 * 16 * 8)
    m3, _ = _train(tmp_path / "c", seed=4, n_tokens=16 * 16 * 8)
    for (k, v1), v2, v3 in zip(m1.state_dict().items(), m2.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert any(not torch.equal(v1, v3) for v1, v3 in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_resume_after_interrupt_is_bitwise_identical(tmp_path):
    full, _ = _train(tmp_path / "full", seed=5)
    _train(tmp_path / "int", seed=5, stop=13)  # interrupted mid-way (last checkpoint at step 10)
    import shutil

    # simulate a crash after step 13: only the step-10 checkpoint survives
    ck = json.loads((tmp_path / "int" / "checkpoint.json").read_text())
    assert ck["step"] == 13
    shutil.rmtree(tmp_path / "int")
    _train(tmp_path / "int", seed=5, stop=10)
    resumed, meta = _train(tmp_path / "int", seed=5)
    assert meta["step"] == meta["n_steps"]
    for (k, v1), v2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_lm_batch_is_pure_function_of_seed_and_step():
    t = _tiny_tokens()
    x1, y1 = lm_batch(t, 1, 7, 4, 16)
    x2, y2 = lm_batch(t, 1, 7, 4, 16)
    assert torch.equal(x1, x2) and torch.equal(y1[:, :-1], x1[:, 1:])
    assert not torch.equal(x1, lm_batch(t, 2, 7, 4, 16)[0])


def test_mlp_edit_hooks():
    torch.manual_seed(0)
    m = Transformer(TINY, 64).eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        base = m(idx)
        same = m(idx, mlp_edit=lambda h: h)
        zeroed = m(idx, mlp_edit=lambda h: torch.zeros_like(h))
        acts = m.mlp_acts(idx)
        # splicing: replacing the activations with themselves is the identity
        assert torch.allclose(base, same)
        # zero-ablation equals removing the MLP's contribution (only its output bias is left)
        x = m._pre_mlp(idx)
        manual = m.unembed(m.ln_final(x + m.mlp.fc_out.bias))
        assert torch.allclose(zeroed, manual, atol=1e-6)
        assert acts.shape == (2, 16, 64) and (acts >= 0).all()


def test_activation_store_matches_model_exactly(tmp_path):
    torch.manual_seed(0)
    m = Transformer(TINY, 64).eval()
    toks = _tiny_tokens(4000)
    starts = np.arange(0, 16 * 50, 16)
    harvest(m, toks, starts, tmp_path, shard_tokens=128, dtype="float32", batch_size=7, progress=False)
    store = ActivationStore(tmp_path)
    assert len(store) == 800 and len(store.shards) == 7
    rng = np.random.default_rng(0)
    rows = rng.choice(800, size=50, replace=False)
    with torch.no_grad():
        ref = m.mlp_acts(torch.from_numpy(toks[:800].reshape(50, 16).astype(np.int64))).reshape(800, -1).numpy()
    np.testing.assert_array_equal(store.rows(rows), ref[rows])
    assert (store.tokens[rows] == toks[rows]).all()
    assert (store.positions[rows] == rows % 16).all()
    # the shuffled loader covers each token once per epoch and is a pure function of step
    src = StoreSource(store, batch_size=100, seed=0)
    epoch = torch.cat([src.get_batch(s) for s in range(8)])
    assert torch.equal(torch.sort(epoch, dim=0).values, torch.sort(torch.from_numpy(ref), dim=0).values)
    assert torch.equal(src.get_batch(3), StoreSource(store, 100, seed=0).get_batch(3))


def test_corrupted_shard_is_detected_and_rebuilt(smoke_cfg):
    store = P.get_acts(smoke_cfg, smoke_cfg.seed_a, progress=False)
    shard = store.folder / "shard_0000_vals.npy"
    check_manifest(store.folder)
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        check_manifest(store.folder)
    rebuilt = P.get_acts(smoke_cfg, smoke_cfg.seed_a, progress=False)
    check_manifest(rebuilt.folder)
    assert shard.read_bytes() != bytes(data)


def test_partial_artifact_is_never_used(tmp_path):
    cache = Cache(tmp_path)
    art = cache.artifact("x", {"a": 1})
    work = art.begin()
    (work / "f.bin").write_bytes(b"123")
    assert not art.is_complete()  # not sealed
    art.seal()
    assert art.is_complete()
    (art.path / "f.bin").write_bytes(b"1234")
    assert not art.is_complete()
    assert cache.artifact("x", {"a": 2}).key != art.key


def test_smoke_pipeline_lm_beats_unigram(smoke_cfg):
    lm = P.get_lm(smoke_cfg, smoke_cfg.seed_a, progress=False)
    s = lm.summary
    assert s["val_loss"] < s["unigram_entropy"]
    # a second call reuses the cache: same folder, no retraining
    assert P.get_lm(smoke_cfg, smoke_cfg.seed_a, progress=False).folder == lm.folder


def test_verified_stamp_skips_rehashing_until_a_file_changes(tmp_path, monkeypatch):
    import splitkit.cache as C

    art = Cache(tmp_path).artifact("x", {"a": 1})
    work = art.begin()
    (work / "big.bin").write_bytes(b"0123456789" * 1000)
    art.seal()
    C._VERIFIED.clear()  # as in a new process
    calls = []
    real = C.sha256_file
    monkeypatch.setattr(C, "sha256_file", lambda p: calls.append(p) or real(p))
    check_manifest(art.path)
    assert calls == []  # sealed just now: its stamp says the checksums matched
    data = bytearray((art.path / "big.bin").read_bytes())
    data[5] ^= 0xFF
    (art.path / "big.bin").write_bytes(bytes(data))  # same size, new mtime
    C._VERIFIED.clear()
    with pytest.raises(CacheError, match="checksum"):
        check_manifest(art.path)
    assert calls


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell one thread from all")
def test_omp_num_threads_still_holds_for_torch_after_a_numba_kernel():
    """numba's OpenMP layer would resize the pool torch shares to every core at its first parallel kernel."""
    pytest.importorskip("numba")
    code = ("import splitkit, torch\n"
            "import numba\n"
            "@numba.njit(parallel=True)\n"
            "def f(n):\n"
            "    s = 0\n"
            "    for i in numba.prange(n):\n"
            "        s += i\n"
            "    return s\n"
            "f(100)\n"
            "print(torch.get_num_threads(), numba.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
