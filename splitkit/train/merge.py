"""The merge step of the ``l1_log`` recipe: co-firing features become one (docs/copies.md, "The fix").

On the batches just before a step, features whose activations correlate above ``corr`` (both
firing on at least ``min_count`` of those tokens) are joined (union-find over each feature's top
activation twins). In each group the member firing most often, r, is kept and takes the others'
output: ``W_dec,r += c_j W_dec,j`` with ``c_j = sum_t f_tr f_tj / sum_t f_tr^2`` (the least-squares
ratio of j's activation to r's), so the reconstruction is unchanged where ``f_j = c_j f_r``; the
others are re-initialised as the paper's resampling does, at the median live decoder norm, but on
*distinct* inputs (:func:`distinct_picks`): the paper's rule draws inputs by the square of their
loss, which on a corpus with a few badly reconstructed tokens (``.pop``, ``_method =``) puts dozens
of re-initialised features on the same direction. Those became rare copies of each other, firing
on the same few hundred tokens of 1M, too rarely for the next merge to see (docs/copies.md, "Rare
copies"), so a drawn input is kept only if its direction is not already a live decoder direction or
another pick (cosine at most ``max_cos``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..correlation.twins import activation_twins
from . import kernels
from .member import Member
from .resample import sample_inputs
from .source import ActivationSource, mix_seed


# [M, n] above this many elements (1 GiB of fp32) takes the chunked sparse path of merge_step.
DENSE_MAX_ELEMS = 1 << 28
_CHUNK_ELEMS = 1 << 24  # rows per chunk of the sparse path: [rows, n] fp32 of at most 64 MiB


@torch.no_grad()
def _encode_csr(sae, X: torch.Tensor, mm_dtype: torch.dtype = torch.float32) -> sp.csr_matrix:
    """``sae.encode(X)`` as a float32 CSR ``[M, n]``, in row chunks (no dense ``[M, n]`` array).

    With ``mm_dtype`` bf16 on the CPU kernels, the encoder GEMM runs in bf16 and the active pairs
    are those the training step itself would take (:mod:`.kernels`: ``z > bf16(-b_enc)`` and
    ``z + b_enc > 0`` in fp32), at about a quarter of the fp32 path's time.
    """
    n = sae.n_features
    rows = max(1, _CHUNK_ELEMS // n)
    if mm_dtype == torch.bfloat16 and kernels.usable(X, sae.W_enc):
        xb = (X.float() - sae.b_dec).to(torch.bfloat16)  # [M, d]
        W = sae.W_enc.detach().to(torch.bfloat16)
        b32 = sae.b_enc.detach().float().contiguous()
        nb32 = (-sae.b_enc.detach()).to(torch.bfloat16).float().contiguous()
        buf = torch.empty(min(rows, X.shape[0]), n, dtype=torch.bfloat16)
        ptrs, cols_l, vals_l, nnz = [np.zeros(1, np.int64)], [], [], 0
        for s in range(0, X.shape[0], rows):
            r = min(rows, X.shape[0] - s)
            pre = torch.mm(xb[s:s + r], W, out=buf[:r])  # [r, n]
            counts = torch.zeros(r, dtype=torch.long)
            kernels.active_pairs_chunk(pre, b32, nb32, counts, 0)
            local = torch.zeros(r + 1, dtype=torch.long)
            torch.cumsum(counts, 0, out=local[1:])
            m = int(local[-1])
            cols, vals = torch.empty(m, dtype=torch.long), torch.empty(m, dtype=torch.float32)
            kernels.fill_pairs_chunk(pre, b32, nb32, local, 0, cols, vals, torch.empty(m, dtype=torch.long), 0)
            ptrs.append(nnz + local[1:].numpy())
            nnz += m
            cols_l.append(cols.numpy().astype(np.int32))
            vals_l.append(vals.numpy())
        return sp.csr_matrix((np.concatenate(vals_l), np.concatenate(cols_l), np.concatenate(ptrs)),
                             shape=(X.shape[0], n))
    parts = []
    for s in range(0, X.shape[0], rows):
        parts.append(sp.csr_matrix(sae.encode(X[s:s + rows]).float().cpu().numpy()))
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


@torch.no_grad()
def _decode_sq_err(f_csr: sp.csr_matrix, sae, X: torch.Tensor) -> torch.Tensor:
    """``((f @ W_dec + b_dec - X)^2).sum(1)`` as float64 ``[M]`` from sparse activations ``f_csr [M, n]``."""
    W = sae.W_dec.detach().float().cpu().numpy()
    b = sae.b_dec.detach().float().cpu().numpy()
    Xn = X.float().cpu().numpy()
    out = np.empty(X.shape[0], np.float64)
    step = 8192
    for s in range(0, X.shape[0], step):
        e = f_csr[s:s + step] @ W + b - Xn[s:s + step]  # [rows, d] float32
        out[s:s + step] = np.square(e, dtype=np.float64).sum(1)
    return torch.from_numpy(out).to(X.device)


def _groups(twin_index: np.ndarray, twin_value: np.ndarray, ok: np.ndarray, corr: float) -> tuple[list[list[int]], int]:
    """Connected components (size > 1) of the pairs (i, twin) above ``corr`` among features ``ok``."""
    parent = np.arange(ok.size)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    n_pairs = 0
    for i in np.flatnonzero(ok):
        for j, v in zip(twin_index[i], twin_value[i]):
            if j >= 0 and v > corr and ok[j]:
                n_pairs += 1
                ri, rj = find(int(i)), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for a in np.flatnonzero(ok):
        groups.setdefault(find(int(a)), []).append(int(a))
    return [g for g in groups.values() if len(g) > 1], n_pairs


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """float64 dot product by numpy's pairwise sum: the same bits at any thread count (torch.dot and
    a float64 torch.sum split the sum by threads, so a run's merges depended on the thread count)."""
    return float(np.add.reduce(a.astype(np.float64) * b.astype(np.float64)))


def distinct_picks(weights: torch.Tensor, V: torch.Tensor, W_live: torch.Tensor, n_pick: int,
                   gen: torch.Generator, max_cos: float = 0.7, block: int = 1024) -> torch.Tensor:
    """``n_pick`` row indices of ``V: [M, d]`` (unit directions of the candidate inputs), drawn by ``weights: [M]``.

    Orders all rows by one draw without replacement (by weight), then keeps them in that order
    when their cosine with every row of ``W_live: [n_live, d]`` (unit live decoder directions) and
    with every row kept so far is at most ``max_cos``, until ``n_pick`` are kept. When fewer pass,
    the rest are the rejected rows in the order drawn (the paper's rule). Similarities in float64
    and a fixed order: the picks do not depend on the thread count. Returns int64 ``[n_pick]``.
    """
    M = V.shape[0]
    if M < n_pick:  # fewer inputs than features to place: as the paper's rule does
        return torch.multinomial(weights, n_pick, replacement=True, generator=gen)
    order = torch.multinomial(weights, M, replacement=False, generator=gen)  # [M], in order drawn
    Wl = W_live.double()
    if Wl.shape[0] > 16384:  # keep each [block, n_live] float64 similarity block near 128 MiB
        block = max(64, min(block, (1 << 24) // Wl.shape[0]))
    kept: list[int] = []  # positions in ``order``
    K = torch.empty(0, V.shape[1], dtype=torch.float64)  # [n_kept, d] their directions
    for s in range(0, M, block):
        Vb = V.index_select(0, order[s : s + block]).double()  # [b, d]
        free = ((Vb @ Wl.t()).amax(1) <= max_cos) if Wl.shape[0] else torch.ones(Vb.shape[0], dtype=torch.bool)
        if K.shape[0]:
            free &= (Vb @ K.t()).amax(1) <= max_cos
        S = (Vb @ Vb.t()).numpy()  # [b, b]
        new: list[int] = []
        for c in np.flatnonzero(free.numpy()):
            if not new or S[c, new].max() <= max_cos:
                new.append(int(c))
                if len(kept) + len(new) == n_pick:
                    break
        kept += [s + c for c in new]
        K = torch.cat([K, Vb[new]])
        if len(kept) == n_pick:
            break
    if len(kept) < n_pick:
        taken = set(kept)
        kept += [c for c in range(M) if c not in taken][: n_pick - len(kept)]
    return order[torch.tensor(kept, dtype=torch.long)]


@torch.no_grad()
def merge_step(m: Member, source: ActivationSource, step: int, seed: int, *, corr: float = 0.9,
               min_count: int = 10, n_batches: int = 16, k: int = 4, max_cos: float = 0.7,
               mm_dtype: torch.dtype = torch.float32) -> dict:
    """Merge the co-firing features of ``m`` on the ``n_batches`` batches before ``step``, in place.

    Re-initialised features go to distinct inputs (:func:`distinct_picks`, cosine at most ``max_cos``).
    Resets Adam's moments of every kept and re-initialised feature and ``steps_since_fired`` of the
    re-initialised ones. Randomness from ``mix_seed(seed, step, n, sae seed, 78)`` (resume-safe).
    ``mm_dtype``: the encoder GEMM's dtype on the sparse path of large dictionaries (the trainer's;
    the dense path, ``M * n <= DENSE_MAX_ELEMS``, is fp32 as it always was).
    Returns ``{"step", "kind": "merge", "pairs", "groups", "n_resampled"}``.
    """
    sae = m.sae
    n = sae.n_features
    device = sae.W_dec.device
    X = sample_inputs(source, n_batches * source.batch_size, step, device)  # [M, d]
    # Up to DENSE_MAX_ELEMS the activations are one dense [M, n] array (the path every cached
    # dictionary was trained with); past it (n > 4,096 at the default 16 batches of 4,096: 34 GB
    # at 131,072 features) they are encoded in row chunks straight into a sparse matrix.
    dense = X.shape[0] * n <= DENSE_MAX_ELEMS
    if dense:
        f = sae.encode(X).float()  # [M, n]
        fn = f.cpu().numpy()
        f_csr = sp.csr_matrix(fn)
        counts = (f > 0).sum(0).cpu().numpy()  # [n]
    else:
        f_csr = _encode_csr(sae, X, mm_dtype)  # [M, n] float32, only the firing pairs stored
        counts = np.bincount(f_csr.indices, minlength=n)  # [n]
    ok = counts >= min_count
    record = {"step": step, "kind": "merge", "pairs": 0, "groups": 0, "n_resampled": 0}
    if ok.sum() < 2:
        return record
    tw = activation_twins(f_csr, k=min(k, n - 1))
    groups, n_pairs = _groups(tw.index, tw.value, ok, corr)
    record.update(pairs=n_pairs, groups=len(groups))
    if not groups:
        return record
    if dense:
        def column(j: int) -> np.ndarray:
            return fn[:, j]
    else:
        f_csc = f_csr.tocsc()

        def column(j: int) -> np.ndarray:  # [M] float32, the same values as the dense path's column
            out = np.zeros(f_csc.shape[0], np.float32)
            lo, hi = f_csc.indptr[j], f_csc.indptr[j + 1]
            out[f_csc.indices[lo:hi]] = f_csc.data[lo:hi]
            return out
    drop, kept = [], []
    for g in groups:
        r = max(g, key=lambda a: (int(counts[a]), -a))  # fires most; lowest index on ties
        fr = column(r)
        den = max(_dot(fr, fr), 1e-12)
        for j in g:
            if j != r:
                sae.W_dec[r] += float(_dot(fr, column(j)) / den) * sae.W_dec[j]
                drop.append(j)
        kept.append(r)
    dead = torch.tensor(sorted(drop), dtype=torch.long, device=device)
    if dense:
        err = (sae(X) - X).pow(2).sum(1).double()  # [M] squared reconstruction error after the merge
    else:  # the encoder is untouched so far: only the decoder changed, so decode the same activations
        err = _decode_sq_err(f_csr, sae, X)
    weights = err.pow(2)
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    gen = torch.Generator().manual_seed(  # on the CPU, where the picks are drawn
        mix_seed(seed, step, n, sae.cfg.seed, 78))
    live = torch.ones(n, dtype=torch.bool, device=device)
    live[dead] = False
    V = X - sae.b_dec
    V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [M, d]
    W_live = sae.W_dec[live & torch.from_numpy(counts > 0).to(device)]
    W_live = W_live / W_live.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [n_live, d]
    pick = distinct_picks(weights.cpu(), V.cpu(), W_live.cpu(), dead.numel(), gen, max_cos=max_cos)
    v = V.index_select(0, pick.to(device))  # [n_drop, d]
    dec_norm = sae.W_dec.norm(dim=1)[live].median()
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean()
    sae.W_dec[dead] = v * dec_norm
    sae.W_enc[:, dead] = (v * (0.2 * enc_norm)).t()
    sae.b_enc[dead] = 0
    m.reset_moments(torch.tensor(sorted(drop + kept), dtype=torch.long, device=device))
    m.steps_since_fired[dead] = 0
    record["n_resampled"] = int(dead.numel())
    return record
