"""One-to-one assignments and the best, mutual and assigned matches of A's columns in B.

One-to-one assignment (``match``): the Hungarian algorithm (``linear_sum_assignment``) on the full
matrix while ``n_a * n_b`` is small, else LAPJVsp (``min_weight_full_bipartite_matching``) on the
graph of A->B and B->A top-k edges, which gives the same assignment whenever the optimum's edges are
in that graph (tested), or a greedy pass on the same edges. :func:`match_with_matrix` keeps the full
matrix (``CorrelationMatrix``) so that the matching of column subsets (de-duplicated features) reads it
instead of passing over the tokens again. :func:`summarize` gives a matching's headline figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from .columns import TopK, _check_pair
from .engine import _compute, _topk_rows

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
    return _match_table(fwd, rev, full, A.density, B.density, assignment, k)


@dataclass(frozen=True)
class CorrelationMatrix:
    """The full A x B correlation matrix of one pass over the tokens, kept so that the matching of
    any column subsets (de-duplicated features, say) comes from it without another pass.

    ``C``: float64 ``[n_a, n_b]`` (NaN on dead rows and columns); ``density_a [n_a]``,
    ``density_b [n_b]``: firing shares; ``dead_a [n_a]``, ``dead_b [n_b]``: zero-variance columns;
    ``n_tokens``; ``engine``: the engine that computed ``C``.
    """

    C: np.ndarray
    density_a: np.ndarray
    density_b: np.ndarray
    dead_a: np.ndarray
    dead_b: np.ndarray
    n_tokens: int
    engine: str

    def match(self, ia=None, ib=None, k: int = 8) -> pd.DataFrame:
        """The :func:`match` table (Hungarian assignment) of A columns ``ia`` against B columns ``ib``
        (None: all), row ``i`` for A column ``ia[i]``, B indices relative to ``ib``.

        The same table as ``match(acts_a[:, ia], acts_b[:, ib], k, assignment="dense")``: with the
        sparse engines each entry of ``C`` depends on its own pair of columns only, so a submatrix
        is what that pass would compute, and the top-k keeps the engines' order (value, then index).
        """
        ia = np.arange(self.C.shape[0]) if ia is None else np.asarray(ia, np.int64)
        ib = np.arange(self.C.shape[1]) if ib is None else np.asarray(ib, np.int64)
        sub = self.C[np.ix_(ia, ib)]
        dead_a, dead_b = self.dead_a[ia], self.dead_b[ib]
        v, i = _topk_rows(sub, k)
        rv, ri = _topk_rows(sub.T, k)
        meta = {"engine": self.engine, "k": k}
        fwd = TopK(i, v.astype(np.float32), dead_a, dead_b, self.n_tokens, meta)
        rev = TopK(ri, rv.astype(np.float32), dead_b, dead_a, self.n_tokens, dict(meta))
        return _match_table(fwd, rev, sub, self.density_a[ia], self.density_b[ib], "dense", k)


def match_with_matrix(acts_a, acts_b, k: int = 8, *, chunk: int | None = None, dtype=np.float64,
                      engine: str = "auto") -> tuple[pd.DataFrame, CorrelationMatrix]:  # fmt: skip
    """:func:`match` with the Hungarian assignment, and the full matrix it was computed from.

    Use it where a second matching over a subset of the same columns follows (``CorrelationMatrix.match``);
    the matrix costs ``8 n_a n_b`` bytes. Returns ``(table, matrix)``; the table is the one ``match``
    returns with ``assignment="dense"``.
    """
    A, B = _check_pair(acts_a, acts_b, k)
    _, _, fwd, rev, full = _compute(A, B, k, chunk, dtype, engine, True, True)
    df = _match_table(fwd, rev, full, A.density, B.density, "dense", k)
    return df, CorrelationMatrix(full, A.density.copy(), B.density.copy(), A.dead.copy(), B.dead.copy(), A.n_tokens,
                                fwd.meta["engine"])


def _match_table(fwd: TopK, rev: TopK, full, density_a: np.ndarray, density_b: np.ndarray, assignment: str,
                 k: int) -> pd.DataFrame:
    """The table of :func:`match` from the top-k both ways and (dense assignment) the full matrix."""
    n_a = fwd.index.shape[0]
    best_b = fwd.index[:, 0]
    has = best_b >= 0
    best_a_of_b = np.full(n_a, -1, np.int64)
    corr_b = np.full(n_a, np.nan)
    best_a_of_b[has] = rev.index[best_b[has], 0]
    corr_b[has] = rev.value[best_b[has], 0]
    mutual = has & (best_a_of_b == np.arange(n_a))
    dens_b = np.full(n_a, np.nan)
    dens_b[has] = density_b[best_b[has]]
    if assignment == "dense":
        assign_b, assign_corr = assign_dense(full)
    elif assignment in ("topk", "greedy"):
        assign_b, assign_corr = assign_topk(fwd, rev, method=assignment)
    else:
        assign_b, assign_corr = np.full(n_a, -1, np.int64), np.full(n_a, np.nan)
    df = pd.DataFrame(
        {
            "a": np.arange(n_a),
            "best_b": best_b,
            "corr": fwd.value[:, 0].astype(np.float64),
            "best_a_of_b": best_a_of_b,
            "corr_b": corr_b,
            "mutual": mutual,
            "density_a": density_a,
            "density_b": dens_b,
            "dead_a": fwd.dead_a,
            "assign_b": assign_b,
            "assign_corr": assign_corr,
        }
    )
    df.attrs.update(
        engine=fwd.meta["engine"], k=k, assignment=assignment, n_tokens=fwd.n_tokens,
        n_a=n_a, n_b=int(fwd.dead_b.size), n_dead_a=int(fwd.dead_a.sum()), n_dead_b=int(fwd.dead_b.sum()),
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
