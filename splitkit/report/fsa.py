"""Files of the automaton study: GEXF 1.3 and GraphML graphs, Parquet/CSV tables, figures of the top
automata, summary.json and report.md (from what :func:`splitkit.analyses.fsa_run.run_fsa` returns).

Layout under ``out``::

    summary.json  report.md  cross_seed_<basis>.parquet/.csv
    <run>/<basis>/   graph.gexf  graph.graphml  automaton_<k>.gexf/.graphml/.png/.svg  (top automata, and the first closed ones below them)
                     edges.parquet/.csv (kept edges)  candidates.parquet (every candidate pair)
                     automata.parquet/.csv  transitions.parquet/.csv  predictive.parquet/.csv
                     nodes.parquet/.csv  null_summary.parquet/.csv

Parquet keeps list columns (``states``, ``edges``, ``input_ids``, ...) as lists; CSV has them as JSON
text, and every text column through :func:`splitkit.report.escape.csv_safe`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from ..cache import atomic_path, atomic_write_bytes, atomic_write_json
from ..provenance import provenance
from .common import jsonable, save_figure, write_table
from .escape import Markdown, csv_safe, md_code, md_row, md_text, mpl_text
from .graphs import rgba255, write_gexf, write_graphml

PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan")
OTHER = "#b0b0b0"
LIST_COLUMNS = ("states", "edges", "input_ids", "input_weights")


# --- helpers --------------------------------------------------------------------------------------

def write_tables(df: pd.DataFrame, stem: Path, csv: bool = True) -> None:
    """Parquet as it is; CSV beside it with list columns as JSON and text through ``csv_safe``."""
    stem = Path(stem)
    write_table(df, stem, csv=False)
    if csv:
        c = df.copy()
        for col in c.columns:
            if col in LIST_COLUMNS or (len(c) and isinstance(c[col].iloc[0], (list, tuple, np.ndarray))):
                c[col] = [json.dumps(jsonable(v)) for v in c[col]]
        c = csv_safe(c)
        with atomic_path(stem.with_suffix(".csv")) as tmp:
            c.to_csv(tmp, index=False)


def show_token(text: str) -> str:
    """A token for a label: escapes as ``repr`` shows them (``\\n``, ``\\t``), a space as ``␣`` and a run of
    k >= 2 spaces as ``␣k``, so indentation tokens stay short and whitespace stays visible."""
    body = repr(text)[1:-1]
    return re.sub(r" {2,}| ", lambda m: "\u2423" if len(m[0]) == 1 else f"\u2423{len(m[0])}", body)


def short_label(fg, u: int, k: int = 3) -> str:
    """``"<unit>: tok tok tok"``: the unit's top activating tokens (:func:`show_token`)."""
    ids = [int(i) for i in fg.token_class[u][:k] if i >= 0]
    return f"{u}: " + " ".join(show_token(t) for t in fg.decode(ids))


def promoted_label(fg, promoted_ids, u: int, k: int = 3) -> str:
    """The ``k`` tokens unit ``u`` raises most (``promoted_ids: [n, >= k]``), as :func:`show_token` shows them."""
    return " ".join(show_token(t) for t in fg.decode([int(i) for i in promoted_ids[u][:k]]))


def membership(automata: pd.DataFrame) -> dict[int, int]:
    """Unit -> rank of the first (best-ranked) automaton holding it."""
    out: dict[int, int] = {}
    for r in automata.itertuples(index=False):
        for s in r.states:
            out.setdefault(int(s), int(r.automaton))
    return out


def _colour(rank: int, n_top: int):
    return rgba255(PALETTE[rank % len(PALETTE)] if 0 <= rank < n_top else OTHER)


def _scaled(pos: dict, scale: float = 100.0) -> dict:
    return {u: (float(p[0]) * scale, float(p[1]) * scale) for u, p in pos.items()}


def automaton_layout(kind: str, states: list, H: nx.DiGraph) -> dict:
    """Positions of one automaton: cycles on a circle in their order, chains on a line, SCCs by spring layout."""
    if kind == "cycle" or len(states) <= 3:
        return _scaled({u: p for u, p in zip(states, nx.circular_layout(range(len(states))).values())})
    if kind == "chain":
        return {u: (100.0 * i, 0.0) for i, u in enumerate(states)}
    return _scaled(nx.spring_layout(H, seed=0))


def export_graph(fg, automata: pd.DataFrame, n_top: int, basis: str, run: str, states=None, edges=None,
                 pos: dict | None = None) -> nx.DiGraph:
    """The graph (or one automaton's ``states``/``edges``) with typed scalar attributes and ``viz``."""
    G = fg.graph
    member = membership(automata)
    H = nx.DiGraph(run=run, basis=basis)
    nodes = list(G.nodes) if states is None else [int(s) for s in states]
    es = list(G.edges) if edges is None else [tuple(map(int, e)) for e in edges]
    sub = G.edge_subgraph(es) if edges is not None else G
    if pos is None:
        pos = _scaled(nx.spring_layout(sub, seed=0, iterations=50)) if len(nodes) else {}
    dens = fg.nodes["density"].to_numpy()
    for u in nodes:
        d = G.nodes[u]
        rank = member.get(u, -1)
        H.add_node(int(u), label=short_label(fg, u), unit=int(u), top_tokens=d["top_tokens"], promoted=d["promoted"],
                   n_active=int(d["n_active"]), density=float(dens[u]), purity=float(d["purity"]), automaton=rank,
                   viz={"position": pos.get(u, (0.0, 0.0)), "color": _colour(rank, n_top),
                        "size": float(5 + 5 * math.log10(1 + d["n_active"]))})
    edge_rank = {}
    for r in automata.itertuples(index=False):
        for a, b in r.edges:
            edge_rank.setdefault((int(a), int(b)), int(r.automaton))
    for a, b in es:
        d = G.edges[a, b]
        H.add_edge(int(a), int(b), **{k: d[k] for k in ("count", "lift", "pmi", "cond_prob", "log10_p", "mech",
                                                        "attribution", "attribution_mean", "weight")},
                   automaton=edge_rank.get((int(a), int(b)), -1))
    return H


# --- figures --------------------------------------------------------------------------------------

def automaton_figure(fg, row, title: str):
    """One automaton drawn with networkx: nodes labelled by unit and top tokens, edge width by pmi.
    Chains run down the page with labels beside them; cycles and SCCs carry labels above the nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = [int(s) for s in row["states"]]
    H = nx.DiGraph()
    H.add_nodes_from(states)
    H.add_edges_from([tuple(map(int, e)) for e in row["edges"]])
    n = len(states)
    chain = row["kind"] == "chain"
    if chain:
        pos = {u: (0.0, -100.0 * i) for i, u in enumerate(states)}
        fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.45 * n))
    else:
        pos = automaton_layout(row["kind"], states, H)
        side = min(14.0, 4.5 + 0.5 * n)
        fig, ax = plt.subplots(figsize=(side, side * 0.8))
    pmis = np.array([fg.graph.edges[e]["pmi"] for e in H.edges]) if H.number_of_edges() else np.zeros(0)
    widths = list(0.8 + 2.0 * (pmis - pmis.min()) / (np.ptp(pmis) or 1.0)) if len(pmis) else []
    size = 220 if n <= 30 else 90
    nx.draw_networkx_nodes(H, pos, ax=ax, node_size=size, node_color=PALETTE[0], alpha=0.85)
    nx.draw_networkx_edges(H, pos, ax=ax, width=widths, arrows=True, arrowsize=12, edge_color="#555555",
                           connectionstyle="arc3,rad=0.0" if chain else "arc3,rad=0.12", node_size=size)
    fs = 9 if n <= 15 else 7 if n <= 40 else 5
    for u in states:  # offsets in points, so labels sit beside their node whatever the data scale
        ax.annotate(mpl_text(short_label(fg, u)), pos[u], xytext=(10, 0) if chain else (0, 6),
                    textcoords="offset points", fontsize=fs, ha="left" if chain else "center",
                    va="center" if chain else "bottom")
    if chain:
        ax.set_xlim(-20, 400)
    ax.set_title(mpl_text(title), fontsize=10)
    ax.margins(0.08 if chain else 0.15)
    ax.axis("off")
    return fig


def _summary_fig(res: dict):
    """Automata per size, features against neurons, each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, (run, rr) in enumerate(res["runs"].items()):
        for j, basis in enumerate(("features", "neurons")):
            auto = rr["bases"][basis]["automata"]
            if not len(auto):
                continue
            sizes, counts = np.unique(auto["n_states"].to_numpy(), return_counts=True)
            ax.plot(sizes, counts, marker="os"[j], ls="-" if i == 0 else "--", color=f"C{j}", alpha=0.8,
                    label=f"run {run} {basis} ({len(auto)})")
    ax.set_xscale("log")
    ax.set_xlabel("states per automaton (SCCs, cycles, chains)")
    ax.set_ylabel("automata")
    ax.set_yscale("log")
    ax.set_title("Automata found: features vs neurons")
    ax.legend(fontsize=8)
    return fig


# --- the writer -----------------------------------------------------------------------------------

def _null_dict(ns: pd.DataFrame | None) -> dict | None:
    return None if ns is None else jsonable({stat: dict(row) for stat, row in ns.iterrows()})


def _pred_summary(pred: pd.DataFrame) -> dict:
    if not len(pred):
        return {"n_automata": 0}
    ok = pred[pred["n_test"] > 0]
    return jsonable({"n_automata": int(len(pred)), "n_tested": int(len(ok)),
                   "mean_accuracy": float(ok["accuracy"].mean()) if len(ok) else None,
                   "mean_baseline_accuracy": float(ok["baseline_accuracy"].mean()) if len(ok) else None,
                   "median_gain": float(ok["gain"].median()) if len(ok) else None,
                   "share_beating_baseline": float((ok["gain"] > 0).mean()) if len(ok) else None,
                   "top": dict(pred.iloc[0])})


#: closed automata (strongly connected components, cycles) drawn beside the top ``n_top`` when they
#: rank below it: the state machines the paper describes are closed, and on distinct features the
#: longest (top-ranked) automata are mostly chains.
N_CLOSED = 2


def _write_basis(folder: Path, b: dict, run: str, basis: str, n_top: int) -> dict:
    fg, auto = b["graph"], b["automata"]
    folder.mkdir(parents=True, exist_ok=True)
    kept = fg.edges[fg.edges["kept"]].reset_index(drop=True)
    kept = kept.assign(src_label=[short_label(fg, u) for u in kept["src"]],
                       dst_label=[short_label(fg, u) for u in kept["dst"]])
    write_tables(kept, folder / "edges")
    write_table(fg.edges, folder / "candidates", csv=False)
    write_tables(auto, folder / "automata")
    used = sorted(fg.graph.nodes)
    write_tables(fg.nodes.iloc[used].reset_index(drop=True), folder / "nodes")
    if fg.null_summary is not None:
        write_tables(fg.null_summary.reset_index(), folder / "null_summary")
    tt = [t.assign(automaton=k) for k, t in b["transitions"].items()]
    if tt:
        write_tables(pd.concat(tt, ignore_index=True), folder / "transitions")
    write_tables(b["predictive"], folder / "predictive")
    files = {"graph_gexf": str(write_gexf(export_graph(fg, auto, n_top, basis, run), folder / "graph.gexf",
                                          title=f"FSA graph, run {run}, {basis}").name)}
    write_graphml(export_graph(fg, auto, n_top, basis, run), folder / "graph.graphml")
    top = []
    rest = auto.iloc[n_top:]
    drawn = pd.concat([auto.head(n_top), rest[rest["kind"] != "chain"].head(N_CLOSED)])
    for _, r in drawn.iterrows():
        k = int(r["automaton"])
        states = [int(s) for s in r["states"]]
        H = nx.DiGraph()
        H.add_edges_from([tuple(map(int, e)) for e in r["edges"]])
        H.add_nodes_from(states)
        pos = automaton_layout(r["kind"], states, H)
        G = export_graph(fg, auto, n_top, basis, run, states, r["edges"], pos)
        write_gexf(G, folder / f"automaton_{k}.gexf", title=f"automaton {k} ({r['kind']}), run {run}, {basis}")
        write_graphml(G, folder / f"automaton_{k}.graphml")
        figs = save_figure(automaton_figure(fg, r, f"run {run}, {basis}: automaton {k} ({r['kind']}, "
                                                   f"{r['n_states']} states, mean pmi {r['mean_pmi']:.2f})"),
                           folder / f"automaton_{k}")
        top.append({"automaton": k, "kind": r["kind"], "n_states": int(r["n_states"]), "n_edges": int(r["n_edges"]),
                    "weight": float(r["weight"]), "mean_pmi": float(r["mean_pmi"]), "mean_mech": float(r["mean_mech"]),
                    "states": states, "state_labels": [short_label(fg, u) for u in states],
                    "promoted": [promoted_label(fg, b["promoted_ids"], u) for u in states],
                    "figures": [f"{run}/{basis}/{f}" for f in figs]})
    kinds = auto["kind"].value_counts().to_dict() if len(auto) else {}
    return {"n_units": int(len(fg.nodes)), "n_pairs": int(fg.n_pairs), "n_candidates": int(len(fg.edges)),
            "n_edges": int(len(kept)), "n_nodes": int(fg.graph.number_of_nodes()),
            "null_edges": int(len(fg.null_edges)) if fg.null_edges is not None else None,
            "n_automata": int(len(auto)), "kinds": jsonable(kinds),
            "sizes": jsonable(auto["n_states"].value_counts().sort_index().to_dict()) if len(auto) else {},
            "largest": int(auto["n_states"].max()) if len(auto) else 0,
            "null": _null_dict(fg.null_summary), "top": top, "predictive": _pred_summary(b["predictive"]),
            "predictive_fit": {k: v for k, v in b["fit"].items() if k != "automata"},
            "timings_s": jsonable(b["timings"]), "files": files}


def write_fsa(out, res: dict, cfg, extra: dict | None = None) -> dict:
    """Write the study's files under ``out`` (layout in the module docstring); returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fcfg = res["config"]
    n_top = int(fcfg["n_top"])
    runs = {}
    for run, rr in res["runs"].items():
        bases = {basis: _write_basis(out / run / basis, b, run, basis, n_top) for basis, b in rr["bases"].items()}
        write_tables(rr["compare"], out / run / "compare")
        runs[run] = {"seed": rr["seed"], "sae_id": rr["sae_id"], "n_pairs": rr["n_pairs"], "bases": bases,
                     "compare": jsonable(rr["compare"]),
                     "sae": jsonable({k: rr["sae_stats"].get(k) for k in ("fvu", "l0", "loss_recovered_zero",
                                                                          "loss_recovered_mean", "dead_frac")})}
    cross = {}
    for basis, cs in res.get("cross_seed", {}).items():
        write_tables(cs["both"], out / f"cross_seed_{basis}")
        both = cs["both"]
        cross[basis] = {"share": jsonable(cs["share"]), "share_all_edges": jsonable(cs["share_all_edges"]),
                        "n_automata_a": int(len(both)), "n_found_in_both": int(both["found_in_both"].sum()) if len(both) else 0,
                        "found_in_both": jsonable(both[both["found_in_both"]].head(20)) if len(both) else [],
                        "median_match_corr": jsonable(float(np.nanmedian(cs["match_corr"])))
                        if np.isfinite(cs["match_corr"]).any() else None}
    figs = {"automata_sizes": save_figure(_summary_fig(res), out / "automata_sizes")}
    summary = {"size": res["size"], "n_tokens": res["n_tokens"], "fsa": jsonable(fcfg), "runs": runs,
               "cross_seed": cross, "figures": figs, "wall_s_analysis": jsonable(res.get("wall_s")),
               "config": cfg.to_dict(), "provenance": provenance(), **(extra or {})}
    atomic_write_json(out / "summary.json", jsonable(summary))
    atomic_write_bytes(out / "report.md", _report(summary).encode())
    return summary


# --- report.md ------------------------------------------------------------------------------------

def _f(v, nd=3) -> Markdown:
    """A number for a table cell (our own formatting of a number: safe Markdown as it is)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return Markdown("n/a")
    return Markdown(f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _report(s: dict) -> str:
    fc = s["fsa"]
    L = ["# Automata: features that chain like a finite-state machine", "",
         md_text(f"Dictionary size {s['size']}, {s['n_tokens']:,} analysis tokens; an edge X -> Y is kept when "
                 f"Y follows X at least {fc['min_count']} times, pmi >= {fc['min_pmi']}, the co-occurrence test passes "
                 f"at alpha {fc['alpha']} over all ordered pairs, X's logit effect on Y's tokens is >= "
                 f"{fc['min_mech']} standard deviations and the mean attribution > {fc['min_attribution']}. Neurons "
                 f"are active above {fc['neuron_threshold']}."), "",
         "## Features vs neurons", "",
         md_row(["run", "basis", "units", "candidates", "kept edges", "null edges", "automata", "SCCs", "cycles",
                 "chains", "largest", "state purity", "predictive acc", "baseline acc", "beats baseline"]),
         "|" + "---|" * 15]
    for run, rr in s["runs"].items():
        for basis, b in rr["bases"].items():
            c = next(r for r in rr["compare"] if r["basis"] == basis)
            p = b["predictive"]
            L.append(md_row([run, basis, b["n_units"], b["n_candidates"], b["n_edges"], _f(b["null_edges"]),
                             b["n_automata"], c["n_scc"], c["n_cycles"], c["n_chains"], b["largest"],
                             _f(c["state_purity"]), _f(p.get("mean_accuracy")), _f(p.get("mean_baseline_accuracy")),
                             _f(p.get("share_beating_baseline"))]))
    L += ["", md_text("Null: the same statistics with the token order shuffled (activations and tokens permuted "
                      "together); its kept edges are false positives at these thresholds. Predictive check: the graph "
                      f"fitted on the first {fc['fit_frac']:.0%} of the tokens, each automaton (up to "
                      f"{fc['max_predict']}) predicting which of its states fires at t+1 on the rest, against always "
                      "predicting its most frequent next state."), "",
          "![automata sizes](automata_sizes.png)", ""]
    if s["cross_seed"]:
        L += ["## Across seeds", "",
              md_row(["basis", "A's automaton edges", "share linked in B", "shuffled matches (mean)", "shuffled q95",
                      "share, all kept edges", "shuffled", "automata of A found in B"]), "|" + "---|" * 8]
        for basis, c in s["cross_seed"].items():
            sh, sa = c["share"], c["share_all_edges"]
            L.append(md_row([basis, sh["n_edges"], _f(sh["share"]), _f(sh["shuffled_mean"]), _f(sh["shuffled_q95"]),
                             _f(sa["share"]), _f(sa["shuffled_mean"]),
                             f"{c['n_found_in_both']} of {c['n_automata_a']}"]))
        L += ["", md_text("A's unit is matched to its most correlated unit of B over the same tokens (the "
                          "universality match); an edge is found again when its matched endpoints are linked in B. "
                          "The baseline permutes the matches."), ""]
    for run, rr in s["runs"].items():
        for basis, b in rr["bases"].items():
            L += [f"## Top automata: run {md_text(run)}, {md_text(basis)}", "",
                  md_text(f"{len(b['top'])} drawn: the top-ranked automata, then up to {N_CLOSED} closed ones "
                          "(SCC or cycle) ranked below them."), ""]
            if not b["top"]:
                L += ["None found.", ""]
                continue
            for t in b["top"]:
                L += [md_text(f"Automaton {t['automaton']}: {t['kind']}, {t['n_states']} states, {t['n_edges']} edges, "
                              f"mean pmi {t['mean_pmi']:.2f}, mean mech {t['mean_mech']:.2f}"), "",
                      f"![automaton {t['automaton']}]({run}/{basis}/automaton_{t['automaton']}.png)", "",
                      md_row(["state: top activating tokens", "promotes"]), "|---|---|"]
                for lab, prom in zip(t["state_labels"][:20], t["promoted"][:20]):
                    L.append(md_row([md_code(lab, in_table=True), md_code(prom, in_table=True)]))
                if len(t["state_labels"]) > 20:
                    L.append(md_row([md_text(f"... {len(t['state_labels']) - 20} more"), ""]))
                L.append("")
    pv = s["provenance"]
    L += ["## Files", "", md_text("Per run and basis: graph.gexf / graph.graphml (the whole graph), automaton_<k>.gexf "
                                  "/ .graphml / .png / .svg (top automata), edges, automata, transitions, predictive, "
                                  "nodes and null_summary as Parquet and CSV; candidates.parquet."), "",
          f"Code version {md_code(str(pv.get('git_revision')))}; command {md_code(str(pv.get('command')))}.", ""]
    return "\n".join(L)
