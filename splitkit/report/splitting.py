"""Files of the feature-splitting study: summary.json, nodes/edges tables, figures, Gephi files, report.md.

Takes what :func:`splitkit.analyses.splitting_run.run_splitting` returned. Every corpus-derived text
(top tokens, contexts) goes through :mod:`splitkit.report.escape` in Markdown, CSV and figures; the
graph writers (:mod:`splitkit.report.graphs`) clean it for XML.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from ..cache import atomic_path, atomic_write_bytes, atomic_write_json
from ..provenance import provenance
from . import escape as E
from .common import jsonable, save_figure, write_table
from .graphs import rgba255, write_gexf, write_graphml

FATES = ("persists", "splits", "partial", "vanishes")
CHILD_FATES = ("inherits", "merges", "novel")


# ------------------------------------------------------------------------------------------- helpers

def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """CSV of ``df`` with spreadsheet-formula text neutralised (the Parquet beside it keeps the text)."""
    with atomic_path(path) as tmp:
        # every text field quoted: a lone CR inside a token would otherwise end a row for most readers
        E.csv_safe(df).to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)


def _table(df: pd.DataFrame, stem: Path) -> None:
    write_table(df, stem, csv=False)
    _write_csv(df, stem.with_suffix(".csv"))


# ------------------------------------------------------------------------------------------- tables

def node_table(res: dict) -> pd.DataFrame:
    """One row per forest node of every run, with its map position (its representative feature's)."""
    m = res["map"].set_index("node")
    rows = []
    for r, rr in res["runs"].items():
        for v, a in rr["forest"].nodes(data=True):
            row = {"node": v, "run": r, "size": a["size"], "feature": a["feature"], "count": a["count"],
                   "members": a["members"], "density": a["density"], "fate_in": a["fate_in"],
                   "fate_out": a["fate_out"], "n_children": a["n_children"], "n_parents": a["n_parents"],
                   "family": a["family"], "children_cover": a["children_cover"], "top_tokens": a["top_tokens"],
                   "top_promoted": a["top_promoted"]}
            if v in m.index:
                row.update(x=float(m.at[v, "x"]), y=float(m.at[v, "y"]), cluster=int(m.at[v, "cluster"]))
            else:
                row.update(x=np.nan, y=np.nan, cluster=-1)
            rows.append(row)
    return pd.DataFrame(rows)


def edge_table(res: dict) -> pd.DataFrame:
    """Forest edges of every run (``kind`` "link") and A->B best-match edges (``kind`` "match")."""
    rows = []
    for r, rr in res["runs"].items():
        for u, v, d in rr["forest"].edges(data=True):
            rows.append({"source": u, "target": v, "run": r, "kind": "link", **{k: d[k] for k in d},
                         "lineage": bool(d.get("lineage", False))})  # never NaN: bool(NaN) would read True
    if "matches" in res:
        fa, fb = res["runs"]["A"]["forest"], res["runs"]["B"]["forest"]
        from ..analyses.splitting import feature_nodes

        na, nb = feature_nodes(fa), feature_nodes(fb)
        for s in res["sizes"]:
            best, corr = res["matches"][s], res["match_corr"][s]
            seen = set()
            for f in np.flatnonzero(best >= 0).tolist():
                u, v = na[(s, f)], nb[(s, int(best[f]))]
                if u[0] == "A" and u.split("/")[2] != str(f):
                    continue  # a twin member: its cluster's representative carries the match
                if (u, v) in seen:
                    continue
                seen.add((u, v))
                rows.append({"source": u, "target": v, "run": "AB", "kind": "match", "match_corr": float(corr[f]),
                             "lineage": False})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- graphs

def _size_colors(sizes) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {s: rgba255(cmap(i / n)) for i, s in enumerate(sizes)}


def _family_colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [rgba255(cmap(i % 20)) for i in range(max(n, 1))]


#: nodes of ``top_families`` at most (both runs together): a file Gephi opens at once at any family size
TOP_FAMILIES_MAX_NODES = 20_000


def _top_families(nd: pd.DataFrame, families: int, max_nodes: int | None) -> pd.DataFrame:
    """Each run's largest ``families`` families (numbered by decreasing size), as many whole ones as
    fit in the run's share of ``max_nodes``; at least its largest, cut to its smallest sizes if even
    that one is larger."""
    nd = nd[nd["family"] < families]
    if max_nodes is None:
        return nd
    runs = list(dict.fromkeys(nd["run"]))
    per_run = max(1, max_nodes // max(1, len(runs)))
    parts = []
    for r in runs:
        x = nd[nd["run"] == r]
        count = x.groupby("family").size().sort_index()
        keep = count.index[(count.cumsum() <= per_run).to_numpy()]
        if not len(keep):  # the largest family alone is over the cap: its upper sizes are cut
            first = x[x["family"] == count.index[0]].sort_values(["size", "feature"], kind="stable")
            parts.append(first.iloc[:per_run])
        else:
            parts.append(x[x["family"].isin(keep)])
    return pd.concat(parts) if parts else nd


def build_graph(res: dict, nodes: pd.DataFrame, edges: pd.DataFrame, runs, *, color_by: str = "size",
                families: int | None = None, max_nodes: int | None = None) -> nx.DiGraph:
    """The Gephi graph of ``runs`` (forest edges, plus match edges when both runs are in): viz position
    from the UMAP, colour by size or family, size by density, labels from top tokens. ``families``:
    keep only each run's largest ``families`` families; ``max_nodes`` (with ``families``): whole
    families while the graph stays within that many nodes (see :func:`_top_families`)."""
    sizes = res["sizes"]
    scol = _size_colors(sizes)
    fcol = _family_colors(families or 20)
    nd = nodes[nodes["run"].isin(runs)]
    n_wanted = None
    if families is not None:
        n_wanted = int((nd["family"] < families).sum())
        nd = _top_families(nd, families, max_nodes)
    dmax = float(nd["density"].max()) if len(nd) else 1.0
    G = nx.DiGraph(runs=",".join(runs), sizes=",".join(map(str, sizes)),
                   threshold=float(res["runs"][runs[0]]["forest"].graph["threshold"]),
                   twin_rule=str(res["runs"][runs[0]]["forest"].graph["twin_rule"]),
                   color=color_by, n_analysis_tokens=int(res["n_analysis_tokens"]))
    if n_wanted is not None:  # says in the file whether the cap left families out
        G.graph.update(families=int(families), max_nodes=int(max_nodes or 0), nodes_left_out=int(n_wanted - len(nd)))
    for r in nd.itertuples(index=False):
        col = scol[r.size] if color_by == "size" else fcol[int(r.family) % len(fcol)]
        viz = {"color": col, "size": float(2.0 + 18.0 * math.sqrt(max(r.density, 0.0) / max(dmax, 1e-12)))}
        if np.isfinite(r.x):
            viz["position"] = (float(r.x) * 100.0, float(r.y) * 100.0)
        G.add_node(r.node, label=E.one_line(f"{r.size}/{r.feature}: {r.top_tokens}"), run=str(r.run), size=int(r.size),
                   feature=int(r.feature), count=int(r.count), members=str(r.members), density=float(r.density),
                   fate_in=str(r.fate_in), fate_out=str(r.fate_out), family=int(r.family), cluster=int(r.cluster),
                   n_children=int(r.n_children), n_parents=int(r.n_parents), top_tokens=str(r.top_tokens),
                   top_promoted=str(r.top_promoted), viz=viz)
    keep = set(G.nodes)
    for e in edges.to_dict("records"):
        if e["source"] not in keep or e["target"] not in keep:
            continue
        if e["kind"] == "link":
            G.add_edge(e["source"], e["target"], kind="link", weight=float(e["masked_cos"]),
                       masked_cos=float(e["masked_cos"]), cos_on_parent=float(e["cos_on_parent"]),
                       cos_on_child=float(e["cos_on_child"]), coverage=float(e["coverage"]),
                       parent_share=float(e["parent_share"]), n_cofire=int(e["n_cofire"]),
                       decoder_cos=float(e["decoder_cos"]), n_pairs=int(e["n_pairs"]),
                       lineage=bool(e["lineage"]))
        elif len(runs) > 1:
            G.add_edge(e["source"], e["target"], kind="match", weight=float(e["match_corr"]),
                       match_corr=float(e["match_corr"]))
    return G


def write_graphs(out: Path, res: dict, nodes: pd.DataFrame, edges: pd.DataFrame, n_families: int) -> list[str]:
    """Each run's forest, the joint A+B graph, and the top families alone, as GEXF 1.3 and GraphML."""
    files = []
    runs = list(res["runs"])
    specs = [(f"forest_{r}", [r], "size", None) for r in runs]
    if len(runs) > 1:
        specs.append(("joint_AB", runs, "size", None))
    specs.append(("top_families", runs, "family", n_families))
    for name, rs, color, fam in specs:
        G = build_graph(res, nodes, edges, rs, color_by=color, families=fam,
                        max_nodes=TOP_FAMILIES_MAX_NODES if fam is not None else None)
        write_gexf(G, out / f"{name}.gexf", title=f"splitkit splitting forest: {name}")
        write_graphml(G, out / f"{name}.graphml")
        files += [f"{name}.gexf", f"{name}.graphml"]
    return files


# ------------------------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_map(res: dict, by: str):
    plt = _plt()
    m = res["map"]
    fig, ax = plt.subplots(figsize=(7, 6))
    if by == "size":
        sizes = res["sizes"]
        cmap = plt.get_cmap("viridis")
        for i, s in enumerate(sizes):
            sel = m["size"] == s
            ax.scatter(m.loc[sel, "x"], m.loc[sel, "y"], s=2, alpha=0.5, color=cmap(i / max(len(sizes) - 1, 1)),
                       label=f"{s}", rasterized=True)
        ax.legend(title="size", markerscale=4, fontsize=7)
    else:
        for i, r in enumerate(sorted(m["run"].unique())):
            sel = m["run"] == r
            ax.scatter(m.loc[sel, "x"], m.loc[sel, "y"], s=2, alpha=0.4, color=f"C{i}", label=f"run {r}",
                       rasterized=True)
        ax.legend(markerscale=4, fontsize=7)
    ax.set_title(f"Joint UMAP of the decoder directions, coloured by {by}")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def fig_map_families(res: dict, nodes: pd.DataFrame, edges: pd.DataFrame, n_families: int, run: str):
    plt = _plt()
    m = res["map"]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(m["x"], m["y"], s=1, color="0.85", rasterized=True)
    nd = nodes[(nodes["run"] == run) & (nodes["family"] < n_families)].set_index("node")
    pos = {v: (r.x, r.y) for v, r in nd.iterrows() if np.isfinite(r.x)}
    ed = edges[(edges["kind"] == "link") & (edges["run"] == run)]
    ed = ed[ed["lineage"].astype(bool)]  # the families' trees; the web of all links would hide them
    for e in ed.itertuples(index=False):
        if e.source in pos and e.target in pos:
            (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
            fam = int(nd.at[e.source, "family"])
            ax.plot([x0, x1], [y0, y1], color=f"C{fam % 10}", lw=0.5, alpha=0.6)
    lst = res["runs"][run]["listing"]
    for fam in range(n_families):
        sel = nd[nd["family"] == fam]
        if not len(sel):
            continue
        ax.scatter(sel["x"], sel["y"], s=6 + 3 * np.log2(sel["size"] / min(res["sizes"])), color=f"C{fam % 10}")
        root = sel.sort_values(["size", "feature"]).iloc[0]
        txt = ""
        if len(lst):
            rows = lst[(lst["family"] == fam)].sort_values(["size", "feature"])
            if len(rows):
                txt = rows.iloc[0].get("top_tokens_text", "")
        ax.annotate(E.mpl_text(f"{fam}: {txt}"[:40]), (root["x"], root["y"]), fontsize=6, color=f"C{fam % 10}")
    ax.set_title(f"Run {run}: the {n_families} largest families and their lineage edges")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def fig_fates(res: dict):
    plt = _plt()
    runs = list(res["runs"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(runs)
    for side, (ax, fates) in enumerate(zip(axes, (FATES, CHILD_FATES))):
        for ri, r in enumerate(runs):
            st = res["runs"][r]["steps"]
            x = np.arange(len(st)) + ri * width
            bottom = np.zeros(len(st))
            for fi, f in enumerate(fates):
                v = st[f"share_{f}"].to_numpy()
                ax.bar(x, v, width * 0.95, bottom=bottom, color=f"C{fi + 3 * side}", alpha=1.0 - 0.35 * ri,
                       label=f if ri == 0 else None)
                bottom += v
        labels = [f"{a}->{b}" for a, b in zip(res["runs"][runs[0]]["steps"]["size"],
                                               res["runs"][runs[0]]["steps"]["next_size"])]
        ax.set_xticks(np.arange(len(labels)) + width * (len(runs) - 1) / 2, labels, fontsize=7)
        ax.set_ylabel("share of " + ("parents" if side == 0 else "children"))
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(("parent" if side == 0 else "child") + f" fates per step (runs {', '.join(runs)}, left to right)")
    return fig


def fig_null(res: dict):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, (r, rr) in enumerate(res["runs"].items()):
        nl = rr["null"]
        x = np.arange(len(nl))
        ax.plot(x, nl["share_linked"], marker="o", color=f"C{i}", label=f"run {r}: children linked")
        ax.plot(x, nl["null_share_linked"], marker="x", ls="--", color=f"C{i}", label=f"run {r}: shuffled null")
        labels = [f"{a}->{b}" for a, b in zip(nl["size"], nl["next_size"])]
    ax.set_xticks(np.arange(len(labels)), labels, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"share of children with a parent >= {nl['threshold'].iloc[0]:g}")
    ax.set_title("Links against the token-shuffled null")
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------- summary

def summary_of(res: dict, cfg, scfg, extra: dict | None = None) -> dict:
    """Every figure of the study as JSON."""
    runs = {}
    for r, rr in res["runs"].items():
        fam = rr["families"]
        runs[r] = {
            "steps": jsonable(rr["steps"]), "branching": jsonable(rr["branching"]), "null": jsonable(rr["null"]),
            "twin_share": rr["twin_share"], "n_twin_clusters": rr["n_twin_clusters"],
            "n_nodes": rr["forest"].number_of_nodes(), "n_edges": rr["forest"].number_of_edges(),
            "n_families": rr["n_families"], "n_multi_node_families": rr["n_multi_families"],
            "largest_families": jsonable(rr["largest_families"]),
            "max_family_depth": int(fam["depth"].max()) if len(fam) else 0,
            "followed_family": rr["followed_family"], "followed": jsonable(rr["followed"]),
            "forest_graph": jsonable(dict(rr["forest"].graph)),
        }
    out = {
        "study": "feature splitting", "recipe": res["recipe"], "sizes": res["sizes"],
        "n_analysis_tokens": res["n_analysis_tokens"], "runs": runs,
        "run_info": jsonable(res["run_info"]),
        "split_universality": jsonable(res.get("split_universality")),
        "match_summary": jsonable(res.get("match_summary")),
        "map": jsonable(res["map_info"]), "timings": jsonable(res["timings"]),
        "splitting_config": scfg.to_dict(), "config": cfg.to_dict(), "provenance": provenance(),
        "definitions": {
            "link": "masked activation cosine >= threshold (max of the cosine on the parent's and on the child's "
                    "tokens), pairs co-firing on >= min_cofire tokens",
            "null": "each sampled child's best masked cosine against the parents with their token order permuted",
            "fates": "parent: persists (one child, both cosines >= persist_cos), splits (2+ children covering >= "
                     "split_cover of its mass), partial, vanishes; child: inherits, merges (2+ parents), novel",
            "twins": "features of one dictionary whose activations correlate above twin_threshold are one node "
                     "(count = members); twin_share = live features in a cluster of 2+",
            "split_universality": "share of A's forest edges whose ends' best B matches are an edge of B's forest, "
                                  "against the same with each size's matches shuffled",
        },
        **(extra or {}),
    }
    return out


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _n(v, nd=3) -> E.Markdown:
    """A number we formatted ourselves: safe Markdown as it is."""
    return E.Markdown(_fmt(v, nd))


def _step(a, b) -> E.Markdown:
    return E.Markdown(f"{int(a)} → {int(b)}")


def _report(summary: dict, res: dict, compare: dict | None) -> str:
    s = summary
    L = ["# Feature splitting across dictionary sizes", "",
         f"Recipe {E.md_code(s['recipe'])}; sizes {', '.join(map(str, s['sizes']))}; runs "
         f"{', '.join(s['runs'])}; links over {s['n_analysis_tokens']:,} analysis tokens "
         f"(masked cosine >= {s['splitting_config']['threshold']}, co-firing on >= "
         f"{s['splitting_config']['min_cofire']} tokens). In-dictionary twins (activation correlation > "
         f"{s['splitting_config']['twin_threshold']}) are collapsed into one node with a count.", ""]
    su = s.get("split_universality")
    if su:
        L += ["## Are the splits universal?", "",
              f"**{_fmt(su['share'])}** of A's {su['n_mapped']:,} mapped forest edges are edges of B's forest "
              f"between the best matches of their ends, against **{_fmt(su['shuffled_mean'])}** "
              f"(sd {_fmt(su['shuffled_std'])}, {su['n_shuffles']} shuffles) with the matches shuffled. "
              f"Children count of a matched parent, A vs B: Pearson {_fmt(su['children_corr'])} "
              f"(shuffled {_fmt(su['children_corr_shuffled_mean'])}).", "",
              "| size | median best-match corr A->B | share > 0.5 |", "|---|---|---|"]
        for size, m in s["match_summary"].items():
            L.append(E.md_row([_n(size), _n(m["median_corr"]), _n(m["share_gt_0.5"])]))
        L.append("")
    L += ["## Fates per step", ""]
    cols = ["size", "next_size"] + [f"share_{f}" for f in FATES + CHILD_FATES] + ["mean_children", "max_children",
                                                                                    "twin_share_parent",
                                                                                    "twin_share_child"]
    for r, rr in s["runs"].items():
        L += [f"Run {r}: {rr['n_nodes']:,} nodes, {rr['n_edges']:,} edges, {rr['n_multi_node_families']:,} families "
              f"of two or more nodes (deepest spans {rr['max_family_depth']} sizes).", "",
              E.md_row(["step"] + [c.replace("share_", "") for c in cols[2:]]), "|" + "---|" * (len(cols) - 1)]
        for st in rr["steps"]:
            L.append(E.md_row([_step(st["size"], st["next_size"])] + [_n(st[c], 2) for c in cols[2:]]))
        L.append("")
    L += ["![fates](fates.png)", "", "## The threshold against chance", "",
          "| run | step | linked | shuffled null | null q99 | " +
          " | ".join(f"null, min_cofire {mc}" for mc in s["splitting_config"]["null_min_cofire"]) + " |",
          "|---|---|---|---|---|" + "---|" * len(s["splitting_config"]["null_min_cofire"])]
    for r, rr in s["runs"].items():
        for nl in rr["null"]:
            L.append(E.md_row([r, _step(nl["size"], nl["next_size"]), _n(nl["share_linked"]),
                               _n(nl["null_share_linked"]), _n(nl["null_q99"])]
                              + [_n(nl.get(f"null_share_linked_mc{mc}"))
                                 for mc in s["splitting_config"]["null_min_cofire"]]))
    pur = s["map"]["purity"]
    L += ["", "![null](null.png)", "", "## Maps", "",
          f"Joint UMAP of every size of every run (cosine, n_neighbors {s['map']['settings']['n_neighbors']}, "
          f"min_dist {s['map']['settings']['min_dist']}); HDBSCAN (min_cluster_size "
          f"{s['map']['settings']['min_cluster_size']}) on a {s['map']['settings']['cluster_dims']}-D UMAP. "
          f"Cluster purity with respect to forest families: **{_fmt(pur['all']['purity'])}** (NMI "
          f"{_fmt(pur['all'].get('nmi', float('nan')))}, AMI {_fmt(pur['all']['ami'])}"
          f"{' (' + pur['all']['ami_skipped'] + ')' if 'ami_skipped' in pur['all'] else ''}, "
          f"{pur['all']['n_clusters']} clusters, noise {_fmt(pur['all']['noise_share'])}); "
          f"over features of families of two or more nodes {_fmt(pur['multi_node_families']['purity'])}.", "",
          "![map by size](map_by_size.png)", "", "![map by run](map_by_run.png)", ""]
    for r in s["runs"]:
        L += [f"![families of run {r}](map_families_{r}.png)", ""]
    for r, rr in res["runs"].items():
        lst = rr["listing"]
        L += [f"## Largest families of run {r}", "",
              "| family | size | feature | count | density | fate in | fate out | top activating | top promoted |",
              "|---|---|---|---|---|---|---|---|---|"]
        if len(lst):
            for row in lst.head(60).itertuples(index=False):
                L.append(E.md_row([row.family, row.size, row.feature, row.count, E.Markdown(f"{row.density:.2e}"), row.fate_in,
                                   row.fate_out, E.md_code(row.top_tokens_text, in_table=True),
                                   E.md_code(row.top_promoted_text, in_table=True)]))
        L.append("")
        fol = rr["followed"]
        if len(fol):
            L += [f"### Run {r}: family {rr['followed_family']} from {res['sizes'][0]} to {res['sizes'][-1]}", "",
                  "| node | fate in | fate out | parents | top activating | top promoted | contexts |",
                  "|---|---|---|---|---|---|---|"]
            for row in fol.itertuples(index=False):
                ctx = "<br>".join(E.md_code(c, in_table=True) for c in row.contexts)
                L.append(E.md_row([row.node, row.fate_in, row.fate_out, row.parents,
                                   E.md_code(row.top_tokens, in_table=True), E.md_code(row.top_promoted, in_table=True),
                                   E.Markdown(ctx)]))
            L.append("")
    if compare:
        L += ["## Recipes side by side", "", "| figure | " + " | ".join(E.md_text(k) for k in compare) + " |",
              "|---|" + "---|" * len(compare)]
        keys = list(compare)
        first = compare[keys[0]]
        for r in first["runs"]:
            for i, st in enumerate(first["runs"][r]["steps"]):
                for f in ("splits", "persists", "merges", "novel", "vanishes"):
                    vals = []
                    for k in keys:
                        sts = compare[k]["runs"].get(r, {}).get("steps", [])
                        vals.append(_n(sts[i][f"share_{f}"], 2) if i < len(sts) else _n(None))
                    L.append(E.md_row([E.Markdown(f"run {r} {st['size']} → {st['next_size']}: {f}")] + vals))
        for lab, get in (("split universality share", lambda c: (c.get("split_universality") or {}).get("share")),
                         ("same, shuffled", lambda c: (c.get("split_universality") or {}).get("shuffled_mean")),
                         ("cluster purity", lambda c: c["map"]["purity"]["all"]["purity"])):
            L.append(E.md_row([lab] + [_n(get(compare[k])) for k in keys]))
        L.append("")
    L += ["## Files", "",
          "`nodes.parquet`/`.csv` (one row per node: fate, family, map position, top tokens), `edges.parquet`/`.csv` "
          "(forest links and A->B matches), `forest_<run>.gexf`/`.graphml`, `joint_AB.gexf`/`.graphml`, "
          "`top_families.gexf`/`.graphml` (GEXF 1.3 for Gephi: viz position from the UMAP, colour by size or "
          "family, size by density).", "",
          f"Code version {E.md_code(str(s['provenance']['git_revision']))}; command "
          f"{E.md_code(str(s['provenance']['command']))}.", ""]
    return "\n".join(L)


def write_splitting(out, res: dict, cfg, scfg, extra: dict | None = None, compare: dict | None = None) -> dict:
    """Write the study's files under ``out``; returns the summary written to ``summary.json``.

    ``compare``: ``{recipe: summary}`` of runs with other recipes, put side by side in report.md
    (this run's summary is added under its own recipe).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_of(res, cfg, scfg, extra)
    nodes = node_table(res)
    edges = edge_table(res)
    _table(nodes, out / "nodes")
    _table(edges, out / "edges")
    for r, rr in res["runs"].items():
        lst = rr["listing"].copy()
        for c in ("top_tokens", "top_promoted"):
            if c in lst:
                lst[c] = [" ".join(map(str, t)) for t in lst[c]]
        _table(lst, out / f"families_{r}")
    n_fam = scfg.n_families
    figs = {"map_by_size": save_figure(fig_map(res, "size"), out / "map_by_size"),
            "map_by_run": save_figure(fig_map(res, "run"), out / "map_by_run"),
            "fates": save_figure(fig_fates(res), out / "fates"),
            "null": save_figure(fig_null(res), out / "null")}
    for r in res["runs"]:
        figs[f"map_families_{r}"] = save_figure(fig_map_families(res, nodes, edges, n_fam, r), out / f"map_families_{r}")
    summary["figures"] = figs
    summary["graphs"] = write_graphs(out, res, nodes, edges, n_fam)
    if compare:
        compare = {summary["recipe"]: summary, **{k: v for k, v in compare.items() if k != summary["recipe"]}}
        summary["compare_recipes"] = list(compare)
    atomic_write_json(out / "summary.json", jsonable(summary))
    atomic_write_bytes(out / "report.md", _report(summary, res, compare).encode())
    return summary
