"""A joint map of the decoder directions of several dictionaries, and clusters on it.

The paper draws every size of a run together on one UMAP of the decoder directions (cosine metric,
``n_neighbors`` 15, ``min_dist`` 0.05, or 0.01 with three or more sizes), where a small run's
feature sits among its descendants, and finds clusters by HDBSCAN (``min_cluster_size`` 3) on a
10-dimensional UMAP of the same directions. The paper gives no ``min_dist`` for the 10-D map; we
use the 2-D map's value (``cluster_min_dist`` changes it).

UMAP is seeded and single-threaded (``n_jobs=1``), so the coordinates are reproducible on one
machine; HDBSCAN is deterministic given its input.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import networkx as nx
import numpy as np
import pandas as pd

__all__ = ["joint_map", "cluster_purity", "family_labels", "paper_min_dist"]


def paper_min_dist(n_sizes: int) -> float:
    """The paper's ``min_dist``: 0.05 for one or two sizes, 0.01 for three or more."""
    return 0.01 if n_sizes >= 3 else 0.05


def _umap(X: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, seed: int, n_jobs: int):
    import umap  # imported here: it compiles numba code on first import, which only maps need

    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine",
                        random_state=seed, n_jobs=n_jobs, transform_seed=seed)
    return reducer.fit_transform(X).astype(np.float64)


def joint_map(decoders: Mapping[tuple[str, int], np.ndarray], *, n_neighbors: int = 15,
              min_dist: float | None = None, cluster_dims: int = 10, cluster_min_dist: float | None = None,
              min_cluster_size: int = 3, seed: int = 0, n_jobs: int = 1,
              features: Mapping[tuple[str, int], np.ndarray] | None = None) -> pd.DataFrame:
    """One UMAP of the decoder rows of every dictionary given, plus HDBSCAN clusters.

    Args:
        decoders: ``{(run, size): W_dec [n, d_mlp]}``; all with the same ``d_mlp``.
        n_neighbors, min_dist: UMAP settings of the 2-D map (cosine metric); ``min_dist=None`` is
            the paper's choice for the number of distinct sizes given (:func:`paper_min_dist`).
        cluster_dims: dimension of the UMAP that HDBSCAN clusters (the paper's 10); 0 clusters the
            2-D map itself.
        cluster_min_dist: ``min_dist`` of that map (default: the 2-D map's).
        min_cluster_size: HDBSCAN's (the paper's 3).
        seed, n_jobs: UMAP's ``random_state`` and threads (1 keeps it deterministic).
        features: optional ``{(run, size): feature ids}`` to map a subset (default: all).

    Returns:
        DataFrame, one row per mapped feature in the order of ``decoders`` then feature id:
        ``node`` (``"{run}/{size}/{feature}"``, the forest's ids), ``run, size, feature, x, y,
        cluster`` (-1 = HDBSCAN noise). ``attrs`` holds the settings used.
    """
    from sklearn.cluster import HDBSCAN

    if not decoders:
        raise ValueError("decoders is empty; give {(run, size): W_dec [n, d_mlp]}")
    blocks, meta = [], []
    d = None
    for key, W in decoders.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"decoders keys must be (run, size) pairs, got {key!r}")
        W = np.asarray(W)
        if W.ndim != 2 or (d is not None and W.shape[1] != d):
            raise ValueError(f"decoders[{key}] must be [n, d_mlp] with one d_mlp for all, got {W.shape}")
        d = W.shape[1]
        ids = np.arange(W.shape[0]) if features is None or key not in features else np.asarray(features[key], np.int64)
        rows = W[ids].astype(np.float64)
        zero = np.flatnonzero(np.linalg.norm(rows, axis=1) == 0)
        if len(zero):
            raise ValueError(f"decoders[{key}] has zero rows (features {ids[zero][:5].tolist()}); they have no "
                             "direction: leave them out with features=")
        blocks.append(rows)
        meta.append((str(key[0]), int(key[1]), ids))
    X = np.concatenate(blocks)
    n = len(X)
    if n <= n_neighbors + 1:
        raise ValueError(f"{n} directions are too few for n_neighbors={n_neighbors}; map more or lower it")
    n_sizes = len({s for _, s, _ in meta})
    md = paper_min_dist(n_sizes) if min_dist is None else float(min_dist)
    cmd = md if cluster_min_dist is None else float(cluster_min_dist)
    t0 = time.perf_counter()
    xy = _umap(X, 2, n_neighbors, md, seed, n_jobs)
    t1 = time.perf_counter()
    emb = xy if cluster_dims == 0 else _umap(X, cluster_dims, n_neighbors, cmd, seed, n_jobs)
    t2 = time.perf_counter()
    # Prim's tree over all pairs: O(n^2), about an hour at half a million points (budget.HDBSCAN_S_PER_PAIR)
    labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(emb)
    t3 = time.perf_counter()
    df = pd.DataFrame({
        "node": [f"{r}/{s}/{f}" for r, s, ids in meta for f in ids.tolist()],
        "run": np.concatenate([[r] * len(ids) for r, _, ids in meta]),
        "size": np.concatenate([np.full(len(ids), s, np.int64) for _, s, ids in meta]),
        "feature": np.concatenate([ids for _, _, ids in meta]).astype(np.int64),
        "x": xy[:, 0], "y": xy[:, 1], "cluster": labels.astype(np.int64),
    })
    df.attrs.update(metric="cosine", n_neighbors=int(n_neighbors), min_dist=md, cluster_dims=int(cluster_dims),
                    cluster_min_dist=cmd, min_cluster_size=int(min_cluster_size), seed=int(seed), n_jobs=int(n_jobs),
                    seconds={"umap_2d": round(t1 - t0, 1), "umap_cluster_map": round(t2 - t1, 1),
                             "hdbscan": round(t3 - t2, 1)})
    return df


def family_labels(map_df: pd.DataFrame, forest: nx.DiGraph) -> np.ndarray:
    """int64 ``[len(map_df)]``: each mapped feature's forest family (-1 where the forest lacks it);
    twins of a collapsed forest get their cluster's family."""
    from .splitting import feature_nodes

    node_of = feature_nodes(forest)
    run = forest.graph.get("run")
    out = np.full(len(map_df), -1, np.int64)
    for i, (r, s, f) in enumerate(zip(map_df["run"], map_df["size"], map_df["feature"])):
        v = node_of.get((int(s), int(f))) if run is None or r == run else None
        if v is not None:
            out[i] = forest.nodes[v].get("family", -1)
    return out


#: AMI's expected mutual information loops over every (cluster, label) pair of the contingency
#: table; past this many pairs (the paper's nine sizes give ~4e9) only NMI is computed
AMI_MAX_PAIRS = 50_000_000


def cluster_purity(clusters: np.ndarray, labels: np.ndarray) -> dict:
    """How pure the map's clusters are with respect to given labels (e.g. forest families).

    ``clusters``: int ``[n]`` (-1 = noise), ``labels``: ``[n]`` (-1 = unlabelled). Over points
    with a cluster and a label: ``purity`` (share of points whose cluster's most common label is
    theirs), ``nmi`` (normalised mutual information), ``ami`` (adjusted mutual information; NaN,
    with ``ami_skipped``, when the table has more than ``AMI_MAX_PAIRS`` cells), ``n_clusters``,
    ``n_points``; and ``noise_share`` over all points. The contingency table is kept sparse.
    """
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.shape != labels.shape or clusters.ndim != 1:
        raise ValueError(f"clusters and labels must be 1-D of one length, got {clusters.shape} and {labels.shape}")
    noise_share = float((clusters < 0).mean()) if len(clusters) else float("nan")
    sel = (clusters >= 0) & (labels >= 0)
    c, lab = clusters[sel], labels[sel]
    if not len(c):
        return {"purity": float("nan"), "nmi": float("nan"), "ami": float("nan"), "n_clusters": 0, "n_points": 0,
                "noise_share": noise_share}
    _, ci = np.unique(c, return_inverse=True)
    _, li = np.unique(lab, return_inverse=True)
    n_c, n_l = int(ci.max()) + 1, int(li.max()) + 1
    pairs, counts = np.unique(ci.astype(np.int64) * n_l + li, return_counts=True)  # nonzero cells only
    best = np.zeros(n_c, np.int64)
    np.maximum.at(best, pairs // n_l, counts)  # each cluster's most common label's count
    out = {"purity": float(best.sum() / len(c)), "nmi": float(normalized_mutual_info_score(lab, c)),
           "n_clusters": n_c, "n_points": int(len(c)), "noise_share": noise_share}
    if n_c * n_l <= AMI_MAX_PAIRS:
        out["ami"] = float(adjusted_mutual_info_score(lab, c))
    else:
        out["ami"] = float("nan")
        out["ami_skipped"] = f"{n_c:,} clusters x {n_l:,} labels: expected MI over that many pairs is out of reach"
    return out
