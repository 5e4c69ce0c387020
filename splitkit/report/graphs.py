"""Graph files for Gephi and its ecosystem: GEXF 1.3 (our own writer) and GraphML (networkx's writer),
one code path for every study (the splitting forest, the FSA graphs).

Both writers first run :func:`coerce_graph`, which turns any networkx graph into one whose every
attribute is a plain Python scalar of one type per attribute, so the files load in Gephi and other
strict readers, not only in networkx. Its rules:

- numpy scalars become ``int`` / ``float`` / ``bool`` / ``str`` (``.item()``);
- ``None`` and non-finite floats (NaN, +-inf) are *omitted* for that node or edge: GEXF readers
  disagree on how to spell them (Gephi parses Java's ``NaN``/``Infinity``, the XML Schema double
  says ``NaN``/``INF``), and a missing value is what Gephi shows as empty;
- an attribute with ``int`` and ``float`` values becomes ``float`` throughout; ``bool`` mixed with
  a number, or ``str`` mixed with anything else, is a one-line ``ValueError`` naming the attribute;
- lists, tuples, sets, dicts and arrays are a ``ValueError`` naming the attribute: join them into
  a string first (e.g. ``" ".join(tokens)``), which keeps the choice of separator with the caller;
- text goes through :func:`splitkit.report.escape.clean_text`: characters XML 1.0 forbids (NUL, ESC
  and the other C0 controls but tab/LF/CR), DEL, C1 controls and lone surrogates become U+FFFD,
  CRLF/CR become LF (attribute names too). ``<``, ``&``, quotes and ``]]>`` need nothing more: the
  XML serialiser (ElementTree, never string formatting) escapes them;
- node ids become ``str(node)`` (what both formats store; two nodes with the same string is an error);
- every node gets a ``label`` (its own ``label`` attribute, as text, else its id);
- reserved names: node ``viz`` (below), edge ``weight`` (a number, written as ``float``), edge
  ``label`` (text); an edge attribute named ``id`` is an error (GEXF keeps the edge id there);
- graph attributes (``G.graph``) follow the same rules; networkx's ``node_default``/``edge_default``
  bookkeeping is dropped.

Visual attributes, in networkx's own convention (the dict ``read_gexf`` returns), on a node's ``viz``::

    G.nodes[n]["viz"] = {"position": (x, y) or (x, y, z) or {"x": .., "y": .., "z": ..},
                         "color": (r, g, b) or (r, g, b, a) or {"r": .., ...},   # r, g, b ints 0..255
                         "size": s}                                              # s >= 0

normalised to ``{"position": {"x", "y", "z"}, "color": {"r", "g", "b", "a"}, "size"}`` with floats
for coordinates, alpha (default 1.0) and size, ints for channels, z = 0.0 when absent: exactly what
``networkx.read_gexf`` gives back. :func:`rgba255` turns a matplotlib colour into such a tuple.
GEXF writes them as ``viz:position`` / ``viz:color`` / ``viz:size``; GraphML as scalar node
attributes ``viz_x`` ... ``viz_a`` (or Gephi's GraphML names, see :func:`write_graphml`).

Type round trip (``coerce_graph(G)`` equals what ``read_gexf`` / ``read_graphml`` return, node ids
as ``str``): ``int`` -> GEXF ``integer`` (``long`` beyond 32 bits; beyond 64 bits is an error),
GraphML ``long`` -> ``int``; ``float`` and numpy floats (float32 widened exactly) -> ``double`` ->
``float``; ``bool`` -> ``boolean`` -> ``bool``; ``str`` -> ``string`` -> ``str``. GEXF ``float`` is
never written: a float32 value read as a double is the same number. What the GEXF reader adds:
``read_gexf`` puts an edge's GEXF ``id`` into the edge's data as ``"id"``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import numpy as np

from ..cache import atomic_path
from .escape import clean_text

GEXF_NS = "http://gexf.net/1.3"
VIZ_NS = "http://gexf.net/1.3/viz"
GEXF_VERSION = "1.3"

# GraphML node attributes for viz: ours, and the names Gephi's GraphML importer maps to position,
# size and colour.
_GRAPHML_VIZ = {k: f"viz_{k}" for k in ("x", "y", "z", "size", "r", "g", "b", "a")}
_GRAPHML_VIZ_GEPHI = {k: k for k in ("x", "y", "z", "size", "r", "g", "b")}
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MISSING = object()
_SLOT = "\x00"


# --------------------------------------------------------------------------------------- coercion

def _scalar(value, what: str):
    """A plain Python scalar, or ``_MISSING`` for None / NaN / inf. ``what`` names it in errors."""
    if value is None:
        return _MISSING
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{what} = {value} does not fit in 64 bits; store it as text or a float")
        return clean_text(value) if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else _MISSING
    if isinstance(value, (list, tuple, set, frozenset, dict, np.ndarray)):
        raise ValueError(f"{what} is a {type(value).__name__}; graph attributes must be scalars: join it into "
                         f"a string first (e.g. ' '.join(...))")
    raise ValueError(f"{what} has type {type(value).__name__}; use int, float, bool or str")


def _kind(v) -> str:
    return "bool" if isinstance(v, bool) else type(v).__name__


def _unify(table: list[dict], scope: str) -> dict[str, str]:
    """Make each attribute of ``table`` (one dict per element, edited in place) one type.

    Returns {name: "bool" | "int" | "float" | "str"} in first-seen order.
    """
    kinds: dict[str, set[str]] = {}
    for d in table:
        for k, v in d.items():
            kinds.setdefault(k, set()).add(_kind(v))
    out = {}
    for k, ks in kinds.items():
        if len(ks) == 1:
            out[k] = next(iter(ks))
        elif ks == {"int", "float"}:
            out[k] = "float"
            for d in table:
                if k in d:
                    d[k] = float(d[k])
        else:
            raise ValueError(f"{scope} attribute {k!r} mixes {' and '.join(sorted(ks))} values; make it one type")
    return out


def _xy(value, keys: tuple[str, ...], what: str) -> dict:
    """A position or colour given as a mapping or a sequence, as {key: number}."""
    if isinstance(value, Mapping):
        extra = set(value) - set(keys)
        if extra:
            raise ValueError(f"{what} has unknown keys {sorted(extra)}; use {', '.join(keys)}")
        items = {k: value[k] for k in keys if k in value}
    elif isinstance(value, (list, tuple, np.ndarray)):
        if len(value) > len(keys):
            raise ValueError(f"{what} has {len(value)} values; at most {len(keys)} ({', '.join(keys)})")
        items = dict(zip(keys, value))
    else:
        raise ValueError(f"{what} must be a mapping or a sequence ({', '.join(keys)}), not {type(value).__name__}")
    out = {}
    for k, v in items.items():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} {k} = {v!r}; it must be a finite number")
        out[k] = v
    return out


def _viz(value, node: str) -> dict:
    what = f"node {node!r} viz"
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict with position, color and/or size, not {type(value).__name__}")
    extra = set(value) - {"position", "color", "size"}
    if extra:
        raise ValueError(f"{what} has unsupported keys {sorted(extra)}; use position, color, size")
    out = {}
    if value.get("position") is not None:
        p = _xy(value["position"], ("x", "y", "z"), f"{what} position")
        if "x" not in p or "y" not in p:
            raise ValueError(f"{what} position needs x and y")
        p = {k: float(p.get(k, 0.0)) for k in ("x", "y", "z")}
        if max(abs(c) for c in p.values()) > _FLOAT32_MAX:
            raise ValueError(f"{what} position {p} is beyond the float32 range GEXF allows; rescale the layout")
        out["position"] = p
    if value.get("color") is not None:
        c = _xy(value["color"], ("r", "g", "b", "a"), f"{what} color")
        if not {"r", "g", "b"} <= set(c):
            raise ValueError(f"{what} color needs r, g and b")
        for k in "rgb":
            if not (isinstance(c[k], int) and 0 <= c[k] <= 255):
                raise ValueError(f"{what} color {k} = {c[k]!r}; channels are integers 0..255 (see rgba255)")
        a = float(c.get("a", 1.0))
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"{what} color a = {a}; alpha is between 0 and 1")
        out["color"] = {"r": c["r"], "g": c["g"], "b": c["b"], "a": a}
    if value.get("size") is not None:
        s = value["size"]
        s = s.item() if isinstance(s, np.generic) else s
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise ValueError(f"{what} size = {s!r}; it must be a finite number >= 0")
        out["size"] = float(s)
    return out


def rgba255(color) -> tuple[int, int, int, float]:
    """A matplotlib colour (name, hex, or an RGB(A) tuple of floats in 0..1) as (r, g, b, a) for ``viz``."""
    from matplotlib.colors import to_rgba

    r, g, b, a = to_rgba(color)
    return round(r * 255), round(g * 255), round(b * 255), float(a)


def coerce_graph(G: nx.Graph) -> nx.Graph:
    """A copy of ``G`` every writer accepts: a ``DiGraph`` (or ``Graph`` when ``G`` is undirected) with
    string node ids and one plain scalar type per attribute, under the rules in the module docstring.

    Idempotent: ``coerce_graph(coerce_graph(G))`` equals ``coerce_graph(G)``.
    """
    if not isinstance(G, nx.Graph):
        raise ValueError(f"expected a networkx graph, got {type(G).__name__}")
    if G.is_multigraph():
        raise ValueError("multigraphs are not supported: merge parallel edges into one (e.g. nx.DiGraph(G)) first")
    ids: dict = {}
    seen: dict[str, object] = {}
    for n in G.nodes:
        s = clean_text(str(n))
        if s in seen:
            raise ValueError(f"nodes {seen[s]!r} and {n!r} both become id {s!r}; give nodes distinct string forms")
        seen[s] = n
        ids[n] = s

    node_rows, node_viz = [], {}
    for n, data in G.nodes(data=True):
        row = {}
        for k, v in data.items():
            if k == "viz":
                if v is not None:
                    node_viz[ids[n]] = _viz(v, ids[n])
                continue
            v = _scalar(v, f"node {ids[n]!r} attribute {k!r}")
            if v is _MISSING:
                continue
            row[clean_text(str(k))] = clean_text(str(v)) if k == "label" else v
        row.setdefault("label", ids[n])
        node_rows.append(row)
    _unify(node_rows, "node")

    edge_rows = []
    for u, v, data in G.edges(data=True):
        row = {}
        for k, x in data.items():
            what = f"edge ({ids[u]!r}, {ids[v]!r}) attribute {k!r}"
            if k == "id":
                raise ValueError(f"{what}: 'id' is reserved for the GEXF edge id; rename the attribute")
            x = _scalar(x, what)
            if x is _MISSING:
                continue
            if k == "weight":
                if isinstance(x, (bool, str)):
                    raise ValueError(f"{what} = {x!r}; an edge weight must be a number")
                x = float(x)
            elif k == "label":
                x = clean_text(str(x))
            row[clean_text(str(k))] = x
        edge_rows.append(row)
    _unify(edge_rows, "edge")

    graph_row = {}
    for k, v in G.graph.items():
        if k in ("node_default", "edge_default"):
            continue
        v = _scalar(v, f"graph attribute {k!r}")
        if v is not _MISSING:
            graph_row[clean_text(str(k))] = v

    H = nx.DiGraph() if G.is_directed() else nx.Graph()
    H.graph.update(graph_row)
    for n, row in zip(G.nodes, node_rows):
        if ids[n] in node_viz:
            row["viz"] = node_viz[ids[n]]
        H.add_node(ids[n], **row)
    for (u, v), row in zip(G.edges, edge_rows):
        H.add_edge(ids[u], ids[v], **row)
    return H


# --------------------------------------------------------------------------------------- GEXF

def _gexf_type(kind: str, values) -> str:
    if kind == "int":
        return "integer" if all(_INT32[0] <= x <= _INT32[1] for x in values) else "long"
    return {"float": "double", "bool": "boolean", "str": "string"}[kind]


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _declare(graph_el, cls: str, rows: list[dict], skip: set[str]) -> dict[str, str]:
    """Write ``<attributes class=cls>``; returns {name: GEXF attribute id}."""
    names: dict[str, list] = {}
    for d in rows:
        for k, v in d.items():
            if k not in skip:
                names.setdefault(k, []).append(v)
    if not names:
        return {}
    el = ET.SubElement(graph_el, "attributes", {"class": cls, "mode": "static"})
    ids = {}
    for i, (k, vals) in enumerate(names.items()):
        ids[k] = str(i)
        ET.SubElement(el, "attribute", {"id": str(i), "title": k,
                                                        "type": _gexf_type(_kind(vals[0]), vals)})
    return ids


def _attvalues(parent, data: dict, ids: dict[str, str]) -> None:
    present = [(ids[k], data[k]) for k in ids if k in data]
    if present:
        el = ET.SubElement(parent, "attvalues")
        for i, v in present:
            ET.SubElement(el, "attvalue", {"for": i, "value": _text(v)})


def _node_element(n: str, d: dict, attr_ids: dict[str, str]) -> ET.Element:
    el = ET.Element("node", {"id": n, "label": d["label"]})
    _attvalues(el, d, attr_ids)
    viz = d.get("viz", {})
    if "color" in viz:
        c = viz["color"]
        ET.SubElement(el, "viz:color", {"r": str(c["r"]), "g": str(c["g"]), "b": str(c["b"]), "a": repr(c["a"])})
    if "position" in viz:
        ET.SubElement(el, "viz:position", {k: repr(viz["position"][k]) for k in ("x", "y", "z")})
    if "size" in viz:
        ET.SubElement(el, "viz:size", {"value": repr(viz["size"])})
    return el


def _edge_element(i: int, u: str, v: str, d: dict, attr_ids: dict[str, str]) -> ET.Element:
    attrs = {"id": str(i), "source": u, "target": v}
    if "weight" in d:
        attrs["weight"] = repr(d["weight"])
    if "label" in d:
        attrs["label"] = d["label"]
    el = ET.Element("edge", attrs)
    _attvalues(el, d, attr_ids)
    return el


def _gexf_chunks(G: nx.Graph, title: str | None):
    """The GEXF 1.3 document of ``G`` as text chunks: a skeleton (root, meta, attribute declarations)
    and then one element per node and edge, each built and escaped by ElementTree, so memory stays
    that of one element however large the graph (a whole tree of 500k nodes would take gigabytes)."""
    H = coerce_graph(G)
    # ElementTree's default_namespace option refuses unprefixed attributes, so the two namespaces are
    # declared on the root by hand: GEXF's as the default, viz's under the prefix of the viz:* tags.
    root = ET.Element("gexf", {"xmlns": GEXF_NS, "xmlns:viz": VIZ_NS, "version": GEXF_VERSION})
    meta = ET.SubElement(root, "meta")
    ET.SubElement(meta, "creator").text = "splitkit"
    if title is not None:
        ET.SubElement(meta, "description").text = clean_text(str(title))
    graph = ET.SubElement(root, "graph", {
        "defaultedgetype": "directed" if H.is_directed() else "undirected", "mode": "static", "idtype": "string"})
    node_ids = _declare(graph, "node", [d for _, d in H.nodes(data=True)], {"label", "viz"})
    edge_ids = _declare(graph, "edge", [d for _, _, d in H.edges(data=True)], {"label", "weight"})
    # NUL marks where the nodes and edges go: clean_text has removed it from every string in H.
    ET.SubElement(graph, "nodes", {"count": str(H.number_of_nodes())}).text = _SLOT
    ET.SubElement(graph, "edges", {"count": str(H.number_of_edges())}).text = _SLOT
    ET.indent(root)
    head, middle, tail = ET.tostring(root, encoding="unicode").split(_SLOT)
    yield "<?xml version='1.0' encoding='utf-8'?>\n" + head
    pad = "\n" + "  " * 3
    for n, d in H.nodes(data=True):
        el = _node_element(n, d, node_ids)
        ET.indent(el, level=3)
        yield pad + ET.tostring(el, encoding="unicode")
    yield "\n" + "  " * 2 + middle
    for i, (u, v, d) in enumerate(H.edges(data=True)):
        el = _edge_element(i, u, v, d, edge_ids)
        ET.indent(el, level=3)
        yield pad + ET.tostring(el, encoding="unicode")
    yield "\n" + "  " * 2 + tail + "\n"


def gexf_bytes(G: nx.Graph, *, title: str | None = None) -> bytes:
    """The GEXF 1.3 document of ``G`` (after :func:`coerce_graph`) as UTF-8 bytes."""
    return "".join(_gexf_chunks(G, title)).encode("utf-8")


def write_gexf(G: nx.Graph, path, *, title: str | None = None) -> Path:
    """Write ``G`` as GEXF 1.3 (UTF-8, streamed into a temp file, then ``os.replace``); returns the path.

    Node labels from the ``label`` attribute, ``viz:*`` from ``viz``, edge weights from ``weight``;
    every other attribute declared once with its type and written per element (see the module
    docstring). ``title`` goes into ``<meta><description>``.
    """
    path = Path(path)
    chunks = _gexf_chunks(G, title)
    first = next(chunks)  # coercion errors surface here, before any file exists
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(first)
        for chunk in chunks:
            fh.write(chunk)
    return path


# --------------------------------------------------------------------------------------- GraphML

def write_graphml(G: nx.Graph, path, *, gephi_names: bool = False) -> Path:
    """Write ``G`` as GraphML through networkx's writer after :func:`coerce_graph`, atomically.

    ``viz`` becomes scalar node attributes: ``viz_x, viz_y, viz_z, viz_size, viz_r, viz_g, viz_b,
    viz_a`` by default, or with ``gephi_names=True`` the names Gephi's GraphML importer reads as
    position, size and colour, ``x, y, z, size, r, g, b`` (no alpha: it has no name for it). Those
    clash with everyday attributes (a dictionary's ``size``), hence not the default; a clash is a
    ``ValueError``.
    """
    H = coerce_graph(G)
    names = _GRAPHML_VIZ_GEPHI if gephi_names else _GRAPHML_VIZ
    if any("viz" in d for _, d in H.nodes(data=True)):
        taken = sorted({k for _, d in H.nodes(data=True) for k in d} & set(names.values()))
        if taken:
            raise ValueError(f"node attributes {taken} clash with the GraphML names of viz; rename them"
                             + ("" if not gephi_names else " or write with gephi_names=False"))
        for _, d in H.nodes(data=True):
            viz = d.pop("viz", None)
            if viz is None:
                continue
            flat = {**viz.get("position", {}), **viz.get("color", {})}
            if "size" in viz:
                flat["size"] = viz["size"]
            d.update({names[k]: v for k, v in flat.items() if k in names})
    path = Path(path)
    with atomic_path(path) as tmp:
        nx.write_graphml(H, tmp, encoding="utf-8", prettyprint=True)  # incremental with lxml, else ElementTree
    return path
