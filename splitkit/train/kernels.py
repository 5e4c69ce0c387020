"""Fused CPU kernels of the sparse training step (numba; :mod:`.step` falls back to torch ops without it).

The profile of the sparse step (docs/performance.md) showed that after the encoder GEMM most of the
time went to passes over ``[B, n]`` and ``[nnz, d]`` data that torch runs as separate ops: a
bf16 comparison against the bias, ``nonzero``, index arithmetic, then ``embedding_bag`` (decode),
``sampled_addmm`` (the SDDMM), a stable sort, two more ``embedding_bag`` calls and a transposed
copy of the encoder gradient. Each kernel here does one of those groups in one pass, rows (or
features) in parallel, each output written by one thread in a fixed order: the results do not
depend on the thread count.

- :func:`active_pairs`: the threshold pass over the GEMM output (bf16 as uint16 bit patterns).
- :func:`decode_sddmm`: per row, the residual ``f @ W_dec - x_bar`` and then, while the same
  decoder rows are in cache, the gradient at the row's active pairs.
- :func:`csc_order`: a counting sort of the pairs by feature (stable, O(nnz)).
- :func:`weight_grads`: per feature, both weight gradients and the encoder bias gradient, each
  accumulated in a row of an ``[n, d]`` array (the encoder's is then transposed into ``[d, n]``).
- :func:`dense_relu_`, :func:`dense_grad_mask_`: the dense (bf16) path's ReLU with its column
  statistics, and the penalty constant plus ReLU mask on dLoss/df with its column sums.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

if HAVE_NUMBA:
    import numba
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _f32(typingctx, u):
        """The float32 whose bit pattern is the uint32 ``u`` (a bitcast, so loops stay vectorisable)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float32))
        return types.float32(types.uint32), codegen

    @intrinsic
    def _u32(typingctx, f):
        """The bit pattern of the float32 ``f`` as a uint32."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.uint32))
        return types.uint32(types.float32), codegen

    @numba.njit(cache=True, parallel=True)
    def _row_count(bits, neg_b, b, counts, row0):
        n_rows, n = bits.shape
        for i in numba.prange(n_rows):
            row = np.empty(n, np.uint32)
            for j in range(n):
                row[j] = np.uint32(bits[i, j]) << 16
            z = row.view(np.float32)
            c = 0
            for j in range(n):
                if z[j] > neg_b[j] and z[j] + b[j] > 0:
                    c += 1
            counts[row0 + i] = c

    @numba.njit(cache=True, parallel=True)
    def _row_fill(bits, neg_b, b, ptr, row0, cols, vals, rows, row_base):
        n_rows, n = bits.shape
        for i in numba.prange(n_rows):
            row = np.empty(n, np.uint32)
            for j in range(n):
                row[j] = np.uint32(bits[i, j]) << 16
            z = row.view(np.float32)
            q = ptr[row0 + i]
            for j in range(n):
                v = z[j] + b[j]
                if z[j] > neg_b[j] and v > 0:
                    cols[q] = j
                    vals[q] = v
                    rows[q] = row_base + i
                    q += 1

    @numba.njit(cache=True, parallel=True)
    def _row_count_f32(z, neg_b, b, counts, row0):
        n_rows, n = z.shape
        for i in numba.prange(n_rows):
            c = 0
            for j in range(n):
                if z[i, j] > neg_b[j] and z[i, j] + b[j] > 0:
                    c += 1
            counts[row0 + i] = c

    @numba.njit(cache=True, parallel=True)
    def _row_fill_f32(z, neg_b, b, ptr, row0, cols, vals, rows, row_base):
        n_rows, n = z.shape
        for i in numba.prange(n_rows):
            q = ptr[row0 + i]
            for j in range(n):
                v = z[i, j] + b[j]
                if z[i, j] > neg_b[j] and v > 0:
                    cols[q] = j
                    vals[q] = v
                    rows[q] = row_base + i
                    q += 1

    @numba.njit(cache=True, parallel=True, fastmath=True)
    def _decode_sddmm(crow, cols, vals, base, W_dec, xbar, alpha, err, dpre, row_sq):
        B, d = xbar.shape
        for r in numba.prange(B):
            e = err[r]
            for t in range(d):
                e[t] = -xbar[r, t]
            for q in range(crow[r], crow[r + 1]):
                v = vals[q]
                w = W_dec[cols[q]]
                for t in range(d):
                    e[t] += v * w[t]
            s = np.float32(0.0)
            for t in range(d):
                s += e[t] * e[t]
            row_sq[r] = s
            for q in range(crow[r], crow[r + 1]):
                w = W_dec[cols[q]]
                acc = np.float32(0.0)
                for t in range(d):
                    acc += e[t] * w[t]
                dpre[q] = base[q] + alpha * acc

    @numba.njit(cache=True)
    def _csc_order(cols, n, ccol, perm):
        for q in range(cols.shape[0]):
            ccol[cols[q] + 1] += 1
        for c in range(n):
            ccol[c + 1] += ccol[c]
        pos = ccol[:-1].copy()
        for q in range(cols.shape[0]):
            c = cols[q]
            perm[pos[c]] = q
            pos[c] += 1

    @numba.njit(cache=True, parallel=True, fastmath=True)
    def _weight_grads(ccol, tab_rows, tab_w, table, enc_rows, enc_w, xbar, gW_dec, gW_enc_T, gb_enc):
        # Pairs come in feature-major order; each accumulator is a row of its [n, d] output (a
        # column-strided [d, n] target was twice as slow), and one loop per output vectorises.
        n = ccol.shape[0] - 1
        d = xbar.shape[1]
        for c in numba.prange(n):
            a = gW_dec[c]
            a[:] = 0
            e = gW_enc_T[c]
            e[:] = 0
            sb = np.float32(0.0)
            for p in range(ccol[c], ccol[c + 1]):
                t1 = table[tab_rows[p]]
                w1 = tab_w[p]
                for t in range(d):
                    a[t] += w1 * t1[t]
                t2 = xbar[enc_rows[p]]
                w2 = enc_w[p]
                sb += w2
                for t in range(d):
                    e[t] += w2 * t2[t]
            gb_enc[c] = sb

    @numba.njit(cache=True, parallel=True)
    def _dense_relu(bits, bias, counts, f_sum, block):
        # Column blocks in parallel, rows in order within a block: each column's sums are taken
        # over rows 0, 1, ... in turn, whatever the thread count (as torch's column sums are).
        n_rows, n = bits.shape
        n_blocks = (n + block - 1) // block
        for k in numba.prange(n_blocks):
            c0 = k * block
            w = min(n, c0 + block) - c0
            cnt = np.zeros(w, np.float32)
            fs = np.zeros(w, np.float32)
            bb = bias[c0:c0 + w]
            for i in range(n_rows):
                row = bits[i, c0:c0 + w]
                for j in range(w):
                    v = _u32(_f32(np.uint32(row[j]) << 16) + bb[j])  # fp32, as torch's bf16 add computes it
                    v = (v + np.uint32(0x7FFF) + ((v >> 16) & np.uint32(1))) >> 16  # round to nearest even
                    v = np.uint32(0) if v >= 0x8000 else v  # ReLU: sign bit (negative or -0) -> 0
                    row[j] = np.uint16(v)
                    fs[j] += _f32(v << 16)
                    cnt[j] += np.float32(1.0) if v != 0 else np.float32(0.0)
            counts[c0:c0 + w] += cnt
            f_sum[c0:c0 + w] += fs

    @numba.njit(cache=True, parallel=True)
    def _dense_grad_mask(g_bits, f_bits, c, db, block):
        n_rows, n = g_bits.shape
        n_blocks = (n + block - 1) // block
        for k in numba.prange(n_blocks):
            c0 = k * block
            w = min(n, c0 + block) - c0
            acc = np.zeros(w, np.float32)
            cc = c[c0:c0 + w]
            for i in range(n_rows):
                g = g_bits[i, c0:c0 + w]
                fr = f_bits[i, c0:c0 + w]
                for j in range(w):
                    u = _u32(_f32(np.uint32(g[j]) << 16) + cc[j])  # fp32, as torch's bf16 add computes it
                    u = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16  # round to nearest even
                    u = u if fr[j] != 0 else np.uint32(0)  # ReLU mask: f is exactly 0 off it
                    g[j] = np.uint16(u)
                    acc[j] += _f32(u << 16)
            db[c0:c0 + w] += acc


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels apply: numba present and every tensor on the CPU."""
    return HAVE_NUMBA and all(t.device.type == "cpu" for t in tensors)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def active_pairs_chunk(pre: torch.Tensor, b_enc: torch.Tensor, neg_b: torch.Tensor, counts: torch.Tensor,
                       row0: int) -> None:
    """Count pass of :func:`active_pairs` for one chunk ``pre [r, n]`` (rows ``row0..``) into ``counts [B]``."""
    if pre.dtype == torch.bfloat16:
        _row_count(_np(pre.view(torch.int16)).view(np.uint16), _np(neg_b), _np(b_enc), _np(counts), row0)
    else:
        _row_count_f32(_np(pre), _np(neg_b), _np(b_enc), _np(counts), row0)


def fill_pairs_chunk(pre: torch.Tensor, b_enc: torch.Tensor, neg_b: torch.Tensor, crow: torch.Tensor, row0: int,
                     cols: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, row_base: int = 0) -> None:
    """Fill pass: columns, values and row numbers (``row_base + i``) of the active pairs of chunk
    ``pre [r, n]``, row i's at ``crow[row0 + i]``."""
    if pre.dtype == torch.bfloat16:
        _row_fill(_np(pre.view(torch.int16)).view(np.uint16), _np(neg_b), _np(b_enc), _np(crow), row0,
                  _np(cols), _np(vals), _np(rows), row_base)
    else:
        _row_fill_f32(_np(pre), _np(neg_b), _np(b_enc), _np(crow), row0, _np(cols), _np(vals), _np(rows), row_base)


def decode_sddmm(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, base: torch.Tensor,
                 W_dec: torch.Tensor, xbar: torch.Tensor, alpha: float, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``err [B, d] <- f @ W_dec - x_bar`` (f given as CSR ``crow [B+1]``, ``cols``, ``vals [nnz]``);
    returns ``dpre [nnz] = base + alpha * (err @ W_dec^T)[row, col]`` and each row's ``sum err^2 [B]``."""
    dpre = torch.empty_like(vals)
    row_sq = torch.empty(xbar.shape[0], dtype=torch.float32)
    _decode_sddmm(_np(crow), _np(cols), _np(vals), _np(base), _np(W_dec), _np(xbar), np.float32(alpha), _np(err),
                  _np(dpre), _np(row_sq))
    return dpre, row_sq


def csc_order(cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort of pairs by feature: ``ccol [n+1]`` (column pointers) and ``perm [nnz]``."""
    ccol = torch.zeros(n + 1, dtype=torch.long)
    perm = torch.empty(cols.shape[0], dtype=torch.long)
    _csc_order(_np(cols), n, _np(ccol), _np(perm))
    return ccol, perm


def weight_grads(ccol: torch.Tensor, perm: torch.Tensor, tab_rows: torch.Tensor, tab_w: torch.Tensor,
                 table: torch.Tensor, enc_rows: torch.Tensor, enc_w: torch.Tensor, xbar: torch.Tensor,
                 gW_dec: torch.Tensor, gW_enc: torch.Tensor, gb_enc: torch.Tensor, work: torch.Tensor) -> None:
    """Per feature c (pairs ``perm[ccol[c]:ccol[c+1]]``): ``gW_dec[c] = sum tab_w * table[tab_rows]``,
    ``gW_enc[:, c] = sum enc_w * xbar[enc_rows]`` and ``gb_enc[c] = sum enc_w``; features without
    pairs get zeros. ``work [n, d]``: scratch for the encoder gradient before its transpose into
    ``gW_enc [d, n]``."""
    _weight_grads(_np(ccol), _np(tab_rows.index_select(0, perm)), _np(tab_w.index_select(0, perm)), _np(table),
                  _np(enc_rows.index_select(0, perm)), _np(enc_w.index_select(0, perm)), _np(xbar), _np(gW_dec),
                  _np(work), _np(gb_enc))
    gW_enc.copy_(work.t())


def _bits(t: torch.Tensor) -> np.ndarray:
    return _np(t.view(torch.int16)).view(np.uint16)


def dense_relu_(pre: torch.Tensor, bias: torch.Tensor, counts: torch.Tensor, f_sum: torch.Tensor,
                block: int = 512) -> None:
    """Dense path, bf16: ``pre [r, n]`` -> ``relu(bf16(pre + bias))`` in place (``bias [n]`` fp32
    holding bf16 values); ``counts [n] += (f > 0)`` and ``f_sum [n] += f`` summed over rows (fp32),
    in one pass, column blocks in parallel."""
    _dense_relu(_bits(pre), _np(bias), _np(counts), _np(f_sum), block)


def dense_grad_mask_(G: torch.Tensor, f: torch.Tensor, c: torch.Tensor, db: torch.Tensor, block: int = 512) -> None:
    """Dense path, bf16: ``G [r, n] <- bf16(G + c) * (f > 0)`` in place (``c [n]`` fp32: the penalty's
    gradient on an active pre-activation) and ``db [n] +=`` its column sums (fp32)."""
    _dense_grad_mask(_bits(G), _bits(f), _np(c), _np(db), block)
