"""In-dictionary twins, copy clusters and the matching views, on planted dictionaries.

Every planted feature ("atom") fires on its own disjoint set of tokens, so two different atoms
correlate at -mu_a mu_b / (sd_a sd_b) (a few thousandths below 0), an exact copy at 1, a copy that
fires on 90% of the atom's tokens at about sqrt(0.9), and the atom against "the atom plus the same
values on as many other tokens" at about 1/sqrt(2): the figures below follow from the design.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from splitkit.analyses import redundancy as R

N_TOK = 40_000
PER_ATOM = 100


class Planted:
    """Disjoint-support atoms over N_TOK tokens; columns are built from them."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.free = self.rng.permutation(N_TOK)
        self.used = 0

    def atom(self):
        tok = np.sort(self.free[self.used:self.used + PER_ATOM])
        self.used += PER_ATOM
        return tok, self.rng.uniform(0.5, 1.5, PER_ATOM)

    def grow(self, atom):
        """The atom plus its own values again on as many fresh tokens (corr with the atom ~ 0.707)."""
        tok, val = atom
        extra = np.sort(self.free[self.used:self.used + PER_ATOM])
        self.used += PER_ATOM
        return np.concatenate([tok, extra]), np.concatenate([val, val])


def _csr(cols):
    rows = np.concatenate([c[0] for c in cols])
    vals = np.concatenate([c[1] for c in cols])
    ids = np.concatenate([np.full(len(c[0]), j) for j, c in enumerate(cols)])
    return sp.csr_matrix((vals.astype(np.float32), (rows, ids)), shape=(N_TOK, len(cols)))


def _noisy(atom, rng):
    """A copy firing on 90% of the atom's tokens with values jittered by up to 10% (corr ~0.94)."""
    tok, val = atom
    keep = np.sort(rng.choice(tok.size, int(0.9 * tok.size), replace=False))
    return tok[keep], val[keep] * rng.uniform(0.9, 1.1, keep.size)


def _dictionary_with_copies():
    """40 atoms; atoms 0-4 get 2 exact copies each, atoms 5-9 one noisy copy each; 2 dead columns."""
    P = Planted(1)
    atoms = [P.atom() for _ in range(40)]
    cols = list(atoms)
    group = {j: j for j in range(40)}
    for a in range(5):
        for _ in range(2):
            group[len(cols)] = a
            cols.append(atoms[a])
    for a in range(5, 10):
        group[len(cols)] = a
        cols.append(_noisy(atoms[a], P.rng))
    dead = [len(cols), len(cols) + 1]
    cols += [(np.zeros(0, np.int64), np.zeros(0))] * 2
    return _csr(cols), group, dead


def test_activation_twins_shares_and_clusters():
    acts, group, dead = _dictionary_with_copies()
    n = acts.shape[1]  # 40 + 10 + 5 + 2 = 57
    tw = R.activation_twins(acts, k=4)
    assert not tw.alive[dead].any() and (tw.twin[dead] == -1).all() and np.isnan(tw.twin_value[dead]).all()
    assert not np.isin(tw.index, dead).any()  # dead columns are nobody's twin
    live = np.flatnonzero(tw.alive)
    assert live.size == n - 2
    for i in live:
        j = tw.twin[i]
        assert j != i
        if i in group and any(group[o] == group[i] for o in group if o != i):
            assert group[j] == group[i]  # a copy's twin is in its own group
    # copies: 5 groups of 3 exact + 5 pairs of noisy = 25 features with a twin > 0.9
    summ = R.redundancy_summary(acts, threshold=0.9, k=4)
    assert summ["twin_share_act_0.9"] == pytest.approx(25 / 55)
    assert summ["n_clusters_act_0.9"] == 55 - 10 - 5  # 40 distinct atoms
    assert summ["n_alive_act"] == 55 and summ["n_features"] == 57
    assert abs(summ["twin_median_act_corr"]) < 0.02  # 30 of 55 have only disjoint atoms around
    exact = [i for i in live if group[i] < 5]
    assert np.allclose(tw.twin_value[exact], 1.0, atol=1e-6)
    noisy = [i for i in live if 5 <= group[i] < 10]
    assert (tw.twin_value[noisy] > 0.9).all() and (tw.twin_value[noisy] < 0.99).all()


def test_clusters_labels_and_representatives():
    acts, group, dead = _dictionary_with_copies()
    tw = R.activation_twins(acts, k=4)
    counts = np.asarray(acts.getnnz(axis=0))
    cl = R.twin_clusters(tw, 0.9, counts)
    assert cl.n_clusters == 40 and cl.n_saturated == 0
    assert (cl.labels[dead] == -1).all() and not cl.representative[dead].any()
    live = np.flatnonzero(tw.alive)
    # same label iff same planted atom
    g = np.array([group[i] for i in live])
    lab = cl.labels[live]
    assert (np.equal.outer(g, g) == np.equal.outer(lab, lab)).all()
    assert sorted(np.bincount(lab).tolist()) == [1] * 30 + [2] * 5 + [3] * 5
    # one representative per cluster; for the noisy pairs it is the atom (100 firings, not 90)
    assert cl.representative.sum() == 40
    assert np.bincount(cl.labels[cl.representative], minlength=40).tolist() == [1] * 40
    assert cl.representative[5:10].all()
    # a higher threshold than the noisy copies' correlation separates them
    assert R.twin_clusters(tw, 0.995, counts).n_clusters == 45


def test_clusters_see_chains_through_the_top_k_graph():
    """a ~ b ~ c (each above t) but a and c below t: single linkage puts all three together."""
    P = Planted(3)
    base = P.atom()
    tok, val = base
    # b: the atom; a: b's first 90 tokens plus 10 fresh; c: b's last 90 plus 10 fresh
    fresh = np.sort(P.free[P.used:P.used + 20])
    P.used += 20
    a = (np.concatenate([tok[:90], fresh[:10]]), np.concatenate([val[:90], val[:10]]))
    c = (np.concatenate([tok[10:], fresh[10:]]), np.concatenate([val[10:], val[:10]]))
    cols = [a, base, c] + [P.atom() for _ in range(5)]
    acts = _csr(cols)
    tw = R.activation_twins(acts, k=3)
    C = np.corrcoef(acts.toarray().T)
    assert C[0, 1] > 0.85 and C[1, 2] > 0.85 and C[0, 2] < C[0, 1]
    t = (C[0, 2] + min(C[0, 1], C[1, 2])) / 2
    cl = R.twin_clusters(tw, t)
    assert cl.labels[0] == cl.labels[1] == cl.labels[2] and cl.n_clusters == 6


def test_clusters_join_one_way_edges():
    """With one twin per feature, three exact copies give edges 0->1, 1->0, 2->0 (or similar):
    one cluster even though not every edge goes both ways; all three lists are saturated."""
    P = Planted(5)
    base = P.atom()
    acts = _csr([base, base, base] + [P.atom() for _ in range(4)])
    tw = R.activation_twins(acts, k=1)
    assert tw.index.shape == (7, 1)
    cl = R.twin_clusters(tw, 0.9)
    assert cl.n_clusters == 5 and cl.labels[0] == cl.labels[1] == cl.labels[2]
    assert cl.n_saturated == 3
    assert cl.representative[:3].sum() == 1


def _gaussian_dictionary(seed=0, n_base=60, d=64):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_base, d))
    copies = []
    for j in range(8):  # rows 0-7 get one noisy copy each, rows 0-2 a second one
        copies.append(W[j] * 1.7 + 0.05 * rng.standard_normal(d))
    for j in range(3):
        copies.append(W[j] * 0.4 + 0.05 * rng.standard_normal(d))
    W = np.vstack([W, np.array(copies), np.zeros((1, d))])
    return W


def test_decoder_twins_match_brute_force_and_chunking():
    W = _gaussian_dictionary()
    n = W.shape[0]  # 60 + 11 + 1 zero row
    U = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-300)
    C = U @ U.T
    np.fill_diagonal(C, -np.inf)
    C[:, -1] = -np.inf
    for chunk in (5, 1024):
        tw = R.decoder_twins(W, k=3, chunk_rows=chunk)
        assert tw.twin[-1] == -1 and not tw.alive[-1]
        live = np.arange(n - 1)
        assert (tw.twin[live] == C[live].argmax(1)).all()
        assert np.allclose(tw.twin_value[live], C[live].max(1))
        second = np.sort(C[live], axis=1)[:, -2]
        assert np.allclose(tw.value[live, 1], second)
    full = R.decoder_twins(W, k=n - 1, chunk_rows=7)  # every list reaches the far end
    assert not np.isin(full.index, [n - 1]).any()  # the zero row is nobody's twin
    assert (full.index[: n - 1, : n - 2] >= 0).all() and (full.index[:, n - 2] == -1).all()
    s = R.redundancy_summary(W_dec=W, threshold=0.9, k=4)
    # rows 0-2 with their 2 copies (9) and rows 3-7 with their copy (10) have a twin above 0.9
    assert s["twin_share_dec_0.9"] == pytest.approx(19 / 71)
    assert s["n_clusters_dec_0.9"] == 60
    assert s["n_alive_dec"] == 71


def _pair():
    """A and B over the same tokens with a planted shared fraction and copies in A.

    30 shared atoms (the same column in A and B, B's scaled by 2: corr 1); 20 'half' atoms (B's
    column is the atom plus its values again on fresh tokens: corr ~0.707); 40 atoms private to each
    side (disjoint from everything: corr ~ -0.003); A holds 2 extra exact copies of shared atoms
    0-15 (32 features), B 1 extra copy of shared atoms 20-24.
    A: 30 + 32 + 20 + 40 = 122 features, 62 of them with a perfect partner: the many-to-one median
    (61st/62nd of 122) is 1; one-to-one only 30 get 1 and 20 get ~0.707, so its median sits among
    the ~0 ones; de-duplicated, 30 + 20 + 40 = 90 representatives on each side: median (45th/46th)
    ~0.707, the same one-to-one.
    """
    P = Planted(7)
    shared = [P.atom() for _ in range(30)]
    half_a = [P.atom() for _ in range(20)]
    half_b = [P.grow(a) for a in half_a]
    priv_a = [P.atom() for _ in range(40)]
    priv_b = [P.atom() for _ in range(40)]
    cols_a = shared + [shared[j] for j in range(16) for _ in range(2)] + half_a + priv_a
    cols_b = [(t, 2 * v) for t, v in shared] + [shared[j] for j in range(20, 25)] + half_b + priv_b
    half_corr = np.array([np.corrcoef(_csr([a, b]).toarray().T)[0, 1] for a, b in zip(half_a, half_b)])
    return _csr(cols_a), _csr(cols_b), half_corr


def test_matching_views_many_to_one_one_to_one_dedup():
    A, B, half_corr = _pair()
    assert A.shape[1] == 122 and B.shape[1] == 95
    ca = R.twin_clusters(R.activation_twins(A, k=4), 0.9, A.getnnz(axis=0))
    cb = R.twin_clusters(R.activation_twins(B, k=4), 0.9, B.getnnz(axis=0))
    assert ca.n_clusters == 90 and cb.n_clusters == 90
    v = R.matching_views(A, B, reps_a=ca.representative, reps_b=cb.representative, k=4, assignment="dense")
    assert v["n"] == 122 and v["dedup_n"] == 90 and v["dedup_n_b"] == 90
    assert v["many_to_one_median"] == pytest.approx(1.0, abs=1e-6)
    assert abs(v["one_to_one_median"]) < 0.01
    # de-duplicated: the median of 30 ones, 20 half-shared and 40 ~0 is the middle half-shared pair
    srt = np.sort(half_corr)[::-1]
    expect = (srt[14] + srt[15]) / 2  # 45th and 46th of 90, counting 30 ones first
    assert v["dedup_many_to_one_median"] == pytest.approx(expect, abs=1e-6)
    assert v["dedup_one_to_one_median"] == pytest.approx(expect, abs=1e-6)
    assert 0.65 < expect < 0.75
    # 62 A features share 30 B best matches; with the 20 half and 40 private ones (whose best is any
    # of B's nearly-equal private columns) far fewer distinct B features than A features are used
    assert v["n_distinct_best"] < 122 - 32 + 1
    # mutual: one per shared atom, one per half atom; privates' best are ~0 ties, rarely mutual
    assert v["dedup_mutual_share"] >= 50 / 90
    assert v["mutual_share"] < v["dedup_mutual_share"]
    assert v["dedup_mutual_median"] >= expect - 1e-6
    # the sparse top-k assignment gives the same one-to-one figures here
    w = R.matching_views(A, B, reps_a=ca.representative, reps_b=cb.representative, k=4, assignment="topk")
    assert w["dedup_one_to_one_median"] == pytest.approx(expect, abs=1e-6)
    assert abs(w["one_to_one_median"]) < 0.01


def test_inputs_validated():
    A, B, _ = _pair()
    with pytest.raises(ValueError, match="reps_a"):
        R.matching_views(A, B, reps_a=np.ones(122, bool))
    with pytest.raises(ValueError, match="k must"):
        R.activation_twins(A, k=0)
    with pytest.raises(ValueError, match="W_dec"):
        R.decoder_twins(np.ones(5))
    with pytest.raises(ValueError, match="needs acts"):
        R.redundancy_summary()
