"""Families: the forest's connected lineages across sizes, and a listing of the largest with their tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cofire import _as_acts


def families(forest: nx.DiGraph) -> pd.DataFrame:
    """Connected lineages (weak components over all sizes); sets node attribute ``family``.

    Families are numbered 0, 1, ... by decreasing node count (ties: the lowest node id first).
    Returns one row per family: ``family, n_nodes, n_features`` (twin members counted),
    ``n_edges, depth`` (number of sizes it spans), ``min_size, max_size, n_roots`` (nodes at its
    smallest size), ``root`` (its first root's node id).
    """
    comps = []
    for comp in nx.weakly_connected_components(forest):
        nodes = sorted(comp)
        comps.append((-len(nodes), nodes[0], nodes))
    comps.sort()
    rows = []
    for fam, (_, _, nodes) in enumerate(comps):
        sz = [forest.nodes[v]["size"] for v in nodes]
        lo = min(sz)
        for v in nodes:
            forest.nodes[v]["family"] = fam
        roots = [v for v, s in zip(nodes, sz) if s == lo]
        rows.append({"family": fam, "n_nodes": len(nodes),
                     "n_features": int(sum(forest.nodes[v].get("count", 1) for v in nodes)),
                     "n_edges": forest.subgraph(nodes).number_of_edges(), "depth": len(set(sz)),
                     "min_size": lo, "max_size": max(sz), "n_roots": len(roots), "root": roots[0]})
    return pd.DataFrame(rows, columns=["family", "n_nodes", "n_features", "n_edges", "depth", "min_size",
                                       "max_size", "n_roots", "root"])


def _top_tokens(col: sp.csc_matrix, j: int, token_ids: np.ndarray, n_top: int) -> tuple[int, ...]:
    """The token ids carrying most of feature ``j``'s activation mass (summed per token id)."""
    s, e = col.indptr[j], col.indptr[j + 1]
    if s == e:
        return ()
    ids = token_ids[col.indices[s:e]]
    uniq, inv = np.unique(ids, return_inverse=True)
    mass = np.bincount(inv, weights=col.data[s:e].astype(np.float64))
    top = np.lexsort((uniq, -mass))[:n_top]
    return tuple(int(t) for t in uniq[top])


def family_listing(forest: nx.DiGraph, acts: Mapping[int, sp.spmatrix], token_ids: np.ndarray, *,
                   logit_effects: Mapping[int, np.ndarray] | None = None, n_families: int = 10,
                   n_top: int = 5, decode: Callable[[int], str] | None = None) -> pd.DataFrame:
    """The largest families, node by node, with their top activating and top promoted tokens.

    ``acts[size]``: ``[n_tokens, n]``; ``token_ids``: ``[n_tokens]`` ints (the analysis tokens);
    ``logit_effects[size]``: ``[n, vocab]``. Top activating tokens are the token ids with the
    most activation mass (summed over their positions); top promoted ones the largest logit
    effects. Columns: ``family, node, size, feature, count, density, fate_in, fate_out,
    n_children, n_parents, top_tokens, top_promoted`` (tuples of token ids; empty without logit
    effects) and, with ``decode``, ``top_tokens_text`` and ``top_promoted_text``.
    Call :func:`families` (and :func:`classify_fates`) first.
    """
    token_ids = np.asarray(token_ids)
    if any(a.get("family") is None for _, a in forest.nodes(data=True)):
        families(forest)
    want: dict[int, list] = {}
    for v, a in forest.nodes(data=True):
        if a["family"] < n_families:
            want.setdefault(a["size"], []).append(v)
    rows = []
    for s, nodes in sorted(want.items()):
        A = _as_acts(acts[s], f"acts[{s}]")
        if A.shape[0] != len(token_ids):
            raise ValueError(f"token_ids must be [n_tokens] = [{A.shape[0]}], got {len(token_ids)}")
        feats = np.array([forest.nodes[v]["feature"] for v in nodes], np.int64)
        cols = A[:, feats].tocsc()
        cols.sort_indices()
        L = None if logit_effects is None else np.asarray(logit_effects[s])
        for u, v in enumerate(nodes):
            a = forest.nodes[v]
            promoted = () if L is None else tuple(int(t) for t in np.argsort(-L[a["feature"]], kind="stable")[:n_top])
            row = {"family": a["family"], "node": v, "size": a["size"], "feature": a["feature"],
                   "count": a.get("count", 1), "density": a.get("density", np.nan),
                   "fate_in": a.get("fate_in", ""), "fate_out": a.get("fate_out", ""),
                   "n_children": forest.out_degree(v), "n_parents": forest.in_degree(v),
                   "top_tokens": _top_tokens(cols, u, token_ids, n_top), "top_promoted": promoted}
            if decode is not None:
                row["top_tokens_text"] = " | ".join(decode(t) for t in row["top_tokens"])
                row["top_promoted_text"] = " | ".join(decode(t) for t in promoted)
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["family", "size", "feature"], kind="stable").reset_index(drop=True)
    return df
