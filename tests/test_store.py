"""The sparse (CSR) activation store: bitwise the dense rows, loud on damaged shards, and the neuron
matching on its sparse view equal to the dense path."""

import numpy as np
import pytest
import torch

from splitkit.activations import ActivationStore, StoreError, StoreSource, harvest
from splitkit.config import ModelConfig

T, D = 16, 40


class _TableModel(torch.nn.Module):
    """Stands in for the LM: the activations at a token are row ``table[token]``, so the dense
    reference of a store is ``table[tokens]`` rounded to the store's dtype."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.cfg = ModelConfig(d_model=8, n_heads=2, d_mlp=table.shape[1], n_ctx=T)
        self.table = torch.from_numpy(table)

    def mlp_acts(self, idx):
        return self.table[idx]


def _planted_table(vocab: int = 50) -> np.ndarray:
    """Sparse ReLU-like rows plus the awkward cases: all-zero rows, -0.0, a float16 subnormal, the
    float16 maximum and a value that rounds to zero in float16 (stored nowhere, like a zero)."""
    rng = np.random.default_rng(1)
    table = np.where(rng.random((vocab, D)) < 0.1, rng.exponential(1.0, (vocab, D)), 0.0).astype(np.float32)
    table[[0, 7, 13]] = 0.0  # tokens whose rows are empty
    table[1, 3] = -0.0
    table[2, 5] = 6e-8  # float16 subnormal
    table[3, 0] = 65504.0
    table[4, D - 1] = 1e-9  # rounds to +0 in float16
    table[5, :] = np.linspace(0.5, 2.0, D)  # a full row
    return table


@pytest.fixture(scope="module", params=["float16", "float32"])
def planted(request, tmp_path_factory):
    dtype = request.param
    table = _planted_table()
    rng = np.random.default_rng(2)
    toks = rng.integers(0, len(table), size=T * 40).astype(np.int64)
    toks[T * 3 : T * 5] = 0  # two whole windows of empty rows, across the first shard boundary (row 32)
    starts = np.arange(21) * T  # 336 rows: 10 shards of 32 and a short last one of 16
    folder = tmp_path_factory.mktemp(f"store_{dtype}")
    meta = harvest(_TableModel(table), toks, starts, folder, shard_tokens=2 * T, dtype=dtype, batch_size=3,
                   progress=False)  # batches of 48 rows straddle the 32-row shards
    n = len(starts) * T
    ref = table[toks[:n]].astype(dtype).astype(np.float32)  # what a dense store returned
    return ActivationStore(folder), ref, toks[:n], meta


def _bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def test_round_trip_is_bitwise_the_dense_store(planted):
    store, ref, toks, meta = planted
    n = len(ref)
    assert meta["format"] == "csr" and len(store) == n and len(store.shards) == 11 and store.shards[-1].n_rows == 16
    assert store.nnz == int((_bits(ref) != 0).sum()) < ref.size // 5  # only the nonzero bit patterns are stored
    assert (_bits(ref) == 0x80000000).any()  # a -0.0 is among them ...
    all_rows = store.rows(np.arange(n))
    np.testing.assert_array_equal(_bits(all_rows), _bits(ref))  # ... and comes back with its sign
    rng = np.random.default_rng(3)
    idx = np.concatenate([rng.integers(0, n, 200), [31, 32, 33, 48, 63, 64, n - 1, 0, 32, 32]])  # repeats, boundaries
    np.testing.assert_array_equal(_bits(store.rows(idx)), _bits(ref[idx]))
    assert store.rows(np.zeros(0, np.int64)).shape == (0, D)
    empty = np.flatnonzero(~ref.any(1))
    assert len(empty) >= 2 * T and (store.rows(empty) == 0).all()
    for a, b in [(0, n), (30, 70), (32, 64), (n - 5, n + 10), (100, 100)]:
        np.testing.assert_array_equal(_bits(store.slice(a, b)), _bits(ref[a:b]))
    np.testing.assert_array_equal(_bits(np.concatenate([x for _, x in store.iter_chunks(50)])), _bits(ref))
    np.testing.assert_array_equal(np.asarray(store.tokens), toks)
    np.testing.assert_array_equal(np.asarray(store.positions), np.arange(n) % T)
    np.testing.assert_allclose(store.mean_acts, table_mean(toks), rtol=1e-6)
    # the trainer's batches: the same float32 tensors a dense store gave, step by step
    src = StoreSource(store, batch_size=64, seed=5)
    for step in (0, 4, 5, 11):
        perm = np.random.default_rng([5, step // (n // 64)]).permutation(n)
        k = step % (n // 64)
        want = torch.from_numpy(ref[perm[k * 64 : (k + 1) * 64]])
        got = src.get_batch(step)
        assert got.dtype == torch.float32 and torch.equal(got.view(torch.int32), want.view(torch.int32))
    # the matcher's view: CSR float32 of the same values, no row densified
    for m in (None, 40, 32, 0):
        csr = store.head_csr(m)
        k = n if m is None else m
        assert csr.shape == (k, D) and csr.dtype == np.float32 and csr.has_canonical_format
        stored = _bits(ref[:k]) != 0
        np.testing.assert_array_equal(np.diff(csr.indptr), stored.sum(1))
        np.testing.assert_array_equal(csr.indices, np.nonzero(stored)[1])
        np.testing.assert_array_equal(_bits(csr.data), _bits(ref[:k][stored]))  # -0.0 included
    head = store.head(40)
    assert head.dtype == store.dtype and np.array_equal(_bits(head.astype(np.float32)), _bits(ref[:40]))


def table_mean(toks):
    table = _planted_table()
    return table[toks].astype(np.float64).mean(0)


def _fresh_copy(planted, tmp_path):
    import shutil

    store = planted[0]
    dst = tmp_path / "store"
    shutil.copytree(store.folder, dst)
    return dst


def _one_line_naming(err, folder):
    msg = str(err.value)
    assert "\n" not in msg and f"delete {folder}" in msg, msg
    return msg


def test_truncated_shard_says_what_to_delete(planted, tmp_path):
    folder = _fresh_copy(planted, tmp_path)
    vals = folder / "shard_0001_vals.npy"
    vals.write_bytes(vals.read_bytes()[:-7])
    with pytest.raises(StoreError) as err:
        ActivationStore(folder)
    assert "shard_0001_vals.npy" in _one_line_naming(err, folder)
    vals.unlink()
    with pytest.raises(StoreError) as err:
        ActivationStore(folder)
    assert "shard_0001_vals.npy" in _one_line_naming(err, folder)


def test_inconsistent_shard_says_what_to_delete(planted, tmp_path):
    folder = _fresh_copy(planted, tmp_path)
    good = ActivationStore(folder)
    ptr = np.load(folder / "shard_0002_indptr.npy")
    # a pointer array of the wrong length: caught on opening
    np.save(folder / "shard_0002_indptr.npy", ptr[:-3])
    with pytest.raises(StoreError) as err:
        ActivationStore(folder)
    assert "shard_0002_indptr.npy" in _one_line_naming(err, folder)
    # pointers that run backwards inside the shard: caught when a read reaches them, never written past
    bad = ptr.copy()
    bad[5] = bad[-1] + 10
    np.save(folder / "shard_0002_indptr.npy", bad)
    store = ActivationStore(folder)
    assert np.array_equal(store.rows([0, 1, 100]), good.rows([0, 1, 100]))  # other shards still read
    with pytest.raises(StoreError) as err:
        store.rows([2 * 32 + 4])
    _one_line_naming(err, folder)
    with pytest.raises(StoreError) as err:
        store.head_csr()
    _one_line_naming(err, folder)
    np.save(folder / "shard_0002_indptr.npy", ptr)
    # a column past d
    cols = np.load(folder / "shard_0003_cols.npy")
    cols[len(cols) // 2] = D + 3
    np.save(folder / "shard_0003_cols.npy", cols)
    store = ActivationStore(folder)
    with pytest.raises(StoreError) as err:
        store.slice(3 * 32, 4 * 32)
    _one_line_naming(err, folder)
    with pytest.raises(StoreError) as err:
        store.head_csr()
    _one_line_naming(err, folder)
    # a dense store of an older version is named, not misread
    (folder / "meta.json").write_text('{"d": 40, "n_tokens": 336, "shard_tokens": 32, "dtype": "float16"}')
    with pytest.raises(StoreError) as err:
        ActivationStore(folder)
    assert "older" in _one_line_naming(err, folder)


def test_neuron_matching_on_the_sparse_view_equals_the_dense_path(smoke_cfg):
    """The universality study's neuron figures (best match and its correlation per neuron, the median,
    the assignment, the shuffled chance) from the CSR view: those of the exact (float64) dense path,
    and within float32 rounding (1e-5) of the float32 dense path the study took before."""
    from splitkit import correlation as matching
    from splitkit import pipeline as P

    cfg = smoke_cfg
    sa, sb = (P.get_acts(cfg, s, "analysis", progress=False) for s in (cfg.seed_a, cfg.seed_b))
    fig = {}
    for how, dtype in (("dense", np.float32), ("dense", np.float64), ("sparse", np.float32)):
        NA, NB = (s.head() if how == "dense" else s.head_csr() for s in (sa, sb))
        A, B = matching.prepare(NA, "neurons A"), matching.prepare(NB, "neurons B")
        assert A.kind == how
        df = matching.match(A, B, k=cfg.analysis.top_k, dtype=dtype)
        chance = matching.shuffled_baseline(A, B, seed=cfg.analysis.shuffle_seed, k=1, dtype=dtype)
        fig[how, np.dtype(dtype).name] = (df, chance.value[:, 0].astype(np.float64))
    ds, cs = fig["sparse", "float32"]
    assert ds.attrs["engine"] != "dense" and fig["dense", "float32"][0].attrs["engine"] == "dense"
    assert (ds["corr"] > 0.2).mean() > 0.5  # a real matching, not all-NaN or all-zero
    # exact against float64; against the float32 dense path within its own rounding (float32 sums over
    # 30k tokens: a few 1e-6 on some LMs, so 1e-5; the exact comparison is the one that pins the engine)
    for ref, atol in (("float64", 1e-9), ("float32", 1e-5)):
        dd, cd = fig["dense", ref]
        for col in ("best_b", "assign_b", "mutual", "density_a", "best_a_of_b"):
            np.testing.assert_array_equal(ds[col], dd[col])
        np.testing.assert_allclose(ds["corr"], dd["corr"], atol=atol, rtol=0)
        np.testing.assert_allclose(ds["assign_corr"], dd["assign_corr"], atol=atol, rtol=0)
        np.testing.assert_allclose(cs, cd, atol=atol, rtol=0)
        assert abs(np.nanmedian(ds["corr"]) - np.nanmedian(dd["corr"])) <= atol
        assert abs(np.nanmedian(cs) - np.nanmedian(cd)) <= atol


def test_numpy_fallback_reads_the_same_rows(planted, monkeypatch):
    import splitkit.activations as A

    store, ref, _, _ = planted
    idx = np.random.default_rng(4).integers(0, len(ref), 300)
    monkeypatch.setattr(A, "HAVE_NUMBA", False)
    np.testing.assert_array_equal(_bits(store.rows(idx)), _bits(ref[idx]))
    np.testing.assert_array_equal(_bits(store.slice(20, 90)), _bits(ref[20:90]))
