"""Writers of study outputs: summary.json, tables, figures (PNG + SVG) and report.md.

Analyses return data; only this package writes files (provenance comes from ``splitkit.provenance``).
"""

from .common import save_figure, write_table
from .dictionaries import family_lines, family_table, write_family_report
from .universality import write_universality

__all__ = ["family_lines", "family_table", "save_figure", "write_family_report", "write_table",
           "write_universality"]
