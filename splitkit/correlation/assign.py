"""One-to-one assignments and the best, mutual and assigned matches of A's columns in B.

One-to-one assignment (``match``): the Hungarian algorithm (``linear_sum_assignment``) on the full
matrix while ``n_a * n_b`` is small, else LAPJVsp (``min_weight_full_bipartite_matching``) on the
graph of A->B and B->A top-k edges, which gives the same assignment whenever the optimum's edges are
in that graph (tested), or a greedy pass on the same edges. :func:`summarize` gives a matching's
headline figures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from .columns import TopK, _check_pair
from .engine import _compute

ASSIGNMENTS = ("auto", "dense", "topk", "greedy", "none")


def assign_dense(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian one-to-one assignment maximising the total correlation of a dense matrix.

    Args:
        C: float ``[n_a, n_b]`` correlations, NaN rows/columns (dead) are left out.

    Returns:
        ``assign_b`` int64 ``[n_a]`` (-1 = unassigned) and ``assign_corr`` float64 ``[n_a]``.
    """
    C = np.asarray(C, dtype=np.float64)
    n_a, n_b = C.shape
    rows = np.flatnonzero(~np.isnan(C).all(1))
    cols = np.flatnonzero(~np.isnan(C).all(0))
    assign = np.full(n_a, -1, np.int64)
    val = np.full(n_a, np.nan)
    if rows.size and cols.size:
        sub = C[np.ix_(rows, cols)]
        sub = np.where(np.isnan(sub), -2.0, sub)  # NaN inside live rows/cols: worse than any corr
        r, c = linear_sum_assignment(sub, maximize=True)
        assign[rows[r]] = cols[c]
        val[rows[r]] = sub[r, c]
    return assign, val


def assign_topk(fwd: TopK, rev: TopK | None = None, method: str = "topk") -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment restricted to the top-k edges (A's top-k, plus B's top-k if given).

    ``method="topk"``: ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp) on the
    edge graph, with cost ``2 - corr`` and one private dummy partner per A column at a cost above
    any real matching's spread. The result is a maximum-cardinality matching of the top-k graph,
    and among those one of maximum total correlation; it equals the dense Hungarian whenever the
    dense optimum only uses top-k edges. A columns left to their dummy get -1.
    ``method="greedy"``: edges by descending correlation, taken when both ends are free.

    Returns:
        ``assign_b`` int64 ``[n_a]`` (-1 = unassigned) and ``assign_corr`` float64 ``[n_a]``.
    """
    if method not in ("topk", "greedy"):
        raise ValueError(f"method must be 'topk' or 'greedy', got {method!r}")
    n_a = fwd.index.shape[0]
    n_b = fwd.dead_b.shape[0]
    ii = [np.repeat(np.arange(n_a), fwd.k)]
    jj = [fwd.index.ravel()]
    vv = [fwd.value.ravel().astype(np.float64)]
    if rev is not None:
        ii.append(rev.index.ravel())
        jj.append(np.repeat(np.arange(n_b), rev.k))
        vv.append(rev.value.ravel().astype(np.float64))
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    v = np.concatenate(vv)
    ok = (i >= 0) & (j >= 0) & ~np.isnan(v)
    i, j, v = i[ok], j[ok], v[ok]
    # deduplicate edges (an edge can be in both top-k lists)
    key = i * n_b + j
    key, first = np.unique(key, return_index=True)
    i, j, v = i[first], j[first], v[first]
    assign = np.full(n_a, -1, np.int64)
    val = np.full(n_a, np.nan)
    if i.size == 0:
        return assign, val
    if method == "greedy":
        order = np.lexsort((j, i, -v))
        used_a = np.zeros(n_a, bool)
        used_b = np.zeros(n_b, bool)
        for e in order:
            a, b = i[e], j[e]
            if not used_a[a] and not used_b[b]:
                used_a[a] = used_b[b] = True
                assign[a] = b
                val[a] = v[e]
        return assign, val
    rows = np.unique(i)
    r_of = np.full(n_a, -1, np.int64)
    r_of[rows] = np.arange(rows.size)
    m = rows.size
    big = 3.0 * m + 10.0  # > the cost spread of any real matching: dummies only when unavoidable
    r = np.concatenate([r_of[i], np.arange(m)])
    c = np.concatenate([j, n_b + np.arange(m)])
    w = np.concatenate([2.0 - v, np.full(m, big)])
    G = sp.csr_matrix((w, (r, c)), shape=(m, n_b + m))
    rr, cc = min_weight_full_bipartite_matching(G)
    real = cc < n_b
    a_sel = rows[rr[real]]
    assign[a_sel] = cc[real]
    val[a_sel] = 2.0 - np.asarray(G[rr[real], cc[real]]).ravel()
    return assign, val


# --------------------------------------------------------------------------------------------
# match
# --------------------------------------------------------------------------------------------


def match(acts_a, acts_b, k: int = 8, *, assignment: str = "auto", dense_limit: int = 1 << 24,
          chunk: int | None = None, dtype=np.float64, engine: str = "auto") -> pd.DataFrame:  # fmt: skip
    """Best match of every A column in B, the reverse best, mutuality and a one-to-one assignment.

    Args:
        acts_a, acts_b: ``[n_tokens, n_a]``, ``[n_tokens, n_b]`` (see ``max_correlation``).
        k: partners kept per column in each direction (top-k graph of the sparse assignment).
        assignment: "dense" (Hungarian, ``linear_sum_assignment`` on the full matrix), "topk"
            (LAPJVsp on the A->B and B->A top-k edges, see ``assign_topk``), "greedy" (greedy on
            the same edges), "none", or "auto": "dense" when ``n_a * n_b <= dense_limit``, else
            "topk".

    Returns:
        DataFrame, one row per A column: ``a``, ``best_b`` (-1 if a is dead), ``corr`` (NaN if
        dead), ``best_a_of_b`` (B's best A partner for best_b), ``corr_b`` (its correlation),
        ``mutual`` (a and best_b are each other's best), ``density_a``, ``density_b`` (of best_b,
        NaN if none), ``dead_a``, ``assign_b`` (-1 = unassigned), ``assign_corr``.
        ``df.attrs`` records engine, k, assignment method, n_tokens and dead counts.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    A, B = _check_pair(acts_a, acts_b, k)
    if assignment == "auto":
        assignment = "dense" if A.n_cols * B.n_cols <= dense_limit else "topk"
    want_full = assignment == "dense"
    _, _, fwd, rev, full = _compute(A, B, k, chunk, dtype, engine, True, want_full)
    best_b = fwd.index[:, 0]
    has = best_b >= 0
    best_a_of_b = np.full(A.n_cols, -1, np.int64)
    corr_b = np.full(A.n_cols, np.nan)
    best_a_of_b[has] = rev.index[best_b[has], 0]
    corr_b[has] = rev.value[best_b[has], 0]
    mutual = has & (best_a_of_b == np.arange(A.n_cols))
    density_b = np.full(A.n_cols, np.nan)
    density_b[has] = B.density[best_b[has]]
    if assignment == "dense":
        assign_b, assign_corr = assign_dense(full)
    elif assignment in ("topk", "greedy"):
        assign_b, assign_corr = assign_topk(fwd, rev, method=assignment)
    else:
        assign_b, assign_corr = np.full(A.n_cols, -1, np.int64), np.full(A.n_cols, np.nan)
    df = pd.DataFrame(
        {
            "a": np.arange(A.n_cols),
            "best_b": best_b,
            "corr": fwd.value[:, 0].astype(np.float64),
            "best_a_of_b": best_a_of_b,
            "corr_b": corr_b,
            "mutual": mutual,
            "density_a": A.density,
            "density_b": density_b,
            "dead_a": A.dead,
            "assign_b": assign_b,
            "assign_corr": assign_corr,
        }
    )
    df.attrs.update(
        engine=fwd.meta["engine"], k=k, assignment=assignment, n_tokens=A.n_tokens,
        n_a=A.n_cols, n_b=B.n_cols, n_dead_a=int(A.dead.sum()), n_dead_b=int(B.dead.sum()),
    )  # fmt: skip
    return df



# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize(matches, mask=None, thresholds=(0.5, 0.7)) -> dict:
    """Headline figures of a matching, over the columns selected by ``mask``.

    Args:
        matches: DataFrame from ``match`` or a ``TopK`` (e.g. ``shuffled_baseline``).
        mask: bool ``[n_a]`` columns to include (e.g. ``~df.dead_a & (df.density_a >= 1e-6)``);
            None includes all. Callers should report with and without their exclusions.
        thresholds: for the fractions above each threshold.

    Returns:
        dict: ``n`` (all columns), ``n_included``, ``n_dead`` (included columns with NaN
        correlation: zero variance, never matched), ``n_live``; over the live included columns:
        ``median_corr``, ``mean_corr``, ``frac_corr_gt_{t}``; for a DataFrame also ``frac_mutual``,
        ``median_assign_corr``, ``mean_assign_corr`` (unassigned count as 0) and
        ``frac_assign_gt_{t}``. Fractions have the live included columns as denominator.
    """
    if isinstance(matches, TopK):
        corr = matches.value[:, 0].astype(np.float64)
        df = None
    elif isinstance(matches, pd.DataFrame):
        if "corr" not in matches:
            raise ValueError("matches must have a 'corr' column (a DataFrame from match())")
        df = matches
        corr = df["corr"].to_numpy(np.float64)
    else:
        raise ValueError(f"matches must be a DataFrame from match() or a TopK, got {type(matches).__name__}")
    n = corr.size
    inc = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if inc.size != n:
        raise ValueError(f"mask must have {n} entries, got {inc.size}")
    live = inc & ~np.isnan(corr)
    c = corr[live]
    nl = int(live.sum())
    out = {
        "n": int(n),
        "n_included": int(inc.sum()),
        "n_dead": int((inc & np.isnan(corr)).sum()),
        "n_live": nl,
        "median_corr": float(np.median(c)) if nl else math.nan,
        "mean_corr": float(np.mean(c)) if nl else math.nan,
    }
    for t in thresholds:
        out[f"frac_corr_gt_{t}"] = float((c > t).mean()) if nl else math.nan
    if df is not None:
        if "mutual" in df:
            out["frac_mutual"] = float(df["mutual"].to_numpy(bool)[live].mean()) if nl else math.nan
        if "assign_corr" in df:
            ac = np.nan_to_num(df["assign_corr"].to_numpy(np.float64)[live], nan=0.0)
            out["median_assign_corr"] = float(np.median(ac)) if nl else math.nan
            out["mean_assign_corr"] = float(np.mean(ac)) if nl else math.nan
            for t in thresholds:
                out[f"frac_assign_gt_{t}"] = float((ac > t).mean()) if nl else math.nan
    return out
