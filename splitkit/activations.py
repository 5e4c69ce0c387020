"""The activation store: MLP activations of a model over a token set, sharded on disk.

Layout of a store folder::

    meta.json             d, n_tokens, shard_tokens, dtype, n_ctx
    acts_0000.npy ...     acts: [shard_tokens, d_mlp] float16 (the last shard may be shorter)
    tokens.npy            token ids: [n_tokens] int32, the token at which each activation was read
    positions.npy         position within its context window: [n_tokens] int16

Shards are plain ``.npy`` files opened as memory maps, so reading costs no more memory than the
batch asked for whatever the store's size. :class:`StoreSource` serves shuffled batches from it with
the ``ActivationSource`` protocol the SAE trainer uses (``get_batch(step)`` is a pure function of
``step``, so a resumed training run sees the same batches).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

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
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = model.cfg.n_ctx
    d = model.cfg.d_mlp
    n = len(starts) * T
    shard_tokens = max(T, (shard_tokens // T) * T)  # whole windows per shard
    np_dtype = np.dtype(dtype)
    tok_out = np.empty(n, dtype=np.int32)
    act_sum = np.zeros(d, dtype=np.float64)  # for the mean-ablation baseline
    pos_out = np.tile(np.arange(T, dtype=np.int16), len(starts))
    shard, shard_fill, shard_idx, row = None, 0, 0, 0
    bar = tqdm(total=n, desc="harvest", unit="tok", unit_scale=True, disable=not progress, leave=False)

    def flush():
        nonlocal shard, shard_fill, shard_idx
        if shard is not None and shard_fill:
            path = out_dir / f"acts_{shard_idx:04d}.npy"
            np.save(path.with_suffix(".tmp.npy"), shard[:shard_fill])
            path.with_suffix(".tmp.npy").replace(path)
            shard_idx += 1
        shard, shard_fill = None, 0

    for win, acts in iter_window_acts(model, tokens, starts, batch_size, device):
        act_sum += acts.sum(0, dtype=np.float64)
        acts = acts.astype(np_dtype)
        tok_out[row : row + acts.shape[0]] = win.reshape(-1)
        j = 0
        while j < acts.shape[0]:
            if shard is None:
                shard = np.empty((min(shard_tokens, n - row - j), d), dtype=np_dtype)
            take = min(shard.shape[0] - shard_fill, acts.shape[0] - j)
            shard[shard_fill : shard_fill + take] = acts[j : j + take]
            shard_fill += take
            j += take
            if shard_fill == shard.shape[0]:
                flush()
        row += acts.shape[0]
        bar.update(acts.shape[0])
    flush()
    bar.close()
    np.save(out_dir / "tokens.npy", tok_out)
    np.save(out_dir / "positions.npy", pos_out)
    np.save(out_dir / "mean_acts.npy", (act_sum / max(1, n)).astype(np.float32))
    meta = {"d": d, "n_tokens": int(n), "shard_tokens": int(shard_tokens), "dtype": dtype, "n_ctx": T,
            "n_shards": shard_idx}
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


class ActivationStore:
    """Read side of a store: random access to rows across memory-mapped shards."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.folder}: not an activation store ({e}); delete it to rebuild") from None
        self.d = int(self.meta["d"])
        self.n_tokens = int(self.meta["n_tokens"])
        self.shard_tokens = int(self.meta["shard_tokens"])
        self.shards = [np.load(self.folder / f"acts_{i:04d}.npy", mmap_mode="r") for i in range(self.meta["n_shards"])]
        got = sum(s.shape[0] for s in self.shards)
        if got != self.n_tokens or any(s.shape[1] != self.d for s in self.shards):
            raise ValueError(f"{self.folder}: shards hold {got} rows, meta says {self.n_tokens}; delete it to rebuild")

    def __len__(self) -> int:
        return self.n_tokens

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
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.d), dtype=np.float32)
        shard_of = idx // self.shard_tokens
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to the page cache
        for sh in np.unique(shard_of):
            sel = order[shard_of[order] == sh]
            out[sel] = self.shards[sh][idx[sel] - sh * self.shard_tokens]
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Contiguous rows ``[stop - start, d]`` (float32)."""
        return self.rows(np.arange(start, min(stop, self.n_tokens)))

    def head(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` rows (all by default) ``[n, d]`` in the store's own dtype (float16: half
        the memory of :meth:`slice`), one copy of the shards' contents."""
        n = self.n_tokens if n is None else min(int(n), self.n_tokens)
        parts, left = [], n
        for sh in self.shards:
            if left <= 0:
                break
            parts.append(sh[:left])
            left -= len(parts[-1])
        return np.concatenate(parts) if parts else np.zeros((0, self.d), dtype=self.shards[0].dtype)

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
