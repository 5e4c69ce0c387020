"""Benchmark of ``metrics.evaluate_sae`` at the paper's large sizes: the dense decode (f @ W_dec over
the dense ``[tokens, n]`` codes) against the sparse one (CSR codes from the same fp32 encoder).

    python bench/evaluate_sae.py                       # 16k, 65k features; writes docs/bench/evaluate_sae.json
    python bench/evaluate_sae.py --sizes 8192 --tokens 8192 --out none      # quick, prints only

A random one-layer LM of the default shape (d_mlp 512, context 128, vocabulary 4,096) and random
ReLU dictionaries whose biases are set so that about ``--l0`` features fire per token. Both paths
run on the same inputs, alternately; L0 must come out equal and the other figures equal to float
rounding (checked, recorded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def random_sae(model, tokens: np.ndarray, n: int, l0: float, seed: int):
    """A ReLU dictionary with unit random directions, biases at the quantile that gives ~``l0``."""
    from splitkit.sae import SAEConfig, SparseAutoencoder

    g = torch.Generator().manual_seed(seed)
    d = model.cfg.d_mlp
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n))
    T = model.cfg.n_ctx
    with torch.no_grad():
        x = model.mlp_acts(torch.from_numpy(tokens[: 8 * T].astype(np.int64).reshape(8, T))).reshape(-1, d)
        W = torch.randn(n, d, generator=g)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.t())
        sae.b_dec.copy_(x.mean(0))
        pre = (x - sae.b_dec) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre[:, : min(n, 4096)].flatten()[:1 << 24], 1 - l0 / n).expand(n))
    return sae


def main(argv=None) -> dict:
    from matching import cpu_info, git_rev, versions, write_result

    from splitkit.config import ModelConfig
    from splitkit.metrics import evaluate_sae
    from splitkit.model import Transformer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16384,65536", help="comma-separated dictionary sizes")
    ap.add_argument("--tokens", type=int, default=32768, help="evaluation tokens (the default preset: 262,144)")
    ap.add_argument("--l0", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "evaluate_sae.json"), help="JSON path, or 'none'")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(), 4096).eval()
    tokens = np.random.default_rng(0).integers(0, 4096, a.tokens + 1)
    mean = torch.zeros(model.cfg.d_mlp)
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        sae = random_sae(model, tokens, n, a.l0, n)
        for rep in range(a.reps):
            t0 = time.perf_counter()
            dense = evaluate_sae(model, sae, tokens, a.tokens, mean, sparse_decode=False)
            t1 = time.perf_counter()
            sparse = evaluate_sae(model, sae, tokens, a.tokens, mean, sparse_decode=True)
            t2 = time.perf_counter()
            rel = max(abs(sparse[k] - dense[k]) / max(abs(dense[k]), 1e-12)
                      for k in ("mse", "fvu", "loss_sae", "loss_recovered_zero"))
            row = {"n": n, "rep": rep, "l0": round(dense["l0"], 2), "dense_s": round(t1 - t0, 2),
                   "sparse_s": round(t2 - t1, 2), "ratio": round((t1 - t0) / (t2 - t1), 2),
                   "l0_equal": dense["l0"] == sparse["l0"], "max_rel_diff": float(f"{rel:.2e}")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"bench": "evaluate_sae", "revision": git_rev(), "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
           "eval_tokens": a.tokens, "target_l0": a.l0, "torch_threads": torch.get_num_threads(), "runs": rows,
           "versions": versions(), "cpu": cpu_info()}
    write_result(res, a.out)
    return res


if __name__ == "__main__":
    main()
