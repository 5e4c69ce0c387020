"""The universality analysis: do features of run A have counterparts in run B, more than neurons do?

A pure function of cached upstream artifacts (feature activations, neuron activations, dictionaries,
models) that returns tables and a summary; :mod:`splitkit.report` writes files.

Which features count. The paper leaves out dead features and its "ultralow density" cluster. We
count a feature when it fires on at least ``analysis.ultralow_density`` of the analysis tokens (and,
optionally, on at least ``analysis.min_count`` of them; 1 by default, i.e. the paper's exclusion
alone); every headline figure is also given over all features that fire at all (``all_alive``), so
the effect of the exclusion is visible.

Logit effects go through the direct path: decoder direction -> MLP output weights -> final layer
norm -> unembedding. The final LN's mean-centring is applied to the direction and its gain per
dimension; its 1/sigma is a positive scalar per position, which no correlation can see, so it is
left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import matching
from .config import Config


@dataclass
class Side:
    """Everything the analysis needs from one run (A or B)."""

    feature_acts: object  # scipy.sparse.csr_matrix [n_tokens, n_features]
    neuron_acts: object  # scipy.sparse.csr_matrix [n_tokens, d_mlp] float32 (or a dense ndarray)
    W_dec: np.ndarray  # [n_features, d_mlp]
    direct_path: dict  # W_out [d_mlp, d_model], ln_scale [d_model], W_U [d_model, vocab]
    sae_stats: dict
    lm_summary: dict
    sae_id: str


def counted_mask(counts: np.ndarray, n_tokens: int, min_count: int, ultralow_density: float) -> np.ndarray:
    """Features the paper would count: alive, at least ``min_count`` firings and not ultralow density."""
    counts = np.asarray(counts)
    return (counts >= max(1, min_count)) & (counts / n_tokens >= ultralow_density)


def _logit_effects(W_dec: np.ndarray, path: dict) -> np.ndarray:
    return matching.logit_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"])


def density_bins(density: np.ndarray, corr: np.ndarray, edges=None) -> pd.DataFrame:
    """Median max-correlation per log10-density bin: the 'which features are universal' view."""
    edges = np.arange(-6.5, 0.01, 0.5) if edges is None else edges
    ld = np.log10(np.clip(density, 1e-12, None))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (ld >= lo) & (ld < hi) & np.isfinite(corr)
        if sel.any():
            rows.append({"log10_density_lo": lo, "log10_density_hi": hi, "n": int(sel.sum()),
                         "median_corr": float(np.median(corr[sel])), "mean_corr": float(np.mean(corr[sel]))})
    return pd.DataFrame(rows)


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
    feats = matching.match(FA, FB, k=ac.top_k, assignment="topk" if FA.shape[1] * FB.shape[1] > 1 << 20 else "dense")
    # neurons come as CSR (load_side), so the sparse engine gives exact correlations (dtype only
    # matters for dense inputs, where float32 stays within ~1e-6); column statistics once for the
    # match and the chance level
    NA, NB = matching.prepare(a.neuron_acts, "neurons A"), matching.prepare(b.neuron_acts, "neurons B")
    neurons = matching.match(NA, NB, k=ac.top_k, dtype=np.float32)

    # logit-effect views
    LA, LB = _logit_effects(a.W_dec, a.direct_path), _logit_effects(b.W_dec, b.direct_path)
    eye = np.eye(a.neuron_acts.shape[1], dtype=np.float32)
    NLA, NLB = _logit_effects(eye, a.direct_path), _logit_effects(eye, b.direct_path)
    has = feats.best_b.to_numpy() >= 0
    logit_corr = np.full(len(feats), np.nan)
    logit_corr[has] = matching.rowwise_corr(LA[has], LB[feats.best_b.to_numpy()[has]])
    feats["logit_corr_of_match"] = logit_corr
    lbest = matching.logit_effect_match(LA, LB, k=1)
    feats["logit_best_b"] = lbest.index[:, 0]
    feats["logit_best_corr"] = lbest.value[:, 0]
    neurons["logit_corr_of_match"] = matching.rowwise_corr(NLA, NLB[neurons.best_b.to_numpy()])

    # attribution view: activation x logit effect on the token that actually comes next
    valid = next_tokens >= 0
    idx_valid = np.flatnonzero(valid)
    attr = np.full(len(feats), np.nan)
    if has.any():
        attr[has] = matching.attribution_similarity(FA[idx_valid], FB[idx_valid], LA, LB, next_tokens[idx_valid],
                                                    np.flatnonzero(has), feats.best_b.to_numpy()[has])
    feats["attribution_corr_of_match"] = attr

    counts_a = np.asarray(FA.getnnz(axis=0))
    feats["count_a"] = counts_a
    counted = counted_mask(counts_a, n_tok, ac.min_count, ac.ultralow_density)
    feats["counted"] = counted
    alive = counts_a > 0

    chance_f = matching.shuffled_baseline(FA, FB, seed=ac.shuffle_seed, k=1)
    chance_n = matching.shuffled_baseline(NA, NB, seed=ac.shuffle_seed, k=1, dtype=np.float32)

    def block(df, mask):
        s = matching.summarize(df, mask=mask)
        corr = df["corr"].to_numpy()
        sel = np.isfinite(corr) & (np.ones(len(df), bool) if mask is None else mask)
        out = {
            "n": s["n"], "n_included": int(sel.sum()),
            "median_max_act_corr": s["median_corr"], "mean_max_act_corr": s["mean_corr"],
            "frac_max_act_corr_gt_0.5": s["frac_corr_gt_0.5"], "frac_max_act_corr_gt_0.7": s["frac_corr_gt_0.7"],
            "frac_mutual": s.get("frac_mutual"), "median_assign_corr": s.get("median_assign_corr"),
            "median_logit_corr_of_match": float(np.nanmedian(df["logit_corr_of_match"].to_numpy()[sel]))
            if sel.any() else None,
        }
        if "attribution_corr_of_match" in df:
            v = df["attribution_corr_of_match"].to_numpy()[sel]
            out["median_attribution_corr_of_match"] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
        if "logit_best_corr" in df:
            out["median_logit_best_corr"] = float(np.nanmedian(df["logit_best_corr"].to_numpy()[sel]))
        return out

    fs = block(feats, counted)
    fs_all = block(feats, alive)
    ns = block(neurons, None)
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
    from . import pipeline as P

    fs = P.get_features(cfg, seed, n, snapshot_step, progress)
    fam = P.get_family(cfg, seed, progress)
    lm = P.get_lm(cfg, seed, progress)
    store = P.get_acts(cfg, seed, "analysis", progress)
    model = lm.model()
    path = {k: v.numpy() for k, v in model.direct_path().items()}
    sae = fam.sae(n, snapshot_step)
    # neurons as CSR (~3% nonzero after the ReLU): the matcher's exact sparse path, no dense [n_tokens, 512] copy
    return Side(feature_acts=fs.acts(), neuron_acts=store.head_csr(),
                W_dec=sae.W_dec.detach().numpy(), direct_path=path, sae_stats=fs.stats, lm_summary=lm.summary,
                sae_id=fam.sae_id(n))


def next_tokens_of(cfg: Config, n_tokens: int) -> np.ndarray:
    """The token after each analysis position (the analysis store covers the split's first tokens in order)."""
    from . import pipeline as P

    stream = np.asarray(P.get_tokens(cfg).tokens("analysis"))
    nxt = np.full(n_tokens, -1, dtype=np.int64)
    m = min(n_tokens, len(stream) - 1)
    nxt[:m] = stream[1 : m + 1]
    return nxt


def run_universality(cfg: Config, n: int | None = None, snapshot_step: int | None = None, progress: bool = True) -> dict:
    """Build (or reuse) everything upstream for runs A and B, then :func:`analyse` them."""
    from . import pipeline as P
    from .features import top_tokens

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
    from .tokenizer import decode_tokens

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
