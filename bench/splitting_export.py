"""Benchmark of the splitting study's Gephi exports at the paper's scale, against networkx's writer.

    python bench/splitting_export.py                          # nine sizes 512..131072, both runs
    python bench/splitting_export.py --sizes 512..4096 --out none   # seconds; print only

The study's last stage turns the forests into graph files (``report.splitting.write_graphs``): each
run's forest, the joint A+B graph (forest edges plus cross-run match edges) and the top families,
as GEXF 1.3 (our streaming writer) and GraphML (networkx's writer after ``coerce_graph``). At the
paper's nine sizes that is 261,632 nodes a run and 523,264 in the joint graph. This benchmark
builds node and edge tables of exactly the study's columns for that many features (every feature
of size ``s`` linked to one parent at the previous size, every A feature matched to a B feature,
labels of top tokens with a hostile one among them), then times, each in its own process so that
its peak RSS is its own:

- ``ours``: ``build_graph`` + ``write_gexf`` + ``write_graphml`` for forest_A, joint_AB and
  top_families, as the study writes them;
- ``networkx``: the peer, ``networkx.write_gexf`` (GEXF 1.2draft, the version its writer stops at)
  of the same coerced joint graph. It builds the whole XML tree in memory before writing;
- ``purity``: ``maps.cluster_purity`` of the map's clusters against the forest families, at the
  shape the paper-size study met (22,392 HDBSCAN clusters and 184,103 families over 523,264
  points, scaled with the number of features), where a dense crosstab once asked for 30.7 GiB.

Writes ``docs/bench/splitting_export.json`` (``--out``) with wall time, peak RSS and file sizes,
and the ratios ours / networkx for the joint graph's GEXF.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.matching import cpu_info, write_result  # noqa: E402
from splitkit.config import parse_sizes  # noqa: E402
from splitkit.provenance import git_revision  # noqa: E402

HOSTILE = "<b>&\x00\x1b]]>\u202e"  # markup, NUL, ESC, CDATA end, a bidi override: must be escaped/replaced


def tables(sizes: list[int], seed: int = 0) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``res`` (what ``build_graph`` reads of it), node table and edge table shaped like the study's."""
    import networkx as nx

    rng = np.random.default_rng(seed)
    node_parts, edge_parts = [], []
    for r in ("A", "B"):
        for k, s in enumerate(sizes):
            f = np.arange(s)
            ids = np.char.add(f"{r}/{s}/", f.astype(str))
            fam = (f * 64 // s).astype(np.int64)  # 64 families, each spanning every size
            tok = rng.integers(0, 4096, (s, 3))
            label = [f"'t{a}' 't{b}' 't{c}'" for a, b, c in tok]
            label[0] = HOSTILE
            node_parts.append(pd.DataFrame({
                "node": ids, "run": r, "size": s, "feature": f, "count": 1, "members": ids,
                "density": 10 ** rng.uniform(-6, -1, s), "fate_in": "persists" if k else "root",
                "fate_out": "splits" if k + 1 < len(sizes) else "leaf", "n_children": 2 if k + 1 < len(sizes) else 0,
                "n_parents": 1 if k else 0, "family": fam, "children_cover": rng.uniform(0, 1, s),
                "top_tokens": label, "top_promoted": label, "x": rng.normal(0, 5, s), "y": rng.normal(0, 5, s),
                "cluster": rng.integers(-1, s // 20, s)}))
            if k:
                p = f * sizes[k - 1] // s
                n = len(f)
                edge_parts.append(pd.DataFrame({
                    "source": np.char.add(f"{r}/{sizes[k - 1]}/", p.astype(str)), "target": ids, "run": r,
                    "kind": "link", "masked_cos": rng.uniform(0.4, 1, n), "cos_on_parent": rng.uniform(0, 1, n),
                    "cos_on_child": rng.uniform(0, 1, n), "coverage": rng.uniform(0, 1, n),
                    "parent_share": rng.uniform(0, 1, n), "n_cofire": rng.integers(1, 10_000, n),
                    "decoder_cos": rng.uniform(-1, 1, n), "n_pairs": rng.integers(1, 10_000, n),
                    "lineage": rng.random(n) < 0.5, "match_corr": np.nan}))
    for s in sizes:
        f = np.arange(s)
        edge_parts.append(pd.DataFrame({
            "source": np.char.add(f"A/{s}/", f.astype(str)),
            "target": np.char.add(f"B/{s}/", rng.permutation(s).astype(str)), "run": "AB", "kind": "match",
            "match_corr": rng.uniform(0, 1, s), "lineage": False}))
    stub = nx.DiGraph(threshold=0.4, twin_rule="activation correlation > 0.9 within a dictionary")
    res = {"sizes": sizes, "runs": {"A": {"forest": stub}, "B": {"forest": stub}}, "n_analysis_tokens": 1_000_000}
    return res, pd.concat(node_parts, ignore_index=True), pd.concat(edge_parts, ignore_index=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def part(name: str, sizes: list[int], folder: Path) -> dict:
    """One measured part, run in a child process (its own peak RSS)."""
    import networkx as nx

    from splitkit.report.graphs import coerce_graph, write_gexf, write_graphml
    from splitkit.report.splitting import TOP_FAMILIES_MAX_NODES, build_graph

    t0 = time.perf_counter()
    res, nodes, edges = tables(sizes)
    out = {"tables_s": time.perf_counter() - t0, "n_nodes": len(nodes), "n_edges": len(edges),
           "rss_after_tables_gb": peak_rss_gb(), "files": {}}
    t0 = time.perf_counter()
    if name == "ours":
        for stem, runs, color, fam in [("forest_A", ["A"], "size", None), ("joint_AB", ["A", "B"], "size", None),
                                       ("top_families", ["A", "B"], "family", 20)]:
            t1 = time.perf_counter()
            G = build_graph(res, nodes, edges, runs, color_by=color, families=fam,
                            max_nodes=TOP_FAMILIES_MAX_NODES if fam is not None else None)
            t2 = time.perf_counter()
            write_gexf(G, folder / f"{stem}.gexf", title=stem)
            t3 = time.perf_counter()
            write_graphml(G, folder / f"{stem}.graphml")
            t4 = time.perf_counter()
            out["files"][stem] = {"nodes": G.number_of_nodes(), "edges": G.number_of_edges(),
                                  "build_s": t2 - t1, "gexf_s": t3 - t2, "graphml_s": t4 - t3,
                                  "gexf_mib": (folder / f"{stem}.gexf").stat().st_size / 2**20,
                                  "graphml_mib": (folder / f"{stem}.graphml").stat().st_size / 2**20}
            del G
    elif name == "purity":
        from splitkit.analyses.maps import cluster_purity

        n = len(nodes)
        rng = np.random.default_rng(1)
        n_clusters, n_families = max(2, n * 22_392 // 523_264), max(2, n * 184_103 // 523_264)
        clusters = np.where(rng.random(n) < 0.3, -1, rng.integers(0, n_clusters, n))
        families = rng.integers(0, n_families, n)
        t1 = time.perf_counter()
        pur = cluster_purity(clusters, families)
        out["files"]["purity"] = {"n_clusters": n_clusters, "n_families": n_families, "seconds": time.perf_counter() - t1,
                                  **{k: v for k, v in pur.items() if isinstance(v, (int, float, bool))}}
    else:
        G = build_graph(res, nodes, edges, ["A", "B"], color_by="size")
        t2 = time.perf_counter()
        H = coerce_graph(G)  # networkx's writer needs the same scalar attributes and viz dicts
        del G
        t3 = time.perf_counter()
        nx.write_gexf(H, folder / "joint_AB_nx.gexf")
        t4 = time.perf_counter()
        out["files"]["joint_AB"] = {"nodes": H.number_of_nodes(), "edges": H.number_of_edges(),
                                    "build_s": t2 - t0, "coerce_s": t3 - t2, "gexf_s": t4 - t3,
                                    "gexf_mib": (folder / "joint_AB_nx.gexf").stat().st_size / 2**20}
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512..131072", help="the family's sizes (default: the paper's nine)")
    ap.add_argument("--parts", default="ours,networkx,purity", help="which parts to time")
    ap.add_argument("--folder", default="/tmp/splitkit-bench-export", help="where the files go (removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the written files (for a schema check)")
    ap.add_argument("--out", default="docs/bench/splitting_export.json", help="JSON output, or 'none'")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # the child process's own part
    a = ap.parse_args(argv)
    sizes = list(parse_sizes(a.sizes))
    folder = Path(a.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if a.part:
        print(json.dumps(part(a.part, sizes, folder)))
        return
    rec = {"benchmark": "splitting_export", "sizes": sizes, "features_per_run": int(sum(sizes)),
           "command": "python bench/splitting_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "python": platform.python_version(), "cpu": cpu_info(), "parts": {}}
    rec["revision"] = git_revision()
    for name in a.parts.split(","):
        p = subprocess.run([sys.executable, __file__, "--sizes", a.sizes, "--folder", str(folder), "--part", name],
                           capture_output=True, text=True)
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
            rec["parts"][name] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}
            continue
        rec["parts"][name] = json.loads(p.stdout.strip().splitlines()[-1])
        print(name, json.dumps(rec["parts"][name], indent=1))
    ours, peer = rec["parts"].get("ours", {}), rec["parts"].get("networkx", {})
    if "files" in ours and "files" in peer:
        o, n = ours["files"]["joint_AB"], peer["files"]["joint_AB"]
        rec["joint_gexf_time_ratio_ours_over_networkx"] = o["gexf_s"] / n["gexf_s"]
        rec["peak_rss_ratio_ours_over_networkx"] = ours["peak_rss_gb"] / peer["peak_rss_gb"]
        print(f"joint GEXF: ours {o['gexf_s']:.0f} s, networkx {n['gexf_s']:.0f} s; peak RSS ours "
              f"{ours['peak_rss_gb']:.2f} GB (all six files), networkx {peer['peak_rss_gb']:.2f} GB (one file)")
    if not a.keep:
        for f in folder.glob("*"):
            f.unlink()
    write_result(rec, a.out)


if __name__ == "__main__":
    main()
