"""Feature splitting across dictionary sizes: links, the splitting forest, fates, families, universality.

``cofire`` (co-firing sums and each child's top-k parents; numba and scipy engines), ``linking``
(links between two sizes by the paper's masked activation cosine, their chance level, children's
cover), ``forest`` (the DAG of one run, twins collapsed), ``fates`` (what becomes of each feature
at each size step, per-step summaries), ``lineages`` (the main lineage, families and their listing) and
``cross_seed`` (whether one run's splits are the other's).
"""

from .cofire import DEFAULT_CHUNK_PAIRS, ENGINES, HAVE_NUMBA
from .cross_seed import split_universality
from .fates import CHILD_FATES, PARENT_FATES, branching, classify_fates, step_summary
from .forest import build_forest, feature_nodes, splitting_forest
from .lineages import families, family_listing, main_lineage
from .linking import LINK_COLUMNS, children_cover, decoder_cosine, link_family, links, null_masked_cos, threshold_vs_null

__all__ = ["LINK_COLUMNS", "PARENT_FATES", "CHILD_FATES", "links", "null_masked_cos", "threshold_vs_null",
           "decoder_cosine", "children_cover", "link_family", "build_forest", "classify_fates", "splitting_forest",
           "feature_nodes", "step_summary", "branching", "families", "family_listing", "main_lineage",
           "split_universality"]
