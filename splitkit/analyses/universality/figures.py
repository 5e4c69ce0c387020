"""The universality figures of two activation matrices: every unit of A's best match in B
(many-to-one, the paper's view), the one-to-one assignment, and the shuffled-order chance level."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import correlation
from .stats import corr_stats, summarize_units

# The dense Hungarian is exact and takes ~3 s at 4,096 x 4,096 (scipy, this CPU); the top-k graph's
# maximum-cardinality matching leaves weakly matched features unassigned (counted as 0), which
# understated the one-to-one median of dictionaries whose matches are weak (0.09 against 0.30
# dense on the l1_log default), so it is kept for sizes where the dense matrix is too large.
DENSE_ASSIGNMENT_LIMIT = 1 << 24


def one_to_one_method(n_a: int, n_b: int) -> str:
    """"dense" (Hungarian on the full matrix) up to ``DENSE_ASSIGNMENT_LIMIT`` entries, else "topk"."""
    return "dense" if n_a * n_b <= DENSE_ASSIGNMENT_LIMIT else "topk"


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
