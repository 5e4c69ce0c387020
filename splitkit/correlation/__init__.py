"""Exact correlation of activation columns across two runs, and the matches built on it.

``engine`` (top-k, matrices, pairs, chance level), ``columns`` (input checks, column statistics,
``TopK``), ``kernels`` (numba), ``stream`` (``CrossMoments`` over token chunks) and ``assign``
(one-to-one assignments, ``match``, ``summarize``).
"""

from .assign import ASSIGNMENTS, assign_dense, assign_topk, match, summarize
from .columns import TopK, prepare
from .engine import (ENGINES, correlation_matrix, max_correlation, max_correlation_both, paired_correlation,
                     shuffled_baseline)
from .kernels import HAVE_NUMBA
from .stream import CrossMoments

__all__ = ["ASSIGNMENTS", "ENGINES", "HAVE_NUMBA", "CrossMoments", "TopK", "assign_dense", "assign_topk",
           "correlation_matrix", "match", "max_correlation", "max_correlation_both", "paired_correlation",
           "prepare", "shuffled_baseline", "summarize"]
