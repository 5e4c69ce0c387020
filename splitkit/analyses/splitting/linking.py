"""Links between two sizes: masked activation cosine, decoder cosine, their chance level, children's cover.

"Towards Monosemanticity" trains dictionaries of growing size on the same activations and links a
feature of a smaller one (the parent) to a feature of a larger one (the child) by a *masked
activation cosine*: the cosine of the two activation vectors restricted to the tokens where the
parent fires, and restricted to the tokens where the child fires, the larger of the two kept; about
0.4 makes a link. A parent with several children has split; a child with several parents is a merge,
so the structure is a DAG, not a strict tree.

Inputs are per-size feature activations over the same ``n_tokens`` analysis tokens,
``scipy.sparse`` ``[n_tokens, n]`` (ReLU outputs, so non-negative), decoder rows
``W_dec: [n, d_mlp]`` for the decoder cosine, and optionally twin labels, token ids and logit
effects for the listings. Everything here returns arrays, DataFrames and networkx graphs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cofire import _as_acts, _col_sums, _engine, _masked_from_stats, _topk_parents

LINK_COLUMNS = ("parent", "child", "rank", "masked_cos", "cos_on_parent", "cos_on_child", "coverage",
                "parent_share", "n_cofire", "decoder_cos")


def decoder_cosine(W_parent: np.ndarray, W_child: np.ndarray, parent: np.ndarray, child: np.ndarray,
                   block: int = 1 << 16) -> np.ndarray:
    """float64 ``[n_pairs]``: cosine of decoder rows ``W_parent[parent]`` and ``W_child[child]``.

    ``W_parent: [n_parent, d_mlp]``, ``W_child: [n_child, d_mlp]``; pairs in blocks of ``block``.
    A zero row gives 0.
    """
    W_parent, W_child = np.asarray(W_parent), np.asarray(W_child)
    if W_parent.ndim != 2 or W_child.ndim != 2 or W_parent.shape[1] != W_child.shape[1]:
        raise ValueError(f"W_dec must be [n, d_mlp] with the same d_mlp on both sides, got "
                         f"{W_parent.shape} and {W_child.shape}")
    parent, child = np.asarray(parent, np.int64), np.asarray(child, np.int64)
    out = np.zeros(len(parent))
    for s in range(0, len(parent), block):
        u = W_parent[parent[s:s + block]].astype(np.float64)
        v = W_child[child[s:s + block]].astype(np.float64)
        den = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
        num = np.einsum("ij,ij->i", u, v)
        out[s:s + block] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


def links(acts_parent, acts_child, W_dec_parent: np.ndarray | None = None, W_dec_child: np.ndarray | None = None,
          *, k: int = 16, min_cos: float = 0.0, min_cofire: int = 1, engine: str = "auto",
          chunk_children: int | None = None) -> pd.DataFrame:
    """Candidate links: for every child, its ``k`` best parents by masked activation cosine.

    Args:
        acts_parent: ``[n_tokens, n_parent]`` sparse, non-negative (the smaller dictionary, or any).
        acts_child: ``[n_tokens, n_child]`` sparse over the same tokens.
        W_dec_parent, W_dec_child: ``[n, d_mlp]`` decoder rows; both or neither (decoder_cos NaN).
        k: parents kept per child (pairs that never co-fire are never candidates).
        min_cos: drop pairs whose masked cosine is below this (0 keeps all top-k).
        min_cofire: pairs that co-fire on fewer tokens are no candidates (1, the paper's rule,
            keeps every co-firing pair). On one or two shared tokens the masked cosine is that
            token's share of a norm, which can pass 0.4 by chance (see :func:`null_masked_cos`).
        engine: ``"numba"`` (the default when importable) or ``"scipy"``; same numbers.
        chunk_children: children per chunk (default: from a budget of co-firing pairs).

    Returns:
        DataFrame, one row per (child, kept parent), sorted by child then rank, columns
        ``parent, child`` (int64 feature ids), ``rank`` (0 = the child's best parent),
        ``masked_cos`` (max of the next two), ``cos_on_parent`` (restricted to the parent's
        tokens), ``cos_on_child`` (restricted to the child's tokens), ``coverage`` (share of the
        child's activation mass on tokens where the parent fires), ``parent_share`` (share of the
        parent's mass on tokens where the child fires), ``n_cofire`` (tokens where both fire),
        ``decoder_cos``.
    """
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"acts_parent and acts_child must cover the same tokens: {A.shape[0]} != {B.shape[0]}")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if (W_dec_parent is None) != (W_dec_child is None):
        raise ValueError("give both W_dec_parent and W_dec_child, or neither")
    if W_dec_parent is not None:
        for W, n, nm in ((W_dec_parent, A.shape[1], "W_dec_parent"), (W_dec_child, B.shape[1], "W_dec_child")):
            if np.ndim(W) != 2 or np.shape(W)[0] != n:
                raise ValueError(f"{nm} must be [{n}, d_mlp] (one row per feature), got {np.shape(W)}")
    eng = _engine(engine)
    if not (isinstance(min_cofire, (int, np.integer)) and min_cofire >= 1):
        raise ValueError(f"min_cofire must be a positive integer, got {min_cofire!r}")
    idx, stats, norm_a, norm_b = _topk_parents(A, B, int(k), eng, chunk_children, int(min_cofire))
    child, rank = np.nonzero(idx >= 0)
    parent = idx[child, rank]
    st = stats[child, rank]
    cp, cc = _masked_from_stats(st, norm_a[parent], norm_b[child])
    mass_a, mass_b = _col_sums(A, A.shape[1], 1), _col_sums(B, B.shape[1], 1)
    df = pd.DataFrame({
        "parent": parent.astype(np.int64), "child": child.astype(np.int64), "rank": rank.astype(np.int64),
        "masked_cos": np.maximum(cp, cc), "cos_on_parent": cp, "cos_on_child": cc,
        "coverage": st[:, 3] / mass_b[child], "parent_share": st[:, 4] / mass_a[parent],
        "n_cofire": st[:, 5].astype(np.int64),
        "decoder_cos": (decoder_cosine(W_dec_parent, W_dec_child, parent, child) if W_dec_parent is not None
                        else np.full(len(parent), np.nan)),
    }, columns=list(LINK_COLUMNS))
    if min_cos > 0:
        df = df[df["masked_cos"] >= min_cos].reset_index(drop=True)
    return df


def null_masked_cos(acts_parent, acts_child, *, seed: int = 0, n_children: int | None = None,
                    min_cofire: int = 1, engine: str = "auto") -> np.ndarray:
    """Chance level of the masked cosine: each child's best value against token-shuffled parents.

    The parent's rows (tokens) are permuted with ``seed``, which keeps every feature's density and
    activation values but breaks any relation to the child. ``n_children`` samples that many
    children (seeded) to make the baseline cheap at large sizes. Returns float64 ``[n_children]``:
    the best masked cosine of each sampled child (0 where it co-fires with no parent).
    """
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"acts_parent and acts_child must cover the same tokens: {A.shape[0]} != {B.shape[0]}")
    rng = np.random.default_rng(seed)
    A_shuf = A[rng.permutation(A.shape[0])]
    if n_children is not None:
        if not 1 <= n_children:
            raise ValueError(f"n_children must be >= 1 or None, got {n_children}")
        if n_children < B.shape[1]:
            B = B[:, np.sort(rng.choice(B.shape[1], n_children, replace=False))]
    df = links(A_shuf, B, k=1, min_cofire=min_cofire, engine=engine)
    best = np.zeros(B.shape[1])
    best[df["child"].to_numpy()] = df["masked_cos"].to_numpy()
    return best


def threshold_vs_null(link_df: pd.DataFrame, null: np.ndarray, n_child: int, threshold: float = 0.4) -> dict:
    """How the link threshold sits against chance: real vs shuffled shares of linked children.

    ``link_df`` from :func:`links`, ``null`` from :func:`null_masked_cos`, ``n_child`` the child
    dictionary's size. Returns ``threshold``, ``share_linked`` (children with a parent at or above
    it), ``null_share_linked`` (the same under shuffling), the null's ``null_q50/q90/q99/q999`` and
    ``null_max``, and ``n_null``.
    """
    best = link_df.loc[link_df["rank"] == 0, "masked_cos"].to_numpy()
    null = np.asarray(null, np.float64)
    q = np.quantile(null, [0.5, 0.9, 0.99, 0.999]) if len(null) else [np.nan] * 4
    return {
        "threshold": float(threshold),
        "share_linked": float((best >= threshold).sum() / max(n_child, 1)),
        "null_share_linked": float((null >= threshold).mean()) if len(null) else float("nan"),
        "null_q50": float(q[0]), "null_q90": float(q[1]), "null_q99": float(q[2]), "null_q999": float(q[3]),
        "null_max": float(null.max()) if len(null) else float("nan"),
        "n_null": int(len(null)),
    }


def children_cover(acts_parent, acts_child, parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """float64 ``[n_parent]``: share of each parent's activation mass on tokens where at least one
    of its linked children fires (the union of the children's supports; 0 for a parent with no
    link or no mass). ``parent, child``: the links' feature ids, one pair per link."""
    A = _as_acts(acts_parent, "acts_parent")
    B = _as_acts(acts_child, "acts_child")
    parent, child = np.asarray(parent, np.int64), np.asarray(child, np.int64)
    n_p, n_c = A.shape[1], B.shape[1]
    M = sp.csr_matrix((np.ones(len(parent), np.float32), (child, parent)), shape=(n_c, n_p))
    Bpos = sp.csr_matrix((np.ones(B.nnz, np.float32), B.indices, B.indptr), shape=B.shape)
    U = Bpos @ M  # [n_tokens, n_parent]: how many linked children of each parent fire at each token
    U.data[:] = 1.0
    covered = _col_sums(A.multiply(U).tocsr(), n_p, 1)
    mass = _col_sums(A, n_p, 1)
    return np.divide(covered, mass, out=np.zeros(n_p), where=mass > 0)



def _sorted_sizes(d: Mapping) -> list[int]:
    sizes = sorted(int(s) for s in d)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct, got {list(d)}")
    return sizes


def link_family(acts: Mapping[int, sp.spmatrix], W_dec: Mapping[int, np.ndarray] | None = None, *, k: int = 16,
                min_cofire: int = 1, engine: str = "auto", threshold: float | None = None
                ) -> dict[tuple[int, int], pd.DataFrame]:
    """Links between consecutive sizes of one family: ``{(size, next_size): links DataFrame}``.

    ``acts[size]``: ``[n_tokens, size-th n]``; ``W_dec[size]``: ``[n, d_mlp]``. With ``threshold``,
    each frame also gets the parents' ``children_cover`` in ``frame.attrs["children_cover"]``
    (float64 ``[n_parent]``, over the links at or above it).
    """
    sizes = _sorted_sizes(acts)
    out = {}
    for lo, hi in zip(sizes[:-1], sizes[1:]):
        Wp = None if W_dec is None else W_dec[lo]
        Wc = None if W_dec is None else W_dec[hi]
        df = links(acts[lo], acts[hi], Wp, Wc, k=k, min_cofire=min_cofire, engine=engine)
        if threshold is not None:
            sel = df["masked_cos"] >= threshold
            df.attrs["children_cover"] = children_cover(acts[lo], acts[hi], df.loc[sel, "parent"].to_numpy(),
                                                        df.loc[sel, "child"].to_numpy())
        out[(lo, hi)] = df
    return out
