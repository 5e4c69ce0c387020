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
import scipy.sparse as sp

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
    W_dec: np.ndarray | None = None  # [n_features, d_mlp] decoder rows (decoder twins); None: skipped


# The dense Hungarian is exact and takes ~3 s at 4,096 x 4,096 (scipy, this CPU); the top-k graph's
# maximum-cardinality matching leaves weakly matched features unassigned (counted as 0), which
# understated the one-to-one median of dictionaries whose matches are weak (0.09 against 0.30
# dense on the l1_log default), so it is kept for sizes where the dense matrix is too large.
DENSE_ASSIGNMENT_LIMIT = 1 << 24


def one_to_one_method(n_a: int, n_b: int) -> str:
    """"dense" (Hungarian on the full matrix) up to ``DENSE_ASSIGNMENT_LIMIT`` entries, else "topk"."""
    return "dense" if n_a * n_b <= DENSE_ASSIGNMENT_LIMIT else "topk"


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


def matched_figures(FA, FB, ultralow_density: float, shuffle_seed: int = 0, k: int = 8):
    """:func:`universality_figures` and the ``correlation.match`` table of A against B, sharing one pass.

    Returns ``(figures, table, matrix)``. Up to ``DENSE_ASSIGNMENT_LIMIT`` entries the best matches
    come from the match's own pass (``correlation.match_with_matrix``) and ``matrix`` is kept for
    matchings of column subsets; above it ``matrix`` is None and the table has its own pass. On
    sparse inputs the figures equal :func:`universality_figures` bit for bit (each correlation
    depends on its own pair of columns; the GEMM dtype only matters for dense inputs).
    """
    A, B = correlation.prepare(FA, "acts A"), correlation.prepare(FB, "acts B")
    if one_to_one_method(A.n_cols, B.n_cols) == "dense":
        table, matrix = correlation.match_with_matrix(A, B, k=k)
    else:
        table, matrix = correlation.match(A, B, k=k, assignment="topk"), None
    corr = table["corr"].to_numpy(np.float64)  # the best match: max_correlation's top-1 value
    chance = correlation.shuffled_baseline(A, B, seed=shuffle_seed, k=1, dtype=np.float32).value[:, 0]
    return summarize_units(corr, chance.astype(np.float64), A.nnz, A.n_tokens, ultralow_density), table, matrix


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

    def med(col):
        if col not in df or not some:
            return None
        v = df[col].to_numpy(np.float64)[sel]
        return float(np.nanmedian(v)) if np.isfinite(v).any() else None

    out = {
        "n": int(len(df)), "n_included": st["n"],
        "median_max_act_corr": st["median"], "mean_max_act_corr": st["mean"],
        "frac_max_act_corr_gt_0.5": st["frac_gt_0.5"], "frac_max_act_corr_gt_0.7": st["frac_gt_0.7"],
        "frac_mutual": float(df["mutual"].to_numpy(bool)[sel].mean()) if some else None,
        "median_assign_corr": float(np.median(assign)) if some else None,
        "median_logit_corr_of_match": med("logit_corr_of_match"),
        "median_logit_corr_centred_of_match": med("logit_corr_centred_of_match"),
    }
    if "attribution_corr_of_match" in df:
        out["median_attribution_corr_of_match"] = med("attribution_corr_of_match")
    if "logit_best_corr" in df:
        out["median_logit_best_corr"] = med("logit_best_corr")
    return out


def bootstrap_median(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the median of ``values [n]`` (NaN left out): resample the
    units with replacement ``n_boot`` times (seeded). Returns ``{"median", "lo", "hi", "n_boot", "level"}``."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"median": None, "lo": None, "hi": None, "n_boot": n_boot, "level": level}
    rng = np.random.default_rng(seed)
    meds = np.empty(n_boot)
    for s0 in range(0, n_boot, 100):  # [100, n] index blocks: bounded memory
        e = min(n_boot, s0 + 100)
        meds[s0:e] = np.median(v[rng.integers(0, v.size, (e - s0, v.size))], axis=1)
    a = (1 - level) / 2
    return {"median": float(np.median(v)), "lo": float(np.quantile(meds, a)), "hi": float(np.quantile(meds, 1 - a)),
            "n_boot": int(n_boot), "level": float(level)}


def bootstrap_difference(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of ``median(x) - median(y)``, ``x`` and ``y`` resampled independently."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not x.size or not y.size:
        return {"diff": None, "lo": None, "hi": None, "n_boot": n_boot, "level": level}
    rng = np.random.default_rng(seed)
    d = np.empty(n_boot)
    for s0 in range(0, n_boot, 100):
        e = min(n_boot, s0 + 100)
        d[s0:e] = (np.median(x[rng.integers(0, x.size, (e - s0, x.size))], axis=1)
                   - np.median(y[rng.integers(0, y.size, (e - s0, y.size))], axis=1))
    a = (1 - level) / 2
    return {"diff": float(np.median(x) - np.median(y)), "lo": float(np.quantile(d, a)),
            "hi": float(np.quantile(d, 1 - a)), "n_boot": int(n_boot), "level": float(level)}


def centred_effects(L: np.ndarray) -> np.ndarray:
    """Logit effects ``L [n, vocab]`` minus the mean effect vector over all ``n`` units of that basis.

    The component every unit of a basis shares (e.g. a direction the MLP output always pushes the
    logits along) makes any two units' raw effects correlate; this removes it before correlating.
    """
    L = np.asarray(L, np.float64)
    return L - L.mean(0, keepdims=True)


def _pair_logit_corr(LA, LB, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Row correlations of ``LA[ia[m]]`` with ``LB[ib[m]]`` (NaN where an index is -1): ``[m]``."""
    out = np.full(len(ia), np.nan)
    ok = (ia >= 0) & (ib >= 0)
    if ok.any():
        out[ok] = effects.rowwise_corr(LA[ia[ok]], LB[ib[ok]])
    return out


def _attr_corr_dense(XA, XB, LA, LB, nxt, ia, ib, chunk: int = 32768) -> np.ndarray:
    """Attribution correlation of pairs (``ia[m]``, ``ib[m]``) for activations ``[n_tokens, n]`` of few
    units (neurons; dense, or CSR densified a chunk at a time), summed over token chunks so no ``[n_tokens, m]`` float64 matrix is formed."""
    ia, ib = np.asarray(ia), np.asarray(ib)
    out = np.full(len(ia), np.nan)
    ok = np.flatnonzero((ia >= 0) & (ib >= 0))
    if not ok.size:
        return out
    a, b = ia[ok], ib[ok]
    s = {k: np.zeros(ok.size) for k in ("x", "y", "xx", "yy", "xy")}
    n = 0
    for t0 in range(0, len(nxt), chunk):
        t1 = min(len(nxt), t0 + chunk)
        nx = nxt[t0:t1]
        xa, xb = XA[t0:t1], XB[t0:t1]
        xa = xa.toarray() if sp.issparse(xa) else xa  # CSR neurons: one chunk dense at a time
        xb = xb.toarray() if sp.issparse(xb) else xb
        x = np.asarray(xa[:, a], np.float64) * np.asarray(LA, np.float64)[a][:, nx].T  # [c, m]
        y = np.asarray(xb[:, b], np.float64) * np.asarray(LB, np.float64)[b][:, nx].T
        s["x"] += x.sum(0); s["y"] += y.sum(0)
        s["xx"] += (x * x).sum(0); s["yy"] += (y * y).sum(0); s["xy"] += (x * y).sum(0)
        n += t1 - t0
    cov = s["xy"] - s["x"] * s["y"] / n
    vx = s["xx"] - s["x"] ** 2 / n
    vy = s["yy"] - s["y"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    r[(vx <= 0) | (vy <= 0)] = np.nan
    out[ok] = np.clip(r, -1, 1)
    return out


def _rows_of(X, rows: np.ndarray):
    """Rows ``rows`` of ``X [n_tokens, n]``: a view when they are the prefix ``0 .. len(rows) - 1`` of a
    CSR matrix (no copy of its entries), else a copy as ``X[rows]``."""
    rows = np.asarray(rows)
    m = rows.size
    if sp.issparse(X) and X.format == "csr" and (m == 0 or (rows[0] == 0 and rows[-1] == m - 1 and m <= X.shape[0]
                                            and (m < 2 or bool(np.all(np.diff(rows) == 1))))):
        p = X.indptr[m]
        return sp.csr_matrix((X.data[:p], X.indices[:p], X.indptr[: m + 1]), shape=(m, X.shape[1]), copy=False)
    return X[rows]


def _scaled_rows(X, w: np.ndarray):
    """Rows of ``X [n_tokens, n]`` (sparse or dense) times ``w [n_tokens]``."""
    import scipy.sparse as sp

    if sp.issparse(X):
        return sp.diags(np.asarray(w, np.float64)) @ sp.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, np.float64) * np.asarray(w, np.float64)[:, None]


def _med(v) -> float | None:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def redundancy_block(acts, W_dec, counts: np.ndarray, mask: np.ndarray, n_twin_tokens: int, threshold: float = 0.9,
                     k: int = 8):
    """In-dictionary twin statistics of one basis (``redundancy.redundancy_summary`` keys) over the first
    ``n_twin_tokens`` tokens of ``acts [n_tokens, n]``, the shares over the features of ``mask [n]``;
    with the activation clusters at ``threshold`` (representatives by full-set firing ``counts``).
    Returns ``(summary, clusters)``."""
    from . import redundancy as R

    sub = acts[:n_twin_tokens]
    tw = R.activation_twins(sub, k=k)
    cl = R.twin_clusters(tw, threshold, counts)
    t = f"{threshold:g}"
    use = tw.alive & mask
    v = tw.twin_value[use]
    v = v[np.isfinite(v)]
    out = {"n_features": int(acts.shape[1]), "n_counted": int(mask.sum()), "threshold": float(threshold), "k": int(k),
           "n_twin_tokens": int(sub.shape[0]),
           "twin_median_act_corr": _med(v), f"twin_share_act_{t}": float((v > threshold).mean()) if v.size else None,
           f"n_clusters_act_{t}": cl.n_clusters, f"n_clusters_act_{t}_counted": int(np.unique(cl.labels[mask & (cl.labels >= 0)]).size),
           "n_alive_act": int(tw.alive.sum()), "n_saturated_act": cl.n_saturated,
           "largest_cluster_act": int(cl.sizes.max()) if cl.n_clusters else 0}
    if W_dec is not None:
        dt = R.decoder_twins(W_dec, k=k)
        dcl = R.twin_clusters(dt, threshold, counts)
        dv = dt.twin_value[dt.alive & mask]
        dv = dv[np.isfinite(dv)]
        out.update({"twin_median_dec_cos": _med(dv), f"twin_share_dec_{t}": float((dv > threshold).mean()) if dv.size else None,
                    f"n_clusters_dec_{t}": dcl.n_clusters, "n_alive_dec": int(dt.alive.sum()),
                    "n_saturated_dec": dcl.n_saturated})
    return out, cl


def decoder_block(a: Side, b: Side, neurons_alive_a: np.ndarray, neurons_alive_b: np.ndarray, seed: int = 0) -> dict | None:
    """The decoder-cosine yardstick of runs A and B (``decoder_matching.decoder_yardstick`` at its
    threshold, 0.7): A's decoder rows mapped into B's neuron basis by the least-squares map fitted on
    the first ``decoder_matching.MAP_TOKENS`` analysis tokens, with the neuron baseline and a random
    decoder's chance level; None without both decoders."""
    from . import decoder_matching as D

    if a.W_dec is None or b.W_dec is None:
        return None
    m = min(a.neuron_acts.shape[0], D.MAP_TOKENS)
    M, r2 = D.neuron_basis_map(a.neuron_acts[:m], b.neuron_acts[:m])
    out = D.decoder_yardstick(a.W_dec, b.W_dec, M, neurons_alive_a=neurons_alive_a, neurons_alive_b=neurons_alive_b,
                              map_r2=r2, threshold=D.THRESHOLD, seed=seed)
    out["map_tokens"] = int(m)
    return out


def neuron_density_stats(counts: np.ndarray, n_tok: int, ultralow_density: float) -> dict:
    """Dead / ultralow / counted numbers of one basis under the one exclusion rule (:func:`counted_mask`)."""
    counts = np.asarray(counts)
    alive = counts > 0
    counted = counted_mask(counts, n_tok, ultralow_density)
    return {"n": int(counts.size), "n_dead": int((~alive).sum()), "n_ultralow": int((alive & ~counted).sum()),
            "n_counted": int(counted.sum()), "ultralow_below_one_firing": bool(ultralow_density * n_tok <= 1.0)}


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
    from . import redundancy as R

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
#: analysis positions over which the attribution view is also computed with the LMs' true final-LN scale
ATTR_SCALE_TOKENS = 500_000

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
    W_dec = fam.sae(n, snapshot_step).W_dec.detach().cpu().numpy()
    return Side(feature_acts=fs.acts(), neuron_acts=store.head_csr(), W_dec=W_dec,
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


def final_ln_inv_sigma(cfg: Config, seed: int, n_tokens: int, batch: int = 64) -> np.ndarray:
    """The final layer norm's true ``1 / sigma`` at the first ``n_tokens`` analysis positions of LM
    ``seed`` (whole ``n_ctx`` windows of the analysis split, in order, as the analysis store holds
    them): float64 ``[n]``. ``effects`` freezes this scale; the attribution view can use it exactly."""
    import torch

    from .. import pipeline as P

    model = P.get_lm(cfg, seed, False).model("cpu")
    stream = np.asarray(P.get_tokens(cfg).tokens("analysis"))
    T = model.cfg.n_ctx
    n_win = min(-(-n_tokens // T), len(stream) // T)
    got: list[torch.Tensor] = []
    ln = model.ln_final

    def hook(mod, inp):
        x = inp[0].double()
        got.append(1.0 / torch.sqrt(x.var(-1, unbiased=False) + mod.eps).reshape(-1))

    h = ln.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for w0 in range(0, n_win, batch):
                w1 = min(n_win, w0 + batch)
                win = torch.from_numpy(stream[w0 * T : w1 * T].astype(np.int64).reshape(w1 - w0, T))
                model(win)
    finally:
        h.remove()
    return torch.cat(got).numpy()[:n_tokens]


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
    # the final LN's true 1/sigma on the first analysis positions, to measure the attribution view's frozen scale
    m = min(len(tok_ids), ATTR_SCALE_TOKENS)
    inv = (final_ln_inv_sigma(cfg, cfg.seed_a, m), final_ln_inv_sigma(cfg, cfg.seed_b, m))
    res = analyse(a, b, next_tokens_of(cfg, len(tok_ids)), cfg, inv_sigma=inv)
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
