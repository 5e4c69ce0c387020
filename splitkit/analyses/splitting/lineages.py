"""Families: the main lineage's trees across sizes (each node under its strongest parent), and a
listing of the largest with their tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cofire import _as_acts


def main_lineage(forest: nx.DiGraph, weight: str = "decoder_cos") -> list[tuple[str, str]]:
    """Each node's edge from its strongest parent among those linked: the largest ``weight``
    (default the decoder cosine), then the largest masked cosine (where ``weight`` is missing or NaN,
    e.g. links made without decoders), then the lowest parent id.

    Sets the boolean edge attribute ``lineage`` on every edge (True on those returned). With one
    parent per node these edges form a forest of trees, however densely the other links join the
    sizes; the web of all links is what the fates read. Why the decoder cosine: every linked parent
    already passes the paper's masked-cosine threshold, and by that cosine a dense parent, which
    fires wherever a rare child does, is every rare child's best parent (on the default family of
    run A: one tree of 234 nodes, a parent with 46 lineage children, median decoder cosine 0.41 along
    the lineage); by decoder cosine the largest tree has 60 nodes, at most 18 children, median
    decoder cosine 0.65 and masked cosine 0.80 (docs/splitting.md).
    """
    def key(u: str, v: str) -> tuple[float, float]:
        d = forest.edges[u, v]
        w = float(d.get(weight, float("nan")))
        return (w if w == w else float("-inf"), float(d.get("masked_cos", 0.0)))

    kept = []
    for v in forest:
        best = None
        for u in forest.predecessors(v):
            k = key(u, v)
            if best is None or k > best[0] or (k == best[0] and u < best[1]):
                best = (k, u)
        for u in forest.predecessors(v):
            forest.edges[u, v]["lineage"] = best is not None and u == best[1]
        if best is not None:
            kept.append((best[1], v))
    return kept


def families(forest: nx.DiGraph, weight: str = "decoder_cos") -> pd.DataFrame:
    """Families: the trees of the main lineage (:func:`main_lineage`, each node under its strongest
    parent), over all sizes; sets node attribute ``family`` and edge attribute ``lineage``.

    At the paper's threshold the links of distinct features form a dense web (a child has several
    parents, most nodes of a run are weakly connected), so its components would make one family of
    the whole run; the strongest-parent trees are what following a feature across sizes means.
    Families are numbered 0, 1, ... by decreasing node count (ties: the lowest node id first).
    Returns one row per family: ``family, n_nodes, n_features`` (twin members counted),
    ``n_edges`` (its lineage edges), ``n_web_edges`` (all links among its nodes), ``depth``
    (number of sizes it spans), ``min_size, max_size, n_roots`` (nodes at its smallest size: 1, a
    tree's root), ``root`` (its root's node id).
    """
    tree = nx.Graph()
    tree.add_nodes_from(forest)
    tree.add_edges_from(main_lineage(forest, weight))
    comps = []
    for comp in nx.connected_components(tree):
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
                     "n_edges": len(nodes) - 1, "n_web_edges": forest.subgraph(nodes).number_of_edges(),
                     "depth": len(set(sz)), "min_size": lo, "max_size": max(sz), "n_roots": len(roots),
                     "root": roots[0]})
    return pd.DataFrame(rows, columns=["family", "n_nodes", "n_features", "n_edges", "n_web_edges", "depth",
                                       "min_size", "max_size", "n_roots", "root"])


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
