"""Universality of the splits: are one run's forest edges also the other run's, under a feature matching?"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import numpy as np

from .forest import feature_nodes


def _edge_share(edges_a, node_b: dict, forest_b: nx.DiGraph, match: Mapping[int, np.ndarray]):
    hit = mapped = 0
    for (sp_, fp), (sc, fc) in edges_a:
        mp, mc = match[sp_][fp], match[sc][fc]
        if mp < 0 or mc < 0:
            continue
        mapped += 1
        hit += forest_b.has_edge(node_b[(sp_, int(mp))], node_b[(sc, int(mc))])
    return hit, mapped


def _children_corr(parents_a, forest_a, forest_b, node_b, match) -> float:
    x, y = [], []
    for v, s, f in parents_a:
        m = match[s][f]
        if m >= 0:
            x.append(forest_a.out_degree(v))
            y.append(forest_b.out_degree(node_b[(s, int(m))]))
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def split_universality(forest_a: nx.DiGraph, forest_b: nx.DiGraph, matches: Mapping[int, np.ndarray], *,
                       n_shuffles: int = 20, seed: int = 0) -> dict:
    """Are A's splits also B's? The share of A's forest edges whose matched ends are a B edge.

    ``matches[size]``: int ``[n_A features]``, the matched B feature of each A feature of that
    size (-1 = unmatched). An A edge ``p -> c`` (each node standing for its representative
    feature) counts as mapped when both ends have a match, and as a hit when
    ``m(p) -> m(c)`` is an edge of B's forest. The baseline repeats this with each size's matches
    shuffled among A's features (seeded permutations, ``n_shuffles`` repeats).

    Returns ``share, n_hit, n_mapped, n_edges, shuffled_mean, shuffled_std, shuffled`` (list),
    ``children_corr`` (Pearson, over matched A parents below the largest size, between a parent's
    number of children in A and its match's in B), ``children_corr_shuffled_mean`` and
    ``n_parents``.
    """
    sizes = [int(s) for s in forest_a.graph["sizes"].split(",")]
    match = {}
    for s in sizes:
        if s not in matches:
            raise ValueError(f"matches lacks size {s}; give the A->B matching of every size of the forest")
        m = np.asarray(matches[s], np.int64)
        n_a = sum(a.get("count", 1) for _, a in forest_a.nodes(data=True) if a["size"] == s)
        if m.shape != (n_a,):
            raise ValueError(f"matches[{s}] must be [{n_a}] (one B feature per A feature, -1 = none), got {m.shape}")
        match[s] = m
    node_b = feature_nodes(forest_b)
    for s in sizes:
        bad = [int(x) for x in match[s] if x >= 0 and (s, int(x)) not in node_b][:3]
        if bad:
            raise ValueError(f"matches[{s}] names B features {bad} that B's forest does not have at size {s}")
    fa = forest_a.nodes
    edges_a = [((fa[u]["size"], fa[u]["feature"]), (fa[v]["size"], fa[v]["feature"])) for u, v in forest_a.edges]
    parents_a = [(v, a["size"], a["feature"]) for v, a in forest_a.nodes(data=True) if a["size"] != sizes[-1]]
    hit, mapped = _edge_share(edges_a, node_b, forest_b, match)
    rng = np.random.default_rng(seed)
    shuf, shuf_corr = [], []
    for _ in range(n_shuffles):
        mm = {s: match[s][rng.permutation(len(match[s]))] for s in sizes}
        h, m_ = _edge_share(edges_a, node_b, forest_b, mm)
        shuf.append(h / m_ if m_ else float("nan"))
        shuf_corr.append(_children_corr(parents_a, forest_a, forest_b, node_b, mm))
    fin = np.array([x for x in shuf if np.isfinite(x)])
    fin_corr = np.array([x for x in shuf_corr if np.isfinite(x)])
    return {
        "share": hit / mapped if mapped else float("nan"),
        "n_hit": int(hit), "n_mapped": int(mapped), "n_edges": len(edges_a),
        "shuffled_mean": float(fin.mean()) if len(fin) else float("nan"),
        "shuffled_std": float(fin.std()) if len(fin) else float("nan"),
        "shuffled": [float(x) for x in shuf],
        "children_corr": _children_corr(parents_a, forest_a, forest_b, node_b, match),
        "children_corr_shuffled_mean": float(fin_corr.mean()) if len(fin_corr) else float("nan"),
        "n_parents": len(parents_a),
        "n_shuffles": int(n_shuffles), "seed": int(seed),
    }
