"""Across seeds: how many of run A's automaton edges, mapped through a feature matching, are run B's edges."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

def _edge_set(edges) -> set:
    if isinstance(edges, nx.DiGraph):
        return {(int(a), int(b)) for a, b in edges.edges()}
    if isinstance(edges, pd.DataFrame):
        e = edges[edges["kept"]] if "kept" in edges else edges
        return set(zip(e["src"].astype(int), e["dst"].astype(int)))
    return {(int(a), int(b)) for a, b in edges}


def _share(edges_a: np.ndarray, best_b: np.ndarray, set_b: set) -> float:
    if not len(edges_a):
        return float("nan")
    ma, mb = best_b[edges_a[:, 0]], best_b[edges_a[:, 1]]
    return float(np.mean([(a >= 0 and b >= 0 and (int(a), int(b)) in set_b) for a, b in zip(ma, mb)]))


def cross_seed_share(edges_a, edges_b, best_b, n_shuffles: int = 100, seed: int = 0) -> dict:
    """Share of A's edges ``(x, y)`` whose matches ``(best_b[x], best_b[y])`` are linked in B.

    ``edges_a``: A's automaton edges (pairs, a DataFrame with ``src, dst`` or a DiGraph); ``edges_b``:
    B's graph (its kept edges); ``best_b: [n_a]`` int, -1 for no match. The baseline is the same share
    with ``best_b`` permuted at random (``n_shuffles`` seeded repeats). Self-loops are left out.
    Returns ``{share, shuffled_mean, shuffled_std, shuffled_q95, n_edges}``.
    """
    best_b = np.asarray(best_b, dtype=np.int64)
    ea = np.array(sorted(e for e in _edge_set(edges_a) if e[0] != e[1]), dtype=np.int64).reshape(-1, 2)
    if len(ea) and ea.max() >= len(best_b):
        raise ValueError(f"best_b has {len(best_b)} entries but A's edges name unit {ea.max()}")
    sb = _edge_set(edges_b)
    rng = np.random.default_rng(seed)
    null = np.array([_share(ea, rng.permutation(best_b), sb) for _ in range(n_shuffles)])
    return {"share": _share(ea, best_b, sb), "shuffled_mean": float(np.mean(null)) if n_shuffles else np.nan,
            "shuffled_std": float(np.std(null)) if n_shuffles else np.nan,
            "shuffled_q95": float(np.quantile(null, 0.95)) if n_shuffles else np.nan, "n_edges": int(len(ea))}


def automata_in_both(auto_a: pd.DataFrame, auto_b: pd.DataFrame, graph_b, best_b, min_share: float = 0.5,
                     min_jaccard: float = 0.5) -> pd.DataFrame:
    """Each automaton of A mapped onto B: its edge share there and B's automaton with the most
    overlapping (matched) states. ``found_in_both`` when the share is >= ``min_share`` and that
    Jaccard index is >= ``min_jaccard``. Columns: ``automaton_a, kind, n_states, edge_share,
    automaton_b, jaccard, found_in_both``."""
    best_b = np.asarray(best_b, dtype=np.int64)
    sb = _edge_set(graph_b)
    b_states = [set(s) for s in auto_b["states"]] if len(auto_b) else []
    rows = []
    for r in auto_a.itertuples(index=False):
        ea = np.asarray(r.edges, dtype=np.int64).reshape(-1, 2)
        mapped = {int(best_b[s]) for s in r.states if best_b[s] >= 0}
        jac = [len(mapped & s) / len(mapped | s) if mapped | s else 0.0 for s in b_states]
        j = int(np.argmax(jac)) if jac else -1
        share = _share(ea, best_b, sb)
        rows.append({"automaton_a": int(r.automaton), "kind": r.kind, "n_states": int(r.n_states), "edge_share": share,
                     "automaton_b": int(auto_b["automaton"].iloc[j]) if j >= 0 else -1,
                     "jaccard": float(jac[j]) if j >= 0 else 0.0,
                     "found_in_both": bool(share >= min_share and j >= 0 and jac[j] >= min_jaccard)})
    return pd.DataFrame(rows, columns=["automaton_a", "kind", "n_states", "edge_share", "automaton_b", "jaccard",
                                       "found_in_both"])
