"""Self-timing benchmark of the splitting links: masked cosine between two large dictionaries.

    python bench/splitting_links.py                       # 65,536 x 131,072 features, 1M tokens, L0 20
    python bench/splitting_links.py --tokens 100000       # a scaled-down run
    python bench/splitting_links.py --engine scipy --tokens 20000 --parents 8192 --children 16384

Synthetic activations shaped like a real size step: every token fires ``--l0`` parents (uniform
over the parent dictionary, values 0.1 + Exp(1)); each firing parent ``p`` hands the token to one of
its two children ``2p`` or ``2p + 1`` with the value jittered (log-normal 0.2), so each child's
L0 is also ``--l0`` and every child has a true parent. The cost of linking is the number of
co-firing (token, parent, child) triples, ``n_tokens * l0^2`` here, which is what real data of the
same L0 costs as well (its density law only moves work between columns).

Stages timed (wall and process CPU): links (top-k parents per child), children_cover over the
links at or above 0.4, the shuffled null on a sample of children, and the forest. Peak RSS is the
process high-water mark (``ru_maxrss``), inputs included; it is printed with the inputs' own size.
Prints one JSON object; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitkit.analyses import splitting as S  # noqa: E402
from splitkit.analyses.splitting.cofire import _engine  # noqa: E402


def synthetic(n_tokens: int, n_parent: int, l0: int, seed: int):
    """Parent activations ``[n_tokens, n_parent]`` and their split children ``[n_tokens, 2 n_parent]``."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_tokens, dtype=np.int64), l0)
    par = rng.integers(0, n_parent, n_tokens * l0)
    a = (0.1 + rng.exponential(1.0, len(par))).astype(np.float32)
    child = 2 * par + rng.integers(0, 2, len(par))
    b = (a * rng.lognormal(0.0, 0.2, len(par))).astype(np.float32)
    A = sp.csr_matrix((a, (rows, par)), shape=(n_tokens, n_parent))
    B = sp.csr_matrix((b, (rows, child)), shape=(n_tokens, 2 * n_parent))
    A.sum_duplicates()
    B.sum_duplicates()
    return A, B


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - w, 2), round(time.process_time() - c, 2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--parents", type=int, default=65_536)
    ap.add_argument("--l0", type=int, default=20)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--engine", default="auto", choices=S.ENGINES)
    ap.add_argument("--min-cofire", type=int, default=1, help="links.min_cofire (1: the paper's rule)")
    ap.add_argument("--null-children", type=int, default=8192, help="children sampled for the null (0: skip)")
    ap.add_argument("--no-forest", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    res = {"tokens": args.tokens, "parents": args.parents, "children": 2 * args.parents, "l0": args.l0,
           "k": args.k, "min_cofire": args.min_cofire, "engine": _engine(args.engine), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count()}
    if S.HAVE_NUMBA:
        import numba

        res["threads"] = numba.get_num_threads()
    gen = timed(lambda: synthetic(args.tokens, args.parents, args.l0, args.seed))
    (A, B), res["gen_wall_s"] = gen[0], gen[1]
    res["inputs_gb"] = round(sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (A, B)) / 2**30, 3)
    res["triples"] = int(np.diff(A.indptr).astype(np.int64) @ np.diff(B.indptr).astype(np.int64))
    S.links(A[:2000], B[:2000], k=args.k, engine=args.engine)  # compile the kernel outside the timing
    res["rss_before_gb"] = round(rss_gb(), 3)

    df, res["links_wall_s"], res["links_cpu_s"] = timed(lambda: S.links(A, B, k=args.k, min_cofire=args.min_cofire,
                                                                          engine=args.engine))
    res["rss_after_links_gb"] = round(rss_gb(), 3)
    res["n_links"] = len(df)
    best = df[df["rank"] == 0]
    true_parent = best["parent"].to_numpy() == best["child"].to_numpy() // 2
    res["best_is_true_parent"] = round(float(true_parent.mean()), 4)
    res["ns_per_triple"] = round(1e9 * res["links_cpu_s"] / max(res["triples"], 1), 2)
    sel = df["masked_cos"] >= 0.4
    res["links_at_0.4"] = int(sel.sum())

    cover, res["cover_wall_s"], res["cover_cpu_s"] = timed(
        lambda: S.children_cover(A, B, df.loc[sel, "parent"].to_numpy(), df.loc[sel, "child"].to_numpy()))
    res["cover_median"] = round(float(np.median(cover)), 4)
    if args.null_children:
        null, res["null_wall_s"], res["null_cpu_s"] = timed(
            lambda: S.null_masked_cos(A, B, seed=0, n_children=min(args.null_children, B.shape[1]),
                                      min_cofire=args.min_cofire, engine=args.engine))
        res["null_q99"] = round(float(np.quantile(null, 0.99)), 4)
        res["null_share_at_0.4"] = round(float((null >= 0.4).mean()), 5)
    if not args.no_forest:
        dens = {A.shape[1]: A.getnnz(0) / A.shape[0], B.shape[1]: B.getnnz(0) / B.shape[0]}
        steps = {(A.shape[1], B.shape[1]): df}
        forest, res["forest_wall_s"], _ = timed(lambda: S.build_forest(
            steps, dens, cover={A.shape[1]: cover}))
        _, res["fates_wall_s"], _ = timed(lambda: S.classify_fates(forest))
        res["forest_nodes"], res["forest_edges"] = forest.number_of_nodes(), forest.number_of_edges()
        res["share_splits"] = round(float(S.step_summary(forest).loc[0, "share_splits"]), 4)
    res["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
