"""Feature splitting: masked cosine against brute force, planted hierarchies recovered, fates,
families, the null, and the universality of splits under known permutations."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from splitkit.analyses import splitting as S

ENGINES = ["numba", "scipy"] if S.HAVE_NUMBA else ["scipy"]


# --------------------------------------------------------------------------------------------
# Planted hierarchies
# --------------------------------------------------------------------------------------------


def _support(rng, n_tokens, lo=120, hi=300):
    return np.sort(rng.choice(n_tokens, rng.integers(lo, hi), replace=False))


def _col(n_tokens, toks, vals):
    v = np.zeros(n_tokens, np.float64)
    np.add.at(v, toks, vals)
    return v


def plant_two_sizes(seed=0, n_tokens=40_000, n_split=20, n_persist=15, n_merge=8, n_novel=10, n_vanish=10,
                    n_partial=5, noise=0.05, drop=0.0):
    """Parents (small dictionary) and children (large one) with known links and fates.

    Children fire on random token sets with random positive values. A splitting parent is the sum of
    2-4 children; a persisting parent copies one child (with 5% multiplicative noise); a merging child's
    tokens are shared between two splitting parents (half each); a partial parent is one or two
    children plus twice as many tokens of its own; vanishing parents and novel children fire on tokens of their own.
    Every parent also fires weakly (0.1x) on a few random tokens. ``noise``: the multiplicative noise
    of a parent's copy of its children; ``drop``: the share of those tokens where the parent is silent.
    """
    rng = np.random.default_rng(seed)
    kids = []  # (tokens, values)
    true_parents = []  # set of parent ids per child
    child_fate = []
    parent_cols = []
    parent_fate = []

    def new_child(fate):
        toks = _support(rng, n_tokens)
        kids.append((toks, rng.gamma(2.0, 1.0, len(toks)) + 0.2))
        true_parents.append(set())
        child_fate.append(fate)
        return len(kids) - 1

    def noisy(v):  # the parent's copy of a child's values: noisy, and silent on a share of them
        return v * (1 + noise * rng.standard_normal(len(v))).clip(0.1) * (rng.random(len(v)) >= drop)

    parent_parts = []  # list per parent of (tokens, values)
    for _ in range(n_split):
        p = len(parent_parts)
        parent_parts.append([])
        parent_fate.append("splits")
        for _ in range(rng.integers(2, 5)):
            c = new_child("inherits")
            true_parents[c].add(p)
            parent_parts[p].append((kids[c][0], noisy(kids[c][1])))
    for _ in range(n_merge):
        c = new_child("merges")
        p1, p2 = rng.choice(n_split, 2, replace=False)
        toks, vals = kids[c]
        half = rng.random(len(toks)) < 0.5
        parent_parts[p1].append((toks[half], noisy(vals[half])))
        parent_parts[p2].append((toks[~half], noisy(vals[~half])))
        true_parents[c] |= {int(p1), int(p2)}
    for _ in range(n_persist):
        p = len(parent_parts)
        parent_fate.append("persists")
        c = new_child("inherits")
        true_parents[c].add(p)
        parent_parts.append([(kids[c][0], noisy(kids[c][1]))])
    for u in range(n_partial):  # one child, or two, carrying a third of the parent's tokens
        p = len(parent_parts)
        parent_fate.append("partial")
        parts = []
        for _ in range(1 + u % 2):
            c = new_child("inherits")
            true_parents[c].add(p)
            parts.append((kids[c][0], noisy(kids[c][1])))
        n_own = 2 * sum(len(t) for t, _ in parts)
        own = _support(rng, n_tokens, n_own, n_own + 1)
        parent_parts.append(parts + [(own, rng.gamma(2.0, 1.0, len(own)) + 0.2)])
    for _ in range(n_vanish):
        parent_fate.append("vanishes")
        own = _support(rng, n_tokens)
        parent_parts.append([(own, rng.gamma(2.0, 1.0, len(own)) + 0.2)])
    for _ in range(n_novel):
        new_child("novel")

    for parts in parent_parts:
        toks = np.concatenate([t for t, _ in parts])
        vals = np.concatenate([v for _, v in parts])
        spur = rng.choice(n_tokens, 10, replace=False)
        parent_cols.append(_col(n_tokens, np.r_[toks, spur], np.r_[vals, 0.1 * rng.random(10)]))
    A = sp.csr_matrix(np.stack(parent_cols, 1).astype(np.float32))
    B = sp.csr_matrix(np.stack([_col(n_tokens, t, v) for t, v in kids], 1).astype(np.float32))
    # shuffle feature ids so that nothing depends on the planted order
    pp, pc = rng.permutation(A.shape[1]), rng.permutation(B.shape[1])
    inv_p = np.argsort(pp)
    A, B = A[:, pp], B[:, pc]
    true_parents = [{int(inv_p[p]) for p in true_parents[c]} for c in pc]
    return A, B, true_parents, [parent_fate[p] for p in pp], [child_fate[c] for c in pc]


def coarsen(acts, groups):
    """A smaller dictionary whose feature g is the sum of ``acts``' features ``groups[g]``."""
    n = acts.shape[1]
    M = np.zeros((n, len(groups)), np.float32)
    for g, members in enumerate(groups):
        M[members, g] = 1.0
    return sp.csr_matrix(acts @ M)


def plant_three_sizes(seed=0, n_tokens=30_000, n_leaf_groups=12):
    """Three sizes of pure trees: leaves, parents = sums of 2-3 leaves, roots = sums of 2 parents."""
    rng = np.random.default_rng(seed)
    n_mid = 2 * n_leaf_groups
    sizes = rng.permutation(np.resize([2, 3], n_mid))  # the same sizes for every seed, shuffled
    n_leaf = int(sizes.sum())
    leaf = sp.csr_matrix(np.stack([_col(n_tokens, t, rng.gamma(2.0, 1.0, len(t)) + 0.2)
                                   for t in (_support(rng, n_tokens, 150, 300) for _ in range(n_leaf))], 1)
                         .astype(np.float32))
    perm = rng.permutation(n_leaf)
    mid_groups = np.split(perm, np.cumsum(sizes)[:-1])
    mid = coarsen(leaf, mid_groups)
    top_groups = [[2 * g, 2 * g + 1] for g in range(n_leaf_groups)]
    top = coarsen(mid, top_groups)
    return {n_leaf_groups: top, n_mid: mid, n_leaf: leaf}, mid_groups, top_groups


# --------------------------------------------------------------------------------------------
# Masked cosine: exact against brute force
# --------------------------------------------------------------------------------------------


def brute_force(A, B):
    """Every co-firing pair's masked cosines and coverages from the definitions, densely."""
    Ad, Bd = A.toarray().astype(np.float64), B.toarray().astype(np.float64)
    out = {}
    for i in range(Ad.shape[1]):
        for j in range(Bd.shape[1]):
            a, b = Ad[:, i], Bd[:, j]
            both = (a > 0) & (b > 0)
            if not both.any():
                continue
            mp, mc = a > 0, b > 0
            cp = a[mp] @ b[mp] / (np.linalg.norm(a[mp]) * np.linalg.norm(b[mp]))
            cc = a[mc] @ b[mc] / (np.linalg.norm(a[mc]) * np.linalg.norm(b[mc]))
            out[i, j] = (max(cp, cc), cp, cc, b[mp].sum() / b.sum(), a[mc].sum() / a.sum(), both.sum())
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_masked_cosine_matches_brute_force(engine):
    rng = np.random.default_rng(3)
    A = sp.random(300, 25, density=0.08, random_state=rng, format="csr", dtype=np.float32)
    B = sp.random(300, 40, density=0.12, random_state=rng, format="csr", dtype=np.float32)
    A.data *= 3
    ref = brute_force(A, B)
    df = S.links(A, B, k=1000, engine=engine, chunk_children=7)  # several chunks
    got = {(int(r.parent), int(r.child)): (r.masked_cos, r.cos_on_parent, r.cos_on_child, r.coverage,
                                           r.parent_share, r.n_cofire) for r in df.itertuples()}
    assert set(got) == set(ref)  # exactly the co-firing pairs, nothing else
    err = max(np.abs(np.subtract(got[key], ref[key])).max() for key in ref)
    assert err < 1e-6
    # ranks: best first per child, and k keeps the best ones
    top2 = S.links(A, B, k=2, engine=engine)
    for j, grp in df.groupby("child"):
        want = grp.sort_values(["masked_cos", "parent"], ascending=[False, True]).head(2)
        assert top2[top2.child == j].parent.tolist() == want.parent.tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_min_cofire_drops_pairs_that_share_few_tokens(engine):
    rng = np.random.default_rng(5)
    A = sp.random(400, 20, density=0.1, random_state=rng, format="csr", dtype=np.float32)
    B = sp.random(400, 30, density=0.1, random_state=rng, format="csr", dtype=np.float32)
    full = S.links(A, B, k=1000, engine=engine)
    three = S.links(A, B, k=1000, min_cofire=3, engine=engine)
    want = full[full.n_cofire >= 3]
    assert len(three) == len(want) < len(full)
    assert set(zip(three.parent, three.child)) == set(zip(want.parent, want.child))


def test_decoder_cosine_of_linked_pairs():
    rng = np.random.default_rng(0)
    Wp, Wc = rng.standard_normal((25, 16)), rng.standard_normal((40, 16))
    A = sp.random(300, 25, density=0.1, random_state=1, format="csr", dtype=np.float32)
    B = sp.random(300, 40, density=0.1, random_state=2, format="csr", dtype=np.float32)
    df = S.links(A, B, Wp, Wc, k=3)
    p, c = df.parent.to_numpy(), df.child.to_numpy()
    want = (Wp[p] * Wc[c]).sum(1) / np.linalg.norm(Wp[p], axis=1) / np.linalg.norm(Wc[c], axis=1)
    assert np.allclose(df.decoder_cos, want, atol=1e-12)


def test_engines_and_chunks_agree_on_a_moderate_case():
    rng = np.random.default_rng(1)
    A = sp.random(5000, 300, density=0.02, random_state=rng, format="csr", dtype=np.float32)
    B = sp.random(5000, 700, density=0.01, random_state=rng, format="csr", dtype=np.float32)
    ref = S.links(A, B, k=4, engine="scipy", chunk_children=700)
    for engine in ENGINES:
        for chunk in (1, 33, 256, None):
            df = S.links(A, B, k=4, engine=engine, chunk_children=chunk)
            assert df[["parent", "child", "rank"]].equals(ref[["parent", "child", "rank"]])
            assert np.allclose(df.masked_cos, ref.masked_cos, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_dense_parent_by_child_matrix(engine):
    """4,000 x 8,000 features: a dense float64 matrix would be 256 MB; linking stays far below."""
    rng = np.random.default_rng(2)
    n_tok, n_p, n_c = 20_000, 4_000, 8_000
    A = sp.random(n_tok, n_p, density=5 / n_p, random_state=rng, format="csr", dtype=np.float32)
    B = sp.random(n_tok, n_c, density=5 / n_c, random_state=rng, format="csr", dtype=np.float32)
    S.links(A[:50], B[:50], k=4, engine=engine)  # compile outside the measurement
    tracemalloc.start()
    df = S.links(A, B, k=4, engine=engine, chunk_children=1000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense = n_p * n_c * 8
    assert peak < dense / 8, f"peak {peak / 1e6:.0f} MB against a dense {dense / 1e6:.0f} MB"
    assert df.groupby("child").size().max() <= 4 and len(df) > 0.5 * n_c


# --------------------------------------------------------------------------------------------
# Planted truth
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[(0, 0.05, 0.0), (1, 0.3, 0.15)], ids=["clean", "noisy"])
def planted(request):
    seed, noise, drop = request.param
    A, B, true_parents, parent_fate, child_fate = plant_two_sizes(seed=seed, noise=noise, drop=drop)
    dens = {A.shape[1]: A.getnnz(0) / A.shape[0], B.shape[1]: B.getnnz(0) / B.shape[0]}
    forest, step_links = S.splitting_forest({A.shape[1]: A, B.shape[1]: B}, dens, run="A")
    return A, B, true_parents, parent_fate, child_fate, forest, step_links


def test_planted_hierarchy_recovers_parents(planted):
    A, B, true_parents, _, _, forest, _ = planted
    n_c = B.shape[1]
    found = [{forest.nodes[u]["feature"] for u in forest.predecessors(f"A/{n_c}/{j}")} for j in range(n_c)]
    exact = np.mean([f == t for f, t in zip(found, true_parents)])
    right_best = np.mean([(not t and not f) or bool(f & t) for f, t in zip(found, true_parents)])
    assert exact >= 0.9 and right_best >= 0.9, (exact, right_best)
    merges = [j for j, t in enumerate(true_parents) if len(t) == 2]
    assert np.mean([found[j] == true_parents[j] for j in merges]) >= 0.9  # both parents of a merge


def test_planted_hierarchy_fates(planted):
    A, B, _, parent_fate, child_fate, forest, _ = planted
    n_p, n_c = A.shape[1], B.shape[1]
    got_p = [forest.nodes[f"A/{n_p}/{i}"]["fate_out"] for i in range(n_p)]
    got_c = [forest.nodes[f"A/{n_c}/{j}"]["fate_in"] for j in range(n_c)]
    acc = np.mean(np.r_[np.equal(got_p, parent_fate), np.equal(got_c, child_fate)])
    assert acc >= 0.9, acc
    for fate in ("splits", "persists", "vanishes", "partial"):  # every fate is recovered, not only the common ones
        sel = np.equal(parent_fate, fate)
        assert np.mean(np.equal(got_p, parent_fate)[sel]) >= 0.8, fate
    for fate in ("inherits", "merges", "novel"):
        sel = np.equal(child_fate, fate)
        assert np.mean(np.equal(got_c, child_fate)[sel]) >= 0.8, fate
    summ = S.step_summary(forest)
    assert summ.loc[0, "share_novel"] == pytest.approx(np.mean(np.equal(got_c, "novel")))
    assert summ.loc[0, "share_splits"] == pytest.approx(np.mean(np.equal(got_p, "splits")))
    br = S.branching(forest)
    assert br.n_parents.sum() == n_p
    assert (br.n_children * br.n_parents).sum() == forest.number_of_edges()


def test_threshold_against_the_shuffled_null(planted):
    A, B, _, _, child_fate, _, step_links = planted
    null = S.null_masked_cos(A, B, seed=0)
    rep = S.threshold_vs_null(next(iter(step_links.values())), null, B.shape[1], threshold=0.4)
    # planted links are far above chance; shuffled tokens almost never reach 0.4
    assert rep["share_linked"] >= 0.9 * np.mean(np.not_equal(child_fate, "novel"))
    assert rep["null_share_linked"] <= 0.05 and rep["null_q90"] < 0.4
    assert not np.array_equal(null, S.null_masked_cos(A, B, seed=1))  # the seed matters
    assert np.array_equal(null, S.null_masked_cos(A, B, seed=0))  # and fixes it


def test_three_sizes_families_and_twins():
    acts, mid_groups, top_groups = plant_three_sizes(seed=4)
    forest, _ = S.splitting_forest(acts, run="A")
    sizes = sorted(acts)
    fam = S.families(forest)
    # every planted tree is one family spanning all three sizes: 1 root + 2 parents + their leaves
    trees = fam[fam.depth == 3]
    assert len(trees) == len(top_groups)
    want = sorted(1 + 2 + len(mid_groups[2 * g]) + len(mid_groups[2 * g + 1]) for g in range(len(top_groups)))
    assert sorted(trees.n_nodes.tolist()) == want
    summ = S.step_summary(forest)
    assert summ.share_splits.tolist() == [1.0, 1.0] and summ.share_inherits.tolist() == [1.0, 1.0]

    # twins: duplicate every leaf; without collapsing each parent gains copies, with it nothing changes
    leaf = acts[sizes[2]]
    n = leaf.shape[1]
    twin_acts = dict(acts)
    twin_acts[sizes[2]] = sp.hstack([leaf, leaf]).tocsr()
    labels = np.r_[np.arange(n), np.arange(n)]
    raw, _ = S.splitting_forest(twin_acts, run="A")
    merged, _ = S.splitting_forest(twin_acts, run="A", twins={sizes[2]: labels})
    assert raw.number_of_edges() == forest.number_of_edges() + sum(forest.in_degree(v) for v in forest
                                                                    if forest.nodes[v]["size"] == sizes[2])
    assert merged.graph["twins_collapsed"] and not raw.graph["twins_collapsed"]
    assert set(merged.edges) == set(forest.edges)
    assert all(merged.nodes[v]["count"] == 2 for v in merged if merged.nodes[v]["size"] == sizes[2])
    ms = S.step_summary(merged)
    assert ms.twin_share_child.tolist() == [0.0, 1.0] and ms.twin_share_parent.tolist() == [0.0, 0.0]
    assert ms.share_splits.tolist() == [1.0, 1.0]  # copies collapsed: the same fates as without twins
    node_of = S.feature_nodes(merged)
    assert node_of[(sizes[2], n + 5)] == node_of[(sizes[2], 5)] == f"A/{sizes[2]}/5"


def test_families_are_strongest_parent_trees_not_the_web():
    """Two planted trees (A/2/0 -> A/4/0,1 and A/2/1 -> A/4/2,3) joined by one weaker cross link:
    the web is one weak component, the main lineage keeps the two trees apart."""
    import networkx as nx

    g = nx.DiGraph()
    for s, n in ((2, 2), (4, 4)):
        for f in range(n):
            g.add_node(f"A/{s}/{f}", size=s, feature=f, count=1)
    for p, c, w in ((0, 0, 0.9), (0, 1, 0.8), (1, 2, 0.7), (1, 3, 0.95), (0, 2, 0.5), (1, 1, 0.8)):
        g.add_edge(f"A/2/{p}", f"A/4/{c}", masked_cos=w)
    assert nx.number_weakly_connected_components(g) == 1
    fam = S.families(g)
    assert fam.n_nodes.tolist() == [3, 3] and fam.depth.tolist() == [2, 2] and fam.n_roots.tolist() == [1, 1]
    assert fam.n_edges.tolist() == [2, 2] and fam.n_web_edges.sum() == 4  # the cross links 0->2, 1->1 are in none
    assert g.nodes["A/4/2"]["family"] == g.nodes["A/2/1"]["family"] != g.nodes["A/2/0"]["family"]
    # a tie (A/4/1 at 0.8 under both) goes to the lowest parent id
    assert g.nodes["A/4/1"]["family"] == g.nodes["A/2/0"]["family"]
    assert [e for e in g.edges if g.edges[e]["lineage"]] == [("A/2/0", "A/4/0"), ("A/2/0", "A/4/1"),
                                                              ("A/2/1", "A/4/2"), ("A/2/1", "A/4/3")]
    # with decoders, the decoder cosine chooses first: A/4/0's nearer direction is A/2/1's
    for (p, c), dc in {(0, 0): 0.2, (0, 1): 0.9, (1, 2): 0.9, (1, 3): 0.9, (0, 2): 0.1, (1, 1): 0.3}.items():
        g.edges[f"A/2/{p}", f"A/4/{c}"]["decoder_cos"] = dc
    g.add_edge("A/2/1", "A/4/0", masked_cos=0.45, decoder_cos=0.8)
    fam = S.families(g)
    assert g.nodes["A/4/0"]["family"] == g.nodes["A/2/1"]["family"] and fam.n_nodes.tolist() == [4, 2]
    assert S.families(g, weight="masked_cos").n_nodes.tolist() == [3, 3]  # the paper's cosine alone


def test_family_listing_tokens():
    acts, mid_groups, top_groups = plant_three_sizes(seed=5, n_tokens=20_000, n_leaf_groups=4)
    forest, _ = S.splitting_forest(acts, run="A")
    leaf_size = max(acts)
    # token ids: every leaf owns one token id on all its positions; the vocabulary is leaf ids + 1000
    owner = np.asarray(acts[leaf_size].argmax(1)).ravel()
    token_ids = owner + 1000
    logit = {s: np.eye(acts[s].shape[1], 50) for s in acts}
    df = S.family_listing(forest, acts, token_ids, logit_effects=logit, n_families=2, n_top=3,
                          decode=lambda t: f"<{t}>")
    assert set(df.family) == {0, 1} and len(df) == S.families(forest).head(2).n_nodes.sum()
    leaves = df[df["size"] == leaf_size]
    assert all(r.top_tokens[0] == r.feature + 1000 for r in leaves.itertuples())
    assert all(r.top_promoted[0] == r.feature for r in df.itertuples() if r.feature < 50)
    assert df.top_tokens_text.iloc[0].startswith("<")


# --------------------------------------------------------------------------------------------
# Universality of splits
# --------------------------------------------------------------------------------------------


def test_split_universality_under_a_known_permutation():
    acts, _, _ = plant_three_sizes(seed=6)
    rng = np.random.default_rng(0)
    perms = {s: rng.permutation(a.shape[1]) for s, a in acts.items()}
    acts_b = {s: a[:, perms[s]] for s, a in acts.items()}  # B's feature j is A's feature perm[j]
    fa, _ = S.splitting_forest(acts, run="A")
    fb, _ = S.splitting_forest(acts_b, run="B")
    matches = {s: np.argsort(p) for s, p in perms.items()}
    res = S.split_universality(fa, fb, matches, n_shuffles=10, seed=0)
    assert res["share"] == 1.0 and res["n_mapped"] == res["n_edges"] == fa.number_of_edges()
    assert res["shuffled_mean"] < 0.2 and res["children_corr"] == pytest.approx(1.0)
    # a wrong matching (off by one) loses the edges
    wrong = {s: np.roll(m, 1) for s, m in matches.items()}
    assert S.split_universality(fa, fb, wrong, n_shuffles=2)["share"] < 0.3


def test_split_universality_of_unrelated_forests_is_chance():
    fa, _ = S.splitting_forest(plant_three_sizes(seed=7)[0], run="A")
    fb, _ = S.splitting_forest(plant_three_sizes(seed=7 + 100)[0], run="B")
    sizes = sorted(int(s) for s in fa.graph["sizes"].split(","))
    assert fb.graph["sizes"] == fa.graph["sizes"]
    rng = np.random.default_rng(1)
    n_b = {s: sum(1 for v in fb if fb.nodes[v]["size"] == s) for s in sizes}
    n_a = {s: sum(1 for v in fa if fa.nodes[v]["size"] == s) for s in sizes}
    matches = {s: rng.integers(0, n_b[s], n_a[s]) for s in sizes}
    res = S.split_universality(fa, fb, matches, n_shuffles=30, seed=0)
    assert abs(res["share"] - res["shuffled_mean"]) <= 4 * res["shuffled_std"] + 0.02
    assert res["share"] < 0.2


def test_entry_validation():
    A = sp.random(50, 5, density=0.2, random_state=0, format="csr", dtype=np.float32)
    with pytest.raises(ValueError, match="same tokens"):
        S.links(A, A[:40])
    neg = A.copy()
    neg.data[0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        S.links(neg, A)
    with pytest.raises(ValueError, match="scipy.sparse"):
        S.links(A.toarray(), A)
    with pytest.raises(ValueError, match="both"):
        S.links(A, A, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="engine"):
        S.links(A, A, engine="gpu")
    with pytest.raises(ValueError, match="consecutive"):
        S.build_forest({}, {5: np.zeros(5), 10: np.zeros(10)})


def test_forest_attributes_are_plain_scalars_of_one_type():
    """Writers (GEXF, GraphML) need one Python scalar type per attribute: no numpy scalars, no None."""
    acts, _, _ = plant_three_sizes(seed=8, n_tokens=10_000, n_leaf_groups=3)
    rng = np.random.default_rng(0)
    W = {s: rng.standard_normal((a.shape[1], 8)) for s, a in acts.items()}
    forest, _ = S.splitting_forest(acts, W_dec=W, run="B", twins={min(acts): np.zeros(min(acts), int)})
    for items in (forest.nodes(data=True), forest.edges(data=True)):
        types: dict = {}
        for *_, attrs in items:
            for key, val in attrs.items():
                assert type(val) in (int, float, str, bool), (key, type(val))
                types.setdefault(key, set()).add(type(val))
        assert all(len(t) == 1 for t in types.values()), types
    assert all(np.isfinite(d["decoder_cos"]) for *_, d in forest.edges(data=True))
    assert forest.nodes[f"B/{min(acts)}/0"]["count"] == min(acts)  # all roots collapsed into one node


def test_split_universality_validates_matches():
    acts, _, _ = plant_three_sizes(seed=9, n_tokens=10_000, n_leaf_groups=3)
    fa, _ = S.splitting_forest(acts, run="A")
    good = {s: np.arange(a.shape[1]) for s, a in acts.items()}
    assert S.split_universality(fa, fa, good, n_shuffles=3)["share"] == 1.0
    with pytest.raises(ValueError, match="lacks size"):
        S.split_universality(fa, fa, {s: m for s, m in list(good.items())[1:]})
    with pytest.raises(ValueError, match="must be"):
        S.split_universality(fa, fa, {s: m[:-1] for s, m in good.items()})
    bad = dict(good)
    s0 = min(good)
    bad[s0] = good[s0] + 1000
    with pytest.raises(ValueError, match="does not have"):
        S.split_universality(fa, fa, bad)
    unmatched = {s: np.full_like(m, -1) for s, m in good.items()}
    assert S.split_universality(fa, fa, unmatched, n_shuffles=2)["n_mapped"] == 0
