"""GEMM throughput at the SAE's shapes, fp32 vs bf16: which precision the hot loops should use here.

    python bench/gemm.py            # prints a table, writes docs/bench/gemm.json

The trainer's and the feature encoder's ``matmul_dtype="auto"`` pick bf16 only where it is fast;
this is the measurement behind that choice on a given CPU.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

SHAPES = [(4096, 512, 4096), (4096, 4096, 512), (512, 4096, 4096), (4096, 512, 16384), (8192, 128, 4096)]


def gflops(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 10) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n / ((time.perf_counter() - t) / reps) / 1e9


def main() -> int:
    rows = []
    print(f"{'m x k x n':>20} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} {'ratio':>6}")
    for m, k, n in SHAPES:
        f32, b16 = gflops(m, k, n, torch.float32), gflops(m, k, n, torch.bfloat16)
        rows.append({"m": m, "k": k, "n": n, "fp32_gflops": f32, "bf16_gflops": b16, "bf16_over_fp32": b16 / f32})
        print(f"{f'{m} x {k} x {n}':>20} {f32:13.0f} {b16:13.0f} {b16 / f32:6.2f}")
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
           "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
           "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
           "command": " ".join(["python", *sys.argv]), "rows": rows}
    path = Path(__file__).resolve().parents[1] / "docs" / "bench" / "gemm.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
