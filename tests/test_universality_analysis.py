"""The universality analysis and its metrics against answers known by construction.

Planted pairs of dictionaries: every "atom" fires on its own disjoint set of tokens. Run A holds
``N_SHARED`` atoms that B holds too (B's copy fires on a known share q of the atom's tokens, so the
pair correlates at about sqrt(q), and exactly at what a float64 ``np.corrcoef`` gives), ``N_OWN``
atoms of its own, and ``COPIES`` exact copies of each of the first ``N_DUP`` shared atoms. B's columns
are permuted. The reference medians are computed here independently (dense ``np.corrcoef``, scipy's
Hungarian) and the analysis must reproduce them: many-to-one (the paper's), one-to-one and
de-duplicated (one representative per copy cluster).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment

from splitkit.analyses import universality as U
from splitkit.config import AnalysisConfig, get_preset

N_TOK = 30_000
PER_ATOM = 120
N_SHARED, N_OWN, N_DUP, COPIES = 24, 16, 8, 3
N_B_OWN = 12
VOCAB = 40
D_MLP = 12


def _planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    free = rng.permutation(N_TOK)
    used = 0

    def atom():
        nonlocal used
        tok = np.sort(free[used:used + PER_ATOM])
        used += PER_ATOM
        return tok, rng.uniform(0.5, 1.5, PER_ATOM)

    shared = [atom() for _ in range(N_SHARED)]
    own_a = [atom() for _ in range(N_OWN)]
    own_b = [atom() for _ in range(N_B_OWN)]
    # A: shared atoms, its own atoms, then exact copies of the first N_DUP shared atoms (same counts:
    # the original, at the lower index, is each cluster's representative)
    cols_a = shared + own_a + [shared[i] for i in range(N_DUP) for _ in range(COPIES)]
    # B: each shared atom on a share q of its tokens (q spread so the medians are distinct values)
    q = np.linspace(0.3, 1.0, N_SHARED)
    cols_b = []
    for (tok, val), qi in zip(shared, q):
        keep = np.sort(rng.choice(tok.size, int(round(qi * tok.size)), replace=False))
        cols_b.append((tok[keep], val[keep]))
    cols_b += own_b
    perm_b = rng.permutation(len(cols_b))  # B's columns in another order
    cols_b = [cols_b[j] for j in np.argsort(perm_b)]  # planted column j of B sits at perm_b[j]
    return _csr(cols_a), _csr(cols_b), perm_b, rng


def _csr(cols):
    rows = np.concatenate([c[0] for c in cols])
    vals = np.concatenate([c[1] for c in cols])
    ids = np.concatenate([np.full(len(c[0]), j) for j, c in enumerate(cols)])
    return sp.csr_matrix((vals.astype(np.float32), (rows, ids)), shape=(N_TOK, len(cols)))


def _dense_corr(X, Y):
    X = np.asarray(X.todense() if sp.issparse(X) else X, np.float64)
    Y = np.asarray(Y.todense() if sp.issparse(Y) else Y, np.float64)
    C = np.corrcoef(X.T, Y.T)[: X.shape[1], X.shape[1]:]
    C[~np.isfinite(C)] = np.nan
    return C


def _sides(shuffle_b: bool = False):
    FA, FB, perm_b, rng = _planted()
    if shuffle_b:  # the reviewer's breakage: A against a B whose tokens are out of order
        FB = FB[rng.permutation(N_TOK)]
    # neurons: B's are A's permuted plus noise; A's neuron 0 is dead
    NA = np.maximum(rng.normal(0, 1, (N_TOK, D_MLP)), 0).astype(np.float32)
    NA[:, 0] = 0
    pn = rng.permutation(D_MLP)
    NB = (NA[:, pn] + np.maximum(rng.normal(0, 0.7, (N_TOK, D_MLP)), 0)).astype(np.float32)
    # logit effects: a vector common to every unit of a basis, plus each unit's own; B's shared atoms
    # (and B's neurons) act like their A partners
    common = 4 * rng.normal(0, 1, VOCAB)  # e.g. a token-frequency direction both LMs push along
    own = rng.normal(0, 1, (FA.shape[1], VOCAB))
    LA = own + common
    LB = rng.normal(0, 1, (FB.shape[1], VOCAB)) + common
    LB[perm_b[:N_SHARED]] += 2 * own[:N_SHARED]
    NLA = rng.normal(0, 1, (D_MLP, VOCAB)) + common
    NLB = NLA[pn] + rng.normal(0, 0.5, (D_MLP, VOCAB))
    mk = lambda F, N, L, NL: U.Side(feature_acts=F, neuron_acts=N, logit_effects=L.astype(np.float32),
                                    neuron_logit_effects=NL.astype(np.float32), sae_stats={}, lm_summary={},
                                    sae_id="planted", W_dec=None)
    nxt = rng.integers(0, VOCAB, N_TOK)
    return mk(FA, NA, LA, NLA), mk(FB, NB, LB, NLB), nxt, perm_b, pn


@pytest.fixture(scope="module")
def planted():
    a, b, nxt, perm_b, pn = _sides()
    cfg = get_preset("smoke").with_overrides(analysis={"min_count": 1})
    return a, b, nxt, perm_b, pn, U.analyse(a, b, nxt, cfg)


def test_planted_medians_many_to_one_one_to_one_dedup(planted):
    a, b, nxt, perm_b, pn, res = planted
    s = res["summary"]
    C = _dense_corr(a.feature_acts, b.feature_acts)  # [n_a, n_b] reference
    best = np.nanmax(C, 1)
    n_a = a.feature_acts.shape[1]
    # many-to-one, the paper's figure: every A feature's best correlation in B
    assert s["features"]["median_max_act_corr"] == pytest.approx(np.median(best), abs=1e-5)
    assert s["views"]["features"]["many_to_one_median"] == pytest.approx(np.median(best), abs=1e-5)
    # the planted partner is found (B's columns were permuted)
    f = res["features"]
    shared = np.arange(N_SHARED)
    assert (f["best_b"].to_numpy()[shared] == perm_b[shared]).all()
    copies = np.arange(N_SHARED + N_OWN, n_a)
    assert (f["best_b"].to_numpy()[copies] == perm_b[np.repeat(np.arange(N_DUP), COPIES)]).all()
    # one-to-one: Hungarian on the reference matrix; unassigned A features count as 0
    r, c = linear_sum_assignment(np.nan_to_num(C, nan=-1.0), maximize=True)
    one = np.zeros(n_a)
    one[r] = C[r, c]
    assert s["views"]["features"]["one_to_one_median"] == pytest.approx(np.median(one), abs=1e-5)
    assert s["intervals"]["features_one_to_one_median"]["median"] == pytest.approx(np.median(one), abs=1e-5)
    # with 24 copies (> a third of A) the paper's median counts each copy again; the one-to-one does not
    assert np.median(best) - np.median(one) > 0.2
    # de-duplicated: A's representatives are its N_SHARED + N_OWN distinct atoms, B has no copies
    dd = s["views"]["features"]
    assert dd["dedup_n"] == N_SHARED + N_OWN and dd["dedup_n_b"] == b.feature_acts.shape[1]
    assert dd["dedup_many_to_one_median"] == pytest.approx(np.median(best[: N_SHARED + N_OWN]), abs=1e-5)
    assert (f["representative_a"].to_numpy() == (np.arange(n_a) < N_SHARED + N_OWN)).all()
    # mutual: only the originals of shared atoms point back (a copy's partner prefers the lower index...
    # or an equal copy); the distinct best matches are the 24 shared atoms plus whatever the own atoms hit
    assert dd["n_distinct_best"] <= N_SHARED + N_OWN
    # twin statistics: N_DUP clusters of COPIES + 1 identical members in A, none in B
    red = s["redundancy"]
    assert red["A"]["twin_share_act_0.9"] == pytest.approx(N_DUP * (COPIES + 1) / n_a)
    assert red["A"]["n_clusters_act_0.9"] == N_SHARED + N_OWN
    assert red["A"]["largest_cluster_act"] == COPIES + 1
    assert red["B"]["twin_share_act_0.9"] == 0 and red["B"]["n_clusters_act_0.9"] == b.feature_acts.shape[1]


def test_planted_neurons_dead_rows_and_dead_as_zero(planted):
    a, b, nxt, perm_b, pn, res = planted
    s, nr = res["summary"], res["neurons"]
    C = _dense_corr(a.neuron_acts, b.neuron_acts)
    best = np.nanmax(C[1:], 1)  # neuron 0 is dead
    assert s["neurons"]["median_max_act_corr"] == pytest.approx(np.median(best), abs=1e-4)
    assert s["neurons"]["n_dead"] == 1 and s["neurons"]["n_included"] == D_MLP - 1
    assert s["neurons"]["median_max_act_corr_dead_as_0"] == pytest.approx(np.median(np.r_[0.0, best]), abs=1e-4)
    assert (nr["best_b"].to_numpy()[1:] == np.argsort(pn)[1:]).all()
    # the dead neuron has no match: its logit-effect and attribution rows are NaN, not B's last neuron's
    assert nr["best_b"].iloc[0] == -1
    assert np.isnan(nr["logit_corr_of_match"].iloc[0]) and np.isnan(nr["attribution_corr_of_match"].iloc[0])
    assert np.isfinite(nr["logit_corr_of_match"].to_numpy()[1:]).all()


def test_baselines_and_centred_logit_view(planted):
    a, b, nxt, perm_b, pn, res = planted
    s, f = res["summary"], res["features"]
    bf, bn = s["baselines"]["features"], s["baselines"]["neurons"]
    # every unit of a basis shares a large logit-effect component: random pairs correlate highly raw...
    assert bf["random_logit_corr_median"] > 0.6 and bn["random_logit_corr_median"] > 0.6
    # ...and near 0 once the basis' mean effect is removed, while matched shared atoms still correlate
    assert abs(bf["random_logit_corr_centred_median"]) < 0.2 and abs(bn["random_logit_corr_centred_median"]) < 0.2
    LA, LB = a.logit_effects.astype(np.float64), b.logit_effects.astype(np.float64)
    CA, CB = LA - LA.mean(0), LB - LB.mean(0)
    i = np.arange(N_SHARED)
    want = [np.corrcoef(CA[k], CB[perm_b[k]])[0, 1] for k in i]
    assert np.allclose(f["logit_corr_centred_of_match"].to_numpy()[i], want, atol=1e-5)
    assert np.median(want) > 0.5
    # activations: random pairs and shuffled-token matches sit near 0, far below the planted matches
    assert abs(bf["random_act_corr_median"]) < 0.05 and abs(bn["random_act_corr_median"]) < 0.1
    assert abs(bf["random_attribution_corr_median"]) < 0.05
    # the attribution of a matched pair against a float64 reference
    A = np.asarray(a.feature_acts.todense(), np.float64)
    B = np.asarray(b.feature_acts.todense(), np.float64)
    k = 3
    ref = np.corrcoef(A[:, k] * LA[k, nxt], B[:, perm_b[k]] * LB[perm_b[k], nxt])[0, 1]
    assert f["attribution_corr_of_match"].iloc[k] == pytest.approx(ref, abs=1e-6)
    # bootstrap interval brackets the median and is not degenerate
    iv = s["intervals"]["features_minus_neurons"]
    assert iv["lo"] < iv["diff"] < iv["hi"]


def test_shuffled_b_is_caught():
    """The reviewer's breakage: A matched against a B whose tokens are shuffled gives a median near 0."""
    a, b, nxt, *_ = _sides(shuffle_b=True)
    cfg = get_preset("smoke").with_overrides(analysis={"min_count": 1})
    C = _dense_corr(*_planted()[:2])
    res = U.analyse(a, b, nxt, cfg)
    assert res["summary"]["features"]["median_max_act_corr"] < 0.1 < np.median(np.nanmax(C, 1))


def test_counted_mask_on_a_planted_density_table():
    assert AnalysisConfig().ultralow_density == 1e-6  # the paper's threshold by default
    counts = np.array([0, 1, 2, 3, 5, 100, 2_000_000])
    # 2M tokens: 1e-6 of them is 2 firings; 2 counts (>=), 1 is ultralow, 0 dead
    assert U.counted_mask(counts, 2_000_000, 1e-6).tolist() == [False, False, True, True, True, True, True]
    assert U.counted_mask(counts, 2_000_000, 1e-6, min_count=3).tolist() == [False, False, False, True, True, True, True]
    # 500k tokens: 1e-6 is half a firing, so every feature that fires counts (ultralow = dead)
    assert U.counted_mask(counts, 500_000, 1e-6).tolist() == [False, True, True, True, True, True, True]
    st = U.neuron_density_stats(counts, 500_000, 1e-6)
    assert st["ultralow_below_one_firing"] and st["n_ultralow"] == 0 and st["n_dead"] == 1
    st = U.neuron_density_stats(counts, 2_000_000, 1e-6)
    assert not st["ultralow_below_one_firing"] and st["n_ultralow"] == 1 and st["n_counted"] == 5


def test_bootstrap_median_interval():
    rng = np.random.default_rng(0)
    v = rng.normal(0.3, 1.0, 4000)
    iv = U.bootstrap_median(v, seed=1)
    # the median's standard error for a normal sample: 1.2533 sigma / sqrt(n)
    se = 1.2533 / np.sqrt(v.size)
    assert iv["lo"] < np.median(v) < iv["hi"]
    assert (iv["hi"] - iv["lo"]) == pytest.approx(2 * 1.96 * se, rel=0.12)  # a mean's would be 20% narrower
    assert U.bootstrap_median(v, seed=1) == iv  # seeded


# --------------------------------------------------------------------------------------------
# loss recovered on hand-computable cases
# --------------------------------------------------------------------------------------------


def _tiny_lm():
    from splitkit.config import ModelConfig
    from splitkit.model import Transformer

    torch.manual_seed(0)
    m = Transformer(ModelConfig(d_model=16, n_heads=2, d_mlp=D_MLP, n_ctx=8), VOCAB)
    with torch.no_grad():  # peaked logits, and an MLP that dominates the residual stream
        m.unembed.weight.mul_(30.0)
        m.mlp.fc_out.weight.mul_(10.0)
    return m.eval()


def _own_tokens(model, n_win: int, seed: int) -> np.ndarray:
    """Windows whose tokens are the model's own greedy predictions (a random first token each), so the
    intact model predicts them well and ablating the MLP costs loss: ``[n_win * n_ctx + 1]``."""
    T = model.cfg.n_ctx
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.integers(0, VOCAB, (n_win, 1)))
    with torch.no_grad():
        while w.shape[1] < T:
            w = torch.cat([w, model(w)[:, -1].argmax(-1, keepdim=True)], 1)
    return np.r_[w.reshape(-1).numpy(), rng.integers(0, VOCAB)]


def _sae(W_enc, b_enc, W_dec, b_dec):
    from splitkit.sae import SAEConfig, SparseAutoencoder

    s = SparseAutoencoder(SAEConfig(d_in=D_MLP, n_features=W_enc.shape[1]))
    with torch.no_grad():
        for name, v in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(s, name).copy_(torch.as_tensor(v, dtype=torch.float32))
    return s


def _losses(model, tokens, edit):
    T = model.cfg.n_ctx
    n_win = (len(tokens) - 1) // T
    idx = np.arange(n_win)[:, None] * T + np.arange(T + 1)[None, :]
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    with torch.no_grad():
        logits = model(w[:, :-1], mlp_edit=edit)
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1)))


@pytest.mark.parametrize("sparse_decode", [False, True])
def test_evaluate_sae_loss_recovered_hand_computable(sparse_decode):
    from functools import partial

    from splitkit.features import HAVE_NUMBA
    from splitkit.metrics import evaluate_sae

    if sparse_decode and not HAVE_NUMBA:
        pytest.skip("the sparse decode needs numba")
    evaluate_sae = partial(evaluate_sae, sparse_decode=sparse_decode)

    model = _tiny_lm()
    tokens = _own_tokens(model, 40, seed=2)
    I = np.eye(D_MLP)
    z = np.zeros(D_MLP)
    mean = torch.zeros(D_MLP)
    L_orig = _losses(model, tokens, None)
    L_zero = _losses(model, tokens, lambda h: torch.zeros_like(h))
    L_half = _losses(model, tokens, lambda h: 0.5 * h)
    assert L_zero - L_orig > 0.1  # the planted MLP matters
    # perfect reconstruction (the neurons are ReLU outputs, so an identity dictionary keeps them): 100%
    ev = evaluate_sae(model, _sae(I, z, I, z), tokens, 8 * 40, mean)
    assert ev["loss_recovered_zero"] == pytest.approx(1.0, abs=1e-5)
    assert ev["fvu"] == pytest.approx(0.0, abs=1e-9)
    # zero activations (no feature fires, b_dec = 0): the zero-ablation loss, 0%
    ev = evaluate_sae(model, _sae(I, -np.ones(D_MLP), I, z), tokens, 8 * 40, mean)
    assert ev["loss_recovered_zero"] == pytest.approx(0.0, abs=1e-6) and ev["l0"] == 0
    # half-way: the reconstruction is half the activations; its value from the losses computed here
    ev = evaluate_sae(model, _sae(I, z, 0.5 * I, z), tokens, 8 * 40, mean)
    want = (L_zero - L_half) / (L_zero - L_orig)
    assert 0.05 < want < 0.95
    assert ev["loss_recovered_zero"] == pytest.approx(want, abs=1e-5)
    T = model.cfg.n_ctx
    w = torch.from_numpy(tokens[: 40 * T].astype(np.int64).reshape(40, T))
    with torch.no_grad():
        x = model.mlp_acts(w).reshape(-1, D_MLP).double()
    assert ev["fvu"] == pytest.approx(float((0.25 * x ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-4)


def test_replicate_summary_mean_and_t_interval():
    from scipy import stats

    vals = [0.70, 0.74, 0.72]
    sums = [{"features": {"median_max_act_corr": v}, "neurons": {"median_max_act_corr": 0.5},
             "features_minus_neurons_median": v - 0.5} for v in vals]
    r = U.replicate_summary(sums, "planted")
    f = r["figures"]["features_median"]
    half = stats.t.ppf(0.975, 2) * np.std(vals, ddof=1) / np.sqrt(3)
    assert r["k"] == 3 and f["mean"] == pytest.approx(0.72) and f["hi"] - f["mean"] == pytest.approx(half)
    assert r["figures"]["neurons_median"]["sd"] == 0 and r["figures"]["twin_share_act_A"]["mean"] is None
    one = U.replicate_summary(sums[:1], "one")["figures"]["features_median"]
    assert one["mean"] == 0.70 and one["lo"] is None


def test_decoder_block_maps_b_neuron_basis_and_finds_the_permuted_decoder():
    """B's neurons are A's permuted (plus noise): the fitted map is that permutation, so a decoder of B
    that is A's with rows shuffled and columns permuted matches fully, and A's neurons match B's."""
    import dataclasses

    a, b, _, _, pn = _sides()
    rng = np.random.default_rng(5)
    W = rng.normal(0, 1, (40, D_MLP))
    rows = rng.permutation(40)
    a = dataclasses.replace(a, W_dec=W)
    b = dataclasses.replace(b, W_dec=W[rows][:, pn])
    alive_a = np.asarray((a.neuron_acts != 0).sum(0)).ravel() > 0
    alive_b = np.asarray((b.neuron_acts != 0).sum(0)).ravel() > 0
    y = U.decoder_block(a, b, alive_a, alive_b)
    assert y["threshold"] == 0.7 and y["map_tokens"] == N_TOK
    # in 12 dimensions a random decoder's one-to-one matches clear 0.7 now and then, never mostly
    assert y["features"]["share_above"] == 1.0 and y["random"]["share_above"] < 0.3
    assert y["neurons"]["n"] == D_MLP - 1 and y["neurons"]["share_above"] == 1.0  # neuron 0 of A is dead
    assert U.decoder_block(dataclasses.replace(a, W_dec=None), b, alive_a, alive_b) is None


def test_evaluate_sae_sparse_decode_matches_dense_on_a_random_dictionary():
    from splitkit.features import HAVE_NUMBA
    from splitkit.metrics import evaluate_sae

    if not HAVE_NUMBA:
        pytest.skip("the sparse decode needs numba")
    model = _tiny_lm()
    tokens = _own_tokens(model, 40, seed=3)
    rng = np.random.default_rng(0)
    n = 96
    sae = _sae(rng.normal(size=(D_MLP, n)), rng.normal(-1.0, 0.5, n), rng.normal(size=(n, D_MLP)),
               rng.normal(size=D_MLP))
    dense = evaluate_sae(model, sae, tokens, 8 * 40, torch.zeros(D_MLP), sparse_decode=False)
    sparse = evaluate_sae(model, sae, tokens, 8 * 40, torch.zeros(D_MLP), sparse_decode=True)
    assert 1 < dense["l0"] < n - 1  # some fire, not all
    assert sparse["l0"] == dense["l0"]
    for key in ("mse", "fvu", "loss_sae", "loss_recovered_zero", "loss_recovered_mean"):
        assert sparse[key] == pytest.approx(dense[key], rel=1e-5, abs=1e-7), key
