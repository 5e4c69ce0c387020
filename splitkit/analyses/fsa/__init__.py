"""Finite-state-automaton-like systems of features: X at token t raises the tokens on which Y fires at t+1.

Pure functions on arrays; the study wires them to the cached pipeline and writes the files.
``edges`` (the candidate pairs and their weights, the shuffled null; the definitions are there),
``graph`` (``build_graph``: the kept edges as a labelled DiGraph), ``automata`` (SCCs, cycles,
chains, transition tables, bases compared), ``cross_seed`` (A's automaton edges found in B) and
``predictive`` (held-out prediction of the next state).
"""

from ...config import FSAConfig
from .automata import AUTOMATA_COLUMNS, compare_bases, find_automata, transition_table
from .cross_seed import automata_in_both, cross_seed_share
from .edges import (DENSE_MAX_UNITS, EDGE_COLUMNS, HAVE_NUMBA, NULL_QUANTILES, edge_stats, null_summary,
                    promoted_tokens, token_classes)
from .graph import FSAGraph, build_graph
from .predictive import predictive_check, predictive_table

__all__ = ["AUTOMATA_COLUMNS", "DENSE_MAX_UNITS", "EDGE_COLUMNS", "FSAConfig", "FSAGraph", "HAVE_NUMBA",
           "NULL_QUANTILES", "automata_in_both", "build_graph", "compare_bases", "cross_seed_share", "edge_stats",
           "find_automata", "null_summary", "predictive_check", "predictive_table", "promoted_tokens",
           "token_classes", "transition_table"]
