"""The universality analysis: do features of run A have counterparts in run B, more than neurons do?

A pure function of cached upstream artifacts (feature activations, neuron activations, dictionaries,
models) that returns tables and a summary; :mod:`splitkit.report` writes files.

Which features count. The paper leaves out dead features and its "ultralow density" cluster. We
count a feature when it fires on at least ``analysis.ultralow_density`` of the analysis tokens (and,
optionally, on at least ``analysis.min_count`` of them; 1 by default, i.e. the paper's exclusion
alone); every headline figure is also given over all features that fire at all (``all_alive``), so
the effect of the exclusion is visible.

Logit effects (``splitkit.effects``) come from the cached pipeline stage ``effects``.

Parts: ``side`` (what one run brings), ``stats`` (which units count, medians and intervals, density
bins), ``figures`` (best matches many-to-one and one-to-one, chance), ``views`` (logit-effect and
attribution correlation of matches), ``blocks`` (twins, decoder-cosine match), ``analyse`` (the
whole analysis of two sides, replicate intervals) and ``run`` (loading the cached stages: the
study's entry point, :func:`run_universality`). Every name is importable from this package.
"""

from .side import Side  # noqa: F401
from .stats import counted_mask, DENSITY_EDGES, _density_rows, density_bins, density_curve, corr_stats, summarize_units, bootstrap_median, bootstrap_difference, _med, neuron_density_stats  # noqa: F401
from .figures import DENSE_ASSIGNMENT_LIMIT, one_to_one_method, universality_figures, matched_figures, _match_block  # noqa: F401
from .views import centred_effects, _pair_logit_corr, _attr_corr_dense, _rows_of, _scaled_rows  # noqa: F401
from .blocks import redundancy_block, decoder_block  # noqa: F401
from .analyse import TWIN_TOKENS, analyse, REPLICATE_FIGURES, replicate_summary  # noqa: F401
from .run import ATTR_SCALE_TOKENS, PAPER_FIGURES, load_side, next_tokens_of, final_ln_inv_sigma, run_universality  # noqa: F401
