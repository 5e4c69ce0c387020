"""Check a splitting study's output folder as a user would before opening it in Gephi.

    python scripts/check_splitting_outputs.py results/splitting_paper [path/to/gexf.rng]

Prints each run's nodes, families and per-step fates from summary.json, the split universality
against its shuffled baseline, then for every GEXF file its size and whether it is valid against the
GEXF 1.3 RELAX NG schema (default: ../shared/schemas/gexf/1.3/gexf.rng beside the checkout), and
loads the top-families files in networkx (nodes, edges). Files over 400 MiB are listed, not
validated (the schema check holds the whole tree in memory). Exits 1 if a file is invalid.
"""
import json
import sys
import time
from pathlib import Path

import networkx as nx
from lxml import etree

out = Path(sys.argv[1])
schema = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "shared/schemas/gexf/1.3/gexf.rng"
s = json.loads((out / "summary.json").read_text())
for r, rr in s["runs"].items():
    print(f"run {r}: {rr['n_nodes']:,} nodes, {rr['n_multi_node_families']:,} families")
    for st in rr["steps"]:
        print("   ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in st.items()
                     if k.startswith(("parent", "child", "share_"))})
su = s.get("split_universality") or {}
print(f"split universality {su.get('share')} vs shuffled {su.get('shuffled_mean')}")
rng = etree.RelaxNG(etree.parse(str(schema)))
bad = 0
MAX_MIB = 400  # lxml's RELAX NG needs the whole tree in memory (~10x the file); larger files are listed only
for f in sorted(out.glob("*.gexf")):
    mib = f.stat().st_size / 2**20
    if mib > MAX_MIB:
        print(f"{f.name}: {mib:.1f} MiB, not validated here (over {MAX_MIB} MiB; the same writer wrote the files above)")
        continue
    t0 = time.perf_counter()
    ok = rng.validate(etree.parse(str(f), etree.XMLParser(huge_tree=True)))
    bad += not ok
    print(f"{f.name}: {f.stat().st_size / 2**20:.1f} MiB, valid GEXF 1.3: {ok} ({time.perf_counter() - t0:.0f} s)")
for f in sorted(out.glob("top_families.*")):
    if f.suffix in (".gexf", ".graphml"):
        G = nx.read_gexf(f) if f.suffix == ".gexf" else nx.read_graphml(f)
        print(f"{f.name}: networkx reads {G.number_of_nodes():,} nodes, {G.number_of_edges():,} edges")
sys.exit(1 if bad else 0)
