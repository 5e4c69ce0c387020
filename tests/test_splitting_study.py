"""The feature-splitting study end to end at the smoke preset: summary figures finite and in range,
tables consistent with the forest, GEXF valid against the 1.3 RELAX NG schema, GEXF and GraphML
loading in networkx with typed attributes; the CLI's one-line errors; the memory guard."""

import json
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from test_graph_export import _schema_path

SIZES = (32, 64, 128)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The smoke study through its CLI, with a cache of its own."""
    from studies.splitting import main

    cache = tmp_path_factory.mktemp("splitting_cache")
    out = tmp_path_factory.mktemp("splitting_out")
    rc = main(["--preset", "smoke", "--cache", str(cache), "--out", str(out), "--quiet"])
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text())


def _finite_share(x):
    return x is not None and math.isfinite(x) and 0.0 <= x <= 1.0


def test_summary_keys_and_ranges(study):
    out, s = study
    assert s["sizes"] == list(SIZES)
    assert set(s["runs"]) == {"A", "B"}
    for key in ("split_universality", "match_summary", "map", "timings", "config", "splitting_config",
                "provenance", "figures", "graphs", "definitions"):
        assert key in s, key
    for r, rr in s["runs"].items():
        assert len(rr["steps"]) == len(SIZES) - 1
        for st in rr["steps"]:
            parent = sum(st[f"share_{f}"] for f in ("persists", "splits", "partial", "vanishes"))
            child = sum(st[f"share_{f}"] for f in ("inherits", "merges", "novel"))
            assert parent == pytest.approx(1.0) and child == pytest.approx(1.0)
            assert _finite_share(st["twin_share_parent"]) and _finite_share(st["twin_share_child"])
        # the branching distribution counts every parent of the step once
        for st in rr["steps"]:
            n = sum(b["n_parents"] for b in rr["branching"] if b["size"] == st["size"])
            assert n == st["n_parents"]
        for nl in rr["null"]:
            assert _finite_share(nl["share_linked"]) and _finite_share(nl["null_share_linked"])
            assert nl["threshold"] == 0.4
        assert set(rr["twin_share"]) == {str(x) for x in SIZES}
    su = s["split_universality"]
    assert _finite_share(su["share"]) and _finite_share(su["shuffled_mean"])
    assert su["n_mapped"] <= su["n_edges"] and su["n_hit"] <= su["n_mapped"]
    pur = s["map"]["purity"]["all"]
    assert _finite_share(pur["purity"]) and _finite_share(pur["noise_share"])
    assert s["map"]["settings"]["min_dist"] == 0.01  # three sizes: the paper's 0.01
    for f in ("map_by_size", "map_by_run", "fates", "null", "map_families_A"):
        for name in s["figures"][f]:
            assert (out / name).stat().st_size > 1000
    rep = (out / "report.md").read_text()
    assert "Fates per step" in rep and "Are the splits universal?" in rep


def test_tables_agree_with_the_summary(study):
    out, s = study
    nodes = pd.read_parquet(out / "nodes.parquet")
    edges = pd.read_parquet(out / "edges.parquet")
    for r, rr in s["runs"].items():
        assert (nodes["run"] == r).sum() == rr["n_nodes"]
        assert ((edges["run"] == r) & (edges["kind"] == "link")).sum() == rr["n_edges"]
        # collapsed twins: each size's node counts add up to the dictionary size
        for size in SIZES:
            assert nodes.loc[(nodes["run"] == r) & (nodes["size"] == size), "count"].sum() == size
    links = edges[edges["kind"] == "link"]
    assert (links["masked_cos"] >= 0.4).all() and (links["n_cofire"] >= s["splitting_config"]["min_cofire"]).all()
    assert np.isfinite(nodes[["x", "y"]].to_numpy()).all()
    csv = pd.read_csv(out / "nodes.csv")
    assert len(csv) == len(nodes)


def test_gexf_is_valid_and_graphs_load_typed(study):
    out, s = study
    path = _schema_path()
    if path is not None:
        etree = pytest.importorskip("lxml.etree")
        rng = etree.RelaxNG(etree.parse(str(path)))
        for name in ("forest_A", "forest_B", "joint_AB", "top_families"):
            doc = etree.parse(str(out / f"{name}.gexf"))
            assert rng.validate(doc), (name, rng.error_log.last_error)
    nodes = pd.read_parquet(out / "nodes.parquet")
    G = nx.read_gexf(out / "joint_AB.gexf")
    H = nx.read_graphml(out / "joint_AB.graphml")
    assert G.number_of_nodes() == len(nodes) == H.number_of_nodes()
    for graph in (G, H):
        for _, d in graph.nodes(data=True):
            assert isinstance(d["size"], int) and isinstance(d["feature"], int) and isinstance(d["family"], int)
            assert isinstance(d["density"], float) and isinstance(d["fate_out"], str) and isinstance(d["run"], str)
        kinds = {d["kind"] for _, _, d in graph.edges(data=True)}
        assert kinds == {"link", "match"}
        for _, _, d in graph.edges(data=True):
            if d["kind"] == "link":
                assert isinstance(d["masked_cos"], float) and isinstance(d["n_cofire"], int)
    v, d = next(iter(G.nodes(data=True)))
    assert set(d["viz"]) >= {"position", "color", "size"}
    # match edges: one per represented A feature of every size, pointing from A to B
    m = [(u, w) for u, w, d in G.edges(data=True) if d["kind"] == "match"]
    assert all(u.startswith("A/") and w.startswith("B/") for u, w in m)
    F = nx.read_gexf(out / "forest_A.gexf")
    assert F.number_of_edges() == s["runs"]["A"]["n_edges"]


@pytest.mark.parametrize("spec", ["4096..512", "0,512", "-512,1024", "512,1.5", "512,512", "512,,1024", "512..4096x1",
                                  "", "512"])
def test_sizes_errors_are_one_line(spec, capsys):
    from studies.splitting import main

    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", f"--sizes={spec}", "--out", "/nonexistent/never"])  # = form: "-512" is no option
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sizes") and "\n" not in err


@pytest.mark.parametrize("args", [["--runs", "A,C"], ["--runs", "A,A"], ["--threshold", "0"],
                                  ["--analysis-tokens", "lots"]])
def test_other_bad_options_are_one_line(args, capsys):
    from studies.splitting import main

    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", *args, "--out", "/nonexistent/never"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


@pytest.mark.heavy
def test_compare_recipe_side_by_side(tmp_path):
    """One run, two recipes: the second recipe's files in compare_<recipe>/, both in the main report."""
    from splitkit.config import get_preset
    from studies.splitting import main

    out = tmp_path / "out"
    rc = main(["--preset", "smoke", "--cache", str(tmp_path / "cache"), "--out", str(out), "--quiet", "--runs", "A",
               "--compare-recipe", "topk"])
    assert rc == 0
    main_s = json.loads((out / "summary.json").read_text())
    other = json.loads((out / "compare_topk" / "summary.json").read_text())
    default = get_preset("smoke").dict.recipe  # the universality default, l1_log
    assert main_s["recipe"] == default and other["recipe"] == "topk"
    assert main_s["compare_recipes"] == [default, "topk"]
    assert main_s["split_universality"] is None  # one run: nothing to match
    rep = (out / "report.md").read_text()
    assert "Recipes side by side" in rep and "topk" in rep
    # both report every step of the same sizes
    fa = [st["share_splits"] for st in main_s["runs"]["A"]["steps"]]
    fb = [st["share_splits"] for st in other["runs"]["A"]["steps"]]
    assert len(fa) == len(fb) == 2
