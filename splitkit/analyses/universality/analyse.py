"""The universality analysis of two runs' cached artifacts (:func:`analyse`), and the mean and interval
of its headline figures over dictionary replicates (:func:`replicate_summary`)."""

from __future__ import annotations

import numpy as np

from ... import correlation, effects
from ...config import Config
from .blocks import decoder_block, redundancy_block
from .figures import _match_block, one_to_one_method
from .side import Side
from .stats import (
    _med,
    bootstrap_difference,
    bootstrap_median,
    counted_mask,
    density_bins,
)
from .views import (
    _attr_corr_dense,
    _pair_logit_corr,
    _rows_of,
    _scaled_rows,
    centred_effects,
)


def analyse(a: Side, b: Side, next_tokens: np.ndarray, cfg: Config, top_token_ids: tuple | None = None,
            inv_sigma: tuple | None = None) -> dict:
    """Match A to B for features and neurons; returns ``{"features": df, "neurons": df, "summary": {...}}``.

    ``next_tokens: [n_tokens]``: the token following each analysis position (-1 where none), for the
    attribution view. ``inv_sigma``: optional ``(inv_sigma_a [m], inv_sigma_b [m])``, the final layer
    norm's true 1/sigma at the first ``m`` analysis positions of each LM; when given, the attribution
    view is also computed with it on those positions, beside the frozen-scale one.

    One exclusion rule for features and neurons (:func:`counted_mask`): a unit counts when it fires
    on at least ``analysis.min_count`` tokens and on at least ``analysis.ultralow_density`` of them.
    """
    from .. import redundancy as R

    ac = cfg.analysis
    FA, FB = a.feature_acts, b.feature_acts
    n_tok = FA.shape[0]
    if FB.shape[0] != n_tok or a.neuron_acts.shape[0] != n_tok or b.neuron_acts.shape[0] != n_tok:
        raise ValueError("runs A and B must be analysed over the same analysis tokens")
    if len(next_tokens) != n_tok:
        raise ValueError(f"next_tokens must have one entry per analysis token ({n_tok}), got {len(next_tokens)}")
    rng = np.random.default_rng(ac.shuffle_seed)

    assignment = one_to_one_method(FA.shape[1], FB.shape[1])
    if assignment == "dense":  # keep the matrix: the de-duplicated matching below reads it
        feats, fmatrix = correlation.match_with_matrix(FA, FB, k=ac.top_k)
    else:
        feats, fmatrix = correlation.match(FA, FB, k=ac.top_k, assignment=assignment), None
    # neurons come as CSR (load_side), so the sparse engine gives exact correlations (dtype only
    # matters for dense inputs, where float32 stays within ~1e-6); column statistics once for the
    # match and the chance level
    NA, NB = correlation.prepare(a.neuron_acts, "neurons A"), correlation.prepare(b.neuron_acts, "neurons B")
    neurons = correlation.match(NA, NB, k=ac.top_k, dtype=np.float32)

    counts_a = np.asarray(FA.getnnz(axis=0))
    counts_b = np.asarray(FB.getnnz(axis=0))
    counted = counted_mask(counts_a, n_tok, ac.ultralow_density, ac.min_count)
    counted_b = counted_mask(counts_b, n_tok, ac.ultralow_density, ac.min_count)
    alive = counts_a > 0
    ncounts_a = np.asarray(NA.nnz)
    n_counted = counted_mask(ncounts_a, n_tok, ac.ultralow_density, ac.min_count)
    n_alive = ncounts_a > 0

    chance_f = correlation.shuffled_baseline(FA, FB, seed=ac.shuffle_seed, k=1)
    chance_n = correlation.shuffled_baseline(NA, NB, seed=ac.shuffle_seed, k=1, dtype=np.float32)

    # logit-effect views: raw, and centred (the mean effect over all units of the basis removed)
    LA, LB = a.logit_effects, b.logit_effects
    NLA, NLB = a.neuron_logit_effects, b.neuron_logit_effects
    CLA, CLB, CNA, CNB = centred_effects(LA), centred_effects(LB), centred_effects(NLA), centred_effects(NLB)
    fb = feats.best_b.to_numpy()
    nb = neurons.best_b.to_numpy()  # -1 for a dead neuron: its rows stay NaN
    feats["logit_corr_of_match"] = _pair_logit_corr(LA, LB, feats.a.to_numpy(), fb)
    feats["logit_corr_centred_of_match"] = _pair_logit_corr(CLA, CLB, feats.a.to_numpy(), fb)
    lbest = effects.logit_effect_match(LA, LB, k=1)
    feats["logit_best_b"] = lbest.index[:, 0]
    feats["logit_best_corr"] = lbest.value[:, 0]
    neurons["logit_corr_of_match"] = _pair_logit_corr(NLA, NLB, neurons.a.to_numpy(), nb)
    neurons["logit_corr_centred_of_match"] = _pair_logit_corr(CNA, CNB, neurons.a.to_numpy(), nb)

    # baselines: random pairs (A's counted units with B's counted units, uniform, seeded) and the pairs
    # the shuffled-token matching finds, both correlated on the real tokens
    ra = np.flatnonzero(counted)
    rb_pool = np.flatnonzero(counted_b) if counted_b.any() else np.arange(FB.shape[1])
    rand_fb = rng.choice(rb_pool, ra.size) if ra.size else np.zeros(0, np.int64)
    nra = np.flatnonzero(n_counted)
    rand_nb = rng.choice(np.flatnonzero(counted_mask(np.asarray(NB.nnz), n_tok, ac.ultralow_density, ac.min_count)),
                         nra.size) if nra.size else np.zeros(0, np.int64)
    sh_fb = chance_f.index[:, 0]
    sh_nb = chance_n.index[:, 0]

    # attribution view: activation x logit effect on the token that actually comes next
    valid = next_tokens >= 0
    idx_valid = np.flatnonzero(valid)
    nxt = next_tokens[idx_valid]
    # attribution vectors (float64, the activations' pattern) and their column statistics once for
    # every pair set; the positions with a next token are a prefix (only the last one lacks it), so
    # they are a view of the rows, not a copy
    XA = correlation.prepare(effects.attribution_vectors(_rows_of(FA, idx_valid), LA, nxt), "attribution A")
    XB = correlation.prepare(effects.attribution_vectors(_rows_of(FB, idx_valid), LB, nxt), "attribution B")

    def attr_f(ia, ib):
        out = np.full(len(ia), np.nan)
        ok = (ia >= 0) & (ib >= 0)
        if ok.any():
            out[ok] = correlation.paired_correlation(XA, XB, ia[ok], ib[ok])
        return out

    feats["attribution_corr_of_match"] = attr_f(feats.a.to_numpy(), fb)
    # neurons' attribution over at most the first 1M analysis positions (dense [n_tokens, 512] activations)
    m_n = idx_valid[: 1 << 20]
    NAv, NBv = _rows_of(a.neuron_acts, m_n), _rows_of(b.neuron_acts, m_n)
    neurons["attribution_corr_of_match"] = _attr_corr_dense(NAv, NBv, NLA, NLB, next_tokens[m_n],
                                                             neurons.a.to_numpy(), nb)
    cm = counted
    baselines = {
        "how": ("random pairs: each counted A unit with a uniformly drawn counted B unit (seed analysis.shuffle_seed); "
                "shuffled-token matches: the pair the same matching finds after B's token order is permuted, "
                "then correlated on the real tokens; centred: each basis' mean logit-effect vector over all its "
                "units subtracted from every row before correlating"),
        "features": {
            "random_logit_corr_median": _med(_pair_logit_corr(LA, LB, ra, rand_fb)),
            "random_logit_corr_centred_median": _med(_pair_logit_corr(CLA, CLB, ra, rand_fb)),
            "random_attribution_corr_median": _med(attr_f(ra, rand_fb)),
            "random_act_corr_median": _med(correlation.paired_correlation(FA, FB, ra, rand_fb)),
            "shuffled_logit_corr_median": _med(_pair_logit_corr(LA, LB, np.arange(len(sh_fb)), sh_fb)[cm]),
            "shuffled_logit_corr_centred_median": _med(_pair_logit_corr(CLA, CLB, np.arange(len(sh_fb)), sh_fb)[cm]),
            "shuffled_attribution_corr_median": _med(attr_f(ra, sh_fb[ra])),
        },
        "neurons": {
            "random_logit_corr_median": _med(_pair_logit_corr(NLA, NLB, nra, rand_nb)),
            "random_logit_corr_centred_median": _med(_pair_logit_corr(CNA, CNB, nra, rand_nb)),
            "random_attribution_corr_median": _med(_attr_corr_dense(NAv, NBv, NLA, NLB, next_tokens[m_n], nra, rand_nb)),
            "random_act_corr_median": _med(correlation.paired_correlation(NA, NB, nra, rand_nb)),
            "shuffled_logit_corr_median": _med(_pair_logit_corr(NLA, NLB, nra, sh_nb[nra])),
            "shuffled_logit_corr_centred_median": _med(_pair_logit_corr(CNA, CNB, nra, sh_nb[nra])),
            "shuffled_attribution_corr_median": _med(_attr_corr_dense(NAv, NBv, NLA, NLB, next_tokens[m_n], nra,
                                                                      sh_nb[nra])),
        },
        "n_neuron_attribution_tokens": int(m_n.size),
    }
    XA = XB = None  # noqa: F841 (the attribution vectors' last use is above: ~1 GB at the default for what follows)

    # the attribution view with the final LN's true per-position 1/sigma instead of a frozen one
    exact = None
    if inv_sigma is not None:
        sa, sb = (np.asarray(v, np.float64) for v in inv_sigma)
        m = min(len(sa), len(sb), n_tok)
        pos = idx_valid[idx_valid < m]
        ia = np.flatnonzero(counted)
        PA, PB = _rows_of(FA, pos), _rows_of(FB, pos)
        frozen = effects.attribution_similarity(PA, PB, LA, LB, next_tokens[pos], ia, fb[ia])
        true = effects.attribution_similarity(_scaled_rows(PA, sa[pos]), _scaled_rows(PB, sb[pos]), LA, LB,
                                              next_tokens[pos], ia, fb[ia])
        d = np.abs(true - frozen)
        exact = {"n_tokens": int(pos.size), "frozen_median": _med(frozen), "exact_median": _med(true),
                 "median_abs_diff": _med(d), "p95_abs_diff": float(np.nanquantile(d, 0.95)) if np.isfinite(d).any() else None,
                 "inv_sigma_cv_a": float(sa[:m].std() / sa[:m].mean()), "inv_sigma_cv_b": float(sb[:m].std() / sb[:m].mean())}

    feats["count_a"] = counts_a
    feats["counted"] = counted
    neurons["count_a"] = ncounts_a
    neurons["counted"] = n_counted

    fs = _match_block(feats, counted)
    fs_all = _match_block(feats, alive)
    ns = _match_block(neurons, n_counted)
    ns_all = _match_block(neurons, n_alive)
    ncorr = neurons["corr"].to_numpy(np.float64)
    fcorr = feats["corr"].to_numpy(np.float64)

    # redundancy: in-dictionary twins (over at most the first 1M analysis tokens) and the matching views
    n_twin = min(n_tok, TWIN_TOKENS)
    red_a, cl_a = redundancy_block(FA, a.W_dec, counts_a, counted, n_twin)
    red_b, cl_b = redundancy_block(FB, b.W_dec, counts_b, counted_b, n_twin)
    red_na, _ = redundancy_block(a.neuron_acts, None, ncounts_a, n_counted, n_twin)
    views = R.view_figures(feats, counted)
    ia, ib = np.flatnonzero(cl_a.representative), np.flatnonzero(cl_b.representative)
    if fmatrix is not None:
        dd = fmatrix.match(ia, ib, k=ac.top_k)
    else:
        dd = correlation.match(FA[:, ia], FB[:, ib], k=ac.top_k, assignment=one_to_one_method(ia.size, ib.size))
    del fmatrix
    dviews = R.view_figures(dd, counted[ia])
    views.update({f"dedup_{k}": v for k, v in dviews.items()})
    views["dedup_n_b"] = int(ib.size)
    views["dedup_how"] = ("one representative per activation-twin cluster at 0.9 (the most frequently firing member) "
                          "in each dictionary; A's counted representatives matched against all of B's representatives")
    nviews = R.view_figures(neurons, n_counted)
    decoder = decoder_block(a, b, n_alive, np.asarray(NB.nnz) > 0, ac.shuffle_seed)

    summary = {
        "n_analysis_tokens": int(n_tok),
        "exclusion_rule": (f"features and neurons alike: counted when they fire on >= {ac.min_count} analysis tokens and "
                           f"on a share >= {ac.ultralow_density:g} of them (ultralow below; the paper: 1e-6)"
                           + (f"; {ac.ultralow_density:g} x {n_tok:,} tokens = {ac.ultralow_density * n_tok:.2f} "
                              "firings, under one, so ultralow and dead coincide" if ac.ultralow_density * n_tok <= 1 else "")),
        "features": {**fs, "which": f"counted: alive, >= {ac.min_count} firings and density >= {ac.ultralow_density:g} "
                                    f"over the analysis tokens ({int(counted.sum())} of {len(feats)})",
                     "all_alive": fs_all,
                     "median_max_act_corr_dead_as_0": float(np.median(np.nan_to_num(fcorr, nan=0.0))),
                     "n_dead": int((~alive).sum()), "n_excluded_rare": int((alive & ~counted).sum())},
        "neurons": {**ns, "all_alive": ns_all,
                    "median_max_act_corr_dead_as_0": float(np.median(np.nan_to_num(ncorr, nan=0.0))),
                    "n_dead": int((~n_alive).sum()), "n_excluded_rare": int((n_alive & ~n_counted).sum())},
        "chance": {"features_shuffled_median_max_act_corr": float(np.nanmedian(chance_f.value[counted, 0]))
                   if counted.any() else None,
                   "neurons_shuffled_median_max_act_corr": _med(chance_n.value[n_counted, 0]),
                   "how": "B's token order permuted (seeded), then the same matching"},
        "baselines": baselines,
        "views": {"features": views, "neurons": nviews,
                  "how": "many_to_one: best B match per A unit (the paper's median); one_to_one: the assignment "
                         f"({assignment} for features), unassigned as 0; mutual: best matches that point back"},
        "redundancy": {"A": red_a, "B": red_b, "neurons_A": red_na,
                       "how": "twin = most similar OTHER unit of the same basis (activation correlation over the first "
                              f"{n_twin:,} analysis tokens; decoder cosine); shares over the counted units; clusters = "
                              "connected components of the top-8 twin graph above 0.9"},
        "intervals": {
            "features_median": bootstrap_median(fcorr[counted], seed=ac.shuffle_seed),
            "neurons_median": bootstrap_median(ncorr[n_counted], seed=ac.shuffle_seed + 1),
            "features_minus_neurons": bootstrap_difference(fcorr[counted], ncorr[n_counted], seed=ac.shuffle_seed + 2),
            "features_one_to_one_median": bootstrap_median(
                np.nan_to_num(feats["assign_corr"].to_numpy(np.float64), nan=0.0)[counted & np.isfinite(fcorr)],
                seed=ac.shuffle_seed + 3),
            "how": "percentile bootstrap over units (1,000 resamples, seeded), 95%; the difference resamples "
                   "features and neurons independently",
        },
    }
    if decoder is not None:
        summary["decoder_cosine"] = decoder
    if exact is not None:
        summary["attribution_scale"] = {**exact, "how": (
            "attribution correlation of the matched counted features with the final layer norm's 1/sigma frozen "
            "(the default view) against the true per-position 1/sigma of each LM, on the first positions")}
    summary["features_minus_neurons_median"] = (
        fs["median_max_act_corr"] - ns["median_max_act_corr"]
        if fs["median_max_act_corr"] is not None and ns["median_max_act_corr"] is not None else None)
    bins_f = density_bins(feats["density_a"].to_numpy(), np.where(counted, feats["corr"].to_numpy(), np.nan))
    bins_f_all = density_bins(feats["density_a"].to_numpy(), feats["corr"].to_numpy())
    bins_n = density_bins(neurons["density_a"].to_numpy(), neurons["corr"].to_numpy())
    feats["cluster_a"] = cl_a.labels
    feats["representative_a"] = cl_a.representative
    return {"features": feats, "neurons": neurons, "summary": summary,
            "density_bins": {"features": bins_f_all, "features_counted": bins_f, "neurons": bins_n},
            "chance": {"features": chance_f.value[:, 0], "neurons": chance_n.value[:, 0]}}


#: the figures a replicate summary gives as mean and interval: name -> path into an analysis summary
REPLICATE_FIGURES = {
    "features_median": ("features", "median_max_act_corr"),
    "neurons_median": ("neurons", "median_max_act_corr"),
    "features_minus_neurons": ("features_minus_neurons_median",),
    "features_one_to_one_median": ("views", "features", "one_to_one_median"),
    "features_dedup_median": ("views", "features", "dedup_many_to_one_median"),
    "decoder_share_above": ("decoder_cosine", "features", "share_above"),
    "twin_share_act_A": ("redundancy", "A", "twin_share_act_0.9"),
    "twin_share_act_B": ("redundancy", "B", "twin_share_act_0.9"),
}


def replicate_summary(summaries: list[dict], how: str, level: float = 0.95) -> dict:
    """Mean and Student-t interval over replicates of each :data:`REPLICATE_FIGURES` figure.

    ``summaries``: the ``analyse(...)["summary"]`` of each replicate (K >= 1; with K = 1 the interval
    is undefined, None). Returns ``{"k", "how", "level", "figures": {name: {"mean", "lo", "hi", "sd",
    "values"}}}``.
    """
    from scipy import stats

    if not summaries:
        raise ValueError("replicate_summary needs the summary of at least one replicate")
    out = {}
    for name, path in REPLICATE_FIGURES.items():
        vals = []
        for sm in summaries:
            v = sm
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            vals.append(None if v is None else float(v))
        x = np.array([v for v in vals if v is not None], np.float64)
        k = x.size
        mean = float(x.mean()) if k else None
        sd = float(x.std(ddof=1)) if k > 1 else None
        half = float(stats.t.ppf(0.5 + level / 2, k - 1) * sd / np.sqrt(k)) if k > 1 else None
        out[name] = {"mean": mean, "sd": sd, "lo": None if half is None else mean - half,
                     "hi": None if half is None else mean + half, "values": vals}
    return {"k": len(summaries), "how": how, "level": level, "figures": out}


#: activation twins are searched over at most this many analysis tokens (cost: a self-match of the dictionary)
TWIN_TOKENS = 1_000_000
