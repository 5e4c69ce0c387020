"""Writers of study outputs: summary.json, tables, figures (PNG + SVG) and report.md.

Analyses return data; only this package (and the exporters) writes files.
"""

from .common import provenance, save_figure, write_table
from .universality import write_universality

__all__ = ["provenance", "save_figure", "write_table", "write_universality"]
