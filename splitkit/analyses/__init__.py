"""Analyses: pure functions of cached artifacts that return arrays, DataFrames and graphs.

Nothing here writes a file (writers live in :mod:`splitkit.report`); each study's analysis is one
module (``universality``, ``scaling``, ...).
"""
