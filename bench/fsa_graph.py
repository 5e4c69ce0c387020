"""Time and memory of the FSA graph building (splitkit.analyses.fsa) on synthetic activations.

    python bench/fsa_graph.py                          # 4,096 features x 1M tokens, L0 ~20
    python bench/fsa_graph.py --n 16384 --tokens 1M    # the larger dictionary
    python bench/fsa_graph.py --out docs/bench/fsa_graph.json

Synthetic data: column densities log-uniform in [1e-5, 1e-1], rescaled so the mean number of
active features per token is ``--l0``; firing positions uniform, values 0.1 + Exp(1), float32 CSR.
Tokens uniform over a 4,096 vocabulary, documents of 128 tokens (``next_ok`` False at their ends),
logit effects N(0, 1) float32 ``[n, vocab]``. A planted 5-state cycle (features 0-4 fire in turn on
the first 5% of the tokens, each promoting the next one's tokens) checks the timed run still finds it;
everything else is independent, so any other kept edge is a false positive (``n_kept - 5``).

Each stage is timed by wall clock and process CPU time; "peak" is the process's high-water RSS
after the stage, reset before it (``/proc/self/clear_refs``, Linux), inputs included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitkit.analyses import fsa  # noqa: E402
from splitkit.config import parse_token_count  # noqa: E402


def _rss_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def synthetic(n: int, n_tokens: int, l0: float, vocab: int = 4096, seed: int = 0):
    """``(acts csr [n_tokens, n], token_ids, next_ok, L [n, vocab])`` with a planted 5-cycle on units 0-4."""
    rng = np.random.default_rng(seed)
    dens = 10 ** rng.uniform(-5, -1, n)
    dens *= l0 / dens.sum()
    dens = np.minimum(dens, 0.5)
    counts = rng.binomial(n_tokens, dens)
    cols = np.repeat(np.arange(n, dtype=np.int32), counts)
    rows = rng.integers(0, n_tokens, counts.sum(), dtype=np.int64)
    vals = (0.1 + rng.exponential(1.0, counts.sum())).astype(np.float32)
    toks = rng.integers(0, vocab, n_tokens)
    # planted cycle: on the first 5% of tokens, units 0..4 fire in turn on tokens 0..4
    m = n_tokens // 20
    t = np.arange(m)
    k = t % 5
    toks[:m] = k
    keep = ~np.isin(cols, np.arange(5)) | (rows >= m)
    rows = np.r_[rows[keep], t]
    cols = np.r_[cols[keep], k.astype(np.int32)]
    vals = np.r_[vals[keep], np.ones(m, np.float32)]
    acts = sp.csr_matrix((vals, (rows, cols)), shape=(n_tokens, n))
    acts.sum_duplicates()
    ok = np.ones(n_tokens, bool)
    ok[127::128] = False
    ok[-1] = False
    L = rng.normal(0, 1, (n, vocab)).astype(np.float32)
    for i in range(5):
        L[i, (i + 1) % 5] += 8.0
    return acts, toks, ok, L


def _stage(name, fn, out):
    _reset_peak()
    rss0 = _rss_mb("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    out[name] = {"wall_s": round(time.perf_counter() - w0, 2), "cpu_s": round(time.process_time() - c0, 2),
                 "peak_rss_mb": round(_rss_mb("VmHWM"), 0), "rss_before_mb": round(rss0, 0)}
    print(f"  {name:<14} {out[name]['wall_s']:7.1f} s wall {out[name]['cpu_s']:7.1f} s cpu "
          f"peak {out[name]['peak_rss_mb']:7.0f} MB (before {rss0:.0f})", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="features (default: 4096)")
    ap.add_argument("--tokens", default="1M", help="analysis tokens (default: 1M)")
    ap.add_argument("--l0", type=float, default=20.0, help="mean active features per token (default: 20)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    n_tokens = parse_token_count(args.tokens, "--tokens")
    t0 = time.perf_counter()
    acts, toks, ok, L = synthetic(args.n, n_tokens, args.l0)
    print(f"synthetic: {args.n:,} features x {n_tokens:,} tokens, nnz {acts.nnz:,} (L0 {acts.nnz / n_tokens:.1f}), "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    cfg = fsa.FSAConfig()
    st: dict = {}
    cls = _stage("token_classes", lambda: fsa.token_classes(acts, toks, L.shape[1], cfg.top_m), st)
    # each stage's result is dropped before the next, so "before" counts the inputs only
    _stage("edges", lambda: fsa.edge_stats(acts, toks, ok, L, cfg, token_class=cls[:2])[1], st)
    _stage("null_edges", lambda: fsa.edge_stats(acts, toks, ok, L, cfg, shuffle_seed=0, token_class=cls[:2])[1], st)
    del cls
    fg = _stage("build_graph", lambda: fsa.build_graph(acts, toks, ok, L, cfg), st)
    auto = _stage("find_automata", lambda: fsa.find_automata(fg), st)
    found = any(sorted(s) == [0, 1, 2, 3, 4] for s in auto["states"])
    res = {"n_features": args.n, "n_tokens": n_tokens, "nnz": int(acts.nnz), "l0": acts.nnz / n_tokens,
           "n_pairs": fg.n_pairs, "n_candidates": int(len(fg.edges)), "n_kept": int(fg.edges["kept"].sum()),
           "null_kept": int(fg.null_edges["kept"].sum()), "n_automata": int(len(auto)),
           "planted_cycle_found": bool(found), "stages": st,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "omp_threads": os.environ.get("OMP_NUM_THREADS")}}
    print(f"candidates {res['n_candidates']:,}, kept {res['n_kept']}, null kept {res['null_kept']}, "
          f"automata {res['n_automata']}, planted cycle found: {found}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
