"""Twins: each column's most similar *other* columns of the same matrix (exact Pearson correlation).

The primitive under in-dictionary redundancy (:mod:`splitkit.analyses.redundancy`) and under the
merge step of the ``l1_log`` recipe (:mod:`splitkit.train.merge`), kept here so that training does
not import an analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .columns import prepare
from .engine import max_correlation


@dataclass(frozen=True, eq=False)
class Twins:
    """Each feature's most similar other features in the same dictionary.

    index: int64 ``[n, k]`` other features, most similar first (-1: none).
    value: float64 ``[n, k]`` their similarity (correlation or cosine; NaN where index is -1).
    alive: bool ``[n]`` features that have a similarity at all (non-zero variance / non-zero row).
    kind: "act" or "dec".
    """

    index: np.ndarray
    value: np.ndarray
    alive: np.ndarray
    kind: str

    @property
    def twin(self) -> np.ndarray:
        """int64 ``[n]``: the most similar other feature (-1: none)."""
        return self.index[:, 0]

    @property
    def twin_value(self) -> np.ndarray:
        """float64 ``[n]``: similarity to the twin (NaN: none)."""
        return self.value[:, 0]


def _drop_self(index: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From top-k lists ``[n, k]`` that may contain the row itself, the k-1 best others ``[n, k-1]``.

    The self match is not always first: an exact copy correlates at 1 too, and rounding can put it
    ahead. So the row's own index is removed wherever it sits (the last entry when it is absent).
    """
    n, k = index.shape
    own = index == np.arange(n)[:, None]  # [n, k]
    drop = np.where(own.any(1), own.argmax(1), k - 1)  # [n]
    keep = np.ones((n, k), bool)
    keep[np.arange(n), drop] = False
    idx = index[keep].reshape(n, k - 1)
    val = value[keep].reshape(n, k - 1).astype(np.float64)
    return idx, val


def activation_twins(acts, k: int = 8, **match_kwargs) -> Twins:
    """Activation twins of every feature of ``acts [n_tokens, n]`` (sparse or dense).

    ``k``: similar features kept per feature, the twin first (>= 1; more let the clusters see more
    of each feature's neighbourhood). Extra keyword arguments go to ``correlation.max_correlation``.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = acts.shape[1]
    if n < 2:
        raise ValueError(f"acts must have at least 2 feature columns to have twins, got {n}")
    side = prepare(acts, "acts")  # column statistics once for both sides
    top = max_correlation(side, side, k=min(k + 1, n), **match_kwargs)
    idx, val = _drop_self(top.index, top.value)
    return Twins(index=idx, value=val, alive=~top.dead_a, kind="act")
