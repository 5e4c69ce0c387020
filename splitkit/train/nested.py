"""Nested (Matryoshka) dictionaries: the step of the nested loss, and prefix dictionaries.

A dictionary of n features with prefix ends ``m_1 < ... < m_P = n`` (``block_ends``) is trained on

    L = sum_p mean_{b,j} (x_hat_p - x)^2 + lambda * penalty(f)         # prefixes weighted equally, summed
    x_hat_p = b_dec + f[:, :m_p] @ W_dec[:m_p]                       # [B, d], prefix p's reconstruction

Gradient (hand-written, checked against autograd in ``tests/test_matryoshka.py``). With the
residuals ``E_p = x_hat_p - x`` and their suffix sums ``G_q = sum_{p >= q} E_p`` (feature i of
block q, ``m_{q-1} <= i < m_q``, is in every prefix p >= q), and ``c = 2 / (B d)``::

    dL/df_bi     = c * G_q[b] . W_dec_i  + the penalty's constant          (times the ReLU mask)
    dL/dW_dec_i  = c * sum_b f_bi G_q[b] + the penalty's decoder term
    dL/db_dec    = c * sum_b G_1[b] - W_enc @ dL/db_enc                     (x_hat and x_bar = x - b_dec)

The residuals come cumulatively in one pass: the active pairs are sorted by (block, row), one
gathered sum gives every block's contribution ``C_q = f[:, block q] @ W_dec[block q]`` as rows
``q * B + b`` of a ``[P * B, d]`` table, and ``E = cumsum_q C - x_bar``. The gradient at the active
pairs is then one SDDMM against the table of ``G`` (row ``q * B + b`` for a pair of block q), and the
weight gradients are gathered sums in feature-major order, as in :func:`.step.sae_step`. While many
pairs are active (early in training) a dense path does the same with block GEMMs.

Precision: the encoder GEMM runs in ``mm_dtype`` (bf16 where it is fast); decoding, residuals and
gradients stay fp32.
"""

from __future__ import annotations

import torch

from ..sae import SAEConfig, SparseAutoencoder
from .registry import get_recipe
from .step import Buffers, StepStats, _bag_sum, _sddmm, _stable_argsort, prepare_step

# ``Recipe`` in annotations is :class:`.recipes.Recipe`, left unimported: the recipes import this module


# Every prefix's MSE has weight 1 (Bussmann et al. sum them): the last block's features then trade
# reconstruction against the penalty exactly as in l1_decnorm at the same lambda, and each coarser
# block gets one more unit of reconstruction weight. Weights 1/P (tried first, commit 1e55e9c) made
# the penalty P times heavier for the last block and left 66% of a 4096 dictionary dead in training.
PREFIX_WEIGHT = 1.0


def block_ends(n: int, prefixes: tuple[int, ...]) -> tuple[int, ...]:
    """Ends of the prefix blocks of a dictionary of ``n`` features: the prefixes below n, then n."""
    return tuple(sorted({int(p) for p in prefixes if 0 < p < n})) + (int(n),)


@torch.no_grad()
def prefix_dictionary(sae: SparseAutoencoder, m: int) -> SparseAutoencoder:
    """The dictionary of the first ``m`` features of ``sae``: W_enc[:, :m], b_enc[:m], W_dec[:m], b_dec (copies)."""
    if not 1 <= m <= sae.n_features:
        raise ValueError(f"prefix_dictionary: m must be in [1, {sae.n_features}], got {m}")
    c = sae.cfg
    out = SparseAutoencoder.__new__(SparseAutoencoder)
    torch.nn.Module.__init__(out)
    out.cfg = SAEConfig(d_in=c.d_in, n_features=int(m), architecture=c.architecture,
                        k=None if c.k is None else min(c.k, int(m)), seed=c.seed)
    out.W_enc = torch.nn.Parameter(sae.W_enc[:, :m].detach().clone().contiguous())
    out.b_enc = torch.nn.Parameter(sae.b_enc[:m].detach().clone())
    out.W_dec = torch.nn.Parameter(sae.W_dec[:m].detach().clone())
    out.b_dec = torch.nn.Parameter(sae.b_dec.detach().clone())
    return out


@torch.no_grad()
def nested_step(sae: SparseAutoencoder, x: torch.Tensor, *, prefixes: tuple[int, ...], recipe: str | Recipe,
                l1_coeff: float, mm_dtype: torch.dtype = torch.float32, sparse_density_max: float = 0.1,
                chunk_elems: int = 1 << 26, buffers: Buffers | None = None) -> StepStats:
    """Forward + hand-written backward of the nested loss on batch ``x [B, d]``; fills ``p.grad``.

    ``prefixes``: the prefix sizes (those below ``sae.n_features`` are used; the whole dictionary is
    always the last prefix, so ``()`` gives the recipe's plain loss). ``recipe`` supplies the
    penalty. ``StepStats.mse`` is the whole dictionary's MSE; ``loss`` the nested loss with the
    penalty. ``sparse_density_max`` 0 forces the dense path, 1 the sparse one.
    """
    if sae.cfg.architecture != "relu":
        raise ValueError(f"nested_step: needs a relu dictionary, got {sae.cfg.architecture!r}")
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev, bufs, x = prepare_step(sae, x, buffers)
    B, d = x.shape
    n = sae.n_features
    ends = block_ends(n, prefixes)
    P = len(ends)
    w = PREFIX_WEIGHT
    inv = 2.0 / (B * d)
    chunk = max(1, min(B, chunk_elems // n))
    low = mm_dtype != torch.float32
    penalty = get_recipe(recipe).penalty(W_dec, l1_coeff, B)
    c_feat = penalty.grad_active

    xbar = torch.sub(x, b_dec, out=bufs.get("xbar", (B, d)))  # [B, d]
    xbar_mm = xbar.to(mm_dtype) if low else xbar
    W_enc_mm = W_enc.to(mm_dtype) if low else W_enc
    b_enc_mm = b_enc.to(mm_dtype) if low else b_enc
    pre_buf = bufs.get("pre", (chunk, n), mm_dtype)
    mask_buf = bufs.get("mask", (chunk, n), torch.bool)

    # ---- encoder, chunk by chunk, keeping the active pairs ------------------------------------
    rows_l, cols_l, vals_l = [], [], []
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm, out=pre_buf[: e - s])  # [r, n]
        if s == 0:
            probe = pre[: min(e - s, 256)]  # decide the path from a sample of the first rows
            if torch.count_nonzero(probe > 0).item() / probe.numel() > sparse_density_max:
                return _dense_nested(sae, xbar, xbar_mm, W_enc_mm, b_enc_mm, ends, penalty, inv, w, chunk, bufs)
        flat = torch.nonzero(torch.gt(pre, 0, out=mask_buf[: e - s]).view(-1)).squeeze(1)  # row-major order
        vals_l.append(pre.view(-1).index_select(0, flat).float())
        r_idx = flat.div(n, rounding_mode="floor")
        cols_l.append(flat.sub_(r_idx, alpha=n))
        rows_l.append(r_idx.add_(s) if s else r_idx)

    def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    rows, cols, vals = _cat(rows_l), _cat(cols_l), _cat(vals_l)  # [nnz]
    nnz = rows.numel()

    # ---- order the pairs by (block, row): table row q * B + b ----------------------------------
    ends_t = torch.tensor(ends, device=dev)
    blk = torch.bucketize(cols, ends_t, right=True)  # [nnz] block of each pair
    trow = blk * B + rows
    order = _stable_argsort(trow)  # stable: columns stay ascending within a table row
    trow, cols, vals, rows = trow[order], cols[order], vals[order], rows[order]
    crow = torch.zeros(P * B + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(trow, minlength=P * B), 0, out=crow[1:])

    # ---- residuals of every prefix, cumulatively ----------------------------------------------
    if nnz:
        contrib = _bag_sum(W_dec, cols, crow, vals).view(P, B, d)  # [P, B, d] C_q
    else:
        contrib = torch.zeros(P, B, d, device=dev)
    # In place, block by block (each pass over [P, B, d] costs tens of ms on CPU): E, then G.
    E = contrib
    E[0].sub_(xbar)
    for q in range(1, P):
        E[q].add_(E[q - 1])  # [B, d] x_hat_q - x
    sq = torch.stack([torch.dot(E[q].view(-1), E[q].view(-1)) for q in range(P)])  # [P]
    G = E
    for q in range(P - 2, -1, -1):
        G[q].add_(G[q + 1])
    G.mul_(w)  # [P, B, d] G_q = w * sum_{p >= q} E_p
    G_flat = G.view(P * B, d)

    # ---- gradient at the active pre-activations (SDDMM against G), plus the penalty's constant -
    base = c_feat.index_select(0, cols) if isinstance(c_feat, torch.Tensor) else torch.full_like(vals, c_feat)
    dpre = _sddmm(crow, cols, base, G_flat, W_dec.t(), n, inv) if nnz else vals.clone()  # [nnz]

    # ---- weight gradients as gathered sums in feature-major order -----------------------------
    perm = _stable_argsort(cols)
    ccol = torch.zeros(n + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(cols, minlength=n), 0, out=ccol[1:])
    if nnz:
        W_dec.grad = _bag_sum(G_flat, trow.index_select(0, perm), ccol, (vals * inv).index_select(0, perm))
        W_enc.grad.copy_(_bag_sum(xbar, rows.index_select(0, perm), ccol, dpre.index_select(0, perm)).t())
    else:
        W_dec.grad.zero_()
        W_enc.grad.zero_()
    b_enc.grad.zero_().index_add_(0, cols, dpre)
    g_sum = G[0].sum(0).mul_(inv)  # [d]: every prefix decodes through b_dec
    torch.addmv(g_sum, W_enc, b_enc.grad, alpha=-1.0, out=b_dec.grad)

    l1 = penalty.sparse_value(W_dec, cols, vals)  # adds the penalty's own W_dec gradient
    mse = sq[-1] / (B * d)
    loss = w * sq.sum() / (B * d) + penalty.weight * l1
    return StepStats(loss=loss, mse=mse, l1=l1, aux=torch.zeros((), device=dev), fire_counts=ccol.diff(), sparse=True)


def _dense_nested(sae, xbar, xbar_mm, W_enc_mm, b_enc_mm, ends, penalty, inv, w, chunk, bufs) -> StepStats:
    """Dense path (many features active): block GEMMs over row chunks, same gradient as the sparse path."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev = W_enc.device
    B, d = xbar.shape
    n = sae.n_features
    P = len(ends)
    starts = (0,) + ends[:-1]
    c_feat = penalty.grad_active
    counts = torch.zeros(n, device=dev)
    f_sum = torch.zeros(n, device=dev)
    sq = torch.zeros(P, device=dev)
    g_sum = torch.zeros(d, device=dev)
    db_enc = b_enc.grad.zero_()
    W_dec.grad.zero_()
    W_enc.grad.zero_()
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm).float()  # [r, n]
        mask = (pre > 0).float()
        counts += mask.sum(0)
        f = pre.relu_()
        f_sum += f.sum(0)
        err = xbar[s:e].neg()  # [r, d]
        E = []
        for q, (a, b) in enumerate(zip(starts, ends)):
            err = torch.addmm(err, f[:, a:b], W_dec[a:b])  # prefix q's x_hat - x
            sq[q] += torch.dot(err.view(-1), err.view(-1))
            E.append(err)
        acc = torch.zeros_like(err)
        G = [None] * P
        for q in range(P - 1, -1, -1):
            acc = acc.add(E[q], alpha=w)
            G[q] = acc
        dF = torch.empty_like(f)  # [r, n] dLoss/dpre
        for q, (a, b) in enumerate(zip(starts, ends)):
            dF[:, a:b] = G[q] @ W_dec[a:b].t()
            W_dec.grad[a:b].addmm_(f[:, a:b].t(), G[q], alpha=inv)
        dF.mul_(inv)
        dF.add_(c_feat)
        dF.mul_(mask)
        W_enc.grad.addmm_(xbar[s:e].t(), dF)
        db_enc += dF.sum(0)
        g_sum += G[0].sum(0).mul_(inv)
    torch.addmv(g_sum, W_enc, db_enc, alpha=-1.0, out=b_dec.grad)
    l1 = penalty.dense_value(W_dec, f_sum)  # adds the penalty's own W_dec gradient
    mse = sq[-1] / (B * d)
    loss = w * sq.sum() / (B * d) + penalty.weight * l1
    return StepStats(loss=loss, mse=mse, l1=l1, aux=torch.zeros((), device=dev), fire_counts=counts.round().long(),
                     sparse=False)
