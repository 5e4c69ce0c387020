"""The automaton study end to end at the smoke preset: files agree with each other and with the
analysis, GEXF is valid GEXF 1.3 and both graph formats load in networkx with their types, a copy of
run A as run B is found again edge for edge, pairs never cross windows or documents, and bad options
fail in one line."""

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from splitkit.analyses import fsa_run
from splitkit.report.fsa import N_CLOSED
from studies import fsa as study
from test_graph_export import _schema_path  # the one lookup of shared/schemas/gexf/1.3/gexf.rng


@pytest.fixture(scope="module")
def study_out(smoke_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsa")
    rc = study.main(["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(out), "--quiet"])
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text())


def test_next_ok_by_hand():
    # windows of 4: positions 3 and 7 end a window; token 0 (EOT) at 5 opens a document, so 4 -> 5 is no pair
    toks = np.array([0, 7, 8, 9, 0, 0, 6, 6, 5, 4])
    ok = fsa_run.next_ok_of(toks, 4, eot=0)
    assert ok.tolist() == [True, True, True, False, False, True, True, False, True, False]


def test_likely_successors_rule():
    """X (0) is followed by Y (1) every time and by Z (2) every other time: cond_prob 1 and 0.5."""
    from splitkit.analyses import fsa
    from splitkit.config import FSAConfig

    T = 400
    A = np.zeros((T, 3), np.float32)
    A[0::4, 0] = 1  # X at 0, 4, 8, ...
    A[1::4, 1] = 1  # Y right after each X
    A[1::8, 2] = 1  # Z after every other X
    toks = np.arange(T) % 4
    ok = np.ones(T, bool)
    ok[-1] = False
    L = np.zeros((3, 4), np.float32)
    L[0, 1] = 1.0  # X promotes token 1, on which Y and Z fire
    loose = dict(min_count=1, candidate_pmi=None, min_pmi=-10, min_mech=-10, min_attribution=-10, alpha=1.0)

    def kept(**kw):
        e, _ = fsa.edge_stats(sp.csr_matrix(A), toks, ok, L, FSAConfig(**loose, **kw))
        return sorted(zip(e.loc[e["kept"], "src"], e.loc[e["kept"], "dst"]))

    assert kept() == [(0, 1), (0, 2)]
    assert kept(max_out=1) == [(0, 1)]  # the more likely successor
    assert kept(min_cond_prob=0.6) == [(0, 1)]
    assert kept(min_cond_prob=0.4, max_out=2) == [(0, 1), (0, 2)]


def test_neuron_csr_is_the_thresholded_store():
    class Store:  # the part of ActivationStore neuron_csr reads
        d = 5

        def __init__(self, x):
            self.x = x

        def slice(self, a, b):
            return self.x[a:b].astype(np.float32)

    x = np.random.default_rng(0).normal(0, 0.3, (1000, 5)).clip(0).astype(np.float16)
    x[::7, 2] = 0.25  # exactly at the threshold: not active ("above", as in the core's active_threshold)
    m = fsa_run.neuron_csr(Store(x), 900, 0.25, chunk=128)
    want = np.where(x[:900] > 0.25, x[:900].astype(np.float32), 0)
    assert sp.issparse(m) and m.shape == (900, 5) and m.nnz == int((want > 0).sum())
    np.testing.assert_array_equal(m.toarray(), want)


@pytest.mark.heavy
def test_study_files_agree(study_out):
    out, s = study_out
    assert s["provenance"]["git_revision"] and s["size"] == s["config"]["dict"]["sizes"][0]
    for run in ("A", "B"):
        for basis in ("features", "neurons"):
            b = s["runs"][run]["bases"][basis]
            d = out / run / basis
            edges = pd.read_parquet(d / "edges.parquet")
            cand = pd.read_parquet(d / "candidates.parquet")
            auto = pd.read_parquet(d / "automata.parquet")
            assert len(edges) == b["n_edges"] == int(cand["kept"].sum()) and edges["kept"].all()
            assert len(cand) == b["n_candidates"] and len(auto) == b["n_automata"]
            # the smoke preset's thresholds are justified by its null: the shuffled order keeps nothing
            assert b["null_edges"] == 0
            assert b["null"]["pmi"]["null_n_kept"] == 0 and b["null"]["pmi"]["n_kept"] == b["n_edges"]
            kept = set(zip(edges["src"], edges["dst"]))
            for es in auto["edges"]:  # every automaton is made of kept edges
                assert {tuple(e) for e in es} <= kept
            # CSV: list columns as JSON, equal to the Parquet lists
            csv = pd.read_csv(d / "automata.csv")
            assert [json.loads(v) for v in csv["states"]] == [list(v) for v in auto["states"]]
            if len(auto):
                tt = pd.read_parquet(d / "transitions.parquet")
                top = auto.iloc[0]
                t0 = tt[tt["automaton"] == 0]
                assert sorted(zip(t0["state"], t0["next_state"])) == sorted(tuple(e) for e in top["edges"])
                # the top n_top by rank, then the first closed automata (SCC / cycle) ranked below them
                n_top = min(len(auto), s["fsa"]["n_top"])
                closed = [int(a) for a, k in zip(auto["automaton"], auto["kind"]) if k != "chain" and a >= n_top]
                assert [t["automaton"] for t in b["top"]] == list(range(n_top)) + closed[:N_CLOSED]
                for t in b["top"]:
                    for f in t["figures"]:
                        assert (out / f).is_file(), f
                pred = pd.read_parquet(d / "predictive.parquet")
                assert len(pred) <= s["fsa"]["max_predict"]
                cut = b["predictive_fit"]["cut"]
                assert cut == int(s["fsa"]["fit_frac"] * s["n_tokens"])
                assert ((pred["accuracy"] >= 0) & (pred["accuracy"] <= 1)).all()
    for basis, c in s["cross_seed"].items():
        sh = c["share"]
        assert sh["n_edges"] == len({tuple(e) for es in pd.read_parquet(out / "A" / basis / "automata.parquet")["edges"]
                                     for e in es if e[0] != e[1]})
        assert sh["share"] is None or 0 <= sh["share"] <= 1
    assert (out / "report.md").read_text().count("## Top automata") == 4
    assert (out / "automata_sizes.png").is_file() and (out / "automata_sizes.svg").is_file()


def _first_with_automata(out, s):
    for run in ("A", "B"):
        for basis in ("features", "neurons"):
            if s["runs"][run]["bases"][basis]["top"]:
                return out / run / basis, s["runs"][run]["bases"][basis]
    pytest.fail("no automaton anywhere at the smoke preset")


@pytest.mark.heavy
def test_gexf_valid_and_typed(study_out):
    out, s = study_out
    etree = pytest.importorskip("lxml.etree")
    path = _schema_path()
    if path is None:
        pytest.skip("shared/schemas/gexf/1.3/gexf.rng is not beside this checkout")
    rng = etree.RelaxNG(etree.parse(str(path)))
    d, b = _first_with_automata(out, s)
    files = sorted(d.glob("*.gexf"))
    assert len(files) == 1 + len(b["top"])
    for f in files:
        assert rng.validate(etree.parse(str(f))), (f.name, rng.error_log)
    edges = pd.read_parquet(d / "edges.parquet").set_index(["src", "dst"])
    nodes = pd.read_parquet(d / "nodes.parquet").set_index("unit")
    for reader, name in ((nx.read_gexf, "graph.gexf"), (nx.read_graphml, "graph.graphml")):
        G = reader(d / name)
        assert G.is_directed() and G.number_of_edges() == len(edges)
        for u, a in G.nodes(data=True):
            assert isinstance(a["unit"], int) and str(a["unit"]) == u
            assert isinstance(a["automaton"], int) and isinstance(a["n_active"], int)
            assert isinstance(a["purity"], float) and isinstance(a["density"], float)
            assert isinstance(a["top_tokens"], str) and a["label"].startswith(f"{u}: ")
            assert a["n_active"] == nodes.loc[a["unit"], "n_active"]
            assert a["purity"] == nodes.loc[a["unit"], "purity"]  # exact: doubles round-trip
        for u, v, a in G.edges(data=True):
            e = edges.loc[(int(u), int(v))]
            assert isinstance(a["count"], int) and a["count"] == e["count"]
            for k in ("pmi", "mech", "attribution_mean", "log10_p"):
                assert isinstance(a[k], float) and a[k] == e[k], k
            assert isinstance(a["automaton"], int)
    # one automaton's file holds exactly its states and edges, coloured as in the whole graph
    auto = pd.read_parquet(d / "automata.parquet")
    G = nx.read_gexf(d / "automaton_0.gexf")
    assert sorted(int(u) for u in G) == sorted(auto.iloc[0]["states"])
    assert sorted((int(u), int(v)) for u, v in G.edges) == sorted(tuple(e) for e in auto.iloc[0]["edges"])
    whole = nx.read_gexf(d / "graph.gexf")
    for u in G:
        assert G.nodes[u]["viz"]["color"] == whole.nodes[u]["viz"]["color"]
        assert set(G.nodes[u]["viz"]["position"]) == {"x", "y", "z"}
        assert G.nodes[u]["automaton"] == 0  # the best-ranked automaton holding the state


@pytest.mark.heavy
def test_a_copy_of_run_a_is_found_again(smoke_cfg):
    """B = A (the same seed): every unit matches itself, so every automaton edge of A is linked in B
    and every automaton is found in both, far above the shuffled matches."""
    from splitkit.config import get_fsa_preset

    cfg = smoke_cfg.replace(seed_b=smoke_cfg.seed_a)
    res = fsa_run.run_fsa(cfg, get_fsa_preset("smoke"), progress=False)
    for basis, cs in res["cross_seed"].items():
        auto = res["runs"]["A"]["bases"][basis]["automata"]
        if not len(auto):
            continue
        alive = res["runs"]["A"]["bases"][basis]["graph"].nodes["n_active"].to_numpy() > 0
        assert (cs["best_b"][alive] == np.flatnonzero(alive)).all()
        assert cs["share"]["share"] == 1.0 and cs["share"]["shuffled_mean"] < 0.5
        assert cs["both"]["found_in_both"].all()


def test_bad_options_are_one_line_errors(smoke_cfg, capsys):
    for argv, needle in ((["--runs", "A,C"], "--runs"), (["--runs", "A,A"], "--runs"), (["--size", "0"], "--size"),
                         (["--min-count", "0"], "min_count"), (["--alpha", "2"], "alpha"),
                         (["--tokens", "lots"], "--tokens"), (["--neuron-threshold", "-1"], "neuron_threshold"),
                         (["--max-out", "0"], "max_out"), (["--min-cond-prob", "2"], "min_cond_prob")):
        with pytest.raises(SystemExit) as e:
            study.main(["--preset", "smoke", "--cache", smoke_cfg.cache_dir, *argv])
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
