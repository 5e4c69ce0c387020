"""Feature encoding (dense activations -> CSR features): the fused numba pass against torch ops.

    python bench/encode.py          # prints a table, writes docs/bench/encode.json

``features.encode_sparse`` on the CPU thresholds and compresses the encoder's GEMM output in one
numba pass (bf16 read as bit patterns); the fallback, and the only path before, is torch
``relu`` + ``nonzero`` + gather, each a sweep over the dense ``[block, n_features]`` output. Both
give the same CSR; the table is their wall time over the same inputs, best of three.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitkit import features as F
from splitkit.cache import atomic_write_json
from splitkit.sae import SAEConfig, SparseAutoencoder

N_TOKENS = 65_536


def timed(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_TOKENS, 512)).astype(np.float16)
    rows = []
    print(f"{'features':>9} {'dtype':>9} {'L0':>6} {'fused s':>8} {'torch s':>8} {'speed-up':>8} {'tok/s fused':>12}")
    for n in (1024, 4096):
        sae = SparseAutoencoder(SAEConfig(d_in=512, n_features=n))
        with torch.no_grad():
            sae.b_enc.fill_(-0.5)  # a few dozen active features per token, like a trained dictionary
        for dt in (torch.bfloat16, torch.float32):
            F.HAVE_NUMBA = True
            a = F.encode_sparse(sae, x, matmul_dtype=dt)  # also compiles / loads the kernel
            t_fused = timed(lambda: F.encode_sparse(sae, x, matmul_dtype=dt))
            F.HAVE_NUMBA = False
            b = F.encode_sparse(sae, x, matmul_dtype=dt)
            t_torch = timed(lambda: F.encode_sparse(sae, x, matmul_dtype=dt))
            F.HAVE_NUMBA = True
            same = bool((a.indptr == b.indptr).all() and (a.indices == b.indices).all() and (a.data == b.data).all())
            if not same:
                print(f"n={n} {dt}: the two paths disagree", file=sys.stderr)
                return 1
            l0 = a.nnz / N_TOKENS
            rows.append({"n_features": n, "matmul_dtype": str(dt).replace("torch.", ""), "l0": l0,
                         "fused_s": t_fused, "torch_s": t_torch, "speedup": t_torch / t_fused,
                         "fused_tokens_per_s": N_TOKENS / t_fused, "identical": same})
            print(f"{n:9d} {rows[-1]['matmul_dtype']:>9} {l0:6.1f} {t_fused:8.2f} {t_torch:8.2f} "
                  f"{t_torch / t_fused:8.2f} {N_TOKENS / t_fused:12,.0f}")
    out = {"n_tokens": N_TOKENS, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "platform": platform.platform(), "load_avg": os.getloadavg(),
           "command": " ".join(["python", *sys.argv]), "rows": rows}
    path = Path(__file__).resolve().parents[1] / "docs" / "bench" / "encode.json"
    atomic_write_json(path, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
