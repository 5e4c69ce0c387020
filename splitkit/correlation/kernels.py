"""numba kernels of the correlation engine: column statistics, CSC chunks, the co-firing scatter.

Every kernel works on the raw arrays of scipy CSR/CSC matrices and returns plain arrays; the
callers in :mod:`engine`, :mod:`columns` and :mod:`stream` hold the logic around them. Without
numba (``HAVE_NUMBA`` False) none of these exist and the callers take their scipy paths.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency of umap-learn, so normally present; scipy is the fallback.
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    HAVE_NUMBA = False

if HAVE_NUMBA:
    from llvmlite import binding as _llvm_binding
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    # LLVM >= 15 has opaque pointers: the prefetch intrinsic is mangled on "p0", before on "p0i8"
    _PREFETCH_NAME = "llvm.prefetch.p0" if _llvm_binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"

    @_intrinsic
    def _prefetch(typingctx, arr, idx):
        """Hint the CPU to fetch ``arr[idx]`` into cache (read, high locality); no effect on values."""
        sig = _types.void(arr, idx)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            i8p = _ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            i32 = _ir.IntType(32)
            fnty = _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32])
            fn = _cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
            builder.call(fn, [ptr, _ir.Constant(i32, 0), _ir.Constant(i32, 3), _ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(cache=True, nogil=True)
    def _nb_col_stats(indices, data, n_cols, n_tokens):
        s = np.zeros(n_cols)
        cnt = np.zeros(n_cols, np.int64)
        stored = np.zeros(n_cols, np.int64)
        finite = True
        for p in range(indices.shape[0]):
            v = np.float64(data[p])
            c = indices[p]
            stored[c] += 1
            if not np.isfinite(v):
                finite = False
            elif v != 0.0:
                s[c] += v
                cnt[c] += 1
        mean = s / n_tokens
        ss = np.zeros(n_cols)
        for p in range(indices.shape[0]):
            v = np.float64(data[p])
            if v != 0.0:
                c = indices[p]
                d = v - mean[c]
                ss[c] += d * d
        for c in range(n_cols):
            ss[c] += (n_tokens - cnt[c]) * mean[c] * mean[c]
        return mean, ss, cnt, stored, finite

    @numba.njit(cache=True, nogil=True)
    def _nb_csc_chunk(indptr, indices, data, c0, c1, nnz_chunk, tok_dtype_probe):
        """Columns [c0, c1) of a canonical CSR matrix as CSC arrays (tokens ascending)."""
        n_tokens = indptr.shape[0] - 1
        width = c1 - c0
        ptr = np.zeros(width + 1, np.int64)
        lo = np.empty(n_tokens, np.int64)
        hi = np.empty(n_tokens, np.int64)
        for t in range(n_tokens):
            a = indptr[t]
            b = indptr[t + 1]
            row = indices[a:b]
            l = a + np.searchsorted(row, c0)
            h = a + np.searchsorted(row, c1)
            lo[t] = l
            hi[t] = h
            for p in range(l, h):
                ptr[indices[p] - c0 + 1] += 1
        for c in range(width):
            ptr[c + 1] += ptr[c]
        tok = np.empty(nnz_chunk, tok_dtype_probe.dtype)
        val = np.empty(nnz_chunk, data.dtype)
        fill = ptr[:-1].copy()
        for t in range(n_tokens):
            for p in range(lo[t], hi[t]):
                c = indices[p] - c0
                q = fill[c]
                tok[q] = t
                val[q] = data[p]
                fill[c] = q + 1
        return ptr, tok, val

    @numba.njit(cache=True, parallel=True)
    def _nb_col_cost(a_ptr, a_tok, b_ptr, n_b):
        """Work estimate per chunk column: co-firing B entries plus the row scan of length n_b."""
        width = a_ptr.shape[0] - 1
        cost = np.empty(width, np.float64)
        for i in numba.prange(width):
            s = 0
            for p in range(a_ptr[i], a_ptr[i + 1]):
                t = a_tok[p]
                s += b_ptr[t + 1] - b_ptr[t]
            cost[i] = s + 0.5 * n_b
        return cost

    @numba.njit(cache=True, parallel=True)
    def _nb_corr_kernel(
        a_ptr, a_tok, a_val, order, block_ptr,
        b_ptr, b_idx, b_val, step_idx, step_val, pf,
        n_tokens, mu_a, isd_a, alive_a, mu_b, isd_b, neg_b,
        out_val, out_idx, rev_val, rev_idx, rev_min, a_offset, full,
    ):  # fmt: skip
        """Correlation rows of one A chunk against all of B; top-k per row, reverse top-k, opt. full.

        a_*: CSC of the chunk (``width`` columns); order/block_ptr: columns dealt to blocks (one
        per thread). out_val/out_idx ``[width, k]``; rev_val/rev_idx ``[n_blocks, n_b, k]`` with
        neg_b ``[n_b]`` is 0 for live B columns and -inf for dead ones.
        rev_min ``[n_blocks, n_b]`` the current k-th value (n_b = 0 to skip); full
        ``[width, n_b]`` (0 rows to skip). step_*: entries of b_idx / b_val per cache line;
        pf: prefetch distance in tokens.
        """
        n_b = mu_b.shape[0]
        k = out_val.shape[1]
        n_blocks = block_ptr.shape[0] - 1
        do_rev = rev_val.shape[1] > 0
        do_full = full.shape[0] > 0
        n = np.float64(n_tokens)
        nt = a_tok.shape[0]
        for blk in numba.prange(n_blocks):
            acc = np.zeros(n_b, np.float64)
            cbuf = np.empty(n_b, np.float64)
            tv = np.empty(k, np.float64)
            ti = np.empty(k, np.int64)
            for pos in range(block_ptr[blk], block_ptr[blk + 1]):
                i = order[pos]
                if not alive_a[i]:
                    for r in range(k):
                        out_val[i, r] = np.nan
                        out_idx[i, r] = -1
                    if do_full:
                        for j in range(n_b):
                            full[i, j] = np.nan
                    continue
                # acc[j] = sum_t a[t, i] * b[t, j]   (float32 products are exact in float64).
                # B rows are fetched in a random order: prefetch the rows pf tokens ahead (2x-4x).
                for p in range(a_ptr[i], a_ptr[i + 1]):
                    if p + 2 * pf < nt:
                        _prefetch(b_ptr, a_tok[p + 2 * pf])
                    if p + pf < nt:
                        tf = a_tok[p + pf]
                        e = b_ptr[tf + 1]
                        for qq in range(b_ptr[tf], e, step_idx):
                            _prefetch(b_idx, qq)
                        for qq in range(b_ptr[tf], e, step_val):
                            _prefetch(b_val, qq)
                    t = a_tok[p]
                    av = np.float64(a_val[p])
                    for q in range(b_ptr[t], b_ptr[t + 1]):
                        acc[b_idx[q]] += av * np.float64(b_val[q])
                nm = n * mu_a[i]
                sa = isd_a[i] / n
                gi = i + a_offset
                # correlations of the whole row (a simple loop numba vectorises); dead B: -inf
                for j in range(n_b):
                    c = (acc[j] - nm * mu_b[j]) * (sa * isd_b[j])
                    acc[j] = 0.0
                    c = min(max(c, -1.0), 1.0)
                    cbuf[j] = c + neg_b[j]
                if do_full:
                    for j in range(n_b):
                        c = cbuf[j]
                        full[i, j] = c if c > -np.inf else np.nan
                for r in range(k):
                    tv[r] = -np.inf
                    ti[r] = -1
                thr = -np.inf
                for j in range(n_b):
                    c = cbuf[j]
                    if c > thr:  # j ascending: ties keep the lower index
                        r = k - 1
                        while r > 0 and tv[r - 1] < c:
                            tv[r] = tv[r - 1]
                            ti[r] = ti[r - 1]
                            r -= 1
                        tv[r] = c
                        ti[r] = j
                        thr = tv[k - 1]
                    if do_rev and c >= rev_min[blk, j] and c > -np.inf:
                        if c > rev_val[blk, j, k - 1] or gi < rev_idx[blk, j, k - 1]:
                            r = k - 1
                            while r > 0 and (
                                rev_val[blk, j, r - 1] < c
                                or (rev_val[blk, j, r - 1] == c and rev_idx[blk, j, r - 1] > gi)
                            ):
                                rev_val[blk, j, r] = rev_val[blk, j, r - 1]
                                rev_idx[blk, j, r] = rev_idx[blk, j, r - 1]
                                r -= 1
                            rev_val[blk, j, r] = c
                            rev_idx[blk, j, r] = gi
                            rev_min[blk, j] = rev_val[blk, j, k - 1]
                for r in range(k):
                    if ti[r] < 0:
                        out_val[i, r] = np.nan
                    else:
                        out_val[i, r] = tv[r]
                    out_idx[i, r] = ti[r]



if HAVE_NUMBA:

    @numba.njit(cache=True, parallel=True)
    def _nb_cross_sums(a_ptr, a_tok, a_val, b_ptr, b_idx, b_val, b_rows, S):
        """``S[i, j] += sum_t a[t, i] * b[b_rows[t], j]`` from A's CSC and B's CSR.

        One A column per iteration: its row of S stays in cache while B's rows at its tokens are
        scattered into it (the access pattern of ``_nb_corr_kernel``).
        """
        width = a_ptr.shape[0] - 1
        for i in numba.prange(width):
            for p in range(a_ptr[i], a_ptr[i + 1]):
                t = b_rows[a_tok[p]]
                av = np.float64(a_val[p])
                for q in range(b_ptr[t], b_ptr[t + 1]):
                    S[i, b_idx[q]] += av * np.float64(b_val[q])
