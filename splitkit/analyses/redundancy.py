"""Redundancy inside one dictionary (near-copies of a feature) and what it does to cross-run matching.

A dictionary that holds k near-identical copies of a feature counts that feature k times in any
median over features. This module measures how often that happens and gives the matching figures
with the copies counted once.

Twins. A feature's *twin* is its most similar OTHER feature in the same dictionary, by

* activation: exact Pearson correlation of the activations over the analysis tokens
  (``splitkit.correlation.max_correlation(acts, acts)``, the self match dropped), or
* decoder: cosine of the decoder rows ``W_dec [n, d]`` (row blocks, top-k kept; never ``[n, n]``).

Features with no activation variance (dead, or constant) have no activation twin (index -1, NaN)
and are offered to nobody; zero decoder rows likewise have no decoder twin.

Clusters. At a threshold t (0.9 by default) features are joined when one is in the other's top-k
list above t; clusters are the connected components of that graph (single linkage). When no feature
has k or more others above t, the top-k graph holds every pair above t and the clusters are exact;
``Clusters.n_saturated`` counts the features whose whole list lay above t (then a larger ``k`` may
merge further clusters). One representative per cluster, the member that fires on the most tokens
(lowest index on ties), gives the de-duplicated dictionary.

Summary keys (:func:`redundancy_summary`), shares over the live features (activation: non-zero
variance; decoder: non-zero row):

* ``twin_median_act_corr``, ``twin_share_act_0.9``: median twin correlation, share of features whose
  twin correlates above the threshold (the key carries the threshold);
* ``twin_median_dec_cos``, ``twin_share_dec_0.9``: the same by decoder cosine;
* ``n_clusters_act_0.9``, ``n_clusters_dec_0.9``: distinct features (clusters among live features);
* ``n_features`` (all), ``n_alive_act``, ``n_alive_dec``, ``n_saturated_act``, ``n_saturated_dec``.

Matching views (:func:`matching_views`) of A against B: the paper's many-to-one best match
(median over A's features of the best correlation in B), one-to-one (Hungarian or its sparse top-k
equivalent, ``correlation.match``; an A feature left unassigned counts as 0), the mutual-match share
and the number of distinct B features used as best matches; and the same medians over
representatives only (A's representatives matched against B's representatives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .. import correlation
from ..correlation.twins import Twins, _drop_self, activation_twins

__all__ = [
    "Twins",
    "Clusters",
    "activation_twins",
    "decoder_twins",
    "twin_clusters",
    "redundancy_summary",
    "matching_views",
    "view_figures",
]


@dataclass(frozen=True, eq=False)
class Clusters:
    """Connected components of the twin graph at ``threshold``.

    labels: int64 ``[n]`` cluster id in ``[0, n_clusters)`` for live features, -1 for the others.
    representative: bool ``[n]`` one member per cluster (the most frequently firing).
    n_clusters: distinct features among the live ones.
    n_saturated: features whose whole top-k list lay above the threshold (clusters may be split).
    """

    labels: np.ndarray
    representative: np.ndarray
    n_clusters: int
    n_saturated: int
    threshold: float

    @property
    def sizes(self) -> np.ndarray:
        """int64 ``[n_clusters]``: members per cluster."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_clusters)


def decoder_twins(W_dec, k: int = 8, chunk_rows: int = 1024) -> Twins:
    """Decoder twins: for every row of ``W_dec [n, d]``, the k rows of highest cosine (not itself).

    Computed in blocks of ``chunk_rows`` rows (``[chunk_rows, n]`` at a time) in float64.
    """
    if hasattr(W_dec, "detach"):
        W_dec = W_dec.detach().cpu().numpy()
    W = np.asarray(W_dec, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"W_dec must be [n >= 2, d], got shape {W.shape}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n = W.shape[0]
    norm = np.linalg.norm(W, axis=1)
    alive = norm > 0
    U = W / np.where(alive, norm, 1.0)[:, None]  # [n, d] unit rows (zero rows stay zero)
    kk = min(k, n - 1)
    idx = np.full((n, k), -1, np.int64)
    val = np.full((n, k), np.nan)
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        C = U[s:e] @ U.T  # [r, n]
        C[np.arange(e - s), np.arange(s, e)] = -np.inf  # never one's own twin
        C[:, ~alive] = -np.inf
        part = np.argpartition(-C, kk - 1, axis=1)[:, :kk]  # [r, kk] unordered
        pv = np.take_along_axis(C, part, 1)
        order = np.lexsort((part, -pv), axis=1)  # descending value, then index (deterministic)
        part = np.take_along_axis(part, order, 1)
        pv = np.take_along_axis(pv, order, 1)
        ok = np.isfinite(pv) & alive[s:e, None]
        idx[s:e, :kk] = np.where(ok, part, -1)
        val[s:e, :kk] = np.where(ok, pv, np.nan)
    return Twins(index=idx, value=val, alive=alive, kind="dec")


def twin_clusters(twins: Twins, threshold: float = 0.9, counts=None) -> Clusters:
    """Clusters of near-copies: connected components of the top-k pairs above ``threshold``.

    ``counts [n]``: firings per feature, to pick each cluster's representative (None: lowest index).
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a similarity in [-1, 1], got {threshold}")
    n = twins.alive.shape[0]
    counts = np.zeros(n) if counts is None else np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.shape[0] != n:
        raise ValueError(f"counts must have one entry per feature ({n}), got {counts.shape[0]}")
    above = (twins.index >= 0) & (np.nan_to_num(twins.value, nan=-np.inf) > threshold)  # [n, k]
    rows = np.repeat(np.arange(n), twins.index.shape[1])[above.ravel()]
    cols = twins.index.ravel()[above.ravel()]
    G = sp.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    _, comp = connected_components(G, directed=True, connection="weak")
    live = np.flatnonzero(twins.alive)
    # relabel the live features' components 0..n_clusters-1 in order of first appearance
    uniq, first, inv = np.unique(comp[live], return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    labels = np.full(n, -1, np.int64)
    labels[live] = rank[inv]
    # representative: most firings, then lowest index
    order = np.lexsort((live, -counts[live], labels[live]))  # by label, then -count, then index
    lab_sorted = labels[live][order]
    head = np.ones(order.size, bool)
    head[1:] = lab_sorted[1:] != lab_sorted[:-1]
    rep = np.zeros(n, bool)
    rep[live[order[head]]] = True
    saturated = int((above.all(1) & twins.alive).sum()) if above.shape[1] else 0
    return Clusters(labels=labels, representative=rep, n_clusters=int(uniq.size), n_saturated=saturated,
                    threshold=float(threshold))


def _tag(threshold: float) -> str:
    return f"{threshold:g}"


def redundancy_summary(acts=None, W_dec=None, threshold: float = 0.9, k: int = 8, mask=None) -> dict:
    """The in-dictionary twin statistics of one dictionary (keys in the module docstring).

    ``acts [n_tokens, n]`` and/or ``W_dec [n, d]``: the figures of whichever is given.
    ``mask [n]`` (bool): restrict the medians and shares to these features (e.g. the counted ones);
    twins are still searched over the whole dictionary.
    """
    if acts is None and W_dec is None:
        raise ValueError("redundancy_summary needs acts [n_tokens, n], W_dec [n, d] or both")
    n = acts.shape[1] if acts is not None else np.asarray(W_dec).shape[0]
    if acts is not None and W_dec is not None and np.asarray(W_dec).shape[0] != n:
        raise ValueError(f"acts has {n} features but W_dec has {np.asarray(W_dec).shape[0]} rows")
    sel = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if sel.size != n:
        raise ValueError(f"mask must have {n} entries, got {sel.size}")
    t = _tag(threshold)
    out: dict = {"n_features": int(n), "threshold": float(threshold), "k": int(k)}
    counts = None
    if acts is not None:
        counts = np.asarray((acts != 0).sum(axis=0)).reshape(-1)
    for kind, tw in (("act", activation_twins(acts, k=k) if acts is not None else None),
                     ("dec", decoder_twins(W_dec, k=k) if W_dec is not None else None)):
        if tw is None:
            continue
        use = tw.alive & sel
        v = tw.twin_value[use]
        v = v[np.isfinite(v)]
        cl = twin_clusters(tw, threshold, counts)
        name = "corr" if kind == "act" else "cos"
        out[f"twin_median_{kind}_{name}"] = float(np.median(v)) if v.size else float("nan")
        out[f"twin_share_{kind}_{t}"] = float((v > threshold).mean()) if v.size else float("nan")
        out[f"n_clusters_{kind}_{t}"] = cl.n_clusters
        out[f"n_alive_{kind}"] = int(tw.alive.sum())
        out[f"n_saturated_{kind}"] = cl.n_saturated
    return out


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if x.size else float("nan")


def view_figures(df, mask_a) -> dict:
    """The matching views of one ``correlation.match`` table over the A rows of ``mask_a [n_a]``.

    ``many_to_one_median`` (each A feature's best B correlation, the paper's figure),
    ``one_to_one_median`` (the assignment's correlation; unassigned rows count as 0),
    ``mutual_share`` and ``mutual_median`` (rows whose best match points back), ``n_distinct_best``
    (distinct B features used as best matches) and ``n`` (rows counted: in the mask, not dead).
    """
    corr = df["corr"].to_numpy(np.float64)
    use = np.asarray(mask_a, bool).reshape(-1) & np.isfinite(corr)
    one = np.nan_to_num(df["assign_corr"].to_numpy(np.float64), nan=0.0)  # unassigned: 0
    mutual = df["mutual"].to_numpy(bool)
    best = df["best_b"].to_numpy()
    return {
        "n": int(use.sum()),
        "many_to_one_median": _median(corr[use]),
        "one_to_one_median": _median(one[use]),
        "mutual_share": float(mutual[use].mean()) if use.any() else float("nan"),
        "mutual_median": _median(corr[use & mutual]),
        "n_distinct_best": int(np.unique(best[use]).size),
    }


def _views(acts_a, acts_b, mask_a: np.ndarray, k: int, assignment: str) -> dict:
    return view_figures(correlation.match(acts_a, acts_b, k=k, assignment=assignment), mask_a)


def matching_views(acts_a, acts_b, *, reps_a=None, reps_b=None, mask_a=None, k: int = 8,
                   assignment: str = "auto") -> dict:
    """Many-to-one, one-to-one and mutual views of matching A's features to B's, all and de-duplicated.

    ``acts_a [n_tokens, n_a]``, ``acts_b [n_tokens, n_b]``: same tokens. ``reps_a [n_a]``,
    ``reps_b [n_b]`` (bool): each dictionary's cluster representatives (``Clusters.representative``);
    when both are given the ``dedup_*`` figures match representatives of A against those of B.
    ``mask_a [n_a]`` (bool): A features to count (e.g. the paper's count); dead ones never count.
    ``assignment``: passed to ``correlation.match`` ("auto": Hungarian while n_a * n_b is small).

    Returns ``{"n", "many_to_one_median", "one_to_one_median", "mutual_share", "mutual_median",
    "n_distinct_best"}`` plus the same keys prefixed ``dedup_`` (with ``dedup_n_b``).
    """
    n_a, n_b = acts_a.shape[1], acts_b.shape[1]
    mask = np.ones(n_a, bool) if mask_a is None else np.asarray(mask_a, bool).reshape(-1)
    if mask.size != n_a:
        raise ValueError(f"mask_a must have {n_a} entries, got {mask.size}")
    out = _views(acts_a, acts_b, mask, k, assignment)
    if (reps_a is None) != (reps_b is None):
        raise ValueError("give both reps_a and reps_b (the representatives of each dictionary) or neither")
    if reps_a is not None:
        ra = np.asarray(reps_a, bool).reshape(-1)
        rb = np.asarray(reps_b, bool).reshape(-1)
        if ra.size != n_a or rb.size != n_b:
            raise ValueError(f"reps_a / reps_b must have {n_a} / {n_b} entries, got {ra.size} / {rb.size}")
        ia, ib = np.flatnonzero(ra), np.flatnonzero(rb)
        sub_a = acts_a[:, ia] if not sp.issparse(acts_a) else sp.csr_matrix(acts_a)[:, ia]
        sub_b = acts_b[:, ib] if not sp.issparse(acts_b) else sp.csr_matrix(acts_b)[:, ib]
        d = _views(sub_a, sub_b, mask[ia], k, assignment)
        out.update({f"dedup_{key}": v for key, v in d.items()})
        out["dedup_n_b"] = int(ib.size)
    return out
