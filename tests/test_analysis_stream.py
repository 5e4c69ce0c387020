"""Analysis sets past the corpus: held-out package text, streamed correlation sums equal to the in-memory path."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from splitkit import correlation
from splitkit.config import ConfigError


def test_cross_moments_equal_the_full_correlation_matrix():
    rng = np.random.default_rng(0)
    n = 6000
    A = sp.random(n, 90, density=0.04, random_state=1, format="csr", dtype=np.float32)
    B = (A[:, :60] * 2 + sp.random(n, 60, density=0.02, random_state=2, format="csr", dtype=np.float32)).tocsr()
    full = correlation.correlation_matrix(A, B)
    cm = correlation.CrossMoments(90, 60)
    for t0 in range(0, n, 2500):  # uneven chunks
        cm.update(A[t0 : t0 + 2500], B[t0 : t0 + 2500])
    assert cm.n_tokens == n
    np.testing.assert_allclose(cm.correlation(), full, atol=1e-9)
    val, idx = cm.max_correlation(block=16)
    top = correlation.max_correlation(A, B, k=1)
    np.testing.assert_allclose(val, top.value[:, 0], atol=1e-6)
    assert (idx[:60] == np.arange(60)).all()  # B's column j is 2 x A's column j plus noise
    np.testing.assert_array_equal(cm.nnz_a, np.diff(A.tocsc().indptr))

    # dense columns with a large mean and a small spread keep their digits (first-chunk shift)
    X = rng.normal(size=(n, 20)) * 0.01 + 100.0
    Y = X[:, :10] * 3 + rng.normal(size=(n, 10)) * 0.01
    cm = correlation.CrossMoments(20, 10)
    for t0 in range(0, n, 1000):
        cm.update(X[t0 : t0 + 1000], Y[t0 : t0 + 1000])
    np.testing.assert_allclose(cm.correlation(), correlation.correlation_matrix(X, Y), atol=1e-5)

    # a row map pairs A's token t with B's token b_rows[t]: the same as permuting B's rows
    perm = rng.permutation(n)
    cm = correlation.CrossMoments(90, 60).update(A, B, perm)
    np.testing.assert_allclose(cm.correlation(), correlation.correlation_matrix(A, B[perm]), atol=1e-9)
    with pytest.raises(ValueError, match="columns"):
        cm.update(A[:10, :50], B[:10])
    with pytest.raises(ValueError, match="same tokens"):
        cm.update(A[:10], B[:11])


def test_package_documents_are_held_out_and_mixed():
    from splitkit.corpus import load_package_documents, package_root, text_digest

    docs, info = load_package_documents(("tqdm", "no_such_package_xyz"))
    assert info["no_such_package_xyz"]["root"] is None and info["no_such_package_xyz"]["n_docs"] == 0
    assert info["tqdm"]["n_docs"] == len(docs) > 5 and all(d.name.startswith("tqdm/") for d in docs)
    assert len({text_digest(d.text) for d in docs}) == len(docs)  # no duplicate texts
    # a text listed in ``exclude`` (e.g. a training document) never comes back
    gone = docs[0]
    docs2, _ = load_package_documents(("tqdm",), exclude={text_digest(gone.text)})
    assert gone.name not in {d.name for d in docs2} and len(docs2) == len(docs) - 1
    # the order is a seeded hash, not the alphabet, and it is reproducible
    names = [d.name for d in docs]
    assert names != sorted(names) and names == [d.name for d in load_package_documents(("tqdm",))[0]]
    assert package_root("tqdm").is_dir()


def test_analysis_tokens_continue_past_the_split(smoke_cfg):
    from splitkit import pipeline as P

    data = P.get_tokens(smoke_cfg, progress=False)
    T = smoke_cfg.model.n_ctx
    split = np.asarray(data.tokens("analysis"))
    n_split = (len(split) // T) * T
    inside = P.analysis_tokens(smoke_cfg, 1000, progress=False)
    assert len(inside) == -(-1000 // T) * T
    np.testing.assert_array_equal(inside, split[: len(inside)])
    extra = P.get_extra_tokens(smoke_cfg, progress=False)
    past = P.analysis_tokens(smoke_cfg, n_split + 5 * T, progress=False)
    assert len(past) == n_split + 5 * T
    np.testing.assert_array_equal(past[:n_split], split[:n_split])
    np.testing.assert_array_equal(past[n_split:], extra[: 5 * T])
    with pytest.raises(ConfigError, match="ask for at most"):
        P.analysis_tokens(smoke_cfg, n_split + len(extra) + 10 * T, progress=False)
    with pytest.raises(ConfigError, match="larger --corpus"):
        P.analysis_tokens(smoke_cfg.with_overrides(analysis={"extra_packages": ()}), n_split + T, progress=False)


def test_stream_equals_the_in_memory_path(smoke_cfg):
    """The same tokens through the streaming pass give the stored path's correlations and counts."""
    from splitkit import pipeline as P
    from splitkit.analysis_stream import stream_universality
    from splitkit.analyses.universality import universality_figures
    from splitkit.precision import matmul_dtype

    cfg = smoke_cfg
    n = cfg.dict.sizes[0]
    fs = {s: P.get_features(cfg, s, n, progress=False) for s in (cfg.seed_a, cfg.seed_b)}
    fig = universality_figures(fs[cfg.seed_a].acts(), fs[cfg.seed_b].acts(), cfg.analysis.ultralow_density)
    stores = [P.get_acts(cfg, s, "analysis", progress=False) for s in (cfg.seed_a, cfg.seed_b)]
    neur = universality_figures(stores[0].head_csr(), stores[1].head_csr(), 0.0)
    fams = {s: P.get_family(cfg, s, progress=False) for s in (cfg.seed_a, cfg.seed_b)}
    tokens = P.analysis_tokens(cfg, cfg.analysis.n_tokens, progress=False)
    assert len(tokens) == len(stores[0])
    mm = matmul_dtype(cfg.dict.matmul_dtype, torch.device("cpu"))
    res, timing = stream_universality(
        P.get_lm(cfg, cfg.seed_a).model(), P.get_lm(cfg, cfg.seed_b).model(), tokens,
        {"d": (fams[cfg.seed_a].sae(n), fams[cfg.seed_b].sae(n))}, chunk_tokens=8192, matmul_dtype=mm,
        progress=False)
    r = res["d"]
    assert r.n_tokens == len(tokens) and timing["chunk_tokens"] == 8192
    np.testing.assert_array_equal(r.counts, fig["counts"])
    np.testing.assert_allclose(r.corr, fig["corr"], atol=1e-5)
    np.testing.assert_allclose(res["neurons"].corr, neur["corr"], atol=1e-4)
    # chance: shuffled within chunks, near 0 like the whole-set shuffle, far below the real matches
    assert abs(np.nanmedian(r.chance)) < 0.06 and np.nanmedian(r.corr) > np.nanmedian(r.chance) + 0.2


@pytest.mark.heavy
def test_scaling_grid_streams_past_the_split(smoke_cfg, tmp_path):
    from splitkit import pipeline as P
    from studies import universality_scaling as study

    n_split = P.get_tokens(smoke_cfg, progress=False).info["splits"]["analysis"]["n_tokens"]
    big = n_split + 20_000
    out = tmp_path / "scaling"
    argv = ["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(out), "--quiet", "--recipes",
            "l1_decnorm", "--sizes", "64,128", "--budgets", "41k,82k", "--analysis-tokens", f"10k,{big}"]
    assert study.main(argv) == 0
    df = pd.read_parquet(out / "scaling.parquet")
    assert len(df) == 8 and sorted(df["analysis_tokens"].unique()) == [10_000, big]
    s = df[df["analysis_tokens"] == big]
    assert s["analysis_streamed"].all() and (s["analysis_extra_tokens"] >= 20_000).all()
    assert (s["analysis_split_tokens"] + s["analysis_extra_tokens"] >= big).all()
    assert (s["chance_paper_median"].abs() < 0.1).all()
    assert (s["features_all_alive_median"] > s["chance_all_alive_median"] + 0.1).all()
    # the dictionary metrics come from the same evaluation as the stored path's
    m = df[df["analysis_tokens"] == 10_000].set_index(["n_features", "sae_tokens"])
    for _, row in s.iterrows():
        assert row["loss_recovered_zero_a"] == pytest.approx(m.loc[(row["n_features"], row["sae_tokens"]),
                                                                   "loss_recovered_zero_a"], abs=1e-9)
    # finished streamed points are cached records, reused, not streamed again
    folders = {json.loads(f.read_text())["key"]: f for f in (Path(smoke_cfg.cache_dir) / "scaling_point").glob("*/record.json")}
    mine = {k: folders[k] for k in df["key"]}
    stamps = {k: f.stat().st_mtime_ns for k, f in mine.items()}
    assert study.main(argv) == 0
    assert {k: f.stat().st_mtime_ns for k, f in mine.items()} == stamps
    key = df.set_index("id").loc[f"l1_decnorm-n128-t82000-a{big}", "key"]
    row = json.loads(mine[key].read_text())
    assert row["stream_points"] == 4 and "permuted within chunks" in row["chance_shuffle"]
