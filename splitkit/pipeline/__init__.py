"""The cached pipeline every study stands on: one ``get_*`` function per stage.

    corpus -> tokens (+ tokenizer) -> LM (seed) -> activation store -> dictionaries -> feature acts

Each ``get_X(cfg, ...)`` returns the cached artifact when its key exists and its manifest checks
out, and builds it otherwise (resuming from the stage's last checkpoint if a build was interrupted).
Studies call these and never train or harvest on their own.

One module per stage: ``tokens``, ``lms``, ``acts``, ``families``, ``features``, ``effects``, and
``records`` (analyses' small results and the joint map); ``core`` holds what they share (the stage
code versions ``VERSIONS``, ``PipelineError``). Every name is importable from this package; to
replace a stage in a test, patch it in the module that calls it (``pipeline.lms.get_tokens``).
"""

from .core import VERSIONS, PipelineError, _cache, _say, read_artifact_file, _ready  # noqa: F401
from .tokens import _corpus_fingerprint, _fingerprint, TokenData, get_tokens, _packages_fingerprint, get_extra_tokens, analysis_tokens, ngram_baselines  # noqa: F401
from .lms import LMRun, BIGRAM_MARGIN_NATS, lm_verdict, _warn_if_undertrained, fit_lm_budget, check_split_sizes, get_lm, _WARNED  # noqa: F401
from .acts import get_acts  # noqa: F401
from .families import Family, trainer_config, family_artifact, new_family, finish_family, FamilyBuild, family_build, get_family  # noqa: F401
from .features import FeatureSet, get_features, _evaluate, sae_metrics  # noqa: F401
from .effects import LogitEffects, get_logit_effects  # noqa: F401
from .records import Record, get_record, get_joint_map  # noqa: F401
