"""Fates of the forest's features at each size step, and the per-step summaries built on them.

Fates (per size step, stated with their parameters in the forest's graph attributes):

* parent side (features of the smaller size): ``vanishes`` (no child at or above the threshold),
  ``persists`` (exactly one child, similar both ways: ``min(cos_on_parent, cos_on_child) >=
  persist_cos``, default 0.8), ``splits`` (two or more children whose supports together carry at
  least ``split_cover`` of the parent's activation mass, default 0.5, "most"), ``partial`` (linked
  but neither: one child that is not similar both ways, or children covering less than
  ``split_cover``);
* child side (features of the larger size): ``novel`` (no parent), ``merges`` (two or more
  parents), ``inherits`` (one parent).
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import numpy as np
import pandas as pd

PARENT_FATES = ("persists", "splits", "partial", "vanishes")
CHILD_FATES = ("inherits", "merges", "novel")


def classify_fates(forest: nx.DiGraph, *, persist_cos: float = 0.8, split_cover: float = 0.5) -> nx.DiGraph:
    """Label every node's fate in place (and return the forest); see the module docstring.

    Adds node attributes ``fate_out`` (parent side: persists, splits, partial, vanishes; "" at
    the largest size), ``fate_in`` (child side: inherits, merges, novel; "" at the smallest),
    ``n_children``, ``n_parents``; and graph attributes ``persist_cos``, ``split_cover``.
    """
    if not 0 < split_cover <= 1 or not 0 < persist_cos <= 1:
        raise ValueError(f"persist_cos and split_cover must be in (0, 1], got {persist_cos}, {split_cover}")
    sizes = [int(s) for s in forest.graph["sizes"].split(",")] if forest.graph.get("sizes") else []
    lo_size, hi_size = (sizes[0], sizes[-1]) if sizes else (None, None)
    for v, a in forest.nodes(data=True):
        out = forest.out_degree(v)
        inn = forest.in_degree(v)
        a["n_children"], a["n_parents"] = int(out), int(inn)
        if a["size"] == hi_size:
            a["fate_out"] = ""
        elif out == 0:
            a["fate_out"] = "vanishes"
        elif out == 1:
            e = forest.edges[v, next(iter(forest.successors(v)))]
            a["fate_out"] = "persists" if min(e["cos_on_parent"], e["cos_on_child"]) >= persist_cos else "partial"
        else:
            a["fate_out"] = "splits" if a.get("children_cover", 0.0) >= split_cover else "partial"
        if a["size"] == lo_size:
            a["fate_in"] = ""
        else:
            a["fate_in"] = "novel" if inn == 0 else ("inherits" if inn == 1 else "merges")
    forest.graph["persist_cos"] = float(persist_cos)
    forest.graph["split_cover"] = float(split_cover)
    return forest



def step_summary(forest: nx.DiGraph, twin_share: Mapping[int, float] | None = None) -> pd.DataFrame:
    """One row per size step: the share of each fate and the branching.

    Columns: ``size, next_size, n_parents, n_children, n_edges``, ``share_<fate>`` for every
    parent fate (over the parents' nodes) and child fate (over the children's nodes),
    ``mean_children`` (over linked parents), ``max_children``, and ``twin_share_parent`` /
    ``twin_share_child`` when ``twin_share`` (``{size: share of features that have a twin}``) is
    given, or computed from the nodes' ``count`` when the forest collapsed twins. Call
    :func:`classify_fates` first.
    """
    sizes = [int(s) for s in forest.graph["sizes"].split(",")]
    by_size: dict[int, list] = {s: [] for s in sizes}
    for v, a in forest.nodes(data=True):
        by_size[a["size"]].append(a)
    if twin_share is None and forest.graph.get("twins_collapsed"):
        counts = {s: np.array([a["count"] for a in by_size[s]]) for s in sizes}
        twin_share = {s: float(c[c > 1].sum() / max(c.sum(), 1)) for s, c in counts.items()}
    rows = []
    for lo, hi in zip(sizes[:-1], sizes[1:]):
        P, C = by_size[lo], by_size[hi]
        row = {"size": lo, "next_size": hi, "n_parents": len(P), "n_children": len(C),
               "n_edges": int(sum(a["n_children"] for a in P))}
        for f in PARENT_FATES:
            row[f"share_{f}"] = sum(a["fate_out"] == f for a in P) / max(len(P), 1)
        for f in CHILD_FATES:
            row[f"share_{f}"] = sum(a["fate_in"] == f for a in C) / max(len(C), 1)
        nch = np.array([a["n_children"] for a in P if a["n_children"] > 0])
        row["mean_children"] = float(nch.mean()) if len(nch) else 0.0
        row["max_children"] = int(nch.max()) if len(nch) else 0
        if twin_share is not None:
            row["twin_share_parent"] = float(twin_share.get(lo, np.nan))
            row["twin_share_child"] = float(twin_share.get(hi, np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def branching(forest: nx.DiGraph) -> pd.DataFrame:
    """Branching-factor distribution per step: columns ``size, next_size, n_children, n_parents``
    (how many parents of ``size`` have exactly ``n_children`` children at ``next_size``)."""
    sizes = [int(s) for s in forest.graph["sizes"].split(",")]
    nxt = dict(zip(sizes[:-1], sizes[1:]))
    cnt: dict[tuple[int, int], int] = {}
    for _, a in forest.nodes(data=True):
        if a["size"] in nxt:
            key = (a["size"], forest.out_degree(_))
            cnt[key] = cnt.get(key, 0) + 1
    rows = [{"size": s, "next_size": nxt[s], "n_children": b, "n_parents": c} for (s, b), c in sorted(cnt.items())]
    return pd.DataFrame(rows, columns=["size", "next_size", "n_children", "n_parents"])
