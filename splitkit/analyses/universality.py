"""The universality analysis: do features of run A have counterparts in run B, more than neurons do?

A pure function of cached upstream artifacts (feature activations, neuron activations, dictionaries,
models) that returns tables and a summary; :mod:`splitkit.report` writes files.

Which features count. The paper leaves out dead features and its "ultralow density" cluster. We
count a feature when it fires on at least ``analysis.ultralow_density`` of the analysis tokens (and,
optionally, on at least ``analysis.min_count`` of them; 1 by default, i.e. the paper's exclusion
alone); every headline figure is also given over all features that fire at all (``all_alive``), so
the effect of the exclusion is visible.

Logit effects (``splitkit.effects``) come from the cached pipeline stage ``effects``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import correlation, effects
from ..config import Config


@dataclass
class Side:
    """Everything the analysis needs from one run (A or B)."""

    feature_acts: object  # scipy.sparse.csr_matrix [n_tokens, n_features]
    neuron_acts: object  # scipy.sparse.csr_matrix [n_tokens, d_mlp] float32 (or a dense ndarray)
    logit_effects: np.ndarray  # [n_features, vocab] float32 (the cached ``effects`` stage)
    neuron_logit_effects: np.ndarray  # [d_mlp, vocab] float32
    sae_stats: dict
    lm_summary: dict
    sae_id: str


def counted_mask(counts: np.ndarray, n_tokens: int, ultralow_density: float, min_count: int = 1) -> np.ndarray:
    """The features the paper counts: alive (at least ``min_count`` firings, 1 by default) and not of
    ultralow density (``counts / n_tokens >= ultralow_density``). ``counts: [n]`` firings over
    ``n_tokens`` analysis tokens -> bool ``[n]``."""
    counts = np.asarray(counts)
    return (counts >= max(1, min_count)) & (counts / n_tokens >= ultralow_density)


#: log10-density bin edges of every per-density view: half decades from 1e-7 (one firing in 10M tokens) to 1
DENSITY_EDGES = np.arange(-7.0, 0.01, 0.5)


def _density_rows(density: np.ndarray, corr: np.ndarray) -> list[dict]:
    ld = np.log10(np.clip(density, 1e-12, None))
    rows = []
    for lo, hi in zip(DENSITY_EDGES[:-1], DENSITY_EDGES[1:]):
        sel = (ld >= lo) & (ld < hi) & np.isfinite(corr) & (density > 0)
        if sel.any():
            rows.append({"log10_density_lo": float(lo), "log10_density_hi": float(hi), "n": int(sel.sum()),
                         "median_corr": float(np.median(corr[sel])), "mean_corr": float(np.mean(corr[sel]))})
    return rows


def density_bins(density: np.ndarray, corr: np.ndarray) -> pd.DataFrame:
    """Median best-match correlation per log10-density bin (``DENSITY_EDGES``): which units are universal.

    ``density: [n]`` firing share, ``corr: [n]`` best-match correlation (NaN: left out).
    """
    return pd.DataFrame(_density_rows(density, corr))


def density_curve(density: np.ndarray, corr: np.ndarray) -> list[dict]:
    """:func:`density_bins` as JSON rows (lower edge, count, median, mean), as a scaling point keeps them."""
    return [{k: r[k] for k in ("log10_density_lo", "n", "median_corr", "mean_corr")}
            for r in _density_rows(density, corr)]


def corr_stats(corr: np.ndarray, mask: np.ndarray) -> dict:
    """Count, median, mean and shares above 0.5 and 0.7 of best-match ``corr [n]`` over ``mask [n]``
    (NaN entries left out); None figures when nothing is left."""
    sel = mask & np.isfinite(corr)
    v = corr[sel]
    if not len(v):
        return {"n": 0, "median": None, "mean": None, "frac_gt_0.5": None, "frac_gt_0.7": None}
    return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(np.mean(v)),
            "frac_gt_0.5": float(np.mean(v > 0.5)), "frac_gt_0.7": float(np.mean(v > 0.7))}


def universality_figures(FA, FB, ultralow_density: float, shuffle_seed: int = 0) -> dict:
    """Max activation correlation of A's units with B's over the same tokens, with its chance level.

    ``FA: [n_tokens, n_a]``, ``FB: [n_tokens, n_b]`` (CSR or dense). Returns the per-unit arrays
    (``corr``, ``chance``, ``counts``) and the summaries over the ``paper``-counted and all alive units.
    """
    A, B = correlation.prepare(FA, "acts A"), correlation.prepare(FB, "acts B")  # column statistics once
    corr = correlation.max_correlation(A, B, k=1, dtype=np.float32).value[:, 0].astype(np.float64)
    chance = correlation.shuffled_baseline(A, B, seed=shuffle_seed, k=1, dtype=np.float32).value[:, 0]
    chance = chance.astype(np.float64)
    return summarize_units(corr, chance, A.nnz, A.n_tokens, ultralow_density)


def summarize_units(corr: np.ndarray, chance: np.ndarray, counts: np.ndarray, n_tok: int,
                    ultralow_density: float) -> dict:
    """The figures of :func:`universality_figures` from per-unit best-match ``corr [n_a]``, ``chance [n_a]``
    and firing ``counts [n_a]`` over ``n_tok`` tokens (from memory or from a stream)."""
    counts = np.asarray(counts)
    alive = counts > 0
    counted = counted_mask(counts, n_tok, ultralow_density)
    return {
        "corr": corr, "chance": chance, "counts": counts,
        "paper": corr_stats(corr, counted), "all_alive": corr_stats(corr, alive),
        "chance_paper_median": corr_stats(chance, counted)["median"],
        "chance_all_alive_median": corr_stats(chance, alive)["median"],
        "n_dead": int((~alive).sum()), "n_ultralow": int((alive & ~counted).sum()),
    }


def _match_block(df: pd.DataFrame, mask: np.ndarray | None) -> dict:
    """The summary of one matching table (features or neurons) over the rows of ``mask`` (None: all)."""
    corr = df["corr"].to_numpy(np.float64)
    sel = np.isfinite(corr) & (np.ones(len(df), bool) if mask is None else mask)
    st = corr_stats(corr, sel)
    some = bool(sel.any())
    assign = np.nan_to_num(df["assign_corr"].to_numpy(np.float64)[sel], nan=0.0)  # unassigned count as 0
    out = {
        "n": int(len(df)), "n_included": st["n"],
        "median_max_act_corr": st["median"], "mean_max_act_corr": st["mean"],
        "frac_max_act_corr_gt_0.5": st["frac_gt_0.5"], "frac_max_act_corr_gt_0.7": st["frac_gt_0.7"],
        "frac_mutual": float(df["mutual"].to_numpy(bool)[sel].mean()) if some else None,
        "median_assign_corr": float(np.median(assign)) if some else None,
        "median_logit_corr_of_match": float(np.nanmedian(df["logit_corr_of_match"].to_numpy()[sel]))
        if some else None,
    }
    if "attribution_corr_of_match" in df:
        v = df["attribution_corr_of_match"].to_numpy()[sel]
        out["median_attribution_corr_of_match"] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
    if "logit_best_corr" in df:
        out["median_logit_best_corr"] = float(np.nanmedian(df["logit_best_corr"].to_numpy()[sel]))
    return out


def analyse(a: Side, b: Side, next_tokens: np.ndarray, cfg: Config, top_token_ids: tuple | None = None) -> dict:
    """Match A to B for features and neurons; returns ``{"features": df, "neurons": df, "summary": {...}}``.

    ``next_tokens: [n_tokens]``: the token following each analysis position (-1 where none), for the
    attribution view.
    """
    ac = cfg.analysis
    FA, FB = a.feature_acts, b.feature_acts
    n_tok = FA.shape[0]
    if FB.shape[0] != n_tok or a.neuron_acts.shape[0] != n_tok or b.neuron_acts.shape[0] != n_tok:
        raise ValueError("runs A and B must be analysed over the same analysis tokens")

    # one-to-one assignment on the top-k graph: Hungarian on a dense 4096 x 4096 matrix takes minutes
    feats = correlation.match(FA, FB, k=ac.top_k, assignment="topk" if FA.shape[1] * FB.shape[1] > 1 << 20 else "dense")
    # neurons come as CSR (load_side), so the sparse engine gives exact correlations (dtype only
    # matters for dense inputs, where float32 stays within ~1e-6); column statistics once for the
    # match and the chance level
    NA, NB = correlation.prepare(a.neuron_acts, "neurons A"), correlation.prepare(b.neuron_acts, "neurons B")
    neurons = correlation.match(NA, NB, k=ac.top_k, dtype=np.float32)

    # logit-effect views
    LA, LB = a.logit_effects, b.logit_effects
    NLA, NLB = a.neuron_logit_effects, b.neuron_logit_effects
    has = feats.best_b.to_numpy() >= 0
    logit_corr = np.full(len(feats), np.nan)
    logit_corr[has] = effects.rowwise_corr(LA[has], LB[feats.best_b.to_numpy()[has]])
    feats["logit_corr_of_match"] = logit_corr
    lbest = effects.logit_effect_match(LA, LB, k=1)
    feats["logit_best_b"] = lbest.index[:, 0]
    feats["logit_best_corr"] = lbest.value[:, 0]
    neurons["logit_corr_of_match"] = effects.rowwise_corr(NLA, NLB[neurons.best_b.to_numpy()])

    # attribution view: activation x logit effect on the token that actually comes next
    valid = next_tokens >= 0
    idx_valid = np.flatnonzero(valid)
    attr = np.full(len(feats), np.nan)
    if has.any():
        attr[has] = effects.attribution_similarity(FA[idx_valid], FB[idx_valid], LA, LB, next_tokens[idx_valid],
                                                    np.flatnonzero(has), feats.best_b.to_numpy()[has])
    feats["attribution_corr_of_match"] = attr

    counts_a = np.asarray(FA.getnnz(axis=0))
    feats["count_a"] = counts_a
    counted = counted_mask(counts_a, n_tok, ac.ultralow_density, ac.min_count)
    feats["counted"] = counted
    alive = counts_a > 0

    chance_f = correlation.shuffled_baseline(FA, FB, seed=ac.shuffle_seed, k=1)
    chance_n = correlation.shuffled_baseline(NA, NB, seed=ac.shuffle_seed, k=1, dtype=np.float32)

    fs = _match_block(feats, counted)
    fs_all = _match_block(feats, alive)
    ns = _match_block(neurons, None)
    summary = {
        "n_analysis_tokens": int(n_tok),
        "features": {**fs, "which": f"counted: alive, >= {ac.min_count} firings and density >= {ac.ultralow_density:g} "
                                    f"over the analysis tokens ({int(counted.sum())} of {len(feats)})",
                     "all_alive": fs_all,
                     "n_dead": int((~alive).sum()), "n_excluded_rare": int((alive & ~counted).sum())},
        "neurons": ns,
        "chance": {"features_shuffled_median_max_act_corr": float(np.nanmedian(chance_f.value[counted, 0]))
                   if counted.any() else None,
                   "neurons_shuffled_median_max_act_corr": float(np.nanmedian(chance_n.value[:, 0])),
                   "how": "B's token order permuted (seeded), then the same matching"},
    }
    summary["features_minus_neurons_median"] = (
        fs["median_max_act_corr"] - ns["median_max_act_corr"] if fs["median_max_act_corr"] is not None else None)
    bins_f = density_bins(feats["density_a"].to_numpy(), np.where(counted, feats["corr"].to_numpy(), np.nan))
    bins_f_all = density_bins(feats["density_a"].to_numpy(), feats["corr"].to_numpy())
    bins_n = density_bins(neurons["density_a"].to_numpy(), neurons["corr"].to_numpy())
    return {"features": feats, "neurons": neurons, "summary": summary,
            "density_bins": {"features": bins_f_all, "features_counted": bins_f, "neurons": bins_n},
            "chance": {"features": chance_f.value[:, 0], "neurons": chance_n.value[:, 0]}}


PAPER_FIGURES = {
    "features_median_max_act_corr": 0.72,
    "neurons_median_max_act_corr": 0.46,
    "n_analysis_tokens": 41_000_000,
    "dictionary": "A/1 vs B/1 (4096 features, 8B training activations)",
}


def load_side(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> Side:
    """Gather one run's cached artifacts (building any that are missing)."""
    from .. import pipeline as P

    fs = P.get_features(cfg, seed, n, snapshot_step, progress)
    fam = P.get_family(cfg, seed, progress)
    lm = P.get_lm(cfg, seed, progress)
    store = P.get_acts(cfg, seed, "analysis", progress)
    # neurons as CSR (~3% nonzero after the ReLU): the matcher's exact sparse path, no dense [n_tokens, 512] copy
    return Side(feature_acts=fs.acts(), neuron_acts=store.head_csr(),
                logit_effects=P.get_logit_effects(cfg, seed, n, snapshot_step, progress).matrix(),
                neuron_logit_effects=P.get_logit_effects(cfg, seed, None, progress=progress).matrix(),
                sae_stats=fs.stats, lm_summary=lm.summary, sae_id=fam.sae_id(n))


def next_tokens_of(cfg: Config, n_tokens: int) -> np.ndarray:
    """The token after each analysis position (the analysis store covers the split's first tokens in order)."""
    from .. import pipeline as P

    stream = np.asarray(P.get_tokens(cfg).tokens("analysis"))
    nxt = np.full(n_tokens, -1, dtype=np.int64)
    m = min(n_tokens, len(stream) - 1)
    nxt[:m] = stream[1 : m + 1]
    return nxt


def run_universality(cfg: Config, n: int | None = None, snapshot_step: int | None = None, progress: bool = True) -> dict:
    """Build (or reuse) everything upstream for runs A and B, then :func:`analyse` them."""
    from .. import pipeline as P
    from ..features import top_tokens

    n = n or cfg.dict.sizes[0]
    a = load_side(cfg, cfg.seed_a, n, snapshot_step, progress)
    b = load_side(cfg, cfg.seed_b, n, snapshot_step, progress)
    store_a = P.get_acts(cfg, cfg.seed_a, "analysis", progress)
    store_b = P.get_acts(cfg, cfg.seed_b, "analysis", progress)
    tok_ids = np.asarray(store_a.tokens)
    if not np.array_equal(tok_ids, np.asarray(store_b.tokens)):
        raise RuntimeError("analysis stores of A and B hold different tokens; clear the cache folder 'acts'")
    res = analyse(a, b, next_tokens_of(cfg, len(tok_ids)), cfg)
    data = P.get_tokens(cfg)
    tok = data.tokenizer
    V = data.info["vocab_size"]
    from ..tokenizer import decode_tokens

    def names(ids):
        return [" | ".join(repr(s)[1:-1] for s in decode_tokens(tok, [i for i in row if i >= 0])) for row in ids]

    top_a = top_tokens(a.feature_acts, tok_ids, V, 3)
    top_b = top_tokens(b.feature_acts, tok_ids, V, 3)
    df = res["features"]
    df["top_tokens_a"] = names(top_a)
    bb = df["best_b"].to_numpy()
    df["top_tokens_b"] = [names([top_b[j]])[0] if j >= 0 else "" for j in bb]
    res["runs"] = {"A": {"lm": a.lm_summary, "sae": a.sae_stats, "sae_id": a.sae_id},
                   "B": {"lm": b.lm_summary, "sae": b.sae_stats, "sae_id": b.sae_id}}
    res["size"] = n
    return res
