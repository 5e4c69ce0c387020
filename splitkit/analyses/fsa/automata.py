"""Automata in the graph: strongly connected components, simple cycles and chains; transition tables; bases compared."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pandas as pd

from .graph import FSAGraph, _show

AUTOMATA_COLUMNS = ("automaton", "kind", "n_states", "n_edges", "weight", "mean_pmi", "mean_mech", "states", "edges",
                    "label")


def find_automata(fg: FSAGraph) -> pd.DataFrame:
    """Strongly connected components (>= 2 states), simple cycles (2 .. ``max_cycle_len`` states, at
    most ``max_cycles``, leaving out those that are a whole SCC already) and chains (maximal paths of
    >= ``min_chain`` states through units in no SCC, taken longest first, disjoint).

    Self-loops stay in the graph but make no automaton. ``weight`` is the sum of the edges'
    ``cfg.weight``; rows are ranked by ``n_states`` then ``weight`` (``automaton`` = rank).
    Columns: ``AUTOMATA_COLUMNS``; ``states`` is a list of units (in cycle/chain order for those
    kinds), ``edges`` a list of ``[src, dst]``.
    """
    cfg = fg.config
    H = fg.graph.copy()
    H.remove_edges_from(list(nx.selfloop_edges(H)))
    found = []

    def add(kind, states, edges):
        ws = [H.edges[e] for e in edges]
        found.append({"kind": kind, "n_states": len(states), "n_edges": len(edges),
                      "weight": float(sum(e[cfg.weight] for e in ws)),
                      "mean_pmi": float(np.mean([e["pmi"] for e in ws])),
                      "mean_mech": float(np.mean([e["mech"] for e in ws])),
                      "states": [int(s) for s in states], "edges": [[int(a), int(b)] for a, b in edges],
                      "label": " | ".join(H.nodes[s]["label"] for s in states)})

    sccs = [c for c in nx.strongly_connected_components(H) if len(c) >= 2]
    whole = set()
    for c in sccs:
        sub = H.subgraph(c)
        add("scc", sorted(c), sorted(sub.edges()))
        if sub.number_of_edges() == len(c):  # the SCC is one cycle
            whole.add(frozenset(c))
    for cyc in itertools.islice(nx.simple_cycles(H, length_bound=cfg.max_cycle_len), cfg.max_cycles):
        if len(cyc) >= 2 and frozenset(cyc) not in whole:
            start = int(np.argmin(cyc))  # a canonical rotation, so equal cycles print the same
            cyc = cyc[start:] + cyc[:start]
            add("cycle", cyc, [(cyc[i], cyc[(i + 1) % len(cyc)]) for i in range(len(cyc))])
    in_scc = set().union(*sccs) if sccs else set()
    D = H.subgraph([u for u in H if u not in in_scc]).copy()
    while D.number_of_edges():
        path = nx.dag_longest_path(D, weight=None)
        if len(path) < cfg.min_chain:
            break
        add("chain", path, list(zip(path[:-1], path[1:])))
        D.remove_nodes_from(path)
    df = pd.DataFrame(found, columns=[c for c in AUTOMATA_COLUMNS if c != "automaton"])
    df = df.sort_values(["n_states", "weight"], ascending=False, kind="stable", ignore_index=True)
    df.insert(0, "automaton", np.arange(len(df)))
    return df


def transition_table(fg: FSAGraph, automaton) -> pd.DataFrame:
    """An automaton (a row of :func:`find_automata`) as a transition table, one row per edge.

    State = unit X; input = the token class of the next state Y (its ``top_m`` most activating
    tokens, the tokens whose arrival moves the automaton to Y, with their shares of Y's class mass); next state =
    Y. Columns: ``state, state_label, input_ids, input_weights, input_tokens, next_state, next_label,
    count, pmi, mech, attribution_mean``.
    """
    G = fg.graph
    rows = []
    for x, y in automaton["edges"]:
        e = G.edges[x, y]
        has = fg.token_class[y] >= 0
        cls = [int(i) for i in fg.token_class[y][has]]
        rows.append({"state": int(x), "state_label": G.nodes[x]["label"], "input_ids": cls,
                     "input_weights": [float(v) for v in fg.token_weight[y][has]],
                     "input_tokens": _show(fg.decode(cls)), "next_state": int(y), "next_label": G.nodes[y]["label"],
                     "count": e["count"], "pmi": e["pmi"], "mech": e["mech"],
                     "attribution_mean": e["attribution_mean"]})
    return pd.DataFrame(rows)


def compare_bases(results: dict) -> pd.DataFrame:
    """One row per basis (e.g. ``{"features": (fg, automata), "neurons": (fg, automata)}``).

    Columns: ``basis, n_units, n_candidates, n_edges, null_edges, n_scc, n_cycles, n_chains,
    largest_automaton, mean_states, state_purity`` (mean over the states of all automata of the share
    of a unit's activation mass on its token class: how readable its states are).
    """
    rows = []
    for name, (fg, auto) in results.items():
        states = sorted({s for ss in auto["states"] for s in ss}) if len(auto) else []
        kinds = auto["kind"].value_counts() if len(auto) else {}
        rows.append({"basis": name, "n_units": int(len(fg.nodes)), "n_candidates": int(len(fg.edges)),
                     "n_edges": int(fg.edges["kept"].sum()),
                     "null_edges": int(fg.null_edges["kept"].sum()) if fg.null_edges is not None else -1,
                     "n_scc": int(kinds.get("scc", 0)), "n_cycles": int(kinds.get("cycle", 0)),
                     "n_chains": int(kinds.get("chain", 0)),
                     "largest_automaton": int(auto["n_states"].max()) if len(auto) else 0,
                     "mean_states": float(auto["n_states"].mean()) if len(auto) else 0.0,
                     "state_purity": float(fg.nodes["purity"].to_numpy()[states].mean()) if states else np.nan})
    return pd.DataFrame(rows)
