"""The feature-splitting study's analysis: one family per run, its forest, fates, maps and universality.

``run_splitting(cfg, scfg)`` gathers the cached artifacts of every size of runs A and B (the family
from one trainer pass, feature activations over ``scfg.analysis_tokens`` analysis tokens, decoders,
logit effects), builds each run's splitting forest (:mod:`splitkit.analyses.splitting`) with exact
in-dictionary twins collapsed, the shuffled null of every step, A->B matches per size and the
universality of the splits, the joint UMAP of both runs' decoders (:mod:`splitkit.analyses.maps`)
and one family followed from the smallest size to the largest with its contexts. It returns data
and writes nothing (:mod:`splitkit.report.splitting` writes the files).

Twins. Features of one dictionary whose activations correlate above ``scfg.twin_threshold`` (0.9)
are single-linkage clusters (:mod:`splitkit.analyses.redundancy`); each cluster is one forest node
with a ``count``, so a pair of copies never shows as a merge. Each size's twin share (the share of
live features that sit in a cluster of two or more) is reported beside its fates.

Matches. Each size of A is matched to the same size of B by the many-to-one best activation
correlation over the same analysis tokens (``correlation.match``); an A feature without a live
match gets -1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import correlation
from ..config import Config, SplittingConfig
from . import maps, redundancy
from . import splitting as S

__all__ = ["RunData", "study_config", "load_run", "twin_labels", "promoted_tokens", "contexts", "follow_family",
           "analyse_run", "run_splitting", "RUN_SEEDS"]

RUN_SEEDS = {"A": "seed_a", "B": "seed_b"}


@dataclass
class RunData:
    """Everything of one run the study reads, per size."""

    run: str
    seed: int
    acts: dict  # size -> csr [n_tokens, size]
    W_dec: dict  # size -> float32 [size, d_mlp]
    counts: dict  # size -> int64 [size] firings over the analysis tokens
    promoted: dict  # size -> (int32 index [size, k], float32 value [size, k]): top logit effects by magnitude
    sae_stats: dict  # size -> the features stage's stats.json
    family_key: str
    train_summary: dict


def study_config(cfg: Config, scfg: SplittingConfig) -> Config:
    """The pipeline config of the study: ``cfg`` with the family's sizes and the analysis token count."""
    return cfg.with_overrides(dict={"sizes": tuple(scfg.sizes)}, analysis={"n_tokens": int(scfg.analysis_tokens)})


def load_run(cfg: Config, scfg: SplittingConfig, run: str, progress: bool = True, timings: dict | None = None) -> RunData:
    """Build (or reuse) the family of ``run`` ("A" or "B") and every size's features and logit effects."""
    from .. import pipeline as P

    if run not in RUN_SEEDS:
        raise ValueError(f"run must be 'A' or 'B', got {run!r}")
    fcfg = study_config(cfg, scfg)
    seed = getattr(fcfg, RUN_SEEDS[run])
    timings = {} if timings is None else timings
    t = time.perf_counter()
    fam = P.get_family(fcfg, seed, progress)
    timings[f"family_{run}_s"] = time.perf_counter() - t
    acts, W, counts, prom, stats = {}, {}, {}, {}, {}
    t = time.perf_counter()
    for s in scfg.sizes:
        fs = P.get_features(fcfg, seed, s, progress=progress)
        acts[s] = sp.csr_matrix(fs.acts(), dtype=np.float32)
        counts[s] = np.asarray(fs.counts, np.int64)
        stats[s] = fs.stats
        W[s] = fam.sae(s).W_dec.detach().numpy().astype(np.float32)
        prom[s] = P.get_logit_effects(fcfg, seed, s, progress=progress).top()
    timings[f"features_{run}_s"] = time.perf_counter() - t
    return RunData(run=run, seed=seed, acts=acts, W_dec=W, counts=counts, promoted=prom, sae_stats=stats,
                   family_key=fam.key, train_summary={k: v for k, v in fam.train_summary.items() if k != "saes"})


def twin_labels(acts: sp.csr_matrix, counts: np.ndarray, threshold: float = 0.9, k: int = 8
                ) -> tuple[np.ndarray, float, int]:
    """Twin-cluster labels of one dictionary: ``(labels [n] (-1 dead), twin share, n_clusters)``.

    The share is over live features: those in a cluster of two or more members.
    """
    tw = redundancy.activation_twins(acts, k=k)
    cl = redundancy.twin_clusters(tw, threshold, counts)
    sizes = cl.sizes
    live = cl.labels >= 0
    in_multi = live & (sizes[np.maximum(cl.labels, 0)] > 1)
    share = float(in_multi.sum() / max(live.sum(), 1))
    return cl.labels, share, int(cl.n_clusters)


def promoted_tokens(top: tuple[np.ndarray, np.ndarray], feature: int, n: int) -> tuple[int, ...]:
    """The ``n`` tokens feature ``feature`` promotes most (largest positive logit effects)."""
    idx, val = top
    row_i, row_v = np.asarray(idx[feature]), np.asarray(val[feature], np.float64)
    pos = row_v > 0
    order = np.lexsort((row_i[pos], -row_v[pos]))[:n]
    return tuple(int(t) for t in row_i[pos][order])


def contexts(acts: sp.csc_matrix, j: int, tokens: np.ndarray, decode, n: int = 3, before: int = 12) -> list[str]:
    """The ``n`` strongest activations of column ``j`` as text snippets: ``before`` tokens of context,
    then the activating token in ``[[...]]`` (one snippet per distinct position, strongest first)."""
    s, e = acts.indptr[j], acts.indptr[j + 1]
    if s == e:
        return []
    rows, vals = acts.indices[s:e], acts.data[s:e]
    order = np.lexsort((rows, -vals))[:n]
    out = []
    for t in rows[order].tolist():
        ctx = "".join(decode(int(x)) for x in tokens[max(0, t - before):t])
        out.append(f"{ctx}[[{decode(int(tokens[t]))}]]")
    return out


def follow_family(forest: nx.DiGraph, fam_df: pd.DataFrame) -> int | None:
    """The family to follow through every size, the way the paper follows base64: among families that
    span every size and start from one root, the one with most nodes (else the deepest, then largest)."""
    if not len(fam_df):
        return None
    n_sizes = len(forest.graph["sizes"].split(","))
    full = fam_df[(fam_df["depth"] == n_sizes) & (fam_df["n_roots"] == 1)]
    pick = full if len(full) else fam_df.sort_values(["depth", "n_nodes"], ascending=False, kind="stable")
    return int(pick.sort_values("n_nodes", ascending=False, kind="stable").iloc[0]["family"])


def analyse_run(data: RunData, scfg: SplittingConfig, tokens: np.ndarray, decode, vocab_size: int,
                timings: dict | None = None, progress: bool = False) -> dict:
    """Forest, fates, families, null and listings of one run (no matching, no map)."""
    from ..features import top_tokens
    from ..progress import stage

    timings = {} if timings is None else timings
    r = data.run
    sizes = list(scfg.sizes)
    n_tok = len(tokens)
    dens = {s: data.counts[s] / n_tok for s in sizes}
    t = time.perf_counter()
    labels, twin_share, n_clusters = {}, {}, {}
    with stage(f"run {r}: in-dictionary twins of {len(sizes)} sizes", progress):
        for s in sizes:
            labels[s], twin_share[s], n_clusters[s] = twin_labels(data.acts[s], data.counts[s], scfg.twin_threshold,
                                                                  scfg.twin_k)
    timings[f"twins_{r}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with stage(f"run {r}: links, forest and fates over {len(sizes) - 1} size steps", progress):
        forest, step_links = S.splitting_forest(data.acts, dens, data.W_dec, run=r, threshold=scfg.threshold,
                                                k=scfg.k, persist_cos=scfg.persist_cos,
                                                split_cover=scfg.split_cover, twins=labels,
                                                min_cofire=scfg.min_cofire)
    timings[f"links_{r}_s"] = time.perf_counter() - t
    fam_df = S.families(forest)
    steps = S.step_summary(forest, twin_share)
    for s_ in ("twin_share_parent", "twin_share_child"):
        if s_ not in steps:
            steps[s_] = np.nan
    t = time.perf_counter()
    null_rows = []
    with stage(f"run {r}: shuffled-order null of the links", progress):
        for (lo, hi), df in step_links.items():
            nulls = {mc: S.null_masked_cos(data.acts[lo], data.acts[hi], seed=0, n_children=scfg.null_children,
                                           min_cofire=mc) for mc in sorted({scfg.min_cofire, *scfg.null_min_cofire})}
            row = S.threshold_vs_null(df, nulls[scfg.min_cofire], hi, scfg.threshold)
            row.update(size=lo, next_size=hi, min_cofire=scfg.min_cofire)
            for mc in scfg.null_min_cofire:
                null = nulls[mc]
                row[f"null_share_linked_mc{mc}"] = float((null >= scfg.threshold).mean()) if len(null) else float("nan")
            null_rows.append(row)
    timings[f"null_{r}_s"] = time.perf_counter() - t
    # top tokens of every feature, for node labels; promoted tokens of every node
    top = {s: top_tokens(data.acts[s], tokens, vocab_size, 3) for s in sizes}
    for v, a in forest.nodes(data=True):
        s, f = a["size"], a["feature"]
        a["top_tokens"] = " | ".join(decode(int(x)) for x in top[s][f] if x >= 0)
        a["top_promoted"] = " | ".join(decode(x) for x in promoted_tokens(data.promoted[s], f, 3))
    listing = S.family_listing(forest, data.acts, tokens, n_families=scfg.n_families, n_top=scfg.n_top, decode=decode)
    if len(listing):
        prom = [promoted_tokens(data.promoted[s], f, scfg.n_top) for s, f in zip(listing["size"], listing["feature"])]
        listing["top_promoted"] = prom
        listing["top_promoted_text"] = [" | ".join(decode(x) for x in p) for p in prom]
    followed = follow_family(forest, fam_df)
    follow_rows = []
    if followed is not None:
        nodes = sorted((v for v, a in forest.nodes(data=True) if a["family"] == followed),
                       key=lambda v: (forest.nodes[v]["size"], forest.nodes[v]["feature"]))
        for s in sizes:
            mine = [v for v in nodes if forest.nodes[v]["size"] == s]
            if not mine:
                continue
            cols = data.acts[s][:, [forest.nodes[v]["feature"] for v in mine]].tocsc()
            cols.sort_indices()
            for u, v in enumerate(mine):
                a = forest.nodes[v]
                follow_rows.append({
                    "node": v, "size": s, "feature": a["feature"], "count": a["count"], "density": a["density"],
                    "fate_in": a["fate_in"], "fate_out": a["fate_out"], "parents": ",".join(forest.predecessors(v)),
                    "top_tokens": a["top_tokens"], "top_promoted": a["top_promoted"],
                    "contexts": contexts(cols, u, tokens, decode, scfg.n_contexts, scfg.context_tokens)})
    n_multi = fam_df[fam_df["n_nodes"] > 1]
    return {"run": r, "forest": forest, "step_links": step_links, "families": fam_df, "steps": steps,
            "branching": S.branching(forest), "null": pd.DataFrame(null_rows), "listing": listing,
            "followed_family": followed, "followed": pd.DataFrame(follow_rows),
            "twin_share": {int(s): twin_share[s] for s in sizes},
            "n_twin_clusters": {int(s): n_clusters[s] for s in sizes},
            "n_families": int(len(fam_df)), "n_multi_families": int(len(n_multi)),
            "largest_families": fam_df.head(scfg.n_families)}


def _match_maps(a: RunData, b: RunData, sizes, k: int) -> tuple[dict, dict]:
    """Per size: the A->B best-match index ``[n_a]`` (-1 none) and the matching's summary."""
    matches, summ = {}, {}
    for s in sizes:
        df = correlation.match(a.acts[s], b.acts[s], k=k, assignment="none")
        best = df["best_b"].to_numpy(np.int64).copy()
        corr = df["corr"].to_numpy(np.float64)
        best[~np.isfinite(corr)] = -1
        matches[s] = best
        live = np.isfinite(corr)
        summ[int(s)] = {"median_corr": float(np.median(corr[live])) if live.any() else float("nan"),
                        "share_gt_0.5": float((corr[live] > 0.5).mean()) if live.any() else float("nan"),
                        "n_matched": int(live.sum()), "n": int(len(corr))}
        matches[("corr", s)] = corr
    return matches, summ


def _joint_map(datas: list[RunData], res_runs: dict, scfg: SplittingConfig, fcfg: Config,
               progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """The joint UMAP of every size of every run (cached: ``pipeline.get_joint_map``), with families and purity."""
    from .. import pipeline as P
    from ..progress import stage

    decs, feats = {}, {}
    for d in datas:
        for s in scfg.sizes:
            W = d.W_dec[s]
            decs[(d.run, s)] = W
            feats[(d.run, s)] = np.flatnonzero(np.linalg.norm(W, axis=1) > 0)
    settings = {"sizes": [int(s) for s in scfg.sizes], "rows": "decoder rows of nonzero norm",
                "n_neighbors": scfg.umap_neighbors, "min_dist": scfg.umap_min_dist, "cluster_dims": scfg.cluster_dims,
                "min_cluster_size": scfg.min_cluster_size, "seed": scfg.umap_seed}
    n_points = sum(len(f) for f in feats.values())
    with stage(f"joint UMAP (2-D and {scfg.cluster_dims}-D) and HDBSCAN of {n_points:,} decoder directions",
               progress):
        m = P.get_joint_map(fcfg, {d.run: d.family_key for d in datas}, settings, lambda: maps.joint_map(
            decs, n_neighbors=scfg.umap_neighbors, min_dist=scfg.umap_min_dist, cluster_dims=scfg.cluster_dims,
            min_cluster_size=scfg.min_cluster_size, seed=scfg.umap_seed, features=feats), progress)
    fam = np.full(len(m), -1, np.int64)
    multi = np.zeros(len(m), bool)
    for r, res in res_runs.items():
        sel = (m["run"] == r).to_numpy()
        lab = maps.family_labels(m[sel], res["forest"])
        fam[sel] = lab
        big = set(res["families"].loc[res["families"]["n_nodes"] > 1, "family"].tolist())
        multi[sel] = [x in big for x in lab]
    m["family"] = fam
    # one label space over both runs: families are numbered per run
    run_code = m["run"].map({r: i for i, r in enumerate(res_runs)}).to_numpy()
    joint_lab = np.where(fam >= 0, fam * len(res_runs) + run_code, -1)
    purity = {"all": maps.cluster_purity(m["cluster"].to_numpy(), joint_lab),
              "multi_node_families": maps.cluster_purity(m["cluster"].to_numpy(), np.where(multi, joint_lab, -1))}
    for r in res_runs:
        sel = (m["run"] == r).to_numpy()
        purity[f"run_{r}"] = maps.cluster_purity(m["cluster"].to_numpy()[sel], joint_lab[sel])
    purity["how"] = ("share of clustered features whose HDBSCAN cluster's most common forest family (per run) is "
                     "theirs; multi_node_families leaves out features of one-node families")
    return m, {"purity": purity, "settings": dict(m.attrs)}


def run_splitting(cfg: Config, scfg: SplittingConfig, runs=("A", "B"), progress: bool = True) -> dict:
    """The whole study's data: per run the forest and its tables, A->B universality of splits (both
    runs given), the joint map, timings. Builds whatever upstream is missing; writes nothing."""
    from .. import pipeline as P
    from ..progress import stage
    from ..tokenizer import decode_tokens

    runs = tuple(runs)
    if not runs or any(r not in RUN_SEEDS for r in runs) or len(set(runs)) != len(runs):
        raise ValueError(f"runs must be 'A', 'B' or both, each once, got {list(runs)}")
    timings: dict = {}
    t_all = time.perf_counter()
    fcfg = study_config(cfg, scfg)
    data = P.get_tokens(fcfg)
    tok = data.tokenizer
    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            cache[i] = decode_tokens(tok, [i])[0]
        return cache[i]

    datas = [load_run(cfg, scfg, r, progress, timings) for r in runs]
    tokens = np.asarray(P.get_acts(fcfg, datas[0].seed, "analysis", progress).tokens, np.int64)
    for d in datas[1:]:
        if not np.array_equal(tokens, np.asarray(P.get_acts(fcfg, d.seed, "analysis", progress).tokens)):
            raise RuntimeError("analysis stores of A and B hold different tokens; clear the cache folder 'acts'")
    V = int(data.info["vocab_size"])
    res_runs = {d.run: analyse_run(d, scfg, tokens, decode, V, timings, progress) for d in datas}
    out = {"runs": res_runs, "sizes": list(scfg.sizes), "n_analysis_tokens": int(len(tokens)),
           "run_info": {d.run: {"seed": d.seed, "family_key": d.family_key, "train": d.train_summary,
                                "sae": {int(s): d.sae_stats[s] for s in scfg.sizes}} for d in datas},
           "recipe": fcfg.dict.recipe}
    if len(datas) == 2:
        a, b = datas
        t = time.perf_counter()
        with stage(f"A to B matching at {len(scfg.sizes)} sizes and the universality of splits", progress):
            matches, msum = _match_maps(a, b, scfg.sizes, scfg.match_k)
            timings["matching_s"] = time.perf_counter() - t
            m = {s: matches[s] for s in scfg.sizes}
            out["matches"] = m
            out["match_corr"] = {s: matches[("corr", s)] for s in scfg.sizes}
            out["match_summary"] = msum
            out["split_universality"] = S.split_universality(res_runs["A"]["forest"], res_runs["B"]["forest"], m,
                                                             n_shuffles=scfg.n_shuffles, seed=0)
    t = time.perf_counter()
    out["map"], out["map_info"] = _joint_map(datas, res_runs, scfg, fcfg, progress)
    timings["umap_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    out["timings"] = timings
    return out
