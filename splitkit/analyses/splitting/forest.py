"""The splitting forest of one run: a DAG over every feature of every size, twins collapsed into one node.

A parent with several children has split; a child with several parents is a merge, so the
structure is a DAG, not a strict tree. :func:`splitting_forest` runs links, forest, fates and
families in one call.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cofire import _as_acts, _col_sums
from .fates import classify_fates
from .lineages import families
from .linking import LINK_COLUMNS, _sorted_sizes, link_family


def _node(run: str, size: int, feature: int) -> str:
    return f"{run}/{size}/{feature}"


def _twin_groups(labels: np.ndarray | None, n: int) -> np.ndarray:
    """int64 ``[n]``: the representative (lowest feature id) of each feature's twin cluster."""
    rep = np.arange(n, dtype=np.int64)
    if labels is None:
        return rep
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"twin labels must be [n] = [{n}] (one label per feature, -1 = no twin), got {labels.shape}")
    lab = labels.astype(np.int64)
    sel = lab >= 0
    if sel.any():
        # the lowest feature id of every label: first occurrence after sorting by label
        ids = np.nonzero(sel)[0]
        uniq, first = np.unique(lab[ids], return_index=True)
        rep_of_label = dict(zip(uniq.tolist(), ids[first].tolist()))
        rep[ids] = np.array([rep_of_label[v] for v in lab[ids].tolist()], np.int64)
    return rep


def build_forest(step_links: Mapping[tuple[int, int], pd.DataFrame], densities: Mapping[int, np.ndarray], *,
                 run: str = "A", threshold: float = 0.4, twins: Mapping[int, np.ndarray] | None = None,
                 cover: Mapping[int, np.ndarray] | None = None) -> nx.DiGraph:
    """The splitting forest of one run: a DAG over every feature of every size.

    Args:
        step_links: ``{(size, next_size): links DataFrame}`` between consecutive sizes (from
            :func:`link_family`); every child keeps all its parents at or above ``threshold``.
        densities: ``{size: float [n]}`` firing densities; their keys are the sizes and their
            lengths the dictionary sizes.
        run: run label used in node ids ``"{run}/{size}/{feature}"``.
        twins: optional ``{size: int [n]}`` twin-cluster labels within one dictionary (equal
            labels = twins, -1 = none). Each cluster becomes one node named by its lowest feature
            id, with ``count`` members; an edge between clusters keeps the best member pair's
            link values (and ``n_pairs``, the member pairs linked).
        cover: optional ``{size: float [n]}`` children_cover of that size's features towards the
            next size (a collapsed node gets its members' maximum). Needed for ``splits``.

    Node attributes: ``run, size, feature, density`` (a cluster's maximum), ``count``, ``members``
    (comma-separated feature ids), ``children_cover``. Edge attributes: the link columns and
    ``n_pairs``. Graph attributes: ``run, sizes, threshold, twins_collapsed, twin_rule``.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sizes = _sorted_sizes(densities)
    steps = list(zip(sizes[:-1], sizes[1:]))
    missing = [s for s in steps if s not in step_links]
    if missing:
        raise ValueError(f"step_links lacks the consecutive steps {missing}; link every (size, next_size) pair")
    g = nx.DiGraph(run=run, sizes=",".join(map(str, sizes)), threshold=float(threshold),
                   twins_collapsed=twins is not None,
                   twin_rule=("in-dictionary twins (labels given) collapsed into one node; edge = best member pair"
                              if twins is not None else "none"))
    reps = {}
    for s in sizes:
        dens = np.asarray(densities[s], np.float64)
        n = len(dens)
        rep = _twin_groups(None if twins is None or s not in twins else twins[s], n)
        reps[s] = rep
        cov = np.zeros(n) if cover is None or s not in cover else np.asarray(cover[s], np.float64)
        if cov.shape != (n,):
            raise ValueError(f"cover[{s}] must be [{n}], got {cov.shape}")
        order = np.argsort(rep, kind="stable")
        r_sorted = rep[order]
        starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
        ends = np.r_[starts[1:], n]
        dmax = np.maximum.reduceat(dens[order], starts) if n else dens
        cmax = np.maximum.reduceat(cov[order], starts) if n else cov
        for u, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            f = int(r_sorted[a])
            mem = order[a:b]
            g.add_node(_node(run, s, f), run=run, size=int(s), feature=f, density=float(dmax[u]), count=int(b - a),
                       members=",".join(map(str, mem.tolist())), children_cover=float(cmax[u]))
    for lo, hi in steps:
        df = step_links[(lo, hi)]
        df = df[df["masked_cos"] >= threshold]
        if not len(df):
            continue
        pr = reps[lo][df["parent"].to_numpy()]
        cr = reps[hi][df["child"].to_numpy()]
        d = df.assign(_p=pr, _c=cr).sort_values(["_p", "_c", "masked_cos"], ascending=[True, True, False],
                                                 kind="stable")
        npairs = d.groupby(["_p", "_c"], sort=False).size().to_numpy()
        best = d.drop_duplicates(["_p", "_c"], keep="first")
        cols = [c for c in LINK_COLUMNS if c not in ("parent", "child", "rank")]
        vals = {c: best[c].to_numpy() for c in cols}
        for r, (p, c) in enumerate(zip(best["_p"].tolist(), best["_c"].tolist())):
            attrs = {col: (int(vals[col][r]) if col == "n_cofire" else float(vals[col][r])) for col in cols}
            attrs["n_pairs"] = int(npairs[r])
            g.add_edge(_node(run, lo, p), _node(run, hi, c), **attrs)
    return g



def splitting_forest(acts: Mapping[int, sp.spmatrix], densities: Mapping[int, np.ndarray] | None = None,
                     W_dec: Mapping[int, np.ndarray] | None = None, *, run: str = "A", threshold: float = 0.4,
                     k: int = 16, persist_cos: float = 0.8, split_cover: float = 0.5,
                     twins: Mapping[int, np.ndarray] | None = None, min_cofire: int = 1, engine: str = "auto"
                     ) -> tuple[nx.DiGraph, dict[tuple[int, int], pd.DataFrame]]:
    """Links, forest and fates of one run in one call: ``(forest, step_links)``.

    ``acts[size]``: ``[n_tokens, n]`` sparse; ``densities`` default to each feature's share of
    tokens with a nonzero activation. The forest carries fates (:func:`classify_fates`) and
    families (:func:`families`, node attribute ``family``).
    """
    sizes = _sorted_sizes(acts)
    if densities is None:
        densities = {s: _col_sums(_as_acts(acts[s], f"acts[{s}]"), acts[s].shape[1], 0) / acts[s].shape[0]
                     for s in sizes}
    step_links = link_family(acts, W_dec, k=k, min_cofire=min_cofire, engine=engine, threshold=threshold)
    cover = {lo: df.attrs["children_cover"] for (lo, _), df in step_links.items()}
    forest = build_forest(step_links, densities, run=run, threshold=threshold, twins=twins, cover=cover)
    classify_fates(forest, persist_cos=persist_cos, split_cover=split_cover)
    families(forest)
    return forest, step_links


def feature_nodes(forest: nx.DiGraph) -> dict[tuple[int, int], str]:
    """``{(size, feature): node id}`` for every feature, twins mapped to their cluster's node."""
    out = {}
    for v, a in forest.nodes(data=True):
        for f in str(a.get("members", a["feature"])).split(","):
            out[(int(a["size"]), int(f))] = v
    return out
