"""Exact correlation of activation columns across two runs, and the matches built on it.

``engine`` (top-k, matrices, pairs, chance level), ``columns`` (input checks, column statistics,
``TopK``), ``kernels`` (numba), ``stream`` (``CrossMoments`` over token chunks) and ``assign``
(one-to-one assignments, ``match``, ``match_with_matrix`` and its ``CorrelationMatrix``, from which
matchings of column subsets come without another pass; ``summarize``).
"""

from .assign import (ASSIGNMENTS, CorrelationMatrix, assign_dense, assign_topk, match, match_with_matrix,
                     summarize)
from .columns import TopK, prepare
from .engine import (ENGINES, correlation_matrix, max_correlation, max_correlation_both, paired_correlation,
                     shuffled_baseline)
from .kernels import HAVE_NUMBA
from .stream import CrossMoments

__all__ = ["ASSIGNMENTS", "ENGINES", "HAVE_NUMBA", "CorrelationMatrix", "CrossMoments", "TopK", "assign_dense",
           "assign_topk", "correlation_matrix", "match", "match_with_matrix", "max_correlation", "max_correlation_both",
           "paired_correlation", "prepare", "shuffled_baseline", "summarize"]
