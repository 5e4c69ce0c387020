"""Frozen config dataclasses: one section per pipeline stage gathered in :class:`Config` with named
presets, and the sections of the studies that are not part of it.

- ``base``: what every section shares (unknown keys rejected, JSON round trip);
- ``sections``: the pipeline's sections and :class:`Config`; ``presets``: ``smoke``, ``default``, ``paper``;
- ``scaling``, ``fsa``, ``splitting``: the studies' own sections and presets;
- ``parse``: the command-line counts (``--sizes`` specs, token counts).

Every stage's cache key is a hash of its own section (plus the keys of its inputs), so changing,
say, the SAE learning rate retrains the dictionaries but reuses the language models.
"""

from .base import (ConfigError, _from_dict, _recipe_names, _recipe_uses_k, _Section, is_config)  # noqa: F401
from .sections import (CorpusConfig, TokenizerConfig, ModelConfig, LMTrainConfig, ActivationsConfig, DictConfig, AnalysisConfig, _SECTIONS, Config)  # noqa: F401
from .presets import (_smoke, _default, _paper, PRESETS, get_preset)  # noqa: F401
from .scaling import (ScalingConfig, SCALING_PRESETS, get_scaling_preset)  # noqa: F401
from .fsa import (_have_numba, FSAConfig, FSA_PRESETS, get_fsa_preset)  # noqa: F401
from .splitting import (SplittingConfig, SPLITTING_PRESETS, get_splitting_preset)  # noqa: F401
from .parse import (parse_sizes, parse_counts, parse_token_count)  # noqa: F401
