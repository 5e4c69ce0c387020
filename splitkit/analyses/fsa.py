"""Finite-state-automaton-like systems of features: X at token t raises the tokens on which Y fires at t+1.

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

import itertools
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import poisson

from ..config import FSAConfig  # noqa: F401  (the section lives with the others; imported from here too)

try:  # numba ships with umap-learn; the scipy engine gives the same numbers without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

DENSE_MAX_UNITS = 4096
NULL_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
EDGE_COLUMNS = ("src", "dst", "count", "n_src", "n_dst", "lift", "pmi", "cond_prob", "log10_p", "mech", "attribution",
                "attribution_mean", "kept")


def _default_decode(ids) -> list[str]:
    return [str(int(i)) for i in ids]


def _show(strings) -> str:
    """Tokens joined for a label, whitespace made visible."""
    return " ".join(repr(s)[1:-1] for s in strings)


@dataclass
class FSAGraph:
    """What :func:`build_graph` returns.

    - ``edges``: every candidate pair (``EDGE_COLUMNS``), ``kept`` marking the graph's edges.
    - ``graph``: ``nx.DiGraph`` of the kept edges; nodes carry ``label``, ``top_tokens``,
      ``promoted``, ``n_active``, ``purity``; edges carry the weight columns and ``weight``.
    - ``nodes``: one row per unit: ``unit, n_active, density, purity, top_tokens, promoted, label``.
    - ``token_class``: ``[n, top_m]`` token ids (-1 pads) and ``token_weight: [n, top_m]``.
    - ``null_edges``: the pairs the shuffled order keeps (false positives at these thresholds);
      ``null_summary``: quantiles over all of its candidates (:func:`null_summary`). None without a null.
    """

    edges: pd.DataFrame
    graph: nx.DiGraph
    nodes: pd.DataFrame
    token_class: np.ndarray
    token_weight: np.ndarray
    n_pairs: int
    config: FSAConfig
    null_edges: pd.DataFrame | None = None
    null_summary: pd.DataFrame | None = None
    decode: Callable = field(default=_default_decode, repr=False)


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


def build_graph(acts, token_ids, next_ok, logit_eff, cfg: FSAConfig = FSAConfig(), *, decode: Callable | None = None,
                null: bool = True) -> FSAGraph:
    """Edges, node labels and the DiGraph of kept edges (module docstring for the definitions).

    ``decode(ids) -> list[str]`` names tokens for labels (default: the ids). With ``null`` the
    shuffled-order statistics are computed too (seed ``cfg.null_seed``).
    """
    acts, token_ids, next_ok, L = _check_inputs(acts, token_ids, next_ok, logit_eff)
    decode = decode or _default_decode
    ids, w, purity, n_active = token_classes(acts, token_ids, L.shape[1], cfg.top_m, cfg.active_threshold)
    prep = _prepare(acts, token_ids, next_ok, L, cfg, (ids, w))
    edges, N = _edge_table(prep, cfg, None)
    null_edges = summ = None
    if null:
        null_all, _ = _edge_table(prep, cfg, cfg.null_seed)
        summ = null_summary(edges, null_all)
        null_edges = null_all[null_all["kept"]].reset_index(drop=True)  # the summary holds the rest
        del null_all
    del prep
    prom = promoted_tokens(L, cfg.top_m)
    n = acts.shape[1]
    nodes = pd.DataFrame({"unit": np.arange(n), "n_active": n_active, "density": n_active / max(1, len(token_ids)),
                          "purity": purity})
    kept = edges[edges["kept"]]
    used = np.union1d(kept["src"].to_numpy(), kept["dst"].to_numpy()).astype(np.int64)
    top_txt, prom_txt = {}, {}
    for u in used:  # decoding every unit of a large dictionary is slow; the study labels what it draws
        top_txt[u] = _show(decode([i for i in ids[u] if i >= 0][:5]))
        prom_txt[u] = _show(decode(list(prom[u][:5])))
    nodes["top_tokens"] = [top_txt.get(u, "") for u in range(n)]
    nodes["promoted"] = [prom_txt.get(u, "") for u in range(n)]
    nodes["label"] = [f"{u}: {top_txt[u]} -> {prom_txt[u]}" if u in top_txt else "" for u in range(n)]
    G = nx.DiGraph()
    for u in used:
        G.add_node(int(u), label=nodes.at[u, "label"], top_tokens=top_txt[u], promoted=prom_txt[u],
                   n_active=int(n_active[u]), purity=float(purity[u]))
    for r in kept.itertuples(index=False):
        G.add_edge(int(r.src), int(r.dst), count=int(r.count), lift=float(r.lift), pmi=float(r.pmi),
                   cond_prob=float(r.cond_prob), log10_p=float(r.log10_p), mech=float(r.mech),
                   attribution=float(r.attribution),
                   attribution_mean=float(r.attribution_mean), weight=float(getattr(r, cfg.weight)))
    return FSAGraph(edges=edges, graph=G, nodes=nodes, token_class=ids, token_weight=w, n_pairs=N, config=cfg,
                    null_edges=null_edges, null_summary=summ, decode=decode)


# --- automata -------------------------------------------------------------------------------------

AUTOMATA_COLUMNS = ("automaton", "kind", "n_states", "n_edges", "weight", "mean_pmi", "mean_mech", "states", "edges",
                    "label")


def find_automata(fg: FSAGraph) -> pd.DataFrame:
    """Strongly connected components (>= 2 states), simple cycles (2 .. ``max_cycle_len`` states, at
    most ``max_cycles``, leaving out those that are a whole SCC already) and chains (maximal paths of
    >= ``min_chain`` states through units in no SCC, taken longest first, disjoint).

    Self-loops stay in the graph but make no automaton. ``weight`` is the sum of the edges'
    ``cfg.weight``; rows are ranked by ``n_states`` then ``weight`` (``automaton`` = rank).
    Columns: ``AUTOMATA_COLUMNS``; ``states`` is a list of units (in cycle/chain order for those
    kinds), ``edges`` a list of ``[src, dst]``.
    """
    cfg = fg.config
    H = fg.graph.copy()
    H.remove_edges_from(list(nx.selfloop_edges(H)))
    found = []

    def add(kind, states, edges):
        ws = [H.edges[e] for e in edges]
        found.append({"kind": kind, "n_states": len(states), "n_edges": len(edges),
                      "weight": float(sum(e[cfg.weight] for e in ws)),
                      "mean_pmi": float(np.mean([e["pmi"] for e in ws])),
                      "mean_mech": float(np.mean([e["mech"] for e in ws])),
                      "states": [int(s) for s in states], "edges": [[int(a), int(b)] for a, b in edges],
                      "label": " | ".join(H.nodes[s]["label"] for s in states)})

    sccs = [c for c in nx.strongly_connected_components(H) if len(c) >= 2]
    whole = set()
    for c in sccs:
        sub = H.subgraph(c)
        add("scc", sorted(c), sorted(sub.edges()))
        if sub.number_of_edges() == len(c):  # the SCC is one cycle
            whole.add(frozenset(c))
    for cyc in itertools.islice(nx.simple_cycles(H, length_bound=cfg.max_cycle_len), cfg.max_cycles):
        if len(cyc) >= 2 and frozenset(cyc) not in whole:
            start = int(np.argmin(cyc))  # a canonical rotation, so equal cycles print the same
            cyc = cyc[start:] + cyc[:start]
            add("cycle", cyc, [(cyc[i], cyc[(i + 1) % len(cyc)]) for i in range(len(cyc))])
    in_scc = set().union(*sccs) if sccs else set()
    D = H.subgraph([u for u in H if u not in in_scc]).copy()
    while D.number_of_edges():
        path = nx.dag_longest_path(D, weight=None)
        if len(path) < cfg.min_chain:
            break
        add("chain", path, list(zip(path[:-1], path[1:])))
        D.remove_nodes_from(path)
    df = pd.DataFrame(found, columns=[c for c in AUTOMATA_COLUMNS if c != "automaton"])
    df = df.sort_values(["n_states", "weight"], ascending=False, kind="stable", ignore_index=True)
    df.insert(0, "automaton", np.arange(len(df)))
    return df


def transition_table(fg: FSAGraph, automaton) -> pd.DataFrame:
    """An automaton (a row of :func:`find_automata`) as a transition table, one row per edge.

    State = unit X; input = the token class of the next state Y (its ``top_m`` most activating
    tokens, the tokens whose arrival moves the automaton to Y, with their shares of Y's class mass); next state =
    Y. Columns: ``state, state_label, input_ids, input_weights, input_tokens, next_state, next_label,
    count, pmi, mech, attribution_mean``.
    """
    G = fg.graph
    rows = []
    for x, y in automaton["edges"]:
        e = G.edges[x, y]
        has = fg.token_class[y] >= 0
        cls = [int(i) for i in fg.token_class[y][has]]
        rows.append({"state": int(x), "state_label": G.nodes[x]["label"], "input_ids": cls,
                     "input_weights": [float(v) for v in fg.token_weight[y][has]],
                     "input_tokens": _show(fg.decode(cls)), "next_state": int(y), "next_label": G.nodes[y]["label"],
                     "count": e["count"], "pmi": e["pmi"], "mech": e["mech"],
                     "attribution_mean": e["attribution_mean"]})
    return pd.DataFrame(rows)


def compare_bases(results: dict) -> pd.DataFrame:
    """One row per basis (e.g. ``{"features": (fg, automata), "neurons": (fg, automata)}``).

    Columns: ``basis, n_units, n_candidates, n_edges, null_edges, n_scc, n_cycles, n_chains,
    largest_automaton, mean_states, state_purity`` (mean over the states of all automata of the share
    of a unit's activation mass on its token class: how readable its states are).
    """
    rows = []
    for name, (fg, auto) in results.items():
        states = sorted({s for ss in auto["states"] for s in ss}) if len(auto) else []
        kinds = auto["kind"].value_counts() if len(auto) else {}
        rows.append({"basis": name, "n_units": int(len(fg.nodes)), "n_candidates": int(len(fg.edges)),
                     "n_edges": int(fg.edges["kept"].sum()),
                     "null_edges": int(fg.null_edges["kept"].sum()) if fg.null_edges is not None else -1,
                     "n_scc": int(kinds.get("scc", 0)), "n_cycles": int(kinds.get("cycle", 0)),
                     "n_chains": int(kinds.get("chain", 0)),
                     "largest_automaton": int(auto["n_states"].max()) if len(auto) else 0,
                     "mean_states": float(auto["n_states"].mean()) if len(auto) else 0.0,
                     "state_purity": float(fg.nodes["purity"].to_numpy()[states].mean()) if states else np.nan})
    return pd.DataFrame(rows)


# --- across seeds ---------------------------------------------------------------------------------

def _edge_set(edges) -> set:
    if isinstance(edges, nx.DiGraph):
        return {(int(a), int(b)) for a, b in edges.edges()}
    if isinstance(edges, pd.DataFrame):
        e = edges[edges["kept"]] if "kept" in edges else edges
        return set(zip(e["src"].astype(int), e["dst"].astype(int)))
    return {(int(a), int(b)) for a, b in edges}


def _share(edges_a: np.ndarray, best_b: np.ndarray, set_b: set) -> float:
    if not len(edges_a):
        return float("nan")
    ma, mb = best_b[edges_a[:, 0]], best_b[edges_a[:, 1]]
    return float(np.mean([(a >= 0 and b >= 0 and (int(a), int(b)) in set_b) for a, b in zip(ma, mb)]))


def cross_seed_share(edges_a, edges_b, best_b, n_shuffles: int = 100, seed: int = 0) -> dict:
    """Share of A's edges ``(x, y)`` whose matches ``(best_b[x], best_b[y])`` are linked in B.

    ``edges_a``: A's automaton edges (pairs, a DataFrame with ``src, dst`` or a DiGraph); ``edges_b``:
    B's graph (its kept edges); ``best_b: [n_a]`` int, -1 for no match. The baseline is the same share
    with ``best_b`` permuted at random (``n_shuffles`` seeded repeats). Self-loops are left out.
    Returns ``{share, shuffled_mean, shuffled_std, shuffled_q95, n_edges}``.
    """
    best_b = np.asarray(best_b, dtype=np.int64)
    ea = np.array(sorted(e for e in _edge_set(edges_a) if e[0] != e[1]), dtype=np.int64).reshape(-1, 2)
    if len(ea) and ea.max() >= len(best_b):
        raise ValueError(f"best_b has {len(best_b)} entries but A's edges name unit {ea.max()}")
    sb = _edge_set(edges_b)
    rng = np.random.default_rng(seed)
    null = np.array([_share(ea, rng.permutation(best_b), sb) for _ in range(n_shuffles)])
    return {"share": _share(ea, best_b, sb), "shuffled_mean": float(np.mean(null)) if n_shuffles else np.nan,
            "shuffled_std": float(np.std(null)) if n_shuffles else np.nan,
            "shuffled_q95": float(np.quantile(null, 0.95)) if n_shuffles else np.nan, "n_edges": int(len(ea))}


def automata_in_both(auto_a: pd.DataFrame, auto_b: pd.DataFrame, graph_b, best_b, min_share: float = 0.5,
                     min_jaccard: float = 0.5) -> pd.DataFrame:
    """Each automaton of A mapped onto B: its edge share there and B's automaton with the most
    overlapping (matched) states. ``found_in_both`` when the share is >= ``min_share`` and that
    Jaccard index is >= ``min_jaccard``. Columns: ``automaton_a, kind, n_states, edge_share,
    automaton_b, jaccard, found_in_both``."""
    best_b = np.asarray(best_b, dtype=np.int64)
    sb = _edge_set(graph_b)
    b_states = [set(s) for s in auto_b["states"]] if len(auto_b) else []
    rows = []
    for r in auto_a.itertuples(index=False):
        ea = np.asarray(r.edges, dtype=np.int64).reshape(-1, 2)
        mapped = {int(best_b[s]) for s in r.states if best_b[s] >= 0}
        jac = [len(mapped & s) / len(mapped | s) if mapped | s else 0.0 for s in b_states]
        j = int(np.argmax(jac)) if jac else -1
        share = _share(ea, best_b, sb)
        rows.append({"automaton_a": int(r.automaton), "kind": r.kind, "n_states": int(r.n_states), "edge_share": share,
                     "automaton_b": int(auto_b["automaton"].iloc[j]) if j >= 0 else -1,
                     "jaccard": float(jac[j]) if j >= 0 else 0.0,
                     "found_in_both": bool(share >= min_share and j >= 0 and jac[j] >= min_jaccard)})
    return pd.DataFrame(rows, columns=["automaton_a", "kind", "n_states", "edge_share", "automaton_b", "jaccard",
                                       "found_in_both"])


# --- predictive check -----------------------------------------------------------------------------

def predictive_check(acts, next_ok, states, edges, fit_frac: float = 0.8, active_threshold: float = 0.0) -> dict:
    """Does the automaton predict which of its states fires next, on held-out positions?

    Positions split by order: the first ``fit_frac`` of the tokens fit, the rest test (the graph
    itself should be built on the fit part, ``acts[:cut]``, for a clean claim). Evaluated are the
    pairs (t, t+1) with ``next_ok[t]``, a state active at t (the most active one if several) and a
    state active at t+1. The automaton predicts, for current state X, the out-neighbour Y (among
    its ``edges``) seen most often after X on the fit part (X without an out-edge: the baseline's
    guess); the baseline always predicts the state most often active at t+1 on the fit part. A
    prediction is right when the predicted state is active at t+1.

    Returns ``{accuracy, baseline_accuracy, n_fit, n_test, cut}``.
    """
    states = [int(s) for s in states]
    if len(states) < 2:
        raise ValueError("an automaton needs at least two states")
    if not 0 < fit_frac < 1:
        raise ValueError(f"fit_frac must be in (0, 1), got {fit_frac}")
    next_ok = np.asarray(next_ok, dtype=bool)
    n_tok = acts.shape[0]
    if len(next_ok) != n_tok:
        raise ValueError(f"next_ok needs n_tokens={n_tok} entries, got {len(next_ok)}")
    k = len(states)
    if sp.issparse(acts):
        S = sp.csr_matrix(acts)[:, states].astype(np.float32)  # [n_tokens, k], stays sparse
    else:
        S = sp.csr_matrix(np.asarray(acts[:, states], dtype=np.float32))
    S.data[S.data <= active_threshold] = 0
    S.eliminate_zeros()
    any_on = np.diff(S.indptr) > 0
    cur = np.full(n_tok, -1, np.int64)
    rows = np.flatnonzero(any_on)
    if len(rows):  # the most active state of each row: the largest entry of the row's slice
        r_of = _rows_of(S)
        order = np.lexsort((-S.data, r_of))
        first = S.indptr[rows]
        cur[rows] = S.indices[order[first]]
    t = np.flatnonzero(next_ok[:-1] & (cur[:-1] >= 0) & any_on[1:])
    cut = int(fit_frac * n_tok)
    fit, test = t[t < cut], t[t >= cut]

    B = S.copy()
    B.data[:] = 1.0  # which states fire, [n_tokens, k] sparse: no dense [positions, k] array at large k

    def fires(pos, col):  # bool [len(pos)]: state col[i] fires at pos[i] + 1
        R = B[pos + 1]
        return np.asarray(R[np.arange(len(pos)), col]).ravel() > 0

    nxt_fit = B[fit + 1]  # [len(fit), k]
    cur_1h = sp.csr_matrix((np.ones(len(fit)), (cur[fit], np.arange(len(fit)))), shape=(k, len(fit)))
    trans = np.asarray((cur_1h @ nxt_fit).todense())  # [k, k] transitions counted on the fit part
    base = int(np.asarray(nxt_fit.sum(0)).ravel().argmax()) if len(fit) else 0
    pos = {s: i for i, s in enumerate(states)}
    allowed = np.zeros((k, k), bool)
    for a, b in edges:
        if int(a) in pos and int(b) in pos:
            allowed[pos[int(a)], pos[int(b)]] = True
    scored = np.where(allowed, trans, -1.0)
    pred = np.where(allowed.any(1), scored.argmax(1), base)
    acc = float(fires(test, pred[cur[test]]).mean()) if len(test) else float("nan")
    base_acc = float(fires(test, np.full(len(test), base)).mean()) if len(test) else float("nan")
    return {"accuracy": acc, "baseline_accuracy": base_acc, "n_fit": int(len(fit)), "n_test": int(len(test)),
            "cut": cut}


def predictive_table(acts, next_ok, automata: pd.DataFrame, fit_frac: float = 0.8, active_threshold: float = 0.0,
                     max_automata: int = 50) -> pd.DataFrame:
    """:func:`predictive_check` for the first ``max_automata`` rows of :func:`find_automata`.

    Columns: ``automaton, kind, n_states, accuracy, baseline_accuracy, gain (accuracy - baseline),
    n_fit, n_test``.
    """
    rows = []
    for r in automata.head(max_automata).itertuples(index=False):
        res = predictive_check(acts, next_ok, r.states, r.edges, fit_frac, active_threshold)
        rows.append({"automaton": int(r.automaton), "kind": r.kind, "n_states": int(r.n_states),
                     "accuracy": res["accuracy"], "baseline_accuracy": res["baseline_accuracy"],
                     "gain": res["accuracy"] - res["baseline_accuracy"], "n_fit": res["n_fit"], "n_test": res["n_test"]})
    return pd.DataFrame(rows, columns=["automaton", "kind", "n_states", "accuracy", "baseline_accuracy", "gain", "n_fit",
                                       "n_test"])
