"""The automaton graph: edges kept by :mod:`.edges`' thresholds, with readable node labels (:func:`build_graph`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np
import pandas as pd

from ...config import FSAConfig
from .edges import _check_inputs, _edge_table, _prepare, null_summary, promoted_tokens, token_classes


def _default_decode(ids) -> list[str]:
    return [str(int(i)) for i in ids]


def _show(strings) -> str:
    """Tokens joined for a label, whitespace made visible."""
    return " ".join(repr(s)[1:-1] for s in strings)


@dataclass
class FSAGraph:
    """What :func:`build_graph` returns.

    - ``edges``: every candidate pair (``EDGE_COLUMNS``), ``kept`` marking the graph's edges.
    - ``graph``: ``nx.DiGraph`` of the kept edges; nodes carry ``label``, ``top_tokens``,
      ``promoted``, ``n_active``, ``purity``; edges carry the weight columns and ``weight``.
    - ``nodes``: one row per unit: ``unit, n_active, density, purity, top_tokens, promoted, label``.
    - ``token_class``: ``[n, top_m]`` token ids (-1 pads) and ``token_weight: [n, top_m]``.
    - ``null_edges``: the pairs the shuffled order keeps (false positives at these thresholds);
      ``null_summary``: quantiles over all of its candidates (:func:`null_summary`). None without a null.
    """

    edges: pd.DataFrame
    graph: nx.DiGraph
    nodes: pd.DataFrame
    token_class: np.ndarray
    token_weight: np.ndarray
    n_pairs: int
    config: FSAConfig
    null_edges: pd.DataFrame | None = None
    null_summary: pd.DataFrame | None = None
    decode: Callable = field(default=_default_decode, repr=False)


def build_graph(acts, token_ids, next_ok, logit_eff, cfg: FSAConfig = FSAConfig(), *, decode: Callable | None = None,
                null: bool = True) -> FSAGraph:
    """Edges, node labels and the DiGraph of kept edges (:mod:`.edges` for the definitions).

    ``decode(ids) -> list[str]`` names tokens for labels (default: the ids). With ``null`` the
    shuffled-order statistics are computed too (seed ``cfg.null_seed``).
    """
    acts, token_ids, next_ok, L = _check_inputs(acts, token_ids, next_ok, logit_eff)
    decode = decode or _default_decode
    ids, w, purity, n_active = token_classes(acts, token_ids, L.shape[1], cfg.top_m, cfg.active_threshold)
    prep = _prepare(acts, token_ids, next_ok, L, cfg, (ids, w))
    edges, N = _edge_table(prep, cfg, None)
    null_edges = summ = None
    if null:
        null_all, _ = _edge_table(prep, cfg, cfg.null_seed)
        summ = null_summary(edges, null_all)
        null_edges = null_all[null_all["kept"]].reset_index(drop=True)  # the summary holds the rest
        del null_all
    del prep
    prom = promoted_tokens(L, cfg.top_m)
    n = acts.shape[1]
    nodes = pd.DataFrame({"unit": np.arange(n), "n_active": n_active, "density": n_active / max(1, len(token_ids)),
                          "purity": purity})
    kept = edges[edges["kept"]]
    used = np.union1d(kept["src"].to_numpy(), kept["dst"].to_numpy()).astype(np.int64)
    top_txt, prom_txt = {}, {}
    for u in used:  # decoding every unit of a large dictionary is slow; the study labels what it draws
        top_txt[u] = _show(decode([i for i in ids[u] if i >= 0][:5]))
        prom_txt[u] = _show(decode(list(prom[u][:5])))
    nodes["top_tokens"] = [top_txt.get(u, "") for u in range(n)]
    nodes["promoted"] = [prom_txt.get(u, "") for u in range(n)]
    nodes["label"] = [f"{u}: {top_txt[u]} -> {prom_txt[u]}" if u in top_txt else "" for u in range(n)]
    G = nx.DiGraph()
    for u in used:
        G.add_node(int(u), label=nodes.at[u, "label"], top_tokens=top_txt[u], promoted=prom_txt[u],
                   n_active=int(n_active[u]), purity=float(purity[u]))
    for r in kept.itertuples(index=False):
        G.add_edge(int(r.src), int(r.dst), count=int(r.count), lift=float(r.lift), pmi=float(r.pmi),
                   cond_prob=float(r.cond_prob), log10_p=float(r.log10_p), mech=float(r.mech),
                   attribution=float(r.attribution),
                   attribution_mean=float(r.attribution_mean), weight=float(getattr(r, cfg.weight)))
    return FSAGraph(edges=edges, graph=G, nodes=nodes, token_class=ids, token_weight=w, n_pairs=N, config=cfg,
                    null_edges=null_edges, null_summary=summ, decode=decode)
