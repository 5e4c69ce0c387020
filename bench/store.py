"""Activation store reads: CSR shards (this version) against the dense float16 shards of version 2.

    python bench/store.py                       # synthetic rows at the default preset's density
    python bench/store.py --dense acts_0000.npy # a real dense shard of a version-2 store (read only)

Both layouts hold the same rows: the dense one as a memory-mapped ``[rows, d]`` float16 ``.npy``
(read as version 2 did: sorted fancy indexing, then a float32 copy), the CSR one written here by the
store's own writer. Timed, with the page cache warm: a ``StoreSource`` batch (4,096 random rows), a
65,536-row slice (``iter_chunks``, as the feature encoder reads) and ``head_csr``; every read is
checked bitwise against the dense one. Writes ``docs/bench/store.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from splitkit.activations import ActivationStore, StoreSource, _ShardWriter
from splitkit.cache import atomic_write_json


def dense_rows(shard: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Version 2's ``ActivationStore.rows`` on one shard."""
    out = np.empty((len(idx), shard.shape[1]), dtype=np.float32)
    order = np.argsort(idx, kind="stable")
    out[order] = shard[idx[order]]
    return out


def timings(fn, reps: int) -> dict:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * float(np.median(ts)), "best_ms": 1e3 * float(np.min(ts)), "reps": reps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", help="a dense [rows, d] float16 .npy shard (version 2 store) to read from")
    ap.add_argument("--rows", type=int, default=1 << 20, help="rows of the synthetic shard")
    ap.add_argument("--density", type=float, default=0.034)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", default="docs/bench/store.json")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="store_bench_"))
    if args.dense:
        dense = np.load(args.dense, mmap_mode="r")
        source = str(args.dense)
    else:
        rng = np.random.default_rng(0)
        x = np.where(rng.random((args.rows, 512), dtype=np.float32) < args.density,
                     rng.exponential(0.5, (args.rows, 512)).astype(np.float32), 0).astype(np.float16)
        np.save(tmp / "dense.npy", x)
        del x
        dense = np.load(tmp / "dense.npy", mmap_mode="r")
        source = f"synthetic, density {args.density}"
    n, d = dense.shape
    _ = np.asarray(dense).sum(dtype=np.float64)  # page cache warm for the dense side too

    t = time.perf_counter()
    w = _ShardWriter(tmp, n, n, d, np.dtype(np.float16))
    for s in range(0, n, 16384):
        w.add(np.asarray(dense[s : s + 16384]))
    w.flush()
    write_s = time.perf_counter() - t
    atomic_write_json(tmp / "meta.json", {"format": "csr", "d": d, "n_tokens": n, "shard_tokens": n,
                                          "dtype": "float16", "n_ctx": 128, "n_shards": 1, "nnz": w.nnz})
    store = ActivationStore(tmp)
    csr_bytes = sum(f.stat().st_size for f in tmp.glob("shard_*"))
    dense_bytes = n * d * 2

    rng = np.random.default_rng(1)
    batches = [rng.choice(n, 4096, replace=False) for _ in range(8)]
    for b in batches:  # bitwise, and numba compiled before timing
        assert np.array_equal(store.rows(b).view(np.uint32), dense_rows(dense, b).view(np.uint32))
    assert np.array_equal(store.slice(1000, 1000 + 65536).view(np.uint32),
                          np.asarray(dense[1000 : 1000 + 65536], np.float32).view(np.uint32))
    src = StoreSource(store, 4096, seed=0)
    src.get_batch(0)
    res = {}
    k = iter(range(10**9))
    res["batch_4096_dense_v2"] = timings(lambda: dense_rows(dense, batches[next(k) % 8]), args.reps)
    res["batch_4096_csr"] = timings(lambda: store.rows(batches[next(k) % 8]), args.reps)
    res["store_source_get_batch_csr"] = timings(lambda: src.get_batch(next(k)), args.reps)
    res["slice_65536_dense_v2"] = timings(lambda: np.asarray(dense[:65536], np.float32), 20)
    res["slice_65536_csr"] = timings(lambda: store.slice(0, 65536), 20)
    res["head_csr_all"] = timings(lambda: store.head_csr(), 3)
    out = {
        "source": source, "rows": n, "d": d, "nnz": w.nnz, "density": w.nnz / (n * d),
        "bytes_dense": dense_bytes, "bytes_csr": csr_bytes, "bytes_per_row_csr": csr_bytes / n,
        "write_s": write_s, "timings": res,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg(), "python": sys.version.split()[0], "numpy": np.__version__},
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"{source}: {n:,} rows x {d}, density {out['density']:.4f}; dense {dense_bytes / 2**20:,.0f} MiB, "
          f"CSR {csr_bytes / 2**20:,.0f} MiB ({out['bytes_per_row_csr']:.1f} B/row); load {os.getloadavg()[0]:.1f}")
    for name, r in res.items():
        print(f"  {name:<30} median {r['median_ms']:8.2f} ms   best {r['best_ms']:8.2f} ms")
    if args.out != "none":
        atomic_write_json(Path(args.out), out)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
