"""The activation store: MLP activations of a model over a token set, sharded on disk, kept sparse.

The LM's neurons are post-ReLU and mostly zero (about 3% of entries are nonzero on the default
preset), so each shard is stored as CSR in the store's dtype; the values are the harvested float16
(or float32) numbers bit for bit, and every read returns exactly what a dense store returned.
Layout of a store folder::

    meta.json                  format "csr", d, n_tokens, shard_tokens, dtype, n_ctx, n_shards, nnz
    shard_0000_indptr.npy ...  row pointers: [shard_rows + 1] int32 (int64 past 2^31 entries)
    shard_0000_cols.npy        column of each stored entry: [nnz] uint16 (int32 when d > 65536)
    shard_0000_vals.npy        its value: [nnz] in ``dtype``; rows' entries in ascending column order
    tokens.npy                 token ids: [n_tokens] int32, the token at which each activation was read
    positions.npy              position within its context window: [n_tokens] int16
    mean_acts.npy              mean activation [d] float32 (the mean-ablation baseline)

An entry is stored when its bit pattern is not all zero (so a ``-0.0`` survives the round trip).
Shards are ``.npy`` files opened as memory maps: a read costs the pages of the rows asked for, and
numba kernels scatter them into the dense float32 rows the callers get. :class:`StoreSource` serves
shuffled batches with the ``ActivationSource`` protocol the SAE trainer uses (``get_batch(step)`` is
a pure function of ``step``, so a resumed training run sees the same batches). :meth:`head_csr`
hands the first rows to the matcher as a ``scipy.sparse`` matrix, never densified.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the numpy path gives the same rows
    HAVE_NUMBA = False

from .cache import atomic_write_json
from .model import Transformer


def window_starts(n_available: int, n_ctx: int, n_tokens: int, seed: int | None) -> np.ndarray:
    """Starts of non-overlapping ``n_ctx`` windows covering ``n_tokens`` of a stream of ``n_available``.

    ``seed=None`` takes windows in order (analysis sets: reproducible, contiguous); otherwise a
    seeded random subset spread over the whole split (training sets).
    """
    n_win_all = n_available // n_ctx
    n_win = min(n_win_all, max(1, -(-n_tokens // n_ctx)))
    if seed is None:
        return np.arange(n_win, dtype=np.int64) * n_ctx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_win_all, size=n_win, replace=False)).astype(np.int64) * n_ctx


@torch.no_grad()
def iter_window_acts(model: Transformer, tokens: np.ndarray, starts: np.ndarray, batch_size: int = 128,
                     device: str = "cpu"):
    """Yield ``(win: [B, n_ctx] tokens, acts: [B * n_ctx, d_mlp] float32)`` for batches of windows ``tokens[s : s + n_ctx]``."""
    T = model.cfg.n_ctx
    dev = torch.device(device)
    model = model.to(dev).eval()
    for i in range(0, len(starts), batch_size):
        s = np.asarray(starts[i : i + batch_size])
        win = np.asarray(tokens[s[:, None] + np.arange(T)[None, :]])
        acts = model.mlp_acts(torch.from_numpy(win.astype(np.int64)).to(dev))  # [B, T, d]
        yield win, acts.reshape(-1, acts.shape[-1]).float().cpu().numpy()


FORMAT = "csr"

#: float16 bit pattern -> float32, as numpy converts it: reads widen through this table bit-exactly
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class StoreError(ValueError):
    """An activation store on disk is missing, truncated or inconsistent; the message names the folder."""


def _delete_hint(folder: Path) -> str:
    return f"delete {folder} to rebuild it"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def _bits(x: np.ndarray) -> np.ndarray:
    """``x`` viewed as unsigned integers of its width (the test "stored or not" is on bits, not values)."""
    return x.view({2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


class _ShardWriter:
    """Cuts a stream of dense row blocks into CSR shards of ``shard_tokens`` rows and writes them."""

    def __init__(self, out_dir: Path, shard_tokens: int, n_rows: int, d: int, dtype: np.dtype):
        self.out_dir, self.shard_tokens, self.n_rows, self.d, self.dtype = out_dir, shard_tokens, n_rows, d, dtype
        self.col_dtype = np.uint16 if d <= 1 << 16 else np.int32
        self.n_shards = 0
        self.nnz = 0
        self._reset()

    def _reset(self):
        self._counts, self._cols, self._vals, self._rows = [], [], [], 0

    def add(self, x: np.ndarray) -> None:
        """Append rows ``x: [m, d]`` (already in the store's dtype)."""
        x = np.ascontiguousarray(x)
        j = 0
        while j < x.shape[0]:
            take = min(self.shard_tokens - self._rows, x.shape[0] - j)
            blk = x[j : j + take]
            mask = _bits(blk) != 0  # [take, d]
            self._counts.append(mask.sum(1))
            self._cols.append(np.nonzero(mask)[1].astype(self.col_dtype))  # row-major: columns ascend per row
            self._vals.append(blk[mask])
            self._rows += take
            j += take
            if self._rows == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        counts = np.concatenate(self._counts)
        nnz = int(counts.sum())
        indptr = np.zeros(len(counts) + 1, dtype=np.int32 if nnz < 2**31 else np.int64)
        np.cumsum(counts, out=indptr[1:])
        stem = self.out_dir / f"shard_{self.n_shards:04d}"
        _save_npy(stem.with_name(stem.name + "_cols.npy"), np.concatenate(self._cols))
        _save_npy(stem.with_name(stem.name + "_vals.npy"), np.concatenate(self._vals))
        _save_npy(stem.with_name(stem.name + "_indptr.npy"), indptr)
        self.n_shards += 1
        self.nnz += nnz
        self._reset()


@torch.no_grad()
def harvest(
    model: Transformer,
    tokens: np.ndarray,
    starts: np.ndarray,
    out_dir: Path,
    shard_tokens: int = 1 << 20,
    dtype: str = "float16",
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Run ``model`` over windows ``tokens[s : s + n_ctx]`` and write the store into ``out_dir``."""
    from .progress import bar as tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = model.cfg.n_ctx
    d = model.cfg.d_mlp
    n = len(starts) * T
    shard_tokens = max(T, (shard_tokens // T) * T)  # whole windows per shard
    if dtype not in ("float16", "float32"):
        raise ValueError(f"activation store dtype must be 'float16' or 'float32', got {dtype!r}")
    np_dtype = np.dtype(dtype)
    tok_out = np.empty(n, dtype=np.int32)
    act_sum = np.zeros(d, dtype=np.float64)  # for the mean-ablation baseline
    pos_out = np.tile(np.arange(T, dtype=np.int16), len(starts))
    writer = _ShardWriter(out_dir, shard_tokens, n, d, np_dtype)
    row = 0
    bar = tqdm(total=n, desc="harvest", unit="tok", unit_scale=True, disable=not progress, leave=False)
    for win, acts in iter_window_acts(model, tokens, starts, batch_size, device):
        act_sum += acts.sum(0, dtype=np.float64)
        writer.add(acts.astype(np_dtype))
        tok_out[row : row + acts.shape[0]] = win.reshape(-1)
        row += acts.shape[0]
        bar.update(acts.shape[0])
    writer.flush()
    bar.close()
    np.save(out_dir / "tokens.npy", tok_out)
    np.save(out_dir / "positions.npy", pos_out)
    np.save(out_dir / "mean_acts.npy", (act_sum / max(1, n)).astype(np.float32))
    meta = {"format": FORMAT, "d": d, "n_tokens": int(n), "shard_tokens": int(shard_tokens), "dtype": dtype,
            "n_ctx": T, "n_shards": writer.n_shards, "nnz": writer.nnz}
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


# --- reading -------------------------------------------------------------------------------------

if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _nb_scatter(indptr, cols, vals, lut, rows, dst, out):
        """``out[dst[j]] = row rows[j]`` of a CSR shard (``out`` zeroed, float32 ``[m, d]``); float16
        values come as uint16 bits and widen through ``lut`` (``lut`` empty: values are float32).
        Returns False on a pointer or column out of range (an inconsistent shard) instead of
        writing past an array."""
        d = out.shape[1]
        nnz = cols.shape[0]
        widen = lut.shape[0] > 0
        for j in range(rows.shape[0]):
            r = rows[j]
            lo = indptr[r]
            hi = indptr[r + 1]
            if lo < 0 or hi < lo or hi > nnz:
                return False
            o = dst[j]
            for p in range(lo, hi):
                c = cols[p]
                if c >= d:
                    return False
                if widen:
                    out[o, c] = lut[np.int64(vals[p]) & 0xFFFF]
                else:
                    out[o, c] = np.float32(vals[p])
        return True


def _np_scatter(indptr, cols, vals, lut, rows, dst, out) -> bool:
    """The numpy form of :func:`_nb_scatter` (used without numba; same rows)."""
    lo = indptr[rows].astype(np.int64)
    hi = indptr[rows + 1].astype(np.int64)
    lens = hi - lo
    if (lens < 0).any() or (lo < 0).any() or (hi > len(cols)).any():
        return False
    pos = np.repeat(lo - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    c = np.asarray(cols[pos]).astype(np.int64)
    if c.size and c.max() >= out.shape[1]:
        return False
    v = np.asarray(vals[pos])
    out[np.repeat(dst, lens), c] = lut[v] if lut.size else v
    return True


class _Shard:
    """One CSR shard as three memory maps."""

    def __init__(self, folder: Path, i: int, n_rows: int, d: int, dtype: np.dtype):
        stem = f"shard_{i:04d}"
        arrs = {}
        for part in ("indptr", "cols", "vals"):
            path = folder / f"{stem}_{part}.npy"
            try:
                arrs[part] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise StoreError(f"{folder}: activation shard {path.name} is missing or truncated ({msg}); "
                                 f"{_delete_hint(folder)}") from None
        self.indptr, self.cols, self.vals = arrs["indptr"], arrs["cols"], arrs["vals"]
        self.n_rows = n_rows
        bad = None
        if self.indptr.ndim != 1 or len(self.indptr) != n_rows + 1:
            bad = f"{stem}_indptr.npy has {len(self.indptr) - 1} rows, meta says {n_rows}"
        elif self.cols.ndim != 1 or self.vals.ndim != 1 or len(self.cols) != len(self.vals):
            bad = f"{stem}_cols.npy and {stem}_vals.npy hold {len(self.cols)} and {len(self.vals)} entries"
        elif self.vals.dtype != dtype or self.cols.dtype.kind not in "iu" or self.indptr.dtype.kind not in "iu":
            bad = f"{stem} holds {self.vals.dtype} values / {self.cols.dtype} columns, meta says {dtype}"
        elif int(self.indptr[0]) != 0 or int(self.indptr[-1]) != len(self.cols):
            bad = f"{stem}_indptr.npy ends at {int(self.indptr[-1])}, the shard holds {len(self.cols)} entries"
        if bad:
            raise StoreError(f"{folder}: {bad}; {_delete_hint(folder)}")
        # float16 values scatter as bits through the widening table (numba has no float16 loads)
        self._vals_k = self.vals.view(np.uint16) if dtype == np.float16 else self.vals
        self._lut = _F16_TO_F32 if dtype == np.float16 else np.zeros(0, np.float32)

    def scatter(self, rows: np.ndarray, dst: np.ndarray, out: np.ndarray) -> bool:
        """Write shard rows ``rows`` into ``out[dst]`` (float32, zeroed); False if the shard is inconsistent."""
        fn = _nb_scatter if HAVE_NUMBA else _np_scatter
        return fn(self.indptr, self.cols, self._vals_k, self._lut, rows, dst, out)


class ActivationStore:
    """Read side of a store: random access to rows across memory-mapped CSR shards."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
            if not isinstance(self.meta, dict):
                raise ValueError("meta.json is not an object")
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.folder}: not an activation store ({e}); {_delete_hint(self.folder)}") from None
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{self.folder}: a dense activation store of an older splitkit (this one reads "
                             f"format {FORMAT!r}); {_delete_hint(self.folder)}")
        try:
            self.d = int(self.meta["d"])
            self.n_tokens = int(self.meta["n_tokens"])
            self.shard_tokens = int(self.meta["shard_tokens"])
            self.dtype = np.dtype(self.meta["dtype"])
            n_shards = int(self.meta["n_shards"])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{self.folder}: meta.json lacks a valid {e}; {_delete_hint(self.folder)}") from None
        if n_shards != -(-self.n_tokens // self.shard_tokens):
            raise StoreError(f"{self.folder}: {n_shards} shards of {self.shard_tokens} rows cannot hold "
                             f"{self.n_tokens} rows; {_delete_hint(self.folder)}")
        self.shards = [_Shard(self.folder, i, min(self.shard_tokens, self.n_tokens - i * self.shard_tokens),
                              self.d, self.dtype) for i in range(n_shards)]

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def nnz(self) -> int:
        """Stored entries over the whole store."""
        return sum(len(s.cols) for s in self.shards)

    @property
    def tokens(self) -> np.ndarray:
        return np.load(self.folder / "tokens.npy", mmap_mode="r")

    @property
    def mean_acts(self) -> np.ndarray:
        """Mean activation over the store's tokens ``[d]`` (the mean-ablation baseline)."""
        return np.load(self.folder / "mean_acts.npy")

    @property
    def positions(self) -> np.ndarray:
        return np.load(self.folder / "positions.npy", mmap_mode="r")

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Activations ``[len(idx), d]`` (float32) for global row indices ``idx`` (any order)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_tokens):
            raise IndexError(f"row index out of range for a store of {self.n_tokens} rows")
        out = np.zeros((len(idx), self.d), dtype=np.float32)
        shard_of = idx // self.shard_tokens
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to the page cache
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.shards) + 1))
        for sh in range(len(self.shards)):
            sel = order[bounds[sh] : bounds[sh + 1]]
            if sel.size and not self.shards[sh].scatter(idx[sel] - sh * self.shard_tokens, sel, out):
                raise StoreError(f"{self.folder}: shard {sh} has row pointers or columns out of range; "
                                 f"{_delete_hint(self.folder)}")
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Contiguous rows ``[stop - start, d]`` (float32)."""
        return self.rows(np.arange(start, min(stop, self.n_tokens)))

    def head_csr(self, n: int | None = None):
        """The first ``n`` rows (all by default) as ``scipy.sparse.csr_matrix [n, d]`` float32.

        The matcher's sparse path takes it as it is, and no dense ``[n, d]`` copy is made: 8 bytes
        per stored entry, ~0.6 GB for a default 4M-token store against 4 GB densified in float16.
        """
        import scipy.sparse as sp

        n = self.n_tokens if n is None else max(0, min(int(n), self.n_tokens))
        parts, left = [], n  # (shard, rows taken, entries taken)
        for sh in self.shards:
            if left <= 0:
                break
            m = min(left, sh.n_rows)
            ptr = np.asarray(sh.indptr[: m + 1])
            if int(ptr[-1]) > len(sh.cols) or (np.diff(ptr) < 0).any():
                raise StoreError(f"{self.folder}: a shard's row pointers are inconsistent; {_delete_hint(self.folder)}")
            parts.append((sh, m, int(ptr[-1])))
            left -= m
        nnz = sum(e for _, _, e in parts)
        idx_dtype = np.int32 if nnz < 2**31 and self.d < 2**31 else np.int64
        # filled in place, shard by shard: the only copy is the matrix itself (8 bytes per entry)
        indptr = np.zeros(n + 1, idx_dtype)
        indices = np.empty(nnz, idx_dtype)
        data = np.empty(nnz, np.float32)
        row = base = 0
        for sh, m, e in parts:
            indptr[row + 1 : row + m + 1] = np.asarray(sh.indptr[1 : m + 1], dtype=np.int64) + base
            indices[base : base + e] = sh.cols[:e]
            data[base : base + e] = sh.vals[:e]
            row += m
            base += e
        if nnz and int(indices.max()) >= self.d:
            raise StoreError(f"{self.folder}: a shard has columns >= d={self.d}; {_delete_hint(self.folder)}")
        return sp.csr_matrix((data, indices, indptr), shape=(n, self.d))

    def head(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` rows densified ``[n, d]`` in the store's dtype: for small stores only (the
        neuron matching takes :meth:`head_csr`)."""
        n = self.n_tokens if n is None else max(0, min(int(n), self.n_tokens))
        return self.slice(0, n).astype(self.dtype)

    def iter_chunks(self, chunk: int = 65536):
        for s in range(0, self.n_tokens, chunk):
            yield s, self.slice(s, s + chunk)


class StoreSource:
    """Shuffled batches from an :class:`ActivationStore` (the trainer's ``ActivationSource``).

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``; ``get_batch(step)`` needs only
    ``step``, so memory stays one permutation plus one batch whatever the store's size.
    """

    def __init__(self, store: ActivationStore, batch_size: int, seed: int = 0):
        if batch_size > len(store):
            raise ValueError(f"batch size {batch_size} exceeds the store's {len(store)} tokens")
        self.store = store
        self.d = store.d
        self.batch_size = batch_size
        self.n_tokens = len(store)
        self.seed = seed
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_tokens)
            self._perm_epoch = epoch
        return self._perm

    def get_batch(self, step: int) -> torch.Tensor:
        per_epoch = self.n_tokens // self.batch_size  # the ragged tail of each epoch is skipped
        epoch, k = divmod(step, per_epoch)
        idx = self._perm_for(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        return torch.from_numpy(self.store.rows(idx))
