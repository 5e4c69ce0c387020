"""GEXF 1.3 and GraphML export: every attribute and its type survive networkx's readers, the GEXF is
valid against the GEXF 1.3 RELAX NG schema, hostile text stays text, and bad attributes get a
one-line error."""

import math
import xml.etree.ElementTree as ET
import os
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from splitkit.report import graphs
from splitkit.report.graphs import coerce_graph, gexf_bytes, rgba255, write_gexf, write_graphml

HOSTILE = 'x<script>alert(1)</script> ]]> & "dq" \'sq\' \x00 nul \x1b[31m esc | pipe `tick` </textarea>'
HOSTILE_CLEAN = HOSTILE.replace("\x00", "\ufffd").replace("\x1b", "\ufffd")
VIZ = "{http://gexf.net/1.3/viz}"
GEXF = "{http://gexf.net/1.3}"


def _schema_path() -> Path | None:
    """gexf.rng in ``shared/schemas`` beside the checkout, or beside the main checkout of a worktree."""
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["SPLITKIT_SHARED"])] if os.environ.get("SPLITKIT_SHARED") else []  # .ci/run's clone
    candidates.append(root.parent / "shared")
    dot_git = root / ".git"
    if dot_git.is_file():  # a worktree: ".git" names <main>/.git/worktrees/<name>
        text = dot_git.read_text().strip()
        if text.startswith("gitdir:"):
            candidates.append(Path(text.split(":", 1)[1].strip()).parents[2].parent / "shared")
    for c in candidates:
        p = c / "schemas" / "gexf" / "1.3" / "gexf.rng"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="module")
def relaxng():
    etree = pytest.importorskip("lxml.etree", reason="lxml validates against the RELAX NG schema")
    path = _schema_path()
    if path is None:
        pytest.skip("shared/schemas/gexf/1.3/gexf.rng is not beside this checkout "
                    "(it is on development machines and in CI)")
    return etree.RelaxNG(etree.parse(str(path)))


def planted() -> nx.DiGraph:
    """Two features and a neuron with every attribute type, None and NaN holes, and viz."""
    G = nx.DiGraph(run="A", n_sizes=np.int64(2))
    G.add_node(("A", 512, 3), label=HOSTILE, size=512, density=np.float32(0.1), alive=np.bool_(True),
               feature=np.int64(3), name="base64", mixed=1, big=2 ** 40, maybe=None, ratio=float("nan"),
               viz={"position": (1.5, np.float32(-2.0)), "color": (255, np.uint8(0), 10), "size": np.float64(3)})
    G.add_node(("A", 1024, 7), size=1024, density=0.25, alive=False, feature=7, name="", mixed=2.5, big=1,
               maybe=0.75, ratio=2.0, text="line1\nline2\r\nx\ty  ",
               viz={"position": {"x": 0, "y": 1, "z": 2}, "color": {"r": 1, "g": 2, "b": 3, "a": 0.5}})
    G.add_node("neuron 5", size=0, density=0.0, alive=True, feature=-5, name=" the", mixed=-1, big=-1)
    G.add_edge(("A", 512, 3), ("A", 1024, 7), weight=np.float32(0.4), fate="split", cos=np.float64(0.9),
               label="<b>edge</b>", merged=False, rank=np.int32(1))
    G.add_edge(("A", 1024, 7), "neuron 5", weight=1, fate="merge", cos=None, merged=True, rank=2)
    return G


# What the readers must give back, by hand (node ids as str, None/NaN omitted, int+float -> float).
N1, N2, N3 = "('A', 512, 3)", "('A', 1024, 7)", "neuron 5"
EXPECTED_NODES = {
    N1: {"label": HOSTILE_CLEAN, "size": 512, "density": float(np.float32(0.1)), "alive": True, "feature": 3,
         "name": "base64", "mixed": 1.0, "big": 2 ** 40},
    N2: {"label": N2, "size": 1024, "density": 0.25, "alive": False, "feature": 7, "name": "", "mixed": 2.5,
         "big": 1, "maybe": 0.75, "ratio": 2.0, "text": "line1\nline2\nx\ty  "},
    N3: {"label": N3, "size": 0, "density": 0.0, "alive": True, "feature": -5, "name": " the", "mixed": -1.0,
         "big": -1},
}
EXPECTED_VIZ = {
    N1: {"position": {"x": 1.5, "y": -2.0, "z": 0.0}, "color": {"r": 255, "g": 0, "b": 10, "a": 1.0}, "size": 3.0},
    N2: {"position": {"x": 0.0, "y": 1.0, "z": 2.0}, "color": {"r": 1, "g": 2, "b": 3, "a": 0.5}},
}
EXPECTED_EDGES = {
    (N1, N2): {"weight": float(np.float32(0.4)), "fate": "split", "cos": 0.9, "label": "<b>edge</b>",
               "merged": False, "rank": 1},
    (N2, N3): {"weight": 1.0, "fate": "merge", "merged": True, "rank": 2},
}
# Python type of every attribute after a round trip through either format.
TYPES = {"label": str, "size": int, "density": float, "alive": bool, "feature": int, "name": str, "mixed": float,
         "big": int, "maybe": float, "ratio": float, "text": str, "weight": float, "fate": str, "cos": float,
         "merged": bool, "rank": int}


def assert_same(got: dict, want: dict, where: str, types: dict = TYPES):
    """Equal keys, values and exact Python types (``1 == 1.0 == True`` would hide a type change)."""
    assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
    for k, v in want.items():
        if isinstance(v, dict):
            assert_same(got[k], v, f"{where}.{k}", types={})
            continue
        assert type(got[k]) is type(v), f"{where}.{k}: {type(got[k]).__name__} != {type(v).__name__}"
        assert got[k] == v, f"{where}.{k}: {got[k]!r} != {v!r}"
        if k in types:
            assert type(got[k]) is types[k]


def test_coerce_gives_plain_scalars_one_type_each():
    H = coerce_graph(planted())
    assert type(H) is nx.DiGraph and list(H.nodes) == [N1, N2, N3]
    for n, d in H.nodes(data=True):
        viz = d.pop("viz", None)
        assert viz == EXPECTED_VIZ.get(n)
        assert_same(d, EXPECTED_NODES[n], n)
    for u, v, d in H.edges(data=True):
        assert_same(d, EXPECTED_EDGES[(u, v)], f"{u}->{v}")
    assert_same(H.graph, {"run": "A", "n_sizes": 2}, "graph")
    # Idempotent: coercing again changes nothing.
    H2 = coerce_graph(H)
    assert list(H2.nodes(data=True)) == list(H.nodes(data=True))
    assert list(H2.edges(data=True)) == list(H.edges(data=True))


def test_gexf_round_trip_keeps_every_value_and_type(tmp_path):
    path = write_gexf(planted(), tmp_path / "g.gexf", title="forest <A> & B")
    R = nx.read_gexf(path)
    assert type(R) is nx.DiGraph and sorted(R.nodes) == sorted([N1, N2, N3])
    for n in R.nodes:
        d = dict(R.nodes[n])
        assert d.pop("viz", None) == EXPECTED_VIZ.get(n)
        if n in EXPECTED_VIZ:
            assert_same(R.nodes[n]["viz"], EXPECTED_VIZ[n], f"{n}.viz", types={})
        assert_same(d, EXPECTED_NODES[n], n)
    assert sorted(R.edges) == sorted(EXPECTED_EDGES)
    for i, (u, v) in enumerate(EXPECTED_EDGES):
        d = dict(R.edges[u, v])
        assert d.pop("id") == str(i)  # the GEXF edge id, which read_gexf adds to the data
        assert_same(d, EXPECTED_EDGES[(u, v)], f"{u}->{v}")


def test_gexf_declares_gexf_types(tmp_path):
    root = ET.fromstring(gexf_bytes(planted()))
    assert root.tag == GEXF + "gexf" and root.get("version") == "1.3"
    declared = {(a.get("class"), t.get("title")): t.get("type")
                for a in root.iter(GEXF + "attributes") for t in a.iter(GEXF + "attribute")}
    assert declared == {
        ("node", "size"): "integer", ("node", "density"): "double", ("node", "alive"): "boolean",
        ("node", "feature"): "integer", ("node", "name"): "string", ("node", "mixed"): "double",
        ("node", "big"): "long", ("node", "maybe"): "double", ("node", "ratio"): "double",
        ("node", "text"): "string",
        ("edge", "fate"): "string", ("edge", "cos"): "double", ("edge", "merged"): "boolean",
        ("edge", "rank"): "integer"}
    graph = root.find(GEXF + "graph")
    assert graph.get("defaultedgetype") == "directed"
    assert root.find(f"{GEXF}meta/{GEXF}creator").text == "splitkit"


def test_gexf_is_valid_against_the_relaxng_schema_with_viz(tmp_path, relaxng):
    from lxml import etree

    path = write_gexf(planted(), tmp_path / "g.gexf", title="t")
    doc = etree.parse(str(path))
    relaxng.assertValid(doc)
    node = doc.getroot().find(f"{GEXF}graph/{GEXF}nodes/{GEXF}node")
    assert node.get("label") == HOSTILE_CLEAN
    assert dict(node.find(VIZ + "position").attrib) == {"x": "1.5", "y": "-2.0", "z": "0.0"}
    assert dict(node.find(VIZ + "color").attrib) == {"r": "255", "g": "0", "b": "10", "a": "1.0"}
    assert node.find(VIZ + "size").get("value") == "3.0"
    # An undirected graph and a graph without attributes are valid too.
    U = nx.Graph([(1, 2), (2, 3)])
    relaxng.assertValid(etree.fromstring(gexf_bytes(U)).getroottree())
    assert etree.fromstring(gexf_bytes(U)).find(f"{GEXF}graph").get("defaultedgetype") == "undirected"
    assert type(nx.read_gexf(write_gexf(U, tmp_path / "u.gexf"))) is nx.Graph
    empty = etree.fromstring(gexf_bytes(nx.DiGraph())).getroottree()
    relaxng.assertValid(empty)
    assert nx.read_gexf(write_gexf(nx.DiGraph(), tmp_path / "e.gexf")).number_of_nodes() == 0


@pytest.mark.parametrize("which, wrong", [("GEXF_NS", "http://www.gexf.net/1.2draft"),
                                          ("VIZ_NS", "http://www.gexf.net/1.2draft/viz"),
                                          ("GEXF_VERSION", "1.2")])
def test_schema_check_fails_on_a_broken_writer(monkeypatch, relaxng, which, wrong):
    from lxml import etree

    good = etree.fromstring(gexf_bytes(planted())).getroottree()
    assert relaxng.validate(good)
    monkeypatch.setattr(graphs, which, wrong)
    bad = etree.fromstring(gexf_bytes(planted())).getroottree()
    assert not relaxng.validate(bad)


def test_hostile_text_stays_text(tmp_path):
    G = nx.DiGraph()
    G.add_node(HOSTILE, label=HOSTILE, note=HOSTILE)
    G.add_edge(HOSTILE, "b", label=HOSTILE)
    vocabulary = {"h.gexf": {"gexf", "meta", "creator", "description", "graph", "attributes", "attribute", "nodes",
                             "node", "attvalues", "attvalue", "edges", "edge"},
                  "h.graphml": {"graphml", "key", "graph", "node", "edge", "data"}}
    for path in (write_gexf(G, tmp_path / "h.gexf", title=HOSTILE), write_graphml(G, tmp_path / "h.graphml")):
        raw = path.read_bytes()
        raw.decode("utf-8")
        for bad in (b"\x00", b"\x1b", b"<script", b"</textarea", b"]]>", b"<b>"):
            assert bad not in raw, (path.name, bad)
        root = ET.fromstring(raw)  # well-formed, and no element came from the text
        assert {el.tag.split("}")[-1] for el in root.iter()} == vocabulary[path.name]
    R = nx.read_gexf(tmp_path / "h.gexf")
    assert list(R.nodes) == [HOSTILE_CLEAN, "b"]
    assert R.nodes[HOSTILE_CLEAN]["label"] == HOSTILE_CLEAN and R.nodes[HOSTILE_CLEAN]["note"] == HOSTILE_CLEAN
    assert R.edges[HOSTILE_CLEAN, "b"]["label"] == HOSTILE_CLEAN
    Q = nx.read_graphml(tmp_path / "h.graphml")
    assert Q.nodes[HOSTILE_CLEAN]["note"] == HOSTILE_CLEAN and Q.edges[HOSTILE_CLEAN, "b"]["label"] == HOSTILE_CLEAN


@pytest.mark.parametrize("writer", ["default", "elementtree"])
def test_graphml_round_trip_keeps_every_value_and_type(tmp_path, monkeypatch, writer):
    if writer == "elementtree":  # what networkx falls back to where lxml is not installed
        monkeypatch.setattr(nx, "write_graphml", nx.write_graphml_xml)
    path = write_graphml(planted(), tmp_path / "g.graphml")
    R = nx.read_graphml(path)
    assert type(R) is nx.DiGraph and sorted(R.nodes) == sorted([N1, N2, N3])
    for n in R.nodes:
        want = dict(EXPECTED_NODES[n])
        viz = EXPECTED_VIZ.get(n, {})
        want.update({f"viz_{k}": v for k, v in {**viz.get("position", {}), **viz.get("color", {})}.items()})
        if "size" in viz:
            want["viz_size"] = viz["size"]
        assert_same(dict(R.nodes[n]), want, n)
        for k in want:
            if k.startswith("viz_"):
                assert type(R.nodes[n][k]) is (int if k in ("viz_r", "viz_g", "viz_b") else float)
    for u, v in EXPECTED_EDGES:
        assert_same(dict(R.edges[u, v]), EXPECTED_EDGES[(u, v)], f"{u}->{v}")
    assert_same({k: v for k, v in R.graph.items() if not k.endswith("_default")}, {"run": "A", "n_sizes": 2}, "graph")
    keys = {(k.get("for"), k.get("attr.name")): k.get("attr.type")
            for k in ET.parse(path).getroot().iter("{http://graphml.graphdrawing.org/xmlns}key")}
    assert keys[("node", "size")] == "long" and keys[("node", "density")] == "double"
    assert keys[("node", "alive")] == "boolean" and keys[("node", "name")] == "string"
    assert keys[("edge", "weight")] == "double" and keys[("node", "mixed")] == "double"


def test_graphml_gephi_names(tmp_path):
    with pytest.raises(ValueError, match=r"\['size'\] clash") as err:
        write_graphml(planted(), tmp_path / "g.graphml", gephi_names=True)
    assert "\n" not in str(err.value)
    G = planted()
    for _, d in G.nodes(data=True):
        d["n_features"] = d.pop("size")
    R = nx.read_graphml(write_graphml(G, tmp_path / "g.graphml", gephi_names=True))
    d = R.nodes[N1]
    assert (d["x"], d["y"], d["z"], d["size"], d["r"], d["g"], d["b"]) == (1.5, -2.0, 0.0, 3.0, 255, 0, 10)
    assert "a" not in d and not any(k.startswith("viz") for k in d)


@pytest.mark.parametrize("values, message", [
    ((1, "one"), r"node attribute 'bad' mixes int and str values; make it one type"),
    ((True, 2), r"node attribute 'bad' mixes bool and int values"),
    ((np.float32(1.5), np.bool_(False)), r"node attribute 'bad' mixes bool and float values"),
])
def test_mixed_types_are_a_one_line_error(values, message):
    G = nx.DiGraph()
    for i, v in enumerate(values):
        G.add_node(i, bad=v)
    with pytest.raises(ValueError, match=message) as err:
        coerce_graph(G)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [["a", "b"], ("a",), {"a"}, {"a": 1}, np.arange(3)])
def test_lists_are_rejected_naming_the_attribute(tmp_path, value):
    G = nx.DiGraph()
    G.add_node("n", top_tokens=value)
    target = tmp_path / "g.gexf"
    target.write_text("previous")
    for write in (write_gexf, write_graphml):
        with pytest.raises(ValueError,
                           match=r"node 'n' attribute 'top_tokens' is a \w+; .*join it into a string") as err:
            write(G, target)
        assert "\n" not in str(err.value)
    assert target.read_text() == "previous"  # a failed write leaves the old file
    if isinstance(value, list):  # the documented fix: join the list into one string
        G.nodes["n"]["top_tokens"] = " | ".join(value)
        assert nx.read_gexf(write_gexf(G, target)).nodes["n"]["top_tokens"] == "a | b"


def test_other_invalid_inputs_are_one_line_errors():
    cases = []
    M = nx.MultiDiGraph([(1, 2), (1, 2)])
    cases.append((M, "multigraphs are not supported"))
    D = nx.DiGraph()
    D.add_nodes_from([1, "1"])
    cases.append((D, "both become id '1'"))
    E = nx.DiGraph()
    E.add_edge(1, 2, id=5)
    cases.append((E, "'id' is reserved"))
    W = nx.DiGraph()
    W.add_edge(1, 2, weight="heavy")
    cases.append((W, "an edge weight must be a number"))
    C = nx.DiGraph()
    C.add_node(1, viz={"color": (1.0, 0.5, 0.0)})
    cases.append((C, r"channels are integers 0..255 \(see rgba255\)"))
    P = nx.DiGraph()
    P.add_node(1, viz={"position": (float("nan"), 0.0)})
    cases.append((P, "position x = nan; it must be a finite number"))
    S = nx.DiGraph()
    S.add_node(1, viz={"shape": "disc"})
    cases.append((S, r"unsupported keys \['shape'\]"))
    B = nx.DiGraph()
    B.add_node(1, huge=2 ** 70)
    cases.append((B, "does not fit in 64 bits"))
    for G, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            coerce_graph(G)
        assert "\n" not in str(err.value)


def test_rgba255_and_atomic_overwrite(tmp_path):
    assert rgba255("red") == (255, 0, 0, 1.0)
    assert rgba255((0.0, 0.5, 1.0, 0.25)) == (0, 128, 255, 0.25)
    G = nx.DiGraph()
    G.add_node(1, viz={"color": rgba255("#00ff00")})
    target = tmp_path / "g.gexf"
    target.write_text("old")
    write_gexf(G, target)
    write_graphml(G, tmp_path / "g.graphml")
    assert nx.read_gexf(target).nodes["1"]["viz"]["color"] == {"r": 0, "g": 255, "b": 0, "a": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.gexf", "g.graphml"]  # no temp files left


def test_nonfinite_and_none_are_omitted():
    G = nx.DiGraph()
    G.add_node(1, x=float("inf"), y=None, z=np.float32("nan"), w=1.0)
    G.add_edge(1, 2, weight=float("nan"))
    H = coerce_graph(G)
    assert H.nodes["1"] == {"w": 1.0, "label": "1"}
    assert H.edges["1", "2"] == {}
    assert not math.isnan(H.nodes["1"]["w"])
