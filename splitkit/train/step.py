"""One optimisation step of one dictionary: forward and hand-written backward (``sae_step``).

Forward and backward are written by hand under ``torch.no_grad()`` (tested against autograd).
The encoder GEMM ``(x - b_dec) @ W_enc`` is the one product every step must pay in full. After it,
when the share of active (token, feature) pairs is small (``sparse_density_max``), the step works
on the active pairs only: decode and both weight gradients are gathered sums
(``embedding_bag``), and the gradient of the pre-activations is needed only at active pairs
(``sampled_addmm``, an SDDMM); the gradient reaching b_dec through x_bar needs only
``W_enc @ sum_b dpre_b`` (a GEMV). So five of the six dense GEMMs of a plain step disappear, and the
penalty's gradient on the active pairs comes from the penalty object (a constant per feature for L1). Early in training, while half of
the features fire, the step falls back to dense GEMMs (the break-even is near 12% of pairs active).
On CPU with numba, the ReLU step (both paths) runs on the fused kernels of :mod:`.kernels`,
which give the same pairs and gradients as the torch ops (tests/test_step_kernels.py) in about
half the time (docs/performance.md). Work buffers are kept between steps (fresh multi-MiB allocations cost page faults on every step on
CPU). Large dictionaries are processed in row chunks of the batch so memory stays bounded.

What differs between recipes comes from the recipe object (:mod:`.recipes`): the sparsity
penalty (its value, its gradient on active pairs and on the decoder) and, for AuxK, which latents
count as dead. TopK versus ReLU is the dictionary's architecture (``sae.cfg.architecture``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..sae import SparseAutoencoder
from . import kernels
from .registry import get_recipe

# ``Recipe`` in annotations is :class:`.recipes.Recipe`, left unimported: the recipes import this module


class Buffers:
    """Work tensors kept between steps, keyed by name (re-made only when shape or dtype change)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.shape != shape:
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" and invariant-check notices
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _sddmm(crow: torch.Tensor, cols: torch.Tensor, base: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor,
           n: int, alpha: float = 1.0) -> torch.Tensor:
    """``base + alpha * (a @ b_t)[row, col]`` at the pairs of a CSR pattern (sampled dense-dense matmul)."""
    pattern = _csr(crow, cols, base, (a.shape[0], n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse.sampled_addmm(pattern, a, b_t, alpha=alpha).values()


def _stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Stable argsort of a 1-D integer tensor. On CPU via numpy: torch's CPU sort took ~15x longer
    here (170 ms vs 12 ms for 115k keys on 2 cores)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.argsort(keys, stable=True)


def _bag_sum(table: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row b of the result = sum_j weights[j] * table[idx[j]] over j in [offsets[b], offsets[b+1])."""
    return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)


# ---------------------------------------------------------------------------------------------
# One optimisation step of one dictionary
# ---------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """What one step measured (tensors on the training device, fp32 scalars and [n] counts)."""

    loss: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor
    aux: torch.Tensor
    fire_counts: torch.Tensor  # [n] int64: tokens each feature fired on in this batch
    sparse: bool


def prepare_step(sae: SparseAutoencoder, x: torch.Tensor, buffers: "Buffers | None"):
    """What every hand-written step starts with: gradient tensors of the parameters' shape, the
    work buffers, and ``x`` as float32 on the dictionary's device. Returns ``(device, buffers, x)``."""
    dev = sae.W_enc.device
    for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        if p.grad is None or p.grad.shape != p.shape:
            p.grad = torch.zeros_like(p)
    return dev, (buffers if buffers is not None else Buffers(dev)), x.to(device=dev, dtype=torch.float32)


@torch.no_grad()
def sae_step(sae: SparseAutoencoder, x: torch.Tensor, *, recipe: str | Recipe, l1_coeff: float,
             mm_dtype: torch.dtype = torch.float32, sparse_density_max: float = 0.1,
             chunk_elems: int = 1 << 26, dead_mask: torch.Tensor | None = None,
             aux_k: int | None = None, aux_coeff: float = 1.0 / 32.0,
             buffers: Buffers | None = None) -> StepStats:
    """Forward + hand-written backward of one batch ``x [B, d]``: fills ``p.grad`` of every parameter.

    The gradient is that of the recipe's loss (``recipe``: a name or a :class:`~.recipes.Recipe`)
    w.r.t. the parameters, before any decoder-norm projection (the trainer applies that).
    ``dead_mask [n]`` (bool) selects the latents AuxK may use (topk dictionaries). ``sparse_density_max`` of 0 forces the dense path and 1 the
    sparse one (tests compare both against autograd).
    """
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev, bufs, x = prepare_step(sae, x, buffers)
    B, d = x.shape
    n = sae.n_features
    topk = sae.cfg.architecture == "topk"
    chunk = max(1, min(B, chunk_elems // n))
    inv = 2.0 / (B * d)  # d(mean of squares)/d(residual) factor
    low = mm_dtype != torch.float32

    # The penalty's gradient on an active pre-activation: a constant per feature, or (log penalty)
    # a function of the activation too (``penalty.active_grad`` / ``add_dense_grad``).
    penalty = get_recipe(recipe).penalty(W_dec, l1_coeff, B)

    xbar = torch.sub(x, b_dec, out=bufs.get("xbar", (B, d)))  # [B, d]
    xbar_mm = xbar.to(mm_dtype) if low else xbar
    W_enc_mm = W_enc.to(mm_dtype) if low else W_enc
    b_enc_mm = b_enc.to(mm_dtype) if low else b_enc
    pre_buf = bufs.get("pre", (chunk, n), mm_dtype)  # [chunk, n]
    mask_buf = None if topk else bufs.get("mask", (chunk, n), torch.bool)

    # ---- encoder GEMM, chunk by chunk, keeping only the active pairs (sparse path) -----------
    rows_l: list[torch.Tensor] = []
    cols_l: list[torch.Tensor] = []
    vals_l: list[torch.Tensor] = []
    aux_rows_l: list[torch.Tensor] = []
    aux_cols_l: list[torch.Tensor] = []
    aux_vals_l: list[torch.Tensor] = []
    k = sae.cfg.k
    dead_idx = None
    if topk and dead_mask is not None and aux_coeff > 0:
        dead_idx = dead_mask.nonzero().squeeze(1)
        if dead_idx.numel() == 0:
            dead_idx = None
    kaux = 0 if dead_idx is None else min(aux_k or d // 2, dead_idx.numel())
    neg_b_enc = None if topk else (-b_enc).to(mm_dtype)  # [n]
    if not topk and kernels.usable(x):
        # CPU with numba: fused threshold / decode+SDDMM / weight-gradient kernels (kernels.py).
        return _sparse_relu_step_fused(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, neg_b_enc, pre_buf, chunk,
                                       penalty, inv, mm_dtype, sparse_density_max, bufs)
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        r = e - s
        if topk:
            pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm, out=pre_buf[:r])  # [r, n]
        else:
            # ReLU: z = x_bar @ W_enc without the bias (addmm would first copy b_enc into all of
            # [r, n]); a pair is active iff z > -b_enc, and the bias is added to active pairs only.
            pre = torch.mm(xbar_mm[s:e], W_enc_mm, out=pre_buf[:r])  # [r, n] z
        if topk:
            vals, idx = pre.topk(k, dim=1, sorted=False)  # [r, k]
            idx, order = idx.sort(dim=1)  # CSR wants rows' columns ascending (cuSPARSE does)
            vals = vals.gather(1, order).float().relu_()
            rows_l.append(torch.arange(s, e, device=dev).repeat_interleave(k))
            cols_l.append(idx.reshape(-1))
            vals_l.append(vals.reshape(-1))
            if kaux:
                pre_dead = pre.index_select(1, dead_idx)  # [r, n_dead]
                avals, aidx = pre_dead.topk(kaux, dim=1, sorted=False)
                aidx = dead_idx[aidx]
                aidx, order = aidx.sort(dim=1)
                aux_rows_l.append(torch.arange(s, e, device=dev).repeat_interleave(kaux))
                aux_cols_l.append(aidx.reshape(-1))
                aux_vals_l.append(avals.gather(1, order).float().relu_().reshape(-1))
            continue
        mask = torch.gt(pre, neg_b_enc, out=mask_buf[:r])
        if s == 0:
            # Decide the path from a sample of the first chunk's rows (deterministic, cheap).
            probe = mask[: min(r, 256)]
            density = torch.count_nonzero(probe).item() / probe.numel()
            if density > sparse_density_max:
                pre.add_(b_enc_mm)
                return _dense_relu_step(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, pre, chunk, penalty, inv,
                                        mm_dtype, bufs)
        flat = torch.nonzero(mask.view(-1)).squeeze(1)  # [m] row-major, so rows come out sorted
        vals = pre.view(-1).index_select(0, flat).float()
        r_idx = flat.div(n, rounding_mode="floor")
        c_idx = flat.sub_(r_idx, alpha=n)
        # fp32: z > -b implies fl(z + b) > 0 (the exact sum is positive and cannot round to 0).
        vals.add_(b_enc.index_select(0, c_idx))
        r_idx = r_idx.add_(s) if s else r_idx
        if low:  # bf16 rounding of z and -b_enc can disagree with the fp32 sum at the threshold
            keep = vals > 0
            r_idx, c_idx, vals = r_idx[keep], c_idx[keep], vals[keep]
        rows_l.append(r_idx)
        cols_l.append(c_idx)
        vals_l.append(vals)

    def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    rows, cols, vals = _cat(rows_l), _cat(cols_l), _cat(vals_l)  # [nnz] each
    nnz = rows.numel()
    if topk:
        crow = torch.arange(0, B * k + 1, k, device=dev)
    else:
        crow = torch.zeros(B + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(rows, minlength=B), 0, out=crow[1:])

    # ---- decode: x_hat = f @ W_dec + b_dec as a gathered sum over the active pairs ----------
    # Every pass over a [B, d] or [n, d] array costs milliseconds on CPU, so the residual is formed
    # in one op (x_hat - x = f @ W_dec - x_bar) and the factor 2/(B d) of dLoss/dx_hat is never
    # applied to [B, d]: it is folded into the SDDMM's alpha and the gathered sums' weights.
    n_tab = 2 * B if kaux else B
    table = bufs.get("table", (n_tab, d))  # rows [0, B): residual; [B, 2B): AuxK residual
    err = table[:B]
    if nnz:
        torch.sub(_bag_sum(W_dec, cols, crow, vals), xbar, out=err)  # [B, d] x_hat - x
    else:
        torch.neg(xbar, out=err)
    err_flat = err.view(-1)
    mse = torch.dot(err_flat, err_flat) / (B * d)
    ones_B = bufs.get("ones_B", (B,))
    ones_B.fill_(1.0)

    # ---- gradient at the active pre-activations only (SDDMM), plus L1's constant ------------
    base = penalty.active_grad(cols, vals)  # [nnz]
    dpre = _sddmm(crow, cols, base, err, W_dec.t(), n, inv) if nnz else vals.clone()  # [nnz]
    if topk:
        dpre.mul_(vals > 0)  # ReLU after topk: no gradient through kept-but-negative entries
    fired = vals > 0 if topk else None

    aux_loss = torch.zeros((), device=dev)
    tab_rows, tab_cols, tab_w = rows, cols, vals * inv
    enc_rows, enc_w = rows, dpre
    if kaux:
        a_rows, a_cols, a_vals = torch.cat(aux_rows_l), torch.cat(aux_cols_l), torch.cat(aux_vals_l)
        a_crow = torch.arange(0, B * kaux + 1, kaux, device=dev)
        # AuxK (Gao et al. 2024): reconstruct the (fixed) residual e = x - x_hat = -err from dead
        # latents, no bias; the squared error is divided by the residual's variance over the batch
        # (their normalised MSE), a constant of the step: aux = ||e_hat - e||^2 / sum_b ||e_b - mean(e)||^2.
        a_err = torch.add(_bag_sum(W_dec, a_cols, a_crow, a_vals), err, out=table[B:])  # e_hat - e
        a_flat = a_err.view(-1)
        err_mean = torch.mv(err.t(), ones_B).div_(B)  # [d]
        var_e = mse - torch.dot(err_mean, err_mean) / d  # mean over batch and dims of (e - mean e)^2
        inv_var = torch.where(var_e > 1e-20, 1.0 / var_e.clamp_min(1e-20), torch.zeros_like(var_e))  # e = 0: no AuxK
        aux_loss = torch.dot(a_flat, a_flat) / (B * d) * inv_var
        a_scale = inv_var * (aux_coeff * inv)  # 0-d tensor: no host sync on an accelerator
        a_dpre = _sddmm(a_crow, a_cols, torch.zeros_like(a_vals), a_err, W_dec.t(), n, 1.0).mul_(a_scale)
        a_dpre.mul_(a_vals > 0)
        # One gathered sum serves both losses: aux rows index the second half of the table.
        tab_rows = torch.cat([rows, a_rows + B])
        tab_cols = torch.cat([cols, a_cols])
        tab_w = torch.cat([tab_w, a_vals * a_scale])
        enc_rows = torch.cat([rows, a_rows])
        enc_w = torch.cat([dpre, a_dpre])

    # ---- weight gradients as gathered sums in feature-major (CSC) order ----------------------
    perm = _stable_argsort(tab_cols)
    ccol = torch.zeros(n + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(tab_cols, minlength=n), 0, out=ccol[1:])
    if tab_cols.numel():
        # The gathered sums return fresh tensors: hand them over as gradients without a copy.
        W_dec.grad = _bag_sum(table[:n_tab], tab_rows.index_select(0, perm), ccol, tab_w.index_select(0, perm))
        dW_enc_T = _bag_sum(xbar, enc_rows.index_select(0, perm), ccol, enc_w.index_select(0, perm))  # [n, d]
        # Contiguous on purpose: torch's fused CPU Adam ignores a gradient's strides.
        W_enc.grad.copy_(dW_enc_T.t())
    else:
        W_dec.grad.zero_()
        W_enc.grad.zero_()
    b_enc.grad.zero_().index_add_(0, tab_cols, enc_w)
    # b_dec: directly through x_hat (sum of g) and through x_bar = x - b_dec at the encoder input.
    g_sum = torch.mv(err.t(), ones_B).mul_(inv)  # [d]
    torch.addmv(g_sum, W_enc, b_enc.grad, alpha=-1.0, out=b_dec.grad)

    l1 = penalty.sparse_value(W_dec, cols, vals)  # also adds the penalty's own W_dec gradient, if any
    if topk:
        counts = torch.bincount(cols[fired], minlength=n)
    else:  # every kept pair fired; with no AuxK pairs the CSC counts are exactly these
        counts = ccol.diff() if tab_cols is cols else torch.bincount(cols, minlength=n)
    loss = mse + penalty.weight * l1 + aux_coeff * aux_loss
    assert all(p.grad.is_contiguous() for p in (W_enc, b_enc, W_dec, b_dec))  # see member.Member
    return StepStats(loss=loss, mse=mse, l1=l1, aux=aux_loss, fire_counts=counts, sparse=True)


def _sparse_relu_step_fused(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, neg_b_enc, pre_buf, chunk, penalty, inv,
                            mm_dtype, sparse_density_max, bufs) -> StepStats:
    """The ReLU step of :func:`sae_step` on the CPU kernels of :mod:`.kernels`: the same pairs, the same
    gradients (up to fp32 summation order), about a third of the passes over memory.

    A pair is active iff ``z > bf(-b_enc)`` (the comparison in the GEMM's dtype, as the torch path
    does) and ``z + b_enc > 0`` in fp32. The path is chosen from the first 256 rows, as on the torch
    path (there the count is of the first condition alone; they differ only where bf16 rounding
    puts a pair on the threshold).
    """
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    B, d = x.shape
    n = sae.n_features
    b32 = b_enc.detach().contiguous()
    nb32 = neg_b_enc.float().contiguous()  # the bf16-rounded -b_enc, exactly, in fp32
    row_counts = torch.zeros(B, dtype=torch.long)
    cols_l: list[torch.Tensor] = []
    vals_l: list[torch.Tensor] = []
    rows_l: list[torch.Tensor] = []
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        r = e - s
        pre = torch.mm(xbar_mm[s:e], W_enc_mm, out=pre_buf[:r])  # [r, n] z = x_bar @ W_enc
        if s == 0:
            probe = min(r, 256)
            kernels.active_pairs_chunk(pre[:probe], b32, nb32, row_counts, 0)
            density = row_counts[:probe].sum().item() / (probe * n)
            if density > sparse_density_max:
                return _dense_relu_step(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, pre, chunk, penalty, inv,
                                        mm_dtype, bufs, pre0_has_bias=False)
            if probe < r:
                kernels.active_pairs_chunk(pre[probe:], b32, nb32, row_counts, probe)
        else:
            kernels.active_pairs_chunk(pre, b32, nb32, row_counts, s)
        local = torch.zeros(r + 1, dtype=torch.long)
        torch.cumsum(row_counts[s:e], 0, out=local[1:])
        m = int(local[-1])
        cols_c, vals_c = torch.empty(m, dtype=torch.long), torch.empty(m, dtype=torch.float32)
        rows_c = torch.empty(m, dtype=torch.long)
        kernels.fill_pairs_chunk(pre, b32, nb32, local, 0, cols_c, vals_c, rows_c, s)
        cols_l.append(cols_c)
        vals_l.append(vals_c)
        rows_l.append(rows_c)
    cols = cols_l[0] if len(cols_l) == 1 else torch.cat(cols_l)  # [nnz] row-major, columns ascending
    vals = vals_l[0] if len(vals_l) == 1 else torch.cat(vals_l)
    rows = rows_l[0] if len(rows_l) == 1 else torch.cat(rows_l)
    crow = torch.zeros(B + 1, dtype=torch.long)
    torch.cumsum(row_counts, 0, out=crow[1:])

    # Decode and the gradient at the active pairs in one pass per row; the factor 2/(B d) of
    # dLoss/dx_hat is folded into alpha and the weights, as on the torch path.
    err = bufs.get("table", (B, d))  # [B, d] x_hat - x
    base = penalty.active_grad(cols, vals)  # [nnz]
    dpre, row_sq = kernels.decode_sddmm(crow, cols, vals, base, W_dec.detach(), xbar, inv, err)
    mse = row_sq.sum() / (B * d)

    # Weight gradients per feature, written in place (W_enc's straight into its [d, n] layout).
    ccol, perm = kernels.csc_order(cols, n)
    kernels.weight_grads(ccol, perm, rows, vals * inv, err, rows, dpre, xbar, W_dec.grad, W_enc.grad, b_enc.grad,
                         bufs.get("dW_enc_T", (n, d)))
    ones_B = bufs.get("ones_B", (B,))
    ones_B.fill_(1.0)
    g_sum = torch.mv(err.t(), ones_B).mul_(inv)  # [d]
    torch.addmv(g_sum, W_enc, b_enc.grad, alpha=-1.0, out=b_dec.grad)

    l1 = penalty.sparse_value(W_dec, cols, vals)  # also adds the penalty's own W_dec gradient, if any
    loss = mse + penalty.weight * l1
    return StepStats(loss=loss, mse=mse, l1=l1, aux=torch.zeros(()), fire_counts=ccol.diff(), sparse=True)


def _dense_relu_step(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, pre0, chunk, penalty, inv, mm_dtype,
                     bufs, pre0_has_bias: bool = True) -> StepStats:
    """Dense fallback (many features active): the six GEMMs of a plain step, chunked over rows.

    ``pre0``: the first chunk's pre-activations, already computed (without the bias if not
    ``pre0_has_bias``). Column sums are GEMVs with a
    ones vector and the ReLU mask is a 0/1 float array: reductions of bool arrays over the batch
    were ~20x slower than a GEMV on this CPU.
    """
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev = W_enc.device
    B, d = x.shape
    n = sae.n_features
    low = mm_dtype != torch.float32
    W_dec_mm = W_dec.to(mm_dtype) if low else W_dec
    grad_buf = bufs.get("G", (chunk, n), mm_dtype)  # [chunk, n] dLoss/dpre
    mask_buf = None  # [chunk, n] 1.0 where pre > 0 (the torch ops' path)
    ones = torch.ones(chunk, device=dev)
    counts = torch.zeros(n, device=dev)
    f_sum = torch.zeros(n, device=dev)
    sq_sum = torch.zeros((), device=dev)
    db_enc = b_enc.grad.zero_()
    g_sum = torch.zeros(d, device=dev)

    def colsum(a: torch.Tensor) -> torch.Tensor:  # [r, n] -> [n] in fp32
        return torch.mv(a.t(), ones[: a.shape[0]]) if not low else a.sum(0, dtype=torch.float32)

    # bf16 on CPU with numba: the ReLU and its statistics, then the penalty's constant and the ReLU
    # mask on dLoss/df with its column sums, each in one pass (kernels.py) instead of six.
    fused = low and kernels.usable(x)
    c_active = None
    own_grad = True  # the penalty adds its gradient to G itself
    if fused:
        own_grad = not penalty.constant_grad
        if not own_grad:  # a constant per feature
            c = penalty.grad_active
            c = c if isinstance(c, torch.Tensor) else torch.full((n,), float(c), device=dev)
            c_active = c.to(mm_dtype).float().contiguous()  # as torch's bf16 add rounds it
        else:
            c_active = torch.zeros(n, device=dev)
        b_enc_f = b_enc_mm.float().contiguous()  # [n] the bf16 bias as fp32 (exact)
        zero_n = torch.zeros(n, device=dev)

    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        r = e - s
        if s == 0:
            pre = pre0
        else:
            pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm, out=bufs.get("pre", (chunk, n), mm_dtype)[:r])
        if fused:
            # The first chunk may come without its bias: the kernel adds it as torch's bf16 add would.
            has_bias = pre0_has_bias or s > 0
            kernels.dense_relu_(pre, zero_n if has_bias else b_enc_f, counts, f_sum)
            f = pre  # [r, n] relu'd in place
        else:
            if s == 0 and not pre0_has_bias:
                pre.add_(b_enc_mm)
            mask_buf = mask_buf if mask_buf is not None else bufs.get("maskF", (chunk, n), mm_dtype)
            mask = torch.gt(pre, 0, out=mask_buf[:r])
            counts += colsum(mask)
            f = pre.relu_()  # [r, n]
            f_sum += colsum(f)
        if low:
            err = (f @ W_dec_mm).float().sub_(xbar[s:e])  # [r, d] x_hat - x
        else:
            err = torch.addmm(xbar[s:e], f, W_dec, beta=-1.0)  # [r, d] f @ W_dec - x_bar = x_hat - x
        sq_sum += torch.dot(err.view(-1), err.view(-1))
        g = err.mul_(inv)  # [r, d] dLoss/dx_hat
        g_sum += g.sum(0)
        g_mm = g.to(mm_dtype) if low else g
        G = torch.mm(g_mm, W_dec_mm.t(), out=grad_buf[:r])  # [r, n] dLoss/df
        if fused:
            if own_grad:
                penalty.add_dense_grad(G, f)  # a penalty whose gradient depends on f
            kernels.dense_grad_mask_(G, f, c_active, db_enc)
        else:
            penalty.add_dense_grad(G, f)
            G.mul_(mask)  # ReLU backward
            db_enc += colsum(G)
        if low:
            # bf16 GEMMs give bf16 gradients (as under autocast); they are accumulated in fp32.
            dW_dec, dW_enc = f.t() @ g_mm, xbar_mm[s:e].t() @ G  # [n, d], [d, n]
            if s == 0:
                W_dec.grad.copy_(dW_dec)
                W_enc.grad.copy_(dW_enc)
            else:
                W_dec.grad.add_(dW_dec)
                W_enc.grad.add_(dW_enc)
        else:  # in-place addmm keeps the gradients' contiguous layout (see member.Member)
            W_dec.grad.addmm_(f.t(), g, beta=0.0 if s == 0 else 1.0)
            W_enc.grad.addmm_(xbar[s:e].t(), G, beta=0.0 if s == 0 else 1.0)
    torch.addmv(g_sum, W_enc, db_enc, alpha=-1.0, out=b_dec.grad)
    mse = sq_sum / (B * d)
    l1 = penalty.dense_value(W_dec, f_sum)  # also adds the penalty's own W_dec gradient, if any
    loss = mse + penalty.weight * l1
    assert all(p.grad.is_contiguous() for p in (W_enc, b_enc, W_dec, b_dec))  # see member.Member
    return StepStats(loss=loss, mse=mse, l1=l1, aux=torch.zeros((), device=dev),
                     fire_counts=counts.round().long(), sparse=False)


