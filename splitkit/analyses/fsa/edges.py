"""Edge statistics of the automaton graph: X at token t raises the tokens on which Y fires at t+1.

Pure functions on arrays; the study wires them to the cached pipeline and writes the files.

Inputs (the same for features and for neurons):

- ``acts: [n_tokens, n]`` non-negative activations over the analysis tokens in document order,
  ``scipy.sparse.csr_matrix`` (features) or a dense array (neurons, float16 is fine);
- ``token_ids: [n_tokens]`` the token at each position;
- ``next_ok: bool [n_tokens]`` False where position t+1 is in another document or past the end;
- ``logit_eff: [n, vocab]`` the direct effect of each unit on the next-token logits
  (:func:`splitkit.effects.logit_effects`; the identity as ``W_dec`` for neurons).

A unit is *active* at t when its activation exceeds ``active_threshold`` (0 by default). The pairs
are the positions (t, t+1) with ``next_ok[t]``; ``N`` is their number.

Edge weights of X -> Y (candidate pairs: ``count >= min_count`` and ``pmi > candidate_pmi``):

- ``count``: pairs where X is active at t and Y at t+1; ``n_src`` / ``n_dst``: pairs where X is
  active at t / Y at t+1. ``lift = count * N / (n_src * n_dst)``, ``pmi = ln(lift)``,
  ``cond_prob = count / n_src``. ``log10_p``: log10 of the Poisson upper tail
  ``P(C >= count)`` for ``C ~ Poisson(n_src * n_dst / N)``, the count expected if X and Y were
  independent: a pair of rare units seen together five times is significant, two frequent ones
  seen five times instead of two are not, which ``min_count`` alone cannot tell apart.
- ``mech`` (mechanistic): Y's *token class* is the ``top_m`` token ids carrying the most
  activation mass of Y (sum of Y's activations over the positions holding that token), with
  weights ``w_Y(v) = mass_Y(v) / sum of the top_m masses``. X's logit effects are standardised over
  the vocabulary, ``z_X(v) = (L[X, v] - mean_v L[X]) / std_v L[X]`` (a constant shift of all logits
  changes no probability, and the scale makes features comparable), and
  ``mech = sum_v w_Y(v) z_X(v)``: how many standard deviations above its average effect X pushes
  the tokens that make Y fire.
- ``attribution``: ``sum over pairs with X active at t and Y active at t+1 of
  acts[t, X] * Lc[X, token[t+1]]`` with ``Lc`` the logit effects centred over the vocabulary (the
  paper's per-position attribution, restricted to where Y fires next); ``attribution_mean`` is that
  sum divided by ``count``.

An edge is *kept* when ``count >= min_count``, ``pmi >= min_pmi``, ``log10_p <= log10(alpha / n^2)``
(Bonferroni over all ordered pairs), ``mech >= min_mech`` and ``attribution_mean > min_attribution``:
it must be frequent beyond chance and carried by the direct path; with ``min_cond_prob`` also
``cond_prob >= min_cond_prob``, and with ``max_out`` each source keeps only its ``max_out`` kept edges
of highest ``cond_prob`` (ties: ``pmi``), the same rule for the null. The null (:func:`build_graph` with
``null=True``) recomputes every statistic after a seeded shuffle of the token order (activations and
token ids permuted together, so per-unit densities and token classes are unchanged and only the
order is lost); its quantiles and its number of kept edges are what the default thresholds are judged by.

Nothing of size ``n x n`` is formed for sparse inputs. The default engine (numba) walks each source
unit's active positions once, counting the units active at the paired next position in a dense
length-n accumulator and emitting only the candidates; the scipy engine (no numba) takes sparse
products of the shifted activation patterns, chunked over source units so each chunk's output stays
bounded. Dense inputs (neurons, ``n <= 4096``) accumulate ``[n, n]`` counts from token blocks.

Thresholds (defaults in :class:`splitkit.config.FSAConfig`, presets ``FSA_PRESETS``): on the planted tests and the synthetic benchmark the
shuffled null keeps no edge at the defaults, and its 99.9% pmi quantile lies below ``min_pmi``;
``null_summary`` reports those figures for any run so the defaults can be checked on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import poisson

from ...config import FSAConfig

try:  # numba ships with umap-learn; the scipy engine gives the same numbers without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

DENSE_MAX_UNITS = 4096
NULL_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
EDGE_COLUMNS = ("src", "dst", "count", "n_src", "n_dst", "lift", "pmi", "cond_prob", "log10_p", "mech", "attribution",
                "attribution_mean", "kept")


# --- inputs ---------------------------------------------------------------------------------------

def _check_inputs(acts, token_ids, next_ok, logit_eff):
    if not (sp.issparse(acts) or isinstance(acts, np.ndarray)) or acts.ndim != 2:
        raise ValueError("acts must be a 2-D scipy.sparse matrix or numpy array [n_tokens, n]")
    n_tok, n = acts.shape
    token_ids = np.asarray(token_ids).astype(np.int64, copy=False).reshape(-1)
    next_ok = np.asarray(next_ok, dtype=bool).reshape(-1)
    L = np.asarray(logit_eff.detach().cpu().numpy() if hasattr(logit_eff, "detach") else logit_eff)
    if token_ids.size != n_tok or next_ok.size != n_tok:
        raise ValueError(f"token_ids and next_ok need n_tokens={n_tok} entries, "
                         f"got {token_ids.size} and {next_ok.size}")
    if L.ndim != 2 or L.shape[0] != n:
        raise ValueError(f"logit_eff must be [n={n}, vocab], got shape {L.shape}")
    if n_tok and (token_ids.min() < 0 or token_ids.max() >= L.shape[1]):
        raise ValueError(f"token_ids must lie in [0, vocab={L.shape[1]})")
    if n_tok and next_ok[-1]:
        raise ValueError("next_ok[-1] must be False: the last position has no next token")
    if sp.issparse(acts):
        acts = sp.csr_matrix(acts)
        if not acts.has_canonical_format:  # column-indexed matrices have unsorted rows; work on a sorted copy
            acts = acts.copy()
            acts.sum_duplicates()
        if acts.nnz and acts.data.min() < 0:
            raise ValueError("acts must be non-negative (ReLU activations)")
    elif not isinstance(acts, np.ndarray):
        raise ValueError("acts must be a scipy.sparse matrix or a numpy array")
    if isinstance(acts, np.ndarray) and n > DENSE_MAX_UNITS:
        raise ValueError(f"dense acts with {n} > {DENSE_MAX_UNITS} columns: pass a scipy.sparse.csr_matrix")
    return acts, token_ids, next_ok, L


def _active_csr(acts: sp.csr_matrix, thr: float) -> sp.csr_matrix:
    """``acts`` with the entries at or below ``thr`` removed (float32)."""
    a = acts.astype(np.float32)  # a copy: the caller's matrix is left alone
    a.data[a.data <= thr] = 0
    a.eliminate_zeros()
    return a


def _rows_of(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


# --- token classes and promoted tokens ------------------------------------------------------------

def token_classes(acts, token_ids, vocab: int, top_m: int = 8, active_threshold: float = 0.0):
    """Each unit's token class: the ``top_m`` token ids carrying most of its activation mass.

    Returns ``(ids [n, top_m] int64 (-1 pads), weights [n, top_m] float64 (mass share within the
    class, rows sum to 1 or 0), purity [n] (class mass / total mass; 0 for a unit that never fires),
    n_active [n] int64)``.
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    n_tok, n = acts.shape
    onehot = sp.csr_matrix((np.ones(n_tok, np.float64), token_ids, np.arange(n_tok + 1)), shape=(n_tok, vocab))
    if sp.issparse(acts):
        a = _active_csr(sp.csr_matrix(acts), active_threshold)
        mass = (a.T.tocsr().astype(np.float64) @ onehot).tocsr()  # [n, vocab] sparse
        n_active = np.diff(a.tocsc().indptr).astype(np.int64)
    else:
        mass_dense = np.zeros((vocab, n))
        n_active = np.zeros(n, np.int64)
        step = max(1, (1 << 22) // max(1, n))
        for t0 in range(0, n_tok, step):
            x = np.asarray(acts[t0 : t0 + step], dtype=np.float32)
            x = np.where(x > active_threshold, x, 0).astype(np.float64)
            mass_dense += onehot[t0 : t0 + step].T @ x
            n_active += (x > 0).sum(0)
        mass = sp.csr_matrix(mass_dense.T)
    total = np.asarray(mass.sum(1)).ravel()
    rows = _rows_of(mass)
    order = np.lexsort((-mass.data, rows))  # by unit, then by mass, largest first
    rank = np.arange(mass.nnz) - mass.indptr[rows[order]]
    sel = order[rank < top_m]
    r_sel = rows[sel]
    ids = np.full((n, top_m), -1, np.int64)
    w = np.zeros((n, top_m))
    rk = rank[rank < top_m]
    ids[r_sel, rk] = mass.indices[sel]
    w[r_sel, rk] = mass.data[sel]
    cls = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(total > 0, cls / np.where(total > 0, total, 1), 0.0)
        w = np.where(cls[:, None] > 0, w / np.where(cls > 0, cls, 1)[:, None], 0.0)
    return ids, w, purity, n_active


def promoted_tokens(logit_eff, k: int = 8) -> np.ndarray:
    """The ``k`` tokens each unit's direct effect raises most: ``[n, k]`` int64, largest first."""
    L = np.asarray(logit_eff)
    k = min(k, L.shape[1])
    part = np.argpartition(-L, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(L, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)

# --- pair statistics ------------------------------------------------------------------------------

def _pairs(next_ok: np.ndarray, shuffle_seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Source and destination positions of the (t, t+1) pairs; shuffled: consecutive positions of a
    seeded permutation, as many pairs as in the ordered data."""
    src = np.flatnonzero(next_ok)
    if shuffle_seed is None:
        return src, src + 1
    perm = np.random.default_rng(shuffle_seed).permutation(len(next_ok))
    return perm[: len(src)], perm[1 : len(src) + 1]


def _row_blocks(n: int, width: int, budget: int = 1 << 22):
    step = max(1, budget // max(1, width))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _centred(L: np.ndarray) -> np.ndarray:
    """Logit effects centred over the vocabulary, float32 ``[n, vocab]`` (row blocks: no float64 copy of L)."""
    out = np.empty(L.shape, np.float32)
    for i0, i1 in _row_blocks(*L.shape):
        blk = L[i0:i1].astype(np.float64)
        out[i0:i1] = blk - blk.mean(1, keepdims=True)
    return out


def _lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vals`` at ``query`` keys (0 where a key is absent)."""
    if not len(keys):
        return np.zeros(len(query))
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], vals[order]
    pos = np.minimum(np.searchsorted(k, query), len(k) - 1)
    return np.where(k[pos] == query, v[pos], 0.0).astype(np.float64)


def _above_chance(c, ns, nd, N: int, cfg: FSAConfig) -> np.ndarray:
    """Candidate mask: ``count >= min_count`` and ``pmi > candidate_pmi``."""
    keep = c >= cfg.min_count
    if cfg.candidate_pmi is not None:
        keep &= c.astype(np.float64) * N > np.exp(cfg.candidate_pmi) * ns.astype(np.float64) * nd
    return keep


def _shifted(acts: sp.csr_matrix, src, dst, cfg: FSAConfig):
    """``P`` (activations at t) and the int32 pattern ``Q`` (at t+1), both ``[N, n]`` CSR."""
    a = _active_csr(acts, cfg.active_threshold)
    P = a[src]
    Q = a[dst]
    Q.data[:] = 1
    return P, Q.astype(np.int32)


if HAVE_NUMBA:

    @numba.njit(cache=True)
    def _nb_pairs(x0, pt_ptr, pt_tok, pt_val, a_ptr, a_idx, next_of, tok, Lc, n_src, n_dst, n_pairs, min_count,
                  lift_min, out_s, out_d, out_c, out_a):
        """Fused counts and attribution of source rows ``x0..``, one row at a time with dense
        accumulators of length n. ``pt_*``: the activations transposed ``[n, n_tokens]``; ``a_*``:
        the pattern ``[n_tokens, n]``; ``next_of[t]``: the position paired after t (-1: none).
        Candidates go to the ``out_*`` buffers; stops before a row that could overflow them and
        returns (next row, number written)."""
        n = n_dst.shape[0]
        cnt = np.zeros(n, np.int64)
        att = np.zeros(n, np.float64)
        touched = np.empty(n, np.int64)
        m = 0
        cap = out_s.shape[0]
        for x in range(x0, pt_ptr.shape[0] - 1):
            if m + n > cap and m > 0:  # this row could emit up to n candidates
                return x, m
            nt = 0
            for p in range(pt_ptr[x], pt_ptr[x + 1]):
                u = next_of[pt_tok[p]]
                if u < 0:
                    continue
                a = np.float64(pt_val[p]) * Lc[x, tok[u]]
                for q in range(a_ptr[u], a_ptr[u + 1]):
                    y = a_idx[q]
                    if cnt[y] == 0:
                        touched[nt] = y
                        nt += 1
                    cnt[y] += 1
                    att[y] += a
            for i in range(nt):
                y = touched[i]
                c = cnt[y]
                if c >= min_count and (lift_min < 0 or c * float(n_pairs) > lift_min * float(n_src[x]) * n_dst[y]):
                    out_s[m] = x
                    out_d[m] = y
                    out_c[m] = c
                    out_a[m] = att[y]
                    m += 1
                cnt[y] = 0
                att[y] = 0.0
        return pt_ptr.shape[0] - 1, m


def _pair_counts_numba(prep: "_Prepared", src, dst, cfg: FSAConfig):
    """Candidate pairs in one fused pass (numba) over the whole matrix: no shifted copies."""
    a, AT = prep.active, prep.active_t
    n = a.shape[1]
    next_of = np.full(a.shape[0], -1, np.int64)
    next_of[src] = dst
    n_src = np.bincount(a.indices[np.repeat(next_of >= 0, np.diff(a.indptr))], minlength=n).astype(np.int64)
    is_dst = np.zeros(a.shape[0], bool)
    is_dst[dst] = True
    n_dst = np.bincount(a.indices[np.repeat(is_dst, np.diff(a.indptr))], minlength=n).astype(np.int64)
    lift_min = -1.0 if cfg.candidate_pmi is None else float(np.exp(cfg.candidate_pmi))
    cap = max(4 * n, 1 << 20)
    outs, x = [], 0
    while x < n:
        buf = (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.float64))
        x, m = _nb_pairs(x, AT.indptr, AT.indices, AT.data, a.indptr, a.indices, next_of, prep.token_ids, prep.Lc,
                         n_src, n_dst, len(src), cfg.min_count, lift_min, *buf)
        outs.append([b[:m].copy() for b in buf])
        cap = min(2 * cap, max(cap, 1 << 23))  # fewer, larger rounds when candidates are many
    s, d, c, att = (np.concatenate([o[i] for o in outs]) for i in range(4))
    return s, d, c, att, n_src, n_dst


def _pair_counts_sparse(acts: sp.csr_matrix, src, dst, token_ids, Lc, cfg: FSAConfig):
    """Candidate pairs from sparse products of the shifted patterns, chunked over source units."""
    n = acts.shape[1]
    P, Q = _shifted(acts, src, dst, cfg)  # [N, n] activations at t, pattern at t+1
    tok_next = token_ids[dst]
    # attribution values at t: acts[t, X] * Lc[X, token[t+1]], in row blocks to bound the gather
    Pa = sp.csr_matrix((P.data.astype(np.float64), P.indices, P.indptr), shape=P.shape)  # P's exact layout
    step = max(1, (1 << 22) // max(1, int(P.nnz / max(1, P.shape[0]))))
    for t0 in range(0, P.shape[0], step):
        t1 = min(t0 + step, P.shape[0])
        p0, p1 = P.indptr[t0], P.indptr[t1]
        rows = np.repeat(np.arange(t0, t1), np.diff(P.indptr[t0 : t1 + 1]))
        Pa.data[p0:p1] *= Lc[P.indices[p0:p1], tok_next[rows]]
    PTa = Pa.T.tocsr()  # [n, N]
    PTb = P.T.tocsr()
    PTb.data[:] = 1
    PTb = PTb.astype(np.int32)
    n_src = np.diff(PTb.indptr).astype(np.int64)
    n_dst = np.diff(Q.tocsc().indptr).astype(np.int64)
    qlen = np.diff(Q.indptr).astype(np.int64)
    cost = PTb @ qlen  # multiply-adds of each source row's product
    out_s, out_d, out_c, out_a = [], [], [], []
    x0 = 0
    cum = np.cumsum(cost)
    while x0 < n:
        base = cum[x0 - 1] if x0 else 0
        x1 = int(np.searchsorted(cum, base + cfg.work_per_chunk, side="right"))
        x1 = min(n, max(x1, x0 + 1))
        C = (PTb[x0:x1] @ Q).tocsr()
        r_all = _rows_of(C) + x0
        keep = _above_chance(C.data, n_src[r_all], n_dst[C.indices], len(src), cfg)
        if keep.any():
            rows = r_all[keep]
            cols = C.indices[keep]
            A = (PTa[x0:x1] @ Q).tocsr()  # same candidates; an exactly cancelled sum may be missing
            a_keys = (_rows_of(A) + x0).astype(np.int64) * n + A.indices
            attr = _lookup(a_keys, A.data, rows.astype(np.int64) * n + cols)
            out_s.append(rows)
            out_d.append(cols)
            out_c.append(C.data[keep].astype(np.int64))
            out_a.append(attr)
        x0 = x1
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return (cat(out_s, np.int64), cat(out_d, np.int64), cat(out_c, np.int64), cat(out_a, np.float64),
            n_src, n_dst)


def _pair_counts_dense(acts: np.ndarray, src, dst, token_ids, Lc, cfg: FSAConfig):
    """``[n, n]`` counts and attribution sums from token blocks (small ``n`` only)."""
    n = acts.shape[1]
    C = np.zeros((n, n))
    Att = np.zeros((n, n))
    n_src = np.zeros(n, np.int64)
    n_dst = np.zeros(n, np.int64)
    step = max(256, (1 << 23) // max(1, n))
    thr = cfg.active_threshold
    for i0 in range(0, len(src), step):
        s, d = src[i0 : i0 + step], dst[i0 : i0 + step]
        xs = np.asarray(acts[s], dtype=np.float32)
        xb = (xs > thr).astype(np.float32)
        yb = (np.asarray(acts[d], dtype=np.float32) > thr).astype(np.float32)
        xa = np.where(xb > 0, xs, 0) * Lc[:, token_ids[d]].T.astype(np.float32)
        C += xb.T @ yb  # exact: per-block sums stay far below 2^24
        Att += xa.T.astype(np.float64) @ yb.astype(np.float64)
        n_src += xb.sum(0).astype(np.int64)
        n_dst += yb.sum(0).astype(np.int64)
    r, c = np.nonzero(C >= cfg.min_count)
    keep = _above_chance(C[r, c], n_src[r], n_dst[c], len(src), cfg)
    r, c = r[keep], c[keep]
    return r.astype(np.int64), c.astype(np.int64), C[r, c].astype(np.int64), Att[r, c], n_src, n_dst


def _mech(src, dst, L: np.ndarray, ids: np.ndarray, w: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """``sum_j w[dst, j] z[src, ids[dst, j]]`` with ``z`` the logit effects standardised per row."""
    mu, sd = np.empty(L.shape[0]), np.empty(L.shape[0])
    for i0, i1 in _row_blocks(*L.shape):
        blk = L[i0:i1].astype(np.float64)
        mu[i0:i1], sd[i0:i1] = blk.mean(1), blk.std(1)
    sd = np.where(sd > 0, sd, np.inf)  # a unit without logit effects has z = 0
    out = np.zeros(len(src))
    for i0 in range(0, len(src), block):
        s, d = src[i0 : i0 + block], dst[i0 : i0 + block]
        cls = ids[d]
        z = (L[s[:, None], np.maximum(cls, 0)].astype(np.float64) - mu[s, None]) / sd[s, None]
        out[i0 : i0 + block] = (np.where(cls >= 0, w[d], 0.0) * z).sum(1)
    return out


@dataclass
class _Prepared:
    """Checked inputs and what every statistic reuses (the real and the shuffled pass share it)."""

    acts: object  # csr (canonical) or ndarray [n_tokens, n]
    token_ids: np.ndarray
    next_ok: np.ndarray
    L: np.ndarray  # [n, vocab]
    Lc: np.ndarray  # float32 [n, vocab], centred over the vocabulary
    ids: np.ndarray  # token classes [n, top_m]
    w: np.ndarray
    active: sp.csr_matrix | None = None  # entries above the threshold, float32
    active_t: sp.csr_matrix | None = None  # its transpose [n, n_tokens], sorted


def _prepare(acts, token_ids, next_ok, logit_eff, cfg: FSAConfig, token_class=None) -> _Prepared:
    acts, token_ids, next_ok, L = _check_inputs(acts, token_ids, next_ok, logit_eff)
    if token_class is None:
        token_class = token_classes(acts, token_ids, L.shape[1], cfg.top_m, cfg.active_threshold)[:2]
    prep = _Prepared(acts, token_ids, next_ok, L, _centred(L), *token_class)
    if sp.issparse(acts) and _engine(cfg) == "numba":
        prep.active = _active_csr(acts, cfg.active_threshold)
        prep.active_t = prep.active.T.tocsr()
        prep.active_t.sort_indices()
    return prep


def _engine(cfg: FSAConfig) -> str:
    return "scipy" if cfg.engine == "scipy" or (cfg.engine == "auto" and not HAVE_NUMBA) else "numba"


def _edge_table(prep: _Prepared, cfg: FSAConfig, shuffle_seed: int | None) -> tuple[pd.DataFrame, int]:
    src, dst = _pairs(prep.next_ok, shuffle_seed)
    if not sp.issparse(prep.acts):
        out = _pair_counts_dense(prep.acts, src, dst, prep.token_ids, prep.Lc, cfg)
    elif _engine(cfg) == "scipy":
        out = _pair_counts_sparse(prep.acts, src, dst, prep.token_ids, prep.Lc, cfg)
    else:
        out = _pair_counts_numba(prep, src, dst, cfg)
    s, d, c, att, n_src, n_dst = out
    order = np.lexsort((d, s))
    s, d, c, att = s[order], d[order], c[order], att[order]
    N = len(src)
    ns, nd = n_src[s].astype(np.float64), n_dst[d].astype(np.float64)
    lift = c * float(N) / (ns * nd)
    # log P(C >= c) for C ~ Poisson(expected); far tails underflow to -inf, floored at 1e-300
    log10_p = np.maximum(poisson.logsf(c - 1, ns * nd / N), -300 * np.log(10)) / np.log(10)
    df = pd.DataFrame({"src": s, "dst": d, "count": c, "n_src": n_src[s], "n_dst": n_dst[d], "lift": lift,
                       "pmi": np.log(lift), "cond_prob": c / ns, "log10_p": log10_p,
                       "mech": _mech(s, d, prep.L, prep.ids, prep.w), "attribution": att, "attribution_mean": att / c})
    n = prep.L.shape[0]
    kept = ((df["pmi"] >= cfg.min_pmi) & (df["log10_p"] <= np.log10(cfg.alpha / (n * n)))
            & (df["mech"] >= cfg.min_mech) & (df["attribution_mean"] > cfg.min_attribution)
            & (df["cond_prob"] >= cfg.min_cond_prob)).to_numpy(copy=True)
    if cfg.max_out is not None and kept.any():
        # each source keeps its max_out most likely successors (cond_prob, then pmi): on real text most
        # features have dozens of significant successors, and only this sparsity leaves readable cycles
        k = df.loc[kept, ["src", "cond_prob", "pmi"]].sort_values(["src", "cond_prob", "pmi"],
                                                                   ascending=[True, False, False], kind="stable")
        rank = k.groupby("src").cumcount()
        kept[:] = False
        kept[rank.index[rank.to_numpy() < cfg.max_out].to_numpy()] = True
    df["kept"] = kept
    return df, N


def edge_stats(acts, token_ids, next_ok, logit_eff, cfg: FSAConfig = FSAConfig(), *, shuffle_seed: int | None = None,
               token_class: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[pd.DataFrame, int]:
    """All candidate pairs X -> Y with their weights: ``(DataFrame[EDGE_COLUMNS], N pairs)``, sorted by (src, dst).

    ``shuffle_seed`` computes the null: the same statistics over consecutive positions of a seeded
    permutation of the tokens. ``token_class`` passes ``token_classes(...)[:2]`` to skip recomputing it.
    """
    return _edge_table(_prepare(acts, token_ids, next_ok, logit_eff, cfg, token_class), cfg, shuffle_seed)


def null_summary(edges: pd.DataFrame, null_edges: pd.DataFrame) -> pd.DataFrame:
    """Quantiles of each weight over the candidate pairs, real and shuffled, plus candidate and kept counts.

    Rows: ``pmi, log10_p, mech, attribution_mean``; columns ``q0.5 ... q1`` and ``null_q0.5 ... null_q1``;
    ``n_candidates`` / ``n_kept`` (and ``null_`` versions) repeated on each row.
    """
    rows = []
    for stat in ("pmi", "log10_p", "mech", "attribution_mean"):
        row = {"stat": stat}
        for name, df in (("", edges), ("null_", null_edges)):
            x = df[stat].to_numpy()
            for q in NULL_QUANTILES:
                row[f"{name}q{q:g}"] = float(np.quantile(x, q)) if len(x) else np.nan
            row[f"{name}n_candidates"] = int(len(df))
            row[f"{name}n_kept"] = int(df["kept"].sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("stat")
