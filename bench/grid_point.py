"""Benchmark of one universality-scaling grid point's matchings: four passes over the tokens (the
path before 2026-12-01, night) against one pass plus the chance level (``matched_figures``).

    python bench/grid_point.py                   # 4,096 features, 1M tokens; writes docs/bench/grid_point.json
    python bench/grid_point.py --n 1024 --tokens 200000 --out none     # quick, prints only

Synthetic pair as in ``bench/matching.py`` (A log-uniform densities, half of B noisy copies of A
columns), with in-dictionary twins planted in both (a share of columns repeated with jitter), so
the de-duplicated matching has clusters to collapse. Both paths run on the same inputs, in the
same process, alternately; the figures must come out identical (checked, recorded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def with_twins(M: sp.csr_matrix, share: float, seed: int) -> sp.csr_matrix:
    """``M`` with a ``share`` of its columns replaced by jittered copies of other columns."""
    rng = np.random.default_rng(seed)
    n = M.shape[1]
    dst = rng.choice(n, int(share * n), replace=False)
    src = rng.integers(0, n, dst.size)
    C = M.tocsc(copy=True)
    cols = [C[:, j] for j in range(n)]
    for d, s in zip(dst, src):
        c = cols[s].copy()
        c.data = (c.data * np.exp(rng.normal(0, 0.05, c.data.size))).astype(np.float32)
        cols[d] = c
    return sp.hstack(cols, format="csr", dtype=np.float32)


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN (dicts of figures compared value by value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def main(argv=None) -> dict:
    from matching import cpu_info, git_rev, make_pair, versions, write_result

    from splitkit.analyses.scaling import redundancy_row
    from splitkit.analyses.universality import matched_figures, universality_figures

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="features per dictionary")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--twins", type=float, default=0.2, help="share of each dictionary's columns made twins")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "grid_point.json"), help="JSON path, or 'none'")
    a = ap.parse_args(argv)
    A, B, _ = make_pair(a.tokens, a.n, seed=0, lo=1e-4, hi=3e-2)
    A, B = with_twins(A, a.twins, 1), with_twins(B, a.twins, 2)
    rng = np.random.default_rng(3)
    w_dec = [rng.standard_normal((a.n, 64)).astype(np.float32) for _ in range(2)]
    u = 1e-5
    runs = []
    for rep in range(a.reps):
        t0 = time.perf_counter()
        fig = universality_figures(A, B, u, 0)
        old = redundancy_row(A, B, w_dec, fig["counts"], a.tokens, u)
        t1 = time.perf_counter()
        fig2, table, matrix = matched_figures(A, B, u, 0)
        new = redundancy_row(A, B, w_dec, fig2["counts"], a.tokens, u, table, matrix)
        t2 = time.perf_counter()
        same = (_same(old, new) and _same(fig["paper"], fig2["paper"])
                and np.array_equal(fig["corr"], fig2["corr"], equal_nan=True))  # NaN: a unit with no match
        runs.append({"old_s": round(t1 - t0, 2), "new_s": round(t2 - t1, 2), "ratio": round((t1 - t0) / (t2 - t1), 2),
                     "identical": bool(same)})
        print(f"rep {rep}: four passes {t1 - t0:.1f} s, one pass {t2 - t1:.1f} s ({(t1 - t0) / (t2 - t1):.2f}x), "
              f"identical {same}", flush=True)
    res = {"bench": "grid_point", "revision": git_rev(), "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
           "n": a.n, "tokens": a.tokens, "twins": a.twins, "nnz_a": int(A.nnz), "nnz_b": int(B.nnz),
           "dedup_n": new["dedup_n"], "runs": runs, "versions": versions(), "cpu": cpu_info()}
    write_result(res, a.out)
    return res


if __name__ == "__main__":
    main()
